"""The poller's client of the local NetBackup REST API: credentials, login, versions, paging.

Shaped after Veritas's OpenAPI files (gateway.yaml for /login, admin.yaml for
/admin/jobs, catalog.yaml for /catalog/images; 10.3 to 11.2) and its code samples:

- every call names an API version in `Accept` (and `Content-Type` for the login); the
  version comes from `apiversion.VersionNegotiation`, stepping down on 406;
- `POST /login` sends `userName`, `password` and, when configured, `domainName` and
  `domainType`; its 201 carries `token`, `tokenType` and `validity` (seconds). The JWT
  is renewed before its validity runs out (and once on a 401). A `tokenType` other than
  `BEARER` (multi-factor authentication) is a configuration error: the poller cannot
  answer a one-time password;
- query strings are built here, percent-encoded with `%20` for a space (the samples:
  "the filter query requires use of %20 for space instead of +"), and handed to aiohttp
  as an already-encoded URL so that nothing re-encodes them;
- a listing pages by offset (`page[offset]`, integer `meta.pagination.next`) or by
  cursor (`page[after]`, string `next`, `rangeTruncated`), as the caller says for the
  version that answered its first page.

Every failure the poller can meet (connection refused or dropped, timeout, an HTTP
error, a 401 that a fresh login does not cure, no API version accepted, a page that is
not the documented shape) becomes one `ApiUnavailableError` whose text carries
NetBackup's own `errorCode` and `errorMessage` when the API sent them. Secrets are read
from files and registered with the log redactor before anything can log them; the JWT
is registered the moment it arrives.
"""

from __future__ import annotations

import asyncio
import json
import math
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import yarl

from nbwss import logs
from nbwss.errors import ConfigError, NbwssError
from nbwss.properties import Settings
from nbwss.secretfile import read_secret as _read_secret
from nbwss.sources.apiversion import KNOWN_VERSIONS, VersionNegotiation, media_type

API_PREFIX: Final = "/netbackup"
# The longest a single REST call may take before the poll counts as failed.
CALL_TIMEOUT_S: Final = 30.0
# A listing this long is not a catalog we can page through: refuse instead of looping.
MAX_PAGES: Final = 100_000
# A JWT is renewed once this share of its validity has passed.
RENEW_AT_FRACTION: Final = 0.8
# The token type the poller can use; MFA (10.3+) needs a one-time password.
BEARER: Final = "BEARER"
# Characters left as they are in a query value, as Veritas's getting-started example
# leaves them; everything else (space, ':', '/', '+', '%', ...) is percent-encoded.
_QUERY_SAFE: Final = "'(),!*"
# The longest NetBackup error text put into a log reason.
_MAX_REASON: Final = 300

log = logs.get_logger("nbwss.poller")

Query = Sequence[tuple[str, str]]


class ApiUnavailableError(NbwssError):
    """The REST API could not give a complete, well-formed answer; retry later."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """An API key (sent as Authorization), or a user, password and domain for /login."""

    api_key: str | None = None
    user_name: str | None = None
    password: str | None = None
    domain_name: str | None = None
    domain_type: str | None = None


def load_credentials(settings: Settings, env: Mapping[str, str]) -> Credentials:
    """The poller's credentials from the files the settings name (the API key wins)."""
    if settings.rest_api_key_file is not None:
        return Credentials(api_key=_read_secret(settings.rest_api_key_file, env,
                                                "restApi.apiKeyFile"))
    if settings.rest_api_user_name and settings.rest_api_password_file is not None:
        password = _read_secret(settings.rest_api_password_file, env, "restApi.passwordFile")
        return Credentials(user_name=settings.rest_api_user_name, password=password,
                           domain_name=settings.rest_api_domain_name,
                           domain_type=settings.rest_api_domain_type)
    raise ConfigError(
        "the poller needs restApi.apiKeyFile, or restApi.userName and restApi.passwordFile"
    )


def ssl_for(settings: Settings) -> ssl.SSLContext | bool:
    """How to verify the local API: its CA file, the system CAs, or (told so) not at all."""
    if not settings.rest_api_verify:
        return False
    cafile = str(settings.rest_api_ca_file) if settings.rest_api_ca_file else None
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"restApi.caFile: cannot load {cafile}: {exc}") from None


# -- query strings and error bodies --------------------------------------------------------


