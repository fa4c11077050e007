"""The outbound HTTP proxy: which proxy a connection goes through, and how it is asked.

A primary server behind a firewall reaches the internet only through the site's proxy.
Every connection nbwss makes to the outside goes through the proxy chosen here: the wss
connection to an endpoint, the details fetched with `--url`, and the certificate that
`endpoint validate|add` and `doctor` look at. Each is an HTTP CONNECT tunnel, so TLS
(and the pinned certificate) stays end to end between nbwss and the endpoint: the proxy
sees the host and port, never the token or the notifications.

Not the COMMAND proxy (`nbwss.proxy`), which carries the app's requests to the local
REST API. Pure, except `load_policy`, which reads `proxy.credentialsFile`.

Where the proxy comes from: `proxy.url`; else, only with `proxy.useEnvironment=true`,
`https_proxy` (or `HTTPS_PROXY`) from the environment, which may carry `user:password@`.
A daemon's behaviour should not depend on who started it, so the environment is ignored
by default. Credentials: `proxy.credentialsFile` (one line, `user:password`), sent as
`Proxy-Authorization: Basic`; NTLM and Kerberos (Negotiate) proxies are not supported,
nor HTTPS or SOCKS proxies, nor PAC files.

`proxy.noProxy` (and, with `proxy.useEnvironment`, `no_proxy`) lists hosts reached
directly, separated by commas or white space, matched case-insensitively against the host
as written in the URL (never resolved):

- `*`: every host;
- `host.example.com`: that name only;
- `.example.com`: every name under example.com (not example.com itself);
- `192.0.2.7`, `2001:db8::7`: that address;
- `192.0.2.0/24`, `2001:db8::/32`: every address in that network.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypedDict
from urllib.parse import unquote, urlsplit

from nbwss import logs
from nbwss.errors import ConfigError
from nbwss.secretfile import read_secret

if TYPE_CHECKING:
    from nbwss.properties import Settings

# The largest CONNECT answer head read before giving up on the proxy.
MAX_REPLY_HEAD_BYTES: Final = 16 * 1024
_NAME_CHARACTERS = frozenset(string.ascii_lowercase + string.digits + "-._")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Credentials:
    """The proxy's user and password; the password never shows in a repr."""

    user: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, password=<hidden>)"

    @property
    def authorization(self) -> str:
        """The `Proxy-Authorization` value (RFC 7617 Basic, UTF-8)."""
        pair = f"{self.user}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


@dataclass(frozen=True, slots=True)
class Proxy:
    """One HTTP proxy; `url` is how logs and errors name it (never with credentials)."""

    host: str
    port: int
    credentials: Credentials | None = None

    @property
    def url(self) -> str:
        return f"http://{_bracketed(self.host)}:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        """What the CONNECT request carries besides Host."""
        if self.credentials is None:
            return {}
        return {"Proxy-Authorization": self.credentials.authorization}


class RequestOptions(TypedDict, total=False):
    """The keyword arguments of aiohttp's `request` and `ws_connect` that pick a proxy."""

    proxy: str
    proxy_headers: dict[str, str] | None


def request_options(proxy: Proxy | None) -> RequestOptions:
    """aiohttp's keyword arguments (`request`, `ws_connect`) for going through `proxy`.

    The credentials go as a header of the CONNECT request: aiohttp sends `proxy_headers`
    to the proxy only, never to the endpoint (the tunnel carries TLS)."""
    if proxy is None:
        return {}
    return {"proxy": proxy.url, "proxy_headers": proxy.headers or None}


