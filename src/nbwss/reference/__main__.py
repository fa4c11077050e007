"""`python -m nbwss.reference`: run the reference cloud endpoint in the foreground.

Example (a development endpoint with a throw-away certificate, and its details file):

    python -m nbwss.reference --token s3cret --self-signed --port 14146 \\
        --details endpoint.json --group GROUPID1 --priority 1
    nbwss endpoint add --file endpoint.json --fingerprint <printed fingerprint>
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

from nbwss.devtools import run_tool, stop_on_signals
from nbwss.errors import NbwssError
from nbwss.reference.endpoint import DEFAULT_PATH, ReferenceEndpoint
from nbwss.reference.tls import load_server_context, self_signed
from nbwss.vault import create_private_file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nbwss.reference",
        description="A reference NBWSS cloud endpoint: checks the CONNECT token, acks "
        "notifications and prints one line per notification, can issue COMMANDs.",
    )
    parser.add_argument("--token", required=True, help="the token to accept in CONNECT")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    parser.add_argument("--path", default=DEFAULT_PATH, help=f"URL path (default {DEFAULT_PATH})")
    tls = parser.add_mutually_exclusive_group(required=True)
    tls.add_argument("--cert", type=Path, help="server certificate chain (PEM); needs --key")
    tls.add_argument(
        "--self-signed", action="store_true", help="make a throw-away certificate (development)"
    )
    parser.add_argument("--key", type=Path, help="private key of --cert (PEM)")
    parser.add_argument(
        "--withhold-acks", type=int, default=0, metavar="N",
        help="leave the first N NOTIFICATION messages unanswered, to watch the daemon resend",
    )
    parser.add_argument(
        "--command", action="append", default=[], metavar="'METHOD URI'",
        help="a COMMAND to send once a daemon connects (repeatable), e.g. "
        "'GET /netbackup/admin/jobs'",
    )
    parser.add_argument(
        "--header", action="append", default=[], metavar="'NAME: VALUE'",
        help="a header for every --command (repeatable), e.g. 'Authorization: <JWT>'",
    )
    parser.add_argument("--parameters", help="the body (a JSON string) for every --command")
    details = parser.add_argument_group("endpoint details (the file an admin adds)")
    details.add_argument("--details", type=Path, help="write the endpoint details JSON here")
    details.add_argument("--group", default="GROUPID1", help="groupId in the details")
    details.add_argument("--priority", type=int, default=1, help="priority in the details")
    details.add_argument("--host-name", help="hostName in the details (default: --host)")
    return parser


def server_context(args: argparse.Namespace) -> ssl.SSLContext:
    if args.self_signed:
        material = self_signed(args.host, "localhost")
        print(f"self-signed certificate, SHA-256 fingerprint {material.fingerprint}")
        return material.server_context
    if args.key is None:
        raise NbwssError("--cert needs --key")
    return load_server_context(args.cert, args.key)


def write_details(args: argparse.Namespace, url: str) -> None:
    """The five-entry endpoint details (spec section 2); 0600 since it holds the token."""
    details = {
        "token": args.token,
        "priority": args.priority,
        "groupId": args.group,
        "hostName": args.host_name or args.host,
        "url": url,
    }
    args.details.unlink(missing_ok=True)
    text = json.dumps(details, indent=2, allow_nan=False)
    create_private_file(args.details, text.encode() + b"\n")
    print(f"endpoint details written to {args.details}")


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise NbwssError(f"--header {text!r} is not 'NAME: VALUE'")
    return name.strip(), value.strip()


async def send_commands(
    endpoint: ReferenceEndpoint, args: argparse.Namespace, headers: dict[str, str]
) -> None:
    """Once a daemon is connected, send each --command in turn and print the answer."""
    await endpoint.connected.wait()
    for command in args.command:
        method, _, uri = command.strip().partition(" ")
        try:
            response = await endpoint.send_command(
                uri.strip(), method.upper(), headers, args.parameters
            )
        except (NbwssError, TimeoutError) as exc:
            print(f"COMMAND {command} got no answer: {exc or 'timed out'}")
            continue
        print(json.dumps(response.payload, indent=2, allow_nan=False))


async def serve(args: argparse.Namespace, headers: dict[str, str]) -> None:
    endpoint = ReferenceEndpoint(
        args.token, server_context(args), host=args.host, port=args.port, path=args.path,
        out=print, name="reference",
    )
    endpoint.withhold_acks = args.withhold_acks
    stop = stop_on_signals()
    async with endpoint, asyncio.TaskGroup() as tasks:
        if args.details is not None:
            write_details(args, endpoint.url)
        commands = tasks.create_task(send_commands(endpoint, args, headers))
        await stop.wait()
        commands.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    async def checked_then_served() -> None:
        # Headers are checked before anything starts, so a typo is one error line.
        await serve(args, dict(parse_header(h) for h in args.header))

    return run_tool("nbwss.reference", checked_then_served)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
