"""`nbwss notify` as an admin or a notify script runs it, against a real database."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from nbwss import outbox
from nbwss.cli import main
from nbwss.notifications import encode_data
from nbwss.store import Store
from nbwss.wake import WakeListener, Waker
from tests.conftest import SPEC_EXAMPLES, timeout

EXAMPLES = SPEC_EXAMPLES


@pytest.fixture(autouse=True)
def _forget_logging() -> Iterator[None]:
    """`main` points structlog at the stderr pytest captures; undo that after each test."""
    yield
    structlog.reset_defaults()


def job(job_id: int, **changes: Any) -> dict[str, Any]:
    return {
        "scheduleType": "ST_FULL", "clientName": "vm1", "status": 0, "startTime": 1459829674,
        "state": "ACTIVE", "policyName": "", "parentJobId": job_id, "jobId": job_id,
        "policyType": "VMWARE", "jobType": "BACKUP",
    } | changes  # fmt: skip


def image(backup_id: str, **changes: Any) -> dict[str, Any]:
    return {
        "clientType": "VMWARE", "clientName": "vm1", "backupTime": 1459811698,
        "createdTime": 1459829720, "operationId": "CREATE", "backupId": backup_id,
    } | changes  # fmt: skip


def queued(state_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    store = Store(state_dir / "nbwss.db", state_dir / "nbwss.key")
    try:
        return [(e.object, json.loads(e.data)) for e in outbox.read_events(store, 0, 1 << 20)]
    finally:
        store.close()


def run_stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> int:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    return main(["notify", "-"])


def lines(*records: tuple[str, dict[str, Any]]) -> str:
    return "".join(json.dumps({"object": o, "data": d}) + "\n" for o, d in records)


def test_one_object_is_queued_with_its_extra_fields(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = job(144, futureField={"x": [1]})
    assert main(["notify", "--object", "JOB", "--data", json.dumps(data)]) == 0
    out, err = capsys.readouterr()
    assert out == "queued 1 notification (seq 1)\n"
    assert "no endpoint is configured" in err
    assert queued(state_dir) == [("JOB", data)]


def test_an_array_is_queued_in_order(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items = [image("a", operationId="CREATE"), image("a", operationId="UPDATE")]
    assert main(["notify", "--object", "IMAGE", "--data", json.dumps(items)]) == 0
    assert capsys.readouterr().out == "queued 2 notifications (seq 1-2)\n"
    assert queued(state_dir) == [("IMAGE", items[0]), ("IMAGE", items[1])]


def test_the_spec_examples_are_accepted(state_dir: Path) -> None:
    records = []
    for path in sorted(EXAMPLES.glob("*.json")):
        message = json.loads(path.read_text())
        if message.get("type") == "NOTIFICATION" and message.get("subType") == "REQUEST":
            for element in message["payload"]:
                records += [(element["object"], data) for data in element["data"]]
    assert len(records) > 10
    with pytest.MonkeyPatch.context() as patch:
        assert run_stdin(patch, lines(*records)) == 0
    assert queued(state_dir) == records


def test_what_is_stored_is_the_wire_text_whatever_the_input_spelling(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Delivery splices the stored text into frames as is (`delivery.build_batch`): it
    must be `encode_data`'s compact UTF-8 form, not the spaces and escapes of the input."""
    data = job(7, clientName="Zürich \u2028 \"q\" €", extra={"b": [1.5, -0.0, 10**18]})
    line = json.dumps({"object": "JOB", "data": data}, ensure_ascii=True)  # ", " and ": "
    assert run_stdin(monkeypatch, line + "\n") == 0
    assert main(["notify", "--object", "JOB", "--data", json.dumps(data, indent=2)]) == 0
    store = Store(state_dir / "nbwss.db", state_dir / "nbwss.key")
    try:
        texts = [event.data for event in outbox.read_events(store, 0, 10)]
    finally:
        store.close()
    assert texts == [encode_data(data)] * 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--object", "JOB", "--data", json.dumps({**job(1), "jobId": "1"})],
         "--data: JOB field 'jobId' is \"1\", expected an integer"),
        (["--object", "JOB", "--data", json.dumps({k: v for k, v in job(1).items()
                                                   if k != "state"})],
         "--data: JOB field 'state' is missing"),
        (["--object", "JOB", "--data", json.dumps(job(1, state="RUNNING"))],
         "--data: JOB field 'state' is \"RUNNING\", expected one of QUEUED, ACTIVE, DONE"),
        (["--object", "JOB", "--data", json.dumps(job(1, status=True))],
         "--data: JOB field 'status' is true, expected an integer"),
        (["--object", "IMAGE", "--data", json.dumps([image("a"), image("b", operationId="X")])],
         "--data item 2: IMAGE field 'operationId' is \"X\""),
        (["--object", "IMAGE", "--data", json.dumps(image(""))],
         "--data: IMAGE field 'backupId' is empty"),
        (["--object", "JOB", "--data", "{not json"], "--data is not JSON: Expecting property name"),
        (["--object", "JOB", "--data", "[]"], "--data: the array is empty"),
        (["--object", "JOB", "--data", "[1]"], "--data item 1: JOB data is 1, expected an object"),
    ],
)  # fmt: skip
def test_refused_input_names_the_field_and_queues_nothing(
    state_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["notify", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"nbwss: error: {message}")
    assert err.count("\n") == 1
    assert queued(state_dir) == []


def test_json_lines_from_stdin_skip_blank_lines(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        lines(("JOB", job(1))) + "\n" + lines(("IMAGE", image("b")), ("JOB", job(1, state="DONE")))
    )
    assert run_stdin(monkeypatch, text) == 0
    assert capsys.readouterr().out == "queued 3 notifications (seq 1-3)\n"
    assert [o for o, _ in queued(state_dir)] == ["JOB", "IMAGE", "JOB"]


def test_a_bad_line_anywhere_refuses_the_whole_stream(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # More than one intake chunk of good lines first: validation comes before any commit.
    good = lines(*[("JOB", job(n)) for n in range(6000)])
    bad = json.dumps({"object": "JOB", "data": {**job(1), "parentJobId": None}}) + "\n"
    assert run_stdin(monkeypatch, good + bad + good) == 1
    assert capsys.readouterr().err == (
        "nbwss: error: line 6001: JOB field 'parentJobId' is null, expected an integer\n"
    )
    assert queued(state_dir) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "stdin: no notifications"),
        ('{"object": "JOB"}\n', 'line 1: expected {"object": ..., "data": {...}}'),
        ("[1, 2]\n", 'line 1: expected {"object": ..., "data": {...}}'),
        ('{"object": "VOLUME", "data": {}}\n', 'line 1: object is "VOLUME", expected JOB or IMAGE'),
        ("{oops\n", "line 1 is not JSON: Expecting property name"),
    ],
)
def test_bad_stdin_lines_are_named(
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    text: str,
    message: str,
) -> None:
    assert run_stdin(monkeypatch, text) == 1
    assert capsys.readouterr().err.startswith(f"nbwss: error: {message}")


