"""`python -m nbwss.standin`: run the stand-in NetBackup REST API in the foreground.

A thin front over `nbwss.standin.restapi` for developers without a NetBackup master
server: the daemon's COMMAND proxy and REST poller can be pointed at it
(`restApi.baseUrl`, `restApi.caFile`), and a cloud app's COMMANDs reach it through the
daemon. It serves what `restapi.py` documents (login, vmservers, jobs, images), with
an empty catalog; its data lives in memory and is gone when it stops.

    python -m nbwss.standin --self-signed --port 1556 --ca-out standin-ca.pem
"""

from __future__ import annotations

import argparse
import contextlib
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

from nbwss.devtools import run_tool, stop_on_signals
from nbwss.errors import NbwssError
from nbwss.reference.tls import load_server_context, self_signed
from nbwss.standin.restapi import StandinApi, start
from nbwss.vault import create_private_file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nbwss.standin",
        description="A stand-in for the local NetBackup REST API (login, vmservers, jobs, "
        "images; in memory) for trying nbwss without a master server. Point "
        "restApi.baseUrl and restApi.caFile at it. Stops on Ctrl-C or SIGTERM.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    tls = parser.add_mutually_exclusive_group(required=True)
    tls.add_argument("--cert", type=Path, help="server certificate chain (PEM); needs --key")
    tls.add_argument(
        "--self-signed", action="store_true",
        help="make a throw-away CA and certificate; the CA goes to --ca-out",
    )
    parser.add_argument("--key", type=Path, help="private key of --cert (PEM)")
    parser.add_argument(
        "--ca-out", type=Path, default=Path("standin-ca.pem"), metavar="PATH",
        help="with --self-signed: where to write the CA (PEM) for restApi.caFile "
        "(default: standin-ca.pem)",
    )
    parser.add_argument(
        "--user", action="append", default=[], metavar="NAME:PASSWORD",
        help="a user POST /netbackup/login accepts (repeatable; default admin:secret)",
    )
    parser.add_argument(
        "--api-key", action="append", default=[], metavar="KEY",
        help="an API key accepted as Authorization (repeatable)",
    )
    parser.add_argument(
        "--chunked", action="store_true",
        help="send bodies with Transfer-Encoding: chunked, as NetBackup does",
    )
    return parser


def parse_user(text: str) -> tuple[str, str]:
    name, sep, password = text.partition(":")
    if not sep or not name or not password:
        raise NbwssError(f"--user {text!r} is not 'NAME:PASSWORD'")
    return name, password


def server_context(args: argparse.Namespace) -> ssl.SSLContext:
    if not args.self_signed:
        if args.key is None:
            raise NbwssError("--cert needs --key")
        return load_server_context(args.cert, args.key)
    material = self_signed(args.host, "localhost")
    args.ca_out.unlink(missing_ok=True)
    create_private_file(args.ca_out, material.ca_pem)
    print(f"CA certificate written to {args.ca_out}")
    return material.server_context


def make_api(args: argparse.Namespace) -> StandinApi:
    api = StandinApi(chunked=args.chunked, api_keys=set(args.api_key))
    if args.user:
        api.users = dict(parse_user(text) for text in args.user)
    return api


async def serve(args: argparse.Namespace, api: StandinApi) -> None:
    stop = stop_on_signals()
    running = await start(api, server_context(args), args.host, args.port)
    try:
        print(f"stand-in NetBackup REST API on {running.base_url} "
              f"(users: {', '.join(sorted(api.users))})")
        print("for nbwss.properties:")
        print(f"    restApi.baseUrl={running.base_url}")
        if args.self_signed:
            print(f"    restApi.caFile={args.ca_out.resolve()}")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await running.stop()
        print("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The users are checked before anything starts, so a typo is one error line.
    return run_tool("nbwss.standin", lambda: serve(args, make_api(args)))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
