"""The COMMAND proxy: a COMMAND REQUEST in, a call to the local REST API, its COMMAND RESPONSE out.

`CommandProxy` is the session's `CommandHandler`. Each COMMAND passes the guard
(`nbwss.guard`) first; a refusal is answered at once and never reaches the API. The
rest go over one shared `aiohttp.ClientSession` (one connection pool for the daemon) to
`restApi.baseUrl` + the canonical target, with TLS verified against `restApi.caFile`.
That session keeps no cookies: server groups are separate cloud apps, and a cookie the
API set in answer to one group's COMMAND must never ride on another group's.

Failures become responses, never exceptions: API unreachable or answering badly -> 502,
`command.timeout` passed -> 504, a response body over `command.maxBodyBytes` -> 502
(counted after decompression, which is done here in bounded steps, so a small gzip
bomb never inflates past the cap), a response whose frame would exceed
`message.maxBytes` -> 502 (JSON escaping can make the frame up to six times the body,
and the endpoint would drop a frame over its limit with the answer in it). The timeout
covers the REST call (connect, send, read the whole body), not the wait for a free
slot: at most `command.maxConcurrent` commands of one connection call the API at once
and the rest queue, so one connection cannot take over the API and a slow call delays
no other connection. The queue is bounded too: past `command.maxQueued` commands of
one connection (running and waiting), a COMMAND is answered 503 at once, so a flood
cannot hold the daemon's memory.

The response payload is ``headers`` (names lower-cased; repeated headers joined with
", "; hop-by-hop ones such as ``connection``, ``keep-alive``, ``transfer-encoding``
dropped), ``responseCode`` (int) and ``body``: always a string, the response body
decoded as UTF-8 (``""`` when empty), with U+FFFD replacing bytes that are not UTF-8
(the wire carries text only). Redirects are returned to the app, never followed, so a
call cannot be bounced off the API. The proxy tells the link when the REST call starts
(`command_reached_api`): from then on, an answer lost with the connection leaves the
outcome unknown to the app.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import ssl
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from nbwss import metrics
from nbwss.guard import (
    HOP_BY_HOP,
    ApiRequest,
    Policy,
    Refusal,
    check_command,
    connection_options,
    loggable_method_and_uri,
)
from nbwss.link import CommandLink, Link
from nbwss.logs import get_logger
from nbwss.messages import JsonObject, Message, encode, error_body, response_to
from nbwss.neterrors import describe
from nbwss.properties import Settings

log = get_logger(__name__)

_READ_CHUNK: Final = 64 * 1024
# The body is handed over decoded, so headers about its encoded form would mislead.
_DECODED_BODY_HEADERS: Final = frozenset({"content-encoding", "content-length"})
# Content codings inflated here (zlib's wbits: 47 reads a gzip or a zlib header).
_INFLATED_CODINGS: Final = {"gzip": 47, "x-gzip": 47, "deflate": 47}
# More than a COMMAND RESPONSE's keys, punctuation and numbers take (about 130 bytes).
_ENVELOPE_BYTES: Final = 512


@dataclass(slots=True)
class Answer:
    """What the app gets back, before it becomes a COMMAND RESPONSE."""

    status: int
    headers: dict[str, str]
    body: str
    size: int  # response body bytes as received from the API (0 for our own answers)
    reason: str | None = None  # why we answered ourselves (refusal, failure); never a body

    def payload(self) -> JsonObject:
        return {"headers": self.headers, "responseCode": self.status, "body": self.body}


def _own_answer(status: int, reason: str) -> Answer:
    """An answer nbwss makes itself, in NetBackup's error shape."""
    body = json.dumps(error_body(status, reason), allow_nan=False)
    return Answer(status, {"content-type": "application/json"}, body, 0, reason)


def _refused(refusal: Refusal) -> Answer:
    return Answer(
        refusal.status,
        {"content-type": "application/json"},
        json.dumps(refusal.body(), allow_nan=False),
        0,
        f"{refusal.field}: {refusal.reason}",
    )


class _ResponseTooLarge(Exception):
    def __init__(self, size: int) -> None:
        self.size = size


class _UnreadableBody(Exception):
    """The body cannot be handed over as text (an unknown or broken content coding)."""


@dataclass(slots=True)
class _Lane:
    semaphore: asyncio.Semaphore
    users: int = 0


@dataclass
class _Lanes:
    """One semaphore per live connection, dropped when its last command finishes."""

    size: int
    lanes: dict[int, _Lane] = field(default_factory=dict)

    def enter(self, link: Link) -> _Lane:
        # id() is safe as a key: the entry lives only while a command holds `link`.
        lane = self.lanes.get(id(link))
        if lane is None:
            lane = self.lanes[id(link)] = _Lane(asyncio.Semaphore(self.size))
        lane.users += 1
        return lane

    def users(self, link: Link) -> int:
        """Commands of `link` running or waiting for a slot."""
        lane = self.lanes.get(id(link))
        return 0 if lane is None else lane.users

    def leave(self, link: Link, lane: _Lane) -> None:
        lane.users -= 1
        if lane.users == 0:
            del self.lanes[id(link)]


