"""Chaos soak: the real daemon under random faults, then a proof that nothing was lost.

    .venv/bin/python bench/soak.py --seconds 600

Loopback only. `nbwss run` runs as a subprocess on a temporary properties file with
short periods; 3 server groups of 2 endpoints each are served here (a `websockets`
server per endpoint, so the two sides share no WebSocket code), each behind a
`FaultProxy`, with trustme certificates, pinned in the store through `Store.add_endpoint`.
Notifications go in through `nbwss notify -`, tagged by `jobId`, a sequence number.
Every few seconds one fault, in shuffled rounds of every kind: kill -9 of the daemon
and restart, an endpoint killed and restarted, a connection cut (FIN or RST), stalled
or slowed, new connections refused, acks withheld, a garbage frame, a slow stand-in
REST API under the COMMANDs that the endpoints send every second.
After `--seconds`, faults and intake stop, everything heals, and the run waits (at
most `--drain`) for every group to have everything. Then, per group: lost (never
arrived), out of order (a first arrival after a later tag's), duplicates, delivery
delay. Exit 1 when anything was lost or out of order, the daemon died by itself, or
an `nbwss notify` failed. `docs/soak.md` explains the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import random
import shutil
import signal
import ssl
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `tests` is a package at the repository root
    sys.path.insert(0, str(REPO))

import trustme  # noqa: E402
from tests.faultproxy import FaultProxy  # noqa: E402
from websockets.asyncio.server import Server, ServerConnection, serve  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from nbwss import messages  # noqa: E402
from nbwss.endpoints import EndpointDetails  # noqa: E402
from nbwss.errors import DecodeError  # noqa: E402
from nbwss.messages import Message, MessageType, SubType  # noqa: E402
from nbwss.standin import restapi  # noqa: E402
from nbwss.store import Store  # noqa: E402
from nbwss.trust import fingerprint  # noqa: E402

GROUPS = ("SOAK1", "SOAK2", "SOAK3")
COMMAND_URI = "/netbackup/admin/jobs"
GARBAGE: tuple[str | bytes, ...] = (
    "not json {",
    b"\xff\xfe\x00binary",
    '{"version":"1.0"}',
    "[]",
    '{"version":"1.0","id":"X","type":"NOTIFICATION","subType":"RESPONSE",'
    '"timeStamp":1,"payload":{}}',
)

# -- the ledger: pure accounting, no I/O ------------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupFigures:
    group: str
    received: int
    lost: int
    out_of_order: int
    duplicates: int
    unexpected: int
    delays_s: tuple[float, ...]


@dataclass
class Ledger:
    """What was queued (tag -> when) and what each group's endpoints received, in order."""

    queued: dict[int, float] = field(default_factory=dict)
    arrivals: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def queue(self, tag: int, now: float) -> None:
        self.queued[tag] = now

    def unqueue(self, tag: int) -> None:
        self.queued.pop(tag, None)

    def arrive(self, group: str, tag: int, now: float) -> None:
        self.arrivals.setdefault(group, []).append((tag, now))

    def complete(self, group: str) -> bool:
        seen = {tag for tag, _ in self.arrivals.get(group, [])}
        return seen >= self.queued.keys()

    def figures(self, group: str) -> GroupFigures:
        """A tag is out of order when its first arrival follows a larger tag's first."""
        first: dict[int, float] = {}
        duplicates = out_of_order = unexpected = 0
        highest = 0
        for tag, at in self.arrivals.get(group, []):
            if tag in first:
                duplicates += 1
                continue
            first[tag] = at
            if tag not in self.queued:
                unexpected += 1
            elif tag < highest:
                out_of_order += 1
            highest = max(highest, tag)
        delays = tuple(first[tag] - self.queued[tag] for tag in self.queued if tag in first)
        lost = sum(1 for tag in self.queued if tag not in first)
        return GroupFigures(group, len(first), lost, out_of_order, duplicates, unexpected, delays)


