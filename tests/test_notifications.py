"""`validate`'s fast path (every field at once) says what the field-by-field rule says."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nbwss.errors import NotificationError
from nbwss.notifications import _MISSING, FIELDS, _check_field, validate

VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False),
    st.sampled_from(["", " ", "x", "ACTIVE", "DONE", "CREATE", "QUEUED", "UPDATE"]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers()),
)  # fmt: skip


@st.composite
def notification(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    obj = draw(st.sampled_from(sorted(FIELDS)))
    data = {}
    for spec in FIELDS[obj]:
        if draw(st.integers(0, 9)):  # mostly present
            data[spec.name] = draw(VALUES)
    return obj, data


@given(notification())
def test_the_fast_path_accepts_exactly_what_every_field_accepts(
    case: tuple[str, dict[str, Any]],
) -> None:
    obj, data = case
    fits = all(
        _check_field(spec, data.get(spec.name, _MISSING)) is None for spec in FIELDS[obj]
    )
    if fits:
        assert validate(obj, data, "line 1") == (obj, data)
    else:
        with pytest.raises(NotificationError, match=r"^line 1: "):
            validate(obj, data, "line 1")


@pytest.mark.parametrize("obj", [["JOB"], {"JOB": 1}, None, 7])
def test_an_object_name_of_another_type_is_refused_not_a_crash(obj: Any) -> None:
    with pytest.raises(NotificationError, match="expected JOB or IMAGE"):
        validate(obj, {})
