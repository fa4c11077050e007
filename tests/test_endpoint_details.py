"""Endpoint details: the guide's example, every invalid case of its error table, fuzzing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given

from nbwss.endpoints import (
    JAVA_INT_MAX,
    JAVA_INT_MIN,
    EndpointDetails,
    check_wss_url,
    details_from_object,
    details_to_json,
    parse_details,
)
from nbwss.errors import MSG_INCORRECT_URL, MSG_INVALID_JSON, MSG_ONLY_WSS, DetailsError
from tests.conftest import SPEC_EXAMPLES
from tests.strategies import arbitrary_details, json_values, to_text, valid_details

EXAMPLE = SPEC_EXAMPLES / "endpoint-details.json"

GOOD: dict[str, Any] = {
    "token": "MIID4TCCAsmgAwIBAgIEBZCDRzANBgkqhkiG9w0B==",
    "priority": 1,
    "groupId": "GROUPID1",
    "hostName": "vrhel6u5-vm4.acme.com",
    "url": "wss://vrhel6u5-vm4.acme.com:14146/cfs/nbufacade",
}


def with_(**changes: Any) -> str:
    obj = {**GOOD, **changes}
    return json.dumps({key: value for key, value in obj.items() if value is not None})


def without(key: str) -> str:
    return json.dumps({k: v for k, v in GOOD.items() if k != key})


def refusal(text: str | bytes) -> str:
    with pytest.raises(DetailsError) as caught:
        parse_details(text)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_the_guides_example_file_is_valid() -> None:
    details = parse_details(EXAMPLE.read_bytes())
    assert details.priority == 1
    assert details.group_id == "GROUPID1"
    assert details.host_name == "vrhel6u5-vm4.acme.com"
    assert details.url == "wss://vrhel6u5-vm4.acme.com:14146/cfs/nbufacade"
    assert details.token == json.loads(EXAMPLE.read_bytes())["token"]
    assert (details.server_host, details.port) == ("vrhel6u5-vm4.acme.com", 14146)


def test_keys_in_any_order_and_surrounding_white_space_trimmed() -> None:
    text = json.dumps({"url": " wss://h/p ", "hostName": "h ", "groupId": " g", "priority": -3,
                       "token": "  t "})
    assert parse_details(text) == EndpointDetails("t", -3, "g", "h", "wss://h/p")
    assert parse_details(text.encode()).port == 443


def test_repr_never_shows_the_token() -> None:
    assert GOOD["token"] not in repr(parse_details(with_()))


# Every invalid case of the guide's error table (spec section 2).
INVALID_CONTENTS = [
    *[pytest.param(with_(**{key: ""}), id=f"empty-{key}") for key in ("token", "groupId",
                                                                        "hostName", "url")],
    *[pytest.param(with_(**{key: " \t "}), id=f"blank-{key}") for key in ("token", "groupId",
                                                                            "hostName", "url")],
    *[pytest.param(without(key), id=f"missing-{key}") for key in GOOD],
    pytest.param(with_(priority="1"), id="quoted-priority"),
    pytest.param(with_(priority=True), id="bool-priority"),
    pytest.param(with_(priority=1.0), id="float-priority"),
    pytest.param(with_(priority=None), id="null-priority"),
    pytest.param(with_(priority=JAVA_INT_MAX + 1), id="priority-beyond-java-int"),
    pytest.param(with_(priority=JAVA_INT_MIN - 1), id="priority-below-java-int"),
    pytest.param(with_(priority=10**30), id="huge-priority"),
    pytest.param(with_(token=42), id="number-token"),
    pytest.param(with_(groupId=["GROUPID1"]), id="list-groupId"),
    pytest.param(with_(hostName={"h": 1}), id="object-hostName"),
    pytest.param(with_(url=True), id="bool-url"),
    pytest.param(with_(token="abc'def"), id="apostrophe-token"),
    pytest.param(with_(groupId="it's"), id="apostrophe-groupId"),
    pytest.param(with_(hostName="'h"), id="apostrophe-hostName"),
    pytest.param(with_(url="wss://h/'"), id="apostrophe-url"),
    pytest.param(with_(**{"note's": "x"}), id="apostrophe-in-a-key"),
    pytest.param(with_(extra={"deep": ["a", {"b": "c'"}]}), id="apostrophe-nested"),
    pytest.param(with_(token="a\nb"), id="control-character"),
    pytest.param(json.dumps([GOOD]), id="a-list"),
    pytest.param(json.dumps([GOOD, GOOD]), id="a-list-of-two"),
    pytest.param('"details"', id="a-string"),
    pytest.param("", id="empty-file"),
    pytest.param("{token: 1}", id="not-json"),
    pytest.param(b"\xff\xfe{}", id="not-utf8"),
    pytest.param(with_()[:-1] + ',"token":"again"}', id="duplicate-key"),
    pytest.param('{"a":' * 40 + "1" + "}" * 40, id="deep-nesting"),
    pytest.param(with_(extra="x" * 70_000), id="oversize"),
]


@pytest.mark.parametrize("text", INVALID_CONTENTS)
def test_invalid_contents_give_the_guides_message(text: str | bytes) -> None:
    assert refusal(text).startswith(f"{MSG_INVALID_JSON}: ")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ws://h:14146/cfs", MSG_ONLY_WSS),
        ("https://h/cfs", MSG_ONLY_WSS),
        ("http://h", MSG_ONLY_WSS),
        ("h:443/cfs", MSG_ONLY_WSS),
        ("//h/cfs", MSG_ONLY_WSS),
        ("wss://", MSG_INCORRECT_URL),
        ("wss:///path", MSG_INCORRECT_URL),
        ("wss://:443/p", MSG_INCORRECT_URL),
        ("wss:h", MSG_INCORRECT_URL),
        ("wss://h:0", MSG_INCORRECT_URL),
        ("wss://h:65536", MSG_INCORRECT_URL),
        ("wss://h:-1", MSG_INCORRECT_URL),
        ("wss://h:port", MSG_INCORRECT_URL),
        ("wss://[::1", MSG_INCORRECT_URL),
        ("wss://h o/p", MSG_INCORRECT_URL),
    ],
)
def test_bad_urls_give_the_guides_message(url: str, message: str) -> None:
    assert refusal(with_(url=url)).startswith(f"{message}: ")
    with pytest.raises(DetailsError, match=f"^{message}: "):
        check_wss_url(url)


@pytest.mark.parametrize(
    "url", ["wss://h", "WSS://H:1/p?q=1", "wss://127.0.0.1:65535/", "wss://[::1]:8443/x"]
)
def test_good_urls_pass(url: str) -> None:
    assert check_wss_url(url) == url


def test_details_from_object_refuses_non_objects() -> None:
    for value in (None, 1, "x", 1.5, True):
        with pytest.raises(DetailsError, match=f"^{MSG_INVALID_JSON}: expected a JSON object"):
            details_from_object(value)


def test_apostrophe_check_does_not_recurse() -> None:
    deep: Any = "it's"
    for _ in range(5000):  # deeper than Python's recursion limit
        deep = [deep]
    with pytest.raises(DetailsError, match="apostrophe"):
        details_from_object({**GOOD, "extra": deep})


def detail_error(text: str | bytes) -> str | None:
    try:
        parse_details(text)
    except DetailsError as error:
        return str(error)
    return None


@given(arbitrary_details())
def test_arbitrary_input_never_raises_anything_but_details_error(text: str | bytes) -> None:
    error = detail_error(text)
    assert error is None or error.startswith((MSG_INVALID_JSON, MSG_ONLY_WSS, MSG_INCORRECT_URL))
    assert error is None or "\n" not in error


@given(json_values(15))
def test_any_json_value_gives_details_or_details_error(value: Any) -> None:
    try:
        details_from_object(value)
    except DetailsError:
        return
    assert isinstance(value, dict)


@given(valid_details())
def test_valid_details_round_trip(obj: dict[str, Any]) -> None:
    details = parse_details(to_text(obj))
    assert details == EndpointDetails(
        obj["token"], obj["priority"], obj["groupId"], obj["hostName"], obj["url"]
    )
    assert parse_details(details_to_json(details)) == details
