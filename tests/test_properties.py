"""The properties reader: Java's Properties semantics, typed settings, paths from the environment.

The expected values of the syntax tables were checked against OpenJDK 17's
`java.util.Properties.load`, as was a 20,000-case differential run of `properties_texts()`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given

from nbwss.errors import ConfigError
from nbwss.properties import (
    PROPERTIES,
    Settings,
    default_store_path,
    load,
    parse_properties,
    resolve_paths,
    settings_from_text,
)
from tests.strategies import java_store, properties_texts, property_pairs, settings_texts


def pairs(text: str) -> list[tuple[str, str]]:
    return [(entry.key, entry.value) for entry in parse_properties(text)]


# -- syntax ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("# a comment\n! another\n  # indented comment\n", []),
        ("a=b", [("a", "b")]),
        ("a:b", [("a", "b")]),
        ("a b", [("a", "b")]),
        ("a\tb", [("a", "b")]),
        ("a\fb", [("a", "b")]),
        ("  a  =  b", [("a", "b")]),
        ("a   :   b", [("a", "b")]),
        ("a==b", [("a", "=b")]),
        ("a = =b", [("a", "=b")]),
        ("a=:b", [("a", ":b")]),
        ("a b=c", [("a", "b=c")]),
        ("a", [("a", "")]),
        ("a=", [("a", "")]),
        ("=b", [("", "b")]),
        ("a=b  ", [("a", "b  ")]),  # trailing white space belongs to the value
        ("a\\=b=c", [("a=b", "c")]),
        ("a\\:b:c", [("a:b", "c")]),
        ("a\\ b c", [("a b", "c")]),
        ("a\\#b=c", [("a#b", "c")]),
        ("a=b#c", [("a", "b#c")]),  # '#' inside a line is no comment
        ("a=\\ b", [("a", " b")]),
        ("a=\\t\\n\\r\\f", [("a", "\t\n\r\f")]),
        ("a=\\b\\q\\\\", [("a", "bq\\")]),
        ("a=\\u00e9\\u0041\\u00E9", [("a", "éAé")]),
        ("a=\\uD83D\\uDE00", [("a", "\U0001f600")]),  # a UTF-16 pair is one character
        ("\\u0041=1", [("A", "1")]),
    ],
)
def test_line_syntax_follows_java(text: str, expected: list[tuple[str, str]]) -> None:
    assert pairs(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("k=a\\\n   b", [("k", "ab")]),  # leading white space of the next line is dropped
        ("k=a\\\n\t\f b\\\n c", [("k", "abc")]),
        ("k=a\\\\\nb", [("k", "a\\"), ("b", "")]),  # even backslashes: no continuation
        ("k=a\\\\\\\nb", [("k", "a\\b")]),  # odd: an escaped backslash, then a continuation
        ("k=a\\\n#b", [("k", "a#b")]),  # a continued line is never a comment
        ("# comment \\\nk=v", [("k", "v")]),  # a comment line is never continued
        ("! comment \\\nk=v", [("k", "v")]),
        ("k=a\\\n\nj=b", [("k", "a"), ("j", "b")]),  # a blank line ends the continuation
        ("k=a\\", [("k", "a")]),  # a continuation into the end of the file
        ("k=a\\\n", [("k", "a")]),
        ("ke\\\n  y=v", [("key", "v")]),  # a key can be continued too
        ("\\\n   \n#c\nk=v", [("k", "v")]),  # a line left empty by joining is dropped
        ("\\\n#c\nk=v", [("k", "v")]),  # ... and the next line may be a comment
        ("k=v\n\\", [("k", "v"), ("", "")]),  # Java's quirk: a final lone "\\" is an entry
        ("k=v\n\\\n", [("k", "v"), ("", "")]),
        ("k=v\n\\\r\n", [("k", "v")]),  # ... but not before a final CRLF
        ("k=v\n\\\n  ", [("k", "v")]),
    ],
)
def test_continuations_follow_java(text: str, expected: list[tuple[str, str]]) -> None:
    assert pairs(text) == expected


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_every_line_ending_is_a_line_ending(newline: str) -> None:
    text = newline.join(["# c", "a=1", "b=2\\", "   3", "", "c=4"])
    assert pairs(text) == [("a", "1"), ("b", "23"), ("c", "4")]
    assert [entry.line for entry in parse_properties(text)] == [2, 3, 6]


@pytest.mark.parametrize("value", ["\\u00g1", "\\u12", "\\u", "x\\uZZZZ"])
def test_malformed_unicode_escape_is_a_config_error_naming_the_line(value: str) -> None:
    with pytest.raises(ConfigError, match=r"line 2: malformed \\uXXXX escape"):
        parse_properties(f"# first\nk={value}")


def test_malformed_escape_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nbwss.properties"
    path.write_text("a=1\nlog.level=\\u00zz\n")
    with pytest.raises(ConfigError) as caught:
        load(path, env={})
    assert str(caught.value) == (
        f"{path}:2: malformed \\uXXXX escape, expected four hex digits after \\u"
    )


def test_duplicate_keys_are_kept_in_order_and_the_last_wins() -> None:
    text = "keepAlive.scheduledRate=1\nkeepAlive.scheduledRate=2\n"
    assert pairs(text) == [("keepAlive.scheduledRate", "1"), ("keepAlive.scheduledRate", "2")]
    assert settings_from_text(text).keepalive_rate_s == 2.0


@given(property_pairs)
def test_what_java_store_writes_parses_back(written: dict[str, str]) -> None:
    assert dict(pairs(java_store(written))) == written


def config_error(text: str) -> str | None:
    """The ConfigError line `text` gives, or None; any other exception escapes (and fails)."""
    try:
        parse_properties(text)
        settings_from_text(text)
    except ConfigError as error:
        return str(error)
    return None


@given(properties_texts())
def test_arbitrary_text_never_raises_anything_but_config_error(text: str) -> None:
    assert "\n" not in (config_error(text) or "")


@given(settings_texts())
def test_files_of_real_keys_give_settings_or_a_config_error_with_expectation(text: str) -> None:
    error = config_error(text)
    assert error is None or ("\n" not in error and ("expected" in error or "malformed" in error))


# -- typed settings ----------------------------------------------------------------------

SPEC_DEFAULT_FILE = """\
#Properties file for NetBackup WebSocket Service
exception.ignoreDecoder=false
notification.sendTimeout=2000
notification.scheduledRate=5
keepAlive.scheduledRate=30
keepAlive.maxPongMissAllowed=10
connectionInfo.period=60
scheduledExecutor.threadPoolSize=1

