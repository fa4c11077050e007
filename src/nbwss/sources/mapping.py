"""From the NetBackup REST API's records to NBWSS notifications, and what to report when.

Pure: values in (API records, the seen-state, the current time), decisions out
(notifications, the new seen-state, the new watermark). The poller does the I/O and
commits a decision in one transaction with the outbox insert, so a decision is applied
exactly once. The mapping tables are documented in docs/poller.md, with their sources:
Veritas's admin.yaml (jobs) and catalog.yaml (images), NetBackup 10.3 to 11.2.

A record that cannot be mapped raises `MalformedRecordError` from `parse_job` or
`parse_image`; the poller sets that one record aside (`setaside.py`) and goes on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from nbwss.errors import NbwssError, NotificationError
from nbwss.notifications import check_wire, validate

JsonObject = dict[str, Any]

# The API's job states (admin.yaml: QUEUED, ACTIVE, REQUEUED, DONE, SUSPENDED, INCOMPLETE)
# -> the notification's three. A job that waits (requeued, suspended, incomplete and
# resumable) is not running and not finished: QUEUED. DONE is final.
JOB_STATES: Final[Mapping[str, str]] = {
    "QUEUED": "QUEUED",
    "REQUEUED": "QUEUED",
    "WAITING_FOR_RETRY": "QUEUED",
    "SUSPENDED": "QUEUED",
    "INCOMPLETE": "QUEUED",
    "ACTIVE": "ACTIVE",
    "DONE": "DONE",
}

# The API's schedule types -> NetBackup's ST_* names, as the notifications carry them.
# The jobs schema (admin.yaml) lists the *_BACKUP names and the AUTOMATIC_* forms;
# Veritas's example job response, and the images schema (catalog.yaml), the short ones.
SCHEDULE_TYPES: Final[Mapping[str, str]] = {
    "FULL_BACKUP": "ST_FULL",
    "FULL": "ST_FULL",
    "AUTOMATIC_FULL_BACKUP": "ST_FULL",
    "DIFFERENTIAL_INCREMENTAL_BACKUP": "ST_INCR",
    "DIFFERENTIAL_INCREMENTAL": "ST_INCR",
    "AUTOMATIC_INCREMENTAL_BACKUP": "ST_INCR",
    "AUTOMATIC_DIFFERENTIAL_INCREMENTAL_BACKUP": "ST_INCR",
    "INCR": "ST_INCR",
    "CUMULATIVE_INCREMENTAL_BACKUP": "ST_CINC",
    "CUMULATIVE_INCREMENTAL": "ST_CINC",
    "AUTOMATIC_CUMULATIVE_INCREMENTAL_BACKUP": "ST_CINC",
    "CINC": "ST_CINC",
    "USER_BACKUP": "ST_UBAK",
    "UBAK": "ST_UBAK",
    "USER_ARCHIVE": "ST_UARC",
    "UARC": "ST_UARC",
}

# An image's policyType is display text (catalog.yaml: "Standard", "Oracle", "MS-Windows",
# "VMware", "Hyper-V", "MS-SQL-Server", "MS-Exchange-Server", etc.); the guide's IMAGE
# notification carries upper-case types (VMWARE, STANDARD), the jobs API's policyType
# enum the same names (STANDARD, VMWARE, HYPERV). Only pairs the material shows are here;
# any other text is upper-cased with '-' and spaces as '_' (`client_type`).
POLICY_TYPES: Final[Mapping[str, str]] = {
    "Standard": "STANDARD",
    "VMware": "VMWARE",
    "Hyper-V": "HYPERV",
}

# NetBackup's enums start at FULL and STANDARD (value 0): a job without a schedule or
# policy type (a restore) is reported with these, as the guide's restore example shows.
DEFAULT_SCHEDULE_TYPE: Final = "ST_FULL"
DEFAULT_POLICY_TYPE: Final = "STANDARD"

# Jobs are re-read from (watermark - overlap): a job whose update is stamped just before
# the watermark but committed after the poll read past it is still seen. Dedup by the
# seen-state keeps the overlap from repeating a notification.
JOB_OVERLAP_S: Final = 60.0
# A finished job's seen-state is kept this long past the watermark, then forgotten:
# it can only come back if NetBackup updates a job that ended a week ago.
DONE_JOB_RETENTION_S: Final = 7 * 86400.0
# A tracked image must be missing from this many consecutive complete listings to be
# reported DELETE: offset paging over a catalog that changes mid-listing (in no defined
# order: the images API has no sort) can skip a row, and a skipped row must not become
# an invented DELETE.
DELETE_CONFIRMATIONS: Final = 2
# How far past the current time an images listing reaches (see `images_filter`).
IMAGES_AHEAD_S: Final = 86400


class MalformedRecordError(NbwssError):
    """One API record cannot be mapped to a notification (the poller sets it aside)."""


def record_digest(value: Any) -> str:
    """A digest of a record's every attribute: any change (copies, expiration...) shows."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str,
                           allow_nan=True)  # hashed, never parsed: NaN may be what came
    return hashlib.sha256(canonical.encode()).hexdigest()


