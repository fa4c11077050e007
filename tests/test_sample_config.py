"""The shipped `config/nbwss.properties` and `docs/configuration.md` follow `PROPERTIES`.

`PROPERTIES` is the single source of every key, default and meaning; these tests make the
sample file and the docs fail the build when they drift from it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nbwss.properties import PROPERTIES, Settings, parse_properties, settings_from_text

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "config" / "nbwss.properties"
CONFIGURATION_DOC = ROOT / "docs" / "configuration.md"
VENDOR_KEYS = [
    "exception.ignoreDecoder",
    "notification.sendTimeout",
    "notification.scheduledRate",
    "keepAlive.scheduledRate",
    "keepAlive.maxPongMissAllowed",
    "connectionInfo.period",
    "scheduledExecutor.threadPoolSize",
]
HIBERNATE = {
    "hibernate.format_sql": "true",
    "hibernate.show_sql": "false",
    "hibernate.hbm2ddl.auto": "update",
    "hibernate.dialect": "org.hibernate.dialect.SybaseDialect",
}


def _words(text: str) -> str:
    return " ".join(text.split())


def test_sample_file_means_the_built_in_defaults() -> None:
    settings = settings_from_text(SAMPLE.read_text(encoding="utf-8"), source=SAMPLE)
    assert settings == Settings()
    assert settings.warnings == ()


def test_sample_file_lists_every_key_once_with_its_default_in_order() -> None:
    entries = parse_properties(SAMPLE.read_text(encoding="utf-8"))
    keys = [entry.key for entry in entries]
    assert len(keys) == len(set(keys))
    own = [key for key in keys if not key.startswith("hibernate.")]
    assert own == [prop.key for prop in PROPERTIES]
    assert own[: len(VENDOR_KEYS)] == VENDOR_KEYS
    # The vendor's file first, as in spec section 5: its keys, then hibernate, then ours.
    assert keys[: len(VENDOR_KEYS) + len(HIBERNATE)] == VENDOR_KEYS + list(HIBERNATE)
    values = {entry.key: entry.value for entry in entries}
    for prop in PROPERTIES:
        assert values[prop.key] == prop.default, prop.key
    for key, value in HIBERNATE.items():
        assert values[key] == value


def test_sample_file_explains_each_key_right_above_it() -> None:
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    for entry in parse_properties("\n".join(lines)):
        prop = next((p for p in PROPERTIES if p.key == entry.key), None)
        if prop is None:
            continue
        index = entry.line - 2
        comment: list[str] = []
        while index >= 0 and lines[index].startswith("# "):
            comment.insert(0, lines[index].removeprefix("# "))
            index -= 1
        assert _words(" ".join(comment)) == _words(prop.doc), prop.key


def _documented_rows() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in CONFIGURATION_DOC.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\| `([^`]+)` \|(.*)\|$", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split("|")]
    return rows


def test_configuration_doc_has_every_key_with_default_unit_and_effect() -> None:
    rows = _documented_rows()
    assert list(rows) == [prop.key for prop in PROPERTIES]
    for prop in PROPERTIES:
        default, unit, effect = rows[prop.key]
        assert default == (f"`{prop.default}`" if prop.default else "(empty)"), prop.key
        assert unit, prop.key
        assert effect == prop.doc, prop.key


@pytest.mark.parametrize("key", VENDOR_KEYS)
def test_vendor_defaults_are_the_guides(key: str) -> None:
    guide = {
        "exception.ignoreDecoder": "false",
        "notification.sendTimeout": "2000",
        "notification.scheduledRate": "5",
        "keepAlive.scheduledRate": "30",
        "keepAlive.maxPongMissAllowed": "10",
        "connectionInfo.period": "60",
        "scheduledExecutor.threadPoolSize": "1",
    }
    assert next(p for p in PROPERTIES if p.key == key).default == guide[key]
