"""pgstream (xataio/pgstream, Apache-2.0) for the benchmark: found or built once, run
with its webhook notifier.

Used by ``bench/run.py`` (scenario ``pgstream``). pgstream reads changes with the
``wal2json`` output plugin (Debian: ``postgresql-15-wal2json``) and posts one event
per request to the URLs subscribed through its HTTP API (``POST
/webhooks/subscribe``).

The binary, first found of: ``$HELIOSDB_CDC_PGSTREAM``; ``<cache>/pgstream/bin/pgstream``;
``~/.cache/pgstream/bin/pgstream``; ``pgstream`` on PATH. Otherwise it is built with
``go build`` from a source tarball: ``$HELIOSDB_CDC_PGSTREAM_SRC``, or
``shared/peers/pgstream-src.tar.gz`` in a directory above the checkout (``go install
github.com/xataio/pgstream@latest`` is refused by some module proxies; the
dependencies are fetched as usual). The build takes ~3 minutes of 2 cores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

TARBALL = "pgstream-src.tar.gz"


def _source_tarball(start: Path) -> Path | None:
    env = os.environ.get("HELIOSDB_CDC_PGSTREAM_SRC")
    if env:
        return Path(env) if Path(env).is_file() else None
    for d in [start, *start.parents]:
        candidate = d / "shared" / "peers" / TARBALL
        if candidate.is_file():
            return candidate
    return None


def find_binary(cache: Path) -> Path | None:
    env = os.environ.get("HELIOSDB_CDC_PGSTREAM")
    candidates = [Path(env)] if env else []
    candidates += [
        cache / "pgstream" / "bin" / "pgstream",
        Path.home() / ".cache" / "pgstream" / "bin" / "pgstream",  # shared/peers/README.md's build
    ]
    on_path = shutil.which("pgstream")
    if on_path:
        candidates.append(Path(on_path))
    return next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)


def install_pgstream(
    cache: Path, checkout: Path, timeout: float = 900, go: str | None = None
) -> tuple[Path | None, str]:
    """The pgstream binary, or None and why it is not there (``go``: the toolchain,
    looked up when None, none when empty)."""
    found = find_binary(cache)
    if found is not None:
        return found, "cached"
    if go is None:
        go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else "")
    if not go:
        return None, "the Go toolchain is not installed (needed to build pgstream from source)"
    tar = _source_tarball(checkout)
    if tar is None:
        return None, f"no pgstream source: set HELIOSDB_CDC_PGSTREAM_SRC or put {TARBALL} in shared/peers/"
    base = cache / "pgstream"
    src = base / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    with tarfile.open(tar) as t:
        t.extractall(src, filter="data")
    roots = [p.parent for p in src.rglob("go.mod") if (p.parent / "main.go").is_file()]
    if not roots:
        return None, f"{tar} holds no Go module with a main.go"
    binary = base / "bin" / "pgstream"
    try:
        p = subprocess.run(
            [go, "build", "-o", str(binary), "."],
            cwd=min(roots, key=lambda r: len(r.parts)),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, f"go build timed out after {timeout:.0f}s"
    if p.returncode != 0 or not binary.is_file():
        msg = " ".join((p.stderr or p.stdout).split())
        return None, f"go build failed: {msg[-300:]}"
    return binary, "built"


def wal2json_missing(pg_bindir: Path) -> str | None:
    """Why the PostgreSQL of ``pg_bindir`` cannot load wal2json, or None when it can."""
    lib = pg_bindir.parent / "lib" / "wal2json.so"
    if lib.is_file():
        return None
    version = pg_bindir.parent.name
    return (
        f"the wal2json output plugin is not installed for this PostgreSQL ({lib} missing; "
        f"Debian: apt-get install postgresql-{version}-wal2json)"
    )


def environment(dsn_url: str, slot: str, server: str, table: str) -> dict[str, str]:
    """pgstream's configuration (environment variables, docs/configuration.md): replication
    of one table from ``slot`` to the webhook notifier, subscriptions in the same database
    (cached, refreshed every second), the subscription API on ``server``."""
    return {
        "PGSTREAM_POSTGRES_LISTENER_URL": dsn_url,
        "PGSTREAM_POSTGRES_REPLICATION_SLOT_NAME": slot,
        "PGSTREAM_POSTGRES_REPLICATION_PLUGIN_ADD_TABLES": table,
        "PGSTREAM_WEBHOOK_SUBSCRIPTION_STORE_URL": dsn_url,
        "PGSTREAM_WEBHOOK_SUBSCRIPTION_STORE_CACHE_ENABLED": "true",
        "PGSTREAM_WEBHOOK_SUBSCRIPTION_STORE_CACHE_REFRESH_INTERVAL": "1s",
        "PGSTREAM_WEBHOOK_SUBSCRIPTION_SERVER_ADDRESS": server,
    }
