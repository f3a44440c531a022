"""Validation errors of the configuration in plain words, each with its own key path.

:func:`problems` turns a pydantic ``ValidationError`` into ``(key_path, message)``
pairs: an unknown key gets a "did you mean" from the keys allowed at that place,
a list where a mapping belongs (``webhook:`` written for ``webhooks:``) says so and
names the key that takes a list, and pydantic's prefixes ("Value error, ") are
dropped. A validator that knows which key is wrong raises :class:`AtKey` so the
error points at that key rather than at the enclosing block.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, Union

from pydantic import BaseModel, ValidationError


class AtKey(ValueError):
    """A model validator's error about one key (or index) below the model."""

    def __init__(self, message: str, *loc: str | int) -> None:
        super().__init__(message)
        self.loc = loc


def key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _unwrap(tp: Any) -> Any:
    """``X | None`` and ``Annotated[X, ...]`` -> X."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _type_at(model: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """The annotation found at ``loc`` below ``model`` (None when it cannot be followed)."""
    tp: Any = model
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                field = next((f for f in tp.model_fields.values() if f.alias == part), None)
            if field is None:
                return None
            tp = field.annotation
        elif typing.get_origin(tp) in (list, dict):
            tp = typing.get_args(tp)[-1]
        else:
            return None
    return _unwrap(tp)


def _keys(tp: Any) -> list[str]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [f.alias or name for name, f in tp.model_fields.items()]
    return []


def _kind(tp: Any) -> str | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "mapping"
    origin = typing.get_origin(tp)
    if origin is list:
        return "list"
    if origin is dict:
        return "mapping"
    return None


def _got(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (an empty value)"
    return {str: "text", bool: "true/false", int: "a number", float: "a number"}.get(type(value), "a value")


def _sibling_of_kind(model: type[BaseModel], loc: tuple[Any, ...], kind: str) -> str | None:
    """A key next to ``loc[-1]`` spelled alike that takes a ``kind`` (``webhook`` -> ``webhooks``)."""
    if not loc or not isinstance(loc[-1], str):
        return None
    parent = _type_at(model, loc[:-1])
    names = [k for k in _keys(parent) if k != loc[-1] and _kind(_type_at(model, (*loc[:-1], k))) == kind]
    close = difflib.get_close_matches(loc[-1], names, n=1, cutoff=0.8)
    return close[0] if close else None


def _message(model: type[BaseModel], err: Any) -> tuple[tuple[Any, ...], str]:
    loc = tuple(err["loc"])
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        allowed = _keys(_type_at(model, loc[:-1]))
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        where = f"; allowed here: {', '.join(sorted(allowed))}" if allowed and not close else ""
        return loc, f"unknown key{hint}{where}"
    if kind in ("model_type", "dict_type", "model_attributes_type", "list_type"):
        want = "list" if kind == "list_type" else "mapping"
        shape = "a list ('- item' lines)" if want == "list" else "a mapping ('key: value' lines)"
        msg = f"expected {shape}, got {_got(value)}"
        other = _sibling_of_kind(model, loc, "list" if want == "mapping" else "mapping")
        if other is not None and _got(value) == f"a {'list' if want == 'mapping' else 'mapping'}":
            msg += f"; did you mean '{other}:'?"
        return loc, msg
    if kind == "missing":
        return loc, "required key is missing"
    if kind == "value_error":
        exc = (err.get("ctx") or {}).get("error")
        if isinstance(exc, AtKey):
            return (*loc, *exc.loc), str(exc)
        return loc, str(exc) if exc is not None else err["msg"].removeprefix("Value error, ")
    return loc, err["msg"].removeprefix("Value error, ")


def _position(data: Any, loc: tuple[Any, ...]) -> tuple[int, ...]:
    """Where ``loc`` is in ``data``, in document order (keys keep the file's order)."""
    out: list[int] = []
    node = data
    for part in loc:
        if isinstance(node, dict):
            keys = list(node)
            out.append(keys.index(part) if part in keys else len(keys))
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out.append(part)
            node = node[part]
        else:
            out.append(-1)  # the block itself before what is inside it
            node = None
    return tuple(out)


def problems(exc: ValidationError, model: type[BaseModel], data: Any = None) -> list[tuple[str, str]]:
    """``(key_path, message)`` for every error, in the order of the keys in ``data``."""
    found: list[tuple[tuple[int, ...], str, str]] = []
    for err in exc.errors():
        loc, msg = _message(model, err)
        item = (_position(data, loc), key_path(loc), msg)
        if item not in found:
            found.append(item)
    found.sort(key=lambda f: f[0])
    return [(path, msg) for _, path, msg in found]
