"""`nbwss notify` accepts only what every endpoint can decode (issue 11, items 1 and 7).

Each refusal is one `nbwss: error:` line naming what and where, exit 1, nothing queued:
a notification the endpoint cannot decode would never be acknowledged and would hold
its server group back for the whole retention period.
"""

from __future__ import annotations

import io
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from nbwss import outbox
from nbwss.cli import main
from nbwss.delivery import Batch, build_batch
from nbwss.messages import decode, encode
from nbwss.notifications import DATA_MAX_DEPTH
from nbwss.store import MIGRATIONS, Store
from nbwss.values import OutboxEvent
from tests.test_notify_cli import image, job, queued

UNDECODABLE = [
    ('"extra": NaN', "NaN in --data is not valid JSON"),
    ('"extra": Infinity', "Infinity in --data is not valid JSON"),
    ('"extra": -Infinity', "-Infinity in --data is not valid JSON"),
    ('"extra": {"x": 1e400}', "number 1e400 in --data overflows a double"),
    ('"extra": 9223372036854775808', "integer 9223372036854775808 in --data is outside the"),
    ('"extra": -9223372036854775809', "integer -9223372036854775809 in --data is outside"),
    ('"extra": ' + "7" * 4301, "integer 77777777777777777777... (4301 digits) in --data"),
    ('"extra": "\\udc80"', "--data holds an unpaired UTF-16 surrogate escape at offset"),
    ('"jobId": 2', "duplicate key 'jobId' in --data"),
]


def data_with(extra: str) -> str:
    """A valid JOB's JSON with `extra` spliced in as raw text (json.dumps cannot write it)."""
    return json.dumps(job(1))[:-1] + ", " + extra + "}"


