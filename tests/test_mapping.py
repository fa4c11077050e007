"""The poller's pure core: API records -> notifications, and what to report when."""

from __future__ import annotations

from typing import Any

import pytest

from nbwss.notifications import validate
from nbwss.sources.mapping import (
    DELETE_CONFIRMATIONS,
    JOB_OVERLAP_S,
    ApiImage,
    MalformedRecordError,
    SeenJob,
    TrackedImage,
    decide_images,
    decide_jobs,
    format_time,
    jobs_filter,
    parse_image,
    parse_job,
    parse_time,
    schedule_type,
    window_cutoff,
)
from nbwss.standin.scenarios import GuideScenarios

# The guide's examples (spec/examples/*.json), as transcribed for the stand-in's scenarios.
GUIDE = GuideScenarios()
GUIDE_EXAMPLES: dict[str, list[dict[str, Any]]] = {
    "vmware-e-backup-job-done": [n for _, n in GUIDE.vmware_backup()[4].expected],
    "vmware-d-image-create": [n for _, n in GUIDE.vmware_backup()[3].expected],
    "restore-job-done": [n for _, n in GUIDE.restore()[0].expected],
}


def example_data(name: str) -> list[dict[str, Any]]:
    return GUIDE_EXAMPLES[name]


def api_job(job_id: int, state: str, updated: float, **extra: Any) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "jobId": job_id, "parentJobId": 0, "jobType": "BACKUP", "policyType": "VMWARE",
        "policyName": "vmware2", "scheduleType": "FULL", "clientName": "DummyTestVM",
        "state": state, "status": 0, "startTime": "2016-04-05T04:14:58.000Z",
        "lastUpdateTime": format_time(updated),
    }
    attributes.update(extra)
    return attributes


def test_time_round_trip_and_forms() -> None:
    assert parse_time("2016-04-05T04:14:58Z", "t") == 1459829698
    assert parse_time("2016-04-05T04:14:58.250Z", "t") == 1459829698.25
    assert parse_time("2016-04-05T06:14:58+02:00", "t") == 1459829698
    assert parse_time(format_time(1459829698.5), "t") == 1459829698.5
    with pytest.raises(MalformedRecordError, match="startTime"):
        parse_time("yesterday", "startTime")


@pytest.mark.parametrize(
    ("api", "expected"),
    [("FULL", "ST_FULL"), ("DIFFERENTIAL_INCREMENTAL", "ST_INCR"),
     ("CUMULATIVE_INCREMENTAL", "ST_CINC"), ("USER_BACKUP", "ST_UBAK"),
     ("USER_ARCHIVE", "ST_UARC"), ("", "ST_FULL"), ("ST_CINC", "ST_CINC"),
     ("SYNTHETIC", "ST_SYNTHETIC")],
)
def test_schedule_type(api: str, expected: str) -> None:
    assert schedule_type(api) == expected


def test_job_maps_to_the_guides_fields_and_order() -> None:
    expected = example_data("vmware-e-backup-job-done")[0]
    job = parse_job(api_job(146, "DONE", 1e9, parentJobId=145,
                            startTime=format_time(expected["startTime"])))
    assert job.notification is not None
    assert list(job.notification.items()) == list(expected.items())
    validate("JOB", job.notification)


def test_restore_without_policy_or_parent_maps_like_the_guide() -> None:
    expected = example_data("restore-job-done")[0]
    job = parse_job({
        "jobId": 147, "parentJobId": 0, "jobType": "RESTORE", "policyType": None,
        "policyName": None, "scheduleType": None, "clientName": "masterserver2.domain.com",
        "state": "DONE", "status": 0, "startTime": format_time(expected["startTime"]),
        "lastUpdateTime": format_time(1e9),
    })
    assert job.notification == expected


@pytest.mark.parametrize(
    ("api_state", "state"),
    [("QUEUED", "QUEUED"), ("REQUEUED", "QUEUED"), ("SUSPENDED", "QUEUED"),
     ("INCOMPLETE", "QUEUED"), ("ACTIVE", "ACTIVE"), ("DONE", "DONE"), ("done", "DONE")],
)
def test_job_state_mapping(api_state: str, state: str) -> None:
    notification = parse_job(api_job(1, api_state, 1e9)).notification
    assert notification is not None
    assert notification["state"] == state


def test_unknown_state_is_held_back_not_guessed() -> None:
    decision = decide_jobs({}, [parse_job(api_job(9, "TELEPORTING", 100.0))], None)
    assert decision.notifications == []
    assert decision.seen == {}
    assert decision.unmapped == {9: "TELEPORTING"}
    assert decision.watermark == 100.0


@pytest.mark.parametrize(
    "attributes",
    [{"jobId": "x", "state": "DONE", "lastUpdateTime": "2016-04-05T04:14:58Z"},
     {"jobId": 1, "state": "DONE", "clientName": "c", "jobType": "BACKUP"},
     {"jobId": 1, "state": 3, "lastUpdateTime": "2016-04-05T04:14:58Z"}],
)
def test_malformed_job_is_refused(attributes: dict[str, Any]) -> None:
    with pytest.raises(MalformedRecordError):
        parse_job(attributes)


