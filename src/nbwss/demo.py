"""`nbwss demo`: the whole flow on loopback, narrated, in one command.

It makes a throw-away CA, starts two reference cloud endpoints (group DEMO, priorities
1 and 2) and the stand-in NetBackup REST API, adds the endpoints through the same code
as `nbwss endpoint add` (`nbwss.admin`), and runs the daemon as `nbwss run` builds it.
Then it plays the guide's VMware backup (the REST poller turns it into notifications),
queues a job and its images at once as a notify script would (one message, one element
per object type), sends a COMMAND round trip (login, POST and GET a VM server), and
stops endpoint 1 while a notification is unacknowledged, to show failover to endpoint 2
with nothing lost.

Every check is real: the summary's figures come from what the endpoints received and
from the daemon's own metrics, and the command exits 1 when anything is missing.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import tempfile
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import trustme

from nbwss import admin, metrics, properties
from nbwss.commands import notify
from nbwss.daemon import build_service
from nbwss.endpoints import EndpointDetails, details_to_json
from nbwss.reference.endpoint import Notification, ReferenceEndpoint
from nbwss.service import Service
from nbwss.standin import restapi
from nbwss.standin.scenarios import GuideScenarios, Step, comparable
from nbwss.status import fetch_status
from nbwss.store import Store
from nbwss.wake import send_wake

GROUP = "DEMO"
API_USER, API_PASSWORD = "admin", "demo-password"  # the stand-in's only user
STEP_TIMEOUT_S = 30.0  # generous: a loaded 2-core machine must still finish

Say = Callable[[str, str], None]


class Narrator:
    """Prints one timed line per event, and renders the daemon's log events as wire
    traffic (a structlog processor), dropping the rest."""

    def __init__(self, write: Callable[[str], None] = print) -> None:
        self._write = write
        self._started = time.monotonic()

    def say(self, who: str, text: str) -> None:
        self._write(f"{time.monotonic() - self._started:6.2f}s  {who:<11} {text}")

    def processor(
        self, _: Any, __: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        line = _narrate(event)
        if line is not None:
            self.say("daemon", line)
        raise structlog.DropEvent


def _short(message_id: Any) -> str:
    return str(message_id)[:8]


def _narrate(event: MutableMapping[str, Any]) -> str | None:
    """The daemon's events worth a line in the narrative (see each module's log calls)."""
    name, host = event.get("event"), event.get("host")
    if name == "endpoint.connected":
        return f"CONNECT accepted by {host}: group {event.get('group')} is CONNECTED"
    if name == "endpoint.connect_failed":
        return f"cannot connect to {host}: {event.get('reason')}"
    if name == "endpoint.disconnected":
        return f"disconnected from {host} ({event.get('reason')})"
    if name in ("notification.sent", "notification.resent"):
        again = " AGAIN, same id (it was not acknowledged)" if name == "notification.resent" else ""
        return (
            f"-> NOTIFICATION {_short(event.get('id'))} with {event.get('count')} event(s) "
            f"to {host}{again}"
        )
    if name == "notification.acked":
        return f"<- ack of {_short(event.get('id'))} from {host}"
    if name == "command.done":
        return (
            f"COMMAND {event.get('method')} {event.get('uri')} -> local REST API "
            f"{event.get('status')} in {event.get('duration_ms')} ms"
        )
    if name == "poller.queued":
        return f"REST poller queued {event.get('count')} {event.get('object')} notification(s)"
    if str(event.get("log_level")) in ("error", "critical"):
        return f"ERROR {name}: {event.get('reason', '')}"
    return None


@dataclass
class DemoWorld:
    """Everything the demo starts, so it can be stopped in one place."""

    root: Path
    ca: trustme.CA
    endpoints: list[ReferenceEndpoint] = field(default_factory=list)
    api: restapi.StandinApi = field(default_factory=restapi.StandinApi)
    standin: restapi.RunningStandin | None = None


@dataclass
class Summary:
    delivered: int
    expected: int
    acked: float
    resent: float
    failovers: float
    commands: float
    messages: int
    problems: list[str]

    def lines(self) -> list[str]:
        return [
            f"notifications delivered: {self.delivered} of {self.expected}, in {self.messages} "
            "message(s) of at most one element per object type",
            f"acknowledged: {self.acked:g}    resent: {self.resent:g}    "
            f"failovers: {self.failovers:g}    commands answered: {self.commands:g}",
            "result: OK, nothing lost" if not self.problems else "result: FAILED",
            *(f"problem: {p}" for p in self.problems),
        ]


# -- set-up -----------------------------------------------------------------------------------


async def _start_world(root: Path, narrator: Narrator) -> DemoWorld:
    world = DemoWorld(root=root, ca=trustme.CA())
    world.ca.cert_pem.write_to_path(str(root / "ca.pem"))
    for priority in (1, 2):
        context = _server_context(world.ca)
        endpoint = ReferenceEndpoint(
            f"demo-token-{priority}-{root.name}", context, name=f"endpoint-{priority}",
            out=lambda line: narrator.say("cloud", line),
        )
        await endpoint.start()
        world.endpoints.append(endpoint)
    world.api.users = {API_USER: API_PASSWORD}
    world.standin = await restapi.start(world.api, _server_context(world.ca))
    narrator.say("rest-api", f"stand-in NetBackup REST API on {world.standin.base_url}")
    return world


def _server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


async def _stop_world(world: DemoWorld) -> None:
    for endpoint in world.endpoints:
        await endpoint.stop()
    if world.standin is not None:
        await world.standin.stop()


def _write_config(world: DemoWorld) -> Path:
    state = world.root / "state"
    state.mkdir(mode=0o700)
    password_file = world.root / "api-password"
    password_file.write_text(API_PASSWORD)
    password_file.chmod(0o600)
    assert world.standin is not None
    config = world.root / "nbwss.properties"
    config.write_text(
        "# nbwss demo: short periods so everything happens in seconds; the daemon's own\n"
        "# events are narrated by the demo, so the CLI logs only warnings\n"
        "log.level=warning\n"
        f"store.path={state / 'nbwss.db'}\n"
        "connectionInfo.period=2\n"
        "notification.scheduledRate=1\n"
        "keepAlive.scheduledRate=5\n"
        f"restApi.baseUrl={world.standin.base_url}\n"
        f"restApi.caFile={world.root / 'ca.pem'}\n"
        f"restApi.userName={API_USER}\n"
        f"restApi.passwordFile={password_file}\n"
        "poller.jobsRate=0.2\n"
        "poller.imagesRate=0.2\n"
    )
    return config


async def _add_endpoints(world: DemoWorld, store: Store, narrator: Narrator) -> None:
    """Write each endpoint's details file and add it as `nbwss endpoint add` does."""
    for priority, endpoint in enumerate(world.endpoints, start=1):
        details = EndpointDetails(
            token=endpoint.token, priority=priority, group_id=GROUP,
            host_name=f"endpoint-{priority}.demo", url=endpoint.url,
        )
        details_file = world.root / f"endpoint-{priority}.json"
        details_file.write_text(details_to_json(details))
        details_file.chmod(0o600)
        narrator.say("admin", f"nbwss endpoint add --file {details_file.name} --yes")
        inspection = await admin.inspect(details, STEP_TIMEOUT_S)
        await asyncio.to_thread(admin.add_endpoint, store, inspection)