@pytest.mark.parametrize(
    "argv",
    [[], ["--object", "JOB"], ["--data", "{}"], ["-", "--object", "JOB"], ["x"]],
)
def test_usage_errors_exit_2(
    state_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["notify", *argv])
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("nbwss: error: ")


def test_a_notification_too_large_for_any_frame_is_refused(
    state_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "nbwss.properties"
    config.write_text("message.maxBytes=2048\n")
    data = json.dumps(job(1, note="x" * 3000))
    assert main(["-c", str(config), "notify", "--object", "JOB", "--data", data]) == 1
    assert "does not fit in message.maxBytes (2048)" in capsys.readouterr().err
    assert queued(state_dir) == []


@pytest.fixture
def short_state() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="nbw") as name:
        yield Path(name)


async def test_the_command_wakes_a_listening_daemon(short_state: Path) -> None:
    config = short_state / "nbwss.properties"
    config.write_text(f"store.path={short_state / 'nbwss.db'}\n")
    waker = Waker()
    woken = asyncio.Event()
    waker.register(woken)
    listener = WakeListener(short_state / "nbwss.wake", waker)
    task = asyncio.create_task(listener.run())
    try:
        async with asyncio.timeout(timeout(5)):
            await listener.ready.wait()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nbwss", "-c", str(config), "notify",
            "--object", "JOB", "--data", json.dumps(job(7)),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "NBWSS_CONFIG": ""},
        )  # fmt: skip
        async with asyncio.timeout(timeout(30)):
            out, _ = await process.communicate()
            await woken.wait()
        assert process.returncode == 0
        assert out == b"queued 1 notification (seq 1)\n"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
