"""Event filters: the guide's examples, table patterns, changed columns, chains, errors."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import yaml

from heliosdb_cdc._config import FilterConfig
from heliosdb_cdc._errors import FilterError
from heliosdb_cdc._event import OperationType
from heliosdb_cdc.pipeline import (
    CompiledFilter,
    EventFilter,
    FilterChain,
    TableMatcher,
    compile_filter,
)


def event(
    operation: str = "INSERT",
    table: str = "orders",
    value: dict[str, Any] | None = None,
    old_value: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "event_id": "evt_1",
        "timestamp": "2026-01-04T12:00:00Z",
        "sequence": 1,
        "operation": operation,
        "database": "production",
        "table": table,
        "key": {"id": 1},
        "value": value,
        "old_value": old_value,
        "transaction_id": "txn_1",
    }


def filters_from_yaml(text: str) -> list[CompiledFilter]:
    doc = yaml.safe_load(text)
    return [compile_filter(FilterConfig(**f)) for f in doc["filters"]]


# --------------------------------------------------------------------------- the guide

GUIDE_COLUMNS = """
# Filter by changed columns
filters:
  - name: price_changes
    tables:
      - products
    columns:
      products:
        - price
        - discount
"""

GUIDE_PREDICATE = """
# Filter with SQL predicate
filters:
  - name: high_value_orders
    tables:
      - orders
    operations:
      - INSERT
    predicate: "total > 1000"
"""

GUIDE_BEST_PRACTICE = """
# Filter to reduce volume
filters:
  - name: relevant_changes
    tables:
      - orders          # Only tables you need
    operations:
      - INSERT
      - UPDATE          # Skip DELETEs if not needed
    columns:
      orders:
        - status
        - total         # Only columns you care about
