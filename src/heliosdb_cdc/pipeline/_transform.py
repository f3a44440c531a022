"""Transformations: reshape an event into the body sent to one target.

* ``template``: Jinja2 in an immutable sandbox, ``StrictUndefined``, no autoescape.
  The output must be JSON. A value printed with ``{{ ... }}`` is made JSON-safe by
  where it lands: inside a JSON string it is string-escaped (a dict prints as its
  compact JSON text, with the quotes escaped); outside a string a number, boolean,
  null, dict or list prints as a JSON literal and a string prints as is.
  ``| tojson`` gives JSON that keeps every Decimal digit.
* ``jsonpath``: output field -> JSONPath (jsonpath-ng, extended syntax); no match is
  ``null``, one match the value, several a list.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

import jinja2
import orjson
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jsonpath_ng import jsonpath as jp
from jsonpath_ng.ext.parser import parse as jsonpath_parse

from .._config import TransformationConfig
from .._errors import FilterError
from .._event import EVENT_FIELDS, _json_default, dumps

__all__ = ["TransformRegistry", "Transformation", "compile_transformation"]


SAMPLE_EVENT: dict[str, Any] = {
    "event_id": "evt_abc123",
    "timestamp": "2026-01-04T12:00:00Z",
    "sequence": 12345,
    "operation": "INSERT",
    "database": "production",
    "table": "orders",
    "key": {"id": 123},
    "value": {"id": 123, "customer_id": 456, "total": Decimal("99.99"), "status": "pending"},
    "old_value": None,
    "transaction_id": "txn_xyz789",
}
_SAMPLES: tuple[dict[str, Any], ...] = (
    SAMPLE_EVENT,
    {
        **SAMPLE_EVENT,
        "operation": "UPDATE",
        "value": {**SAMPLE_EVENT["value"], "status": 'shipped "fast"'},
        "old_value": dict(SAMPLE_EVENT["value"]),
    },
    {**SAMPLE_EVENT, "operation": "DELETE", "value": None, "old_value": {"id": 123}},
)


def _widen(obj: Any) -> Any:
    """Integers beyond 64 bits as Decimal (orjson refuses them as int; Decimal keeps digits)."""
    if type(obj) is int and not -(2**63) <= obj < 2**64:
        return Decimal(obj)
    if isinstance(obj, dict):
        return {k: _widen(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_widen(v) for v in obj]
    return obj


def _dumps(obj: Any) -> bytes:
    """:func:`heliosdb_cdc._event.dumps`, also for integers beyond 64 bits (numeric columns)."""
    try:
        return dumps(obj)
    except TypeError:
        return dumps(_widen(obj))


class Transformation:
    """``apply(event) -> bytes``: the JSON body to send to ``target``."""

    __slots__ = ("_fn", "kind", "name", "target")

    def __init__(self, name: str, target: str, kind: str, fn: Callable[[Mapping[str, Any]], bytes]) -> None:
        self.name = name
        self.target = target
        self.kind = kind  # "template" | "jsonpath"
        self._fn = fn

    def apply(self, event: Mapping[str, Any]) -> bytes:
        """The body for ``event``; :class:`FilterError` naming the event if it cannot be made."""
        try:
            return self._fn(event)
        except FilterError as exc:
            raise FilterError(
                exc.message,
                transformation=self.name,
                event_id=event.get("event_id"),
                **{k: v for k, v in exc.context.items() if k not in ("transformation", "event_id")},
            ) from None
        except Exception as exc:
            raise FilterError(
                f"transformation {self.name!r} failed: {type(exc).__name__}: {exc}",
                transformation=self.name,
                event_id=event.get("event_id"),
            ) from None

    __call__ = apply

    def __repr__(self) -> str:
        return f"Transformation({self.name!r}, target={self.target!r}, kind={self.kind!r})"


# --------------------------------------------------------------------------- Jinja2

# A printed value travels through the render as  \x00<length>\x01<text>  and is placed
# (escaped or not) once the whole output is known, by where it lands in the JSON.
_MARK = "\x00"
_SEP = "\x01"
_SCAN = re.compile(r'\\.|\\$|"', re.DOTALL)


class _RawJSON(str):
    """Output of ``tojson``: JSON text, not a string to quote."""

    __slots__ = ()


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (bool, int, float, Decimal, dict, list, tuple)):
        return _dumps(value).decode()
    if isinstance(value, jinja2.Undefined):
        return str(value)  # StrictUndefined raises here
    return str(value)


def _finalize(value: Any) -> str:
    t = _text(value)
    return f"{_MARK}{len(t)}{_SEP}{t}"


def _tojson(value: Any, indent: int | None = None) -> _RawJSON:
    if indent:
        return _RawJSON(
            orjson.dumps(_widen(value), default=_json_default, option=orjson.OPT_INDENT_2).decode()
        )
    return _RawJSON(_dumps(value).decode())


def _in_string_after(text: str, in_str: bool) -> bool:
    if '"' not in text:
        return in_str
    for m in _SCAN.finditer(text):
        if m.group() == '"':
            in_str = not in_str
    return in_str


def _place(rendered: str) -> str:
    """Replace the markers: JSON-escape values that land inside a JSON string."""
    if _MARK not in rendered:
        return rendered
    out: list[str] = []
    pos = 0
    in_str = False
    n = len(rendered)
    while pos < n:
        i = rendered.find(_MARK, pos)
        if i < 0:
            out.append(rendered[pos:])
            break
        literal = rendered[pos:i]
        out.append(literal)
        in_str = _in_string_after(literal, in_str)
        j = rendered.index(_SEP, i)
        length = int(rendered[i + 1 : j])
        text = rendered[j + 1 : j + 1 + length]
        pos = j + 1 + length
        if in_str:
            out.append(json.dumps(text, ensure_ascii=False)[1:-1])
        else:
            out.append(text)
            in_str = _in_string_after(text, in_str)
    return "".join(out)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        finalize=_finalize,
        keep_trailing_newline=False,
    )
    env.filters["tojson"] = _tojson
    env.policies["json.dumps_function"] = lambda obj, **kw: _dumps(obj).decode()
    return env


_ENV = _environment()


def _check_json(body: str) -> None:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:  # orjson refuses integers beyond 64 bits that json accepts
            json.loads(body, parse_float=Decimal)
        except ValueError:
            raise FilterError(f"template output is not valid JSON: {exc}") from None


def _unsafe_attribute(tree: nodes.Template) -> str | None:
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        attr: Any = node.attr if isinstance(node, nodes.Getattr) else None
        if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            attr = node.arg.value
        if isinstance(attr, str) and attr.startswith("__"):
            return attr
    return None


def _compile_template(cfg: TransformationConfig) -> Callable[[Mapping[str, Any]], bytes]:
    source = cfg.template or ""
    name = cfg.name
    if _MARK in source or _SEP in source:
        raise FilterError(f"transformation {name!r}: the template contains control characters \\x00/\\x01")
    try:
        tree = _ENV.parse(source)
        template = _ENV.from_string(tree)
    except TemplateSyntaxError as exc:
        raise FilterError(
            f"transformation {name!r}: template syntax error at line {exc.lineno}: {exc.message}",
            transformation=name,
            line=exc.lineno,
        ) from None
    unknown = sorted(meta.find_undeclared_variables(tree) - set(EVENT_FIELDS) - {"event"} - set(_ENV.globals))
    if unknown:
        raise FilterError(
            f"transformation {name!r}: undefined variable(s) {', '.join(unknown)} in template; "
            f"available: event, {', '.join(EVENT_FIELDS)}",
            transformation=name,
        )
    bad = _unsafe_attribute(tree)
    if bad is not None:
        raise FilterError(
            f"transformation {name!r}: access to attribute {bad!r} is not allowed in the sandboxed template",
            transformation=name,
        )
    render = template.render

    def apply(event: Mapping[str, Any]) -> bytes:
        ctx = dict(event)
        ctx["event"] = event
        try:
            body = _place(render(ctx))
        except SecurityError as exc:
            raise FilterError(f"template blocked by the sandbox: {exc}") from None
        except UndefinedError as exc:
            raise FilterError(f"template error: {exc}") from None
        _check_json(body)
        return body.encode()

    # Render against sample events: the output must be JSON. Errors caused by the
    # sample's data (a column the sample lacks) are not the template's fault.
    checked = False
    for sample in _SAMPLES:
        try:
            body = _place(render({**sample, "event": sample}))
        except SecurityError as exc:
            raise FilterError(
                f"transformation {name!r}: template blocked by the sandbox: {exc}",
                transformation=name,
            ) from None
        except Exception:
            continue
        try:
            _check_json(body)
        except FilterError as exc:
            raise FilterError(
                f"transformation {name!r}: {exc.message} (rendered for a sample "
                f"{sample['operation']} event: {body[:200]!r}); quote string values or use "
                "| tojson",
                transformation=name,
            ) from None
        checked = True
    del checked  # a template no sample could render is still checked per event
    return apply


# --------------------------------------------------------------------------- JSONPath

_SIMPLE = re.compile(r"\$((?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\]|\['[^'\\]*'\])*)")
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\['([^'\\]*)'\]")
_NOTHING = object()


def _simple_path(expr: str) -> tuple[str | int, ...] | None:
    """``$.a.b[0]`` -> ("a", "b", 0): evaluated with plain lookups (same result, faster)."""
    m = _SIMPLE.fullmatch(expr.strip())
    if m is None:
        return None
    steps: list[str | int] = []
    for s in _STEP.finditer(m.group(1)):
        if s.group(1) is not None:
            steps.append(s.group(1))
        elif s.group(2) is not None:
            steps.append(int(s.group(2)))
        else:
            steps.append(s.group(3))
    return tuple(steps)


def _lookup(doc: Any, steps: tuple[str | int, ...]) -> Any:
    for s in steps:
        if type(s) is int:
            if type(doc) is not list or s >= len(doc):
                return _NOTHING
            doc = doc[s]
        else:
            if not isinstance(doc, dict):
                return _NOTHING
            doc = doc.get(s, _NOTHING)
            if doc is _NOTHING:
                return _NOTHING
    return doc


def _jsonpath_extractor(field: str, expr: str, name: str) -> Callable[[Any], Any]:
    if not isinstance(expr, str) or not expr.strip():
        raise FilterError(
            f"transformation {name!r}: field {field!r} has an empty JSONPath", transformation=name
        )
    try:
        parsed: jp.JSONPath = jsonpath_parse(expr)
    except Exception as exc:
        raise FilterError(
            f"transformation {name!r}: invalid JSONPath for field {field!r}: {expr!r}: {exc}",
            transformation=name,
            field=field,
        ) from None
    steps = _simple_path(expr)
    if steps is not None:

        def simple(doc: Any) -> Any:
            v = _lookup(doc, steps)
            return None if v is _NOTHING else v

        return simple

    find = parsed.find

    def general(doc: Any) -> Any:
        matches = find(doc)
        if not matches:
            return None
        if len(matches) == 1:
            return matches[0].value
        return [m.value for m in matches]

    return general


def _compile_jsonpath(cfg: TransformationConfig) -> Callable[[Mapping[str, Any]], bytes]:
    mapping = cfg.jsonpath or {}
    if not mapping:
        raise FilterError(
            f"transformation {cfg.name!r}: jsonpath needs at least one field",
            transformation=cfg.name,
        )
    fields = tuple((field, _jsonpath_extractor(field, expr, cfg.name)) for field, expr in mapping.items())

    def apply(event: Mapping[str, Any]) -> bytes:
        doc = event if isinstance(event, dict) else dict(event)
        return _dumps({field: get(doc) for field, get in fields})

    return apply


def compile_transformation(cfg: TransformationConfig) -> Transformation:
    """Compile a :class:`TransformationConfig`; :class:`FilterError` when it is invalid."""
    if cfg.template is not None:
        return Transformation(cfg.name, cfg.target, "template", _compile_template(cfg))
    return Transformation(cfg.name, cfg.target, "jsonpath", _compile_jsonpath(cfg))


class TransformRegistry:
    """Transformations by target (a webhook URL or a stream / Kafka topic / Kinesis stream name)."""

    def __init__(self, transformations: Iterable[Transformation | TransformationConfig]) -> None:
        self._by_target: dict[str, Transformation] = {}
        for t in transformations:
            if isinstance(t, TransformationConfig):
                t = compile_transformation(t)
            key = self._norm(t.target)
            other = self._by_target.get(key)
            if other is not None:
                raise FilterError(
                    f"transformations {other.name!r} and {t.name!r} both target {t.target!r}; "
                    "give each target one transformation",
                    target=t.target,
                )
            self._by_target[key] = t

    @staticmethod
    def _norm(target: str) -> str:
        target = target.strip()
        return target.rstrip("/") if "://" in target else target

    def for_target(self, url_or_stream_name: str) -> Transformation | None:
        return self._by_target.get(self._norm(url_or_stream_name))

    def __len__(self) -> int:
        return len(self._by_target)

    def __iter__(self) -> Any:
        return iter(self._by_target.values())