def record_id(record: Mapping[str, Any]) -> str:
    """The JSON:API `id` of a record (a string; Veritas's job example shows a number)."""
    value = record.get("id")
    if isinstance(value, bool) or not isinstance(value, str | int):
        return ""
    return str(value)


def checked(obj: str, notification: JsonObject) -> JsonObject:
    """The one place where a mapped record becomes a notification the outbox will store:
    it must pass the intake's own check, or the record is set aside."""
    try:
        validate(obj, notification)
        check_wire(obj, notification)
    except NotificationError as exc:
        raise MalformedRecordError(str(exc)) from None
    return notification


# -- times ---------------------------------------------------------------------------------


# Times outside years 1 to 9999 are no times: `datetime` cannot hold them, nor a watermark.
EARLIEST_TIME: Final = -62135596800.0
LATEST_TIME: Final = 253402300799.0


def parse_time(value: Any, what: str) -> float:
    """An API time (ISO 8601, `Z` or offset; epoch numbers accepted too) -> epoch seconds.

    A page is parsed leniently (one odd record must not stop the poll), so a number here
    may be NaN, Infinity or a 400-digit integer: each is a `MalformedRecordError`, the
    record set aside, never a ValueError or OverflowError escaping the poll.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        # The comparison never converts: a huge int or NaN compares False, inf is out.
        if not EARLIEST_TIME <= value <= LATEST_TIME:
            shown = (repr(value) if isinstance(value, float) or value.bit_length() < 256
                     else f"an integer of {value.bit_length()} bits")
            raise MalformedRecordError(f"{what} is not a time: {shown:.40}")
        return float(value)
    if not isinstance(value, str) or not value:
        raise MalformedRecordError(f"{what} is not a time: {value!r}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise MalformedRecordError(f"{what} is not an ISO 8601 time: {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)  # the API writes UTC
    return parsed.timestamp()


def format_time(epoch: float) -> str:
    """Epoch seconds -> the API's filter form, e.g. 2016-04-05T04:14:58.000Z."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# -- jobs ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SeenJob:
    """What the poller last reported for a job (`state` in notification form)."""

    state: str
    status: int
    last_update: float


@dataclass(frozen=True, slots=True)
class ApiJob:
    """One job as read from a page, and its JOB notification."""

    job_id: int
    last_update: float
    notification: JsonObject


def _int(attributes: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = attributes.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int):
        shown = "missing" if value is None else f"not an integer: {value!r}"
        raise MalformedRecordError(f"attribute {key} is {shown}")
    return value


