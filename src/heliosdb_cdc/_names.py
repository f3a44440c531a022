"""The one rule for names users give: stream names (SQL ``AS``, REST, YAML, the Python
API, webhook registrations). docs/api.md ("Names") states it.

A name is 1 to 128 characters, not only spaces and without spaces at either end, with
no control, format (invisible), line- or paragraph-separator character and no lone
surrogate: such a name could not be typed back in SQL or a URL, could forge or hide
text in a log line, or could not be stored as JSON.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from ._errors import InvalidName

MAX_NAME = 128

#: Unicode categories a name may not contain: Cc control (C0, DEL, C1), Cf format
#: (zero-width, bidirectional overrides), Zl/Zp line and paragraph separators,
#: Cs lone surrogates
_FORBIDDEN = {"Cc", "Cf", "Zl", "Zp", "Cs"}


def name_problem(name: Any, what: str = "stream name") -> str | None:
    """What is wrong with ``name`` as a ``what``, or ``None`` when it is valid."""
    if not isinstance(name, str):
        return f"a {what} must be a string, not {type(name).__name__}"
    if not name:
        return f"a {what} must not be empty"
    for i, ch in enumerate(name):
        if unicodedata.category(ch) in _FORBIDDEN:
            return (
                f"a {what} must not contain control or invisible characters "
                f"(U+{ord(ch):04X} at position {i + 1})"
            )
    if not name.strip():
        return f"a {what} must not be only spaces"
    if len(name) > MAX_NAME:
        return f"a {what} is at most {MAX_NAME} characters (this one has {len(name)})"
    if name != name.strip():
        return f"a {what} must not start or end with a space"
    return None


def check_name(name: Any, what: str = "stream name") -> str:
    """``name`` if it is a valid ``what``; else :class:`InvalidName` saying what is wrong."""
    problem = name_problem(name, what)
    if problem is not None:
        raise InvalidName(f"{problem}: {safe_repr(name)}")
    return str(name)


def safe_repr(value: Any, limit: int = 60) -> str:
    """``repr`` of a user-given value for messages: control and invisible characters
    escaped (``'a\\nb'``), cut after ``limit`` characters."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        return repr(text[:limit]) + f"... ({len(text)} characters)"
    return repr(text)
