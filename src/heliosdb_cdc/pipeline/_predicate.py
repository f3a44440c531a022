"""SQL ``WHERE``-style predicates compiled to nested Python closures.

The predicate text is parsed once with sqlglot (PostgreSQL dialect); the AST is
walked once and turned into closures ``node(row, old) -> value``. Nothing is
ever ``eval``-ed. SQL three-valued logic is kept: ``None`` is NULL/UNKNOWN, and a
predicate passes only when it evaluates to TRUE.

Values are compared by kind: numbers (int, Decimal, float), text, booleans.
Comparing different kinds (a text column with a number) is UNKNOWN at run time,
never an exception. Numbers compare exactly (``Decimal`` with ``int``); a float
on either side makes it a float comparison, as PostgreSQL does for ``float8``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Collection, Mapping
from decimal import Context, Decimal, DivisionByZero, InvalidOperation, Overflow
from functools import lru_cache
from typing import Any, Final

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType  # type: ignore[attr-defined]

from .._errors import FilterError

__all__ = ["Predicate", "compile_predicate"]

Row = Mapping[str, Any]
Node = Callable[[Row, Row], Any]

_EMPTY: Final[Mapping[str, Any]] = {}
_MISSING: Final = object()
# Exact decimal arithmetic: wide enough for any PostgreSQL numeric we meet in practice.
_DEC: Final = Context(prec=1000, traps=[InvalidOperation, DivisionByZero, Overflow])

_NUM, _STR, _BOOL, _OTHER = 1, 2, 3, 4


def _kind(v: Any) -> int:
    t = type(v)
    if t is int or t is Decimal or t is float:
        return _NUM
    if t is str:
        return _STR
    if t is bool:
        return _BOOL
    if isinstance(v, bool):
        return _BOOL
    if isinstance(v, (int, Decimal, float)):
        return _NUM
    if isinstance(v, str):
        return _STR
    return _OTHER


def _num_pair(a: Any, b: Any) -> tuple[Any, Any]:
    """Make two numbers comparable exactly; a float on either side makes both floats."""
    if type(a) is float or type(b) is float:
        return float(a), float(b)
    return a, b


def _cmp3(a: Any, b: Any) -> int | None:
    """-1/0/1, or None for NULL or values of kinds that do not compare."""
    if a is None or b is None:
        return None
    ka, kb = _kind(a), _kind(b)
    if ka != kb or ka == _OTHER:
        if ka == kb and a == b:  # lists/dicts: equality only
            return 0
        return None
    if ka == _NUM:
        a, b = _num_pair(a, b)
    if a == b:
        return 0
    return -1 if a < b else 1


def _literal_number(text: str) -> int | Decimal:
    if re.fullmatch(r"[0-9]+", text):
        return int(text)
    return Decimal(text)


def _maybe_number(s: str) -> int | Decimal | None:
    """A quoted literal such as ``'100'`` used against a number column (PostgreSQL coerces it)."""
    try:
        return _literal_number(s.strip())
    except (InvalidOperation, ValueError):
        return None


# --------------------------------------------------------------------------- LIKE


@lru_cache(maxsize=1024)
def _like_regex(pattern: str, escape: str | None, ci: bool) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if escape is not None and c == escape:
            if i + 1 >= n:
                raise FilterError(f"LIKE pattern {pattern!r} ends with the escape character {escape!r}")
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if c == "%":
            out.append(".*")
        elif c == "_":
            out.append(".")
        else:
            out.append(re.escape(c))
        i += 1
    flags = re.DOTALL | (re.IGNORECASE if ci else 0)
    return re.compile("".join(out), flags)


# --------------------------------------------------------------------------- compiler


class _Const:
    """Marks a node whose value is known at compile time (constant folding)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


_Compiled = Node | _Const

