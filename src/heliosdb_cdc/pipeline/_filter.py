"""Event filters: tables, operations, changed columns and a SQL predicate.

See docs/filtering.md for the semantics; in short:

* ``tables``: empty = every table; exact names, ``schema.table`` (``public.`` is the
  default schema, so ``public.orders`` is ``orders``) or ``fnmatch`` globs (``audit_*``,
  ``sales.*``, ``*``);
* ``operations``: empty = every operation;
* ``columns``: for an UPDATE of a listed table, pass only if a listed column changed;
* ``predicate``: a SQL condition on the new row (the old row for DELETE).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .._config import FilterConfig
from .._errors import FilterError
from .._event import OperationType
from ._predicate import Predicate, compile_predicate

__all__ = ["CompiledFilter", "EventFilter", "FilterChain", "TableMatcher", "compile_filter"]

_CACHE_LIMIT = 65536


def _qualify(name: str) -> str:
    """``orders`` -> ``public.orders``; ``sales.orders`` unchanged."""
    return name if "." in name else "public." + name


class TableMatcher:
    """Matches event table names against a list of names / globs, cached per table name."""

    __slots__ = ("_cache", "_exact", "_globs", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        exact: set[str] = set()
        globs: list[str] = []
        for p in self.patterns:
            p = p.strip()
            if not p:
                raise FilterError("empty table name in a filter's tables")
            if p == "*":
                globs.append("*")  # every table of every schema
            elif any(ch in p for ch in "*?["):
                globs.append(_qualify(p))
            else:
                exact.add(_qualify(p))
        self._exact = frozenset(exact)
        self._globs = tuple(globs)
        self._cache: dict[str, bool] = {}

    @property
    def matches_all(self) -> bool:
        return not self.patterns or "*" in self._globs

    def __call__(self, table: str) -> bool:
        hit = self._cache.get(table)
        if hit is not None:
            return hit
        if not self.patterns:
            result = True
        else:
            q = _qualify(table)
            result = q in self._exact or any(fnmatch.fnmatchcase(q, g) for g in self._globs)
        if len(self._cache) < _CACHE_LIMIT:
            self._cache[table] = result
        return result


def _ops(operations: Iterable[OperationType | str]) -> frozenset[str]:
    out: set[str] = set()
    for o in operations:
        try:
            out.add(OperationType.parse(o).value)
        except ValueError as exc:
            raise FilterError(str(exc)) from None
    return frozenset(out)


class CompiledFilter:
    """A filter ready to run. ``f(event)`` is True when the event passes.

    * :meth:`applies_to` - whether the filter's ``tables`` select this table;
    * :meth:`matches` - operations, changed columns and predicate (not the table);
    * ``f(event)`` = ``f.applies_to(event["table"]) and f.matches(event)``.
    """

    __slots__ = (
        "_col_matchers",
        "_columns",
        "_ops",
        "applies_to",
        "config",
        "name",
        "predicate",
        "table_only",
    )

    def __init__(self, config: FilterConfig, predicate: Predicate | None) -> None:
        self.config = config
        self.name = config.name
        self.applies_to = TableMatcher(config.tables)
        self._ops = _ops(config.operations)
        self.predicate = predicate
        # columns: table -> tuple of columns; exact names precomputed, globs matched lazily
        self._columns: dict[str, tuple[str, ...]] = {}
        self._col_matchers: list[tuple[TableMatcher, tuple[str, ...]]] = []
        for table, cols in config.columns.items():
            if not cols:
                raise FilterError(
                    f"filter {config.name!r}: columns for table {table!r} is empty", filter=self.name
                )
            self._col_matchers.append((TableMatcher([table]), tuple(cols)))
        #: no operation, column or predicate condition: only ``tables`` matters
        self.table_only = not self._ops and not self._col_matchers and predicate is None

    # -- column filter

    def watched_columns(self, table: str) -> tuple[str, ...] | None:
        """The columns an UPDATE of ``table`` must change to pass; None = no column filter."""
        hit = self._columns.get(table)
        if hit is not None:
            return hit or None
        cols: list[str] = []
        for matcher, cs in self._col_matchers:
            if matcher(table):
                cols.extend(c for c in cs if c not in cols)
        result = tuple(cols)
        if len(self._columns) < _CACHE_LIMIT:
            self._columns[table] = result
        return result or None

    @staticmethod
    def changed(
        columns: Sequence[str], value: Mapping[str, Any] | None, old: Mapping[str, Any] | None
    ) -> bool:
        """Whether an UPDATE changed one of ``columns``.

        * absent from ``value``: an unchanged TOASTed value -> unchanged;
        * in ``old`` too (REPLICA IDENTITY FULL, or a key column): compared;
        * not in ``old``: cannot be proven unchanged -> counts as changed.
        """
        if not value:
            return False
        for c in columns:
            if c not in value:
                continue
            if old is not None and c in old:
                a, b = value[c], old[c]
                if a != b or (type(a) is bool) != (type(b) is bool):
                    return True
                continue
            return True
        return False

    # -- evaluation

    def matches(self, event: Mapping[str, Any]) -> bool:
        op = event.get("operation")
        if not isinstance(op, str):
            op = op.value if isinstance(op, OperationType) else str(op)
        if self._ops and op not in self._ops:
            return False
        if op == "UPDATE" and self._col_matchers:
            cols = self.watched_columns(event.get("table", ""))
            if cols is not None and not self.changed(cols, event.get("value"), event.get("old_value")):
                return False
        if self.predicate is not None:
            return self.predicate(event)
        return True

    def __call__(self, event: Mapping[str, Any]) -> bool:
        return self.applies_to(event.get("table", "")) and self.matches(event)

    def __repr__(self) -> str:
        return f"CompiledFilter({self.name!r})"


def _known_columns(cfg: FilterConfig, table_columns: Mapping[str, Sequence[str]]) -> set[str] | None:
    matcher = TableMatcher(cfg.tables)
    known: set[str] = set()
    found = False
    for table, cols in table_columns.items():
        if matcher(table):
            found = True
            known.update(cols)
    return known if found else None


def compile_filter(
    cfg: FilterConfig, table_columns: Mapping[str, Sequence[str]] | None = None
) -> CompiledFilter:
    """Compile a :class:`FilterConfig`.

    ``table_columns`` (table name -> column names), when given, lets unknown columns in
    ``columns`` and in the predicate fail here, with the known columns listed.
    """
    known: set[str] | None = None
    if table_columns is not None:
        tc = {k.removeprefix("public."): v for k, v in table_columns.items()}
        known = _known_columns(cfg, tc)
        for table, cols in cfg.columns.items():
            t = table.removeprefix("public.")
            if t in tc:
                missing = [c for c in cols if c not in tc[t]]
                if missing:
                    raise FilterError(
                        f"filter {cfg.name!r}: table {t!r} has no column(s) "
                        f"{', '.join(map(repr, missing))}; known columns: {', '.join(tc[t])}",
                        filter=cfg.name,
                    )
    predicate = None
    if cfg.predicate is not None:
        try:
            predicate = compile_predicate(cfg.predicate, known)
        except FilterError as exc:
            raise FilterError(f"filter {cfg.name!r}: {exc.message}", filter=cfg.name, **exc.context) from None
    return CompiledFilter(cfg, predicate)


class EventFilter:
    """The guide's builder::

    f = (EventFilter().tables(["orders"])
         .operations([OperationType.INSERT, OperationType.UPDATE])
         .columns("orders", ["status"])
         .predicate("total > 100")
         .build())
    """

    def __init__(self, name: str = "filter") -> None:
        self._name = name
        self._tables: list[str] = []
        self._operations: list[OperationType] = []
        self._columns: dict[str, list[str]] = {}
        self._predicate: str | None = None

    @classmethod
    def new(cls, name: str = "filter") -> EventFilter:
        """The guide's ``EventFilter::new()``."""
        return cls(name)

    @classmethod
    def from_config(cls, cfg: FilterConfig) -> EventFilter:
        b = cls(cfg.name)
        b._tables = list(cfg.tables)
        b._operations = list(cfg.operations)
        b._columns = {k: list(v) for k, v in cfg.columns.items()}
        b._predicate = cfg.predicate
        return b

    def name(self, name: str) -> EventFilter:
        self._name = name
        return self

    def tables(self, tables: Iterable[str] | str) -> EventFilter:
        self._tables.extend([tables] if isinstance(tables, str) else tables)
        return self

    def operations(self, operations: Iterable[OperationType | str]) -> EventFilter:
        if isinstance(operations, (str, OperationType)):
            operations = [operations]
        for o in operations:
            try:
                self._operations.append(OperationType.parse(o))
            except ValueError as exc:
                raise FilterError(str(exc)) from None
        return self

    def columns(self, table: str, columns: Iterable[str] | str) -> EventFilter:
        cols = self._columns.setdefault(table, [])
        cols.extend([columns] if isinstance(columns, str) else columns)
        return self

    def predicate(self, sql: str) -> EventFilter:
        self._predicate = sql
        return self

    def to_config(self) -> FilterConfig:
        return FilterConfig(
            name=self._name,
            tables=self._tables,
            operations=self._operations,
            columns=self._columns,
            predicate=self._predicate,
        )

    def build(self, table_columns: Mapping[str, Sequence[str]] | None = None) -> CompiledFilter:
        return compile_filter(self.to_config(), table_columns)


