"""The stored default event read back exactly: each row value keeps its JSON text.

The default event carries a ``json``/``jsonb`` value as PostgreSQL wrote it (every digit,
key order, duplicate keys of ``json``) and numbers with every digit; ``json.loads``
would merge duplicate keys and round floats. :func:`exact_event` parses the envelope
normally (fractions as Decimals) and gives every non-null value of ``key``, ``value`` and
``old_value`` as a :class:`~heliosdb_cdc._event.JsonText` of its exact text, for an
encoder to carry as is (Avro's json strings) or parse (:meth:`JsonText.parse`).
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

from .._event import EVENT_FIELDS, JsonText

__all__ = ["exact_event"]

_DECODER = json.JSONDecoder(parse_float=Decimal)
_WS = re.compile(r"[ \t\n\r]*")
_ROWS = ("key", "value", "old_value")


def _ws(text: str, i: int) -> int:
    m = _WS.match(text, i)
    return m.end() if m else i


def _object(text: str, i: int, raw: bool) -> tuple[dict[str, Any], int]:
    """The object at ``text[i] == '{'`` and the index after it; with ``raw`` each member's
    value is its JSON text (None for null)."""
    out: dict[str, Any] = {}
    i = _ws(text, i + 1)
    if text[i] == "}":
        return out, i + 1
    while True:
        if text[i] != '"':
            raise ValueError(f"expected a member name at {i}")
        name, i = _DECODER.raw_decode(text, i)
        i = _ws(text, i)
        if text[i] != ":":
            raise ValueError(f"expected ':' at {i}")
        start = _ws(text, i + 1)
        value: Any
        if not raw and name in _ROWS and text.startswith("{", start):
            value, end = _object(text, start, True)
        else:
            value, end = _DECODER.raw_decode(text, start)
            if raw and value is not None:
                value = JsonText(text[start:end])
        out[name] = value
        i = _ws(text, end)
        if text[i] == "}":
            return out, i + 1
        if text[i] != ",":
            raise ValueError(f"expected ',' or '}}' at {i}")
        i = _ws(text, i + 1)


def exact_event(body: bytes) -> dict[str, Any] | None:
    """The default event in ``body`` with exact row values; None when ``body`` is not a
    default event (a transformation's output)."""
    try:
        text = body.decode()
        i = _ws(text, 0)
        if not text.startswith("{", i):
            return None
        event, end = _object(text, i, False)
    except (ValueError, IndexError, UnicodeDecodeError):
        return None
    if tuple(event) != EVENT_FIELDS or _ws(text, end) != len(text):
        return None
    return event