_CMP_OPS: Final[dict[type[exp.Expression], Callable[[int], bool]]] = {
    exp.EQ: lambda c: c == 0,
    exp.NEQ: lambda c: c != 0,
    exp.LT: lambda c: c < 0,
    exp.LTE: lambda c: c <= 0,
    exp.GT: lambda c: c > 0,
    exp.GTE: lambda c: c >= 0,
}
_PY_OPS: Final[dict[type[exp.Expression], Callable[[Any, Any], bool]]] = {
    exp.EQ: operator.eq,
    exp.NEQ: operator.ne,
    exp.LT: operator.lt,
    exp.LTE: operator.le,
    exp.GT: operator.gt,
    exp.GTE: operator.ge,
}
_SQL_OP: Final[dict[type[exp.Expression], str]] = {
    exp.EQ: "=",
    exp.NEQ: "<>",
    exp.LT: "<",
    exp.LTE: "<=",
    exp.GT: ">",
    exp.GTE: ">=",
}
_FUNCTIONS = "lower, upper, length, trim, coalesce, abs"


def _arith(kind: type[exp.Expression], a: Any, b: Any) -> Any:
    if a is None or b is None:
        return None
    if _kind(a) != _NUM or _kind(b) != _NUM:
        return None
    try:
        if type(a) is float or type(b) is float:
            fa, fb = float(a), float(b)
            if kind is exp.Add:
                return fa + fb
            if kind is exp.Sub:
                return fa - fb
            if kind is exp.Mul:
                return fa * fb
            if kind is exp.Div:
                return fa / fb
            import math

            return math.fmod(fa, fb)
        if type(a) is int and type(b) is int:
            if kind is exp.Add:
                return a + b
            if kind is exp.Sub:
                return a - b
            if kind is exp.Mul:
                return a * b
            if b == 0:
                return None
            q = abs(a) // abs(b)  # PostgreSQL integer division truncates toward zero
            if kind is exp.Div:
                return -q if (a < 0) != (b < 0) else q
            r = abs(a) - q * abs(b)
            return -r if a < 0 else r
        da, db = Decimal(a), Decimal(b)
        if kind is exp.Add:
            return _DEC.add(da, db)
        if kind is exp.Sub:
            return _DEC.subtract(da, db)
        if kind is exp.Mul:
            return _DEC.multiply(da, db)
        if kind is exp.Div:
            return _DEC.divide(da, db)
        return _DEC.remainder(da, db)
    except (ZeroDivisionError, ArithmeticError):
        return None  # division by zero / overflow: UNKNOWN, the event is filtered out


def _not3(v: Any) -> Any:
    if v is None or type(v) is not bool:
        return None
    return not v


def _truth(v: Any) -> bool | None:
    """The boolean value of an operand of AND/OR/NOT; non-booleans are UNKNOWN."""
    return v if type(v) is bool else None


