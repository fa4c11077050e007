"""The guard in front of the local REST API: is this COMMAND allowed, and what exactly to send.

The endpoint is on the internet and the REST API is inside the firewall, so a COMMAND
is checked before anything is sent (spec section 3, issue 5). Pure functions over
values: `check_command` takes the COMMAND payload and a `Policy` and returns either an
`ApiRequest` (the normalized request to send) or a `Refusal` (400 malformed, 403 refused
by policy) with a one-line reason. Nothing here does I/O.

The path that is checked is the path that is sent: the `uri` is percent-decoded, its
dot segments removed, and the result re-encoded canonically, so the API can never read
the path differently from the guard (no `..`, no encoded `/`, no double encoding left
to decode later). Refused outright, because a server behind us may give them meaning:
encoded `/` or `\\` (`%2f`, `%5c`), a `%` that survives decoding (double encoding),
`;` path parameters (Tomcat reads `..;` as `..`), control characters, empty segments,
and non-ASCII that Unicode NFKC would change (full-width dots and slashes).
Methods are the spec's five (no HEAD). Headers that would make a server or proxy
behind us act on another method, path or client than the one checked
(`X-HTTP-Method-Override`, `X-Original-URL`, `X-Rewrite-URL`, `Forwarded`,
`X-Forwarded-*`, ...) are dropped from what is sent.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, unquote_to_bytes

from nbwss.messages import error_body
from nbwss.properties import Settings

# The spec's list (section 3, COMMAND). HEAD is not in it: refused like any other.
ALLOWED_METHODS: Final = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
# RFC 9110 7.6.1 hop-by-hop fields: about one connection, never passed on either way.
HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
     "upgrade"}
)
# Dropped from a COMMAND's headers: hop-by-hop, plus those the client computes itself.
DROPPED_HEADERS: Final = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
        "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade", "host",
        "content-length",
    }
)
# Headers a server or proxy behind us may read as another method, path or client, so the
# guard's check would not be what the API does: dropped, whatever their case.
ROUTING_HEADERS: Final = frozenset(
    {
        "x-http-method-override", "x-http-method", "x-method-override", "x-original-url",
        "x-rewrite-url", "x-original-uri", "forwarded", "x-real-ip", "client-ip",
        "true-client-ip",
    }
)
ROUTING_HEADER_PREFIXES: Final = ("x-forwarded-",)
_ALWAYS_DROPPED: Final = DROPPED_HEADERS | ROUTING_HEADERS
MAX_URI_LENGTH: Final = 8192
MAX_HEADERS: Final = 100
MAX_HEADER_VALUE_LENGTH: Final = 16384

# RFC 3986 characters that may appear literally in a URI (plus '%' for escapes).
_URI_CHARS: Final = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")
_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 field name / method
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
# Characters left unescaped in a re-encoded path segment (RFC 3986 pchar minus ';').
_SEGMENT_SAFE: Final = "!$&'()*+,=:@-._~"


@dataclass(frozen=True, slots=True)
class Policy:
    """What a COMMAND may reach: the allowed path prefixes and the body size cap."""

    allowed_prefixes: tuple[str, ...] = ("/netbackup/",)
    max_body_bytes: int = 16 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(settings.command_allowed_prefixes, settings.command_max_body_bytes)


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """A COMMAND that passed the guard: send exactly this (path and query stay encoded)."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None

    @property
    def target(self) -> str:
        """The request target (origin-form) to append to the REST API's base URL."""
        return f"{self.path}?{self.query}" if self.query else self.path

    @property
    def loggable_uri(self) -> str:
        return loggable_uri(self.target)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a COMMAND is not carried out: 400 (malformed) or 403 (refused by policy)."""

    status: int
    field: str
    reason: str

    def body(self) -> dict[str, Any]:
        """The JSON body of the COMMAND RESPONSE, in NetBackup's error shape."""
        return error_body(self.status, f"{self.field}: {self.reason}", field=self.field)


def _malformed(field: str, reason: str) -> Refusal:
    return Refusal(400, field, reason)


def _forbidden(field: str, reason: str) -> Refusal:
    return Refusal(403, field, reason)


def check_command(payload: Any, policy: Policy) -> ApiRequest | Refusal:
    """Check a COMMAND REQUEST payload; the request to send, or why not."""
    # `type(...) is dict` first: a decoded payload is one, and the ABC check costs more.
    if type(payload) is not dict and not isinstance(payload, Mapping):
        return _malformed("payload", "must be an object")
    method = _check_method(payload.get("method"))
    if isinstance(method, Refusal):
        return method
    target = check_uri(payload.get("uri"), policy.allowed_prefixes)
    if isinstance(target, Refusal):
        return target
    headers = check_headers(payload.get("headers", {}))
    if isinstance(headers, Refusal):
        return headers
    body = _check_body(payload.get("parameters"), policy.max_body_bytes)
    if isinstance(body, Refusal):
        return body
    path, query = target
    return ApiRequest(method, path, query, headers, body)


