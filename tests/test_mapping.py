"""The poller's pure core: API records -> notifications, and what to report when.

Records come in the shapes of Veritas's documents: the example job response of
admin.yaml and the image attributes of catalog.yaml (tests/fixtures/netbackup-api/).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
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
    client_type,
    decide_images,
    decide_jobs,
    format_time,
    images_filter,
    jobs_filter,
    parse_image,
    parse_job,
    parse_time,
    schedule_type,
    window_cutoff,
)
from nbwss.sources.setaside import SetAside, decide_set_aside, read_records
from nbwss.standin.scenarios import GuideScenarios

FIXTURES = Path(__file__).parent / "fixtures" / "netbackup-api"

# The guide's examples (spec/examples/*.json), as transcribed for the stand-in's scenarios.
GUIDE = GuideScenarios()
GUIDE_EXAMPLES: dict[str, list[dict[str, Any]]] = {
    "vmware-e-backup-job-done": [n for _, n in GUIDE.vmware_backup()[4].expected],
    "vmware-d-image-create": [n for _, n in GUIDE.vmware_backup()[3].expected],
    "restore-job-done": [n for _, n in GUIDE.restore()[0].expected],
}


def example_data(name: str) -> list[dict[str, Any]]:
    return GUIDE_EXAMPLES[name]


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def veritas_jobs() -> list[dict[str, Any]]:
    """The records of Veritas's example GET /admin/jobs response (10.3 to 11.2)."""
    records: list[dict[str, Any]] = fixture("admin-jobs-example.json")["data"]
    return records


def api_job(job_id: int, state: str, updated: float, **extra: Any) -> dict[str, Any]:
    """Veritas's example job, made a VMware backup of the guide's."""
    attributes: dict[str, Any] = copy.deepcopy(veritas_jobs()[1]["attributes"])
    attributes.update({
        "jobId": job_id, "parentJobId": 0, "jobType": "BACKUP", "policyType": "VMWARE",
        "policyName": "vmware2", "scheduleType": "FULL_BACKUP", "clientName": "DummyTestVM",
        "state": state, "status": 0, "startTime": "2016-04-05T04:14:58.000Z",
        "lastUpdateTime": format_time(updated),
    })
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
    [  # the jobs schema's names (admin.yaml 10.3 to 11.2) ...
     ("FULL_BACKUP", "ST_FULL"), ("DIFFERENTIAL_INCREMENTAL_BACKUP", "ST_INCR"),
     ("CUMULATIVE_INCREMENTAL_BACKUP", "ST_CINC"), ("USER_BACKUP", "ST_UBAK"),
     ("USER_ARCHIVE", "ST_UARC"), ("AUTOMATIC_FULL_BACKUP", "ST_FULL"),
     ("AUTOMATIC_INCREMENTAL_BACKUP", "ST_INCR"),
     ("AUTOMATIC_DIFFERENTIAL_INCREMENTAL_BACKUP", "ST_INCR"),
     ("AUTOMATIC_CUMULATIVE_INCREMENTAL_BACKUP", "ST_CINC"),
     # ... the short forms of Veritas's example job and of the images schema ...
     ("FULL", "ST_FULL"), ("DIFFERENTIAL_INCREMENTAL", "ST_INCR"),
     ("CUMULATIVE_INCREMENTAL", "ST_CINC"),
     # ... and what no table holds.
     ("", "ST_FULL"), ("ST_CINC", "ST_CINC"), ("APPLICATION_BACKUP", "ST_APPLICATION_BACKUP")],
)
def test_schedule_type(api: str, expected: str) -> None:
    assert schedule_type(api) == expected


@pytest.mark.parametrize(
    ("display", "expected"),
    [("VMware", "VMWARE"), ("Standard", "STANDARD"), ("Hyper-V", "HYPERV"),
     ("MS-Windows", "MS_WINDOWS"), ("MS-SQL-Server", "MS_SQL_SERVER"), ("Oracle", "ORACLE"),
     ("Lotus Notes", "LOTUS_NOTES"), ("", "STANDARD")],
)
def test_client_type_from_the_images_policy_type_display_text(
    display: str, expected: str
) -> None:
    assert client_type(display) == expected


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


