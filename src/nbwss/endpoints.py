"""Endpoint details: the five-entry JSON that describes one endpoint (spec section 2).

`parse_details` is pure and applies every rule of the guide, with the guide's messages
(plus a reason after a colon, so an admin knows which field to fix).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from nbwss.errors import (
    MSG_INCORRECT_URL,
    MSG_INVALID_JSON,
    MSG_ONLY_WSS,
    DecodeError,
    DetailsError,
)
from nbwss.messages import parse_json

REQUIRED_KEYS = ("token", "priority", "groupId", "hostName", "url")
# Details are small; anything larger is not endpoint details.
MAX_DETAILS_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class EndpointDetails:
    token: str
    priority: int
    group_id: str
    host_name: str
    url: str

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 443

    @property
    def server_host(self) -> str:
        """The host to dial (from the URL; `hostName` is the endpoint's unique name)."""
        return urlsplit(self.url).hostname or self.host_name

    def __repr__(self) -> str:  # never show the token, even in a traceback
        return (
            f"EndpointDetails(host_name={self.host_name!r}, group_id={self.group_id!r}, "
            f"priority={self.priority}, url={self.url!r}, token=<hidden>)"
        )


def check_wss_url(url: str) -> str:
    """A `wss://` URL with a host (and a valid port, if any); the guide's messages otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise DetailsError(f"{MSG_INCORRECT_URL}: {url!r} is malformed") from None
    if parts.scheme.lower() != "wss":
        raise DetailsError(f"{MSG_ONLY_WSS}: url is {url!r}")
    if not parts.hostname or any(c.isspace() for c in url):
        raise DetailsError(f"{MSG_INCORRECT_URL}: {url!r} has no host")
    if port == 0:
        raise DetailsError(f"{MSG_INCORRECT_URL}: {url!r} has port 0")
    return url


def _has_apostrophe(value: Any) -> bool:
    if isinstance(value, str):
        return "'" in value
    if isinstance(value, dict):
        return any(_has_apostrophe(k) or _has_apostrophe(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_apostrophe(v) for v in value)
    return False


def _string(obj: dict[str, Any], key: str) -> str:
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        raise DetailsError(f"{MSG_INVALID_JSON}: {key!r} must be a non-empty string")
    if any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise DetailsError(f"{MSG_INVALID_JSON}: {key!r} holds a control character")
    return value.strip()


def details_from_object(obj: Any) -> EndpointDetails:
    """Validate an already parsed JSON value as endpoint details."""
    if isinstance(obj, list):
        raise DetailsError(f"{MSG_INVALID_JSON}: one file describes one endpoint, not a list")
    if not isinstance(obj, dict):
        raise DetailsError(f"{MSG_INVALID_JSON}: expected a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in obj]
    if missing:
        raise DetailsError(f"{MSG_INVALID_JSON}: missing {', '.join(map(repr, missing))}")
    if _has_apostrophe(obj):
        raise DetailsError(f"{MSG_INVALID_JSON}: an apostrophe (') is not supported")
    priority = obj["priority"]
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise DetailsError(f"{MSG_INVALID_JSON}: 'priority' must be an unquoted integer")
    return EndpointDetails(
        token=_string(obj, "token"),
        priority=priority,
        group_id=_string(obj, "groupId"),
        host_name=_string(obj, "hostName"),
        url=check_wss_url(_string(obj, "url")),
    )


def parse_details(text: str | bytes) -> EndpointDetails:
    """Parse and validate the JSON text of one endpoint's details."""
    try:
        obj = parse_json(text, MAX_DETAILS_BYTES)
    except DecodeError as exc:
        raise DetailsError(f"{MSG_INVALID_JSON}: {exc}") from None
    return details_from_object(obj)


def details_to_json(details: EndpointDetails) -> str:
    """The details as the guide's JSON (used by the demo to write its endpoints' files)."""
    return json.dumps(
        {
            "token": details.token,
            "priority": details.priority,
            "groupId": details.group_id,
            "hostName": details.host_name,
            "url": details.url,
        },
        indent=2,
    )