def _check_method(method: Any) -> str | Refusal:
    if not isinstance(method, str) or not method:
        return _malformed("method", "must be a non-empty string")
    if method not in ALLOWED_METHODS and method.upper() in ALLOWED_METHODS:
        # Malformed, not refused: HTTP methods are case-sensitive, the guide's are upper-case.
        return _malformed("method", f"{method} must be upper-case ({method.upper()})")
    if method not in ALLOWED_METHODS:
        allowed = ", ".join(sorted(ALLOWED_METHODS))
        shown = method if _TOKEN.fullmatch(method) and len(method) <= 20 else "this method"
        return _forbidden("method", f"{shown} is not allowed (allowed: {allowed})")
    return method


def check_uri(uri: Any, allowed_prefixes: tuple[str, ...]) -> tuple[str, str] | Refusal:
    """The canonical (path, query) of an origin-form `uri` under an allowed prefix."""
    if not isinstance(uri, str) or not uri:
        return _malformed("uri", "must be a non-empty string")
    return _check_uri_text(uri, allowed_prefixes)


@functools.lru_cache(maxsize=1024)
def _check_uri_text(uri: str, allowed_prefixes: tuple[str, ...]) -> tuple[str, str] | Refusal:
    # Cached: an app repeats the same few URIs, and the answer depends on nothing else.
    shape = _check_uri_shape(uri)
    if isinstance(shape, Refusal):
        return shape
    raw_path, _, query = shape.partition("?")
    segments = _decode_segments(raw_path)
    if isinstance(segments, Refusal):
        return segments
    path = "/" + "/".join(quote(s, safe=_SEGMENT_SAFE) for s in _remove_dot_segments(segments))
    if not any(_under(path, prefix) for prefix in allowed_prefixes):
        allowed = ", ".join(allowed_prefixes)
        return _forbidden("uri", f"path {path[:80]} is outside the allowed prefixes ({allowed})")
    return path, query


def _check_uri_shape(uri: str) -> str | Refusal:
    """Syntax only: origin-form, RFC 3986 characters, well-formed escapes."""
    if len(uri) > MAX_URI_LENGTH:
        return _malformed("uri", f"is longer than {MAX_URI_LENGTH} characters")
    if "\\" in uri:
        return _malformed("uri", "must not contain a backslash")
    if _CONTROL.search(uri):
        return _malformed("uri", "must not contain control characters")
    if not _URI_CHARS.fullmatch(uri):
        return _malformed("uri", "must be ASCII URI characters (percent-encode the rest)")
    if not uri.startswith("/"):
        return _malformed("uri", "must be a path beginning with '/', not an absolute URL")
    if uri.startswith("//"):
        return _malformed("uri", "must not begin with '//' (a network path naming a host)")
    if "#" in uri:
        return _malformed("uri", "must not contain a fragment ('#')")
    if _BAD_ESCAPE.search(uri):
        return _malformed("uri", "has a '%' that is not followed by two hex digits")
    return uri


def _decode_segments(raw_path: str) -> list[str] | Refusal:
    """Percent-decode each segment, refusing what a server behind us might read differently."""
    raw_segments = raw_path.split("/")[1:]
    decoded: list[str] = []
    for index, raw in enumerate(raw_segments):
        if ";" in raw:
            return _forbidden("uri", "path parameters (';') are not allowed")
        if not raw and index < len(raw_segments) - 1:
            return _forbidden("uri", "empty path segments ('//') are not allowed")
        try:
            segment = unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            return _malformed("uri", "percent-escapes must decode to UTF-8")
        refusal = _check_decoded_segment(segment)
        if refusal is not None:
            return refusal
        decoded.append(segment)
    return decoded


def _check_decoded_segment(segment: str) -> Refusal | None:
    if "/" in segment or "\\" in segment:
        return _forbidden("uri", "encoded '/' or '\\' (%2F, %5C) is not allowed")
    if "%" in segment:
        return _forbidden("uri", "double percent-encoding (%25) is not allowed")
    if ";" in segment:
        return _forbidden("uri", "encoded ';' (%3B) is not allowed")
    if _CONTROL.search(segment):
        return _forbidden("uri", "encoded control characters are not allowed")
    if unicodedata.normalize("NFKC", segment) != segment:
        return _forbidden("uri", "Unicode that NFKC normalization would change is not allowed")
    return None


def _remove_dot_segments(segments: list[str]) -> list[str]:
    """RFC 3986 5.2.4 over decoded segments: '.' vanishes, '..' drops its parent."""
    output: list[str] = []
    for segment in segments:
        if segment == ".":
            continue
        if segment == "..":
            if output:
                output.pop()
            continue
        output.append(segment)
    if segments and segments[-1] in (".", ".."):
        output.append("")  # "/a/b/.." is "/a/", a directory, as in the RFC
    return output


def _under(path: str, prefix: str) -> bool:
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + "/")