@pytest.mark.parametrize(("extra", "message"), UNDECODABLE)
def test_data_no_endpoint_can_decode_is_refused(
    state_dir: Path, capsys: pytest.CaptureFixture[str], extra: str, message: str
) -> None:
    assert main(["notify", "--object", "JOB", "--data", data_with(extra)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"nbwss: error: {message}")
    assert err.count("\n") == 1
    assert queued(state_dir) == []


def run_stdin_bytes(monkeypatch: pytest.MonkeyPatch, data: bytes) -> int:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    return main(["notify", "-"])


def line(obj: str, data_json: str) -> bytes:
    return b'{"object": "%s", "data": %s}\n' % (obj.encode(), data_json.encode())


@pytest.mark.parametrize(("extra", "message"), UNDECODABLE)
def test_stdin_lines_follow_the_same_rules(
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: str,
    message: str,
) -> None:
    good = line("JOB", json.dumps(job(1)))
    assert run_stdin_bytes(monkeypatch, good + line("JOB", data_with(extra)) + good) == 1
    err = capsys.readouterr().err
    assert err.startswith("nbwss: error: " + message.replace("--data", "line 2"))
    assert err.count("\n") == 1
    assert queued(state_dir) == []


def test_a_line_that_is_not_utf8_is_named_with_its_byte(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    good = line("JOB", json.dumps(job(1)))
    latin1 = json.dumps(job(2, clientName="caf_")).encode().replace(b"caf_", b"caf\xe9")
    bad = b'{"object": "JOB", "data": ' + latin1 + b"}\n"
    offset = bad.index(b"\xe9")
    assert run_stdin_bytes(monkeypatch, good + bad) == 1
    assert capsys.readouterr().err == (
        "nbwss: error: line 2 is not valid UTF-8 (invalid continuation byte): byte 0xE9 at "
        f"offset {offset}\n"
    )
    assert queued(state_dir) == []


def test_utf8_stdin_is_queued_as_is(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = job(1, clientName="café-\U0001f600")
    assert run_stdin_bytes(monkeypatch, json.dumps(data, ensure_ascii=False).join(
        [b'{"object": "JOB", "data": '.decode(), "}\r\n"]).encode()) == 0
    assert queued(state_dir) == [("JOB", data)]


def test_an_argument_that_is_not_utf8_is_a_usage_error(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Python passes a byte that is not UTF-8 as a lone surrogate (PEP 383)."""
    raw = json.dumps(job(1, clientName="caf_")).encode().replace(b"caf_", b"caf\xe9")
    argument = raw.decode("utf-8", "surrogateescape")
    offset = raw.index(b"\xe9")
    assert main(["notify", "--object", "JOB", "--data", argument]) == 2
    assert capsys.readouterr().err == (
        "nbwss: error: argument 5 is not valid UTF-8 (invalid continuation byte): byte 0xE9 "
        f"at offset {offset}\n"
    )
    assert queued(state_dir) == []


def test_a_lone_surrogate_argument_is_a_usage_error(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argument = json.dumps(job(1, clientName="\ud800"), ensure_ascii=False)
    assert main(["notify", "--object", "JOB", "--data", argument]) == 2
    assert capsys.readouterr().err == (
        "nbwss: error: argument 5 holds an unpaired UTF-16 surrogate\n"
    )


def nested(depth: int) -> Any:
    """A JOB whose data object nests `depth` levels in all (the data object is level 1)."""
    value: Any = {}
    for _ in range(depth - 2):
        value = {"n": value}
    return job(1, extra=value)


def test_data_nested_to_the_limit_is_queued_and_decodes_in_a_frame(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = nested(DATA_MAX_DEPTH)
    assert main(["notify", "--object", "JOB", "--data", json.dumps(data)]) == 0
    assert queued(state_dir) == [("JOB", data)]
    frame = json.dumps({"version": "1.0", "id": "X", "type": "NOTIFICATION",
                        "subType": "REQUEST", "timeStamp": 1,
                        "payload": [{"notificationType": "INFO", "object": "JOB",
                                     "data": [data]}]})
    decode(frame)  # the daemon's own decoder (and the reference endpoint's) accepts it


@pytest.mark.parametrize("as_array", [False, True])
def test_data_nested_deeper_is_refused(
    state_dir: Path, capsys: pytest.CaptureFixture[str], as_array: bool
) -> None:
    data = nested(DATA_MAX_DEPTH + 1)
    text = json.dumps([data] if as_array else data)
    assert main(["notify", "--object", "JOB", "--data", text]) == 1
    where = "--data item 1" if as_array else "--data"
    assert capsys.readouterr().err == (
        f"nbwss: error: {where}: JOB data is nested deeper than {DATA_MAX_DEPTH} levels\n"
    )
    assert queued(state_dir) == []


def test_very_deep_nesting_is_one_line(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["notify", "--object", "JOB", "--data", "[" * 200_000]) == 1
    assert capsys.readouterr().err.startswith("nbwss: error: --data is")


def test_a_job_with_an_empty_client_name_is_queued(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Real IMAGEDELETE jobs have no client (issue 16 follow-up); images keep theirs."""
    data = job(7, clientName="", jobType="IMAGEDELETE")
    assert main(["notify", "--object", "JOB", "--data", json.dumps(data)]) == 0
    assert main(["notify", "--object", "IMAGE", "--data",
                 json.dumps(image("b", clientName=""))]) == 1
    assert "IMAGE field 'clientName' is empty" in capsys.readouterr().err
    assert queued(state_dir) == [("JOB", data)]


def test_a_row_an_earlier_release_queued_with_nan_is_sent_with_null() -> None:
    """Before intake was strict, `notify` stored NaN/Infinity literally; such a row must
    neither crash the encoder (which refuses NaN now) nor block its group."""
    legacy = json.dumps(job(1))[:-1] + ', "ratio": NaN, "big": Infinity}'
    events = [OutboxEvent(1, "JOB", legacy), OutboxEvent(2, "JOB", json.dumps(job(2)))]
    batch = build_batch(events, message_id="M1", now=1.0, max_batch=500, max_bytes=1 << 20)
    frame = encode(batch.message)
    payload = decode(frame).payload
    assert isinstance(payload, list)
    first = payload[0]["data"][0]
    assert (first["ratio"], first["big"], first["jobId"]) == (None, None, 1)
    assert batch.count == 2


def test_only_rows_queued_before_the_upgrade_are_searched_for_nan(tmp_path: Path) -> None:
    """The search for NaN costs as much as building the batch: a database upgraded to
    the schema that records its head (`outbox_legacy`) is searched up to that row only."""
    path = tmp_path / "nbwss.db"
    old = sqlite3.connect(path)
    for script in MIGRATIONS[:2]:  # a database of the release before
        old.executescript(script)
    old.execute("PRAGMA user_version = 2")
    legacy = json.dumps(job(1), separators=(",", ":"))[:-1] + ',"ratio":NaN}'
    old.execute("INSERT INTO outbox (object, data, queued_at) VALUES ('JOB', ?, 0)", (legacy,))
    old.commit()
    old.close()
    store = Store(path, tmp_path / "nbwss.key")
    try:
        with store.transaction() as conn:
            outbox.enqueue(conn, [("JOB", job(2))], 1.0)
            # Not something strict intake can queue: it shows that no search is made.
            conn.execute("INSERT INTO outbox (object, data, queued_at) VALUES ('JOB', ?, 0)",
                         (legacy.replace('"jobId":1', '"jobId":3'),))  # fmt: skip
        horizon = outbox.load_position(store, "G1", 1.0).legacy_up_to_seq
        events = outbox.read_events(store, 0, 10)
    finally:
        store.close()
    assert horizon == 1
    first = build_batch(events, message_id="M", now=1.0, max_batch=2, max_bytes=1 << 20,
                        legacy_up_to_seq=horizon)  # fmt: skip
    assert [d["ratio"] if "ratio" in d else d["jobId"] for d in data_of(first)] == [None, 2]
    later = build_batch(events[2:], message_id="N", now=1.0, max_batch=9, max_bytes=1 << 20,
                        legacy_up_to_seq=horizon)  # fmt: skip
    assert '"ratio":NaN' in later.text


def data_of(batch: Batch) -> list[dict[str, Any]]:
    payload = json.loads(batch.payload_text)
    return [data for element in payload for data in element["data"]]
