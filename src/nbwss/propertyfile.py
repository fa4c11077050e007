"""`nbwss.propertyfile`: the `.properties` file itself, read as Java reads it, and the
table of its keys (`PROPERTIES`: each key's field, converter, default, meaning).

The typed `Settings` built from it live in `nbwss.properties`. This module makes no
dataclass, so `nbwss notify` (started once per event, paying for every import) reads and
checks the whole file without loading `dataclasses` and `inspect`: `intake_settings` is
the part of the settings it needs. Every key is still converted, so a bad value anywhere
is refused by every command alike.
"""

from __future__ import annotations

import enum
import math
import os
import re
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from nbwss.errors import ConfigError

# -- the .properties syntax ------------------------------------------------------------------

_WHITESPACE = " \t\f"
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


class Entry(NamedTuple):
    """One key/value pair and the line its logical line starts on (for error messages)."""

    key: str
    value: str
    line: int


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Join continued lines exactly as Java's `Properties.LineReader` (Java 9+) does.

    Returns (line number where the logical line starts, its raw text). Quirks kept on
    purpose, since the file may be shared with the vendor's service: a line left empty by
    a continuation is a fresh line (a following `#` starts a comment), and a backslash
    ending the file, alone on its line, is an empty entry (unless a CRLF follows it).
    """
    result: list[tuple[int, str]] = []
    index, end, line_no = 0, len(text), 1
    while index < end:
        buf: list[str] = []
        start, skip_space, appended, backslash = line_no, True, False, False
        while True:
            if index >= end:
                if buf:
                    result.append((start, "".join(buf[:-1] if backslash else buf)))
                return result
            char = text[index]
            index += 1
            # "\r\n" is one line end: count it once, at its "\n".
            line_no += char == "\n" or (char == "\r" and text[index : index + 1] != "\n")
            if skip_space:
                if char in _WHITESPACE or (char in "\r\n" and not appended):
                    continue
                skip_space = appended = False
            if not buf and char in "#!":  # a comment runs to the end of its line
                while index < end and text[index] not in "\r\n":
                    index += 1
                skip_space = True
                continue
            if char not in "\r\n":
                start = start if buf else line_no
                buf.append(char)
                backslash = not backslash if char == "\\" else False
            elif not buf:
                skip_space = True
            elif backslash and index < end:  # a continuation: drop the backslash, go on
                buf.pop()
                skip_space, appended, backslash = True, True, False
                if char == "\r" and text[index : index + 1] == "\n":
                    index, line_no = index + 1, line_no + 1
            else:
                result.append((start, "".join(buf[:-1] if backslash else buf)))
                break
    return result


def _unescape(raw: str, line_no: int) -> str:
    out: list[str] = []
    index = 0
    while index < len(raw):
        char = raw[index]
        index += 1
        if char != "\\" or index >= len(raw):
            out.append(char)
            continue
        char = raw[index]
        index += 1
        if char == "u":
            digits = raw[index : index + 4]
            if len(digits) != 4 or any(c not in "0123456789abcdefABCDEF" for c in digits):
                raise ConfigError(
                    f"line {line_no}: malformed \\uXXXX escape, expected four hex digits after \\u"
                )
            out.append(chr(int(digits, 16)))
            index += 4
        else:
            out.append(_ESCAPES.get(char, char))
    # Java strings are UTF-16: Properties.store writes U+1F600 as \uD83D\uDE00, so join
    # escaped surrogate pairs into one character (an unpaired one stays, as in Java).
    return "".join(out).encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


def _split_key(line: str) -> tuple[str, str]:
    """Split at the first unescaped '=', ':' or white space, as Java does."""
    index = 0
    while index < len(line):
        char = line[index]
        if char == "\\":
            index += 2
            continue
        if char in "=:" or char in _WHITESPACE:
            break
        index += 1
    key, rest = line[:index], line[index:]
    rest = rest.lstrip(_WHITESPACE)
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(_WHITESPACE)
    return key, rest


def parse_properties(text: str) -> list[Entry]:
    """Every entry of a `.properties` text in file order (a later duplicate wins on use)."""
    entries = []
    for line_no, line in _logical_lines(text):
        raw_key, raw_value = _split_key(line)
        entries.append(Entry(_unescape(raw_key, line_no), _unescape(raw_value, line_no), line_no))
    return entries


# -- typed values --------------------------------------------------------------------------

Converter = Callable[[str], Any]


def _proxy_url(text: str) -> str | None:
    # outbound (ipaddress, base64) is imported when the key is set, not by every command.
    from nbwss.outbound import check_proxy_url

    return check_proxy_url(text)


def _no_proxy(text: str) -> tuple[str, ...]:
    from nbwss.outbound import check_no_proxy

    return check_no_proxy(text)


def _integer(text: str, minimum: int = 0, maximum: int | None = None) -> int:
    expectation = f"an integer >= {minimum}"
    if maximum is not None:
        expectation = f"an integer from {minimum} to {maximum}"
    digits = text.strip()
    # Python's int() also takes "1_000" and non-ASCII digits; Java's parseInt does not.
    if not digits.lstrip("+-").isascii() or not digits.lstrip("+-").isdigit():
        raise ValueError(expectation)
    value = int(digits, 10)
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(expectation)
    return value


def _seconds(text: str, positive: bool = True, scale: float = 1.0) -> float:
    """A duration. The guide's values are whole numbers; fractions are our extension."""
    expectation = "a number of seconds > 0" if positive else "a number of seconds >= 0"
    if scale != 1.0:
        expectation = expectation.replace("seconds", "milliseconds")
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(expectation) from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(expectation)
    return value * scale


