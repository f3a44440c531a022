"""Which codec turns pgoutput rows into event JSON: the compiled one or the pure-Python one.

The compiled codec (``heliosdb_cdc._native``, Rust, built by ``pip install``
when cargo is present) does the per-row work of the capture hot path: an
INSERT, UPDATE or DELETE message to the event's key and JSON bytes, without a
Python object per column. The pure-Python decoder stays the reference: the
compiled codec gives the same bytes (``tests/test_codec.py`` checks it), hands a
column type it has no encoder for to that type's Python encoder, and hands a
row it does not handle (malformed, binary format) back to the Python path, which
then says what is wrong.

``HELIOSDB_CDC_PURE_PYTHON=1`` in the environment selects the pure-Python path;
it is also used when the extension is not built. :func:`codec_name` says which
one runs; the service logs it at startup and reports it in ``/health`` and
``heliosdb-cdc status``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from .._event import dumps
from . import _types

ENV_PURE_PYTHON = "HELIOSDB_CDC_PURE_PYTHON"
ABI = 2  # the compiled module's interface this code speaks (rust/src/lib.rs, ``ABI``)


def load_native() -> ModuleType:
    """The compiled codec, whatever the environment says; ImportError when it is not built."""
    try:
        module = importlib.import_module("heliosdb_cdc._native")
    except ImportError as exc:
        raise ImportError(
            f"the compiled codec heliosdb_cdc._native is not built ({exc}); "
            "`pip install -e .` builds it (needs cargo)"
        ) from exc
    if getattr(module, "ABI", None) != ABI:
        raise ImportError(
            f"the compiled codec at {module.__file__} was built from other sources "
            f"(interface {getattr(module, 'ABI', 1)}, this code needs {ABI}); "
            "`pip install -e .` rebuilds it"
        )
    return module


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get(ENV_PURE_PYTHON, "").strip().lower() in ("1", "true", "yes", "on"):
        return None, f"pure-python ({ENV_PURE_PYTHON} is set)"
    try:
        return load_native(), "native"
    except ImportError as exc:
        return None, f"pure-python ({exc})"


_NATIVE, _WHY = _load()


def native_module() -> ModuleType | None:
    """The compiled codec module, or None when the pure-Python path is in use."""
    return _NATIVE


def codec_name() -> str:
    """``native`` or ``pure-python``: the codec capture uses in this process."""
    return "native" if _NATIVE is not None else "pure-python"


def codec_description() -> str:
    """:func:`codec_name` with the reason when it is the pure-Python one."""
    return _WHY


def kind_of(native: ModuleType, encoder: Any) -> int:
    """The compiled encoder doing what the Python ``encoder`` (``_types.encoder_for``) does.

    Decided by the identity of the Python encoder (or, for the generic one, of its
    converter), so a type whose Python encoder changes, and is not mirrored in
    ``rust/src/encode.rs``, falls back to that Python encoder instead of diverging.
    """
    n = native
    by_encoder: dict[Any, int] = {
        getattr(_types, "_enc_verbatim", None): n.KIND_VERBATIM,
        getattr(_types, "_enc_numeric", None): n.KIND_NUMERIC,
        getattr(_types, "_enc_bool", None): n.KIND_BOOL,
        getattr(_types, "_enc_str", None): n.KIND_STR,
        getattr(_types, "_enc_float", None): n.KIND_FLOAT,
        getattr(_types, "_enc_timestamptz", None): n.KIND_TIMESTAMPTZ,
        getattr(_types, "_enc_date", None): n.KIND_DATE,
    }
    by_encoder.pop(None, None)
    kind = by_encoder.get(encoder)
    if kind is not None:
        return kind
    # types whose Python encoder is the generic one (their converter, then JSON)
    conv = _generic_converter(encoder)
    if conv is None:
        return int(n.KIND_PYTHON)
    if conv is getattr(_types, "_to_timestamp", None):
        return int(n.KIND_TIMESTAMP)
    if conv is getattr(_types, "_to_bytea", None):
        return int(n.KIND_BYTEA)
    if getattr(conv, "__qualname__", "") == "_array_converter.<locals>.convert":
        # psycopg2's text[] parser, then the element converter: arrays of these are compiled
        elements = {
            getattr(_types, "_to_int", None): n.ARRAY_INT,
            getattr(_types, "_to_float", None): n.ARRAY_FLOAT,
            getattr(_types, "_to_numeric", None): n.ARRAY_NUMERIC,
            getattr(_types, "_to_bool", None): n.ARRAY_BOOL,
            getattr(_types, "_to_str", None): n.ARRAY_STR,
        }
        elements.pop(None, None)
        for cell in conv.__closure__ or ():
            for fn, elem in elements.items():
                if cell.cell_contents is fn:
                    return int(n.KIND_ARRAY + elem)
    return int(n.KIND_PYTHON)


def kind_for(native: ModuleType, type_oid: int) -> int:
    """:func:`kind_of` the Python encoder of a column type."""
    return kind_of(native, _types.encoder_for(type_oid))


def _generic_converter(enc: Any) -> Any:
    """The converter of ``_types._generic_encoder(converter)``; None for other encoders."""
    if not getattr(enc, "__qualname__", "").startswith("_generic_encoder."):
        return None
    cells: tuple[Any, ...] = getattr(enc, "__closure__", None) or ()
    return cells[0].cell_contents if len(cells) == 1 else None


def row_codec(
    native: ModuleType | None,
    names: Sequence[str],
    encoders: Sequence[Any],
    key_idx: Sequence[int],
    database: str,
    table: str,
) -> Any:
    """The compiled codec (``native``) of one relation whose columns have the Python
    ``encoders`` (``RelationInfo.encoders``); None on the pure-Python path."""
    if native is None:
        return None
    heads = [dumps(name) + b":" for name in names]
    kinds = [kind_of(native, enc) for enc in encoders]
    fallbacks = list(encoders)
    where = b',"database":' + dumps(database) + b',"table":' + dumps(table) + b',"key":'
    op_heads = [b',"operation":"%s"%s' % (op, where) for op in (b"INSERT", b"UPDATE", b"DELETE")]
    return native.RowCodec(heads, kinds, fallbacks, list(key_idx), op_heads, table)
