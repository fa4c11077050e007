"""`nbwss service install|uninstall`: the documented manual install, as one command.

A plan is made first (every directory, file and command, with its mode and owner), then
checked (a file of ours that someone changed is not overwritten without `force`), then
carried out or, with `dry_run`, only shown. Into `/` it also creates the `nbwss` user,
sets owners and runs `systemctl daemon-reload`; into another root (a package's tree, a
test) it lays out the files only. Configuration and the key are never overwritten:
the key seals the stored tokens, and the properties file is the admin's.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from nbwss.errors import NbwssError

USER = "nbwss"
ETC = Path("/etc/nbwss")
STATE = Path("/var/lib/nbwss")
UNIT = Path("/etc/systemd/system/nbwss.service")
SYSUSERS = Path("/usr/lib/sysusers.d/nbwss.conf")
KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class Directory:
    path: Path  # as on the target system
    mode: int
    owner: str = "root"


@dataclass(frozen=True, slots=True)
class File:
    path: Path
    content: bytes
    mode: int
    group: str = "root"
    ours: bool = True  # False: the admin's (or a secret), kept when it exists


@dataclass(frozen=True, slots=True)
class Command:
    argv: tuple[str, ...]
    why: str


Action = Directory | File | Command
_PAST = {"create": "created", "write": "wrote", "remove": "removed"}


def packaged(name: str) -> str:
    return (resources.files("nbwss") / "data" / name).read_text(encoding="utf-8")


def exec_start() -> str:
    """The command the unit runs: this installation's `nbwss` (a venv's, pipx's)."""
    script = Path(sys.executable).with_name("nbwss")
    return str(script) if script.exists() else f"{sys.executable} -m nbwss"


def unit_text(command: str) -> str:
    return packaged("nbwss.service").replace(
        "ExecStart=/usr/bin/nbwss run", f"ExecStart={command} run"
    )


def properties_text() -> str:
    """The sample file, with the paths the unit uses, so commands and daemon agree."""
    return (packaged("nbwss.properties")
            .replace("\nstore.path=\n", f"\nstore.path={STATE / 'nbwss.db'}\n")
            .replace("\nstore.keyFile=\n", f"\nstore.keyFile={ETC / 'nbwss.key'}\n"))


def install_plan(live: bool, command: str) -> list[Action]:
    plan: list[Action] = [
        File(SYSUSERS, f'u {USER} - "NetBackup WebSocket Service" {STATE} '
             "/usr/sbin/nologin\n".encode(), 0o644),
    ]
    if live and not user_exists():
        plan.append(Command(("useradd", "--system", "--home-dir", str(STATE), "--shell",
                             "/usr/sbin/nologin", USER), f"the {USER} user"))
    plan += [
        Directory(ETC, 0o755),
        File(ETC / "nbwss.properties", properties_text().encode(), 0o644, ours=False),
        File(ETC / "nbwss.key", os.urandom(KEY_BYTES), 0o640, group=USER, ours=False),
        Directory(STATE, 0o700, owner=USER),
        File(UNIT, unit_text(command).encode(), 0o644),
    ]
    if live and systemd_running():
        plan.append(Command(("systemctl", "daemon-reload"), "systemd reads the unit"))
    return plan


def user_exists() -> bool:
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return False
    return True


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


class Installer:
    """Carries out a plan under `root`, saying what it does (or would do) on `say`."""

    def __init__(self, root: Path, *, dry_run: bool, force: bool,
                 say: Callable[[str], None]) -> None:
        self.root = root
        self.live = root == Path("/")
        self.dry_run = dry_run
        self.force = force
        self.say = say

    def target(self, path: Path) -> Path:
        return self.root / path.relative_to("/")

    def conflicts(self, plan: list[Action]) -> list[Path]:
        """Files of ours that exist with other content (someone changed them)."""
        return [action.path for action in plan
                if isinstance(action, File) and action.ours
                and self.target(action.path).exists()
                and self.target(action.path).read_bytes() != action.content]

    def apply(self, plan: list[Action]) -> None:
        changed = self.conflicts(plan)
        if changed and not self.force:
            names = ", ".join(str(self.target(path)) for path in changed)
            raise NbwssError(f"{names} changed since it was installed; not overwriting it "
                             "without --force (use a drop-in, 'systemctl edit nbwss', to "
                             "change the unit)")
        for action in plan:
            if isinstance(action, Directory):
                self._directory(action)
            elif isinstance(action, File):
                self._file(action)
            else:
                self.run(action)

    def verb(self, verb: str) -> str:
        """`verb` in what is said: "would write" on a dry run, else "wrote"."""
        return f"would {verb}" if self.dry_run else _PAST[verb]

    def _directory(self, action: Directory) -> None:
        path = self.target(action.path)
        if path.is_dir():
            self.say(f"kept {path} (exists)")
            return
        self.say(f"{self.verb('create')} {path} (mode {action.mode:04o}, {action.owner})")
        if not self.dry_run:
            path.mkdir(parents=True, mode=action.mode)
            path.chmod(action.mode)
            self._chown(path, action.owner, action.owner)

    def _file(self, action: File) -> None:
        path = self.target(action.path)
        if path.exists() and (not action.ours or path.read_bytes() == action.content):
            self.say(f"kept {path} ({'unchanged' if action.ours else 'exists'})")
            return
        self.say(f"{self.verb('write')} {path} (mode {action.mode:04o}, root:{action.group})")
        if not self.dry_run:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            temporary = path.with_name(f".{path.name}.new")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, action.mode)
            with os.fdopen(fd, "wb") as handle:
                handle.write(action.content)
            os.chmod(temporary, action.mode)
            self._chown(temporary, "root", action.group)
            os.replace(temporary, path)

    def run(self, action: Command) -> None:
        self.say(f"{'would run' if self.dry_run else 'ran'} {' '.join(action.argv)} "
                 f"({action.why})")
        if not self.dry_run:
            result = subprocess.run(action.argv, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise NbwssError(f"{' '.join(action.argv)} failed: "
                                 f"{(result.stderr or result.stdout).strip()}")

    def _chown(self, path: Path, owner: str, group: str) -> None:
        """Owners are set on a live install only; a package's tree gets them from its tool."""
        if self.live:
            shutil.chown(path, owner, group)


def uninstall_plan(live: bool, purge: bool) -> list[Path | Command]:
    plan: list[Path | Command] = []
    if live and systemd_running():
        plan.append(Command(("systemctl", "disable", "--now", "nbwss"), "stop the service"))
    plan += [UNIT, SYSUSERS]
    if live and systemd_running():
        plan.append(Command(("systemctl", "daemon-reload"), "systemd forgets the unit"))
    if purge:
        plan += [ETC, STATE]
        if live and user_exists():
            plan.append(Command(("userdel", USER), f"the {USER} user"))
    return plan


def uninstall(installer: Installer, plan: list[Path | Command]) -> None:
    for step in plan:
        if isinstance(step, Command):
            installer.run(step)
            continue
        path = installer.target(step)
        if not path.exists():
            continue
        installer.say(f"{installer.verb('remove')} {path}")
        if not installer.dry_run:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
