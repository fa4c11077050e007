"""`nbwss endpoint`: the admin's side of endpoints (the guide's "WebSocket Server" dialog).

validate -> add (pins the certificate seen now) -> list / show -> enable / disable ->
delete. The changes are made by `nbwss.admin` (one store transaction and one log event
each), which then wakes the running daemon's connection process, so they apply at once.
The token is never printed (except `show --token`) and never logged.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nbwss import admin, logs
from nbwss.admin import Inspection, certificate_problems
from nbwss.commands import Context, examples, print_json, print_table, seconds
from nbwss.dial import Target
from nbwss.endpoints import (
    FETCH_TIMEOUT_S,
    EndpointDetails,
    fetch_details,
    parse_details,
)
from nbwss.errors import (
    MSG_CERT_MISMATCH,
    MSG_EXISTS,
    MSG_NO_SSL,
    MSG_NOT_FOUND,
    AlreadyExistsError,
    ConnectError,
    DetailsError,
    NbwssError,
    NotFoundError,
    StoreError,
    TrustError,
)
from nbwss.properties import Settings
from nbwss.status import fetch_status
from nbwss.statusview import group_views
from nbwss.store import Store
from nbwss.trust import certificate_info, normalize_fingerprint
from nbwss.values import EndpointRecord


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "endpoint",
        help="validate, add, test, list, show, enable, disable, delete endpoints",
        description="Manage the cloud endpoints the daemon connects to.",
        epilog=examples("nbwss endpoint validate --file details.json",
                        "nbwss endpoint add --file details.json --fingerprint 3A:1F:...",
                        "nbwss endpoint list", "nbwss endpoint ACTION --help"),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    actions.required = True

    validate = actions.add_parser(
        "validate", help="check details and show the server's certificate",
        description="Read the endpoint details (a JSON file, or an https:// URL that serves "
        "them), check them, connect to the endpoint's server and show its certificate and "
        "SHA-256 fingerprint. Stores nothing.",
        epilog=examples("nbwss endpoint validate --file details.json",
                        "nbwss endpoint validate --url https://app.example.com/details "
                        "--ca-file app-ca.pem"),
    )
    _add_source_options(validate)
    validate.add_argument(
        "--connect", action="store_true",
        help="also dial the endpoint and send CONNECT with the token: exit 0 only when "
        "it accepts the token (see 'endpoint test')",
    )
    validate.add_argument("--json", action="store_true", help="machine-readable output")
    validate.set_defaults(handler=handle_validate, parser=validate)

    add = actions.add_parser(
        "add", help="validate, then store details and pin the certificate",
        description="Validate the details, then store them (the token encrypted) and pin "
        "the certificate the server presents now: the one --fingerprint names, or any with "
        "--yes, or the one you accept when asked on a terminal. The running daemon "
        "connects at once.",
        epilog=examples("nbwss endpoint add --file details.json --fingerprint 3A:1F:...:C4",
                        "nbwss endpoint add --replace --file new-details.json --yes"),
    )
    _add_source_options(add)
    add.add_argument(
        "--fingerprint", metavar="SHA256", help="the SHA-256 fingerprint accepted at validate"
    )
    add.add_argument("--yes", action="store_true", help="accept the certificate seen now")
    add.add_argument(
        "--replace",
        action="store_true",
        help="renew an endpoint already added (new token, certificate, URL or priority) "
        "in one step that keeps its group's delivery position",
    )
    add.set_defaults(handler=handle_add, parser=add)

    listing = actions.add_parser(
        "list", help="every endpoint with state and status",
        description="Every endpoint: host name, URL, group, priority, ENABLED/DISABLED and "
        "CONNECTED/DISCONNECTED (from the running daemon). Never the token.",
        epilog=examples("nbwss endpoint list", "nbwss endpoint list --json"),
    )
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=handle_list)

    show = actions.add_parser(
        "show", help="one endpoint",
        description="One endpoint, with its status, last connection error and pinned "
        "certificate; the token only with --token.",
        epilog=examples("nbwss endpoint show cloud1.example.com",
                        "nbwss endpoint show cloud1.example.com --json"),
    )
    show.add_argument("host", metavar="HOST", help="the endpoint's hostName")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.add_argument("--token", action="store_true", help="also show the token (secret)")
    show.set_defaults(handler=handle_show)

    test = actions.add_parser(
        "test", help="dial a stored endpoint and check that it accepts the token",
        description="Dial a stored endpoint over its pinned certificate (through the "
        "outbound proxy, if one is set), send CONNECT with its stored token, and report "
        "valid: true/false, the HTTP status when the endpoint refuses the WebSocket "
        "upgrade, and the round-trip time. Exit 0 only when the endpoint accepts the "
        "token. The endpoint sees a second connection that closes normally once CONNECT "
        "is answered; a running daemon's connection is not touched.",
        epilog=examples("nbwss endpoint test cloud1.example.com",
                        "nbwss endpoint test cloud1.example.com --json"),
    )
    test.add_argument("host", metavar="HOST", help="the endpoint's hostName")
    test.add_argument("--json", action="store_true", help="machine-readable output")
    test.set_defaults(handler=handle_test)

    for name, handler, text in (
        ("enable", handle_enable, "let the daemon connect to it"),
        ("disable", handle_disable, "never connect to it"),
        ("delete", handle_delete, "remove its credentials and pinned certificate"),
    ):
        action = actions.add_parser(
            name, help=text, description=f"{name.capitalize()} an endpoint: {text}. The "
            "running daemon applies it at once. For a group's last endpoint with "
            "unacknowledged notifications, asks first (or needs --yes off a terminal).",
            epilog=examples(f"nbwss endpoint {name} cloud1.example.com"),
        )
        action.add_argument("host", metavar="HOST", help="the endpoint's hostName")
        action.set_defaults(handler=handler)
        if name != "enable":
            action.add_argument(
                "--yes", action="store_true",
                help="go on when this is the group's last endpoint and notifications are "
                "waiting for it (asked on a terminal)",
            )
        if name == "delete":
            action.add_argument(
                "--keep-position", action="store_true",
                help="keep the group's unacknowledged notifications for its next endpoint",
            )


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", type=Path, metavar="F", help="JSON file with the details")
    source.add_argument("--url", metavar="U", help="https:// URL serving the details")
    parser.add_argument(
        "--ca-file",
        type=Path,
        metavar="PEM",
        help="with --url: trust only this CA for the details URL (default: system CAs)",
    )
    parser.add_argument(
        "--timeout",
        type=seconds,
        default=FETCH_TIMEOUT_S,
        metavar="SECONDS",
        help=f"for each connection (default {FETCH_TIMEOUT_S:g})",
    )


# -- validate and add ------------------------------------------------------------------------


def _check_source_options(args: argparse.Namespace) -> None:
    if args.ca_file is not None and args.url is None:
        args.parser.error("--ca-file applies to --url only")


def _read_details_file(path: Path) -> EndpointDetails:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DetailsError(f"cannot read {path}: {exc.strerror}") from None
    return parse_details(raw)


def _load_details(args: argparse.Namespace, context: Context) -> EndpointDetails:
    if args.file is not None:
        details = _read_details_file(args.file)
    else:
        fetch = fetch_details(args.url, ca_file=args.ca_file, timeout_s=args.timeout,
                              outbound=context.outbound)
        details = asyncio.run(fetch)
    logs.register_secret(details.token)  # whatever happens next, never in a log line
    return details


def _inspect(details: EndpointDetails, timeout_s: float, context: Context) -> Inspection:
    proxy = context.outbound.proxy_for(details.url)
    return asyncio.run(admin.inspect(details, timeout_s, proxy))


def _details_json(details: EndpointDetails) -> dict[str, Any]:
    return {
        "hostName": details.host_name,
        "groupId": details.group_id,
        "priority": details.priority,
        "url": details.url,
    }


def _print_inspection(inspection: Inspection, problems: list[str]) -> None:
    details, cert = inspection.details, inspection.certificate
    lines = [
        "Endpoint details are valid:",
        f"  Host name:  {details.host_name}",
        f"  Group:      {details.group_id}",
        f"  Priority:   {details.priority}",
        f"  URL:        {details.url}",
        f"Certificate presented by {inspection.server}:",
        f"  Subject:    {cert.subject}",
        f"  Issuer:     {cert.issuer}",
        f"  Names:      {', '.join(cert.sans) or '(none)'}",
        f"  Valid:      {cert.not_before:%Y-%m-%d %H:%M:%S} to "
        f"{cert.not_after:%Y-%m-%d %H:%M:%S} UTC",
        f"  SHA-256:    {cert.fingerprint}",
    ]
    lines += [f"Warning: {problem}" for problem in problems]
    sys.stdout.write("\n".join(lines) + "\n")


def handle_validate(args: argparse.Namespace, context: Context) -> int:
    _check_source_options(args)
    context.settings  # noqa: B018 - configures logging before anything can log
    inspection = _inspect(_load_details(args, context), args.timeout, context)
    problems = certificate_problems(inspection, datetime.now(UTC))
    probe = None
    if args.connect and not problems:
        details = inspection.details
        target = Target(details.group_id, details.host_name, details.url, details.token,
                        inspection.certificate.der)
        probe = _probe(target, context)
    if args.json:
        shown = {
            "endpoint": _details_json(inspection.details),
            "server": inspection.server,
            "certificate": inspection.certificate.to_json(),
            "problems": problems,
        }
        print_json(shown if probe is None else {**shown, "connect": probe.to_json()})
    else:
        _print_inspection(inspection, problems)
        if probe is not None:
            _print_probe(probe)
    if problems:
        raise TrustError(f"{MSG_NO_SSL}: {problems[0]}")
    if probe is not None:
        _require_valid(probe)
    if not args.json:
        source = f"--file {args.file}" if args.file is not None else f"--url {args.url}"
        sys.stdout.write(
            f"To add it: nbwss endpoint add {source} "
            f"--fingerprint {inspection.certificate.fingerprint}\n"
        )
    return 0


def _ensure_absent(store: Store, host_name: str) -> None:
    try:
        store.endpoint(host_name)
    except NotFoundError:
        return
    raise AlreadyExistsError(
        f"{MSG_EXISTS}: {host_name} (use 'nbwss endpoint add --replace' to renew it)"
    )


def _accept_certificate(inspection: Inspection, args: argparse.Namespace) -> None:
    """The admin accepts the certificate: by fingerprint, by --yes, or at the terminal."""
    seen = inspection.certificate.fingerprint
    if args.fingerprint is not None:
        accepted = normalize_fingerprint(args.fingerprint)
        if accepted != seen:
            raise TrustError(
                f"{MSG_CERT_MISMATCH}: {inspection.server} presents {seen}, "
                f"not the accepted {accepted}"
            )
        return
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise TrustError(
            "the certificate was not accepted and there is no terminal to ask: pass "
            "--fingerprint SHA256 (shown by 'nbwss endpoint validate') or --yes"
        )
    _print_inspection(inspection, [])
    try:
        answer = input("Trust this certificate and add the endpoint? [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        raise TrustError("the certificate was not accepted; nothing was stored")


def handle_add(args: argparse.Namespace, context: Context) -> int:
    _check_source_options(args)
    if args.fingerprint is not None:
        normalize_fingerprint(args.fingerprint)  # a typo fails before any connection
    store = context.store
    details = _load_details(args, context)
    if not args.replace:
        _ensure_absent(store, details.host_name)  # before connecting anywhere
    inspection = _inspect(details, args.timeout, context)
    problems = certificate_problems(inspection, datetime.now(UTC))
    if problems:
        raise TrustError(f"{MSG_NO_SSL}: {problems[0]}")
    _accept_certificate(inspection, args)
    admin.add_endpoint(store, inspection, replace=args.replace)
    sys.stdout.write(
        f"{'Renewed' if args.replace else 'Added'} {details.host_name} "
        f"(group {details.group_id}, priority {details.priority}) "
        f"with certificate {inspection.certificate.fingerprint} pinned.\n"
    )
    _report_applied(context.settings, "uses it from now on")
    return 0


# -- the handshake test ----------------------------------------------------------------------


def _probe(target: Target, context: Context) -> admin.Probe:
    proxy = context.outbound.proxy_for(target.url)
    return asyncio.run(admin.probe(target, context.settings, proxy))


def _print_probe(probe: admin.Probe) -> None:
    rows = []
    if probe.proxy is not None:
        rows.append(("Through", f"proxy {probe.proxy}"))
    rows.append(("valid", "true" if probe.valid else "false"))
    if probe.http_status is not None:
        rows.append(("HTTP status", str(probe.http_status)))
    rows.append(("Round trip", f"{probe.round_trip_ms:g} ms"))
    sys.stdout.write(f"CONNECT test of {probe.host_name} ({probe.url}):\n")
    sys.stdout.write("".join(f"  {name + ':':<13}{value}\n" for name, value in rows))


def _require_valid(probe: admin.Probe) -> None:
    if not probe.valid:
        raise ConnectError(f"endpoint test of {probe.host_name} failed: {probe.reason}")


def handle_test(args: argparse.Namespace, context: Context) -> int:
    store = context.store
    record = store.endpoint(args.host)
    token = store.token(record.host_name)
    logs.register_secret(token)
    target = Target(record.group_id, record.host_name, record.url, token,
                    record.certificate_der)
    probe = _probe(target, context)
    if args.json:
        print_json(probe.to_json())
    else:
        _print_probe(probe)
    _require_valid(probe)
    return 0


# -- list and show ---------------------------------------------------------------------------


def _records(store: Store) -> list[EndpointRecord]:
    try:
        return store.endpoints()
    except (sqlite3.Error, StoreError) as exc:
        raise StoreError(f"{MSG_NOT_FOUND}: the endpoints cannot be read ({exc})") from None


# `list` and `show` must answer quickly even when the daemon is wedged.
STATUS_TIMEOUT_S = 2.0


def _with_live_status(records: list[EndpointRecord], settings: Settings) -> list[EndpointRecord]:
    """CONNECTED comes from the running daemon, never from what a killed one left behind:
    with no daemon answering, nothing is connected."""
    try:
        document = asyncio.run(fetch_status(settings.status_address, STATUS_TIMEOUT_S))
    except NbwssError:
        live: dict[str, str] = {}
    else:
        live = {
            view.group_id: view.endpoint or ""
            for view in group_views(document)
            if view.connected
        }
    return [
        replace(record, connected=live.get(record.group_id, "").casefold()
                == record.host_name.casefold())
        for record in records
    ]


def _state(record: EndpointRecord) -> str:
    return "ENABLED" if record.enabled else "DISABLED"


def _status(record: EndpointRecord) -> str:
    return "CONNECTED" if record.connected else "DISCONNECTED"


def _record_json(record: EndpointRecord) -> dict[str, Any]:
    return {
        "hostName": record.host_name,
        "url": record.url,
        "groupId": record.group_id,
        "priority": record.priority,
        "state": _state(record),
        "status": _status(record),
        "fingerprint": record.fingerprint,
    }


def handle_list(args: argparse.Namespace, context: Context) -> int:
    records = _with_live_status(_records(context.store), context.settings)
    if args.json:
        print_json([_record_json(record) for record in records])
        return 0
    if not records:
        sys.stdout.write("No endpoints yet. Add one with: nbwss endpoint add --file F\n")
        return 0
    print_table(
        ["HOST", "URL", "GROUP", "PRIORITY", "STATE", "STATUS"],
        [
            [r.host_name, r.url, r.group_id, str(r.priority), _state(r), _status(r)]
            for r in records
        ],
    )
    return 0


def _find(store: Store, host_name: str) -> EndpointRecord:
    """The endpoint named `host_name` in any case: host names are case-blind."""
    wanted = host_name.casefold()
    for record in _records(store):
        if record.host_name.casefold() == wanted:
            return record
    raise NotFoundError(f"{MSG_NOT_FOUND}: {host_name}")


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def handle_show(args: argparse.Namespace, context: Context) -> int:
    [record] = _with_live_status([_find(context.store, args.host)], context.settings)
    cert = certificate_info(record.certificate_der)
    shown: dict[str, Any] = {
        **_record_json(record),
        "statusSince": _iso(record.status_since),
        "lastError": record.last_error,
        "certificate": cert.to_json(),
    }
    if args.token:
        shown["token"] = context.store.token(record.host_name)
    if args.json:
        print_json(shown)
        return 0
    rows = [
        ("Host name", record.host_name),
        ("URL", record.url),
        ("Group", record.group_id),
        ("Priority", str(record.priority)),
        ("State", _state(record)),
        ("Status", _status(record) + (f" since {shown['statusSince']}" if shown["statusSince"]
                                      else "")),
        ("Last error", record.last_error or "-"),
        ("Certificate", cert.subject),
        ("Names", ", ".join(cert.sans) or "(none)"),
        ("Valid until", f"{cert.not_after:%Y-%m-%d %H:%M:%S} UTC"),
        ("SHA-256", cert.fingerprint),
    ]
    if args.token:
        rows.append(("Token", shown["token"]))
    width = max(len(name) for name, _ in rows) + 1
    sys.stdout.write("".join(f"{name + ':':<{width}} {value}\n" for name, value in rows))
    return 0


# -- enable, disable, delete -----------------------------------------------------------------


def _report_applied(settings: Settings, effect: str) -> None:
    """Wake the running daemon's connection process and say whether one took the change."""
    if admin.wake_daemon(settings):
        sys.stdout.write(f"applied: the running daemon {effect}\n")
    else:
        sys.stdout.write("no daemon running: applies at its start\n")


