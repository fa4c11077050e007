"""The man page and the shell completions are current, and every command's `--help`
has a description and examples (what the man page is written from)."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from nbwss.cli import build_parser
from nbwss.generate import completion, render

ROOT = Path(__file__).resolve().parent.parent


def every_parser(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict(action.choices).values():
                found += every_parser(sub)
    return found


@pytest.mark.parametrize(("path", "make"), [
    ("man/nbwss.1", lambda: render(build_parser())),
    ("completion/nbwss.bash", lambda: completion("bash")),
    ("completion/_nbwss", lambda: completion("zsh")),
])
def test_generated_file_is_current(path: str, make: object) -> None:
    assert callable(make)
    assert (ROOT / path).read_text(encoding="utf-8") == make(), (
        f"{path} is stale: run 'make generated'")


def test_every_command_has_a_description_and_examples() -> None:
    parsers = every_parser(build_parser())
    assert len(parsers) >= 17  # nbwss, 7 commands, 7 endpoint actions, 2 service actions
    for parser in parsers:
        assert parser.description, parser.prog
        assert (parser.epilog or "").startswith("examples:\n  "), parser.prog
        assert "nbwss" in (parser.epilog or ""), parser.prog


def test_the_man_page_has_every_command_its_options_and_examples() -> None:
    page = render(build_parser())
    for parser in every_parser(build_parser()):
        if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
            continue  # a group: its commands have their own sections
        assert f".SS {parser.prog}" in page
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings:
                assert option.replace("-", "\\-") in page, (parser.prog, option)
        for example in (parser.epilog or "").splitlines()[1:]:
            assert example.strip().replace("-", "\\-") in page, parser.prog


def test_bash_completes_commands_actions_and_options() -> None:
    script = ROOT / "completion" / "nbwss.bash"

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{word}'" for word in words)
        result = subprocess.run(
            ["bash", "-c", f'source "{script}"; COMP_WORDS=({line}); '
             f'COMP_CWORD={len(words) - 1}; _shtab_nbwss; printf "%s\\n" "${{COMPREPLY[@]}}"'],
            capture_output=True, text=True, check=True, timeout=30,
        )
        return result.stdout.split()

    assert "doctor" in complete("nbwss", "d")
    assert complete("nbwss", "endpoint", "dis") == ["disable"]
    assert "--keep-position" in complete("nbwss", "endpoint", "delete", "--k")