class _Compiler:
    def __init__(self, sql: str, columns: frozenset[str] | None) -> None:
        self.sql = sql
        self.columns = columns
        self.used: set[str] = set()
        self.uses_old = False

    def fail(self, what: str, node: exp.Expression | None = None) -> FilterError:
        at = f" in {node.sql(dialect='postgres')!r}" if node is not None else ""
        return FilterError(f"{what}{at}", predicate=self.sql)

    # -- entry

    def compile(self, node: exp.Expression) -> _Compiled:
        if isinstance(node, exp.Paren):
            return self.compile(node.this)
        if isinstance(node, (exp.Subquery, exp.Select, exp.Exists, exp.Query)):
            raise self.fail("subqueries are not allowed in a filter predicate", node)
        method = getattr(self, "c_" + type(node).__name__, None)
        if method is None:
            raise self.unsupported(node)
        result: _Compiled = method(node)
        return result

    def unsupported(self, node: exp.Expression) -> FilterError:
        if isinstance(node, exp.Cast):
            return self.fail("casts (CAST / ::) are not supported", node)
        if isinstance(node, exp.Func):
            name = node.sql_name() if not isinstance(node, exp.Anonymous) else str(node.this)
            return self.fail(
                f"unknown or unsupported function {name.lower()}(); supported: {_FUNCTIONS}",
                node,
            )
        if isinstance(node, (exp.Parameter, exp.Placeholder)):
            return self.fail("parameters/placeholders are not supported", node)
        return self.fail(f"unsupported SQL construct {type(node).__name__}", node)

    # -- leaves

    def c_Literal(self, node: exp.Literal) -> _Compiled:
        if node.is_string:
            return _Const(str(node.this))
        try:
            return _Const(_literal_number(str(node.this)))
        except (InvalidOperation, ValueError):
            raise self.fail(f"invalid number {node.this!r}") from None

    def c_Null(self, node: exp.Null) -> _Compiled:
        return _Const(None)

    def c_Boolean(self, node: exp.Boolean) -> _Compiled:
        return _Const(bool(node.this))

    def c_ByteString(self, node: exp.ByteString) -> _Compiled:
        raise self.fail("E'...' escape strings are not supported; use a plain '...' string", node)

    def c_Column(self, node: exp.Column) -> _Compiled:
        if node.args.get("db") is not None or node.args.get("catalog") is not None:
            raise self.fail("column references are `col`, `old.col` or `new.col`", node)
        ident = node.this
        if isinstance(ident, exp.Star):
            raise self.fail("'*' is not a value", node)
        name = ident.this if ident.args.get("quoted") else str(ident.this).lower()
        qual = node.args.get("table")
        qualifier = str(qual.this).lower() if qual is not None else None
        if qualifier not in (None, "old", "new"):
            raise self.fail(
                f"unknown qualifier {qualifier!r}; columns are `col`, `old.col` or `new.col`",
                node,
            )
        if self.columns is not None and name not in self.columns:
            known = ", ".join(sorted(self.columns)) or "(none)"
            raise self.fail(f"unknown column {name!r}; known columns: {known}")
        self.used.add(name)
        if qualifier == "old":
            self.uses_old = True

            def old_col(row: Row, old: Row, _n: str = name) -> Any:
                return old.get(_n)

            return old_col

        def col(row: Row, old: Row, _n: str = name) -> Any:
            v = row.get(_n, _MISSING)
            if v is _MISSING:
                # Absent from the new row: an unchanged TOASTed value; the old row
                # (REPLICA IDENTITY FULL) still has it. Otherwise NULL/unknown.
                return old.get(_n)
            return v

        return col

    # -- helpers

    @staticmethod
    def fn(c: _Compiled) -> Node:
        if isinstance(c, _Const):
            value = c.value
            return lambda row, old: value
        return c

    def unary(self, c: _Compiled, f: Callable[[Any], Any]) -> _Compiled:
        if isinstance(c, _Const):
            return _Const(f(c.value))
        return lambda row, old: f(c(row, old))

    def binary(self, a: _Compiled, b: _Compiled, f: Callable[[Any, Any], Any]) -> _Compiled:
        if isinstance(a, _Const) and isinstance(b, _Const):
            return _Const(f(a.value, b.value))
        fa, fb = self.fn(a), self.fn(b)
        return lambda row, old: f(fa(row, old), fb(row, old))

    def check_bool_operand(self, c: _Compiled, node: exp.Expression) -> None:
        if isinstance(c, _Const) and c.value is not None and type(c.value) is not bool:
            raise self.fail(
                f"argument of {type(node.parent).__name__.upper()} must be boolean, not {c.value!r}",
                node,
            )

    # -- logic

    def c_And(self, node: exp.And) -> _Compiled:
        a, b = self.compile(node.this), self.compile(node.expression)
        self.check_bool_operand(a, node.this)
        self.check_bool_operand(b, node.expression)

        def and3(x: Any, y: Any) -> Any:
            x, y = _truth(x), _truth(y)
            if x is False or y is False:
                return False
            if x is None or y is None:
                return None
            return True

        if isinstance(a, _Const) or isinstance(b, _Const):
            return self.binary(a, b, and3)

        def and_(row: Row, old: Row) -> Any:
            x = a(row, old)
            if x is False:
                return False
            y = b(row, old)
            if y is False:
                return False
            if x is True and y is True:
                return True
            return None

        return and_

    def c_Or(self, node: exp.Or) -> _Compiled:
        a, b = self.compile(node.this), self.compile(node.expression)
        self.check_bool_operand(a, node.this)
        self.check_bool_operand(b, node.expression)

        def or3(x: Any, y: Any) -> Any:
            x, y = _truth(x), _truth(y)
            if x is True or y is True:
                return True
            if x is None or y is None:
                return None
            return False

        if isinstance(a, _Const) or isinstance(b, _Const):
            return self.binary(a, b, or3)

        def or_(row: Row, old: Row) -> Any:
            x = a(row, old)
            if x is True:
                return True
            y = b(row, old)
            if y is True:
                return True
            if x is False and y is False:
                return False
            return None

        return or_

    def c_Not(self, node: exp.Not) -> _Compiled:
        a = self.compile(node.this)
        self.check_bool_operand(a, node.this)
        return self.unary(a, _not3)

    # -- comparisons

    def comparison(self, node: exp.Expression, test: Callable[[int], bool]) -> _Compiled:
        a, b = self.compile(node.this), self.compile(node.expression)
        a, b = self.coerce_pair(a, b, node)
        pyop = _PY_OPS.get(type(node))
        # Fast path: column against a numeric / text constant.
        if pyop is not None and not isinstance(a, _Const) and isinstance(b, _Const):
            return self.fast_cmp(a, b.value, pyop, test)
        if pyop is not None and isinstance(a, _Const) and not isinstance(b, _Const):
            flipped = {
                operator.lt: operator.gt,
                operator.le: operator.ge,
                operator.gt: operator.lt,
                operator.ge: operator.le,
            }.get(pyop, pyop)
            return self.fast_cmp(b, a.value, flipped, lambda c: test(-c))

        def cmp(x: Any, y: Any) -> Any:
            c = _cmp3(x, y)
            return None if c is None else test(c)

        return self.binary(a, b, cmp)

    def fast_cmp(
        self, col: Node, lit: Any, pyop: Callable[[Any, Any], bool], test: Callable[[int], bool]
    ) -> _Compiled:
        if lit is None:
            return _Const(None)
        lk = _kind(lit)
        if lk == _NUM:
            flit = float(lit)
            num_lit = _maybe_number(lit) if isinstance(lit, str) else lit

            def num_cmp(row: Row, old: Row) -> Any:
                v = col(row, old)
                t = type(v)
                if t is int or t is Decimal:
                    return pyop(v, num_lit)
                if t is float:
                    return pyop(v, flit)
                return None

            return num_cmp
        if lk == _STR:
            as_num = _maybe_number(lit)
            f_as_num = float(as_num) if as_num is not None else None

            def str_cmp(row: Row, old: Row) -> Any:
                v = col(row, old)
                t = type(v)
                if t is str:
                    return pyop(v, lit)
                if as_num is not None and (t is int or t is Decimal):
                    return pyop(v, as_num)
                if f_as_num is not None and t is float:
                    return pyop(v, f_as_num)
                return None

            return str_cmp

        def any_cmp(row: Row, old: Row) -> Any:
            c = _cmp3(col(row, old), lit)
            return None if c is None else test(c)

        return any_cmp

    def coerce_pair(self, a: _Compiled, b: _Compiled, node: exp.Expression) -> tuple[_Compiled, _Compiled]:
        """Compile-time type check of two constants."""
        if isinstance(a, _Const) and isinstance(b, _Const):
            x, y = a.value, b.value
            if x is not None and y is not None and _kind(x) != _kind(y):
                if _kind(x) == _STR and _maybe_number(x) is not None and _kind(y) == _NUM:
                    return _Const(_maybe_number(x)), b
                if _kind(y) == _STR and _maybe_number(y) is not None and _kind(x) == _NUM:
                    return a, _Const(_maybe_number(y))
                raise self.fail(
                    f"cannot compare {type(x).__name__} {x!r} with {type(y).__name__} {y!r}",
                    node,
                )
        return a, b

    def c_EQ(self, node: exp.EQ) -> _Compiled:
        return self.comparison(node, _CMP_OPS[exp.EQ])

    def c_NEQ(self, node: exp.NEQ) -> _Compiled:
        return self.comparison(node, _CMP_OPS[exp.NEQ])

    def c_LT(self, node: exp.LT) -> _Compiled:
        return self.comparison(node, _CMP_OPS[exp.LT])

    def c_LTE(self, node: exp.LTE) -> _Compiled:
        return self.comparison(node, _CMP_OPS[exp.LTE])

    def c_GT(self, node: exp.GT) -> _Compiled:
        return self.comparison(node, _CMP_OPS[exp.GT])

    def c_GTE(self, node: exp.GTE) -> _Compiled:
        return self.comparison(node, _CMP_OPS[exp.GTE])

    def c_NullSafeEQ(self, node: exp.NullSafeEQ) -> _Compiled:
        a, b = self.compile(node.this), self.compile(node.expression)

        def same(x: Any, y: Any) -> bool:
            if x is None or y is None:
                return x is None and y is None
            return _cmp3(x, y) == 0

        return self.binary(a, b, same)

    def c_NullSafeNEQ(self, node: exp.NullSafeNEQ) -> _Compiled:
        same = self.c_NullSafeEQ(node)  # type: ignore[arg-type]
        return self.unary(same, lambda v: not v)

    def c_Is(self, node: exp.Is) -> _Compiled:
        a = self.compile(node.this)
        target = node.expression
        negate = bool(node.args.get("negate"))
        if isinstance(target, exp.Null):

            def is_null(v: Any) -> bool:
                return (v is None) != negate

            return self.unary(a, is_null)
        if isinstance(target, exp.Boolean):
            want = bool(target.this)

            def is_bool(v: Any) -> Any:
                if v is None:
                    return negate
                if type(v) is not bool:
                    return None
                return (v is want) != negate

            return self.unary(a, is_bool)
        raise self.fail("IS must be followed by NULL, TRUE or FALSE", node)

    def c_In(self, node: exp.In) -> _Compiled:
        if node.args.get("query") is not None:
            raise self.fail("subqueries are not allowed in a filter predicate", node)
        if node.args.get("unnest") is not None or node.args.get("field") is not None:
            raise self.unsupported(node)
        a = self.compile(node.this)
        items = [self.compile(e) for e in node.expressions]
        if all(isinstance(i, _Const) for i in items):
            consts = [i.value for i in items if isinstance(i, _Const)]
            has_null = any(v is None for v in consts)
            values = [v for v in consts if v is not None]
            hashset = {v for v in values if type(v) in (str, int, Decimal)}

            def in_const(v: Any) -> Any:
                if v is None:
                    return None
                t = type(v)
                if (t is str or t is int or t is Decimal) and v in hashset:
                    return True
                unknown = has_null
                for c in values:
                    r = _cmp3(v, c)
                    if r is None and type(c) is str and _kind(v) == _NUM:
                        n = _maybe_number(c)
                        r = None if n is None else _cmp3(v, n)
                    if r == 0:
                        return True
                    if r is None:
                        unknown = True
                return None if unknown else False

            return self.unary(a, in_const)

        fa = self.fn(a)
        fitems = [self.fn(i) for i in items]

        def in_(row: Row, old: Row) -> Any:
            v = fa(row, old)
            if v is None:
                return None
            unknown = False
            for f in fitems:
                c = _cmp3(v, f(row, old))
                if c == 0:
                    return True
                if c is None:
                    unknown = True
            return None if unknown else False

        return in_

    def c_Between(self, node: exp.Between) -> _Compiled:
        if node.args.get("symmetric"):
            raise self.fail("BETWEEN SYMMETRIC is not supported", node)
        a = self.fn(self.compile(node.this))
        lo = self.fn(self.compile(node.args["low"]))
        hi = self.fn(self.compile(node.args["high"]))

        def between(row: Row, old: Row) -> Any:
            v = a(row, old)
            c1 = _cmp3(v, lo(row, old))
            c2 = _cmp3(v, hi(row, old))
            r1 = None if c1 is None else c1 >= 0
            r2 = None if c2 is None else c2 <= 0
            if r1 is False or r2 is False:
                return False
            if r1 is None or r2 is None:
                return None
            return True

        return between

    # -- LIKE

    def like(self, node: exp.Expression, ci: bool, escape: str | None) -> _Compiled:
        a = self.compile(node.this)
        p = self.compile(node.expression)
        negate = bool(node.args.get("negate"))

        if isinstance(p, _Const):
            if p.value is None:
                return _Const(None)
            if not isinstance(p.value, str):
                raise self.fail("a LIKE pattern must be text", node)
            rx = _like_regex(p.value, escape, ci)
            match = rx.fullmatch

            def like_const(v: Any) -> Any:
                if type(v) is not str:
                    return None
                return (match(v) is not None) != negate

            return self.unary(a, like_const)

        def like_any(v: Any, pat: Any) -> Any:
            if type(v) is not str or type(pat) is not str:
                return None
            try:
                return (_like_regex(pat, escape, ci).fullmatch(v) is not None) != negate
            except FilterError:
                return None

        return self.binary(a, p, like_any)

    def c_Like(self, node: exp.Like) -> _Compiled:
        return self.like(node, False, "\\")

    def c_ILike(self, node: exp.ILike) -> _Compiled:
        return self.like(node, True, "\\")

    def c_Escape(self, node: exp.Escape) -> _Compiled:
        inner = node.this
        esc = node.expression
        if not isinstance(inner, (exp.Like, exp.ILike)):
            raise self.fail("ESCAPE only follows LIKE / ILIKE", node)
        if not (isinstance(esc, exp.Literal) and esc.is_string) or len(str(esc.this)) > 1:
            raise self.fail("ESCAPE needs a single-character string", node)
        char = str(esc.this) or None
        return self.like(inner, isinstance(inner, exp.ILike), char)

    # -- arithmetic

    def arith(self, node: exp.Expression) -> _Compiled:
        kind = type(node)
        a, b = self.compile(node.this), self.compile(node.expression)
        for c, n in ((a, node.this), (b, node.expression)):
            if isinstance(c, _Const) and c.value is not None and _kind(c.value) != _NUM:
                raise self.fail(f"arithmetic needs numbers, not {c.value!r}", n)
        return self.binary(a, b, lambda x, y: _arith(kind, x, y))

    c_Add = c_Sub = c_Mul = c_Div = c_Mod = arith

    def c_Neg(self, node: exp.Neg) -> _Compiled:
        a = self.compile(node.this)
        if isinstance(a, _Const) and a.value is not None and _kind(a.value) != _NUM:
            raise self.fail(f"unary minus needs a number, not {a.value!r}", node)

        def neg(v: Any) -> Any:
            return -v if _kind(v) == _NUM else None

        return self.unary(a, neg)

    def c_DPipe(self, node: exp.DPipe) -> _Compiled:
        a, b = self.compile(node.this), self.compile(node.expression)

        def text(v: Any) -> str:
            if type(v) is bool:
                return "true" if v else "false"
            return str(v)

        def concat(x: Any, y: Any) -> Any:
            if x is None or y is None:
                return None
            return text(x) + text(y)

        return self.binary(a, b, concat)

    # -- functions

    def c_Lower(self, node: exp.Lower) -> _Compiled:
        return self.unary(self.compile(node.this), lambda v: v.lower() if type(v) is str else None)

    def c_Upper(self, node: exp.Upper) -> _Compiled:
        return self.unary(self.compile(node.this), lambda v: v.upper() if type(v) is str else None)

    def c_Length(self, node: exp.Length) -> _Compiled:
        return self.unary(self.compile(node.this), lambda v: len(v) if type(v) is str else None)

    def c_Abs(self, node: exp.Abs) -> _Compiled:
        return self.unary(self.compile(node.this), lambda v: abs(v) if _kind(v) == _NUM else None)

    def c_Trim(self, node: exp.Trim) -> _Compiled:
        if node.args.get("collation") is not None:
            raise self.unsupported(node)
        position = str(node.args.get("position") or "BOTH").upper()
        chars_node = node.args.get("expression")
        chars: str | None = None
        if chars_node is not None:
            c = self.compile(chars_node)
            if not isinstance(c, _Const) or not isinstance(c.value, str):
                raise self.fail("trim characters must be a string literal", node)
            chars = c.value
        strip = {"LEADING": str.lstrip, "TRAILING": str.rstrip}.get(position, str.strip)
        ws = " " if chars is None else chars

        return self.unary(self.compile(node.this), lambda v: strip(v, ws) if type(v) is str else None)

    def c_Coalesce(self, node: exp.Coalesce) -> _Compiled:
        parts = [self.fn(self.compile(node.this))]
        parts += [self.fn(self.compile(e)) for e in node.expressions]

        def coalesce(row: Row, old: Row) -> Any:
            for p in parts:
                v = p(row, old)
                if v is not None:
                    return v
            return None

        return coalesce


