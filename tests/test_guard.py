"""The COMMAND guard: pure checks, no I/O. Hypothesis hunts for paths that escape."""

from __future__ import annotations

import gc
import secrets
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbwss.guard import (
    ApiRequest,
    Policy,
    Refusal,
    check_command,
    check_headers,
    check_uri,
    loggable_uri,
)

POLICY = Policy()
PREFIXES = POLICY.allowed_prefixes


def command(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "uri": "/netbackup/config/servers/vmservers",
        "method": "GET",
        "headers": {"Content-Type": "application/json", "Authorization": "eyJ0"},
    }
    payload.update(changes)
    return payload


def accepted(payload: Any, policy: Policy = POLICY) -> ApiRequest:
    result = check_command(payload, policy)
    assert isinstance(result, ApiRequest), result
    return result


def refused(payload: Any, policy: Policy = POLICY) -> Refusal:
    result = check_command(payload, policy)
    assert isinstance(result, Refusal), result
    return result


def test_the_guides_post_passes_unchanged() -> None:
    parameters = '{"serverName": "vcenterServer1", "port": 0}'
    request = accepted(command(method="POST", parameters=parameters))
    assert request.method == "POST"
    assert request.target == "/netbackup/config/servers/vmservers"
    assert request.headers == (("Content-Type", "application/json"), ("Authorization", "eyJ0"))
    assert request.body == parameters.encode()


def test_headers_and_parameters_are_optional() -> None:
    request = accepted({"uri": "/netbackup/admin/jobs", "method": "GET"})
    assert request.headers == ()
    assert request.body is None


def test_query_is_kept_verbatim() -> None:
    uri = "/netbackup/admin/jobs?filter=lastUpdateTime%20gt%202016-04-05T00:00:00Z&page[limit]=5"
    assert accepted(command(uri=uri)).target == uri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("/netbackup/config/../admin/jobs", "/netbackup/admin/jobs"),
        ("/netbackup/./admin/./jobs", "/netbackup/admin/jobs"),
        ("/netbackup/%61dmin/jobs", "/netbackup/admin/jobs"),
        ("/netbackup/config/servers/vmservers/vCenter2.domain.com",
         "/netbackup/config/servers/vmservers/vCenter2.domain.com"),
        ("/netbackup/catalog/images/", "/netbackup/catalog/images/"),
        ("/netbackup/a/b/..", "/netbackup/a/"),
        ("/netbackup/caf%C3%A9", "/netbackup/caf%C3%A9"),
        ("/netbackup/a%20b", "/netbackup/a%20b"),
    ],
)
def test_paths_are_sent_in_canonical_form(uri: str, expected: str) -> None:
    assert check_uri(uri, PREFIXES) == (expected, "")


@pytest.mark.parametrize(
    ("uri", "status"),
    [
        ("https://evil.example/netbackup/admin", 400),
        ("http://localhost:1556/netbackup/admin/jobs", 400),
        ("//evil.example/netbackup/", 400),
        ("netbackup/admin/jobs", 400),
        ("/netbackup\\..\\admin", 400),
        ("/netbackup/admin/jobs#frag", 400),
        ("/netbackup/admin jobs", 400),
        ("/netbackup/\r\nHost: evil", 400),
        ("/netbackup/\u00e9", 400),
        ("/netbackup/%zz", 400),
        ("/netbackup/%", 400),
        ("/netbackup/%ff", 400),
        ("", 400),
        ("/netbackup/../admin", 403),
        ("/netbackup/%2e%2e/admin", 403),
        ("/netbackup/%2E%2E/admin", 403),
        ("/netbackup/.%2e/admin", 403),
        ("/netbackup/%2e./admin", 403),
        ("/netbackup/config/../../admin", 403),
        ("/netbackup%2f..%2fadmin", 403),
        ("/netbackup/..%2fadmin", 403),
        ("/netbackup/..%5cadmin", 403),
        ("/netbackup/%252e%252e/admin", 403),
        ("/netbackup/..;/admin", 403),
        ("/netbackup;jsessionid=1/admin", 403),
        ("/netbackup/x%3B/admin", 403),
        ("/netbackup/%00/admin", 403),
        ("/netbackup/%0d%0a/admin", 403),
        ("/netbackup/%EF%BC%8E%EF%BC%8E/admin", 403),  # full-width dots
        ("/netbackup//admin", 403),
        ("/netbackup", 403),
        ("/admin/jobs", 403),
        ("/NETBACKUP/admin/jobs", 403),
        ("/netbackupx/admin", 403),
    ],
)
def test_uris_that_could_escape_are_refused(uri: str, status: int) -> None:
    refusal = refused(command(uri=uri))
    assert (refusal.status, refusal.field) == (status, "uri")
    assert refusal.reason


@pytest.mark.parametrize("uri", [None, 7, ["/netbackup/"], {"path": "/netbackup/"}])
def test_a_uri_that_is_not_a_string_is_malformed(uri: Any) -> None:
    assert refused(command(uri=uri)).status == 400


def test_a_missing_uri_is_malformed() -> None:
    payload = command()
    del payload["uri"]
    assert refused(payload).field == "uri"


