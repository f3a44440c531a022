"""Per-event cost of the pipeline layer: filters, a SQL predicate, a JSONPath transformation.

    python bench/bench_filters.py [--events N]

Prints events/s and microseconds per event for each stage and for the whole chain
(table filter + 3-clause predicate + JSONPath transform). Target: < 5 us/event.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from heliosdb_cdc._config import FilterConfig, TransformationConfig
from heliosdb_cdc._event import dumps
from heliosdb_cdc.pipeline import FilterChain, compile_filter, compile_transformation


def make_events(n: int) -> list[dict[str, Any]]:
    tables = ["orders", "users", "sales.orders", "order_items"]
    out = []
    for i in range(n):
        out.append(
            {
                "event_id": f"evt_{i:016x}_000000",
                "timestamp": "2026-01-04T12:00:00Z",
                "sequence": i,
                "operation": "INSERT" if i % 3 else "UPDATE",
                "database": "production",
                "table": tables[i % len(tables)],
                "key": {"id": i},
                "value": {
                    "id": i,
                    "customer_id": i % 1000,
                    "total": Decimal(i % 2000) + Decimal("0.99"),
                    "status": ("pending", "paid", "shipped")[i % 3],
                },
                "old_value": None,
                "transaction_id": f"txn_{i // 10}",
            }
        )
    return out


def timeit(fn: Callable[[dict[str, Any]], Any], events: list[dict[str, Any]]) -> float:
    """Best of 5 runs, seconds per event."""
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for e in events:
            fn(e)
        best = min(best, time.perf_counter() - t0)
    return best / len(events)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=50_000)
    args = ap.parse_args()
    events = make_events(args.events)

    table_only = FilterChain([compile_filter(FilterConfig(name="t", tables=["orders"]))])
    predicate = FilterChain(
        [
            compile_filter(
                FilterConfig(
                    name="p",
                    tables=["orders"],
                    predicate="total > 100 AND status IN ('paid', 'shipped') AND customer_id <> 7",
                )
            )
        ]
    )
    transform = compile_transformation(
        TransformationConfig(
            name="extract_fields",
            target="https://analytics.io/webhooks/orders",
            jsonpath={
                "order_id": "$.key.id",
                "customer": "$.value.customer_id",
                "amount": "$.value.total",
                "operation": "$.operation",
            },
        )
    )

    def untouched(e: dict[str, Any]) -> Any:
        return e

    def default_body(e: dict[str, Any]) -> Any:
        return dumps(e)

    def chain(e: dict[str, Any]) -> Any:
        if predicate.passes(e):
            return transform.apply(e)
        return None

    def chain_all(e: dict[str, Any]) -> Any:
        # every event through the predicate and the transform (worst case)
        predicate.passes(e)
        return transform.apply(e)

    rows = [
        ("untouched (loop overhead)", untouched),
        ("default JSON body (dumps)", default_body),
        ("table filter", table_only.passes),
        ("table filter + 3-clause predicate", predicate.passes),
        ("JSONPath transform (4 fields)", transform.apply),
        ("filter + predicate + transform if passed", chain),
        ("filter + predicate + transform, always", chain_all),
    ]
    base = timeit(untouched, events)
    print(f"{len(events)} events, best of 5 runs\n")
    print(f"{'stage':<44}{'events/s':>14}{'us/event':>11}{'net us':>9}")
    print("-" * 78)
    for name, fn in rows:
        per = timeit(fn, events)
        print(f"{name:<44}{1 / per:>14,.0f}{per * 1e6:>11.2f}{(per - base) * 1e6:>9.2f}")


if __name__ == "__main__":
    main()