class Predicate:
    """A compiled predicate. ``pred(event) -> bool``; ``pred.evaluate(event)`` gives the
    three-valued result (True, False or None for UNKNOWN)."""

    __slots__ = ("_node", "columns", "sql", "uses_old")

    def __init__(self, sql: str, node: Node, columns: frozenset[str], uses_old: bool) -> None:
        self.sql = sql
        self._node = node
        #: column names the predicate reads
        self.columns = columns
        #: whether it reads ``old.col``
        self.uses_old = uses_old

    def evaluate(self, event: Mapping[str, Any]) -> bool | None:
        value = event.get("value")
        old = event.get("old_value")
        if value is None and old is None:
            return None  # TRUNCATE / SCHEMA_CHANGE: no row
        row = old or _EMPTY if event.get("operation") == "DELETE" or value is None else value
        r = self._node(row, old or _EMPTY)
        return r if type(r) is bool else None

    def evaluate_row(
        self, value: Mapping[str, Any], old_value: Mapping[str, Any] | None = None
    ) -> bool | None:
        """Evaluate against a bare row (``old.col`` reads ``old_value``)."""
        r = self._node(value, old_value or _EMPTY)
        return r if type(r) is bool else None

    def __call__(self, event: Mapping[str, Any]) -> bool:
        return self.evaluate(event) is True

    def __repr__(self) -> str:
        return f"Predicate({self.sql!r})"


