"""The YAML reader of the configuration file: PyYAML's safe loader, stricter.

* a key given twice in one mapping is refused with both line numbers (YAML says
  keys are unique; PyYAML would keep the last one silently, so a second
  ``security:`` block would drop the first one's ``admin_token``); a merge key
  (``<<: *defaults``) may still be overridden;
* aliases may add at most :data:`ALIAS_BUDGET` values to the document once
  expanded (a "billion laughs" file of a few hundred bytes would otherwise expand
  to millions of values), and an alias may not contain itself;
* nesting deeper than :data:`MAX_DEPTH` is refused.

Every refusal is a :class:`~heliosdb_cdc.ConfigError` naming the line.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from ._errors import ConfigError

ALIAS_BUDGET = 10_000  # values that aliases may add to the document once expanded
MAX_DEPTH = 100  # nested mappings/lists

_MERGE = "tag:yaml.org,2002:merge"


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


class _Loader(yaml.SafeLoader):
    def compose_document(self) -> Node | None:
        node: Node | None = super().compose_document()
        if node is not None:
            check_expansion(node)
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _value in node.value:
                if key_node.tag == _MERGE:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # unhashable: the base class reports it
                if first is not None:
                    raise ConfigError(
                        f"duplicate key {key!r} at line {_line(key_node)} (first given at line {first}); "
                        "merge the two blocks into one"
                    )
                seen[key] = _line(key_node)
        return dict(super().construct_mapping(node, deep=deep))


def check_expansion(root: Node) -> None:
    """Refuse a node graph whose aliases expand past the budget, contain themselves,
    or nest deeper than :data:`MAX_DEPTH` once expanded (iterative: no recursion)."""
    sizes: dict[int, int] = {}  # values under a node once aliases are expanded
    heights: dict[int, int] = {}
    active: set[int] = set()  # nodes being walked: an alias to one of them is a cycle
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            active.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            heights[key] = 1 + max((heights[id(c)] for c in children), default=0)
            if sizes[key] - len(sizes) > ALIAS_BUDGET:
                raise ConfigError(
                    f"YAML aliases expand the document by more than {ALIAS_BUDGET} values "
                    f"(at line {_line(node)}); write the values out or use fewer aliases"
                )
            if heights[key] > MAX_DEPTH:
                raise ConfigError(
                    f"the YAML document nests deeper than {MAX_DEPTH} levels (line {_line(node)})"
                )
            continue
        if key in sizes:
            continue
        if key in active:
            raise ConfigError(f"a YAML alias at line {_line(node)} refers to a node that contains it")
        active.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _mark(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def load_yaml(text: str) -> Any:
    """The document in ``text`` (None when empty); ConfigError when refused."""
    try:
        return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML{_mark(exc)}: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise ConfigError(f"the YAML document nests deeper than {MAX_DEPTH} levels") from None


__all__ = ["ALIAS_BUDGET", "MAX_DEPTH", "check_expansion", "load_yaml"]