def encode_query(query: Query) -> str:
    """`name=value&...`, names and values percent-encoded, a space as `%20` (never `+`)."""
    return "&".join(f"{quote(name, safe='')}={quote(value, safe=_QUERY_SAFE)}"
                    for name, value in query)


def describe_error(status: int, body: bytes) -> str:
    """`HTTP 400, NetBackup error 8961: <errorMessage> (<details>)`, or `HTTP 400`.

    NetBackup's error body (every OpenAPI file's error schema): `errorCode` (a NetBackup
    status code), `errorMessage`, `errorDetails` (strings), `attributeErrors` (a map).
    """
    text = f"HTTP {status}"
    try:
        error = json.loads(body)
    except ValueError:
        return text
    if not isinstance(error, dict) or "errorCode" not in error:
        return text
    text += f", NetBackup error {error.get('errorCode')}: {error.get('errorMessage', '')}"
    listed = error.get("errorDetails")
    details = [str(d) for d in listed if d] if isinstance(listed, list) else []
    attributes = error.get("attributeErrors")
    if isinstance(attributes, dict):
        details += [f"{name}: {reason}" for name, reason in attributes.items()]
    if details:
        text += f" ({'; '.join(details)})"
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


# -- pages ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a JSON:API list: its records and where the next page starts, if any."""

    records: list[dict[str, Any]]
    next_offset: int | None = None
    next_cursor: str | None = None
    range_truncated: bool = False


def _records(body: Any) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The page's records and its `meta.pagination`, or ApiUnavailableError."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise ApiUnavailableError("malformed page: no data list")
    records = body["data"]
    if not all(isinstance(r, dict) and isinstance(r.get("attributes"), dict) for r in records):
        raise ApiUnavailableError("malformed page: a record has no attributes object")
    meta = body.get("meta")
    pagination = meta.get("pagination") if isinstance(meta, dict) else None
    return records, pagination if isinstance(pagination, dict) else None


def parse_page(body: Any, offset: int, limit: int) -> Page:
    """An offset-paged page; the next offset comes from meta.pagination when given."""
    records, pagination = _records(body)
    if pagination is not None:
        following = pagination.get("next")
        if following is None:
            return Page(records)
        if isinstance(following, bool) or not isinstance(following, int) or following <= offset:
            raise ApiUnavailableError("malformed page: pagination.next does not move on")
        return Page(records, next_offset=following)
    # No pagination block: a short page is the last one.
    return Page(records, next_offset=offset + len(records) if len(records) >= limit > 0 else None)


def parse_cursor_page(body: Any) -> Page:
    """A cursor-paged page (jobs from API 9.0): `next` a string; missing or empty ends it."""
    records, pagination = _records(body)
    pagination = pagination or {}
    following = pagination.get("next")
    truncated = pagination.get("rangeTruncated", False)
    if following is not None and not isinstance(following, str):
        raise ApiUnavailableError("malformed page: pagination.next is not a cursor string")
    if not isinstance(truncated, bool):
        raise ApiUnavailableError("malformed page: pagination.rangeTruncated is not a boolean")
    return Page(records, next_cursor=following or None, range_truncated=truncated)