def test_unknown_state_is_not_guessed() -> None:
    with pytest.raises(MalformedRecordError, match="state 'TELEPORTING' is not one nbwss maps"):
        parse_job(api_job(9, "TELEPORTING", 100.0))


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


def image_record(backup_id: str, **extra: Any) -> dict[str, Any]:
    """The fixture's image record (catalog.yaml's attributes), as `backup_id`."""
    record: dict[str, Any] = copy.deepcopy(fixture("catalog-images-page.json")["data"][0])
    client, _, epoch = backup_id.rpartition("_")
    record["id"] = backup_id
    record["links"]["self"]["href"] = f"/catalog/images/{backup_id}"
    record["attributes"].update(clientName=client, backupTime=format_time(int(epoch)))
    record["attributes"].update(extra)
    return record


def image(backup_id: str, **extra: Any) -> ApiImage:
    return parse_image(image_record(backup_id, **extra))


def track(images: list[ApiImage]) -> dict[str, TrackedImage]:
    return {i.backup_id: TrackedImage(i.digest, i.backup_time, i.base) for i in images}


def test_image_maps_to_the_guides_fields() -> None:
    """The fixture's VMware image: the id is the backup id, VMware gives VMWARE, and the
    CREATE's createdTime is when the backup completed (backupTime + elapsedTimeSeconds)."""
    expected = example_data("vmware-d-image-create")[0]
    created = parse_image(fixture("catalog-images-page.json")["data"][0])
    decision = decide_images({}, [created], 0, 2e9)
    assert decision.notifications == [expected]
    validate("IMAGE", decision.notifications[0])


def test_image_without_elapsed_time_is_created_when_seen() -> None:
    record = image_record("c_5")
    del record["attributes"]["elapsedTimeSeconds"]
    decision = decide_images({}, [parse_image(record)], 0, 1234.9)
    assert decision.notifications[0]["createdTime"] == 1234


@pytest.mark.parametrize(
    ("change", "reason"),
    [(lambda r: r.pop("id"), "no id"),
     (lambda r: r["attributes"].pop("backupTime"), "backupTime is not a time"),
     (lambda r: r["attributes"].update(clientName=""), "clientName' is empty"),
     (lambda r: r["attributes"].update(clientName=None), "clientName is missing"),
     (lambda r: r.update(attributes=[]), "no attributes object")],
)
def test_image_that_cannot_be_mapped_says_why(change: Any, reason: str) -> None:
    record = image_record("c_5")
    change(record)
    with pytest.raises(MalformedRecordError, match=reason):
        parse_image(record)


def test_images_filter_uses_only_the_documented_operators() -> None:
    assert images_filter(1459811698, 1459829698.5) == (
        "backupTime ge 2016-04-04T23:14:58.000Z and backupTime le 2016-04-06T04:14:58.000Z")


def test_create_then_update_in_the_guides_order() -> None:
    old = image("DummyTestVM_1459811686", numCopies=1)
    tracked = track([old])
    listing = [image("DummyTestVM_1459811686", numCopies=2), image("DummyTestVM_1459811698")]
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


# -- Veritas's example records, and records missing a field ---------------------------------

# What a job notification cannot be made without; every other attribute may be missing.
REQUIRED_JOB_ATTRIBUTES = {"jobId", "state", "clientName", "jobType", "lastUpdateTime"}


def test_veritas_example_jobs_map_with_their_empty_client() -> None:
    """Both records of the example (IMAGEDELETE, clientName "", no policyType) are real
    jobs of every master server: a JOB's clientName may be empty, so they are reported,
    not set aside (an IMAGE's clientName stays required)."""
    reading = read_records("JOB", veritas_jobs(), lambda r: parse_job(r["attributes"]))
    assert reading.rejects == []
    assert [(j.notification["clientName"], j.notification["jobType"]) for j in reading.parsed
            ] == [("", "IMAGEDELETE"), ("", "IMAGEDELETE")]


