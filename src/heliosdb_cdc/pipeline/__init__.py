"""The event pipeline: filters, SQL predicates and transformations (pure Python, no I/O).

See docs/filtering.md and docs/transformations.md.
"""

from ._filter import CompiledFilter, EventFilter, FilterChain, TableMatcher, compile_filter
from ._predicate import Predicate, compile_predicate
from ._transform import (
    SAMPLE_EVENT,
    Transformation,
    TransformRegistry,
    compile_transformation,
)

__all__ = [
    "SAMPLE_EVENT",
    "CompiledFilter",
    "EventFilter",
    "FilterChain",
    "Predicate",
    "TableMatcher",
    "TransformRegistry",
    "Transformation",
    "compile_filter",
    "compile_predicate",
    "compile_transformation",
]
