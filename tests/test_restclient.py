"""The poller's REST client, unit by unit: versions, query strings, pages, error bodies.

End to end (login, paging, negotiation against the stand-in over HTTPS) is in
test_poller.py; here the pure parts, with plain values.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from structlog.testing import capture_logs

from nbwss.sources.apiversion import KNOWN_VERSIONS, VersionNegotiation, jobs_use_cursor
from nbwss.sources.restclient import (
    ApiUnavailableError,
    Credentials,
    RestClient,
    describe_error,
    encode_query,
    parse_cursor_page,
    parse_page,
)

FIXTURES = Path(__file__).parent / "fixtures" / "netbackup-api"


def test_auto_steps_down_one_version_per_406_and_remembers() -> None:
    negotiation = VersionNegotiation()
    assert negotiation.current == KNOWN_VERSIONS[0] == "14.0"
    assert negotiation.on_refused("14.0") == "13.0"
    assert negotiation.on_refused("13.0") == "12.0"
    assert negotiation.on_accepted("12.0") is True  # news: logged once
    assert negotiation.on_accepted("12.0") is False
    assert negotiation.accepted == negotiation.current == "12.0"


def test_a_406_for_the_accepted_version_starts_again_from_the_newest() -> None:
    negotiation = VersionNegotiation()
    for version in KNOWN_VERSIONS[:-1]:
        negotiation.on_refused(version)
    negotiation.on_accepted("1.0")
    assert negotiation.on_refused("1.0") == "14.0"  # the server was upgraded
    assert negotiation.accepted is None
    assert negotiation.on_refused("14.0") == "13.0"


def test_nothing_left_after_the_oldest_and_the_next_call_starts_over() -> None:
    negotiation = VersionNegotiation()
    for version in KNOWN_VERSIONS[:-1]:
        assert negotiation.on_refused(version) is not None
    assert negotiation.on_refused("1.0") is None
    assert negotiation.current == "14.0"


def test_a_406_another_poll_already_stepped_past_changes_nothing() -> None:
    negotiation = VersionNegotiation()
    negotiation.on_refused("14.0")
    assert negotiation.on_refused("14.0") == "13.0"  # the other poll's late 406
    assert negotiation.current == "13.0"


def test_a_fixed_version_is_never_changed() -> None:
    negotiation = VersionNegotiation("12.0")
    assert negotiation.current == "12.0"
    assert negotiation.on_refused("12.0") is None
    assert negotiation.current == "12.0"


@pytest.mark.parametrize(("version", "cursor"), [("1.0", False), ("8.0", False),
                                                 ("9.0", True), ("14.0", True)])
def test_jobs_page_by_cursor_from_api_9(version: str, cursor: bool) -> None:
    assert jobs_use_cursor(version) is cursor


def test_queries_use_percent_20_never_plus() -> None:
    query = encode_query([("filter", "lastUpdateTime gt 2016-04-05T04:14:58.000Z"),
                          ("sort", "-lastUpdateTime"), ("page[limit]", "100"),
                          ("page[after]", "a+b/c=")])
    assert query == ("filter=lastUpdateTime%20gt%202016-04-05T04%3A14%3A58.000Z"
                     "&sort=-lastUpdateTime&page%5Blimit%5D=100&page%5Bafter%5D=a%2Bb%2Fc%3D")
    assert "+" not in query
    assert encode_query([("filter", "clientName eq 'a b'")]) == \
        "filter=clientName%20eq%20'a%20b'"


def test_a_netbackup_error_body_is_read_into_one_line() -> None:
    body = (FIXTURES / "error-400.json").read_bytes()
    assert describe_error(400, body) == (
        "HTTP 400, NetBackup error 8961: An invalid API request is encountered. "
        "('1212Invalid'. Invalid role ID format. Role ID must be a numeric value.)")
    attributes = json.dumps({"errorCode": 9, "errorMessage": "m",
                             "attributeErrors": {"filter": "bad"}}).encode()
    assert describe_error(400, attributes) == "HTTP 400, NetBackup error 9: m (filter: bad)"
    assert describe_error(502, b"<html>gateway</html>") == "HTTP 502"
    assert describe_error(500, b'{"errorCode": 5, "errorMessage": "m", "errorDetails": "x"}') \
        == "HTTP 500, NetBackup error 5: m"
    assert len(describe_error(400, json.dumps(
        {"errorCode": 1, "errorMessage": "x" * 1000}).encode())) == 300


def test_offset_pages_that_are_not_the_documented_shape_are_refused() -> None:
    assert parse_page({"data": [], "meta": {"pagination": {"offset": 0}}}, 0, 10).next_offset \
        is None
    assert parse_page({"data": [{"attributes": {}}] * 2}, 4, 2).next_offset == 6
    assert parse_page({"data": [{"attributes": {}}]}, 4, 2).next_offset is None
    bodies: list[Any] = [{"errors": []}, [], {"data": [1]},
                         {"data": [], "meta": {"pagination": {"next": 0}}},
                         {"data": [], "meta": {"pagination": {"next": "abc"}}}]
    for body in bodies:
        with pytest.raises(ApiUnavailableError, match="malformed"):
            parse_page(body, 0, 10)


def test_cursor_pages_follow_a_string_next_and_stop_at_none_or_empty() -> None:
    page = parse_cursor_page({"data": [{"attributes": {}}],
                              "meta": {"pagination": {"limit": 1, "next": "Mg"}}})
    assert (page.next_cursor, page.range_truncated) == ("Mg", False)
    for pagination in ({}, {"next": ""}, {"limit": 2}):
        assert parse_cursor_page({"data": [], "meta": {"pagination": pagination}}) \
            .next_cursor is None
    # Veritas's example response has no meta at all: one page.
    example = json.loads((FIXTURES / "admin-jobs-example.json").read_text())
    assert parse_cursor_page(example).next_cursor is None
    truncated = parse_cursor_page({"data": [], "meta": {"pagination": {
        "next": "Mw", "rangeTruncated": True}}})
    assert truncated.range_truncated is True
    for bad in ({"next": 2}, {"rangeTruncated": "yes"}):
        with pytest.raises(ApiUnavailableError, match="malformed"):
            parse_cursor_page({"data": [], "meta": {"pagination": bad}})


# -- a truncated range, over real HTTP ----------------------------------------------------------


async def list_jobs_from(pages: dict[str, dict[str, Any]],
                         credentials: Credentials | None = None,
                         login: dict[str, Any] | None = None) -> list[Any]:
    """List /admin/jobs from a tiny server that answers `pages` by `page[after]` (and
    `login` to POST /login)."""

    async def jobs(request: web.Request) -> web.Response:
        return web.json_response(pages[request.query.get("page[after]", "")])

    async def log_in(_: web.Request) -> web.Response:
        return web.json_response(login, status=201)

    app = web.Application()
    app.router.add_get("/netbackup/admin/jobs", jobs)
    app.router.add_post("/netbackup/login", log_in)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with ClientSession() as session:
            client = RestClient(f"http://{host}:{port}", credentials or Credentials(
                api_key="k"), session, 2)
            return await client.list_all("/admin/jobs", [], jobs_use_cursor)
    finally:
        await runner.cleanup()


async def test_a_login_answer_with_only_a_token_is_taken_as_bearer() -> None:
    """Whether an 8.1.1 login answers tokenType and validity is not documented."""
    with capture_logs() as events:
        records = await list_jobs_from({"": job_page(1)},
                                       Credentials(user_name="u", password="p"),
                                       {"token": "jwt-0123456789", "tokenType": None})
    assert [r["id"] for r in records] == ["1"]
    assert [e["validity_s"] for e in events if e["event"] == "poller.logged_in"] == [None]


def job_page(*ids: int, **pagination: Any) -> dict[str, Any]:
    return {"data": [{"id": str(i), "attributes": {"jobId": i}} for i in ids],
            "meta": {"pagination": pagination}}


async def test_a_truncated_range_is_logged_and_followed_never_taken_as_complete() -> None:
    with capture_logs() as events:
        records = await list_jobs_from({"": job_page(1, 2, next="c2", rangeTruncated=True),
                                        "c2": job_page(3)})
    assert [r["id"] for r in records] == ["1", "2", "3"]
    assert [e["more"] for e in events if e["event"] == "poller.range_truncated"] == [True]
    with pytest.raises(ApiUnavailableError, match="range truncated, no cursor"):
        await list_jobs_from({"": job_page(1, 2, rangeTruncated=True)})


async def test_a_cursor_that_does_not_move_on_is_refused() -> None:
    with pytest.raises(ApiUnavailableError, match="does not move on"):
        await list_jobs_from({"": job_page(1, next="c"), "c": job_page(2, next="c")})


def test_an_integer_too_long_for_python_fails_its_record_not_the_page() -> None:
    """A 5,000-digit number (past Python's int-string limit) would fail `json.loads` for the
    whole page, and so the poll, forever; it is read as inf, which its record's mapping
    refuses (the record set aside, the other records of the page reported)."""
    from nbwss.sources.mapping import MalformedRecordError, parse_time
    from nbwss.sources.restclient import Answer, _json

    body = b'{"data": [{"id": "1", "startTime": ' + b"9" * 5000 + b'}, {"id": "2"}]}'
    page = _json(Answer(200, body, "10.5"), "/admin/jobs")
    assert page["data"][0]["startTime"] == math.inf
    assert page["data"][1] == {"id": "2"}
    with pytest.raises(MalformedRecordError, match="startTime is not a time: inf"):
        parse_time(page["data"][0]["startTime"], "startTime")
