"""The benchmark runs and counts every change: ``python bench/run.py --quick --scenarios
raw,null`` with small workloads (its own PostgreSQL).

No numbers are checked here: on a loaded machine a rate or ratio measures the load,
not the code. Ratios are checked by the benchmark itself, on a quiet machine
(``python bench/run.py --quick --scenarios raw,null --check-ratios``, BENCHMARKS.md).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench_run() -> ModuleType:
    sys.path.insert(0, str(ROOT / "bench"))  # run.py imports its sibling modules
    try:
        spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "bench"))


@pytest.mark.timeout(240)  # a hang guard, not a performance bound
def test_bench_quick_raw_null_counts_every_change(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--scenarios",
            "raw,null",
            "--changes",
            "5000",
            "--oltp-changes",
            "1000",
            "--backlog-changes",
            "5000",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    results = data["results"]
    assert not [r for r in results if r.get("note", "").startswith("error")], results
    assert sorted((r["scenario"], r["workload"]) for r in results) == [
        (s, w) for s in ("null", "raw") for w in ("bulk", "catchup", "oltp")
    ]
    for r in results:
        assert r["changes"] > 0, r
        assert r["count_seen"] == r["changes"], r  # every change written was received
    # the ratios the benchmark reports (and --check-ratios compares) are computed
    assert set(_bench_run().recorded_ratios()) <= set(data["ratios"])


def test_check_ratios_floor() -> None:
    run = _bench_run()
    recorded = {"null_over_raw_bulk": 0.4, "null_over_raw_catchup": 0.1}
    assert run.check_ratios({"null_over_raw_bulk": 0.2, "null_over_raw_catchup": 0.3}, recorded) == []
    assert run.check_ratios({"null_over_raw_bulk": 0.19, "null_over_raw_catchup": 0.3}, recorded) == [
        "null_over_raw_bulk = 0.19 is below half of the 0.4 recorded in BENCHMARKS.md"
    ]
    assert run.check_ratios({"null_over_raw_bulk": 0.3}, recorded) == [
        "null_over_raw_catchup not measured in this run (run the scenarios it needs)"
    ]


def test_pgstream_scenario_says_why_it_cannot_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Go, without the source or without wal2json the pgstream row names what is
    missing instead of failing the benchmark."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import pgstream_peer
    finally:
        sys.path.remove(str(ROOT / "bench"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/pgstream/bin/pgstream
    monkeypatch.setenv("PATH", str(tmp_path))  # no pgstream on PATH
    monkeypatch.delenv("HELIOSDB_CDC_PGSTREAM", raising=False)
    cache, checkout = tmp_path / "cache", tmp_path / "checkout"
    checkout.mkdir()
    binary, why = pgstream_peer.install_pgstream(cache, checkout, go="")
    assert binary is None and "Go toolchain is not installed" in why
    monkeypatch.setenv("HELIOSDB_CDC_PGSTREAM_SRC", str(tmp_path / "missing.tar.gz"))
    binary, why = pgstream_peer.install_pgstream(cache, checkout, go="/usr/bin/false")
    assert binary is None and "no pgstream source" in why
    fake = cache / "pgstream" / "bin" / "pgstream"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert pgstream_peer.install_pgstream(cache, checkout, go="") == (fake, "cached")
    why_not = pgstream_peer.wal2json_missing(tmp_path / "15" / "bin")
    assert why_not is not None and "apt-get install postgresql-15-wal2json" in why_not
    (tmp_path / "15" / "lib").mkdir(parents=True)
    (tmp_path / "15" / "lib" / "wal2json.so").write_bytes(b"")
    assert pgstream_peer.wal2json_missing(tmp_path / "15" / "bin") is None
