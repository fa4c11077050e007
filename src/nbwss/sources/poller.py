"""The REST poller: job and image notifications read from NetBackup's own REST API.

Two loops inside `nbwss run`, one per list: every `poller.jobsRate` seconds the jobs
updated since the watermark, every `poller.imagesRate` seconds the images of the
tracked window. Each poll reads everything it needs, lets `mapping` decide, then commits
the decision in ONE transaction with the outbox insert: the watermark and the seen-state
move if and only if the notifications are queued. A crash or restart anywhere re-polls
from the last committed state, which the seen-state dedupes, so nothing is repeated or
skipped. Any API fault fails the whole poll (nothing committed) and backs off; an outage
is logged once when it starts and once when it ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

import aiohttp

from nbwss import logs, outbox
from nbwss.backoff import Backoff
from nbwss.metrics import POLLER_UP
from nbwss.properties import Settings
from nbwss.sources import mapping
from nbwss.sources.mapping import (
    ImagesDecision,
    JobsDecision,
    MalformedRecordError,
    SeenJob,
    TrackedImage,
)
from nbwss.sources.restclient import (
    ApiUnavailableError,
    Credentials,
    RestClient,
    load_credentials,
    ssl_for,
)
from nbwss.store import Store

log = logs.get_logger("nbwss.poller")

JOBS_PATH: Final = "/admin/jobs"
IMAGES_PATH: Final = "/catalog/images"
JOBS_WATERMARK: Final = "jobs.watermark"
IMAGES_BASELINED: Final = "images.baselined"
# Newest first: a row inserted or updated mid-listing shifts later rows down a page
# (seen twice, deduped), never up (skipped). See docs/poller.md.
JOBS_SORT: Final = "-lastUpdateTime"
IMAGES_SORT: Final = "-backupTime"
# Backoff during an outage: from the poll rate, doubling, capped at this (or the rate).
BACKOFF_CAP_S: Final = 60.0


class Wakes(Protocol):
    """What wakes the delivery pumps after a commit (`nbwss.wake.Waker` in the daemon)."""

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


class Poller:
    """The poller component: `run()` polls until cancelled; never raises on API faults."""

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
        self.counts = PollCounts()
        self._polled = asyncio.Condition()
        self.client: RestClient | None = None
        self._unknown_states: set[tuple[int, str]] = set()

    async def run(self) -> None:
        """Poll jobs and images, each at its rate, until cancelled."""
        connector = aiohttp.TCPConnector(ssl=self._ssl, limit=2)
        async with aiohttp.ClientSession(connector=connector) as session:
            self.client = RestClient(self._settings.rest_api_base_url, self._credentials, session,
                                     self._settings.poller_page_size)
            log.info("poller.started", base_url=self._settings.rest_api_base_url,
                     jobs_rate_s=self._settings.poller_jobs_rate_s,
                     images_rate_s=self._settings.poller_images_rate_s)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._loop("jobs", self._settings.poller_jobs_rate_s,
                                             self.poll_jobs))
                tasks.create_task(self._loop("images", self._settings.poller_images_rate_s,
                                             self.poll_images))

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
        watermark = await asyncio.to_thread(self._read_watermark)
        if watermark is None:
            # First start: history is not replayed, and from now on nothing is missed,
            # however long the first polls find nothing (this watermark is committed).
            watermark = self._clock()
        params = {"filter": mapping.jobs_filter(watermark, self._clock()), "sort": JOBS_SORT}
        records = await self._client().list_all(JOBS_PATH, params)
        jobs = [mapping.parse_job(record["attributes"]) for record in records]
        seen = await asyncio.to_thread(self._read_seen_jobs, {job.job_id for job in jobs})
        decision = mapping.decide_jobs(seen, jobs, watermark)
        for job_id, api_state in decision.unmapped.items():
            if (job_id, api_state) not in self._unknown_states:  # once, not every poll
                self._unknown_states.add((job_id, api_state))
                log.warning("poller.job_state_unknown", job_id=job_id, state=api_state)
        await asyncio.to_thread(self._commit_jobs, decision)
        return self._queued(len(decision.notifications), "JOB")

    def _read_watermark(self) -> float | None:
        with self._store.reading() as conn:
            row = conn.execute("SELECT value FROM poller_state WHERE name = ?",
                               (JOBS_WATERMARK,)).fetchone()
        return None if row is None else float(row[0])

    def _read_seen_jobs(self, job_ids: set[int]) -> dict[int, SeenJob]:
        with self._store.reading() as conn:
            rows = conn.execute(
                "SELECT job_id, state, status, last_update FROM poller_jobs"
                " WHERE job_id IN (SELECT value FROM json_each(?))",
                (json.dumps(sorted(job_ids)),),
            ).fetchall()
        return {r[0]: SeenJob(r[1], r[2], r[3]) for r in rows}

    def _commit_jobs(self, decision: JobsDecision) -> None:
        with self._store.transaction() as conn:
            outbox.enqueue(conn, (("JOB", n) for n in decision.notifications), self._clock())
            conn.executemany(
                "INSERT OR REPLACE INTO poller_jobs (job_id, state, status, last_update)"
                " VALUES (?, ?, ?, ?)",
                ((i, s.state, s.status, s.last_update) for i, s in decision.seen.items()),
            )
            if decision.forget_done_before is not None:
                conn.execute("DELETE FROM poller_jobs WHERE state = 'DONE' AND last_update < ?",
                             (decision.forget_done_before,))
            if decision.watermark is not None:
                _set_state(conn, JOBS_WATERMARK, repr(decision.watermark))

    # -- images ------------------------------------------------------------------------------

    async def poll_images(self) -> int:
        """One images poll: list the whole window, compare with what is tracked, commit."""
        now = self._clock()
        cutoff = mapping.window_cutoff(now, self._settings.poller_image_window_days)
        params = {"filter": mapping.images_filter(cutoff), "sort": IMAGES_SORT}
        records = await self._client().list_all(IMAGES_PATH, params)
        listing = [mapping.parse_image(record) for record in records]
        tracked, baselined = await asyncio.to_thread(self._read_tracked_images)
        decision = mapping.decide_images(tracked, listing, cutoff, now, baseline=not baselined)
        if not baselined:
            log.info("poller.images_baseline", tracked=len(decision.track))
        await asyncio.to_thread(self._commit_images, decision, now)
        return self._queued(len(decision.notifications), "IMAGE")

    def _read_tracked_images(self) -> tuple[dict[str, TrackedImage], bool]:
        with self._store.reading() as conn:
            rows = conn.execute(
                "SELECT backup_id, digest, backup_time, data, missed FROM poller_images"
            ).fetchall()
            baselined = conn.execute("SELECT 1 FROM poller_state WHERE name = ?",
                                     (IMAGES_BASELINED,)).fetchone() is not None
        tracked = {r[0]: TrackedImage(r[1], r[2], json.loads(r[3]), r[4]) for r in rows}
        return tracked, baselined

    def _commit_images(self, decision: ImagesDecision, now: float) -> None:
        with self._store.transaction() as conn:
            outbox.enqueue(conn, (("IMAGE", n) for n in decision.notifications), now)
            conn.executemany(
                "INSERT OR REPLACE INTO poller_images (backup_id, digest, backup_time, data,"
                " missed) VALUES (?, ?, ?, ?, ?)",
                ((i, t.digest, t.backup_time, json.dumps(t.base), t.missed)
                 for i, t in decision.track.items()),
            )
            conn.executemany("DELETE FROM poller_images WHERE backup_id = ?",
                             ((i,) for i in decision.untrack))
            _set_state(conn, IMAGES_BASELINED, "1")

    def _queued(self, count: int, obj: str) -> int:
        if count:
            log.info("poller.queued", object=obj, count=count)
            if self._waker is not None:
                self._waker.wake()
        return count


def _set_state(conn: sqlite3.Connection, name: str, value: str) -> None:
    conn.execute("INSERT OR REPLACE INTO poller_state (name, value) VALUES (?, ?)",
                 (name, value))