# -- the settings --------------------------------------------------------------------------


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse_proxy_url(text: str, *, credentials: bool = False) -> Proxy:
    """`http://host:port` (a port is required: proxies use many); `credentials` allows
    `user:password@` (the environment's habit; the properties file keeps none)."""
    expected = "an http://host:port URL"
    value = text.strip()
    if credentials and "://" not in value:
        value = "http://" + value  # `https_proxy=proxy:3128`, as curl reads it
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError(expected) from None
    if parts.scheme.lower() != "http":
        raise ValueError(f"{expected} (HTTPS and SOCKS proxies are not supported)")
    if not parts.hostname or port is None or port == 0 or parts.path.strip("/"):
        raise ValueError(expected)
    if parts.query or parts.fragment or any(c.isspace() for c in value):
        raise ValueError(expected)
    if parts.username is not None and not credentials:
        raise ValueError(f"{expected} without user:password@ (put them in "
                         "proxy.credentialsFile)")
    found = None
    if parts.username is not None:
        found = parse_credentials(f"{unquote(parts.username)}:{unquote(parts.password or '')}")
    return Proxy(parts.hostname, port, found)


def check_proxy_url(text: str) -> str | None:
    """The `proxy.url` converter: empty is None, else the URL in its normal form."""
    if not text.strip():
        return None
    return parse_proxy_url(text).url


def parse_credentials(text: str) -> Credentials:
    """`user:password` (the password may hold ':'; Basic forbids it in the user)."""
    user, colon, password = text.strip().partition(":")
    if not colon or not user or not password:
        raise ValueError("one line user:password")
    if any(ord(c) < 0x20 or c == "\x7f" for c in user + password):
        raise ValueError("one line user:password, without control characters")
    return Credentials(user, password)


