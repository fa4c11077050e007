"""A stand-in for the local NetBackup REST API (spec section 8), for tests and benchmarks.

A real aiohttp HTTPS server on loopback that answers the calls nbwss makes or proxies,
in the documented shapes:

- ``POST /netbackup/login`` ``{"userName", "password"}`` -> 201 ``{"token": <JWT-like>}``;
  a wrong user or password -> 401.
- ``GET/POST /netbackup/config/servers/vmservers`` and
  ``GET /netbackup/config/servers/vmservers/{name}``: the guide's (8.0) shapes,
  ``{"vmServer": {...}}``, answered as ``application/json`` as in the guide's example;
  the password is never returned (blank, as in the example).
- ``GET /netbackup/admin/jobs`` and ``GET /netbackup/catalog/images``: JSON:API lists
  (``data`` of ``{"type", "id", "attributes"}``, ``meta.pagination``) answered as
  ``application/vnd.netbackup+json;version=1.0``. Both take ``filter`` (clauses
  ``<field> <op> <value>`` joined by ``and``; ops eq ne gt ge lt le; time fields are
  ISO 8601 and compared as instants) and ``page[limit]`` (default 10, at most 100) /
  ``page[offset]``, and ``sort`` (a field, ``-`` for descending). Jobs are filtered
  on ``lastUpdateTime`` (or any attribute); images on ``backupTime`` *or*
  ``lastUpdateTime`` (our addition, which real releases lack, so that a poller can see
  updates). A deleted image simply disappears from the list.

Every call but login needs ``Authorization: <token from login>`` or a configured API
key, else 401. All data lives in `StandinApi`, a plain in-memory model that a test or a
scenario drives directly (`upsert_job`, `upsert_image`, `delete_image`, `vmservers`);
the same object carries the test hooks: per-path `delays` and `hold` gates, `fail_status`
(answer every call with e.g. 503), `down` (drop every connection unanswered), `chunked`
(stream bodies with Transfer-Encoding: chunked, as the guide's example shows), and the
request log `requests` with `wait_for_requests` so a test can wait for, or assert the
absence of, calls.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

MEDIA_TYPE: Final = "application/vnd.netbackup+json;version=1.0"
GUIDE_MEDIA_TYPE: Final = "application/json"  # what the guide's vmserver example shows
PREFIX: Final = "/netbackup"
DEFAULT_PAGE_LIMIT: Final = 10
MAX_PAGE_LIMIT: Final = 100
NOT_ENDED: Final = "1970-01-01T00:00:00.000Z"  # NetBackup's endTime of a running job

# Attributes whose values are ISO 8601 instants (compared as times in filters).
TIME_FIELDS: Final = frozenset(
    {"lastUpdateTime", "backupTime", "startTime", "endTime", "expiration", "createdTime"}
)

Attributes = dict[str, Any]


def iso(epoch_seconds: float) -> str:
    """NetBackup's time format: UTC ISO 8601 with milliseconds and a ``Z``."""
    moment = datetime.fromtimestamp(epoch_seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime:
    """An ISO 8601 instant; a value without a zone is taken as UTC."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class SeenRequest:
    """One request as the stand-in received it (before any check), for assertions."""

    method: str
    raw_path: str
    path: str
    headers: Mapping[str, str]
    body: bytes


@dataclass
class StandinApi:
    """The stand-in's whole state: users, data, and the test hooks. Drive it directly."""

    users: dict[str, str] = field(default_factory=lambda: {"admin": "secret"})
    api_keys: set[str] = field(default_factory=set)
    tokens: set[str] = field(default_factory=set)
    jobs: dict[int, Attributes] = field(default_factory=dict)
    images: dict[str, Attributes] = field(default_factory=dict)
    vmservers: dict[str, Attributes] = field(default_factory=dict)
    clock: Callable[[], float] = time.time
    # -- test hooks --
    delays: dict[str, float] = field(default_factory=dict)
    fail_status: int | None = None
    down: bool = False
    chunked: bool = False  # stream bodies with Transfer-Encoding: chunked, as NetBackup does
    requests: list[SeenRequest] = field(default_factory=list)
    _gates: dict[str, asyncio.Event] = field(default_factory=dict, repr=False)
    _seen: asyncio.Condition | None = field(default=None, repr=False)
    _last_stamp_ms: int = field(default=0, repr=False)

    # -- the data model --

    def stamp(self) -> str:
        """A `lastUpdateTime` strictly after every earlier one, so ``gt`` filters never miss."""
        now_ms = max(int(self.clock() * 1000), self._last_stamp_ms + 1)
        self._last_stamp_ms = now_ms
        return iso(now_ms / 1000)

    def upsert_job(self, job_id: int, **attributes: Any) -> Attributes:
        """Create or change job `job_id`; its `lastUpdateTime` moves on. Returns the job."""
        job = self.jobs.get(job_id) or {
            "jobId": job_id,
            "parentJobId": job_id,
            "jobType": "BACKUP",
            "policyType": "STANDARD",
            "policyName": "",
            "scheduleType": "FULL",
            "clientName": "",
            "state": "QUEUED",
            "status": 0,
            "startTime": iso(self.clock()),
            "endTime": NOT_ENDED,
        }
        job.update(attributes)
        job["jobId"] = job_id
        if "lastUpdateTime" not in attributes:
            job["lastUpdateTime"] = self.stamp()
        self.jobs[job_id] = job
        return job

    def upsert_image(self, backup_id: str, **attributes: Any) -> Attributes:
        """Create or change image `backup_id` (``<client>_<epoch>``); `lastUpdateTime` moves on."""
        image = self.images.get(backup_id)
        if image is None:
            client, _, epoch = backup_id.rpartition("_")
            backup_time = iso(int(epoch)) if epoch.isdigit() else iso(self.clock())
            image = {
                "backupId": backup_id,
                "clientName": client or backup_id,
                "clientType": "STANDARD",
                "policyName": "",
                "policyType": "STANDARD",
                "scheduleType": "FULL",
                "backupTime": backup_time,
                "createdTime": iso(self.clock()),
            }
        image.update(attributes)
        image["backupId"] = backup_id
        if "lastUpdateTime" not in attributes:
            image["lastUpdateTime"] = self.stamp()
        self.images[backup_id] = image
        return image

    def delete_image(self, backup_id: str) -> Attributes | None:
        """Remove an image from the catalog (it vanishes from lists); returns what it was."""
        return self.images.pop(backup_id, None)

    def add_vmserver(self, fields: Mapping[str, Any]) -> Attributes:
        """Store a VM server as POST does: `fields` in the guide's shape, with a serverName."""
        record: Attributes = {
            "serverName": fields["serverName"],
            "vmType": "VMWARE_VIRTUAL_CENTER_SERVER",
            "userId": "",
            "password": "",
            "port": 0,
        }
        record.update(fields)
        self.vmservers[str(record["serverName"])] = record
        return record

    def login(self) -> str:
        """Issue a token as POST /login does (for tests that need one without a call)."""
        token = _jwt_like()
        self.tokens.add(token)
        return token

    # -- test hooks --

    def hold(self, path: str) -> asyncio.Event:
        """Calls to `path` wait until the returned event is set (for overlap tests)."""
        gate = self._gates[path] = asyncio.Event()
        return gate

    async def wait_for_requests(self, count: int) -> None:
        """Wait until at least `count` requests have arrived in total (bound it yourself)."""
        async with self._condition():
            await self._condition().wait_for(lambda: len(self.requests) >= count)

    def _condition(self) -> asyncio.Condition:
        if self._seen is None:
            self._seen = asyncio.Condition()
        return self._seen

    async def _record(self, request: web.Request) -> None:
        body = await request.read()
        seen = SeenRequest(
            request.method, request.raw_path, request.path, dict(request.headers), body
        )
        self.requests.append(seen)
        async with self._condition():
            self._condition().notify_all()


def _jwt_like() -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    header = part({"typ": "JWT", "alg": "RS256"})
    claims = part({"sub": "admin", "jti": secrets.token_hex(8)})
    return f"{header}.{claims}.{secrets.token_urlsafe(32)}"


# -- HTTP --------------------------------------------------------------------------------

_API: Final = web.AppKey("standin_api", StandinApi)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    """NetBackup's error shape: an errorCode and an errorMessage."""
    return _api_json({"errorCode": status, "errorMessage": message}, status=status)


def _api_json(payload: Any, status: int = 200) -> web.Response:
    # Set the header verbatim: aiohttp would append "; charset=utf-8" to content_type.
    body = json.dumps(payload).encode()
    return web.Response(body=body, status=status, headers={"Content-Type": MEDIA_TYPE})


@web.middleware
async def _hooks(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record, then apply the hooks (down, delay, gate, failure), then authenticate."""
    api = request.app[_API]
    await api._record(request)
    if api.down:
        if request.transport is not None:
            request.transport.abort()  # the client sees the connection drop, unanswered
        return web.Response(status=503)
    if delay := api.delays.get(request.path):
        await asyncio.sleep(delay)
    if gate := api._gates.get(request.path):
        await gate.wait()
    if api.fail_status is not None:
        return _error(api.fail_status, "the stand-in is told to fail")
    if request.path != f"{PREFIX}/login":
        authorization = request.headers.get("Authorization", "")
        if authorization not in api.tokens and authorization not in api.api_keys:
            return _error(401, "authentication required")
    response = await handler(request)
    if api.chunked and isinstance(response, web.Response) and response.body:
        return await _stream_chunked(request, response)
    return response


async def _stream_chunked(request: web.Request, response: web.Response) -> web.StreamResponse:
    """Send `response` again as a chunked stream of 1 KiB pieces, with no Content-Length."""
    assert isinstance(response.body, bytes)
    stream = web.StreamResponse(status=response.status)
    stream.headers["Content-Type"] = response.headers["Content-Type"]
    stream.enable_chunked_encoding()
    await stream.prepare(request)
    for start in range(0, len(response.body), 1024):
        await stream.write(response.body[start : start + 1024])
    await stream.write_eof()
    return stream


async def _login(request: web.Request) -> web.Response:
    api = request.app[_API]
    try:
        credentials = json.loads(await request.text())
        user, password = credentials["userName"], credentials["password"]
    except (ValueError, KeyError, TypeError):
        return _error(400, "the body must be {\"userName\": ..., \"password\": ...}")
    if not isinstance(user, str) or api.users.get(user) != password:
        return _error(401, "wrong user name or password")
    return _api_json({"token": api.login()}, status=201)


def _vmserver_view(request: web.Request, record: Attributes) -> Attributes:
    view = dict(record, password="")
    view.setdefault(
        "links", [{"rel": "self", "href": str(request.url.with_query(None))}]
    )
    return view


async def _get_vmserver(request: web.Request) -> web.Response:
    record = request.app[_API].vmservers.get(request.match_info["name"])
    if record is None:
        return _error(404, "no such VM server")
    body = json.dumps({"vmServer": _vmserver_view(request, record)})
    return web.Response(body=body.encode(), headers={"Content-Type": GUIDE_MEDIA_TYPE})


async def _list_vmservers(request: web.Request) -> web.Response:
    records = [_vmserver_view(request, r) for r in request.app[_API].vmservers.values()]
    body = json.dumps({"vmServers": records}).encode()
    return web.Response(body=body, headers={"Content-Type": GUIDE_MEDIA_TYPE})


async def _post_vmserver(request: web.Request) -> web.Response:
    api = request.app[_API]
    try:
        record = json.loads(await request.text())
        name = record["serverName"]
    except (ValueError, KeyError, TypeError):
        return _error(400, "the body must be a JSON object with a serverName")
    if not isinstance(name, str) or not name:
        return _error(400, "serverName must be a non-empty string")
    if name in api.vmservers:
        return _error(409, "this entity already exists")
    api.add_vmserver(record)
    return web.Response(status=201)


# -- lists: filter, sort, page ----------------------------------------------------------

_OPERATORS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
}


class _BadQuery(ValueError):
    pass


def _comparable(name: str, value: Any) -> Any:
    if name in TIME_FIELDS and isinstance(value, str):
        try:
            return parse_iso(value)
        except ValueError:
            raise _BadQuery(f"{name}: {value!r} is not an ISO 8601 time") from None
    if isinstance(value, str) and value[:1] == "'" and value[-1:] == "'":
        return value[1:-1]
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


def parse_filter(text: str) -> Callable[[Attributes], bool]:
    """An OData-like ``filter`` as NetBackup takes it, e.g. ``lastUpdateTime gt 2016-...Z``."""
    clauses: list[tuple[str, Callable[[Any, Any], bool], Any]] = []
    for clause in text.split(" and "):
        parts = clause.strip().split(" ", 2)
        if len(parts) != 3 or parts[1] not in _OPERATORS:
            raise _BadQuery(f"cannot read filter clause {clause.strip()!r}")
        name, op, raw = parts
        clauses.append((name, _OPERATORS[op], _comparable(name, raw.strip())))

    def matches(attributes: Attributes) -> bool:
        for name, op, wanted in clauses:
            if name not in attributes:
                return False
            try:
                if not op(_comparable(name, attributes[name]), wanted):
                    return False
            except TypeError:
                return False
        return True

    return matches


def _page_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise _BadQuery(f"{name} must be a non-negative integer")
    return int(raw)


def _list_response(
    request: web.Request, kind: str, key: str, records: list[Attributes]
) -> web.Response:
    try:
        if "filter" in request.query:
            matches = parse_filter(request.query["filter"])
            records = [r for r in records if matches(r)]
        sort = request.query.get("sort", key)
        name = sort.removeprefix("-")
        records.sort(key=lambda r: _comparable(name, r.get(name, "")), reverse=sort[:1] == "-")
        limit = min(_page_param(request, "page[limit]", DEFAULT_PAGE_LIMIT), MAX_PAGE_LIMIT)
        offset = _page_param(request, "page[offset]", 0)
    except (_BadQuery, TypeError) as exc:
        return _error(400, str(exc))
    limit = max(limit, 1)
    page = records[offset : offset + limit]
    count = len(records)
    last = max(count - 1, 0) // limit * limit
    pagination: Attributes = {
        "count": count, "offset": offset, "limit": limit, "first": 0, "last": last,
        "page": offset // limit, "pages": (count + limit - 1) // limit,
    }
    if offset + limit < count:
        pagination["next"] = offset + limit
    if offset > 0:
        pagination["prev"] = max(offset - limit, 0)
    data = [{"type": kind, "id": str(r[key]), "attributes": dict(r)} for r in page]
    return _api_json({"data": data, "meta": {"pagination": pagination}})


async def _list_jobs(request: web.Request) -> web.Response:
    jobs = list(request.app[_API].jobs.values())
    return _list_response(request, "job", "jobId", jobs)


async def _list_images(request: web.Request) -> web.Response:
    images = list(request.app[_API].images.values())
    return _list_response(request, "image", "backupId", images)


def make_app(api: StandinApi) -> web.Application:
    """The aiohttp application serving `api` (a plain app: serve it as you like)."""
    app = web.Application(middlewares=[_hooks])
    app[_API] = api
    app.router.add_post(f"{PREFIX}/login", _login)
    app.router.add_get(f"{PREFIX}/config/servers/vmservers", _list_vmservers)
    app.router.add_post(f"{PREFIX}/config/servers/vmservers", _post_vmserver)
    app.router.add_get(f"{PREFIX}/config/servers/vmservers/{{name}}", _get_vmserver)
    app.router.add_get(f"{PREFIX}/admin/jobs", _list_jobs)
    app.router.add_get(f"{PREFIX}/catalog/images", _list_images)
    return app


@dataclass
class RunningStandin:
    """A served stand-in: its base URL (no trailing slash) and how to stop it."""

    base_url: str
    runner: web.AppRunner

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start(
    api: StandinApi, ssl_context: ssl.SSLContext | None, host: str = "127.0.0.1", port: int = 0
) -> RunningStandin:
    """Serve `api` on `host` (HTTPS when `ssl_context` is given; port 0 picks a free one)."""
    runner = web.AppRunner(make_app(api), access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    scheme = "https" if ssl_context else "http"
    return RunningStandin(f"{scheme}://{bound_host}:{bound_port}", runner)


@asynccontextmanager
async def serving(
    api: StandinApi, ssl_context: ssl.SSLContext | None, host: str = "127.0.0.1"
) -> AsyncIterator[str]:
    """``async with serving(api, ctx) as base_url:`` serves `api` for the block."""
    running = await start(api, ssl_context, host)
    try:
        yield running.base_url
    finally:
        await running.stop()
