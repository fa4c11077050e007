"""Endpoint details: the five-entry JSON that describes one endpoint (spec section 2).

`parse_details` is pure and applies every rule of the guide, with the guide's messages
(plus a reason after a colon, so an admin knows which field to fix). `fetch_details` is
the one piece of I/O: the details of a URL source, fetched over HTTPS. Redirects are
followed by hand, at most three, each checked before it is followed: only to another
https:// URL (a redirect to http would send the request, and show the token's answer,
in clear), and each hop through the proxy the outbound policy names for it.
"""

from __future__ import annotations

import ipaddress
import json
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential
from yarl import URL

from nbwss.errors import (
    MSG_INCORRECT_URL,
    MSG_INVALID_JSON,
    MSG_INVALID_PARAMETER,
    MSG_NO_URL_CONNECTION,
    MSG_ONLY_WSS,
    MSG_UNPARSABLE,
    DecodeError,
    DetailsError,
)
from nbwss.messages import parse_json
from nbwss.neterrors import describe
from nbwss.outbound import Proxy, ProxyPolicy, request_options

REQUIRED_KEYS = ("token", "priority", "groupId", "hostName", "url")
# A DNS name's limit (RFC 1035); each dot-separated label is 1 to 63 characters.
MAX_HOST_NAME = 253
_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
# Characters that change what a terminal shows: C1 controls, and the bidirectional
# marks and overrides that can make `evil.test` print as something else.
_TERMINAL_TRICKS = re.compile("[\x80-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# Details are small; anything larger is not endpoint details.
MAX_DETAILS_BYTES = 64 * 1024
# The guide's priority is a Java int; a larger number would not even fit SQLite's INTEGER.
JAVA_INT_MIN, JAVA_INT_MAX = -(2**31), 2**31 - 1


@dataclass(frozen=True, slots=True)
class EndpointDetails:
    token: str
    priority: int
    group_id: str
    host_name: str
    url: str

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 443

    @property
    def server_host(self) -> str:
        """The host to dial (from the URL; `hostName` is the endpoint's unique name)."""
        return urlsplit(self.url).hostname or self.host_name

    def __repr__(self) -> str:  # never show the token, even in a traceback
        return (
            f"EndpointDetails(host_name={self.host_name!r}, group_id={self.group_id!r}, "
            f"priority={self.priority}, url={self.url!r}, token=<hidden>)"
        )


def check_wss_url(url: str) -> str:
    """A `wss://` URL with a host (and a valid port, if any); the guide's messages otherwise."""
    if _has_userinfo(url):  # first, and not echoed: it may hold a password
        raise DetailsError(
            f"{MSG_INCORRECT_URL}: the url holds a user name or password (user:pass@); "
            "the endpoint's token is what authenticates"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise DetailsError(f"{MSG_INCORRECT_URL}: {url!r} is malformed") from None
    if parts.scheme.lower() != "wss":
        raise DetailsError(f"{MSG_ONLY_WSS}: url is {url!r}")
    if not parts.hostname or any(c.isspace() for c in url):
        raise DetailsError(f"{MSG_INCORRECT_URL}: {url!r} has no host")
    if port == 0:
        raise DetailsError(f"{MSG_INCORRECT_URL}: {url!r} has port 0")
    return url


def _has_apostrophe(value: Any) -> bool:
    """Whether any key or string, at any depth, holds an apostrophe (walked without recursion)."""
    pending = [value]
    while pending:
        node = pending.pop()
        if isinstance(node, str) and "'" in node:
            return True
        if isinstance(node, dict):
            pending.extend(node.keys())
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return False


def _string(obj: dict[str, Any], key: str) -> str:
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        raise DetailsError(f"{MSG_INVALID_JSON}: {key!r} must be a non-empty string")
    if any(ord(c) < 0x20 or c == "\x7f" for c in value) or _TERMINAL_TRICKS.search(value):
        raise DetailsError(f"{MSG_INVALID_JSON}: {key!r} holds a control character")
    return value.strip()


def _host_name(obj: dict[str, Any]) -> str:
    """`hostName`: a host name (labels of letters, digits, hyphens, underscores, joined by
    dots) or an IP address; it names the endpoint in every command and on terminals."""
    value = _string(obj, "hostName")
    if len(value) > MAX_HOST_NAME:
        raise DetailsError(
            f"{MSG_INVALID_JSON}: 'hostName' is longer than {MAX_HOST_NAME} characters"
        )
    try:
        ipaddress.ip_address(value.strip("[]"))
        return value
    except ValueError:
        pass
    if not all(_HOST_LABEL.fullmatch(label) for label in value.split(".")):
        raise DetailsError(
            f"{MSG_INVALID_JSON}: 'hostName' is {ascii(value)[:70]}, expected a host name "
            "(letters, digits, hyphens, dots) or an IP address"
        )
    return value


def details_from_object(obj: Any) -> EndpointDetails:
    """Validate an already parsed JSON value as endpoint details."""
    if isinstance(obj, list):
        raise DetailsError(f"{MSG_INVALID_JSON}: one file describes one endpoint, not a list")
    if not isinstance(obj, dict):
        raise DetailsError(f"{MSG_INVALID_JSON}: expected a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in obj]
    if missing:
        raise DetailsError(f"{MSG_INVALID_JSON}: missing {', '.join(map(repr, missing))}")
    if _has_apostrophe(obj):
        raise DetailsError(f"{MSG_INVALID_JSON}: an apostrophe (') is not supported")
    priority = obj["priority"]
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise DetailsError(f"{MSG_INVALID_JSON}: 'priority' must be an unquoted integer")
    if not JAVA_INT_MIN <= priority <= JAVA_INT_MAX:
        raise DetailsError(f"{MSG_INVALID_JSON}: 'priority' is out of the integer range")
    return EndpointDetails(
        token=_string(obj, "token"),
        priority=priority,
        group_id=_string(obj, "groupId"),
        host_name=_host_name(obj),
        url=check_wss_url(_string(obj, "url")),
    )


def parse_details(text: str | bytes) -> EndpointDetails:
    """Parse and validate the JSON text of one endpoint's details."""
    try:
        obj = parse_json(text, MAX_DETAILS_BYTES, "the details")
    except DecodeError as exc:
        raise DetailsError(f"{MSG_INVALID_JSON}: {exc}") from None
    return details_from_object(obj)


def details_to_json(details: EndpointDetails) -> str:
    """The details as the guide's JSON (used by the demo to write its endpoints' files)."""
    return json.dumps(
        {
            "token": details.token,
            "priority": details.priority,
            "groupId": details.group_id,
            "hostName": details.host_name,
            "url": details.url,
        },
        indent=2,
        allow_nan=False,
    )


# -- details served by the cloud app over HTTPS ----------------------------------------------

FETCH_TIMEOUT_S = 10.0
FETCH_ATTEMPTS = 3
_MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def check_details_url(url: str) -> str:
    """An `https://` URL with a host; the guide's "Invalid command parameter" otherwise."""
    url = url.strip()
    if _has_userinfo(url):  # first, and not echoed: it may hold a password
        raise DetailsError(
            f"{MSG_INVALID_PARAMETER}: {MSG_INCORRECT_URL}: the URL holds a user name or "
            "password (user:pass@)"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise DetailsError(f"{MSG_INVALID_PARAMETER}: {MSG_INCORRECT_URL}: {url!r}") from None
    if parts.scheme.lower() != "https" or not parts.hostname or any(c.isspace() for c in url):
        raise DetailsError(
            f"{MSG_INVALID_PARAMETER}: {MSG_INCORRECT_URL}: {url!r} is not an https:// URL "
            "with a host"
        )
    return url


def _has_userinfo(url: str) -> bool:
    """Whether the URL's authority holds `user[:password]@`. Decided on the raw text, before
    any parsing that could fail (a bad port, another scheme) and echo the URL whole."""
    rest = url.split("//", 1)[1] if "//" in url else url
    for end in "/?#":
        rest = rest.split(end, 1)[0]
    return "@" in rest


def _is_transient(exc: BaseException) -> bool:
    """Worth another try: the connection failed or dropped. TLS and HTTP answers are final."""
    if isinstance(exc, aiohttp.ClientSSLError):
        return False
    return isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ServerDisconnectedError)


async def _read_limited(response: aiohttp.ClientResponse, url: str) -> bytes:
    too_large = DetailsError(f"{MSG_UNPARSABLE}: {url} serves more than {MAX_DETAILS_BYTES} bytes")
    if (response.content_length or 0) > MAX_DETAILS_BYTES:
        raise too_large
    body = bytearray()
    async for chunk in response.content.iter_chunked(16 * 1024):
        body += chunk
        if len(body) > MAX_DETAILS_BYTES:
            raise too_large
    return bytes(body)


async def _get_once(
    session: aiohttp.ClientSession,
    url: str,
    context: ssl.SSLContext,
    proxy_for: Callable[[str], Proxy | None],
) -> bytes:
    """GET `url`, following up to `_MAX_REDIRECTS` redirects, each checked first."""
    current = url
    for _ in range(_MAX_REDIRECTS + 1):
        async with session.get(
            current, ssl=context, allow_redirects=False, **request_options(proxy_for(current))
        ) as response:
            if response.status in _REDIRECTS:
                current = _redirect_target(url, response)
                continue
            if response.status != 200:
                raise DetailsError(
                    f"{MSG_NO_URL_CONNECTION}: {url} answered {response.status} {response.reason}"
                )
            return await _read_limited(response, url)
    raise DetailsError(f"{MSG_NO_URL_CONNECTION}: {url} redirects more than {_MAX_REDIRECTS} times")


def _redirect_target(url: str, response: aiohttp.ClientResponse) -> str:
    """Where a redirect points, if it may be followed: an https:// URL with a host."""
    location = response.headers.get("Location", "")
    try:
        target = response.url.join(URL(location))
    except ValueError:
        target = None
    if not location or target is None or not target.host:
        raise DetailsError(
            f"{MSG_NO_URL_CONNECTION}: {url} answered {response.status} without a usable Location"
        )
    if target.scheme != "https":
        shown = str(target.with_query(None).with_fragment(None))[:200]
        raise DetailsError(
            f"{MSG_NO_URL_CONNECTION}: {url} redirects to {shown}, plain http or another "
            "scheme: only https is followed"
        )
    return str(target)


def _failure(exc: BaseException, proxy: Proxy | None) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out" + (f" through proxy {proxy.url}" if proxy is not None else "")
    if proxy is not None:
        return describe(exc, proxy)
    return str(exc) or type(exc).__name__


async def fetch_details(
    url: str,
    *,
    ca_file: Path | None = None,
    timeout_s: float = FETCH_TIMEOUT_S,
    attempts: int = FETCH_ATTEMPTS,
    retry_wait_s: float = 0.2,
    proxy: Proxy | None = None,
    outbound: ProxyPolicy | None = None,
) -> EndpointDetails:
    """Fetch one endpoint's details over HTTPS (through `proxy`'s CONNECT tunnel when
    given; with `outbound`, through the proxy it names for each URL, redirects included)
    and validate them.

    The server's certificate is verified against the system trust store, or only against
    `ca_file` (PEM) when given, for a cloud app whose certificate a private CA signed.
    Connection failures are retried a few times (short, growing waits); anything the server
    did answer (TLS failure, HTTP status, bad content) is final at once.
    """
    url = check_details_url(url)
    policy = outbound if outbound is not None else ProxyPolicy(proxy)
    proxy_for = policy.proxy_for
    proxy = policy.proxy_for(url)  # the one a failure message names
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise DetailsError(f"cannot load CA file {ca_file}: {exc}") from None
    retrying = AsyncRetrying(
        retry=retry_if_exception(_is_transient),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=retry_wait_s, max=2.0),
        reraise=True,
    )
    try:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_s), trust_env=False
        ) as session:
            body: bytes = await retrying(_get_once, session, url, context, proxy_for)
    except aiohttp.ClientSSLError as exc:
        raise DetailsError(f"{MSG_NO_URL_CONNECTION}: {url}: TLS failed ({exc})") from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        reason = _failure(exc, proxy)
        raise DetailsError(f"{MSG_NO_URL_CONNECTION}: {url}: {reason}") from None
    try:
        obj = parse_json(body, MAX_DETAILS_BYTES, "the details")
    except DecodeError as exc:
        raise DetailsError(f"{MSG_UNPARSABLE}: {url}: {exc}") from None
    return details_from_object(obj)
