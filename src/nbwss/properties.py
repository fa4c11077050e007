"""`nbwss.properties`: the typed `Settings`, built from the properties file.

The file is read once, at the edge, into one frozen `Settings` that is passed down;
nothing else reads the file or the environment. Durations become float seconds here,
with the unit in the field name. The file's syntax and the table `PROPERTIES`, the
single source of every key, its default and its meaning (docs and
`config/nbwss.properties` follow it), are in `nbwss.propertyfile`, re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from nbwss.errors import ConfigError
from nbwss.propertyfile import (
    _MIB,
    DOMAIN_TYPES,
    IGNORED_PREFIXES,
    PROPERTIES,
    Applies,
    Converter,
    Entry,
    Property,
    default_store_path,
    key_file,
    parse_properties,
    read_text,
    read_values,
    resolve_store,
    wake_socket,
)

__all__ = [
    "DOMAIN_TYPES", "IGNORED_PREFIXES", "PROPERTIES", "Applies", "Converter", "Entry",
    "Property", "Settings", "changed_keys", "default_store_path", "load", "parse_properties",
    "resolve_paths", "settings_from_text",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of the daemon and the CLI, typed, with the spec's defaults."""

    ignore_decoder: bool = False
    send_timeout_s: float = 2.0
    notification_rate_s: float = 5.0
    keepalive_rate_s: float = 30.0
    max_pong_misses: int = 10
    connection_period_s: float = 60.0
    thread_pool_size: int = 1
    store_path: Path | None = None
    key_path: Path | None = None
    connect_response_timeout_s: float = 30.0
    message_max_bytes: int = 16 * _MIB
    notification_max_batch: int = 500
    notification_stall_after_sends: int = 12
    notification_retention_days: float = 30.0
    rest_api_base_url: str = "https://localhost:1556"
    rest_api_ca_file: Path | None = None
    rest_api_verify: bool = True
    rest_api_key_file: Path | None = None
    rest_api_user_name: str | None = None
    rest_api_password_file: Path | None = None
    rest_api_domain_name: str | None = None
    rest_api_domain_type: str | None = None
    rest_api_version: str = "auto"
    command_max_concurrent: int = 16
    command_max_queued: int = 64
    command_timeout_s: float = 60.0
    command_allowed_prefixes: tuple[str, ...] = ("/netbackup/",)
    command_max_body_bytes: int = 16 * _MIB
    poller_enabled: bool | None = None
    poller_jobs_rate_s: float = 5.0
    poller_images_rate_s: float = 5.0
    poller_image_window_days: int = 30
    poller_page_size: int = 100
    proxy_url: str | None = None
    proxy_credentials_file: Path | None = None
    proxy_no_proxy: tuple[str, ...] = ()
    proxy_use_environment: bool = False
    status_listen: str | None = None
    status_max_backlog_age_s: float = 600.0
    log_level: str = "info"
    log_format: str = "auto"
    event_loop: str = "asyncio"
    warnings: tuple[str, ...] = field(default=(), compare=False)
    source: Path | None = field(default=None, compare=False)

    @property
    def database(self) -> Path:
        """The store path; `resolve_paths` has filled it in by the time anyone asks."""
        if self.store_path is None:
            raise ConfigError("store.path is not resolved")
        return self.store_path

    @property
    def key_file(self) -> Path:
        return key_file(self.database, self.key_path)

    @property
    def status_address(self) -> str:
        return self.status_listen or str(self.database.with_name("nbwss.sock"))

    @property
    def wake_socket(self) -> Path:
        """The datagram socket `nbwss notify` pokes so the daemon sends without waiting."""
        return wake_socket(self.database)

    @property
    def poller_active(self) -> bool:
        if self.poller_enabled is not None:
            return self.poller_enabled
        return self.rest_api_key_file is not None or (
            self.rest_api_user_name is not None and self.rest_api_password_file is not None
        )


def resolve_paths(settings: Settings, env: Mapping[str, str]) -> Settings:
    """Fill in the store path when the file left it empty, and pick the key file
    (`propertyfile.resolve_store`: a systemd credential wins over `store.keyFile`)."""
    store_path, key_path = resolve_store(settings.store_path, settings.key_path, env)
    return replace(settings, store_path=store_path, key_path=key_path)


def settings_from_text(text: str, source: Path | None = None) -> Settings:
    """Build `Settings` from a file's text; bad values raise, unknown keys become warnings."""
    values, warnings = read_values(text, source)
    return Settings(**values, warnings=warnings, source=source)


def load(path: Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Read `path` (None: built-in defaults) and resolve paths from `env` (default: os.environ)."""
    env = os.environ if env is None else env
    if path is None:
        return resolve_paths(Settings(), env)
    return resolve_paths(settings_from_text(read_text(path), source=path), env)


def changed_keys(old: Settings, new: Settings, applies: Applies) -> list[str]:
    """The keys, of those a reload applies `applies`, whose value differs."""
    return [prop.key for prop in PROPERTIES
            if prop.applies is applies and getattr(old, prop.field) != getattr(new, prop.field)]