def percentile(values: tuple[float, ...] | list[float], fraction: float) -> float:
    """Nearest-rank percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


# -- one endpoint: a websockets server behind a fault proxy -----------------------------


class SoakEndpoint:
    """Accepts its token, records tagged arrivals, acks unless told to withhold."""

    def __init__(self, soak: Soak, group: str, host_name: str, priority: int) -> None:
        self.soak = soak
        self.group = group
        self.host_name = host_name
        self.priority = priority
        self.token = f"tok-{host_name}-{os.urandom(12).hex()}"
        self.cert = soak.ca.issue_cert("127.0.0.1", "localhost")
        self.proxy = FaultProxy("127.0.0.1", 0)
        self.server: Server | None = None
        self.active: ServerConnection | None = None
        self.withhold_until = 0.0
        self._pending: dict[str, asyncio.Future[Message]] = {}

    @property
    def certificate_der(self) -> bytes:
        return ssl.PEM_cert_to_DER_cert(self.cert.cert_chain_pems[0].bytes().decode())

    @property
    def details(self) -> EndpointDetails:
        url = f"wss://127.0.0.1:{self.proxy.port}/cfs/nbufacade"
        return EndpointDetails(self.token, self.priority, self.group, self.host_name, url)

    async def start(self) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(context)
        self.server = await serve(
            self._serve, "127.0.0.1", 0, ssl=context, ping_interval=None, max_size=2**24
        )
        self.proxy.target_port = self.server.sockets[0].getsockname()[1]

    async def kill(self) -> None:
        """Die as a crashed server does: every connection dropped, nothing listening."""
        if self.server is None:
            return
        for connection in list(self.server.connections):
            connection.transport.abort()
        self.server.close(close_connections=False)
        await self.server.wait_closed()
        self.server = None

    async def _serve(self, connection: ServerConnection) -> None:
        try:
            async with asyncio.timeout(10):
                connect = messages.decode(await connection.recv())
            offered = connect.payload.get("token") if isinstance(connect.payload, dict) else None
            valid = connect.type is MessageType.CONNECT and offered == self.token
            reply = messages.response_to(connect, {"valid": valid}, time.time())
            await connection.send(messages.encode(reply))
            if not valid:
                self.soak.counts["connect_refused"] += 1
                return
            self.soak.counts["connects"] += 1
            self.active = connection
            async for frame in connection:
                await self._on_frame(connection, frame)
        except (ConnectionClosed, TimeoutError, DecodeError, KeyError, TypeError, ValueError):
            pass
        finally:
            if self.active is connection:
                self.active = None
            for answer in self._pending.values():
                if not answer.done():
                    answer.set_exception(ConnectionError("closed"))

    async def _on_frame(self, connection: ServerConnection, frame: str | bytes) -> None:
        message = messages.decode(frame)
        if message.type is MessageType.NOTIFICATION and message.is_request:
            elements: list[Any] = message.payload if isinstance(message.payload, list) else []
            tags = [int(data["jobId"]) for element in elements for data in element["data"]]
            if not self.soak.sabotaged():
                await self.soak.arrived(self.group, tags)
            if time.monotonic() < self.withhold_until:
                self.soak.counts["acks_withheld"] += 1
                return
            ack = messages.notification_response(message, time.time())
            await connection.send(messages.encode(ack))
        elif message.type is MessageType.COMMAND and message.sub_type is SubType.RESPONSE:
            answer = self._pending.get(message.id)
            if answer is not None and not answer.done():
                answer.set_result(message)

    async def command(self, authorization: str, timeout_s: float) -> int | None:
        """Send one COMMAND over the live connection; its responseCode, or None."""
        connection = self.active
        if connection is None:
            return None
        payload = {"uri": COMMAND_URI, "method": "GET",
                   "headers": {"Authorization": authorization}}
        request = messages.request(MessageType.COMMAND, payload, time.time())
        answer = asyncio.get_running_loop().create_future()
        self._pending[request.id] = answer
        try:
            await connection.send(messages.encode(request))
            async with asyncio.timeout(timeout_s):
                response = await answer
        except (ConnectionClosed, ConnectionError, TimeoutError):
            return None
        finally:
            self._pending.pop(request.id, None)
        code = response.payload.get("responseCode") if isinstance(response.payload, dict) else 0
        return code if isinstance(code, int) else 0


# -- the daemon as an admin runs it -------------------------------------------------------


def _die_with_parent() -> None:
    """In the child: SIGKILL when the soak dies, so a killed soak leaves no daemon behind."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class Daemon:
    """`nbwss run` as a subprocess; its log lines are appended to one file across restarts."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str]) -> None:
        self.config = config
        self.log_path = log_path
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self.unexpected_exits: list[int] = []

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "nbwss", "-c", str(self.config), "run",
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=self.env,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    async def ensure_running(self) -> None:
        """Restart a daemon that exited on its own, and remember that it did."""
        if self.process is not None and self.process.returncode is not None:
            self.unexpected_exits.append(self.process.returncode)
            await self.start()

    async def kill9(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM and wait; the exit code (None if it had to be killed)."""
        process = self.process
        if process is None:
            return None
        if process.returncode is not None:
            return process.returncode
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s):
                return await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
            return None