@pytest.mark.parametrize("index", [0, 1])
def test_veritas_example_job_with_a_client_maps_with_the_documented_defaults(
    index: int,
) -> None:
    attributes = copy.deepcopy(veritas_jobs()[index]["attributes"])
    attributes["clientName"] = "masterserver2.domain.com"
    job = parse_job(attributes)
    assert job.notification == {
        "scheduleType": "ST_FULL", "clientName": "masterserver2.domain.com", "status": 0,
        "startTime": 1529953232, "state": "DONE", "policyName": "",
        "parentJobId": attributes["jobId"], "jobId": attributes["jobId"],
        "policyType": "STANDARD", "jobType": "IMAGEDELETE",
    }
    assert job.last_update == parse_time("2018-06-25T19:00:38.407Z", "t")


@pytest.mark.parametrize("missing", [*sorted(veritas_jobs()[0]["attributes"]), "policyType"])
@pytest.mark.parametrize("how", ["absent", "null"])
def test_a_job_missing_any_field_maps_or_is_set_aside_never_crashes(
    missing: str, how: str
) -> None:
    complete = api_job(146, "DONE", 1e9, parentJobId=145)
    attributes = dict(complete)
    if how == "absent":
        del attributes[missing]
    else:
        attributes[missing] = None
    reading = read_records("JOB", [{"id": "146", "attributes": attributes}],
                           lambda r: parse_job(r["attributes"]))
    if missing in REQUIRED_JOB_ATTRIBUTES:
        assert reading.parsed == []
        assert [r.record_id for r in reading.rejects] == ["146"]
        assert missing in reading.rejects[0].reason
        return
    [job] = reading.parsed
    full = parse_job(complete).notification
    defaults: dict[str, Any] = {"parentJobId": 146, "policyType": "STANDARD",
                                "policyName": "", "scheduleType": "ST_FULL", "status": 0,
                                "startTime": 0}
    changed = {missing: defaults[missing]} if missing in defaults else {}
    assert job.notification == {**full, **changed}


def test_a_record_shown_twice_is_set_aside_once() -> None:
    bad = {"id": "9", "attributes": {"jobId": 9, "state": "TELEPORTING"}}
    reading = read_records("JOB", [bad, bad], lambda r: parse_job(r["attributes"]))
    assert len(reading.rejects) == 1


def test_set_aside_is_new_once_then_again_only_when_the_record_changes() -> None:
    reject = SetAside("JOB", "9", "digest-1", "state 'X' is not one nbwss maps")
    first = decide_set_aside({}, [reject], mapped=set())
    assert first.new == [reject]
    assert decide_set_aside({"9": "digest-1"}, [reject], mapped=set()).new == []
    changed = SetAside("JOB", "9", "digest-2", "still odd")
    assert decide_set_aside({"9": "digest-1"}, [changed], mapped=set()).new == [changed]


def test_set_aside_clears_when_mapped_or_gone_from_a_complete_listing() -> None:
    known = {"9": "d", "10": "d", "11": "d"}
    jobs = decide_set_aside(known, [], mapped={"9"})
    assert jobs.cleared == ["9"]  # a job listing is not complete: 10 and 11 stay
    images = decide_set_aside(known, [], mapped={"9"}, listed={"9", "10"})
    assert images.cleared == ["9", "11"]


def test_a_set_aside_image_is_present_not_deleted() -> None:
    tracked = track([image("c_5")])
    for _ in range(DELETE_CONFIRMATIONS + 1):
        decision = decide_images(tracked, [], 0, 2e9, set_aside={"c_5"})
        assert decision.notifications == []
        assert decision.untrack == []
        tracked = {**tracked, **decision.track}
    assert tracked["c_5"].missed == 0
