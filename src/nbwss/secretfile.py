"""Secret files (API key, REST password, proxy credentials): read once, redacted at once.

A relative path is under `$CREDENTIALS_DIRECTORY`, so systemd's `LoadCredential=` can
hand the daemon a file only root may read. The secret is registered with the log
redactor before anything can log it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from nbwss import logs
from nbwss.errors import ConfigError


def read_secret(path: Path, env: Mapping[str, str], key: str) -> str:
    """A secret file's text, stripped; `key` names the setting in errors."""
    if not path.is_absolute() and env.get("CREDENTIALS_DIRECTORY"):
        path = Path(env["CREDENTIALS_DIRECTORY"]) / path
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ConfigError(f"{key}: cannot read {path}: {reason}") from None
    if not secret:
        raise ConfigError(f"{key}: {path} is empty")
    logs.register_secret(secret)
    return secret