#Hibernate properties
hibernate.format_sql=true
hibernate.show_sql=false
hibernate.hbm2ddl.auto=update
hibernate.dialect=org.hibernate.dialect.SybaseDialect
"""


def test_defaults_are_the_specs() -> None:
    settings = Settings()
    assert settings.ignore_decoder is False
    assert settings.send_timeout_s == 2.0
    assert settings.notification_rate_s == 5.0
    assert settings.keepalive_rate_s == 30.0
    assert settings.max_pong_misses == 10
    assert settings.connection_period_s == 60.0
    assert settings.thread_pool_size == 1


def test_the_specs_own_file_gives_the_defaults_and_ignores_hibernate() -> None:
    settings = settings_from_text(SPEC_DEFAULT_FILE)
    assert settings == Settings()
    assert settings.warnings == ()


def test_every_documented_default_reads_back_as_the_settings_default() -> None:
    text = "\n".join(f"{prop.key}={prop.default}" for prop in PROPERTIES)
    assert settings_from_text(text) == Settings()
    assert len({prop.key for prop in PROPERTIES}) == len(PROPERTIES)


def test_values_are_typed_and_durations_become_seconds() -> None:
    settings = settings_from_text(
        "exception.ignoreDecoder = TRUE\n"
        "notification.sendTimeout=250\n"
        "keepAlive.scheduledRate=0.2\n"
        "keepAlive.maxPongMissAllowed : 3\n"
        "command.allowedPrefixes=/netbackup/, /other/\n"
        "poller.enabled=auto\n"
        "log.level=DEBUG\n"
    )
    assert settings.ignore_decoder is True
    assert settings.send_timeout_s == pytest.approx(0.25)
    assert settings.keepalive_rate_s == pytest.approx(0.2)
    assert settings.max_pong_misses == 3
    assert settings.command_allowed_prefixes == ("/netbackup/", "/other/")
    assert settings.poller_enabled is None
    assert settings.log_level == "debug"


def test_unknown_key_is_a_warning_naming_the_line(tmp_path: Path) -> None:
    settings = settings_from_text("# c\nkeepAlive.scheduledRate=3\nkeepAlive.rate=4\n")
    assert settings.keepalive_rate_s == 3.0
    assert settings.warnings == ("line 3: unknown key 'keepAlive.rate' ignored",)
    path = tmp_path / "nbwss.properties"
    path.write_text("nope=1\n")
    assert load(path, env={"HOME": str(tmp_path)}).warnings == (
        f"{path}:1: unknown key 'nope' ignored",
    )


@pytest.mark.parametrize(
    ("line", "expectation"),
    [
        ("keepAlive.maxPongMissAllowed=ten", "an integer >= 1"),
        ("keepAlive.maxPongMissAllowed=2.5", "an integer >= 1"),
        ("keepAlive.maxPongMissAllowed=0", "an integer >= 1"),
        ("keepAlive.maxPongMissAllowed=1_000", "an integer >= 1"),  # Java refuses it
        ("keepAlive.maxPongMissAllowed=\u0663", "an integer >= 1"),  # an Arabic-Indic 3
        ("scheduledExecutor.threadPoolSize=-1", "an integer >= 1"),
        ("keepAlive.scheduledRate=-1", "a number of seconds > 0"),
        ("connectionInfo.period=0", "a number of seconds > 0"),
        ("connectionInfo.period=nan", "a number of seconds > 0"),
        ("connectionInfo.period=inf", "a number of seconds > 0"),
        ("notification.sendTimeout=", "a number of milliseconds > 0"),
        ("exception.ignoreDecoder=yes", "true or false"),
        ("restApi.verify=1", "true or false"),
        ("poller.enabled=maybe", "true, false or auto"),
        ("log.format=xml", "auto or json or console"),
        ("restApi.baseUrl=ftp://host", "an http(s):// URL"),
        ("command.allowedPrefixes=netbackup", "a comma-separated list of paths"),
        ("message.maxBytes=10", "an integer >= 1024"),
        ("store.path=~nosuchuser-nbwss/db", "a path whose ~ names a known home directory"),
        ("poller.pageSize=500", "an integer from 1 to 100"),
        ("restApi.apiVersion=latest", "auto or an API version such as 12.0"),
        ("restApi.apiVersion=12.x", "auto or an API version such as 12.0"),
        ("restApi.domainType=windows", "NT or vx or unixpwd or ldap"),
    ],
)
def test_bad_value_names_key_line_and_expectation(line: str, expectation: str) -> None:
    key = line.split("=", 1)[0]
    with pytest.raises(ConfigError) as caught:
        settings_from_text(f"# header\n\n{line}\n")
    message = str(caught.value)
    assert message.startswith(f"line 3: {key}=")
    assert f"expected {expectation}" in message


def test_bad_value_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nbwss.properties"
    path.write_text("connectionInfo.period=-5\n")
    with pytest.raises(ConfigError, match=rf"^{path}:1: connectionInfo.period='-5' is not valid"):
        load(path, env={})


# -- files and encodings -----------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_files_are_read_as_utf8_else_latin1(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "nbwss.properties"
    path.write_bytes("restApi.userName = José\n".encode(encoding))
    assert load(path, env={}).rest_api_user_name == "José"


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read properties file"):
        load(tmp_path / "absent.properties", env={})


def test_no_file_means_defaults_with_resolved_paths(tmp_path: Path) -> None:
    settings = load(None, env={"STATE_DIRECTORY": str(tmp_path)})
    assert settings == resolve_paths(Settings(), {"STATE_DIRECTORY": str(tmp_path)})
    assert settings.database == tmp_path / "nbwss.db"


# -- paths from the environment -----------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"STATE_DIRECTORY": "/var/lib/nbwss", "XDG_STATE_HOME": "/x"}, "/var/lib/nbwss/nbwss.db"),
        ({"STATE_DIRECTORY": "/a:/b"}, "/a/nbwss.db"),  # systemd may list several
        ({"XDG_STATE_HOME": "/xdg", "HOME": "/home/u"}, "/xdg/nbwss/nbwss.db"),
        ({"HOME": "/home/u"}, "/home/u/.local/state/nbwss/nbwss.db"),
        ({"STATE_DIRECTORY": "", "XDG_STATE_HOME": "", "HOME": "/h"},
         "/h/.local/state/nbwss/nbwss.db"),
    ],
)
def test_default_store_path(env: dict[str, str], expected: str) -> None:
    assert default_store_path(env) == Path(expected)


def test_resolve_paths_key_file_beside_the_database_unless_systemd_credentials() -> None:
    plain = resolve_paths(Settings(), {"STATE_DIRECTORY": "/s"})
    assert (plain.database, plain.key_file) == (Path("/s/nbwss.db"), Path("/s/nbwss.key"))
    assert plain.status_address == "/s/nbwss.sock"
    systemd = resolve_paths(Settings(), {"STATE_DIRECTORY": "/s", "CREDENTIALS_DIRECTORY": "/c"})
    assert systemd.key_file == Path("/c/nbwss.key")


def test_paths_in_the_file_win_over_the_environment() -> None:
    settings = settings_from_text("store.path=/d/my.db\nstore.keyFile=/k/my.key\n")
    resolved = resolve_paths(settings, {"STATE_DIRECTORY": "/s", "CREDENTIALS_DIRECTORY": "/c"})
    assert (resolved.database, resolved.key_file) == (Path("/d/my.db"), Path("/k/my.key"))


def test_unresolved_store_path_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"store\.path is not resolved"):
        _ = Settings().database


def test_systemd_credential_wins_over_store_key_file_when_present(tmp_path: Path) -> None:
    (tmp_path / "nbwss.key").write_bytes(b"k" * 32)
    settings = settings_from_text("store.path=/d/my.db\nstore.keyFile=/k/my.key\n")
    resolved = resolve_paths(settings, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert resolved.key_file == tmp_path / "nbwss.key"


def test_a_signed_integer_is_read_as_java_reads_it() -> None:
    assert settings_from_text("keepAlive.maxPongMissAllowed=+12\n").max_pong_misses == 12


@pytest.mark.parametrize(
    ("text", "version", "domain_type"),
    [("", "auto", None), ("restApi.apiVersion=12\nrestApi.domainType=nt", "12.0", "NT"),
     ("restApi.apiVersion = AUTO\nrestApi.domainType=UNIXPWD", "auto", "unixpwd"),
     ("restApi.apiVersion=9.1\nrestApi.domainType=vx", "9.1", "vx")],
)
def test_api_version_and_domain_type_are_read_in_the_documented_spelling(
    text: str, version: str, domain_type: str | None
) -> None:
    settings = settings_from_text(text)
    assert (settings.rest_api_version, settings.rest_api_domain_type) == (version, domain_type)
    assert settings_from_text("poller.pageSize=100").poller_page_size == 100
