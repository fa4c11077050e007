"""The REST poller: job and image notifications read from NetBackup's own REST API.

Two loops inside `nbwss run`, one per list: every `poller.jobsRate` seconds the jobs
updated since the watermark, every `poller.imagesRate` seconds the images of the
tracked window. Each poll reads everything it needs, lets `mapping` decide, then commits
the decision in ONE transaction with the outbox insert (`pollerstore`): the watermark
and the seen-state move if and only if the notifications are queued. A crash or restart
anywhere re-polls from the last committed state, which the seen-state dedupes, so
nothing is repeated or skipped. An API fault, or a page not in the documented shape,
fails the whole poll (nothing committed) and backs off; an outage is logged once when
it starts and once when it ends, with NetBackup's error code and message. One record
that cannot be mapped is set aside (`setaside`) and the poll goes on.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import aiohttp

from nbwss import logs, pollerstore
from nbwss.backoff import Backoff
from nbwss.component import Component
from nbwss.errors import ConfigError
from nbwss.metrics import POLLER_SET_ASIDE, POLLER_UP
from nbwss.properties import Settings
from nbwss.sources import mapping
from nbwss.sources.apiversion import VersionNegotiation, jobs_use_cursor
from nbwss.sources.mapping import MalformedRecordError, record_id
from nbwss.sources.restclient import (
    ApiUnavailableError,
    Credentials,
    RestClient,
    load_credentials,
    ssl_for,
)
from nbwss.sources.setaside import SetAsideDecision, decide_set_aside, read_records
from nbwss.store import Store

log = logs.get_logger("nbwss.poller")

JOBS_PATH: Final = "/admin/jobs"
IMAGES_PATH: Final = "/catalog/images"
# Newest first (admin.yaml lists lastUpdateTime among the jobs' sort keys): a row
# updated mid-listing moves to the front, so no other row is skipped. See docs/poller.md.
# Images have no sort parameter at all (catalog.yaml).
JOBS_SORT: Final = "-lastUpdateTime"
# Backoff during an outage: from the poll rate, doubling, capped at this (or the rate).
BACKOFF_CAP_S: Final = 60.0


class Wakes(Protocol):
    """What wakes delivery after a commit (`nbwss.wake.Waker` in the daemon)."""

    def wake(self) -> None: ...


class ApiHealth:
    """One log event when the API goes down and one when it is back, whatever polls see it."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.down_since: float | None = None

    def failed(self, poll: str, reason: str) -> None:
        POLLER_UP.labels(poll).set(0)
        if self.down_since is None:
            self.down_since = self._clock()
            log.warning("poller.api_down", poll=poll, reason=reason)

    def succeeded(self, poll: str) -> None:
        POLLER_UP.labels(poll).set(1)
        if self.down_since is not None:
            log.info("poller.api_recovered", poll=poll,
                     down_s=round(self._clock() - self.down_since, 3))
            self.down_since = None


@dataclass(slots=True)
class PollCounts:
    """Completed polls per list, for `wait_polls` (tests, the demo) and the benchmark."""

    jobs: int = 0
    images: int = 0


