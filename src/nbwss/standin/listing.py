"""The stand-in's list rules: query strings, `filter`, `sort` and paging, per list.

What is accepted is what Veritas's OpenAPI files document (10.3 to 11.2) and nothing
more, so that a client asking for what a real primary server refuses is refused here
too (400 with a NetBackup error body, built by the caller from `QueryError`):

- `/admin/jobs`: `filter` with the operators of admin.yaml's filter table (for the
  fields listed below; the string functions `contains`, `startswith`, `endswith` are not
  imitated), `sort` on the documented fields; from API 9.0 cursor paging
  (`page[after]`, `page[before]`, string `next`/`prev`, `rangeTruncated`), before it
  offset paging (`page[offset]`). `page[limit]` 0..100, default 10.
- `/catalog/images`: `filter` on `backupTime` with `ge` and `le` only (default: the
  last 24 hours up to now), `eq` on the other documented fields; no `sort`; offset
  paging, `page[limit]` 1..100, default 10.
- a literal `+` in `filter` is refused: Veritas's samples say the filter needs `%20`
  for a space, so the server does not read `+` as one.

A `page[limit]` above 100 is cut to 100 (unverified: a real server may refuse it).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar
from urllib.parse import unquote

Attributes = dict[str, Any]
T = TypeVar("T")

MAX_PAGE_LIMIT: Final = 100
DEFAULT_PAGE_LIMIT: Final = 10
IMAGES_DEFAULT_WINDOW: Final = timedelta(hours=24)
_ORDERED: Final = frozenset({"eq", "ne", "lt", "gt", "le", "ge"})
_EQUALITY: Final = frozenset({"eq", "ne"})

# admin.yaml, GET /admin/jobs, `filter` (binary operators only).
JOB_FILTERS: Final[Mapping[str, frozenset[str]]] = {
    **dict.fromkeys(("jobId", "parentJobId", "status", "endTime", "startTime",
                     "lastUpdateTime", "transferRate", "kilobytesTransferred",
                     "activeTryStartTime", "priority", "percentComplete", "copyNumber",
                     "try"), _ORDERED),
    **dict.fromkeys(("state", "jobType", "policyType", "clientName", "scheduleName",
                     "restoreBackupIDs", "assetDisplayableName", "workloadDisplayName",
                     "jobPath"), _EQUALITY),
    **dict.fromkeys(("assetID", "backupId", "destinationStorageUnitName",
                     "destinationMediaId", "dteMode", "jobOwner", "profileName",
                     "robotName", "vaultName", "qResource", "dumpHost", "currentFile"),
                    frozenset({"eq"})),
}
# admin.yaml, GET /admin/jobs, `sort` (the fields nbwss and its tests use, and the rest).
JOB_SORTS: Final = frozenset({
    "jobId", "parentJobId", "jobType", "policyType", "policyName", "clientName", "status",
    "state", "startTime", "endTime", "scheduleType", "scheduleName", "lastUpdateTime",
    "percentComplete", "priority", "backupId", "kilobytesTransferred", "transferRate",
})
# catalog.yaml, GET /catalog/images, `filter`.
IMAGE_FILTERS: Final[Mapping[str, frozenset[str]]] = {
    "backupTime": frozenset({"ge", "le"}),
    **dict.fromkeys(("appType", "backupId", "clientName", "policyType", "policyName",
                     "streamNumber", "scheduleType", "providerGeneratedId", "imageDteMode",
                     "keyword", "malwareScanResult"), frozenset({"eq"})),
}
TIME_FIELDS: Final = frozenset({"lastUpdateTime", "backupTime", "startTime", "endTime",
                                "activeTryStartTime", "expiration"})


class QueryError(ValueError):
    """The request asks for something the documented API does not take."""


def parse_iso(text: str) -> datetime:
    """An ISO 8601 instant; a value without a zone is taken as UTC."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def read_query(raw: str) -> dict[str, str]:
    """The query string's parameters, percent-decoded, a `+` kept as a `+` (not a space)."""
    params: dict[str, str] = {}
    for part in raw.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        name = unquote(name)
        if name == "filter" and "+" in value:
            raise QueryError("filter: '+' is not a space here; encode spaces as %20")
        params[name] = unquote(value)
    return params


def _comparable(name: str, raw: Any) -> Any:
    if isinstance(raw, str) and raw[:1] == "'" and raw[-1:] == "'" and len(raw) >= 2:
        raw = raw[1:-1].replace("''", "'")
    if name in TIME_FIELDS and isinstance(raw, str):
        try:
            return parse_iso(raw)
        except ValueError:
            raise QueryError(f"filter: {name}: {raw!r} is not an ISO 8601 time") from None
    if isinstance(raw, str) and raw.lstrip("-").isdigit():
        return int(raw)
    return raw


_OPERATORS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
}


@dataclass(frozen=True, slots=True)
class Clause:
    """One `<field> <op> <value>` of a filter."""

    name: str
    op: str
    value: Any

    def holds(self, attributes: Attributes) -> bool:
        if self.name not in attributes:
            return False
        try:
            return _OPERATORS[self.op](_comparable(self.name, attributes[self.name]), self.value)
        except (TypeError, QueryError):
            return False


def parse_filter(text: str, rules: Mapping[str, frozenset[str]]) -> list[Clause]:
    """Clauses joined by `and`; each field and operator must be in `rules`."""
    clauses = []
    for clause in text.split(" and "):
        parts = clause.strip().split(" ", 2)
        if len(parts) != 3:
            raise QueryError(f"filter: cannot read clause {clause.strip()!r}")
        name, op, raw = parts
        if name not in rules:
            raise QueryError(f"filter: {name!r} cannot be filtered on")
        if op not in rules[name]:
            allowed = " ".join(sorted(rules[name]))
            raise QueryError(f"filter: operator {op!r} is not supported for {name} "
                             f"(supported: {allowed})")
        clauses.append(Clause(name, op, _comparable(name, raw.strip())))
    return clauses


