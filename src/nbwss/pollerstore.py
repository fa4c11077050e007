"""The REST poller's tables: watermark, seen jobs, tracked images, records set aside.

All of the poller's SQL is here (the schema is in `store.py`). A poll's decision is
committed by `commit_jobs` / `commit_images` in ONE transaction with the outbox insert:
the watermark, the seen-state and the set-aside records move if and only if the
notifications are queued. Calls are short and synchronous (the poller runs them through
`asyncio.to_thread`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from typing import Final

from nbwss import outbox
from nbwss.sources.mapping import ImagesDecision, JobsDecision, SeenJob, TrackedImage
from nbwss.sources.setaside import SetAside, SetAsideDecision
from nbwss.store import Store

JOBS_WATERMARK: Final = "jobs.watermark"
IMAGES_BASELINED: Final = "images.baselined"


def _set_state(conn: sqlite3.Connection, name: str, value: str) -> None:
    conn.execute("INSERT OR REPLACE INTO poller_state (name, value) VALUES (?, ?)",
                 (name, value))


def read_watermark(store: Store) -> float | None:
    """The newest job `lastUpdateTime` handled (epoch seconds), None before the first poll."""
    with store.reading() as conn:
        row = conn.execute("SELECT value FROM poller_state WHERE name = ?",
                           (JOBS_WATERMARK,)).fetchone()
    return None if row is None else float(row[0])


def write_watermark(store: Store, watermark: float) -> None:
    """Set the jobs watermark (a catch-up from a chosen time: the benchmark)."""
    with store.transaction() as conn:
        _set_state(conn, JOBS_WATERMARK, repr(watermark))


def read_seen_jobs(store: Store, job_ids: Iterable[int]) -> dict[int, SeenJob]:
    """What was last reported for each of these jobs (those never reported are absent)."""
    with store.reading() as conn:
        rows = conn.execute(
            "SELECT job_id, state, status, last_update FROM poller_jobs"
            " WHERE job_id IN (SELECT value FROM json_each(?))",
            (json.dumps(sorted(set(job_ids)), allow_nan=False),),
        ).fetchall()
    return {r[0]: SeenJob(r[1], r[2], r[3]) for r in rows}


def read_tracked_images(store: Store) -> tuple[dict[str, TrackedImage], bool]:
    """Every tracked image, and whether the first (baseline) listing was committed."""
    with store.reading() as conn:
        rows = conn.execute(
            "SELECT backup_id, digest, backup_time, data, missed FROM poller_images"
        ).fetchall()
        baselined = conn.execute("SELECT 1 FROM poller_state WHERE name = ?",
                                 (IMAGES_BASELINED,)).fetchone() is not None
    tracked = {r[0]: TrackedImage(r[1], r[2], json.loads(r[3]), r[4]) for r in rows}
    return tracked, baselined


def read_set_aside(store: Store, obj: str) -> dict[str, str]:
    """The records of `obj` (JOB or IMAGE) set aside: id -> fingerprint."""
    with store.reading() as conn:
        rows = conn.execute(
            "SELECT record_id, fingerprint FROM poller_set_aside WHERE object = ?", (obj,)
        ).fetchall()
    return {r[0]: r[1] for r in rows}


def count_set_aside(store: Store) -> int:
    """How many records are set aside now (for `nbwss status`)."""
    with store.reading() as conn:
        return _count_set_aside(conn)


def _count_set_aside(conn: sqlite3.Connection) -> int:
    (count,) = conn.execute("SELECT COUNT(*) FROM poller_set_aside").fetchone()
    return int(count)


def _apply_set_aside(conn: sqlite3.Connection, obj: str, aside: SetAsideDecision,
                     now: float) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO poller_set_aside (object, record_id, fingerprint, reason,"
        " since) VALUES (?, ?, ?, ?, ?)",
        ((r.object, r.record_id, r.fingerprint, r.reason, now) for r in aside.new),
    )
    conn.executemany("DELETE FROM poller_set_aside WHERE object = ? AND record_id = ?",
                     ((obj, record_id) for record_id in aside.cleared))


def commit_jobs(store: Store, decision: JobsDecision, aside: SetAsideDecision, now: float,
                forget_set_aside_before: float) -> int:
    """Queue the JOB notifications and move the jobs state with them, in one transaction;
    returns how many records are set aside now.

    A job set aside that never changed again is forgotten after `forget_set_aside_before`
    (like a finished job's seen-state): only a change could bring it back.
    """
    with store.transaction() as conn:
        outbox.enqueue(conn, (("JOB", n) for n in decision.notifications), now)
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
        _apply_set_aside(conn, "JOB", aside, now)
        conn.execute("DELETE FROM poller_set_aside WHERE object = 'JOB' AND since < ?",
                     (forget_set_aside_before,))
        return _count_set_aside(conn)


def commit_images(store: Store, decision: ImagesDecision, aside: SetAsideDecision,
                  now: float) -> int:
    """Queue the IMAGE notifications and move the tracked images with them, at once;
    returns how many records are set aside now."""
    with store.transaction() as conn:
        outbox.enqueue(conn, (("IMAGE", n) for n in decision.notifications), now)
        conn.executemany(
            "INSERT OR REPLACE INTO poller_images (backup_id, digest, backup_time, data,"
            " missed) VALUES (?, ?, ?, ?, ?)",
            ((i, t.digest, t.backup_time, json.dumps(t.base, allow_nan=False), t.missed)
             for i, t in decision.track.items()),
        )
        conn.executemany("DELETE FROM poller_images WHERE backup_id = ?",
                         ((i,) for i in decision.untrack))
        _set_state(conn, IMAGES_BASELINED, "1")
        _apply_set_aside(conn, "IMAGE", aside, now)
        return _count_set_aside(conn)


def set_aside_rows(store: Store) -> list[SetAside]:
    """Every record set aside (tests and diagnostics)."""
    with store.reading() as conn:
        rows = conn.execute(
            "SELECT object, record_id, fingerprint, reason FROM poller_set_aside"
            " ORDER BY object, record_id"
        ).fetchall()
    return [SetAside(*row) for row in rows]