def check_headers(headers: Any) -> tuple[tuple[str, str], ...] | Refusal:
    """Headers to forward: an object of strings, no CR/LF; hop-by-hop, Host and the
    routing headers (method overrides, original URL, `Forwarded`, `X-Forwarded-*`)
    dropped."""
    if headers is None:
        return ()
    if type(headers) is not dict and not isinstance(headers, Mapping):
        return _malformed("headers", "must be an object of strings")
    if len(headers) > MAX_HEADERS:
        return _malformed("headers", f"more than {MAX_HEADERS} headers")
    return _check_header_items(headers.items())


def _check_header_items(
    items: Iterable[tuple[Any, Any]],
) -> tuple[tuple[str, str], ...] | Refusal:
    # Values are never cached, unlike `_check_uri_text`: a cache would keep the app's
    # Authorization values after their call, and up to 256 header sets of 100 values of
    # 16 KiB each. Only what a short name says is (`_name_rule`).
    forwarded: list[tuple[str, str, bool]] = []  # (name, value, always dropped)
    listed_options = False  # a Connection header, whose options are dropped too
    for name, value in items:
        if not isinstance(name, str) or not isinstance(value, str):
            return _malformed("headers", "must be an object of strings")
        rule = _name_rule(name) if len(name) <= _CACHED_NAME_LENGTH else _name_rule_of(name)
        if value.isascii() and value.isprintable() and rule.is_token:
            # The usual header, in C: no CR, LF or control character, so encodable.
            if len(value) > MAX_HEADER_VALUE_LENGTH:
                return _malformed("headers", f"the value of {name} is too long")
        else:
            refusal = _check_unusual_header(name, value, rule.is_token)
            if refusal is not None:
                return refusal
        forwarded.append((name, value, rule.always_dropped))
        listed_options = listed_options or rule.is_connection
    if not listed_options:
        return tuple((n, v) for n, v, always_dropped in forwarded if not always_dropped)
    options = connection_options((n, v) for n, v, _ in forwarded)
    return tuple(
        (n, v) for n, v, always_dropped in forwarded
        if not always_dropped and n.lower() not in options
    )  # fmt: skip


def _check_unusual_header(name: str, value: str, is_token: bool) -> Refusal | None:
    """The checks of a header with a control or non-ASCII character, or a bad name."""
    if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
        return _malformed("headers", "names and values must not contain CR or LF")
    if not is_token:
        return _malformed("headers", "a header name is not a valid HTTP field name")
    if _CONTROL.search(value.replace("\t", "")):
        return _malformed("headers", f"the value of {name} has control characters")
    if not _encodable(name + value):
        return _malformed("headers", f"the value of {name} is not valid Unicode")
    if len(value) > MAX_HEADER_VALUE_LENGTH:
        return _malformed("headers", f"the value of {name} is too long")
    return None


@dataclass(frozen=True, slots=True)
class _NameRule:
    """What a header's name alone decides."""

    is_token: bool  # a valid HTTP field name
    always_dropped: bool  # hop-by-hop, Host, Content-Length or a routing header
    is_connection: bool  # Connection: its options are hop-by-hop too


# Names no longer than this are remembered (an app sends the same few on every call).
_CACHED_NAME_LENGTH: Final = 64


def _name_rule_of(name: str) -> _NameRule:
    lowered = name.lower()
    return _NameRule(
        _TOKEN.fullmatch(name) is not None,
        lowered in _ALWAYS_DROPPED or lowered.startswith(ROUTING_HEADER_PREFIXES),
        lowered == "connection",
    )


_name_rule = functools.lru_cache(maxsize=256)(_name_rule_of)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, which JSON can carry
        return False
    return True


def connection_options(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """Names listed in Connection are hop-by-hop too (RFC 9110 7.6.1)."""
    return frozenset(
        option.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for option in value.split(",")
    )


def _check_body(parameters: Any, max_body_bytes: int) -> bytes | Refusal | None:
    if parameters is None:
        return None
    if not isinstance(parameters, str):
        return _malformed("parameters", "must be a string (the request body)")
    if not _encodable(parameters):
        return _malformed("parameters", "is not valid Unicode")
    body = parameters.encode("utf-8")
    if len(body) > max_body_bytes:
        return _forbidden(
            "parameters",
            f"body of {len(body)} bytes exceeds command.maxBodyBytes ({max_body_bytes})",
        )
    return body


def loggable_uri(uri: str) -> str:
    """`uri` with query values removed (`?filter=&page[limit]=`): names only, never values."""
    path, sep, query = uri.partition("?")
    if not sep:
        return path
    names = (part.partition("=")[0] for part in query.split("&") if part)
    return path + "?" + "&".join(f"{name}=" for name in names)


def loggable_method_and_uri(payload: Any) -> tuple[str, str]:
    """Method and uri of a COMMAND as sent, safe to log (short, query values removed)."""
    if not isinstance(payload, dict):
        return "", ""
    method, uri = payload.get("method"), payload.get("uri")
    method_text = method[:20] if isinstance(method, str) else ""
    uri_text = loggable_uri(uri)[:200] if isinstance(uri, str) else ""
    return method_text, uri_text