def _parse(sql: str) -> exp.Expression:
    if not isinstance(sql, str) or not sql.strip():
        raise FilterError('empty predicate: write a SQL condition such as "total > 1000"')
    try:
        tokens = sqlglot.tokenize(sql, read="postgres")
    except TokenError as exc:
        raise FilterError(f"cannot parse predicate: {exc}", predicate=sql) from None
    if any(t.token_type == TokenType.SEMICOLON for t in tokens):
        raise FilterError(
            "';' is not allowed in a predicate: give a single condition, not statements",
            predicate=sql,
        )
    try:
        node: exp.Expression = sqlglot.condition(sql, dialect="postgres")  # type: ignore[assignment]
    except ParseError as exc:
        errs = exc.errors
        if errs:
            e = errs[0]
            near = (e.get("highlight") or "").strip()
            desc = re.sub(r"<class 'sqlglot\.[\w.]*?(\w+)'>", r"\1", str(e.get("description")))
            msg = (
                f"cannot parse predicate {sql!r}: {desc}"
                f" near {near!r} at line {e.get('line')}, column {e.get('col')}"
            )
        else:
            msg = f"cannot parse predicate {sql!r}: {exc}"
        raise FilterError(msg) from None
    except (TokenError, ValueError) as exc:
        raise FilterError(f"cannot parse predicate {sql!r}: {exc}") from None
    return node


def compile_predicate(sql: str, columns: Collection[str] | None = None) -> Predicate:
    """Compile a SQL condition (``"total > 1000 AND status <> 'cancelled'"``).

    ``columns``: when given, every column the predicate names must be one of them
    (else :class:`FilterError` listing the known columns).
    Raises :class:`FilterError` for syntax errors and unsupported constructs.
    """
    node = _parse(sql)
    compiler = _Compiler(sql, frozenset(columns) if columns is not None else None)
    compiled = compiler.compile(node)
    if isinstance(compiled, _Const):
        v = compiled.value
        if v is not None and type(v) is not bool:
            raise FilterError(f"a predicate must be a condition, not the value {v!r}", predicate=sql)
        const = v

        def fixed(row: Row, old: Row) -> Any:
            return const

        fn: Node = fixed
    else:
        fn = compiled
    return Predicate(sql, fn, frozenset(compiler.used), compiler.uses_old)