# -- the story --------------------------------------------------------------------------------


async def _play(steps: list[Step], world: DemoWorld, endpoint: ReferenceEndpoint,
                narrator: Narrator) -> None:
    """Apply each step to the stand-in, then wait until its notifications have arrived."""
    for step in steps:
        narrator.say("netbackup", f"step {step.name}: {_step_story(step)}")
        step.apply(world.api)
        wanted = len(endpoint.notifications) + len(step.expected)
        async with asyncio.timeout(STEP_TIMEOUT_S):
            await endpoint.wait_for_notifications(wanted)


def _step_story(step: Step) -> str:
    parts = []
    for obj, data in step.expected:
        if obj == "JOB":
            parts.append(f"job {data['jobId']} {data['jobType']} {data['state']}")
        else:
            parts.append(f"image {data['backupId']} {data['operationId']}")
    return ", ".join(parts)


async def _command_round_trip(endpoint: ReferenceEndpoint, narrator: Narrator) -> list[str]:
    """Login, then POST and GET a VM server with the JWT, as the guide's examples do."""
    problems: list[str] = []
    login = await endpoint.send_command(
        "/netbackup/login", "POST", {"Content-Type": "application/json"},
        json.dumps({"userName": API_USER, "password": API_PASSWORD}, allow_nan=False),
    )
    payload = login.payload if isinstance(login.payload, dict) else {}
    if payload.get("responseCode") != 201:
        return [f"login COMMAND answered {payload.get('responseCode')}"]
    jwt = json.loads(payload["body"])["token"]
    narrator.say("cloud", "got a JWT from the login COMMAND; using it for the next ones")
    headers = {"Content-Type": "application/json", "Authorization": jwt}
    server = {"serverName": "vcenterServer1", "vmType": "VMWARE_VIRTUAL_CENTER_SERVER",
              "userId": "administrator", "password": "password@123", "port": 0}
    created = await endpoint.send_command(
        "/netbackup/config/servers/vmservers", "POST", headers, json.dumps(server, allow_nan=False)
    )
    fetched = await endpoint.send_command(
        "/netbackup/config/servers/vmservers/vcenterServer1", "GET", headers
    )
    for name, answer, wanted in (("POST", created, 201), ("GET", fetched, 200)):
        code = answer.payload.get("responseCode") if isinstance(answer.payload, dict) else None
        if code != wanted:
            problems.append(f"{name} vmserver COMMAND answered {code}, expected {wanted}")
    return problems