def _confirm_discard(context: Context, args: argparse.Namespace, deleting: bool) -> None:
    """A group's last endpoint with a backlog: ask on a terminal, else need --yes."""
    at_risk = admin.backlog_at_risk(context.store, args.host, deleting=deleting)
    if at_risk is None or args.yes:
        return
    since = _iso(at_risk.since)
    if deleting:
        what = (f"deleting the last endpoint of group {at_risk.group_id} discards its "
                f"{at_risk.count} unacknowledged notification(s) queued since {since}")
        way_out = "--keep-position to keep them for the group's next endpoint, or --yes"
    else:
        what = (f"disabling the last enabled endpoint of group {at_risk.group_id} stops "
                f"delivery of its {at_risk.count} unacknowledged notification(s) queued "
                f"since {since}")
        way_out = "--yes"
    if not sys.stdin.isatty():
        raise NbwssError(f"{what}; pass {way_out}")
    try:
        answer = input(f"Warning: {what}. Go on? [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        raise NbwssError("nothing was changed")


def _set_enabled(context: Context, args: argparse.Namespace, enabled: bool) -> int:
    word = "enabled" if enabled else "disabled"
    if not enabled:
        _confirm_discard(context, args, deleting=False)
    if not admin.set_enabled(context.store, args.host, enabled):
        sys.stdout.write(f"Endpoint {args.host} is already {word}.\n")
        return 0
    sys.stdout.write(f"Endpoint {args.host} {word}.\n")
    _report_applied(context.settings, "may connect to it from now on" if enabled
                    else "stops using it now")
    return 0


def handle_enable(args: argparse.Namespace, context: Context) -> int:
    return _set_enabled(context, args, True)


def handle_disable(args: argparse.Namespace, context: Context) -> int:
    return _set_enabled(context, args, False)


def handle_delete(args: argparse.Namespace, context: Context) -> int:
    if not args.keep_position:
        _confirm_discard(context, args, deleting=True)
    admin.delete_endpoint(context.store, args.host, keep_position=args.keep_position)
    kept = " (its group's notifications are kept for its next endpoint)" \
        if args.keep_position else ""
    sys.stdout.write(f"Endpoint {args.host} deleted with its pinned certificate{kept}.\n")
    _report_applied(context.settings, "stops using it now")
    return 0
