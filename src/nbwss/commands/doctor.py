"""`nbwss doctor`: check the set-up and print what to fix (see `nbwss.doctor`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from nbwss import doctor
from nbwss.commands import Context, examples
from nbwss.doctor import Verdict


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "doctor",
        help="check key, store, unit, files, REST API, endpoint certificates and clock",
        description="Check what an admin can get wrong: the admin commands and the daemon "
        "use the same properties file, database and key (compared with the systemd unit); "
        "every stored token opens with that key; files' owners and modes; the local REST "
        "API answers and accepts the credentials; each endpoint still presents its pinned "
        "certificate, which is not expiring; the clock. Prints one line per check, with "
        "what to fix; exits 1 when anything must be fixed.",
        epilog=examples("sudo -u nbwss nbwss doctor",
                        "nbwss doctor --unit /usr/lib/systemd/system/nbwss.service"),
    )
    parser.add_argument("--unit", type=Path, default=doctor.UNIT, metavar="PATH",
                        help=f"the installed systemd unit (default {doctor.UNIT})")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace, context: Context) -> int:
    findings = doctor.run(context.store, context.settings, context.config, args.unit)
    for finding in findings:
        sys.stdout.write(f"{finding.verdict:<8} {finding.text}\n")
        if finding.fix is not None:
            sys.stdout.write(f"{'':<8} fix: {finding.fix}\n")
    failures = sum(1 for finding in findings if finding.verdict is Verdict.FAIL)
    if failures:
        sys.stdout.write(f"{failures} problem(s) to fix\n")
        return 1
    sys.stdout.write("nothing to fix\n")
    return 0
