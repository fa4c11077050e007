"""`nbwss service install|uninstall`: set up or remove the systemd service (`nbwss.install`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from nbwss import install
from nbwss.commands import Context, examples
from nbwss.errors import NbwssError


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "service",
        help="install or uninstall the systemd service (as root)",
        description="Install: the nbwss user, /etc/nbwss with the properties file and a "
        "new key, the state directory /var/lib/nbwss, the hardened unit, and systemctl "
        "daemon-reload. Uninstall: the unit (data kept unless --purge).",
        epilog=examples("sudo nbwss service install", "sudo nbwss service uninstall"),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    actions.required = True
    setup = actions.add_parser(
        "install", help="install the service (as root)",
        description="Create the nbwss user, /etc/nbwss with the properties file and a new "
        "key, /var/lib/nbwss and the systemd unit, then systemctl daemon-reload. Prints "
        "each step; keeps what exists (the key and the properties file always).",
        epilog=examples("sudo nbwss service install", "nbwss service install --dry-run",
                        "nbwss service install --root ./pkgroot    # for a package"),
    )
    setup.add_argument("--force", action="store_true",
                       help="overwrite a unit that was changed since it was installed")
    remove = actions.add_parser(
        "uninstall", help="remove the service; keep its data",
        description="Stop and disable the service and remove the unit; /etc/nbwss (with "
        "the key) and /var/lib/nbwss (the database) stay unless --purge.",
        epilog=examples("sudo nbwss service uninstall", "sudo nbwss service uninstall --purge"),
    )
    remove.add_argument("--purge", action="store_true",
                        help="also remove /etc/nbwss (key included) and /var/lib/nbwss")
    for action in (setup, remove):
        action.add_argument("--dry-run", action="store_true",
                            help="show what would be done, change nothing")
        action.add_argument("--root", type=Path, default=Path("/"), metavar="DIR",
                            help="install into this tree (packagers, tests): files only, no "
                            "user, owners or systemctl (default /)")
    setup.set_defaults(handler=handle_install)
    remove.set_defaults(handler=handle_uninstall)


def _installer(args: argparse.Namespace, force: bool = False) -> install.Installer:
    root = args.root.resolve()
    if root == Path("/") and not args.dry_run and os.geteuid() != 0:
        raise NbwssError("the service can only be installed or uninstalled as root "
                         "(or give --root DIR, or --dry-run)")
    return install.Installer(root, dry_run=args.dry_run, force=force, say=_say)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")


def handle_install(args: argparse.Namespace, context: Context) -> int:
    installer = _installer(args, force=args.force)
    command = install.exec_start()
    installer.apply(install.install_plan(installer.live, command))
    if command.startswith(("/home/", "/root/")):
        sys.stdout.write(f"warning: the unit runs {command}, which ProtectHome=yes hides from "
                         "the service: install nbwss outside home directories (see "
                         "docs/install.md)\n")
    if not installer.live:
        sys.stdout.write("owners (root:nbwss for the key, nbwss for the state directory) are "
                         "left to the packaging tool under --root\n")
    elif not args.dry_run:
        sys.stdout.write("Next: sudo systemctl enable --now nbwss, then add endpoints as the "
                         "service's user: sudo -u nbwss nbwss endpoint add --file F\n")
    return 0


def handle_uninstall(args: argparse.Namespace, context: Context) -> int:
    installer = _installer(args)
    install.uninstall(installer, install.uninstall_plan(installer.live, args.purge))
    if not args.purge:
        sys.stdout.write(f"kept {installer.target(install.ETC)} and "
                         f"{installer.target(install.STATE)} (--purge removes them)\n")
    return 0
