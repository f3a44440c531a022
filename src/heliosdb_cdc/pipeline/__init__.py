"""The event pipeline: filters, SQL predicates and transformations (pure Python, no I/O).

See docs/filtering.md and docs/transformations.md.
"""

from ._filter import CompiledFilter, EventFilter, FilterChain, TableMatcher, compile_filter
from ._formats import build_formatter, check_stream_format, content_types
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
    "build_formatter",
    "check_stream_format",
    "compile_filter",
    "compile_predicate",
    "compile_transformation",
    "content_types",
]