@dataclass(frozen=True, slots=True)
class NoProxyRule:
    """One `noProxy` entry (see the module docstring for the grammar)."""

    text: str
    network: IPNetwork | None = field(default=None, compare=False)

    def matches(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        if self.text == "*":
            return True
        if self.network is not None:
            try:
                return ipaddress.ip_address(host) in self.network
            except ValueError:
                return False
        if self.text.startswith("."):
            return host.endswith(self.text)
        return host == self.text


def _rule(entry: str) -> NoProxyRule:
    text = entry.lower().rstrip(".")
    if text == "*":
        return NoProxyRule(text)
    try:
        return NoProxyRule(text, ipaddress.ip_network(text.strip("[]"), strict=False))
    except ValueError:
        pass
    name = text.removeprefix(".")
    if not name or not set(name) <= _NAME_CHARACTERS or ".." in name or name.startswith("."):
        raise ValueError(
            "host names, .domains, IP addresses or networks, or *, separated by commas "
            f"(not {entry!r})"
        )
    return NoProxyRule(text)


def parse_no_proxy(text: str) -> tuple[NoProxyRule, ...]:
    """A `noProxy` list: entries separated by commas or white space."""
    return tuple(_rule(entry) for entry in text.replace(",", " ").split())


def check_no_proxy(text: str) -> tuple[str, ...]:
    """The `proxy.noProxy` converter: the entries in their normal form."""
    return tuple(rule.text for rule in parse_no_proxy(text))


# -- the decision --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProxyPolicy:
    """Which proxy, if any, a connection to a URL goes through."""

    proxy: Proxy | None = None
    no_proxy: tuple[NoProxyRule, ...] = ()

    def proxy_for(self, url: str) -> Proxy | None:
        """The proxy for `url` (wss:// or https://); None: connect directly."""
        if self.proxy is None:
            return None
        try:
            host = urlsplit(url).hostname
        except ValueError:
            host = None
        if host is None or any(rule.matches(host) for rule in self.no_proxy):
            return None
        return self.proxy


DIRECT: Final = ProxyPolicy()


def _environment(env: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    """The first of `names` set (non-empty) in `env`, as (name, value); curl's order."""
    for name in names:
        if env.get(name, "").strip():
            return name, env[name]
    return None


def policy(settings: Settings, env: Mapping[str, str], credentials_text: str | None) -> ProxyPolicy:
    """Combine the settings, the environment (only with `proxy.useEnvironment`) and the
    text of `proxy.credentialsFile` (None when not set) into the decision."""
    proxy = parse_proxy_url(settings.proxy_url) if settings.proxy_url else None
    no_proxy = parse_no_proxy(" ".join(settings.proxy_no_proxy))
    if settings.proxy_use_environment:
        found = _environment(env, "https_proxy", "HTTPS_PROXY")
        if proxy is None and found is not None:
            proxy = _from_environment(*found, parse_proxy_url, credentials=True)
        found = _environment(env, "no_proxy", "NO_PROXY")
        if found is not None:
            no_proxy += _from_environment(*found, parse_no_proxy)
    if proxy is not None and credentials_text is not None:
        try:
            proxy = Proxy(proxy.host, proxy.port, parse_credentials(credentials_text))
        except ValueError as exc:
            raise ConfigError(f"proxy.credentialsFile: expected {exc}") from None
    return ProxyPolicy(proxy, no_proxy)


def _from_environment(name: str, value: str, parse: Any, **options: Any) -> Any:
    try:
        return parse(value, **options)
    except ValueError as exc:
        # Never echo the value: https_proxy may hold a password.
        raise ConfigError(f"environment variable {name} is not valid (proxy.useEnvironment="
                          f"true), expected {exc}") from None


def load_policy(settings: Settings, env: Mapping[str, str]) -> ProxyPolicy:
    """`policy()` with `proxy.credentialsFile` read (relative to $CREDENTIALS_DIRECTORY,
    like the other secret files); the password is registered for log redaction."""
    text = None
    if settings.proxy_credentials_file is not None:
        text = read_secret(settings.proxy_credentials_file, env, "proxy.credentialsFile")
    decided = policy(settings, env, text)
    if decided.proxy is not None and decided.proxy.credentials is not None:
        logs.register_secret(decided.proxy.credentials.password)
        logs.register_secret(decided.proxy.credentials.authorization.removeprefix("Basic "))
    return decided


# -- speaking to the proxy (for the one caller that opens the tunnel itself) ---------------


def connect_request(proxy: Proxy, host: str, port: int) -> bytes:
    """The CONNECT request for a tunnel to `host:port` (RFC 9110 section 9.3.6)."""
    if not host or any(ord(c) <= 0x20 or c == "\x7f" for c in host):
        raise ValueError(f"{host!r} is not a host name")
    authority = f"{_bracketed(host)}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    lines += [f"{name}: {value}" for name, value in proxy.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_connect_reply(head: bytes) -> tuple[int, str]:
    """The status and reason of the proxy's answer head (its status line decides)."""
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    version, _, rest = status_line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ValueError(f"not an HTTP answer: {status_line[:60]!r}")
    return int(code), reason.strip()


def refused(proxy: Proxy, status: int, reason: str) -> str:
    """One line for a proxy that answered CONNECT with anything but 200."""
    line = f"proxy {proxy.url} refused CONNECT: {status} {reason}".rstrip()
    if status == 407:
        hint = ("check the user and password in proxy.credentialsFile"
                if proxy.credentials else "it wants credentials: set proxy.credentialsFile")
        line += f" ({hint})"
    return line


def unreachable(proxy: Proxy, error: BaseException) -> str:
    """One line for a proxy that could not be reached at all (TCP failed or timed out)."""
    if isinstance(error, TimeoutError):
        reason = "timed out"
    elif isinstance(error, OSError) and error.errno:
        reason = os.strerror(error.errno)  # asyncio's own text repeats the address
    else:
        reason = str(error) or type(error).__name__
    return f"proxy {proxy.url} unreachable ({reason})"


def no_answer(proxy: Proxy, *, tunnel_known: bool = True) -> str:
    """One line for a proxy that closed the connection instead of answering CONNECT
    (some proxies do so for a host they will not tunnel to). Without `tunnel_known`,
    aiohttp could not tell whether the proxy or the server behind it closed it."""
    if tunnel_known:
        return f"proxy {proxy.url} closed the connection without answering CONNECT"
    return (f"proxy {proxy.url}, or the server behind it, closed the connection without "
            "answering")
