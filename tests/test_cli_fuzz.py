"""The CLI never shows a traceback (issue 11, item 7).

Whatever the argv (bytes that are not UTF-8 arrive as PEP 383 surrogate escapes) and
whatever stdin holds, `nbwss` exits 0, 1 or 2 with at most one `nbwss: error:` line. The
fuzz runs the CLI in-process against a temporary store; commands that would reach the
network or the system (run, demo, doctor, service, --url) are left out.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbwss.cli import main
from tests.test_notify_cli import job


def run_cli(argv: Sequence[str], stdin: bytes = b"") -> tuple[int, str, str]:
    """`nbwss ARGV < stdin` in this process: (exit code, stdout, stderr).

    The streams are set up as Python sets up a process's (stdin's undecodable bytes as
    surrogate escapes, stdout strict UTF-8, stderr backslash-escaped), so an encoding
    error a real run would meet is met here too. An exception escaping `main` is a
    traceback: it comes back as exit -1 with the traceback as stderr.
    """
    out_bytes, err_bytes = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_bytes, encoding="utf-8", errors="strict")
    err = io.TextIOWrapper(err_bytes, encoding="utf-8", errors="backslashreplace")
    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8", errors="surrogateescape")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(argv))
            except SystemExit as exc:  # argparse: --help (0), usage errors (2)
                code = exc.code if isinstance(exc.code, int) else 1
            except Exception:  # what the fuzz is looking for
                err.write(traceback.format_exc())
                code = -1
            out.flush()
            err.flush()
    finally:
        sys.stdin = saved
    return code, out_bytes.getvalue().decode(), err_bytes.getvalue().decode()


def assert_clean(code: int, err: str) -> None:
    assert code in (0, 1, 2), err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("nbwss: error:")]
    assert len(errors) <= 1, err
    if code != 0 and "--help" not in err:
        assert errors, err


@pytest.mark.parametrize(
    ("argv", "stdin", "code", "message"),
    [
        (["endpoint", "validate", "--file", "x.json", "--timeout", "inf"], b"", 2,
         "argument --timeout: 'inf' is not a number of seconds above 0"),
        (["endpoint", "validate", "--file", "x.json", "--timeout", "1e309"], b"", 2,
         "argument --timeout: '1e309' is not a number of seconds"),
        (["endpoint", "validate", "--file", "x.json", "--timeout", "nan"], b"", 2,
         "argument --timeout: 'nan' is not a number of seconds"),
        (["endpoint", "add", "--file", "x.json", "--timeout", "-5"], b"", 2,
         "argument --timeout: '-5' is not a number of seconds"),
        (["notify", "--object", "JOB", "--data", "1" * 4301], b"", 1,
         "integer 11111111111111111111... (4301 digits) in --data"),
        (["notify", "--object", "JOB", "--data", '"\\udfff"'], b"", 1,
         "--data holds an unpaired UTF-16 surrogate escape"),
        (["notify", "-"], b'{"object": "JOB", "data": {"clientName": "\xff"}}\n', 1,
         "line 1 is not valid UTF-8 (invalid start byte): byte 0xFF at offset 42"),
        (["endpoint", "show", "h\udce9"], b"", 2,
         "argument 3 is not valid UTF-8 (unexpected end of data): byte 0xE9 at offset 1"),
        (["endpoint", "show", "h\x00"], b"", 2, "argument 3 holds a NUL character"),
    ],
)
def test_named_inputs_are_one_line(
    state_dir: Path, argv: list[str], stdin: bytes, code: int, message: str
) -> None:
    got, _, err = run_cli(argv, stdin)
    assert (got, err) == (code, err)
    assert err.startswith(f"nbwss: error: {message}"), err
    assert_clean(got, err)


@pytest.mark.parametrize("key", ["store.path", "store.keyFile", "status.listen",
                                 "restApi.caFile"])
def test_a_nul_in_a_path_property_names_the_key_and_line(
    state_dir: Path, tmp_path: Path, key: str
) -> None:
    config = tmp_path / "nbwss.properties"
    config.write_text(f"# first\n{key}=/tmp/a\\u0000b\n")
    code, _, err = run_cli(["-c", str(config), "endpoint", "list"])
    assert code == 1
    assert err == (
        f"nbwss: error: {config}:2: {key}='/tmp/a\\x00b' is not valid, expected "
        f"{'text' if key == 'status.listen' else 'a path'} without a NUL character\n"
    )


# -- the fuzz ------------------------------------------------------------------------------

COMMANDS = [
    ["notify"], ["notify", "-"], ["notify", "--object", "JOB", "--data"],
    ["notify", "--object", "IMAGE", "--data"], ["endpoint", "list"], ["endpoint", "show"],
    ["endpoint", "enable"], ["endpoint", "disable"], ["endpoint", "delete"],
    ["endpoint", "test"], ["endpoint", "validate", "--file"], ["endpoint", "add", "--file"],
    ["status"], ["endpoint"], [],
]
OPTIONS = ["--json", "--token", "--yes", "--keep-position", "--timeout", "--object",
           "--data", "--help", "-c", "--fingerprint", "--connect", "-", "JOB", "IMAGE"]
LATIN1_JOB = json.dumps(job(1)).replace("vm1", "vm\udce9")  # a Latin-1 byte, as argv has it


@st.composite
def words(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["option", "text", "bytes", "json", "number", "latin"]))
    if kind == "latin":  # a Latin-1 client name, the likely case on a master server
        return draw(st.sampled_from([LATIN1_JOB, f"[{LATIN1_JOB}]", "caf\udce9"]))
    if kind == "option":
        return draw(st.sampled_from(OPTIONS))
    if kind == "bytes":  # what Python makes of argv bytes that are not UTF-8
        return draw(st.binary(max_size=12)).decode("utf-8", "surrogateescape")
    if kind == "json":
        return draw(st.sampled_from([
            json.dumps(job(1)), json.dumps([job(1), job(2)]), "NaN", "[" * 100, "{}",
            json.dumps(job(1))[:-1] + ', "x": 1e400}', '{"a": 1, "a": 2}', "-1" + "0" * 5000,
        ]))
    if kind == "number":
        return draw(st.sampled_from(["0", "-1", "inf", "-inf", "nan", "1e309", "1e-320",
                                     "99999999999999999999", "0x10", ""]))
    return draw(st.text(max_size=12))


def _is_file(word: str) -> bool:
    try:
        return Path(word).is_file()
    except (OSError, ValueError):  # too long a name, a NUL: no file
        return False


def _reaches_out(argv: list[str]) -> bool:
    """Left out: a URL to fetch, or a details file that could name a server to dial."""
    return "--url" in argv or any(_is_file(word) for word in argv)


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(command=st.sampled_from(COMMANDS), tail=st.lists(words(), max_size=3))
def test_any_argv_exits_0_1_or_2_without_a_traceback(
    state_dir: Path, command: list[str], tail: list[str]
) -> None:
    argv = command + tail
    if _reaches_out(argv):
        return
    code, _, err = run_cli(argv)
    assert_clean(code, err)


@st.composite
def stdin_lines(draw: st.DrawFn) -> bytes:
    """JSON lines, good and bad, some with bytes that are not UTF-8."""
    pieces = [
        b'{"object": "JOB", "data": ' + json.dumps(job(1)).encode() + b"}",
        b'{"object": "JOB", "data": ' + LATIN1_JOB.encode("utf-8", "surrogateescape") + b"}",
        b'{"object": "JOB", "data": {"x": NaN}}', b'{"object": "IMAGE", "data": []}',
        b"[" * 5000, b"\xe9", b"", b'{"object": "JOB", "data": ' + b"9" * 5000 + b"}",
    ]
    lines = draw(st.lists(st.sampled_from(pieces) | st.binary(max_size=40), max_size=5))
    return b"\n".join(lines) + draw(st.sampled_from([b"", b"\n", b"\r\n"]))


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(stdin=stdin_lines())
def test_any_stdin_exits_0_or_1_without_a_traceback(state_dir: Path, stdin: bytes) -> None:
    code, _, err = run_cli(["notify", "-"], stdin)
    assert code in (0, 1)
    assert_clean(code, err)