async def _failover(world: DemoWorld, steps: list[Step], narrator: Narrator) -> None:
    """Endpoint 1 withholds one ack and goes away; endpoint 2 must get everything."""
    first, second = world.endpoints
    first.withhold_acks = 1
    narrator.say("cloud", "endpoint-1 will not ack the next message, then goes offline")
    restore, rest = steps[0], steps[1:]
    narrator.say("netbackup", f"step {restore.name}: {_step_story(restore)}")
    restore.apply(world.api)
    async with asyncio.timeout(STEP_TIMEOUT_S):
        await first.wait_for_notifications(len(first.notifications) + len(restore.expected))
    await first.stop()
    async with asyncio.timeout(STEP_TIMEOUT_S):
        await second.connected.wait()
        await second.wait_for_notifications(len(restore.expected))
    await _play(rest, world, second, narrator)


def _comparable(notifications: list[Notification]) -> list[tuple[str, dict[str, Any]]]:
    """(object, data) in arrival order, without the one value no scenario predicts."""
    return [comparable((n.object, n.data)) for n in notifications]


def _expected(steps: list[Step]) -> list[tuple[str, dict[str, Any]]]:
    return [comparable(item) for step in steps for item in step.expected]


def _metric(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def _summarize(
    world: DemoWorld, expected: list[tuple[str, dict[str, Any]]], problems: list[str]
) -> Summary:
    first, second = world.endpoints
    # Endpoint 1 saw the restore but never acked it; endpoint 2 got it again from the
    # group's cursor. Delivered = each notification counted once, in the order first seen.
    arrived = _comparable(first.notifications)
    for item in _comparable(second.notifications):
        if item not in arrived:
            arrived.append(item)
    if arrived != expected:
        missing = [e for e in expected if e not in arrived]
        problems.append(f"arrivals differ from the guide's sequence; missing: {missing}")
    violations = first.grouping_violations + second.grouping_violations
    if violations:
        problems.append(f"{violations} message(s) had two elements of one object type")
    return Summary(
        delivered=sum(1 for e in expected if e in arrived),
        expected=len(expected),
        acked=_metric("nbwss_notifications_acked_total", group=GROUP),
        resent=_metric("nbwss_notifications_resent_total", group=GROUP),
        failovers=_metric("nbwss_failovers_total", group=GROUP),
        commands=sum(
            _metric("nbwss_commands_total", status=str(code)) for code in (200, 201)
        ),
        messages=len(set(first.notification_messages) | set(second.notification_messages)),
        problems=problems,
    )


def _script_notifications(scenarios: GuideScenarios) -> list[tuple[str, dict[str, Any]]]:
    """A job and its two images, as a notify script queues them in one `nbwss notify -`
    (the guide's "multiple in one message" example, as job 148)."""
    t = scenarios.t
    job = {"scheduleType": "ST_FULL", "clientName": "DummyTestVM", "status": 0,
           "startTime": t(1459829798), "state": "DONE", "policyName": "vmware2",
           "parentJobId": 148, "jobId": 148, "policyType": "VMWARE", "jobType": "BACKUP"}
    images = [
        {"clientType": "VMWARE", "clientName": "DummyTestVM", "backupTime": t(backup),
         "createdTime": t(backup + 22), "operationId": "UPDATE",
         "backupId": f"DummyTestVM_{t(backup)}"}
        for backup in (1459811798, 1459811786)
    ]
    return [("JOB", job), *(("IMAGE", image) for image in images)]


async def _notify_script(
    settings: properties.Settings, store: Store, endpoint: ReferenceEndpoint,
    items: list[tuple[str, dict[str, Any]]], narrator: Narrator,
) -> None:
    """Queue `items` at once with the code of `nbwss notify -`; they arrive as one message,
    one element per object type."""
    narrator.say("admin", f"nbwss notify - ({len(items)} JSON lines: a job, then its images)")
    lines = [json.dumps({"object": obj, "data": data}, allow_nan=False) for obj, data in items]
    wanted = len(endpoint.notifications) + len(items)
    await asyncio.to_thread(
        notify.queue_lines, store, lines, settings.message_max_bytes,
        lambda: send_wake(settings.wake_socket),
    )
    async with asyncio.timeout(STEP_TIMEOUT_S):
        await endpoint.wait_for_notifications(wanted)


async def _show_status(settings: properties.Settings, narrator: Narrator) -> None:
    """What `nbwss status` would print, in one line."""
    document = await fetch_status(settings.status_address)
    groups = document.get("groups", {})
    for group_id, group in sorted(groups.items()):
        narrator.say(
            "status", f"group {group_id}: endpoint {group.get('endpoint')}, "
            f"backlog {group.get('backlog')}, connected={group.get('connected')}",
        )


async def run_demo(root: Path, narrator: Narrator) -> Summary:
    """The whole demo in `root`; returns the checked summary."""
    world = await _start_world(root, narrator)
    try:
        settings = properties.load(_write_config(world), env={})
        _configure_narrative_logs(narrator)
        scenarios = GuideScenarios(shift=int(time.time()) - 1459811679)
        scenarios.prepare(world.api)
        store = Store(settings.database, settings.key_file)
        try:
            await _add_endpoints(world, store, narrator)
            service = build_service(settings, store)
            return await _run_story(service, settings, store, world, scenarios, narrator)
        finally:
            store.close()
    finally:
        await _stop_world(world)


async def _run_story(service: Service, settings: properties.Settings, store: Store,
                     world: DemoWorld, scenarios: GuideScenarios, narrator: Narrator) -> Summary:
    daemon = asyncio.create_task(service.async_run(handle_signals=False))
    problems: list[str] = []
    backup, script = scenarios.vmware_backup(), _script_notifications(scenarios)
    later = scenarios.restore() + scenarios.image_deletion()
    try:
        first = world.endpoints[0]
        async with asyncio.timeout(STEP_TIMEOUT_S):
            await service.ready.wait()
            await first.connected.wait()
        narrator.say("demo", "-- the guide's VMware policy backup (examples A to G) --")
        await _play(backup, world, first, narrator)
        narrator.say("demo", "-- a notify script: two object types, one message --")
        await _notify_script(settings, store, first, script, narrator)
        narrator.say("demo", "-- a COMMAND round trip through the daemon --")
        problems += await _command_round_trip(first, narrator)
        await _show_status(settings, narrator)
        narrator.say("demo", "-- failover: endpoint-1 goes offline mid-delivery --")
        await _failover(world, later, narrator)
        await _show_status(settings, narrator)
    except TimeoutError:
        problems.append("a step did not complete in time (see the lines above)")
    finally:
        service.handle_exit()
        await daemon
    expected = _expected(backup) + [comparable(item) for item in script] + _expected(later)
    return _summarize(world, expected, problems)


def _configure_narrative_logs(narrator: Narrator) -> None:
    structlog.configure(
        processors=[structlog.processors.add_log_level, narrator.processor],
        wrapper_class=structlog.make_filtering_bound_logger(20),
        cache_logger_on_first_use=False,
    )


def main(keep: bool, write: Callable[[str], None] = print) -> int:
    """Run the demo in a temporary directory (kept with `keep`); exit code 0 when OK."""
    root = Path(tempfile.mkdtemp(prefix="nbwss-demo-"))
    narrator = Narrator(write)
    narrator.say("demo", f"state and certificates in {root}")
    try:
        summary = asyncio.run(run_demo(root, narrator))
    finally:
        if keep:
            narrator.say("demo", f"kept {root} (--keep)")
        else:
            shutil.rmtree(root, ignore_errors=True)
    write("")
    for line in summary.lines():
        write(f"  {line}")
    return 0 if not summary.problems else 1