class FilterChain:
    """Several filters: an event passes when every filter that applies to its table passes.

    A filter whose ``tables`` do not select the event's table does not apply to it
    (it neither passes nor blocks it). No filters -> everything passes.
    """

    __slots__ = ("_by_table", "filters")

    def __init__(self, filters: Iterable[CompiledFilter | FilterConfig | EventFilter]) -> None:
        out: list[CompiledFilter] = []
        for f in filters:
            if isinstance(f, FilterConfig):
                f = compile_filter(f)
            elif isinstance(f, EventFilter):
                f = f.build()
            out.append(f)
        self.filters: tuple[CompiledFilter, ...] = tuple(out)
        self._by_table: dict[str, tuple[Callable[[Mapping[str, Any]], bool], ...]] = {}

    def for_table(self, table: str) -> tuple[CompiledFilter, ...]:
        """The filters that apply to ``table``."""
        return tuple(f for f in self.filters if f.applies_to(table))

    def _checks(self, table: str) -> tuple[Callable[[Mapping[str, Any]], bool], ...]:
        # filters with only a table condition always pass the events they apply to
        checks = tuple(f.matches for f in self.for_table(table) if not f.table_only)
        if len(self._by_table) < _CACHE_LIMIT:
            self._by_table[table] = checks
        return checks

    def passes(self, event: Mapping[str, Any]) -> bool:
        table = event.get("table", "")
        checks = self._by_table.get(table)
        if checks is None:
            checks = self._checks(table)
        for check in checks:  # noqa: SIM110 (a loop is faster than all() over a generator)
            if not check(event):
                return False
        return True

    __call__ = passes

    def __len__(self) -> int:
        return len(self.filters)