@pytest.mark.parametrize(
    ("method", "status"),
    [(None, 400), ("", 400), (1, 400), ("TRACE", 403), ("CONNECT", 403), ("get", 400),
     ("Post", 400), ("trace", 403), ("OPTIONS", 403), ("GET\r\n", 403)],
)
def test_methods_outside_the_list_are_refused(method: Any, status: int) -> None:
    refusal = refused(command(method=method))
    assert (refusal.status, refusal.field) == (status, "method")
    assert "\r" not in refusal.reason


def test_a_lower_case_method_is_malformed_and_the_reason_says_so() -> None:
    assert refused(command(method="delete")).reason == "delete must be upper-case (DELETE)"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_the_listed_methods_pass(method: str) -> None:
    assert accepted(command(method=method)).method == method


def test_head_is_not_in_the_specs_list_and_is_refused() -> None:
    refusal = refused(command(method="HEAD"))
    assert (refusal.status, refusal.field) == (403, "method")
    assert refusal.reason == "HEAD is not allowed (allowed: DELETE, GET, PATCH, POST, PUT)"


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Evil": "a\r\nHost: evil"},
        {"X-Evil": "a\nb"},
        {"X-Evil\r\nHost": "evil"},
        {"X-Evil": "a\x00b"},
        {"Bad Name": "x"},
        {"": "x"},
        {"X-Number": 7},
        {"X-Surrogate": "\ud800"},
        {"X-List": ["a"]},
        ["Content-Type", "application/json"],
        "Content-Type: application/json",
    ],
)
def test_malformed_headers_are_refused(headers: Any) -> None:
    refusal = refused(command(headers=headers))
    assert (refusal.status, refusal.field) == (400, "headers")


def test_a_header_set_seen_before_gets_the_same_answer() -> None:
    # A number equal to an accepted string's value, or a repeat after a refusal, gets
    # its own answer (the check was once cached by the header pairs).
    assert accepted(command(headers={"X-Number": "1"})).headers == (("X-Number", "1"),)
    assert refused(command(headers={"X-Number": 1})).field == "headers"
    assert refused(command(headers={"X-Number": True})).field == "headers"
    assert refused(command(headers={"X-List": ["1"]})).field == "headers"
    assert accepted(command(headers={"X-Number": "1"})).headers == (("X-Number", "1"),)


def test_hop_by_hop_and_host_headers_are_dropped() -> None:
    headers = {
        "Host": "evil.example", "Connection": "keep-alive, X-Secret-Hop",
        "Keep-Alive": "timeout=5", "Proxy-Authorization": "Basic x", "TE": "trailers",
        "Trailer": "X", "Transfer-Encoding": "chunked", "Upgrade": "h2c",
        "Content-Length": "999", "X-Secret-Hop": "1", "proxy-connection": "close",
        "Authorization": "jwt", "Accept": "application/vnd.netbackup+json;version=1.0",
        "X-Tab": "a\tb",
    }
    request = accepted(command(headers=headers))
    assert request.headers == (
        ("Authorization", "jwt"), ("Accept", "application/vnd.netbackup+json;version=1.0"),
        ("X-Tab", "a\tb"),
    )


ROUTING_HEADERS = [
    "X-HTTP-Method-Override", "x-http-method-override", "X-HTTP-Method", "X-Method-Override",
    "X-Original-URL", "x-original-url", "X-Rewrite-URL", "X-Original-URI", "Forwarded",
    "FORWARDED", "X-Forwarded-For", "X-Forwarded-Host", "x-forwarded-proto",
    "X-Forwarded-Prefix", "X-FORWARDED-PORT", "X-Real-IP", "Client-IP", "True-Client-IP",
]


@pytest.mark.parametrize("name", ROUTING_HEADERS)
def test_headers_that_reroute_a_request_are_dropped_whatever_their_case(name: str) -> None:
    headers = {name: "DELETE" if "ethod" in name else "/netbackup/../admin", "Accept": "x"}
    assert accepted(command(headers=headers)).headers == (("Accept", "x"),)


@pytest.mark.parametrize("parameters", [7, {"serverName": "x"}, ["x"], True])
def test_parameters_that_are_not_a_string_are_malformed(parameters: Any) -> None:
    refusal = refused(command(method="POST", parameters=parameters))
    assert (refusal.status, refusal.field) == (400, "parameters")


def test_a_body_over_the_cap_is_refused() -> None:
    policy = Policy(max_body_bytes=10)
    assert accepted(command(method="POST", parameters="x" * 10), policy).body == b"x" * 10
    refusal = refused(command(method="POST", parameters="\u00e9" * 6), policy)  # 12 bytes
    assert (refusal.status, refusal.field) == (403, "parameters")
    assert "12 bytes" in refusal.reason


def test_a_lone_surrogate_body_is_malformed() -> None:
    assert refused(command(method="POST", parameters="\ud800")).status == 400


@pytest.mark.parametrize("payload", [None, [], "GET /netbackup/", 3])
def test_a_payload_that_is_not_an_object_is_malformed(payload: Any) -> None:
    assert refused(payload).field == "payload"


