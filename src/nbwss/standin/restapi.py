"""A stand-in for the local NetBackup REST API (spec section 8), for tests, the demo and
benchmarks: a faithful imitation of one release at a time, not an API that takes anything.

A real aiohttp HTTPS server on loopback, serving a `StandinApi` (model.py) in the shapes
Veritas documents (OpenAPI files for 10.3 to 11.2, kept under `docs/veritas-*/` of the
public repository fjacquet/nbu_exporter, and the code samples in
VeritasOS/netbackup-api-code-samples):

- API versions: `Accept: application/vnd.netbackup+json;version=<v>` must name a version
  the release serves (`releases.py`: 8.1.1 serves 1.0; 10.5 serves 9.0 to 12.0), else
  406 with a NetBackup error body. No `Accept`, or one without our media type, gets the
  newest. Answers carry the media type of the version used.
- ``POST /netbackup/login`` ``{"userName", "password"[, "domainName", "domainType"]}``
  -> 201 ``{"token", "tokenType", "validity"}`` (gateway.yaml); a wrong user or password
  -> 401; a `domainType` not NT, vx, unixpwd or ldap -> 400; a `Content-Type` version
  not served -> 415. A token is refused (401) once its `validity` has passed.
- ``GET /netbackup/admin/jobs`` and ``GET /netbackup/catalog/images``: JSON:API lists
  with real record shapes (records.py) and the documented query rules (listing.py):
  cursor paging for jobs from API 9.0, offset paging before it and for images;
  `filter` operators as documented (images: `backupTime` ge/le only), no `sort` on
  images, no `+` in `filter`, pages of at most 100. A refusal is a 400 with a NetBackup
  error body.
- ``GET/POST /netbackup/config/servers/vmservers`` and
  ``GET /netbackup/config/servers/vmservers/{name}``: the guide's (8.0) shapes,
  ``{"vmServer": {...}}``, answered as ``application/json`` as in the guide's example;
  the password is never returned (blank, as in the example).

Every call but login needs ``Authorization: <token from login>`` or a configured API
key, else 401. The error bodies' `errorCode` is 8961 ("An invalid API request is
encountered.", the one 400 body Veritas's files show, 11.2 accesscontrol.yaml): the
codes a real server sends for these cases are not documented.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from nbwss.properties import DOMAIN_TYPES
from nbwss.sources.apiversion import jobs_use_cursor, media_type
from nbwss.standin import listing
from nbwss.standin.listing import QueryError
from nbwss.standin.model import SeenRequest, StandinApi
from nbwss.standin.records import Attributes, image_resource, iso, job_resource
from nbwss.standin.releases import NEWEST_RELEASE, RELEASES, Release

__all__ = ["MEDIA_TYPE", "PREFIX", "RELEASES", "Release", "RunningStandin", "SeenRequest",
           "StandinApi", "iso", "make_app", "serving", "start"]

MEDIA_TYPE: Final = media_type(NEWEST_RELEASE.newest)  # what a call without Accept gets
GUIDE_MEDIA_TYPE: Final = "application/json"  # what the guide's vmserver example shows
VENDOR_TYPE: Final = "application/vnd.netbackup+json"
PREFIX: Final = "/netbackup"
ERROR_CODE: Final = 8961
ERROR_MESSAGE: Final = "An invalid API request is encountered."
# The jobs list's order when no sort is asked: "descending order by job start time".
JOBS_DEFAULT_SORT: Final = "-startTime"

_API: Final = web.AppKey("standin_api", StandinApi)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- answers ---------------------------------------------------------------------------------


def _error(status: int, message: str, details: Sequence[str] = (), version: str | None = None
           ) -> web.Response:
    """NetBackup's error shape (every OpenAPI file's error schema)."""
    body = {"errorCode": ERROR_CODE, "errorMessage": message, "attributeErrors": {},
            "errorDetails": list(details)}
    return _api_json(body, version or NEWEST_RELEASE.newest, status=status)


def _invalid(exc: QueryError, version: str) -> web.Response:
    return _error(400, ERROR_MESSAGE, [str(exc)], version)


def _api_json(payload: Any, version: str, status: int = 200) -> web.Response:
    # Set the header verbatim: aiohttp would append "; charset=utf-8" to content_type.
    # NaN and Infinity pass: a test may make a record hold what a faulty API could send.
    body = json.dumps(payload, allow_nan=True).encode()
    return web.Response(body=body, status=status, headers={"Content-Type": media_type(version)})


def asked_version(header: str, release: Release) -> str | None:
    """The API version an `Accept` (or `Content-Type`) asks for, if the release serves it.

    None: our media type is named, but with no version the release serves (406/415).
    """
    versions = []
    for item in header.split(","):
        kind, *params = (part.strip() for part in item.split(";"))
        if kind.lower() != VENDOR_TYPE:
            continue
        named = [p.partition("=")[2].strip() for p in params if p.lower().startswith("version")]
        versions += named or [release.newest]
    if not versions:
        return release.newest
    return next((v for v in versions if release.serves(v)), None)


def _version(request: web.Request) -> str:
    """The version a request is answered in (the middleware refused any other)."""
    release = request.app[_API].release
    return asked_version(request.headers.get("Accept", ""), release) or release.newest


@web.middleware
async def _hooks(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record, then apply the hooks (down, delay, gate, failure), the version, the token."""
    api = request.app[_API]
    await api.record(request)
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
    version = asked_version(request.headers.get("Accept", ""), api.release)
    if version is None:
        return _error(406, "Invalid `Accept` type. Make sure your `Accept` header matches "
                      "what this API produces.", [f"NetBackup {api.release.name} serves API "
                      f"{api.release.oldest} to {api.release.newest}"])
    if request.path != f"{PREFIX}/login" and not api.authorizes(
            request.headers.get("Authorization", "")):
        return _error(401, "The `Authorization` header is missing, the token is invalid, "
                      "or you do not have permission for this action.", version=version)
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


