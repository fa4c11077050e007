"""The `nbwss` command's own contract: usage errors, exit codes, lazy command loading."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nbwss import cli


def test_a_usage_error_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["bogus"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("nbwss: error: argument COMMAND: invalid choice: 'bogus'")


def test_a_missing_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([])
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("nbwss: error: ")


@pytest.mark.parametrize(
    ("argv", "chosen"),
    [
        (["notify", "--object", "JOB"], "notify"),
        (["-c", "notify", "run"], "run"),  # the config file may be named like a command
        (["--config", "x.properties", "endpoint", "list"], "endpoint"),
        (["--version"], None),
    ],
)
def test_the_chosen_command_skips_global_options(argv: list[str], chosen: str | None) -> None:
    assert cli._chosen_command(argv) == chosen


@pytest.mark.parametrize("argv", [["--help"], ["--help", "notify"], ["-c", "x", "-h", "run"]])
def test_help_lists_every_command(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(argv)
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert f"    {name} " in out


def test_a_named_command_gets_only_its_own_parser(capsys: pytest.CaptureFixture[str]) -> None:
    """Each parser costs `nbwss notify` (once per event) argparse's set-up."""
    with pytest.raises(SystemExit):
        cli.main(["notify", "--help"])
    assert capsys.readouterr().out.startswith("usage: nbwss notify ")
    assert _command_names(["-c", "x", "notify", "-"]) == ["notify"]
    assert _command_names(["notfy"]) == list(cli.COMMANDS)  # the error lists them all


def _command_names(argv: list[str]) -> list[str]:
    (commands,) = (a for a in cli.build_parser(argv)._actions if a.dest == "command")
    return list(commands.choices or ())


def test_notify_starts_without_loading_aiohttp_or_the_demo() -> None:
    """NetBackup's scripts start `nbwss notify` once per event: it must stay light."""
    probe = (
        "import sys; from nbwss import cli; cli.build_parser(['notify', '--help']); "
        "print(sorted(m for m in ('aiohttp', 'nbwss.demo', 'nbwss.endpoints') "
        "if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"
