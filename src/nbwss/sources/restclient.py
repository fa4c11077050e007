"""The poller's client of the local NetBackup REST API: credentials, login, paging.

Every failure the poller can meet (connection refused or dropped, timeout, 5xx, a 401
that a fresh login does not cure, a page that is not the documented JSON:API shape)
becomes one `ApiUnavailableError` with a short reason, so the poller has one thing to
back off on. Secrets are read from files and registered with the log redactor before
anything can log them; the JWT is registered the moment it arrives.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp

from nbwss import logs
from nbwss.errors import ConfigError, NbwssError
from nbwss.properties import Settings

MEDIA_TYPE: Final = "application/vnd.netbackup+json;version=1.0"
API_PREFIX: Final = "/netbackup"
# The longest a single REST call may take before the poll counts as failed.
CALL_TIMEOUT_S: Final = 30.0
# A listing this long is not a catalog we can page through: refuse instead of looping.
MAX_PAGES: Final = 100_000

log = logs.get_logger("nbwss.poller")


class ApiUnavailableError(NbwssError):
    """The REST API could not give a complete, well-formed answer; retry later."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """Either an API key (sent as Authorization) or a user name and password for /login."""

    api_key: str | None = None
    user_name: str | None = None
    password: str | None = None


def _read_secret(path: Path, env: Mapping[str, str], key: str) -> str:
    """A secret file's text, stripped; relative paths are under $CREDENTIALS_DIRECTORY."""
    if not path.is_absolute() and env.get("CREDENTIALS_DIRECTORY"):
        path = Path(env["CREDENTIALS_DIRECTORY"]) / path
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ConfigError(f"{key}: cannot read {path}: {reason}") from None
    if not secret:
        raise ConfigError(f"{key}: {path} is empty")
    logs.register_secret(secret)
    return secret


def load_credentials(settings: Settings, env: Mapping[str, str]) -> Credentials:
    """The poller's credentials from the files the settings name (the API key wins)."""
    if settings.rest_api_key_file is not None:
        return Credentials(api_key=_read_secret(settings.rest_api_key_file, env,
                                                "restApi.apiKeyFile"))
    if settings.rest_api_user_name and settings.rest_api_password_file is not None:
        password = _read_secret(settings.rest_api_password_file, env, "restApi.passwordFile")
        return Credentials(user_name=settings.rest_api_user_name, password=password)
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


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a JSON:API list: its records and the offset of the next page, if any."""

    records: list[dict[str, Any]]
    next_offset: int | None


def parse_page(body: Any, offset: int, limit: int) -> Page:
    """Check a list page's shape; the next offset comes from meta.pagination when given."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise ApiUnavailableError("malformed page: no data list")
    records = body["data"]
    if not all(isinstance(r, dict) and isinstance(r.get("attributes"), dict) for r in records):
        raise ApiUnavailableError("malformed page: a record has no attributes object")
    meta = body.get("meta")
    pagination = meta.get("pagination") if isinstance(meta, dict) else None
    if isinstance(pagination, dict):
        following = pagination.get("next")
        if following is None:
            return Page(records, None)
        if isinstance(following, bool) or not isinstance(following, int) or following <= offset:
            raise ApiUnavailableError("malformed page: pagination.next does not move on")
        return Page(records, following)
    # No pagination block: a short page is the last one.
    return Page(records, offset + len(records) if len(records) >= limit > 0 else None)


class RestClient:
    """Authenticated GETs and complete listings against the local API."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials,
        session: aiohttp.ClientSession,
        page_size: int,
    ) -> None:
        self._base = base_url.rstrip("/") + API_PREFIX
        self._credentials = credentials
        self._session = session
        self._page_size = page_size
        self._jwt: str | None = None
        self._login_lock = asyncio.Lock()
        self.pages_read = 0

    async def list_all(self, path: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
        """Every record of a list, page by page; any failure fails the whole listing."""
        records: list[dict[str, Any]] = []
        offset: int | None = 0
        for _ in range(MAX_PAGES):
            if offset is None:
                return records
            query = {**params, "page[limit]": str(self._page_size), "page[offset]": str(offset)}
            page = parse_page(await self.get_json(path, query), offset, self._page_size)
            self.pages_read += 1
            records.extend(page.records)
            offset = page.next_offset
        raise ApiUnavailableError(f"listing {path} has more than {MAX_PAGES} pages")

    async def get_json(self, path: str, query: Mapping[str, str]) -> Any:
        """GET `path` (under /netbackup) as JSON; on a 401, log in afresh once and retry."""
        authorization = await self._authorization()
        status, body = await self._get(path, query, authorization)
        if status == 401 and self._credentials.api_key is None:
            if self._jwt == authorization:  # not already renewed by the other poll
                self._jwt = None
            status, body = await self._get(path, query, await self._authorization())
        if status == 401:
            raise ApiUnavailableError("authentication refused (401)")
        if status != 200:
            raise ApiUnavailableError(f"HTTP {status} from {path}")
        try:
            return json.loads(body)
        except ValueError:
            raise ApiUnavailableError(f"malformed page: {path} did not answer JSON") from None

    async def _get(self, path: str, query: Mapping[str, str], authorization: str
                   ) -> tuple[int, bytes]:
        headers = {"Accept": MEDIA_TYPE, "Authorization": authorization}
        return await self._call("GET", path, headers=headers, params=query)

    async def _authorization(self) -> str:
        if self._credentials.api_key is not None:
            return self._credentials.api_key
        async with self._login_lock:  # the two polls share one JWT and one login
            if self._jwt is None:
                self._jwt = await self._login()
            return self._jwt

    async def _login(self) -> str:
        credentials = {"userName": self._credentials.user_name,
                       "password": self._credentials.password}
        status, body = await self._call(
            "POST", "/login", headers={"Content-Type": "application/json", "Accept": MEDIA_TYPE},
            data=json.dumps(credentials),
        )
        if status not in (200, 201):
            raise ApiUnavailableError(f"login refused (HTTP {status})")
        try:
            token = json.loads(body)["token"]
        except (ValueError, KeyError, TypeError):
            raise ApiUnavailableError("malformed login answer: no token") from None
        if not isinstance(token, str) or not token:
            raise ApiUnavailableError("malformed login answer: no token")
        logs.register_secret(token)
        log.info("poller.logged_in", user=self._credentials.user_name)
        return token

    async def _call(self, method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:
        try:
            async with self._session.request(
                method, self._base + path, timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S),
                **kwargs,
            ) as response:
                return response.status, await response.read()
        except TimeoutError:
            raise ApiUnavailableError(f"{method} {path} timed out") from None
        except aiohttp.ClientError as exc:
            raise ApiUnavailableError(f"{method} {path}: {type(exc).__name__}") from None