"""


def test_guide_price_changes() -> None:
    (f,) = filters_from_yaml(GUIDE_COLUMNS)
    assert f.name == "price_changes"
    old = {"id": 1, "name": "pen", "price": Decimal("1.50"), "discount": 0}
    # price changed
    assert f(event("UPDATE", "products", {**old, "price": Decimal("1.75")}, old))
    # discount changed
    assert f(event("UPDATE", "products", {**old, "discount": 10}, old))
    # only the name changed
    assert not f(event("UPDATE", "products", {**old, "name": "pencil"}, old))
    # inserts and deletes are not subject to the column filter
    assert f(event("INSERT", "products", old))
    assert f(event("DELETE", "products", None, {"id": 1}))
    # another table is not selected by this filter
    assert not f(event("UPDATE", "orders", {"price": 2}, {"price": 1}))
    assert not f.applies_to("orders")


def test_guide_high_value_orders() -> None:
    (f,) = filters_from_yaml(GUIDE_PREDICATE)
    assert f(event("INSERT", value={"id": 1, "total": Decimal("1000.01")}))
    assert not f(event("INSERT", value={"id": 1, "total": Decimal("99.99")}))
    assert not f(event("UPDATE", value={"id": 1, "total": 5000}, old_value=None))
    assert f(event("INSERT", value={"total": Decimal("1000.0000000000000000001")}))
    assert not f(event("INSERT", value={"total": 1000}))


def test_guide_relevant_changes() -> None:
    (f,) = filters_from_yaml(GUIDE_BEST_PRACTICE)
    old = {"id": 1, "status": "pending", "total": 10, "note": "a"}
    assert f(event("INSERT", value=old))
    assert f(event("UPDATE", value={**old, "status": "paid"}, old_value=old))
    assert f(event("UPDATE", value={**old, "total": 11}, old_value=old))
    assert not f(event("UPDATE", value={**old, "note": "b"}, old_value=old))
    assert not f(event("DELETE", value=None, old_value=old))


def test_guide_builder() -> None:
    f = (
        EventFilter()
        .tables(["orders"])
        .operations([OperationType.Insert, OperationType.Update])
        .columns("orders", ["status"])
        .predicate("total > 100")
        .build()
    )
    assert isinstance(f, CompiledFilter)
    old = {"id": 1, "status": "pending", "total": 500}
    assert f(event("INSERT", value=old))
    assert not f(event("INSERT", value={**old, "total": 50}))
    assert f(event("UPDATE", value={**old, "status": "paid"}, old_value=old))
    assert not f(event("UPDATE", value={**old, "total": 600}, old_value=old))  # status unchanged
    assert not f(event("DELETE", value=None, old_value=old))
    assert not f(event("INSERT", "users", old))


def test_builder_new_from_config_and_to_config() -> None:
    cfg = FilterConfig(name="x", tables=["orders"], operations=["insert"], predicate="id = 1")
    b = EventFilter.from_config(cfg)
    assert b.to_config() == cfg
    assert (
        EventFilter.new()
        .tables("orders")
        .operations("DELETE")
        .build()(event("DELETE", value=None, old_value={"id": 1}))
    )
    assert b.build()(event("INSERT", value={"id": 1}))


# --------------------------------------------------------------------------- tables


@pytest.mark.parametrize(
    ("patterns", "table", "expected"),
    [
        ([], "orders", True),
        ([], "sales.orders", True),
        (["orders"], "orders", True),
        (["orders"], "orders_archive", False),
        (["orders"], "sales.orders", False),  # "orders" is public.orders
        (["public.orders"], "orders", True),
        (["sales.orders"], "sales.orders", True),
        (["sales.orders"], "orders", False),
        (["order*"], "orders", True),
        (["order*"], "order_items", True),
        (["order*"], "sales.orders", False),
        (["public.*"], "orders", True),
        (["public.*"], "sales.orders", False),
        (["sales.*"], "sales.orders", True),
        (["*.orders"], "sales.orders", True),
        (["*.orders"], "orders", True),
        (["*"], "sales.orders", True),
        (["*"], "orders", True),
        (["users", "orders"], "orders", True),
        (["audit_20??"], "audit_2026", True),
        (["Orders"], "orders", False),  # names are case-sensitive, as PostgreSQL stores them
    ],
)
def test_table_patterns(patterns: list[str], table: str, expected: bool) -> None:
    m = TableMatcher(patterns)
    assert m(table) is expected
    assert m(table) is expected  # cached
    f = compile_filter(FilterConfig(tables=patterns))
    assert f.applies_to(table) is expected


# --------------------------------------------------------------------------- operations


def test_operations() -> None:
    f = compile_filter(FilterConfig(operations=["INSERT", "delete"]))
    assert f(event("INSERT", value={"id": 1}))
    assert f(event("DELETE", value=None, old_value={"id": 1}))
    assert not f(event("UPDATE", value={"id": 1}))
    assert not f(event("TRUNCATE"))
    everything = compile_filter(FilterConfig())
    for op in ("INSERT", "UPDATE", "DELETE", "TRUNCATE", "SCHEMA_CHANGE", "READ"):
        assert everything(event(op, value={"id": 1} if op != "TRUNCATE" else None))


def test_unknown_operation() -> None:
    with pytest.raises(FilterError, match="unknown operation 'UPSERT'"):
        EventFilter().operations(["UPSERT"])


# --------------------------------------------------------------------------- changed columns


COLS = FilterConfig(tables=["orders"], columns={"orders": ["status"]})


def test_changed_column_with_full_old_row() -> None:
    f = compile_filter(COLS)
    old = {"id": 1, "status": "a", "note": "x"}
    assert f(event("UPDATE", value={**old, "status": "b"}, old_value=old))
    assert not f(event("UPDATE", value={**old, "note": "y"}, old_value=old))
    # NULL -> value and value -> NULL are changes
    assert f(event("UPDATE", value={**old, "status": None}, old_value=old))
    assert f(event("UPDATE", value={**old, "status": "a"}, old_value={**old, "status": None}))
    # numerically equal Decimals are not a change
    assert not f(event("UPDATE", value={"status": Decimal("1.0")}, old_value={"status": Decimal("1")}))


def test_changed_column_without_replica_identity_full() -> None:
    f = compile_filter(COLS)
    # default identity: old_value is None; status present in the new row -> cannot prove
    # it unchanged -> passes
    assert f(event("UPDATE", value={"id": 1, "status": "a"}, old_value=None))
    # old_value with only the key (the key changed): same rule
    assert f(event("UPDATE", value={"id": 2, "status": "a"}, old_value={"id": 1}))


def test_toasted_column_absent_is_unchanged() -> None:
    f = compile_filter(FilterConfig(columns={"docs": ["body"]}))
    assert not f(event("UPDATE", "docs", value={"id": 1, "title": "t"}, old_value=None))
    assert f(event("UPDATE", "docs", value={"id": 1, "body": "new"}, old_value=None))


def test_column_filter_other_table_and_other_operations() -> None:
    f = compile_filter(FilterConfig(columns={"orders": ["status"]}))
    # users is not listed in columns: no column condition for it
    assert f(event("UPDATE", "users", value={"id": 1}, old_value={"id": 1}))
    assert f(event("INSERT", value={"id": 1}))
    assert f(event("DELETE", value=None, old_value={"id": 1}))
    assert f(event("TRUNCATE"))


def test_column_filter_public_prefix() -> None:
    f = compile_filter(FilterConfig(columns={"public.orders": ["status"]}))
    old = {"id": 1, "status": "a", "note": "x"}
    assert not f(event("UPDATE", value={**old, "note": "y"}, old_value=old))


# --------------------------------------------------------------------------- predicate rows


def test_predicate_on_delete_uses_old_value() -> None:
    f = compile_filter(FilterConfig(predicate="status = 'cancelled'"))
    assert f(event("DELETE", value=None, old_value={"id": 1, "status": "cancelled"}))
    # default identity: the old row has only the key -> UNKNOWN -> filtered out
    assert not f(event("DELETE", value=None, old_value={"id": 1}))


def test_truncate_with_and_without_predicate() -> None:
    assert not compile_filter(FilterConfig(predicate="total > 1"))(event("TRUNCATE"))
    assert compile_filter(FilterConfig(tables=["orders"]))(event("TRUNCATE"))


# --------------------------------------------------------------------------- chain


def test_chain_only_applicable_filters_count() -> None:
    chain = FilterChain(
        [
            compile_filter(FilterConfig(name="o", tables=["orders"], predicate="total > 100")),
            compile_filter(FilterConfig(name="u", tables=["users"], operations=["INSERT"])),
            compile_filter(FilterConfig(name="all", predicate="id IS NOT NULL")),
        ]
    )
    assert chain.passes(event("INSERT", value={"id": 1, "total": 101}))
    assert not chain.passes(event("INSERT", value={"id": 1, "total": 99}))
    assert not chain.passes(event("INSERT", value={"id": None, "total": 101}))
    assert chain.passes(event("INSERT", "users", value={"id": 1}))  # "o" does not apply
    assert not chain.passes(event("UPDATE", "users", value={"id": 1}))
    assert chain.passes(event("DELETE", "products", old_value={"id": 1}))  # only "all"
    assert [f.name for f in chain.for_table("users")] == ["u", "all"]
    assert chain(event("INSERT", value={"id": 1, "total": 101}))
    assert len(chain) == 3


def test_empty_chain_passes_everything() -> None:
    assert FilterChain([]).passes(event("TRUNCATE"))


def test_chain_accepts_configs_and_builders() -> None:
    chain = FilterChain(
        [FilterConfig(tables=["orders"], predicate="total > 1"), EventFilter().tables("users")]
    )
    assert chain.passes(event(value={"total": 2}))


def test_standalone_filter_requires_its_table_but_chain_does_not() -> None:
    f = compile_filter(FilterConfig(tables=["orders"]))
    e = event("INSERT", "users", value={"id": 1})
    assert not f(e)
    assert f.matches(e)
    assert FilterChain([f]).passes(e)


# --------------------------------------------------------------------------- errors


def test_invalid_predicate_names_the_filter() -> None:
    with pytest.raises(FilterError) as err:
        compile_filter(FilterConfig(name="bad", predicate="total >"))
    assert "filter 'bad'" in str(err.value)
    assert "cannot parse predicate" in str(err.value)


def test_unknown_column_in_predicate_with_known_tables() -> None:
    cfg = FilterConfig(name="hv", tables=["orders"], predicate="totl > 1000")
    with pytest.raises(FilterError) as err:
        compile_filter(cfg, {"orders": ["id", "total", "status"], "users": ["email"]})
    assert "unknown column 'totl'" in str(err.value)
    assert "id, status, total" in str(err.value)
    assert "email" not in str(err.value)
    ok = compile_filter(cfg.model_copy(update={"predicate": "total > 1000"}), {"orders": ["total"]})
    assert ok(event(value={"total": 1001}))


def test_unknown_column_in_columns_with_known_tables() -> None:
    cfg = FilterConfig(name="pc", columns={"products": ["price", "discnt"]})
    with pytest.raises(FilterError) as err:
        compile_filter(cfg, {"products": ["id", "price", "discount"]})
    assert "'discnt'" in str(err.value)
    assert "known columns: id, price, discount" in str(err.value)


def test_builder_with_table_columns() -> None:
    with pytest.raises(FilterError, match="unknown column 'x'"):
        EventFilter().tables(["orders"]).predicate("x = 1").build({"orders": ["id"]})


def test_empty_column_list() -> None:
    with pytest.raises(FilterError, match="is empty"):
        compile_filter(FilterConfig(columns={"orders": []}))


# --------------------------------------------------------------------------- docs


def test_every_yaml_example_in_the_docs_compiles() -> None:
    import pathlib
    import re

    doc = (pathlib.Path(__file__).parents[1] / "docs" / "filtering.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    assert len(blocks) >= 3
    for block in blocks:
        assert filters_from_yaml(block)


def test_guide_yaml_matches_the_docs() -> None:
    import pathlib

    doc = (pathlib.Path(__file__).parents[1] / "docs" / "filtering.md").read_text()
    for text in (GUIDE_COLUMNS, GUIDE_PREDICATE, GUIDE_BEST_PRACTICE):
        assert yaml.safe_load(text) == yaml.safe_load(
            next(b for b in doc.split("```yaml\n")[1:] if text.strip().split("\n")[0] in b).split("```")[0]
        )