# -- login -----------------------------------------------------------------------------------


async def _login(request: web.Request) -> web.Response:
    api = request.app[_API]
    version = _version(request)
    content_type = request.headers.get("Content-Type", GUIDE_MEDIA_TYPE)
    if VENDOR_TYPE in content_type.lower() and asked_version(content_type, api.release) is None:
        return _error(415, "Unsupported Media Type.", [f"Content-Type: {content_type}"], version)
    try:
        credentials = json.loads(await request.text())
        user, password = credentials["userName"], credentials["password"]
    except (ValueError, KeyError, TypeError):
        return _error(400, ERROR_MESSAGE, ["the body must hold userName and password"], version)
    domain_type = credentials.get("domainType")
    if domain_type is not None and domain_type not in DOMAIN_TYPES:
        return _error(400, ERROR_MESSAGE, [f"domainType {domain_type!r}"], version)
    if not isinstance(user, str) or api.users.get(user) != password:
        return _error(401, "The user name, password or API Key is wrong.", version=version)
    answer = {"token": api.login(), "tokenType": api.token_type,
              "validity": api.token_validity_s}
    return _api_json(answer, version, status=201)


# -- VM servers (the guide's 8.0 shapes) ------------------------------------------------------


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
    body = json.dumps({"vmServer": _vmserver_view(request, record)}, allow_nan=False)
    return web.Response(body=body.encode(), headers={"Content-Type": GUIDE_MEDIA_TYPE})


async def _list_vmservers(request: web.Request) -> web.Response:
    records = [_vmserver_view(request, r) for r in request.app[_API].vmservers.values()]
    body = json.dumps({"vmServers": records}, allow_nan=False).encode()
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


# -- lists -----------------------------------------------------------------------------------


async def _list_jobs(request: web.Request) -> web.Response:
    api = request.app[_API]
    version = _version(request)
    try:
        params = listing.read_query(request.rel_url.raw_query_string)
        jobs = list(api.jobs.values())
        if "filter" in params:
            clauses = listing.parse_filter(params["filter"], listing.JOB_FILTERS)
            jobs = [job for job in jobs if all(c.holds(job) for c in clauses)]
        name, descending = listing.sort_key(params, listing.JOB_SORTS, JOBS_DEFAULT_SORT)
        keyed = sorted(((listing.sort_value(name, job), job["jobId"]), job) for job in jobs)
        if descending:
            keyed.reverse()
        keys, jobs = [k for k, _ in keyed], [j for _, j in keyed]
        base = f"{request.scheme}://{request.host}{PREFIX}"
        if jobs_use_cursor(version):
            page, cursors, pagination = listing.cursor_page(jobs, keys, name, descending, params)
            data = [dict(job_resource(j, base), meta={"page": {"cursor": c}})
                    for j, c in zip(page, cursors, strict=True)]
        else:
            offset_page, pagination = listing.offset_page(jobs, params, minimum=0)
            data = [job_resource(j, base) for j in offset_page]
    except (QueryError, TypeError) as exc:
        return _invalid(QueryError(str(exc)), version)
    return _api_json({"data": data, "meta": {"pagination": pagination}}, version)


async def _list_images(request: web.Request) -> web.Response:
    api = request.app[_API]
    version = _version(request)
    try:
        params = listing.read_query(request.rel_url.raw_query_string)
        if "sort" in params:
            raise QueryError("sort: the images list has no sort parameter")
        clauses = listing.parse_filter(params["filter"], listing.IMAGE_FILTERS) \
            if "filter" in params else []
        clauses = listing.image_window(clauses, api.clock())
        images = [(backup_id, image) for backup_id, image in api.images.items()
                  if all(c.holds(image) for c in clauses)]
        # No documented order: newest backup first (unverified).
        images.sort(key=lambda item: (item[1]["backupTime"], item[0]), reverse=True)
        page, pagination = listing.offset_page(images, params, minimum=1)
    except QueryError as exc:
        return _invalid(exc, version)
    data = [image_resource(backup_id, image) for backup_id, image in page]
    return _api_json({"data": data, "meta": {"pagination": pagination}}, version)


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