# -- the run -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    seconds: float
    fault_every_s: float = 3.0
    notify_every_s: float = 1.0
    batch: int = 5
    command_every_s: float = 1.0
    drain_s: float = 90.0
    seed: int | None = None
    workdir: Path | None = None
    lose_every: int = 0


def job(tag: int) -> dict[str, Any]:
    """A valid JOB notification whose jobId carries the tag."""
    return {"scheduleType": "FULL", "clientName": f"client{tag % 7}", "status": 0,
            "startTime": int(time.time()), "state": "DONE", "policyName": "soak",
            "parentJobId": tag, "jobId": tag, "policyType": "STANDARD", "jobType": "BACKUP"}


def properties_text(state: Path, rest_base_url: str, ca_file: Path) -> str:
    return "\n".join([
        "# written by bench/soak.py",
        "exception.ignoreDecoder=false",
        "notification.sendTimeout=1000",
        "notification.scheduledRate=1",
        "keepAlive.scheduledRate=0.5",
        "keepAlive.maxPongMissAllowed=3",
        "connectionInfo.period=0.5",
        f"store.path={state / 'nbwss.db'}",
        f"restApi.baseUrl={rest_base_url}",
        f"restApi.caFile={ca_file}",
        "command.timeout=10",
        "poller.enabled=false",
        "log.level=info",
        "log.format=json",
        "",
    ])


