"""The stand-in REST API's state: users and tokens, jobs, images, VM servers, test hooks.

A plain in-memory model that a test or a scenario drives directly (`upsert_job`,
`upsert_image`, `delete_image`, `vmservers`); `restapi.py` serves it over HTTPS. It
imitates one NetBackup release at a time (`release`, see `releases.py`). The same object
carries the test hooks: per-path `delays` and `hold` gates, `fail_status` (answer every
call with e.g. 503), `down` (drop every connection unanswered), `chunked` (stream bodies
with Transfer-Encoding: chunked, as the guide's example shows), the login's
`token_type` and `token_validity_s` (a token is refused once its validity has passed),
and the request log `requests` with `wait_for_requests`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from nbwss.standin.records import Attributes, iso, new_image, new_job
from nbwss.standin.releases import NEWEST_RELEASE, Release

# Attributes that NetBackup's images do not have (catalog.yaml, imageAttributes): a
# scenario that sets one is wrong about the API, and is told so.
NOT_IMAGE_ATTRIBUTES: Final = frozenset({"backupId", "clientType", "createdTime",
                                         "lastUpdateTime"})
IMAGE_RETENTION_S: Final = 14 * 86400  # expiration of a new image (a neutral value, ours)


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
    release: Release = NEWEST_RELEASE
    # What POST /login answers besides the token (gateway.yaml: tokenType, validity).
    token_type: str = "BEARER"  # noqa: S105 - a token type, not a secret
    token_validity_s: int = 86400
    # -- test hooks --
    delays: dict[str, float] = field(default_factory=dict)
    fail_status: int | None = None
    down: bool = False
    chunked: bool = False  # stream bodies with Transfer-Encoding: chunked, as NetBackup does
    requests: list[SeenRequest] = field(default_factory=list)
    _expiry: dict[str, float] = field(default_factory=dict, repr=False)
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
        job = self.jobs.get(job_id) or new_job(job_id, iso(self.clock()))
        job.update(attributes)
        job["jobId"] = job_id
        if "lastUpdateTime" not in attributes:
            job["lastUpdateTime"] = self.stamp()
        self.jobs[job_id] = job
        return job

    def upsert_image(self, backup_id: str, **attributes: Any) -> Attributes:
        """Create or change image `backup_id` (``<client>_<epoch>``, the record's id)."""
        wrong = NOT_IMAGE_ATTRIBUTES & set(attributes)
        if wrong:
            raise ValueError(f"NetBackup's images have no {', '.join(sorted(wrong))}")
        image = self.images.get(backup_id)
        if image is None:
            client, _, epoch = backup_id.rpartition("_")
            backup_time = int(epoch) if epoch.isdigit() else int(self.clock())
            image = new_image(client or backup_id, iso(backup_time),
                              iso(backup_time + IMAGE_RETENTION_S))
        image.update(attributes)
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
        self._expiry[token] = self.clock() + self.token_validity_s
        return token

    def authorizes(self, authorization: str) -> bool:
        """An API key, or a token issued (or added) and not past its validity."""
        if authorization in self.api_keys:
            return True
        expiry = self._expiry.get(authorization)
        return authorization in self.tokens and (expiry is None or self.clock() < expiry)

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

    async def record(self, request: web.Request) -> None:
        body = await request.read()
        seen = SeenRequest(
            request.method, request.raw_path, request.path, dict(request.headers), body
        )
        self.requests.append(seen)
        async with self._condition():
            self._condition().notify_all()


def _jwt_like() -> str:
    def part(obj: dict[str, Any]) -> str:
        text = json.dumps(obj, allow_nan=False)
        return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()

    header = part({"typ": "JWT", "alg": "RS256"})
    claims = part({"sub": "admin", "jti": secrets.token_hex(8)})
    return f"{header}.{claims}.{secrets.token_urlsafe(32)}"