def _text(attributes: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = attributes.get(key, default)
    if value is None:
        value = default
    if not isinstance(value, str):
        shown = "missing" if value is None else f"not a string: {value!r}"
        raise MalformedRecordError(f"attribute {key} is {shown}")
    return value


def schedule_type(api_value: str) -> str:
    """FULL_BACKUP (or FULL) -> ST_FULL; an unknown type keeps its name under ST_."""
    if not api_value:
        return DEFAULT_SCHEDULE_TYPE
    upper = api_value.upper()
    if upper.startswith("ST_"):
        return upper
    return SCHEDULE_TYPES.get(upper, f"ST_{upper}")


def client_type(policy_type: str) -> str:
    """An image's policyType display text -> the IMAGE notification's clientType."""
    if not policy_type:
        return DEFAULT_POLICY_TYPE
    known = POLICY_TYPES.get(policy_type)
    if known is not None:
        return known
    return "_".join(policy_type.replace("-", " ").split()).upper()


def parse_job(attributes: Mapping[str, Any]) -> ApiJob:
    """One `/admin/jobs` record's attributes -> the job and its JOB notification."""
    job_id = _int(attributes, "jobId")
    api_state = _text(attributes, "state").upper()
    state = JOB_STATES.get(api_state)
    if state is None:
        raise MalformedRecordError(f"state {api_state!r} is not one nbwss maps")
    parent = _int(attributes, "parentJobId", 0)
    start = attributes.get("startTime")
    notification = {
        "scheduleType": schedule_type(_text(attributes, "scheduleType", "")),
        "clientName": _text(attributes, "clientName"),
        "status": _int(attributes, "status", 0),
        "startTime": int(parse_time(start, "startTime")) if start else 0,
        "state": state,
        "policyName": _text(attributes, "policyName", ""),
        # NetBackup writes 0 for "no parent"; the guide shows a top job as its own parent.
        "parentJobId": parent or job_id,
        "jobId": job_id,
        "policyType": _text(attributes, "policyType", "") or DEFAULT_POLICY_TYPE,
        "jobType": _text(attributes, "jobType"),
    }
    last_update = parse_time(attributes.get("lastUpdateTime"), "lastUpdateTime")
    return ApiJob(job_id, last_update, checked("JOB", notification))


@dataclass(frozen=True, slots=True)
class JobsDecision:
    """What one jobs poll changes: commit all of it, with the outbox insert, or none."""

    notifications: list[JsonObject]
    seen: dict[int, SeenJob]
    watermark: float | None
    forget_done_before: float | None


def decide_jobs(
    seen: Mapping[int, SeenJob], jobs: Iterable[ApiJob], watermark: float | None
) -> JobsDecision:
    """One notification per observed transition of a job's (mapped) state.

    A job first seen is reported in its current state; after that, each change of state
    is reported once (so a job is reported when it starts and again when DONE). A job
    that appears twice in one listing (paging over a changing set) counts once, newest
    record first. Notifications are in the order the changes happened (lastUpdateTime,
    then jobId). The watermark only moves forward.
    """
    latest: dict[int, ApiJob] = {}
    for job in jobs:
        known = latest.get(job.job_id)
        if known is None or job.last_update >= known.last_update:
            latest[job.job_id] = job
    changed: dict[int, SeenJob] = {}
    reported: list[ApiJob] = []
    new_watermark = watermark
    for job in sorted(latest.values(), key=lambda j: (j.last_update, j.job_id)):
        if new_watermark is None or job.last_update > new_watermark:
            new_watermark = job.last_update
        before = seen.get(job.job_id)
        if before is not None and job.last_update < before.last_update:
            continue  # an older record than the one already handled (overlap)
        after = SeenJob(job.notification["state"], job.notification["status"], job.last_update)
        if before is None or before.state != after.state:
            reported.append(job)
        if before != after:
            changed[job.job_id] = after
    forget = None if new_watermark is None else new_watermark - DONE_JOB_RETENTION_S
    notifications = [job.notification for job in reported]
    return JobsDecision(notifications, changed, new_watermark, forget)


def jobs_filter(watermark: float | None, now: float) -> str:
    """The `filter` for the next jobs poll: everything updated since the watermark.

    With no watermark yet (first start), history is not replayed: the poll starts from
    now, minus the overlap.
    """
    since = (now if watermark is None else watermark) - JOB_OVERLAP_S
    return f"lastUpdateTime gt {format_time(since)}"


# -- images --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApiImage:
    """One catalog image: its id, backup time, digest of what can change, IMAGE fields."""

    backup_id: str
    backup_time: int
    digest: str
    base: JsonObject  # the IMAGE notification without operationId and createdTime
    written_time: int | None = None  # backupTime + elapsedTimeSeconds: when it was complete


@dataclass(frozen=True, slots=True)
class TrackedImage:
    """An image the poller has reported and watches for UPDATE and DELETE."""

    digest: str
    backup_time: int
    base: JsonObject
    missed: int = 0


def parse_image(record: Mapping[str, Any]) -> ApiImage:
    """One `/catalog/images` record -> the image as tracked.

    The backup id is the record's `id` (`<client>_<epoch>`); the attributes have no
    backupId, clientType, createdTime or lastUpdateTime (catalog.yaml, imageAttributes).
    """
    attributes = record.get("attributes")
    if not isinstance(attributes, dict):
        raise MalformedRecordError("image record has no attributes object")
    backup_id = record_id(record)
    if not backup_id:
        raise MalformedRecordError("image record has no id")
    backup_time = int(parse_time(attributes.get("backupTime"), "backupTime"))
    base = {
        "clientType": client_type(_text(attributes, "policyType", "")),
        "clientName": _text(attributes, "clientName"),
        "backupTime": backup_time,
        "backupId": backup_id,
    }
    checked("IMAGE", image_notification(base, "CREATE", backup_time))
    elapsed = attributes.get("elapsedTimeSeconds")
    written = None
    if isinstance(elapsed, int) and not isinstance(elapsed, bool) and elapsed >= 0:
        written = backup_time + elapsed
    return ApiImage(backup_id, backup_time, record_digest(attributes), base, written)


def image_notification(base: Mapping[str, Any], operation: str, created_time: int) -> JsonObject:
    """The IMAGE notification, fields in the guide's order; createdTime is the event's time."""
    return {
        "clientType": base["clientType"],
        "clientName": base["clientName"],
        "backupTime": base["backupTime"],
        "createdTime": created_time,
        "operationId": operation,
        "backupId": base["backupId"],
    }


@dataclass(frozen=True, slots=True)
class ImagesDecision:
    """What one complete images listing changes: commit all of it or none."""

    notifications: list[JsonObject]
    track: dict[str, TrackedImage]
    untrack: list[str]


def window_cutoff(now: float, window_days: int) -> int:
    """Images with backupTime after this are listed and tracked; older ones age out."""
    return int(now - window_days * 86400)


def decide_images(
    tracked: Mapping[str, TrackedImage],
    listing: Iterable[ApiImage],
    cutoff: int,
    now: float,
    *,
    baseline: bool = False,
    set_aside: Collection[str] = (),
) -> ImagesDecision:
    """Compare one complete listing of the window with what is tracked.

    New image: CREATE. Changed digest: UPDATE. Tracked, inside the window, but missing
    from `DELETE_CONFIRMATIONS` listings in a row: DELETE. Older than the window:
    forgotten silently (the documented limit). A listed image that was `set_aside` (it
    cannot be mapped) is present: never counted missing, never changed. Order:
    creations, then updates, then deletions, each by backupTime then backupId. With
    `baseline` (the first listing ever), everything listed is tracked and nothing is
    reported: history is not replayed.
    """
    listed = {image.backup_id: image for image in listing if image.backup_time > cutoff}
    creates, updates, track = _compare_listed(tracked, listed)
    deletes: list[tuple[str, TrackedImage]] = []
    untrack: list[str] = []
    for backup_id, image_seen in tracked.items():
        if backup_id in listed or backup_id in set_aside:
            continue
        if image_seen.backup_time <= cutoff:
            untrack.append(backup_id)
        elif image_seen.missed + 1 >= DELETE_CONFIRMATIONS:
            deletes.append((backup_id, image_seen))
            untrack.append(backup_id)
        else:
            track[backup_id] = TrackedImage(
                image_seen.digest, image_seen.backup_time, image_seen.base, image_seen.missed + 1
            )
    if baseline:
        return ImagesDecision([], track, untrack)
    return ImagesDecision(_image_events(creates, updates, deletes, int(now)), track, untrack)


def _compare_listed(
    tracked: Mapping[str, TrackedImage], listed: Mapping[str, ApiImage]
) -> tuple[list[ApiImage], list[ApiImage], dict[str, TrackedImage]]:
    """The new images, the changed ones, and what to track for the listed ones."""
    creates: list[ApiImage] = []
    updates: list[ApiImage] = []
    track: dict[str, TrackedImage] = {}
    for image in listed.values():
        before = tracked.get(image.backup_id)
        if before is None:
            creates.append(image)
        elif before.digest != image.digest:
            updates.append(image)
        elif before.missed == 0:
            continue
        track[image.backup_id] = TrackedImage(image.digest, image.backup_time, image.base)
    return creates, updates, track


def _image_events(
    creates: list[ApiImage], updates: list[ApiImage],
    deletes: list[tuple[str, TrackedImage]], now: int,
) -> list[JsonObject]:
    """createdTime is when the event happened: for a CREATE, when the backup completed
    (backupTime + elapsedTimeSeconds) when the API says, else, as for UPDATE and DELETE
    (the catalog keeps no time of change, and a gone image has no record), when the
    poller saw it."""

    def order(image: ApiImage) -> tuple[int, str]:
        return (image.backup_time, image.backup_id)

    events = [image_notification(i.base, "CREATE", i.written_time or now)
              for i in sorted(creates, key=order)]
    events += [image_notification(i.base, "UPDATE", now) for i in sorted(updates, key=order)]
    events += [image_notification(t.base, "DELETE", now)
               for _, t in sorted(deletes, key=lambda d: (d[1].backup_time, d[0]))]
    return events


def images_filter(cutoff: int, now: float) -> str:
    """The `filter` for an images listing: the whole tracked window.

    The API takes only `ge` and `le` on backupTime (catalog.yaml), and `le` defaults to
    the current time: it is set `IMAGES_AHEAD_S` ahead, so that an image stamped by a
    media server whose clock runs ahead is still seen.
    """
    return (f"backupTime ge {format_time(cutoff)} and "
            f"backupTime le {format_time(int(now) + IMAGES_AHEAD_S)}")