class Soak:
    """Owns every part of one run; `run()` returns the report as a dict."""

    def __init__(self, options: Options, workdir: Path) -> None:
        self.options = options
        self.random = random.Random(options.seed)
        self.workdir = workdir
        self.state = workdir / "state"
        self.ca = trustme.CA()
        self.ledger = Ledger()
        self.counts: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.commands: Counter[str] = Counter()
        self.notify_failures: list[str] = []
        self._arrival = asyncio.Condition()
        self._next_tag = 1
        self._messages_seen = 0
        self.api = restapi.StandinApi()
        self.authorization = self.api.login()
        self.endpoints = [
            SoakEndpoint(self, group, f"{group.lower()}-{letter}.soak.invalid", priority)
            for group in GROUPS
            for priority, letter in ((1, "a"), (2, "b"))
        ]
        self.daemon: Daemon | None = None

    def sabotaged(self) -> bool:
        """`--lose-every N`: forget every Nth message (acked all the same), a self-test."""
        self._messages_seen += 1
        every = self.options.lose_every
        return every > 0 and self._messages_seen % every == 0

    async def arrived(self, group: str, tags: list[int]) -> None:
        now = time.monotonic()
        async with self._arrival:
            for tag in tags:
                self.ledger.arrive(group, tag, now)
            self._arrival.notify_all()

    # -- set-up --

    async def _set_up(self, stack: contextlib.AsyncExitStack) -> None:
        self.state.mkdir(mode=0o700, parents=True)
        ca_file = self.workdir / "ca.pem"
        self.ca.cert_pem.write_to_path(str(ca_file))
        api_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(api_context)
        running = await restapi.start(self.api, api_context)
        stack.push_async_callback(running.stop)
        for endpoint in self.endpoints:
            await endpoint.proxy.start()
            stack.push_async_callback(endpoint.proxy.close)
            await endpoint.start()
            stack.push_async_callback(endpoint.kill)
        config = self.workdir / "nbwss.properties"
        config.write_text(properties_text(self.state, running.base_url, ca_file))
        store = Store(self.state / "nbwss.db", self.state / "nbwss.key")
        try:
            for endpoint in self.endpoints:
                der = endpoint.certificate_der
                store.add_endpoint(endpoint.details, der, fingerprint(der))
        finally:
            store.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NBWSS_", "STATE_"))}
        env.pop("CREDENTIALS_DIRECTORY", None)
        self.daemon = Daemon(config, self.workdir / "daemon.log", env)
        await self.daemon.start()

    # -- the steady traffic --

    async def _feed(self, until: float) -> None:
        assert self.daemon is not None
        while time.monotonic() < until:
            tags = list(range(self._next_tag, self._next_tag + self.options.batch))
            self._next_tag += len(tags)
            lines = "".join(json.dumps({"object": "JOB", "data": job(t)}) + "\n" for t in tags)
            now = time.monotonic()
            for tag in tags:
                self.ledger.queue(tag, now)
            ok, why = await self._notify(lines)
            if not ok:
                self.notify_failures.append(why)
                for tag in tags:
                    self.ledger.unqueue(tag)
            await asyncio.sleep(self.options.notify_every_s)

    async def _notify(self, lines: str) -> tuple[bool, str]:
        assert self.daemon is not None
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nbwss", "-c", str(self.daemon.config), "notify", "-",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=self.daemon.env,
        )
        _, stderr = await process.communicate(lines.encode())
        return process.returncode == 0, stderr.decode(errors="replace").strip()[-300:]

    async def _commands(self, until: float) -> None:
        async with asyncio.TaskGroup() as group:
            while time.monotonic() < until:
                group.create_task(self._one_command())
                await asyncio.sleep(self.options.command_every_s)

    async def _one_command(self) -> None:
        live = [e for e in self.endpoints if e.active is not None]
        if not live:
            self.commands["not_sent"] += 1
            return
        code = await self.random.choice(live).command(self.authorization, timeout_s=20)
        self.commands["sent"] += 1
        if code is None:
            self.commands["unanswered"] += 1
        else:
            self.commands["answered"] += 1
            self.commands[f"status_{code}"] += 1

    # -- faults --

    def _pick(self, connected: bool = True) -> SoakEndpoint:
        live = [e for e in self.endpoints if e.active is not None]
        return self.random.choice(live if connected and live else self.endpoints)

    async def _fault_daemon_kill9(self) -> None:
        assert self.daemon is not None
        await self.daemon.kill9()
        await asyncio.sleep(self.random.uniform(0, 1))
        await self.daemon.start()

    async def _fault_endpoint_restart(self) -> None:
        endpoint = self._pick()
        await endpoint.kill()
        await asyncio.sleep(self.random.uniform(1, 3))
        await endpoint.start()

    async def _fault_cut(self) -> None:
        self._pick().proxy.cut_all(reset=self.random.random() < 0.5)

    async def _fault_stall(self) -> None:
        proxy = self._pick().proxy
        proxy.stall_all()
        await asyncio.sleep(self.random.uniform(1, 4))
        proxy.resume_all()

    async def _fault_delay(self) -> None:
        proxy = self._pick().proxy
        proxy.delay_s = self.random.uniform(0.1, 0.5)
        await asyncio.sleep(self.random.uniform(2, 4))
        proxy.delay_s = 0.0

    async def _fault_refuse_new(self) -> None:
        proxy = self._pick().proxy
        proxy.refuse_new = True
        proxy.cut_all()
        await asyncio.sleep(self.random.uniform(1, 3))
        proxy.refuse_new = False

    async def _fault_withhold_acks(self) -> None:
        self._pick().withhold_until = time.monotonic() + self.random.uniform(2, 5)

    async def _fault_garbage(self) -> None:
        connection = self._pick().active
        if connection is not None:
            with contextlib.suppress(ConnectionClosed):
                await connection.send(self.random.choice(GARBAGE))

    async def _fault_slow_api(self) -> None:
        self.api.delays[f"{restapi.PREFIX}/admin/jobs"] = self.random.uniform(1, 4)
        await asyncio.sleep(self.random.uniform(3, 6))
        self.api.delays.clear()

    def _fault_kinds(self) -> dict[str, Callable[[], Awaitable[None]]]:
        return {
            "daemon_kill9": self._fault_daemon_kill9,
            "endpoint_restart": self._fault_endpoint_restart,
            "connection_cut": self._fault_cut,
            "connection_stall": self._fault_stall,
            "connection_delay": self._fault_delay,
            "connections_refused": self._fault_refuse_new,
            "acks_withheld": self._fault_withhold_acks,
            "garbage_frame": self._fault_garbage,
            "slow_rest_api": self._fault_slow_api,
        }

    async def _chaos(self, until: float) -> None:
        """Faults in shuffled rounds, so every kind comes up once per round."""
        kinds = self._fault_kinds()
        bag: list[str] = []
        while time.monotonic() < until:
            await asyncio.sleep(min(self.options.fault_every_s, until - time.monotonic()))
            if time.monotonic() >= until:
                break
            assert self.daemon is not None
            await self.daemon.ensure_running()
            if not bag:
                bag = self.random.sample(sorted(kinds), len(kinds))
            name = bag.pop()
            self.faults[name] += 1
            await kinds[name]()

    async def _heal(self) -> None:
        assert self.daemon is not None
        await self.daemon.ensure_running()
        self.api.delays.clear()
        for endpoint in self.endpoints:
            endpoint.withhold_until = 0.0
            endpoint.proxy.refuse_new = False
            endpoint.proxy.delay_s = 0.0
            endpoint.proxy.resume_all()
            if endpoint.server is None:
                await endpoint.start()

    async def _drain(self) -> bool:
        """Wait until every group has every queued tag, at most `drain_s`."""
        try:
            async with asyncio.timeout(self.options.drain_s):
                async with self._arrival:
                    await self._arrival.wait_for(
                        lambda: all(self.ledger.complete(g) for g in GROUPS)
                    )
        except TimeoutError:
            return False
        return True

    # -- the whole run --

    async def run(self) -> dict[str, Any]:
        async with contextlib.AsyncExitStack() as stack:
            await self._set_up(stack)
            assert self.daemon is not None
            stack.push_async_callback(self.daemon.stop)
            started = time.monotonic()
            until = started + self.options.seconds
            async with asyncio.TaskGroup() as group:
                group.create_task(self._feed(until))
                group.create_task(self._chaos(until))
                group.create_task(self._commands(until))
            await self._heal()
            drained = await self._drain()
            stop_code = await self.daemon.stop()
            return self._report(time.monotonic() - started, drained, stop_code)

    def _report(self, elapsed: float, drained: bool, stop_code: int | None) -> dict[str, Any]:
        assert self.daemon is not None
        figures = [self.ledger.figures(g) for g in GROUPS]
        delays = [d for f in figures for d in f.delays_s]
        report: dict[str, Any] = {
            "seconds": round(elapsed, 1),
            "events_queued": len(self.ledger.queued),
            "faults": dict(sorted(self.faults.items())),
            "faults_total": sum(self.faults.values()),
            "lost": sum(f.lost for f in figures),
            "out_of_order": sum(f.out_of_order for f in figures),
            "unexpected": sum(f.unexpected for f in figures),
            "duplicates": sum(f.duplicates for f in figures),
            "delay_max_s": round(max(delays, default=0.0), 3),
            "delay_p99_s": round(percentile(delays, 0.99), 3),
            "delay_p50_s": round(percentile(delays, 0.50), 3),
            "commands": dict(sorted(self.commands.items())),
            "commands_answered": self.commands["answered"],
            "commands_ok": self.commands["status_200"],
            "groups": {f.group: {"received": f.received, "lost": f.lost,
                                 "out_of_order": f.out_of_order, "duplicates": f.duplicates}
                       for f in figures},
            "drained": drained,
            "daemon_unexpected_exits": self.daemon.unexpected_exits,
            "daemon_stop_code": stop_code,
            "notify_failures": self.notify_failures[:5],
            "notify_failure_count": len(self.notify_failures),
            "endpoint_events": dict(sorted(self.counts.items())),
            # For the security checks, which look for these in the log and state files.
            "secrets": {"tokens": [e.token for e in self.endpoints],
                        "authorization": self.authorization},
        }
        report["ok"] = (
            report["lost"] == 0 and report["out_of_order"] == 0 and report["unexpected"] == 0
            and not self.daemon.unexpected_exits and not self.notify_failures
        )
        return report