def image_window(clauses: list[Clause], now: float) -> list[Clause]:
    """Without a backupTime bound the images list covers the last 24 hours up to now."""
    moment = datetime.fromtimestamp(now, UTC)
    bounds = {c.op for c in clauses if c.name == "backupTime"}
    if "ge" not in bounds:
        clauses = [*clauses, Clause("backupTime", "ge", moment - IMAGES_DEFAULT_WINDOW)]
    if "le" not in bounds:
        clauses = [*clauses, Clause("backupTime", "le", moment)]
    return clauses


def page_limit(params: Mapping[str, str], minimum: int) -> int:
    raw = params.get("page[limit]")
    if raw is None:
        return DEFAULT_PAGE_LIMIT
    if not raw.isdigit() or int(raw) < minimum:
        raise QueryError(f"page[limit] must be an integer >= {minimum}")
    return min(int(raw), MAX_PAGE_LIMIT)


def sort_key(params: Mapping[str, str], allowed: frozenset[str], default: str
             ) -> tuple[str, bool]:
    """The field to sort on and whether descending (`-field`)."""
    sort = params.get("sort", default)
    name = sort.removeprefix("-")
    if name not in allowed:
        raise QueryError(f"sort: {name!r} cannot be sorted on")
    return name, sort.startswith("-")


def sort_value(name: str, attributes: Attributes) -> Any:
    """A record's value for sorting on `name` (times as instants)."""
    return _comparable(name, attributes.get(name, ""))


# -- paging ----------------------------------------------------------------------------------


def offset_page(records: Sequence[T], params: Mapping[str, str], minimum: int
                ) -> tuple[Sequence[T], Attributes]:
    """One page by `page[offset]`, and `meta.pagination` with integer fields (catalog.yaml
    paginationValues: prev, next, first, last, count, offset, limit)."""
    for name in ("page[after]", "page[before]"):
        if name in params:
            raise QueryError(f"{name} is not a parameter of this list at this API version")
    limit = page_limit(params, minimum)
    raw = params.get("page[offset]", "0")
    if not raw.isdigit():
        raise QueryError("page[offset] must be a non-negative integer")
    offset, count = int(raw), len(records)
    step = max(limit, 1)
    pagination: Attributes = {"first": 0, "last": max(count - 1, 0) // step * step,
                              "count": count, "offset": offset, "limit": limit}
    if offset + step < count:
        pagination["next"] = offset + step
    if offset > 0:
        pagination["prev"] = max(offset - step, 0)
    return records[offset: offset + limit], pagination


def cursor_of(name: str, key: tuple[Any, int]) -> str:
    """An opaque cursor for a record's place in the list sorted on `name`: its sort value
    and job id, so that a page can follow it even when that record has since moved."""
    value = key[0].strftime("%Y-%m-%dT%H:%M:%S.%fZ") if isinstance(key[0], datetime) else key[0]
    text = json.dumps([name, value, key[1]], allow_nan=False)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _cursor_key(name: str, cursor: str) -> tuple[Any, int]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        sorted_on, value, job_id = json.loads(text)
        if sorted_on != name or not isinstance(job_id, int):
            raise ValueError(cursor)
        return _comparable(name, value), job_id
    except (ValueError, TypeError, QueryError):
        raise QueryError(f"cursor {cursor!r} is not one this list gave") from None


def _first_after(keys: Sequence[tuple[Any, int]], cursor: tuple[Any, int], descending: bool
                 ) -> int:
    for index, key in enumerate(keys):
        if (key < cursor) if descending else (key > cursor):
            return index
    return len(keys)


def _first_not_before(keys: Sequence[tuple[Any, int]], cursor: tuple[Any, int],
                      descending: bool) -> int:
    for index, key in enumerate(keys):
        if not ((key > cursor) if descending else (key < cursor)):
            return index
    return len(keys)


def cursor_page(records: Sequence[Attributes], keys: Sequence[tuple[Any, int]], name: str,
                descending: bool, params: Mapping[str, str]
                ) -> tuple[list[Attributes], list[str], Attributes]:
    """One page by `page[after]` / `page[before]` (admin.yaml, API 9.0 and later).

    `records` are sorted on `name`; `keys` are their (sort value, job id) in that order.
    `next` is the cursor of the page's last record when more follow; `prev` that of its
    first when some come before; `rangeTruncated` when both bounds are given and the
    range holds more than a page. Returns the page, its records' cursors, the pagination.
    """
    if "page[offset]" in params:
        raise QueryError("page[offset] is not a parameter of this list at this API version")
    limit = page_limit(params, 0)
    start, end = 0, len(records)
    if "page[after]" in params:
        start = _first_after(keys, _cursor_key(name, params["page[after]"]), descending)
    if "page[before]" in params:
        end = _first_not_before(keys, _cursor_key(name, params["page[before]"]), descending)
    span = range(start, max(start, end))
    truncated = "page[after]" in params and "page[before]" in params and len(span) > limit
    if limit == 0:
        chosen = span[:0]
    elif "page[before]" in params and not truncated:
        chosen = span[-limit:]
    else:
        chosen = span[:limit]
    cursors = [cursor_of(name, keys[i]) for i in chosen]
    pagination: Attributes = {"limit": limit}
    if cursors and chosen[-1] + 1 < len(records):
        pagination["next"] = cursors[-1]
    if cursors and chosen[0] > 0:
        pagination["prev"] = cursors[0]
    if truncated:
        pagination["rangeTruncated"] = True
    return [records[i] for i in chosen], cursors, pagination
