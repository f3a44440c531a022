"""The benchmark's fast subset: ratios to the raw slot rate, never absolute times.

Runs ``python bench/run.py --quick --scenarios raw,null`` (its own PostgreSQL) and
fails only when a ratio falls below half of the value recorded in BENCHMARKS.md
(the ``<!-- ratios: {...} -->`` line), so a noisy machine cannot fail it but a real
regression does.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the live oltp ratio mostly measures how much CPU pgbench gets on a small machine: not checked
CHECKED = ("null_over_raw_bulk", "null_over_raw_catchup")


def recorded_ratios() -> dict[str, float]:
    text = (ROOT / "BENCHMARKS.md").read_text()
    m = re.search(r"<!--\s*ratios:\s*(\{.*?\})\s*-->", text, re.S)
    assert m, "BENCHMARKS.md has no <!-- ratios: {...} --> line"
    data: dict[str, float] = json.loads(m.group(1))
    return data


@pytest.mark.timeout(240)
def test_bench_quick_raw_null_ratios(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--quick",
            "--scenarios",
            "raw,null",
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
    for r in results:
        assert r["scenario"] in ("raw", "null")
        assert r["rate"] > 0 and r["changes"] > 0, r
        assert r["count_seen"] == r["changes"], r
    ratios = data["ratios"]
    with capsys.disabled():  # shown in CI's output even though pytest captures output
        print("\nbench ratios (this run):", json.dumps(ratios), "recorded:", json.dumps(recorded_ratios()))
    recorded = recorded_ratios()
    for key in CHECKED:
        assert key in ratios, f"{key} missing from {ratios}"
        floor = recorded[key] / 2
        assert ratios[key] >= floor, (
            f"{key} = {ratios[key]} is below half of the {recorded[key]} recorded in BENCHMARKS.md"
        )