class Poller(Component):
    """The poller component: `run()` polls until cancelled; never raises on API faults.

    A configuration error met at run time (the login asks for multi-factor
    authentication) is raised: `nbwss run` stops with that one line.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        waker: Wakes | None = None,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        credentials: Credentials | None = None,
    ) -> None:
        """Read the credentials and CA now: a missing file fails `nbwss run` at start
        (`ConfigError`) rather than inside the running daemon."""
        env = os.environ if env is None else env
        self._credentials = credentials or load_credentials(settings, env)
        self._ssl = ssl_for(settings)
        self._settings = settings
        self._store = store
        self._waker = waker
        self._clock = clock
        self._health = ApiHealth(clock)
        self.negotiation = VersionNegotiation(settings.rest_api_version)
        self.counts = PollCounts()
        self._polled = asyncio.Condition()
        self.client: RestClient | None = None
        self.set_aside_count = 0

    async def run(self) -> None:
        """Poll jobs and images, each at its rate, until cancelled."""
        self.set_aside_count = await asyncio.to_thread(pollerstore.count_set_aside, self._store)
        connector = aiohttp.TCPConnector(ssl=self._ssl, limit=2)
        async with aiohttp.ClientSession(connector=connector) as session:
            self.client = self.make_client(session)
            log.info("poller.started", base_url=self._settings.rest_api_base_url,
                     jobs_rate_s=self._settings.poller_jobs_rate_s,
                     images_rate_s=self._settings.poller_images_rate_s,
                     api_version=self._settings.rest_api_version)
            try:
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self._loop("jobs", self._settings.poller_jobs_rate_s,
                                                 self.poll_jobs))
                    tasks.create_task(self._loop("images", self._settings.poller_images_rate_s,
                                                 self.poll_images))
            except* ConfigError as group:
                log.error("poller.stopped", reason=str(group.exceptions[0]))
                raise group.exceptions[0] from None

    def make_client(self, session: aiohttp.ClientSession) -> RestClient:
        """The REST client the polls use (the benchmark builds one on its own session)."""
        return RestClient(self._settings.rest_api_base_url, self._credentials, session,
                          self._settings.poller_page_size, negotiation=self.negotiation,
                          clock=self._clock)

    def status_view(self) -> dict[str, Any]:
        """The poller's part of `nbwss status`: the API version in use, records set aside."""
        return {
            "api_version": self.negotiation.accepted,
            "api_version_setting": self.negotiation.setting,
            "api_down_since": self._health.down_since,
            "records_set_aside": self.set_aside_count,
        }

    async def wait_polls(self, jobs: int = 0, images: int = 0) -> None:
        """Wait until at least that many polls of each list have completed."""
        async with self._polled:
            await self._polled.wait_for(
                lambda: self.counts.jobs >= jobs and self.counts.images >= images
            )

    async def _loop(self, poll: str, rate_s: float, poll_once: Callable[[], Awaitable[int]]
                    ) -> None:
        backoff = Backoff(cap_s=max(rate_s, min(BACKOFF_CAP_S, 16 * rate_s)), first_s=rate_s)
        while True:
            try:
                await poll_once()
            except (ApiUnavailableError, MalformedRecordError) as exc:
                self._health.failed(poll, str(exc))
                await asyncio.sleep(backoff.next_delay())
                continue
            backoff.reset()
            self._health.succeeded(poll)
            async with self._polled:
                setattr(self.counts, poll, getattr(self.counts, poll) + 1)
                self._polled.notify_all()
            await asyncio.sleep(rate_s)

    def _client(self) -> RestClient:
        if self.client is None:
            raise RuntimeError("the poller is not running")
        return self.client

    # -- jobs --------------------------------------------------------------------------------

    async def poll_jobs(self) -> int:
        """One jobs poll: list what changed since the watermark, decide, commit; # queued."""
        watermark = await asyncio.to_thread(pollerstore.read_watermark, self._store)
        if watermark is None:
            # First start: history is not replayed, and from now on nothing is missed,
            # however long the first polls find nothing (this watermark is committed).
            watermark = self._clock()
        query = [("filter", mapping.jobs_filter(watermark, self._clock())), ("sort", JOBS_SORT)]
        records = await self._client().list_all(JOBS_PATH, query, jobs_use_cursor)
        reading = read_records("JOB", records, lambda r: mapping.parse_job(r["attributes"]))
        seen, known = await asyncio.to_thread(self._read_jobs_state,
                                              {job.job_id for job in reading.parsed})
        decision = mapping.decide_jobs(seen, reading.parsed, watermark)
        aside = decide_set_aside(known, reading.rejects,
                                 {str(job.job_id) for job in reading.parsed})
        now = self._clock()
        forget = now - mapping.DONE_JOB_RETENTION_S
        self.set_aside_count = await asyncio.to_thread(
            pollerstore.commit_jobs, self._store, decision, aside, now, forget)
        self._noted("JOB", aside)
        return self._queued(len(decision.notifications), "JOB")

    def _read_jobs_state(self, job_ids: set[int]
                         ) -> tuple[dict[int, mapping.SeenJob], dict[str, str]]:
        return (pollerstore.read_seen_jobs(self._store, job_ids),
                pollerstore.read_set_aside(self._store, "JOB"))

    # -- images ------------------------------------------------------------------------------

    async def poll_images(self) -> int:
        """One images poll: list the whole window, compare with what is tracked, commit."""
        now = self._clock()
        cutoff = mapping.window_cutoff(now, self._settings.poller_image_window_days)
        query = [("filter", mapping.images_filter(cutoff, now))]
        records = await self._client().list_all(IMAGES_PATH, query)
        reading = read_records("IMAGE", records, mapping.parse_image)
        tracked, baselined = await asyncio.to_thread(pollerstore.read_tracked_images,
                                                     self._store)
        known = await asyncio.to_thread(pollerstore.read_set_aside, self._store, "IMAGE")
        rejected = {r.record_id for r in reading.rejects}
        decision = mapping.decide_images(tracked, reading.parsed, cutoff, now,
                                         baseline=not baselined, set_aside=rejected)
        aside = decide_set_aside(known, reading.rejects,
                                 {image.backup_id for image in reading.parsed},
                                 listed={record_id(r) for r in records})
        if not baselined:
            log.info("poller.images_baseline", tracked=len(decision.track))
        self.set_aside_count = await asyncio.to_thread(
            pollerstore.commit_images, self._store, decision, aside, now)
        self._noted("IMAGE", aside)
        return self._queued(len(decision.notifications), "IMAGE")

    # -- after a commit ----------------------------------------------------------------------

    def _noted(self, obj: str, aside: SetAsideDecision) -> None:
        """Log and count each record newly set aside (once), and each one cleared."""
        for record in aside.new:
            log.warning("poller.record_set_aside", object=record.object, id=record.record_id,
                        reason=record.reason)
            POLLER_SET_ASIDE.labels(record.object).inc()
        for cleared in aside.cleared:
            log.info("poller.record_cleared", object=obj, id=cleared)

    def _queued(self, count: int, obj: str) -> int:
        if count:
            log.info("poller.queued", object=obj, count=count)
            if self._waker is not None:
                self._waker.wake()
        return count