def _boolean(text: str) -> bool:
    # java.lang.Boolean.parseBoolean reads anything but "true" as false; we refuse typos.
    value = text.strip().lower()
    if value in ("true", "false"):
        return value == "true"
    raise ValueError("true or false")


def _optional_boolean(text: str) -> bool | None:
    if text.strip().lower() == "auto":
        return None
    try:
        return _boolean(text)
    except ValueError:
        raise ValueError("true, false or auto") from None


def _text(text: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError("a non-empty value")
    return value


def _optional_text(text: str) -> str | None:
    if "\0" in text:  # a `\u0000` escape: no name, path or URL holds one, and the OS refuses it
        raise ValueError("text without a NUL character")
    return text.strip() or None


def _optional_path(text: str) -> Path | None:
    if "\0" in text:
        raise ValueError("a path without a NUL character")
    value = text.strip()
    if not value:
        return None
    try:
        return Path(value).expanduser()
    except RuntimeError:  # "~user" naming no user, or "~" without a home directory
        raise ValueError("a path whose ~ names a known home directory") from None


def _choice(*choices: str) -> Converter:
    def convert(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(" or ".join(choices))
        return value

    return convert


def _api_version(text: str) -> str:
    """`auto`, or a NetBackup API version such as 12.0 (a bare 12 means 12.0)."""
    value = text.strip().lower()
    if value == "auto":
        return value
    major, dot, minor = value.partition(".")
    if not major.isascii() or not major.isdigit() or (dot and not (minor.isascii()
                                                                  and minor.isdigit())):
        raise ValueError("auto or an API version such as 12.0")
    return f"{int(major)}.{int(minor or '0')}"


# The login's domain types, spelled as Veritas's gateway.yaml (10.3 to 11.2) lists them.
DOMAIN_TYPES = ("NT", "vx", "unixpwd", "ldap")


def _domain_type(text: str) -> str | None:
    value = text.strip()
    if not value:
        return None
    for known in DOMAIN_TYPES:
        if value.lower() == known.lower():
            return known
    raise ValueError(" or ".join(DOMAIN_TYPES))


def _url(text: str) -> str:
    value = text.strip().rstrip("/")
    if not value.startswith(("https://", "http://")) or len(value.split("://", 1)[1]) == 0:
        raise ValueError("an http(s):// URL")
    return value


def _prefixes(text: str) -> tuple[str, ...]:
    values = tuple(p.strip() for p in text.split(",") if p.strip())
    if not values or any(not p.startswith("/") for p in values):
        raise ValueError("a comma-separated list of paths beginning with '/'")
    return values


class Applies(enum.StrEnum):
    """When the running daemon applies a changed value after a SIGHUP (reload)."""

    NOW = "at once"
    NEW_CONNECTIONS = "to connections made from then on"
    RESTART = "after a restart"


class Property(NamedTuple):
    """One documented key: where it goes in `Settings`, how it is read, what it means,
    and when a reload applies it (docs, the sample file and the daemon follow it)."""

    key: str
    field: str
    convert: Converter
    default: str  # as written in the file, so docs and the sample file show it verbatim
    doc: str
    applies: Applies = Applies.RESTART


_MIB = 1024 * 1024

PROPERTIES: tuple[Property, ...] = (
    # The vendor's keys (spec section 5), with the vendor's defaults.
    Property("exception.ignoreDecoder", "ignore_decoder", _boolean, "false",
             "On a frame that cannot be decoded: false closes the connection, true logs "
             "and ignores it.",
             applies=Applies.NEW_CONNECTIONS),
    Property("notification.sendTimeout", "send_timeout_s", partial(_seconds, scale=0.001),
             "2000", "Milliseconds a send may take before it counts as not done.",
             applies=Applies.NEW_CONNECTIONS),
    Property("notification.scheduledRate", "notification_rate_s", _seconds, "5",
             "Seconds to wait for a NOTIFICATION acknowledgement before sending the same "
             "message again; also how often the daemon reads the outbox's head (one read "
             "for all groups) in case a wake-up was lost.",
             applies=Applies.NEW_CONNECTIONS),
    Property("keepAlive.scheduledRate", "keepalive_rate_s", _seconds, "30",
             "Seconds between WebSocket pings to each connected endpoint.",
             applies=Applies.NEW_CONNECTIONS),
    Property("keepAlive.maxPongMissAllowed", "max_pong_misses", partial(_integer, minimum=1),
             "10", "Consecutive missed pongs after which the connection is closed.",
             applies=Applies.NEW_CONNECTIONS),
    Property("connectionInfo.period", "connection_period_s", _seconds, "60",
             "Seconds between runs of the connection process (reads endpoints, connects "
             "groups, drops deleted and disabled endpoints).",
             applies=Applies.NOW),
    Property("scheduledExecutor.threadPoolSize", "thread_pool_size",
             partial(_integer, minimum=1), "1",
             "Accepted for compatibility and checked; no effect: connections are asyncio "
             "tasks and database calls are short."),
    # Ours, in the same style.
    Property("store.path", "store_path", _optional_path, "",
             "SQLite database. Empty: $STATE_DIRECTORY/nbwss.db, else "
             "$XDG_STATE_HOME/nbwss/nbwss.db (~/.local/state/nbwss/nbwss.db)."),
    Property("store.keyFile", "key_path", _optional_path, "",
             "Token encryption key. Empty: $CREDENTIALS_DIRECTORY/nbwss.key when set, else "
             "nbwss.key beside the database (created 0600 on first use)."),
    Property("connect.responseTimeout", "connect_response_timeout_s", _seconds, "30",
             "Seconds an endpoint may take to answer CONNECT (the guide sets no limit); "
             "no other dial is made for the group meanwhile. Past it, the connection is "
             "closed and the group's next endpoint is tried.",
             applies=Applies.NEW_CONNECTIONS),
    Property("message.maxBytes", "message_max_bytes", partial(_integer, minimum=1024),
             str(16 * _MIB), "Largest frame accepted from or sent to an endpoint, in bytes.",
             applies=Applies.NEW_CONNECTIONS),
    Property("notification.maxBatch", "notification_max_batch", partial(_integer, minimum=1),
             "500", "Most notifications in one NOTIFICATION message.",
             applies=Applies.NEW_CONNECTIONS),
    Property("notification.stallAfterSends", "notification_stall_after_sends",
             partial(_integer, minimum=2), "12",
             "Sends of one NOTIFICATION without an ack after which the group's delivery is "
             "reported STALLED (one error event, status, a metric); sending goes on.",
             applies=Applies.NEW_CONNECTIONS),
    Property("notification.retentionDays", "notification_retention_days",
             partial(_seconds, positive=True), "30",
             "Days an unacknowledged notification is kept before it is dropped (loudly)."),
    Property("restApi.baseUrl", "rest_api_base_url", _url, "https://localhost:1556",
             "Scheme, host and port of the local NetBackup REST API."),
    Property("restApi.caFile", "rest_api_ca_file", _optional_path, "",
             "CA bundle (PEM) that signed the REST API's certificate. Empty: system CAs."),
    Property("restApi.verify", "rest_api_verify", _boolean, "true",
             "false disables TLS verification of the local REST API (logged as a warning)."),
    Property("restApi.apiKeyFile", "rest_api_key_file", _optional_path, "",
             "File holding an API key for the poller (sent as Authorization)."),
    Property("restApi.userName", "rest_api_user_name", _optional_text, "",
             "User name for the poller's POST /login (with restApi.passwordFile)."),
    Property("restApi.passwordFile", "rest_api_password_file", _optional_path, "",
             "File holding the password for restApi.userName."),
    Property("restApi.domainName", "rest_api_domain_name", _optional_text, "",
             "domainName sent with the poller's POST /login (e.g. an NT or LDAP domain). "
             "Empty: not sent."),
    Property("restApi.domainType", "rest_api_domain_type", _domain_type, "",
             "domainType sent with the poller's POST /login: NT, vx, unixpwd or ldap. "
             "Empty: not sent."),
    Property("restApi.apiVersion", "rest_api_version", _api_version, "auto",
             "API version the poller asks for: auto (the newest the server accepts, "
             "found by stepping down on 406) or a version such as 12.0."),
    Property("command.maxConcurrent", "command_max_concurrent", partial(_integer, minimum=1),
             "16", "COMMAND requests run at once per connection; more wait their turn."),
    Property("command.maxQueued", "command_max_queued", partial(_integer, minimum=1), "64",
             "COMMAND requests one connection may have running or waiting; past it, a "
             "COMMAND is answered 503 at once. Below command.maxConcurrent, it is also "
             "the most that run at once."),
    Property("command.timeout", "command_timeout_s", _seconds, "60",
             "Seconds a COMMAND's REST call may take before it is answered with 504."),
    Property("command.allowedPrefixes", "command_allowed_prefixes", _prefixes, "/netbackup/",
             "Comma-separated URI prefixes a COMMAND may reach on the local REST API."),
    Property("command.maxBodyBytes", "command_max_body_bytes", partial(_integer, minimum=1),
             str(16 * _MIB), "Largest COMMAND request or response body, in bytes."),
    Property("poller.enabled", "poller_enabled", _optional_boolean, "auto",
             "Poll the REST API for jobs and images: true, false, or auto (when API "
             "credentials are configured)."),
    Property("poller.jobsRate", "poller_jobs_rate_s", _seconds, "5",
             "Seconds between polls of /admin/jobs."),
    Property("poller.imagesRate", "poller_images_rate_s", _seconds, "5",
             "Seconds between polls of /catalog/images."),
    Property("poller.imageWindowDays", "poller_image_window_days", partial(_integer, minimum=1),
             "30", "Days of images tracked for UPDATE and DELETE detection."),
    Property("poller.pageSize", "poller_page_size", partial(_integer, minimum=1, maximum=100),
             "100", "page[limit] used when paging through the REST API (the API's most: "
             "100)."),
    Property("proxy.url", "proxy_url", _proxy_url, "",
             "HTTP proxy for connections to endpoints and details URLs, as "
             "http://host:port; they go through it with CONNECT, TLS stays end to end. "
             "Empty: connect directly.",
             applies=Applies.NEW_CONNECTIONS),
    Property("proxy.credentialsFile", "proxy_credentials_file", _optional_path, "",
             "File holding user:password for the proxy (Basic authentication). Empty: "
             "no credentials.",
             applies=Applies.NEW_CONNECTIONS),
    Property("proxy.noProxy", "proxy_no_proxy", _no_proxy, "",
             "Hosts reached without the proxy, comma-separated: a name, .domain (every "
             "name under it), an IP address or network (10.0.0.0/8), or *.",
             applies=Applies.NEW_CONNECTIONS),
    Property("proxy.useEnvironment", "proxy_use_environment", _boolean, "false",
             "true also honours https_proxy (when proxy.url is empty) and no_proxy from "
             "the environment nbwss runs in.",
             applies=Applies.NEW_CONNECTIONS),
    Property("status.listen", "status_listen", _optional_text, "",
             "Where /status and /metrics are served: a Unix socket path, or 127.0.0.1:PORT. "
             "Empty: nbwss.sock beside the database."),
    Property("status.maxBacklogAge", "status_max_backlog_age_s", _seconds, "600",
             "Seconds the oldest unacknowledged notification of a group may wait before "
             "`nbwss status --check` and /ready report the group as failing."),
    Property("eventLoop", "event_loop", _choice("auto", "asyncio", "uvloop"), "asyncio",
             "The daemon's event loop: asyncio's; uvloop (nbwss[speed]) refuses to start "
             "without it; auto takes uvloop when it is installed. uvloop measured no "
             "better here (docs/benchmarks.md)."),
    Property("log.level", "log_level", _choice("debug", "info", "warning", "error"), "info",
             "Least severe log events written.",
             applies=Applies.NOW),
    Property("log.format", "log_format", _choice("auto", "json", "console"), "auto",
             "json for the journal, console for people; auto picks by whether stderr is a "
             "terminal.",
             applies=Applies.NOW),
)

_BY_KEY = {prop.key: prop for prop in PROPERTIES}
IGNORED_PREFIXES = ("hibernate.",)


def _shown(value: str) -> str:
    """A bad value as an error repeats it, without a URL's user:password@."""
    return re.sub(r"(?<=://)[^/@\s]*@", "***@", value.strip())


def read_values(text: str, source: Path | None = None) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Every key of a file's text converted, by `Settings` field name, and the warnings
    (unknown keys); a bad value raises `ConfigError` naming its line."""
    where = f"{source}:" if source else "line "
    values: dict[str, Any] = {}
    warnings: list[str] = []
    try:
        entries = parse_properties(text)
    except ConfigError as exc:
        if source is None:
            raise
        raise ConfigError(f"{source}:{str(exc).removeprefix('line ')}") from None
    for entry in entries:
        if entry.key.startswith(IGNORED_PREFIXES):
            continue
        prop = _BY_KEY.get(entry.key)
        if prop is None:
            warnings.append(f"{where}{entry.line}: unknown key {entry.key!r} ignored")
            continue
        try:
            values[prop.field] = prop.convert(entry.value)
        except ValueError as exc:
            raise ConfigError(
                f"{where}{entry.line}: {entry.key}={_shown(entry.value)!r} is not valid, "
                f"expected {exc}"
            ) from None
    return values, tuple(warnings)


def read_text(path: Path) -> str:
    """The file's text: UTF-8, else Latin-1 (what Java 8 reads; Java 9+ reads UTF-8)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read properties file {path}: {exc.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def default_store_path(env: Mapping[str, str]) -> Path:
    """`$STATE_DIRECTORY` (systemd), else `$XDG_STATE_HOME/nbwss`, else ~/.local/state/nbwss."""
    state_directory = env.get("STATE_DIRECTORY", "").split(":")[0]
    if state_directory:
        return Path(state_directory) / "nbwss.db"
    xdg = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME", "~")) / ".local" / "state")
    return Path(xdg).expanduser() / "nbwss" / "nbwss.db"


def resolve_store(
    store_path: Path | None, key_path: Path | None, env: Mapping[str, str]
) -> tuple[Path, Path | None]:
    """The store path (the default when the file left it empty) and the key file's.

    A key handed over by systemd (`LoadCredential=nbwss.key:...`, seen as
    `$CREDENTIALS_DIRECTORY/nbwss.key`) wins over `store.keyFile`: then the key can stay
    0600 root on disk and the service still reads it.
    """
    if env.get("CREDENTIALS_DIRECTORY"):
        credential = Path(env["CREDENTIALS_DIRECTORY"]) / "nbwss.key"
        if key_path is None or credential.exists():
            key_path = credential
    return store_path or default_store_path(env), key_path


def key_file(database: Path, key_path: Path | None) -> Path:
    """The token key: `store.keyFile` as resolved, else nbwss.key beside the database."""
    return key_path or database.with_name("nbwss.key")


def wake_socket(database: Path) -> Path:
    """The datagram socket `nbwss notify` pokes so the daemon sends without waiting."""
    return database.with_name("nbwss.wake")


class IntakeSettings(NamedTuple):
    """What `nbwss notify` needs of the settings, read as `Settings` would read them."""

    database: Path
    key_file: Path
    wake_socket: Path
    message_max_bytes: int
    log_level: str
    log_format: str
    warnings: tuple[str, ...]


def intake_settings(path: Path | None, env: Mapping[str, str] | None = None) -> IntakeSettings:
    """`IntakeSettings` from `path` (None: the defaults), every key checked as by `load`."""
    env = os.environ if env is None else env
    values, warnings = read_values(read_text(path), path) if path is not None else ({}, ())

    def value(name: str) -> Any:
        if name in values:
            return values[name]
        prop = _BY_FIELD[name]
        return prop.convert(prop.default)

    database, key_path = resolve_store(value("store_path"), value("key_path"), env)
    return IntakeSettings(
        database, key_file(database, key_path), wake_socket(database),
        value("message_max_bytes"), value("log_level"), value("log_format"), warnings,
    )  # fmt: skip


_BY_FIELD = {prop.field: prop for prop in PROPERTIES}
