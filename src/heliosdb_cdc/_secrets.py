"""Secrets read from files: a secret value ``file:/path`` in the YAML configuration is
replaced by the file's content (surrounding whitespace and the final newline
stripped) when the configuration is loaded.

Applies to ``streams[].secret``, ``webhooks[].secret``, ``security.admin_token``,
``security.read_only_token`` and ``source.dsn`` -- only in the configuration file
(a secret sent through SQL or REST is never read as a path on the server).
Environment variables work everywhere in the file as ``${VAR}``. A secret
whose real value starts with ``file:`` must be given through ``${VAR}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._errors import ConfigError

PREFIX = "file:"


def _read(value: Any, key_path: str) -> Any:
    if not isinstance(value, str) or not value.startswith(PREFIX):
        return value
    path = Path(value[len(PREFIX) :]).expanduser()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the secret file {str(path)!r}: {exc.strerror}", key_path=key_path
        ) from None
    secret = text.strip()
    if not secret:
        raise ConfigError(f"the secret file {str(path)!r} is empty", key_path=key_path)
    return secret


def resolve_secret_files(data: dict[str, Any]) -> dict[str, Any]:
    out = dict(data)
    sec = out.get("security")
    if isinstance(sec, dict):
        sec = dict(sec)
        for key in ("admin_token", "read_only_token"):
            if key in sec:
                sec[key] = _read(sec[key], f"security.{key}")
        out["security"] = sec
    src = out.get("source")
    if isinstance(src, dict) and "dsn" in src:
        out["source"] = {**src, "dsn": _read(src["dsn"], "source.dsn")}
    for section in ("streams", "webhooks"):
        items = out.get(section)
        if isinstance(items, list):
            out[section] = [
                {**item, "secret": _read(item["secret"], f"{section}[{i}].secret")}
                if isinstance(item, dict) and "secret" in item
                else item
                for i, item in enumerate(items)
            ]
    return out