# -- the client ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    """A JWT from /login and when to renew it (on the client's clock)."""

    value: str
    renew_at: float | None


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer and the API version it was asked in."""

    status: int
    body: bytes
    version: str


class RestClient:
    """Authenticated GETs and complete listings against the local API."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials,
        session: aiohttp.ClientSession,
        page_size: int,
        *,
        negotiation: VersionNegotiation | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base = base_url.rstrip("/") + API_PREFIX
        self._credentials = credentials
        self._session = session
        self._page_size = page_size
        self.negotiation = negotiation or VersionNegotiation()
        self._clock = clock
        self._token: Token | None = None
        self._login_lock = asyncio.Lock()
        self.pages_read = 0

    # -- listings --------------------------------------------------------------------------

    async def list_all(
        self, path: str, query: Query, cursor_paging: Callable[[str], bool] = lambda _: False
    ) -> list[dict[str, Any]]:
        """Every record of a list, page by page; any failure fails the whole listing.

        The first page is asked without an offset or a cursor (both styles start there);
        the version that answers it decides the style (`cursor_paging(version)`), and the
        later pages are asked in that same version.
        """
        limit = [("page[limit]", str(self._page_size))]
        first = await self.get_json(path, [*query, *limit])
        if cursor_paging(first.version):
            return await self._list_by_cursor(path, [*query, *limit], first)
        return await self._list_by_offset(path, [*query, *limit], first)

    async def _list_by_offset(self, path: str, query: Query, first: Answer) -> list[Any]:
        page = parse_page(_json(first, path), 0, self._page_size)
        records = list(page.records)
        self.pages_read += 1
        for _ in range(MAX_PAGES):
            if page.next_offset is None:
                return records
            offset = page.next_offset
            answer = await self.get_json(path, [*query, ("page[offset]", str(offset))],
                                         pin=first.version)
            page = parse_page(_json(answer, path), offset, self._page_size)
            self.pages_read += 1
            records.extend(page.records)
        raise ApiUnavailableError(f"listing {path} has more than {MAX_PAGES} pages")

    async def _list_by_cursor(self, path: str, query: Query, first: Answer) -> list[Any]:
        page = parse_cursor_page(_json(first, path))
        records = list(page.records)
        self.pages_read += 1
        for _ in range(MAX_PAGES):
            if page.range_truncated:
                # Documented for ranges (page[after] and page[before]); we never send both.
                log.warning("poller.range_truncated", path=path, more=page.next_cursor
                            is not None)
            if page.next_cursor is None:
                if page.range_truncated:
                    raise ApiUnavailableError(f"listing {path}: range truncated, no cursor")
                return records
            cursor = page.next_cursor
            answer = await self.get_json(path, [*query, ("page[after]", cursor)],
                                         pin=first.version)
            page = parse_cursor_page(_json(answer, path))
            if page.next_cursor == cursor:
                raise ApiUnavailableError("malformed page: pagination.next does not move on")
            self.pages_read += 1
            records.extend(page.records)
        raise ApiUnavailableError(f"listing {path} has more than {MAX_PAGES} pages")

    # -- one GET ---------------------------------------------------------------------------

    async def get_json(self, path: str, query: Query, pin: str | None = None) -> Answer:
        """GET `path` (under /netbackup); 200 or ApiUnavailableError.

        On a 401 with a JWT, log in afresh once and retry. `pin` asks in that version
        only (the rest of a listing): a 406 then fails the listing, to start over.
        """
        authorization = await self._authorization()
        answer = await self._get(path, query, authorization, pin)
        if answer.status == 401 and self._credentials.api_key is None:
            if self._token is not None and self._token.value == authorization:
                self._token = None  # not already renewed by the other poll
            answer = await self._get(path, query, await self._authorization(), pin)
        if answer.status == 401:
            error = describe_error(401, answer.body)
            raise ApiUnavailableError(f"GET {path}: authentication refused ({error})")
        if answer.status != 200:
            raise ApiUnavailableError(f"GET {path}: {describe_error(answer.status, answer.body)}")
        return answer

    async def _get(self, path: str, query: Query, authorization: str, pin: str | None
                   ) -> Answer:
        url = yarl.URL(f"{self._base}{path}?{encode_query(query)}", encoded=True)

        async def send(version: str) -> tuple[int, bytes]:
            headers = {"Accept": media_type(version), "Authorization": authorization}
            return await self._call("GET", url, path, headers=headers)

        return await self._negotiated(send, f"GET {path}", pin)

    async def _negotiated(
        self, send: Callable[[str], Awaitable[tuple[int, bytes]]], what: str,
        pin: str | None = None, refusals: tuple[int, ...] = (406,),
    ) -> Answer:
        """Send in the current version, stepping down while the server refuses it."""
        version = pin or self.negotiation.current
        for _ in range(len(KNOWN_VERSIONS) + 1):
            status, body = await send(version)
            if status not in refusals:
                if 200 <= status < 300 and self.negotiation.on_accepted(version):
                    log.info("poller.api_version", version=version,
                             setting=self.negotiation.setting)
                return Answer(status, body, version)
            following = self.negotiation.on_refused(version)
            if pin is not None or following is None:
                raise ApiUnavailableError(self._refused(what, version, status, body, pin))
            log.debug("poller.api_version_refused", version=version, next=following)
            version = following
        raise ApiUnavailableError(f"{what}: no API version accepted")

    def _refused(self, what: str, version: str, status: int, body: bytes, pin: str | None
                 ) -> str:
        error = describe_error(status, body)
        if pin is not None:
            return f"{what}: API version {version} refused mid-listing ({error}); starting over"
        if self.negotiation.fixed:
            return (f"{what}: API version {version} (restApi.apiVersion) refused ({error}); "
                    "set restApi.apiVersion=auto or a version this server serves")
        return f"{what}: no API version from {KNOWN_VERSIONS[0]} down to {version} accepted " \
               f"({error})"

    # -- authentication --------------------------------------------------------------------

    async def _authorization(self) -> str:
        if self._credentials.api_key is not None:
            return self._credentials.api_key
        async with self._login_lock:  # the two polls share one JWT and one login
            token = self._token
            if token is None or (token.renew_at is not None and self._clock() >= token.renew_at):
                token = self._token = await self._login()
            return token.value

    async def _login(self) -> Token:
        body = json.dumps(self._login_body(), allow_nan=False)
        url = yarl.URL(f"{self._base}/login", encoded=True)

        async def send(version: str) -> tuple[int, bytes]:
            headers = {"Content-Type": media_type(version), "Accept": media_type(version)}
            return await self._call("POST", url, "/login", headers=headers, data=body)

        # A Content-Type version the server does not take may be answered 415, not 406.
        answer = await self._negotiated(send, "POST /login", refusals=(406, 415))
        if answer.status not in (200, 201):
            error = describe_error(answer.status, answer.body)
            raise ApiUnavailableError(f"POST /login: login refused ({error})")
        token, validity = self._read_login(answer.body)
        logs.register_secret(token)
        log.info("poller.logged_in", user=self._credentials.user_name, validity_s=validity)
        renew_at = None if validity is None else self._clock() + validity * RENEW_AT_FRACTION
        return Token(token, renew_at)

    def _login_body(self) -> dict[str, str | None]:
        body: dict[str, str | None] = {"userName": self._credentials.user_name,
                                       "password": self._credentials.password}
        if self._credentials.domain_name:
            body["domainName"] = self._credentials.domain_name
        if self._credentials.domain_type:
            body["domainType"] = self._credentials.domain_type
        return body

    def _read_login(self, body: bytes) -> tuple[str, int | None]:
        """`token`, and `validity` in seconds when given; a non-BEARER token stops us."""
        try:
            answer = json.loads(body)
        except ValueError:
            raise ApiUnavailableError("malformed login answer: not JSON") from None
        token = answer.get("token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise ApiUnavailableError("malformed login answer: no token")
        token_type = answer.get("tokenType") or BEARER  # absent (older releases): BEARER
        if not isinstance(token_type, str) or token_type.upper() != BEARER:
            raise ConfigError(
                f"restApi.userName: the login answered tokenType {token_type!r}, not BEARER: "
                "the account needs multi-factor authentication, which the poller cannot "
                "answer; use restApi.apiKeyFile or an account without MFA"
            )
        validity = answer.get("validity")
        if isinstance(validity, bool) or not isinstance(validity, int) or validity <= 0:
            validity = None
        return token, validity

    async def _call(self, method: str, url: yarl.URL, path: str, **kwargs: Any
                    ) -> tuple[int, bytes]:
        try:
            async with self._session.request(
                method, url, timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S), **kwargs,
            ) as response:
                return response.status, await response.read()
        except TimeoutError:
            raise ApiUnavailableError(f"{method} {path} timed out") from None
        except aiohttp.ClientError as exc:
            raise ApiUnavailableError(f"{method} {path}: {type(exc).__name__}") from None


def _lenient_int(literal: str) -> int | float:
    """An integer of a page; one too long for Python's int (4,300 digits) becomes inf, so
    its record alone is set aside by the mapping instead of the whole page failing."""
    return int(literal) if len(literal) <= _INT_DIGITS else math.inf


_INT_DIGITS = 4000


def _json(answer: Answer, path: str) -> Any:
    """A page, parsed leniently: NaN, Infinity and huge numbers are left for the mapping to
    set aside with their record (`mapping.parse_time`, `notifications.check_wire`)."""
    try:
        return json.loads(answer.body, parse_int=_lenient_int)
    except ValueError:
        raise ApiUnavailableError(f"malformed page: {path} did not answer JSON") from None