def render(report: dict[str, Any]) -> str:
    faults = ", ".join(f"{k}={v}" for k, v in report["faults"].items()) or "none"
    commands = ", ".join(f"{k}={v}" for k, v in report["commands"].items()) or "none"
    lines = [
        f"soak: {report['seconds']} s, 3 groups x 2 endpoints",
        f"events queued:       {report['events_queued']}",
        f"faults injected:     {report['faults_total']} ({faults})",
        f"lost:                {report['lost']}",
        f"out of order:        {report['out_of_order']}",
        f"duplicates:          {report['duplicates']}",
        f"delivery delay:      max {report['delay_max_s']} s, p99 {report['delay_p99_s']} s, "
        f"p50 {report['delay_p50_s']} s",
        f"commands answered:   {report['commands_answered']}, {report['commands_ok']} with 200"
        f" ({commands})",
        f"daemon: unexpected exits {report['daemon_unexpected_exits']}, "
        f"stop code {report['daemon_stop_code']}; notify failures "
        f"{report['notify_failure_count']}",
        f"result:              {'PASS' if report['ok'] else 'FAIL'}",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="bench/soak.py", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="chaos phase length")
    parser.add_argument("--fault-every", type=float, default=3.0, help="seconds between faults")
    parser.add_argument("--notify-every", type=float, default=1.0, help="seconds between intakes")
    parser.add_argument("--batch", type=int, default=5, help="notifications per intake")
    parser.add_argument("--drain", type=float, default=90.0, help="most seconds to wait at end")
    parser.add_argument("--seed", type=int, default=None, help="random seed (faults)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep state, log and report here (default: a temporary directory)")
    parser.add_argument("--lose-every", type=int, default=0, metavar="N",
                        help="self-test: endpoints ack but forget every Nth message, so the "
                        "run must report losses and fail")
    args = parser.parse_args(argv)
    return Options(seconds=args.seconds, fault_every_s=args.fault_every,
                   notify_every_s=args.notify_every, batch=args.batch, drain_s=args.drain,
                   seed=args.seed, workdir=args.workdir, lose_every=args.lose_every)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="nbwss-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        report = asyncio.run(Soak(options, workdir).run())
    finally:
        if options.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(render(report))
    if options.workdir is not None:
        (options.workdir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
