"""The outbound proxy decision (`nbwss.outbound`), unit by unit: no socket, no proxy.

Which proxy for which URL, the noProxy grammar, the environment only when asked, the
credentials (never in a repr or an error), and the CONNECT exchange as bytes.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nbwss import logs
from nbwss.errors import ConfigError
from nbwss.outbound import (
    DIRECT,
    Credentials,
    Proxy,
    ProxyPolicy,
    connect_request,
    load_policy,
    no_answer,
    parse_connect_reply,
    parse_credentials,
    parse_no_proxy,
    parse_proxy_url,
    policy,
    refused,
    request_options,
    unreachable,
)
from nbwss.properties import Settings, settings_from_text

PROXY = Proxy("proxy.example.com", 3128)
WITH_CREDENTIALS = Proxy("proxy.example.com", 3128, Credentials("backup", "s3cr:et"))


def decided(text: str, env: dict[str, str] | None = None,
            credentials: str | None = None) -> ProxyPolicy:
    return policy(settings_from_text(text), env or {}, credentials)


# -- the proxy URL -------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("http://proxy.example.com:3128", "http://proxy.example.com:3128"),
    (" HTTP://Proxy.Example.COM:3128/ ", "http://proxy.example.com:3128"),
    ("http://192.0.2.1:8080", "http://192.0.2.1:8080"),
    ("http://[2001:db8::1]:3128", "http://[2001:db8::1]:3128"),
])
def test_proxy_url_in_its_normal_form(text: str, expected: str) -> None:
    assert settings_from_text(f"proxy.url={text}").proxy_url == expected


@pytest.mark.parametrize(("text", "why"), [
    ("proxy.example.com:3128", "an http://host:port URL"),
    ("http://proxy.example.com", "an http://host:port URL"),
    ("http://proxy.example.com:0", "an http://host:port URL"),
    ("http://proxy.example.com:3128/path", "an http://host:port URL"),
    ("http://proxy.example.com:99999", "an http://host:port URL"),
    ("https://proxy.example.com:3128", "HTTPS and SOCKS proxies are not supported"),
    ("socks5://proxy.example.com:1080", "HTTPS and SOCKS proxies are not supported"),
    ("http://backup:hunter2@proxy.example.com:3128", "put them in proxy.credentialsFile"),
])
def test_a_bad_proxy_url_names_the_key_and_never_shows_a_password(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_text(f"proxy.url={text}")
    message = str(caught.value)
    assert message.startswith("line 1: proxy.url=")
    assert why in message
    assert "hunter2" not in message


def test_the_environment_may_carry_credentials_and_leave_out_the_scheme() -> None:
    proxy = parse_proxy_url("backup:p%40ss@proxy.example.com:3128", credentials=True)
    assert proxy.url == "http://proxy.example.com:3128"
    assert proxy.credentials == Credentials("backup", "p@ss")


def test_the_credentials_never_show_in_a_repr() -> None:
    assert "s3cr" not in repr(WITH_CREDENTIALS)
    assert "s3cr" not in WITH_CREDENTIALS.url


@pytest.mark.parametrize("text", ["backup", "backup:", ":secret", "back\nup:secret",
                                  "backup:sec\x00ret"])
def test_credentials_are_one_line_user_colon_password(text: str) -> None:
    with pytest.raises(ValueError, match="user:password"):
        parse_credentials(text)


def test_basic_authorization_is_rfc_7617() -> None:
    header = WITH_CREDENTIALS.headers["Proxy-Authorization"]
    assert base64.b64decode(header.removeprefix("Basic ")) == b"backup:s3cr:et"
    assert PROXY.headers == {}


def test_aiohttp_options_send_the_credentials_to_the_proxy_only() -> None:
    assert request_options(None) == {}
    assert request_options(PROXY) == {"proxy": "http://proxy.example.com:3128",
                                      "proxy_headers": None}
    options = request_options(WITH_CREDENTIALS)
    assert options["proxy_headers"] == WITH_CREDENTIALS.headers


# -- noProxy -------------------------------------------------------------------------------


@pytest.mark.parametrize(("no_proxy", "url", "bypassed"), [
    ("cloud.example.com", "wss://cloud.example.com/x", True),
    ("cloud.example.com", "wss://CLOUD.example.com./x", True),
    ("cloud.example.com", "wss://eu.cloud.example.com/x", False),
    ("cloud.example.com", "wss://othercloud.example.com/x", False),
    (".example.com", "wss://eu.cloud.example.com/x", True),
    (".example.com", "wss://example.com/x", False),
    (".example.com", "wss://badexample.com/x", False),
    ("192.0.2.7", "wss://192.0.2.7:8443/x", True),
    ("192.0.2.7", "wss://192.0.2.8:8443/x", False),
    ("192.0.2.0/24", "https://192.0.2.200/details", True),
    ("192.0.2.0/24", "https://192.0.3.1/details", False),
    ("192.0.2.0/24", "https://cloud.example.com/details", False),
    ("2001:db8::/32", "wss://[2001:db8::5]/x", True),
    ("[2001:db8::5]", "wss://[2001:db8::5]/x", True),
    ("*", "wss://anything.example.net/x", True),
    ("a.test, .example.com  10.0.0.0/8", "wss://10.1.2.3/x", True),
])
def test_no_proxy_grammar(no_proxy: str, url: str, bypassed: bool) -> None:
    decision = decided(f"proxy.url=http://proxy:3128\nproxy.noProxy={no_proxy}")
    assert (decision.proxy_for(url) is None) is bypassed


@pytest.mark.parametrize("entry", ["cloud.example.com:443", "http://x.test", "a..b", ".",
                                   "*.example.com", "bad/host", "10.0.0.0/33"])
def test_no_proxy_refuses_what_it_cannot_match(entry: str) -> None:
    with pytest.raises(ConfigError, match=r"proxy\.noProxy=.*host names, \.domains, IP "):
        settings_from_text(f"proxy.noProxy={entry}")


@given(st.text(max_size=60))
def test_no_proxy_parsing_never_fails_otherwise(text: str) -> None:
    try:
        rules = parse_no_proxy(text)
    except ValueError:
        return
    for rule in rules:
        rule.matches("cloud.example.com")


def test_no_proxy_alone_changes_nothing_and_no_proxy_means_direct() -> None:
    assert decided("proxy.noProxy=.example.com").proxy_for("wss://x.example.com/") is None
    assert DIRECT.proxy_for("wss://cloud.example.com/") is None
    assert decided("").proxy is None


# -- the environment -----------------------------------------------------------------------

ENV = {"https_proxy": "http://envproxy.example.com:8080", "no_proxy": ".internal.example"}


def test_the_environment_is_ignored_unless_asked() -> None:
    assert decided("", ENV).proxy is None
    assert decided("proxy.url=http://proxy:3128", ENV).proxy_for(
        "wss://a.internal.example/") == Proxy("proxy", 3128)


def test_with_use_environment_https_proxy_and_no_proxy_count() -> None:
    decision = decided("proxy.useEnvironment=true\nproxy.noProxy=cloud.example.com", ENV)
    assert decision.proxy == Proxy("envproxy.example.com", 8080)
    assert decision.proxy_for("wss://a.internal.example/x") is None
    assert decision.proxy_for("wss://cloud.example.com/x") is None
    assert decision.proxy_for("wss://other.example.com/x") == decision.proxy


def test_proxy_url_wins_over_https_proxy_and_lower_case_over_upper() -> None:
    both = {**ENV, "HTTPS_PROXY": "http://upper:1"}
    assert decided("proxy.useEnvironment=true", both).proxy == Proxy("envproxy.example.com", 8080)
    assert decided("proxy.useEnvironment=true", {"HTTPS_PROXY": "http://upper:1"}).proxy == \
        Proxy("upper", 1)
    assert decided("proxy.useEnvironment=true\nproxy.url=http://mine:3128", ENV).proxy == \
        Proxy("mine", 3128)


def test_credentials_file_wins_over_the_environments_user_info() -> None:
    env = {"https_proxy": "http://envuser:envpass@envproxy:8080"}
    assert decided("proxy.useEnvironment=true", env).proxy == \
        Proxy("envproxy", 8080, Credentials("envuser", "envpass"))
    assert decided("proxy.useEnvironment=true", env, "fileuser:filepass").proxy == \
        Proxy("envproxy", 8080, Credentials("fileuser", "filepass"))


def test_a_bad_environment_variable_is_named_but_never_shown() -> None:
    env = {"https_proxy": "socks5://user:hunter2@proxy:1080"}
    with pytest.raises(ConfigError, match="environment variable https_proxy is not valid") as e:
        decided("proxy.useEnvironment=true", env)
    assert "hunter2" not in str(e.value)


def test_bad_credentials_text_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"proxy\.credentialsFile: expected one line user:pass"):
        decided("proxy.url=http://proxy:3128", credentials="no-colon-here")


def test_load_policy_reads_the_credentials_file_and_redacts_the_password(
    tmp_path: Path
) -> None:
    (tmp_path / "proxy.cred").write_text("backup:Very-Secret-9\n")
    settings = Settings(proxy_url="http://proxy:3128", proxy_credentials_file=Path("proxy.cred"))
    decision = load_policy(settings, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert decision.proxy == Proxy("proxy", 3128, Credentials("backup", "Very-Secret-9"))
    assert logs.redact(None, "", {"reason": "x Very-Secret-9 y"}) == {
        "reason": f"x {logs.REDACTED} y"}


def test_load_policy_says_which_file_it_cannot_read(tmp_path: Path) -> None:
    settings = Settings(proxy_url="http://proxy:3128",
                        proxy_credentials_file=tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"proxy.credentialsFile: cannot read .*missing"):
        load_policy(settings, {})


# -- the CONNECT exchange and the lines an admin reads -------------------------------------


def test_connect_request_names_the_endpoint_and_carries_the_credentials() -> None:
    assert connect_request(PROXY, "cloud.example.com", 443) == (
        b"CONNECT cloud.example.com:443 HTTP/1.1\r\nHost: cloud.example.com:443\r\n\r\n")
    request = connect_request(WITH_CREDENTIALS, "2001:db8::1", 8443).decode()
    assert request.startswith("CONNECT [2001:db8::1]:8443 HTTP/1.1\r\n")
    assert "\r\nProxy-Authorization: Basic " in request


@pytest.mark.parametrize("host", ["", "evil.test\r\nX-Injected: 1", "a b"])
def test_connect_request_refuses_a_host_that_would_break_the_request(host: str) -> None:
    with pytest.raises(ValueError, match="not a host name"):
        connect_request(PROXY, host, 443)


@pytest.mark.parametrize(("head", "expected"), [
    (b"HTTP/1.1 200 Connection established\r\n\r\n", (200, "Connection established")),
    (b"HTTP/1.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n",
     (407, "Proxy Authentication Required")),
    (b"HTTP/1.1 502\r\n\r\n", (502, "")),
])
def test_connect_reply(head: bytes, expected: tuple[int, str]) -> None:
    assert parse_connect_reply(head) == expected


@pytest.mark.parametrize("head", [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 2000 OK\r\n\r\n",
                                  b"\x16\x03\x01\r\n\r\n"])
def test_an_answer_that_is_not_http_is_refused(head: bytes) -> None:
    with pytest.raises(ValueError, match="not an HTTP answer"):
        parse_connect_reply(head)


def test_refusals_name_the_proxy_and_what_to_do() -> None:
    assert refused(PROXY, 403, "Forbidden") == \
        "proxy http://proxy.example.com:3128 refused CONNECT: 403 Forbidden"
    assert refused(PROXY, 502, "Bad Gateway").endswith("refused CONNECT: 502 Bad Gateway")
    assert refused(PROXY, 407, "Proxy Authentication Required").endswith(
        "(it wants credentials: set proxy.credentialsFile)")
    assert refused(WITH_CREDENTIALS, 407, "Proxy Authentication Required").endswith(
        "(check the user and password in proxy.credentialsFile)")
    assert unreachable(PROXY, TimeoutError()) == \
        "proxy http://proxy.example.com:3128 unreachable (timed out)"
    assert unreachable(PROXY, ConnectionRefusedError(111, "Connect call failed")).endswith(
        "unreachable (Connection refused)")
    assert "s3cr" not in no_answer(WITH_CREDENTIALS) + refused(WITH_CREDENTIALS, 407, "")