def test_one_notification_per_transition() -> None:
    seen: dict[int, SeenJob] = {}
    watermark = None
    reported: list[tuple[int, str]] = []
    polls = [
        [api_job(144, "QUEUED", 10)],
        [api_job(144, "QUEUED", 10)],  # the overlap shows it again: nothing new
        [api_job(144, "ACTIVE", 20), api_job(145, "ACTIVE", 21)],
        [api_job(144, "ACTIVE", 30)],  # progress, no state change
        [api_job(144, "DONE", 40, status=1), api_job(145, "DONE", 39)],
        [api_job(144, "DONE", 40, status=1)],
    ]
    for page in polls:
        decision = decide_jobs(seen, [parse_job(a) for a in page], watermark)
        seen.update(decision.seen)
        watermark = decision.watermark
        reported += [(n["jobId"], n["state"]) for n in decision.notifications]
    assert reported == [(144, "QUEUED"), (144, "ACTIVE"), (145, "ACTIVE"),
                        (145, "DONE"), (144, "DONE")]
    assert watermark == 40
    assert seen[144] == SeenJob("DONE", 1, 40)


def test_first_seen_done_is_one_done() -> None:
    decision = decide_jobs({}, [parse_job(api_job(147, "DONE", 5))], None)
    assert [(n["jobId"], n["state"]) for n in decision.notifications] == [(147, "DONE")]


def test_duplicate_rows_count_once_newest_wins() -> None:
    rows = [parse_job(api_job(7, "DONE", 50)), parse_job(api_job(7, "ACTIVE", 40))]
    decision = decide_jobs({}, rows, None)
    assert [n["state"] for n in decision.notifications] == ["DONE"]


def test_older_record_than_seen_is_ignored_and_watermark_never_goes_back() -> None:
    seen = {7: SeenJob("DONE", 0, 50)}
    decision = decide_jobs(seen, [parse_job(api_job(7, "ACTIVE", 40))], 60)
    assert decision.notifications == []
    assert decision.watermark == 60
    assert decision.forget_done_before is not None


def test_jobs_filter_reaches_back_by_the_overlap() -> None:
    assert jobs_filter(1000.0, 5000.0) == f"lastUpdateTime gt {format_time(1000 - JOB_OVERLAP_S)}"
    assert jobs_filter(None, 5000.0) == f"lastUpdateTime gt {format_time(5000 - JOB_OVERLAP_S)}"


def image(backup_id: str, **extra: Any) -> ApiImage:
    client, _, epoch = backup_id.rpartition("_")
    attributes: dict[str, Any] = {"backupId": backup_id, "clientName": client,
                                  "clientType": "VMWARE", "backupTime": format_time(int(epoch))}
    attributes.update(extra)
    return parse_image({"type": "image", "id": backup_id, "attributes": attributes})


def track(images: list[ApiImage]) -> dict[str, TrackedImage]:
    return {i.backup_id: TrackedImage(i.digest, i.backup_time, i.base) for i in images}


def test_image_maps_to_the_guides_fields() -> None:
    expected = example_data("vmware-d-image-create")[0]
    created = image("DummyTestVM_1459811698", createdTime=format_time(expected["createdTime"]))
    decision = decide_images({}, [created], 0, 2e9)
    assert decision.notifications == [expected]
    validate("IMAGE", decision.notifications[0])


def test_client_type_falls_back_to_policy_type() -> None:
    record = {"id": "c_5", "attributes": {"clientName": "c", "policyType": "STANDARD",
                                          "backupTime": format_time(5)}}
    assert parse_image(record).base["clientType"] == "STANDARD"
    assert parse_image(record).backup_id == "c_5"


def test_create_then_update_in_the_guides_order() -> None:
    old = image("DummyTestVM_1459811686", copies=1)
    tracked = track([old])
    listing = [image("DummyTestVM_1459811686", copies=2), image("DummyTestVM_1459811698")]
    decision = decide_images(tracked, listing, 0, 2e9)
    assert [(n["operationId"], n["backupId"]) for n in decision.notifications] == [
        ("CREATE", "DummyTestVM_1459811698"), ("UPDATE", "DummyTestVM_1459811686")]
    assert set(decision.track) == {"DummyTestVM_1459811686", "DummyTestVM_1459811698"}
    again = decide_images({**tracked, **decision.track}, listing, 0, 2e9)
    assert again.notifications == []
    assert again.track == {}
    assert again.untrack == []


def test_delete_needs_confirmed_absence() -> None:
    tracked = track([image("localhost_1458601200")])
    for _ in range(DELETE_CONFIRMATIONS - 1):
        decision = decide_images(tracked, [], 0, 2e9)
        assert decision.notifications == []
        tracked = {**tracked, **decision.track}
    decision = decide_images(tracked, [], 0, 2e9)
    assert [(n["operationId"], n["backupId"]) for n in decision.notifications] == [
        ("DELETE", "localhost_1458601200")]
    assert decision.untrack == ["localhost_1458601200"]


def test_image_back_after_one_miss_is_not_deleted_nor_updated() -> None:
    present = image("localhost_1458601200")
    tracked = {present.backup_id: TrackedImage(present.digest, present.backup_time,
                                               present.base, missed=1)}
    decision = decide_images(tracked, [present], 0, 2e9)
    assert decision.notifications == []
    assert decision.track[present.backup_id].missed == 0


def test_images_age_out_of_the_window_silently() -> None:
    now = 1_700_000_000.0
    cutoff = window_cutoff(now, 30)
    old = image(f"c_{cutoff - 10}")
    decision = decide_images(track([old]), [], cutoff, now)
    assert decision.notifications == []
    assert decision.untrack == [old.backup_id]
    # and one older than the window is neither created nor tracked
    assert decide_images({}, [old], cutoff, now).notifications == []


def test_baseline_tracks_without_reporting() -> None:
    decision = decide_images({}, [image("c_5")], 0, 2e9, baseline=True)
    assert decision.notifications == []
    assert set(decision.track) == {"c_5"}
