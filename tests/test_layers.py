"""The import graph runs one way (docs/architecture.md, "Layers").

cli -> service parts -> server / sql / delivery -> pipeline / sinks / postgres ->
journal / store -> ground. Capture (postgres/) and delivery never import each
other; both meet at the journal. A package's private ``_modules`` are reached
from outside it only through its ``__init__``. Every import counts, including
those inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

import heliosdb_cdc

ROOT = Path(heliosdb_cdc.__file__).parent
PKG = "heliosdb_cdc"

# top-level modules by layer; subpackages are their own layer (by folder name)
TOP_LEVEL = {
    "ground": {
        "_config",
        "_config_errors",
        "_errors",
        "_event",
        "_format_names",
        "_input",
        "_logging",
        "_metrics",
        "_names",
        "_record",
        "_secrets",
        "_yaml",
        "receiver",  # the receiver-side helpers for users: imports nothing of ours
    },
    "service": {"_service", "_catalog", "_status", "_preflight", "_tables", "_embedded", "_ha", "_worker_role"},
    "cli": {"cli", "demo", "__init__"},  # entry points and the package's public face
}
SUBPACKAGES = {"journal", "store", "postgres", "pipeline", "sinks", "delivery", "sql", "server"}

# layer -> the layers it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "ground": set(),
    "journal": {"ground"},
    "store": {"ground"},
    "postgres": {"journal", "ground"},  # capture writes down into the journal
    "pipeline": {"ground"},
    "sinks": {"ground"},
    "delivery": {"journal", "store", "pipeline", "sinks", "ground"},  # reads the journal
    "sql": {"ground"},
    "server": {"sql", "ground"},
    "service": {"server", "sql", "delivery", "pipeline", "sinks", "postgres", "journal", "store", "ground"},
    "cli": {
        "service",
        "server",
        "sql",
        "delivery",
        "pipeline",
        "sinks",
        "postgres",
        "journal",
        "store",
        "ground",
    },
}

# (importer, imported) pairs that break a rule today, each with its reason. Keep short.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join([PKG, *parts])] = path
    return out


MODULES = _modules()


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "cli"  # heliosdb_cdc/__init__.py
    if parts[1] in SUBPACKAGES:
        return parts[1]
    for layer, names in TOP_LEVEL.items():
        if parts[1] in names:
            return layer
    raise AssertionError(f"{module} is in no layer: add it to TOP_LEVEL or SUBPACKAGES in {__file__}")


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not _is_package(module):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str, tree: ast.AST, *, top_level_only: bool = False) -> Iterator[tuple[str, int]]:
    """(imported module of ours, line): ``from pkg import sub`` counts as importing pkg.sub."""
    nodes = tree.body if top_level_only and isinstance(tree, ast.Module) else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PKG:
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            if target.split(".")[0] != PKG:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub if sub in MODULES else target), node.lineno


def _trees() -> dict[str, ast.Module]:
    return {m: ast.parse(p.read_text(), str(p)) for m, p in MODULES.items()}


TREES = _trees()


def violations(module: str, tree: ast.AST) -> list[str]:
    found = []
    src = layer_of(module)
    for target, line in imports(module, tree):
        if target not in MODULES:
            continue
        where = f"{MODULES[module].relative_to(ROOT.parent)}:{line}: {module} imports {target}"
        if (module, target) in EXCEPTIONS:
            continue
        dst = layer_of(target)
        if dst != src and dst not in ALLOWED[src]:
            found.append(f"{where}: layer {src} may not import layer {dst}")
        parts = target.split(".")
        private = next((i for i, p in enumerate(parts) if p.startswith("_") and i >= 2), None)
        if private is not None:
            owner = ".".join(parts[:private])  # the package whose private module it is
            if owner != PKG and not (module == owner or module.startswith(owner + ".")):
                found.append(f"{where}: private to {owner}, import it from {owner}")
    return list(dict.fromkeys(found))  # one line per import statement


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        assert layer_of(module) in ALLOWED


def test_allowed_directions_have_no_cycle() -> None:
    seen: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(layer: str, path: list[str]) -> None:
        assert seen.get(layer) != 1, f"layers import each other: {' -> '.join([*path, layer])}"
        if seen.get(layer) == 2:
            return
        seen[layer] = 1
        for below in ALLOWED[layer]:
            visit(below, [*path, layer])
        seen[layer] = 2

    for layer in ALLOWED:
        visit(layer, [])


def test_imports_run_downward() -> None:
    found = [v for m, t in TREES.items() for v in violations(m, t)]
    assert not found, "imports against the layering (docs/architecture.md, Layers):\n" + "\n".join(found)


def test_no_module_level_import_cycle() -> None:
    graph = {
        m: {t for t, _ in imports(m, tree, top_level_only=True) if t in MODULES} for m, tree in TREES.items()
    }
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        if state.get(m) == 1:
            cycle = [*path[path.index(m) :], m]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if state.get(m) == 2:
            return
        state[m] = 1
        for t in sorted(graph[m]):
            visit(t, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        visit(m, [])


def test_exceptions_are_still_needed() -> None:
    """An allow-listed import that is gone must leave the list too."""
    for importer, imported in EXCEPTIONS:
        assert any(t == imported for t, _ in imports(importer, TREES[importer])), (importer, imported)


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        (
            "heliosdb_cdc.postgres._replication",
            "from ..delivery import StreamRunner",
            "may not import layer delivery",
        ),
        ("heliosdb_cdc.delivery._runner", "from ..postgres import Capture", "may not import layer postgres"),
        ("heliosdb_cdc.journal._locallog", "from ..store import Store", "may not import layer store"),
        ("heliosdb_cdc.sinks._kafka", "from .. import _service", "may not import layer service"),
        ("heliosdb_cdc._event", "from .pipeline import compile_filter", "may not import layer pipeline"),
        ("heliosdb_cdc._service", "from .sinks._kafka import KafkaSink", "private to heliosdb_cdc.sinks"),
        ("heliosdb_cdc._service", "import heliosdb_cdc.postgres._setup", "private to heliosdb_cdc.postgres"),
        ("heliosdb_cdc.delivery._runner", "from ..sinks import _base", "private to heliosdb_cdc.sinks"),
    ],
)
def test_the_check_catches(module: str, source: str, expected: str) -> None:
    found = violations(module, ast.parse("def f():\n    " + source))
    assert any(expected in v for v in found), found


def test_the_check_allows() -> None:
    ok = (
        "from .._errors import CdcError\nfrom ..journal import LocalLog\nfrom ._circuit import CircuitBreaker"
    )
    assert violations("heliosdb_cdc.delivery._runner", ast.parse(ok)) == []


def test_the_service_satisfies_the_http_protocol() -> None:
    """server/ talks to the service only through HttpService (server/_protocol.py): the
    service has every member, and each method takes the protocol's arguments."""
    from heliosdb_cdc import WebhookServer
    from heliosdb_cdc.server import HttpService

    service = WebhookServer()
    assert isinstance(service, HttpService)
    members = [m for m in vars(HttpService) if not m.startswith("_")]
    assert {"health", "stream_status", "create_stream", "tls_reloader"} <= set(members) | set(
        HttpService.__annotations__
    )
    for name in members:
        wanted = getattr(HttpService, name)
        if not inspect.isfunction(wanted):
            continue
        have = getattr(service, name)
        assert inspect.iscoroutinefunction(have) == inspect.iscoroutinefunction(wanted), name
        params = list(inspect.signature(wanted).parameters.values())[1:]  # without self
        inspect.signature(have).bind(*(f"<{p.name}>" for p in params))  # raises if it does not fit
        for p in params:
            assert p.name in inspect.signature(have).parameters, (name, p.name)
