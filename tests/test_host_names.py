"""Host names: what `hostName` may be, and that every command finds one in any case
(issue 11, item 11). A `url` with credentials in it is refused without echoing them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trustme

from nbwss.cli import main
from nbwss.endpoints import EndpointDetails, check_details_url, parse_details
from nbwss.errors import MSG_INCORRECT_URL, MSG_INVALID_JSON, AlreadyExistsError, DetailsError
from nbwss.store import Store
from tests.peers import certificate_der

GOOD: dict[str, Any] = {"token": "t0k3n", "priority": 1, "groupId": "G1",
                        "hostName": "ep1.test", "url": "wss://ep1.test:14146/cfs"}


def parsed(**changes: Any) -> EndpointDetails:
    return parse_details(json.dumps(GOOD | changes))


def refusal(**changes: Any) -> str:
    with pytest.raises(DetailsError) as caught:
        parsed(**changes)
    return str(caught.value)


@pytest.mark.parametrize("host", ["ep1.test", "vrhel6u5-vm4.acme.com", "EP1.Test", "a" * 63,
                                  ".".join(["a" * 63] * 3) + "." + "b" * 61, "10.0.0.7",
                                  "::1", "[fe80::1]", "host_1.corp", "localhost"])
def test_host_names_and_addresses_are_accepted(host: str) -> None:
    assert parsed(hostName=host).host_name == host


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("ep1.test\u202egnp.exe", "'hostName' holds a control character"),  # right-to-left
        ("ep1\u2066.test", "'hostName' holds a control character"),
        ("ep1.test\x9b31m", "'hostName' holds a control character"),  # C1 CSI
        ("ep1.test\x1b[31m", "'hostName' holds a control character"),
        ("a" * 254, "'hostName' is longer than 253 characters"),
        ("a" * 64 + ".test", "expected a host name (letters, digits, hyphens, dots)"),
        ("ep1 test", "expected a host name"),
        ("ep1..test", "expected a host name"),
        ("-ep1.test", "expected a host name"),
        ("ep1.test/x", "expected a host name"),
        ("ép1.test", "'hostName' is '\\xe9p1.test', expected a host name"),
    ],
)
def test_a_host_name_that_is_not_one_is_refused(host: str, expected: str) -> None:
    message = refusal(hostName=host)
    assert message.startswith(f"{MSG_INVALID_JSON}: ")
    assert expected in message
    assert message.isascii()  # nothing reaches a terminal raw
    assert message.isprintable()


@pytest.mark.parametrize("group", ["G1\u202e", "G\x85"])
def test_a_group_id_with_terminal_tricks_is_refused(group: str) -> None:
    assert "'groupId' holds a control character" in refusal(groupId=group)


# With another fault too (scheme, port): the credentials are refused first, never echoed.
@pytest.mark.parametrize("url", ["wss://user:s3cret@ep1.test/cfs", "wss://s3cret@ep1.test/",
                                 "wss://:s3cret@ep1.test:14146/", "ws://admin:s3cret@h/",
                                 "wss://admin:s3cret@h:99999/", "wss://admin:s3cret@[::1/",
                                 "admin:s3cret@h/cfs"])
def test_a_url_with_credentials_is_refused_without_echoing_them(url: str) -> None:
    message = refusal(url=url)
    assert message.startswith(f"{MSG_INCORRECT_URL}: the url holds a user name or password")
    assert "s3cret" not in message


@pytest.mark.parametrize("url", ["https://admin:s3cret@cloud.test/details.json",
                                 "http://admin:s3cret@h/", "https://admin:s3cret@h:x/"])
def test_a_details_url_with_credentials_is_refused_without_echoing_them(url: str) -> None:
    with pytest.raises(DetailsError, match="holds a user name or password") as caught:
        check_details_url(url)
    assert "s3cret" not in str(caught.value)


def test_an_at_sign_in_the_path_or_query_is_not_taken_for_credentials() -> None:
    assert check_details_url("https://cloud.test/a@b?c=d@e") == "https://cloud.test/a@b?c=d@e"


# -- case-blind lookups ----------------------------------------------------------------------


@pytest.fixture
def stored(state_dir: Path) -> Path:
    store = Store(state_dir / "nbwss.db", state_dir / "nbwss.key")
    details = EndpointDetails("token", 1, "G1", "ep1.test", "wss://ep1.test:14146/cfs")
    der = certificate_der(trustme.CA().issue_cert("ep1.test"))
    store.add_endpoint(details, der, "AB:CD")
    store.close()
    return state_dir


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def state(capsys: pytest.CaptureFixture[str], host: str) -> str:
    return str(json.loads(run(capsys, "endpoint", "show", host, "--json")[1])["state"])


def test_every_admin_command_finds_a_host_in_any_case(
    stored: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "endpoint", "show", "EP1.TEST", "--json", "--token")
    assert (code, err) == (0, "")
    shown = json.loads(out)
    assert (shown["hostName"], shown["token"]) == ("ep1.test", "token")
    assert run(capsys, "endpoint", "disable", "Ep1.Test")[0] == 0
    assert state(capsys, "ep1.test") == "DISABLED"
    assert run(capsys, "endpoint", "enable", "EP1.test")[0] == 0
    assert state(capsys, "ep1.TEST") == "ENABLED"
    assert run(capsys, "endpoint", "delete", "EP1.TEST", "--yes")[0] == 0
    code, _, err = run(capsys, "endpoint", "show", "ep1.test")
    assert code == 1
    assert "no entity was found: ep1.test" in err


def test_adding_a_host_that_differs_only_in_case_is_refused(stored: Path) -> None:
    store = Store(stored / "nbwss.db", stored / "nbwss.key")
    try:
        details = EndpointDetails("other", 2, "G2", "EP1.TEST", "wss://ep1.test:1/x")
        with pytest.raises(AlreadyExistsError, match=r"this entity already exists: EP1\.TEST"):
            store.add_endpoint(details, b"certificate", "EF")
        assert [r.host_name for r in store.endpoints()] == ["ep1.test"]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"priority": NaN}', "NaN in the details is not valid JSON"),
        ('{"priority": 1e400}', "number 1e400 in the details overflows a double"),
        ('{"hostName": "a", "hostName": "b"}', "duplicate key 'hostName' in the details"),
        ("{oops", "the details is not JSON: Expecting property name"),
    ],
)
def test_details_that_are_not_strict_json_are_named_as_details(text: str, expected: str) -> None:
    with pytest.raises(DetailsError) as caught:
        parse_details(text)
    assert str(caught.value).startswith(f"{MSG_INVALID_JSON}: {expected}")
