"""Files written from the command's own parser: the manual page and shell completions.

    python -m nbwss.generate man  > man/nbwss.1          (plain roff, man(7) macros)
    python -m nbwss.generate bash > completion/nbwss.bash (shtab, a development tool)
    python -m nbwss.generate zsh  > completion/_nbwss

`make generated` runs all three; a test regenerates them and compares, so they cannot
drift from the options. Nothing here runs in the daemon or in an admin command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from nbwss import __version__
from nbwss.cli import build_parser
from nbwss.commands import EXAMPLES

FILES = (
    ("/etc/nbwss/nbwss.properties", "the settings (every key: docs/configuration.md)"),
    ("/etc/nbwss/nbwss.key", "the key that encrypts the endpoints' tokens"),
    ("/var/lib/nbwss/nbwss.db", "the database: endpoints, pinned certificates, outbox"),
    ("/var/lib/nbwss/nbwss.sock", "the status server: /status, /metrics, /ready, /healthz"),
    ("/var/lib/nbwss/nbwss.wake", "the wake socket of nbwss notify and nbwss endpoint"),
    ("/etc/systemd/system/nbwss.service", "the systemd unit (nbwss service install)"),
)
ENVIRONMENT = (
    ("NBWSS_CONFIG", "the properties file when -c is not given"),
    ("STATE_DIRECTORY", "where the database goes when store.path is empty (systemd sets it)"),
    ("CREDENTIALS_DIRECTORY", "holds nbwss.key when systemd passes it (LoadCredential=)"),
    ("JOURNAL_STREAM", "logs carry their syslog priority when it names stderr (systemd)"),
)


def roff(text: str) -> str:
    """Escape text for roff: backslashes, hyphens of options, a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> Iterator[str]:
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.option_strings:
            names = ", ".join(action.option_strings)
            value = "" if action.nargs == 0 else f" {action.metavar or action.dest.upper()}"
            head = f"\\fB{roff(names)}\\fR{roff(value)}"
        else:
            head = f"\\fI{roff(str(action.metavar or action.dest))}\\fR"
        yield f".TP\n{head}\n{roff(action.help or '')}"


def _examples(parser: argparse.ArgumentParser) -> Iterator[str]:
    epilog = parser.epilog or ""
    if epilog.startswith(EXAMPLES):
        yield ".PP\nExamples:\n.nf"
        yield from (f".RS\n{roff(line.strip())}\n.RE" for line in epilog.splitlines()[1:])
        yield ".fi"


def _command(name: str, parser: argparse.ArgumentParser) -> Iterator[str]:
    children = _subparsers(parser)
    if children:
        for child, sub in children.items():
            yield from _command(f"{name} {child}", sub)
        return
    usage = " ".join(parser.format_usage().split()).removeprefix("usage: ")
    yield f".SS {roff(name)}\n.B {roff(usage)}\n.PP\n{roff(parser.description or '')}"
    yield from _options(parser)
    yield from _examples(parser)


def render(parser: argparse.ArgumentParser) -> str:
    lines = [
        f'.TH NBWSS 1 "" "nbwss {__version__}" "User Commands"',
        ".SH NAME", "nbwss \\- " + roff(parser.description or "").split(":")[0],
        ".SH SYNOPSIS", ".B nbwss", "[\\fB\\-c\\fR \\fIPATH\\fR] \\fICOMMAND\\fR ...",
        ".SH DESCRIPTION", roff(parser.description or ""), ".PP",
        "Exit status: 0 on success, 1 on an operational error, 2 on a usage error. Every "
        "error is one line on standard error, beginning \\(lqnbwss: error: \\(rq.",
        ".SH OPTIONS", *_options(parser),
        ".SH COMMANDS",
    ]
    for name, sub in _subparsers(parser).items():
        lines += _command(f"nbwss {name}", sub)
    lines.append(".SH FILES")
    lines += [f".TP\n.I {path}\n{roff(text)}" for path, text in FILES]
    lines.append(".SH ENVIRONMENT")
    lines += [f".TP\n.B {name}\n{roff(text)}" for name, text in ENVIRONMENT]
    lines += [".SH SEE ALSO", "systemctl(1), journalctl(1); the docs/ directory of nbwss."]
    return "\n".join(lines) + "\n"


def completion(shell: str) -> str:
    """The bash or zsh completion script (shtab is only needed to write it)."""
    import shtab  # a development tool, absent from a base install

    script: str = shtab.complete(build_parser(), shell=shell)
    return script.rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    if argv == ["man"]:
        sys.stdout.write(render(build_parser()))
    elif len(argv) == 1 and argv[0] in ("bash", "zsh"):
        sys.stdout.write(completion(argv[0]))
    else:
        sys.stderr.write("usage: python -m nbwss.generate man|bash|zsh\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