def client_ssl(settings: Settings) -> ssl.SSLContext | bool:
    """TLS for the local API: verified against `restApi.caFile` (or the system CAs)."""
    if not settings.rest_api_verify:
        return False
    ca_file = str(settings.rest_api_ca_file) if settings.rest_api_ca_file else None
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class CommandProxy:
    """Carries out COMMAND requests against the local REST API (a `CommandHandler`).

    Use as ``async with CommandProxy(settings) as proxy:`` (or `start`/`close`): the
    connection pool lives between the two.
    """

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._policy = Policy.from_settings(settings)
        self._base_url = settings.rest_api_base_url.rstrip("/")
        self._clock = clock
        self._lanes = _Lanes(settings.command_max_concurrent)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if not self._settings.rest_api_verify:
            log.warning("rest_api.tls_unverified", base_url=self._base_url)
        connector = aiohttp.TCPConnector(ssl=client_ssl(self._settings), limit=0)
        self._session = aiohttp.ClientSession(
            connector=connector,
            # What the app sends is what the API gets: no guessed Content-Type, and no
            # compression the app did not ask for (the body is handed over as text).
            skip_auto_headers=("Content-Type", "Accept-Encoding"),
            # `command.timeout` over each REST call, as aiohttp keeps it: one timer per
            # request, which `asyncio.timeout` around it would double (CPU every COMMAND
            # pays, issue 14). Not rounded up to a whole second (aiohttp's ceil_threshold).
            timeout=aiohttp.ClientTimeout(
                total=self._settings.command_timeout_s, ceil_threshold=math.inf
            ),
            # No cookie crosses from one group's COMMAND to another's (see the docstring).
            cookie_jar=aiohttp.DummyCookieJar(),
            # Inflated by `_read_body` in counted steps, never whole before the cap applies.
            auto_decompress=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> CommandProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def __call__(self, request: Message, link: CommandLink) -> Message:
        started = time.perf_counter()
        checked = check_command(request.payload, self._policy)
        if isinstance(checked, Refusal):
            answer = _refused(checked)
            method, uri = loggable_method_and_uri(request.payload)
        elif self._lanes.users(link) >= self._settings.command_max_queued:
            method, uri = checked.method, checked.loggable_uri
            answer = _own_answer(
                503, f"this connection already has {self._settings.command_max_queued} "
                "COMMANDs running or waiting (command.maxQueued); try again later"
            )
        else:
            method, uri = checked.method, checked.loggable_uri
            lane = self._lanes.enter(link)
            try:
                async with lane.semaphore:
                    link.command_reached_api(request)
                    answer = await self._call_api(checked)
            finally:
                self._lanes.leave(link, lane)
        response, answer = self._respond(request, answer)
        self._record(request, link, method, uri, answer, time.perf_counter() - started)
        return response

    def _respond(self, request: Message, answer: Answer) -> tuple[Message, Answer]:
        """The COMMAND RESPONSE carrying `answer`, or a 502 when its frame would exceed
        `message.maxBytes` (the endpoint would drop it, and the connection with it)."""
        response = response_to(request, answer.payload(), self._clock())
        max_bytes = self._settings.message_max_bytes
        frame_size = _oversized_frame(response, answer, max_bytes)
        if frame_size is None:
            return response, answer
        too_large = _own_answer(
            502, f"the REST API's answer ({answer.size} bytes of body) makes a frame of "
            f"{frame_size} bytes once JSON-escaped, over message.maxBytes ({max_bytes})"
        )
        return response_to(request, too_large.payload(), self._clock()), too_large

    async def _call_api(self, api_request: ApiRequest) -> Answer:
        if self._session is None:
            raise RuntimeError("CommandProxy used before start()")
        url = URL(self._base_url + api_request.target, encoded=True)
        try:
            # The session's timeout (`command.timeout`) covers connect, send and reading
            # the whole body.
            async with self._session.request(
                api_request.method,
                url,
                # The checked pairs as they are: aiohttp builds its own multidict.
                headers=api_request.headers,
                data=api_request.body,
                allow_redirects=False,
            ) as response:
                raw = await self._read_body(response)
                return _api_answer(response.status, response.headers, raw)
        except TimeoutError:
            seconds = self._settings.command_timeout_s
            return _own_answer(504, f"the REST API did not answer within {seconds:g} s")
        except _ResponseTooLarge as exc:
            limit = self._settings.command_max_body_bytes
            return _own_answer(
                502, f"the REST API's response body ({exc.size} bytes or more) exceeds "
                f"command.maxBodyBytes ({limit})"
            )
        except _UnreadableBody as exc:
            return _own_answer(502, f"the REST API's response body cannot be read: {exc}")
        except aiohttp.ClientError as exc:
            return _own_answer(502, f"the REST API cannot be reached: {describe(exc)}")
        except Exception as exc:  # a failure must become a response, never end the session
            return _own_answer(502, f"the call failed unexpectedly ({type(exc).__name__})")

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes:
        """The whole body, decoded from its content coding, or `_ResponseTooLarge` as soon
        as it passes the cap: compressed or not, never more than the cap plus one read
        is held."""
        limit = self._settings.command_max_body_bytes
        coding = response.headers.get("Content-Encoding", "identity").strip().lower()
        identity = coding in ("", "identity")
        length = response.content_length
        if identity and length is not None:
            if length > limit:
                raise _ResponseTooLarge(length)
            # The common case: length known and within the cap, nothing to inflate.
            return await response.read()
        inflate = None if identity else _decompressor(coding)
        chunks: list[bytes] = []
        size = 0
        received = False
        async for chunk in response.content.iter_chunked(_READ_CHUNK):
            if not received and not identity and inflate is None:
                raise _UnreadableBody(f"content coding {coding[:40]!r} is not supported")
            received = True
            for piece in _inflated(inflate, chunk, limit - size):
                size += len(piece)
                if size > limit:
                    raise _ResponseTooLarge(size)
                chunks.append(piece)
        # An empty body (204, 304) needs no decoding, whatever Content-Encoding says.
        if inflate is not None and received and not inflate.eof:
            raise _UnreadableBody(f"the {coding} stream ends early")
        return b"".join(chunks)

    def _record(
        self, request: Message, link: Link, method: str, uri: str, answer: Answer, took: float
    ) -> None:
        _commands_counted(answer.status).inc()
        metrics.COMMAND_SECONDS.observe(took)
        event = log.info if answer.reason is None else log.warning
        event(
            "command.done",
            id=request.id,
            group=link.group_id,
            host=link.host_name,
            method=method,
            uri=uri,
            status=answer.status,
            duration_ms=round(took * 1000, 3),
            bytes=answer.size,
            **({"reason": answer.reason} if answer.reason else {}),
        )


@functools.lru_cache(maxsize=64)
def _commands_counted(status: int) -> Any:
    """The `nbwss_commands_total` child of one status (prometheus' `labels` lookup costs
    a COMMAND more than the count itself)."""
    return metrics.COMMANDS.labels(status=str(status))


def _api_answer(status: int, headers: CIMultiDictProxy[str], raw: bytes) -> Answer:
    # Hop-by-hop headers describe the daemon's HTTP connection to the API, not the answer.
    hop_by_hop = (
        HOP_BY_HOP | connection_options(headers.items()) if "Connection" in headers
        else HOP_BY_HOP
    )  # fmt: skip
    names: dict[str, str] = {}
    for raw_name, raw_value in headers.items():
        # `_text` only for what is not ASCII (rare): a call per header costs every COMMAND.
        key = (raw_name if raw_name.isascii() else _text(raw_name)).lower()
        value = raw_value if raw_value.isascii() else _text(raw_value)
        if key in hop_by_hop:
            continue
        names[key] = f"{names[key]}, {value}" if key in names else value
    if "content-encoding" in names:
        for key in _DECODED_BODY_HEADERS:
            names.pop(key, None)
    return Answer(status, names, raw.decode("utf-8", errors="replace"), len(raw))


def _oversized_frame(response: Message, answer: Answer, max_bytes: int) -> int | None:
    """The frame's size in bytes if it exceeds `max_bytes`, else None.

    JSON escaping takes at most 6 bytes per character (`\\u0001`), so when six times
    the body, headers and id, plus the envelope's own text, fits, the frame is not
    encoded twice: only large answers are measured."""
    headers = answer.headers
    characters = (len(answer.body) + len(response.id) + 8 * len(headers)
                  + sum(map(len, headers)) + sum(map(len, headers.values())))  # fmt: skip
    if 6 * characters + _ENVELOPE_BYTES <= max_bytes:
        return None
    size = len(encode(response).encode("utf-8"))
    return size if size > max_bytes else None


def _decompressor(coding: str) -> zlib._Decompress | None:
    """A decoder for `coding`, or None when it is not one nbwss can inflate."""
    wbits = _INFLATED_CODINGS.get(coding)
    return None if wbits is None else zlib.decompressobj(wbits)


def _text(header: str) -> str:
    """A header as UTF-8 text: aiohttp keeps bytes that are not UTF-8 as lone surrogates,
    which no frame can carry; they become U+FFFD, as in the body."""
    if header.isascii():
        return header
    return header.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _inflated(
    inflate: zlib._Decompress | None, chunk: bytes, room: int
) -> list[bytes]:
    """`chunk` decoded, in pieces of at most `room + 1` bytes (enough to see the cap
    passed): a bomb stops at the cap instead of inflating whole."""
    if inflate is None:
        return [chunk]
    trailing = _UnreadableBody("data after the end of the compressed stream (a second member?)")
    if inflate.eof and chunk:
        raise trailing
    pieces: list[bytes] = []
    pending = chunk
    try:
        while not inflate.eof:
            wanted = max(room, 0) + 1
            piece = inflate.decompress(pending, wanted)
            pieces.append(piece)
            room -= len(piece)
            pending = inflate.unconsumed_tail
            # A full piece may leave output inside zlib even when the input is all read.
            if room < 0 or (not pending and len(piece) < wanted):
                break
    except zlib.error as exc:
        raise _UnreadableBody(f"the compressed body is corrupt ({exc})") from None
    if inflate.eof and inflate.unused_data:
        raise trailing
    return pieces
