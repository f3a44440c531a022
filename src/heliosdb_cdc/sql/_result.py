"""What a statement returns, and the JSON shape the server and the client share.

``POST /sql`` replies ``{"results": [{"columns": [...], "rows": [[...]], "message": "..."}]}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from .._errors import SqlError


@dataclass
class SqlResult:
    """Rows (possibly none) and a one-line message, e.g. ``stream orders_kafka paused``."""

    columns: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": list(self.columns),
            "rows": [list(r) for r in self.rows],
            "message": self.message,
        }

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict`; values JSON cannot hold are written with ``str()``."""
        return orjson.dumps(self.to_dict(), default=str).decode()


def result_to_dict(result: SqlResult) -> dict[str, Any]:
    """The JSON-ready form of one result (values JSON cannot hold become strings)."""
    data: dict[str, Any] = orjson.loads(result.to_json())
    return data


def results_to_json(results: list[SqlResult]) -> str:
    """The whole ``POST /sql`` reply body."""
    return orjson.dumps({"results": [result_to_dict(r) for r in results]}).decode()


def results_from_json(data: Any) -> list[SqlResult]:
    """Results from a ``POST /sql`` reply (JSON text, bytes or the decoded object)."""
    if isinstance(data, str | bytes):
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise SqlError(f"the server's reply is not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise SqlError("the server's reply has no 'results' list")
    out: list[SqlResult] = []
    for item in data["results"]:
        if not isinstance(item, dict):
            raise SqlError("the server's reply has a result that is not an object")
        out.append(
            SqlResult(
                columns=[str(c) for c in item.get("columns") or []],
                rows=[list(r) for r in item.get("rows") or []],
                message=str(item.get("message") or ""),
            )
        )
    return out