def test_other_prefixes_can_be_allowed() -> None:
    policy = Policy(allowed_prefixes=("/netbackup/admin", "/netbackup/catalog/"))
    assert accepted(command(uri="/netbackup/admin"), policy).path == "/netbackup/admin"
    assert accepted(command(uri="/netbackup/admin/jobs"), policy)
    assert refused(command(uri="/netbackup/administrator"), policy).status == 403
    assert refused(command(uri="/netbackup/config/servers"), policy).status == 403


def test_refusal_body_names_the_problem() -> None:
    body = refused(command(uri="/netbackup/../admin")).body()
    assert body["errorCode"] == 403
    assert body["field"] == "uri"
    assert body["errorMessage"].startswith("uri: ")


def test_logged_uris_lose_query_values() -> None:
    uri = "/netbackup/admin/jobs?filter=clientName%20eq%20'secret'&page[limit]=5&flag"
    assert loggable_uri(uri) == "/netbackup/admin/jobs?filter=&page[limit]=&flag="
    assert loggable_uri("/netbackup/admin/jobs") == "/netbackup/admin/jobs"


# -- properties --------------------------------------------------------------------------

# Pieces that traversal tricks are made of, so Hypothesis spends its time where bugs are.
_PIECES = st.sampled_from(
    [
        "/", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%25", "%", "2e", ";", "\\",
        "netbackup", "admin", "a", "?", "#", "//", "%00", "%0a", "\r", "\n", " ", "\u00e9",
        "\uff0e", "%EF%BC%8E", "%C3%A9", "http:", "@", ":", "~", "+",
    ]
)
_URIS = st.builds(
    lambda start, pieces: start + "".join(pieces),
    st.sampled_from(["", "/", "/netbackup/", "/netbackup", "//"]),
    st.lists(_PIECES, max_size=12),
)

# Whole segments, mostly well-formed, so that many reach the dot-segment logic.
_SEGMENTS = st.sampled_from(
    [
        "..", ".", "%2e%2e", "%2E.", ".%2e", "%2e", "a", "admin", "netbackup", "%252e%252e",
        "%25", "%2f", "..;", "%C3%A9", "%EF%BC%8E", "", "jobs", "%61dmin", "%3B", "%5C",
    ]
)
_SEGMENTED_URIS = st.builds(
    lambda start, segments: start + "/".join(segments),
    st.sampled_from(["/", "/netbackup/"]),
    st.lists(_SEGMENTS, max_size=6),
)


@settings(max_examples=400)
@given(_SEGMENTED_URIS | _URIS | st.text(max_size=60))
def test_every_accepted_path_is_canonical_and_under_the_prefix(uri: str) -> None:
    result = check_uri(uri, PREFIXES)
    if isinstance(result, Refusal):
        assert result.status in (400, 403)
        return
    path, _query = result
    assert path.startswith("/netbackup/")
    decoded = unquote(path)
    segments = decoded.split("/")
    assert "." not in segments
    assert ".." not in segments
    assert "%" not in decoded
    assert ";" not in decoded
    assert "\\" not in decoded
    assert all(ord(c) >= 0x20 and c != "\x7f" for c in decoded)
    # What the API receives reads the same when checked again: nothing left to decode.
    assert check_uri(path, PREFIXES) == (path, "")


@given(
    st.dictionaries(
        st.text(max_size=12), st.text(max_size=20) | st.integers() | st.none(), max_size=6
    )
)
def test_forwarded_headers_never_carry_line_breaks_or_hop_by_hop(headers: dict[str, Any]) -> None:
    result = check_command(command(headers=headers), POLICY)
    if isinstance(result, Refusal):
        assert (result.status, result.field) == (400, "headers")
        return
    for name, value in result.headers:
        assert "\r" not in name + value
        assert "\n" not in name + value
        assert name.lower() not in {"host", "connection", "transfer-encoding", "upgrade"}


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12))
def test_any_json_payload_is_answered_not_raised(payload: Any) -> None:
    assert isinstance(check_command(payload, POLICY), ApiRequest | Refusal)


def test_checked_headers_are_not_kept_after_the_call() -> None:
    """No cache of header sets: it would keep the app's Authorization values after their
    call (and up to 256 sets of 100 values of 16 KiB)."""
    token = "Bearer " + secrets.token_hex(32)
    assert check_headers({"Authorization": token, "Accept": "application/json"}) != ()
    assert not [holder for holder in gc.get_referrers(token) if isinstance(holder, tuple)]


def test_long_header_names_are_judged_as_short_ones() -> None:
    """Rules of names up to 64 characters are remembered; longer ones are worked out
    each call, with the same answer."""
    routed, kept = "X-Forwarded-" + "a" * 80, "X-" + "b" * 100
    request = accepted(command(headers={routed: "1", kept: "2", "Accept": "x"}))
    assert request.headers == ((kept, "2"), ("Accept", "x"))
    refusal = refused(command(headers={"X-" + "c" * 100 + " bad": "1"}))
    assert (refusal.status, refusal.field) == (400, "headers")
    listed = accepted(command(headers={"Connection": kept, kept: "2", "Accept": "x"}))
    assert listed.headers == (("Accept", "x"),)
