"""Profile scenario 2 (WAL -> events -> memory sink) with pyinstrument; print the hot spots.

    pip install pyinstrument      # a bench-only tool, not a dependency of the package
    python bench/profile.py [--changes 100000] [--workload bulk|oltp] [--html out_dir]
    python bench/profile.py --scenario webhook1     # the same, one event per POST to bench/receiver.py

The service runs in this process, as in bench/null_service.py. Two profilers:
one on the event-loop thread (stream runner, local-log reads, sink) and one on
the capture thread (read_message, pgoutput decoding, event encoding, local-log
appends and fsync), which pyinstrument would otherwise not see. For each thread
it prints the functions with the most *self* time (file:function, % of that
thread's wall time) and the heaviest call paths.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

try:
    from pyinstrument import Profiler
except ImportError:
    sys.exit("pyinstrument is not installed: pip install pyinstrument")

import null_service  # noqa: E402
import workload as wl  # noqa: E402

from heliosdb_cdc import WebhookServer  # noqa: E402
from heliosdb_cdc._embedded import EmbeddedPostgres  # noqa: E402
from heliosdb_cdc.postgres._replication import Capture  # noqa: E402

CAPTURE_PROFILES: list[Profiler] = []


def profile_capture_thread() -> None:
    """Wrap Capture._run (from here, not in the package) in a pyinstrument profiler."""
    original = Capture._run

    def run(self: Capture) -> None:
        prof = Profiler(interval=0.001)
        prof.start()
        try:
            original(self)
        finally:
            prof.stop()
            CAPTURE_PROFILES.append(prof)

    Capture._run = run  # type: ignore[method-assign]


def hot_spots(prof: Profiler, top: int) -> tuple[float, list[tuple[str, float]]]:
    session = prof.last_session
    assert session is not None
    root = session.root_frame()
    total = root.time if root is not None else 0.0
    self_time: dict[str, float] = defaultdict(float)

    def walk(frame: Any) -> None:
        # self time = own time minus the time of real (non-synthetic) children; pyinstrument's
        # synthetic "[self]" frames only restate that, so they are not counted again
        real = [c for c in frame.children if not c.identifier.startswith("[self]")]
        own = frame.time - sum(c.time for c in real)
        key = f"{frame.file_path_short}:{frame.function}" if frame.file_path_short else frame.function
        self_time[key] += max(0.0, own)
        for child in real:
            walk(child)

    if root is not None:
        walk(root)
    ranked = sorted(self_time.items(), key=lambda kv: -kv[1])[:top]
    return total, [(k, 100.0 * v / total if total else 0.0) for k, v in ranked]


def by_package(spots: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Self time summed per package (heliosdb_cdc per module, libraries whole)."""
    out: dict[str, float] = defaultdict(float)
    for name, pct in spots:
        path = name.split(":", 1)[0]
        parts = path.split("/")
        if parts[0] == "heliosdb_cdc" and len(parts) > 1:
            key = "/".join(parts[:-1]) + "/" + parts[-1]
        elif parts[0] == "<built-in>":
            key = name
        else:
            key = parts[0]
        out[key] += pct
    return sorted(out.items(), key=lambda kv: -kv[1])


def report(title: str, prof: Profiler, top: int, html_dir: Path | None) -> None:
    total, spots = hot_spots(prof, top)
    print(f"\n== {title}: {total:.2f}s of wall time sampled; top self time ==")
    for name, pct in spots:
        print(f"  {pct:5.1f}%  {name}")
    _, every = hot_spots(prof, 10_000)
    print(f"\n-- {title}: self time by module (heliosdb_cdc) or library --")
    for name, pct in by_package(every)[:top]:
        print(f"  {pct:5.1f}%  {name}")
    print(f"\n-- {title}: call tree (frames >= 3%) --")
    print(
        prof.output_text(
            unicode=False,
            color=False,
            show_all=False,
            time="percent_of_total",
            flat=False,
            processor_options={"filter_threshold": 0.03},
        )
    )
    if html_dir is not None:
        html_dir.mkdir(parents=True, exist_ok=True)
        out = html_dir / f"profile-{title.replace(' ', '_')}.html"
        out.write_text(prof.output_html())
        print(f"   html: {out}")


async def main_async(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="heliosdb-profile-"))
    pg = EmbeddedPostgres(work / "pg", extra_settings={"track_commit_timestamp": "on", "max_wal_size": "4GB"})
    pg.start()
    try:
        wl.create_table(pg.dsn)
        profile_capture_thread()
        loop_prof = Profiler(interval=0.001, async_mode="disabled")
        receiver = None
        url = None
        if args.scenario != "null":
            import subprocess

            from heliosdb_cdc._embedded import free_port

            port = free_port()
            receiver = subprocess.Popen([sys.executable, str(BENCH / "receiver.py"), "--port", str(port)])
            url = f"http://127.0.0.1:{port}/hook"
            await asyncio.sleep(1.5)
        batch = 100 if args.scenario == "webhook_batch" else 1
        server = WebhookServer(null_service.make_config(pg.dsn, str(work / "state"), url, batch))
        await server.start(serve_http=False)
        counter = null_service.Counter()
        counter.wrap(server.runners[null_service.STREAM].sink)
        loop_prof.start()
        t0 = time.time()
        if args.workload == "bulk":
            writer = threading.Thread(target=wl.run_bulk, args=(pg.dsn, args.changes))
        else:
            writer = threading.Thread(target=wl.run_oltp, args=(pg.bindir, pg.dsn, args.changes))
        writer.start()
        while writer.is_alive():
            await asyncio.sleep(0.05)
        n = wl.count_rows(pg.dsn)
        while counter.count < n:
            await asyncio.sleep(0.01)
        secs = counter.last - t0
        loop_prof.stop()
        await server.stop()  # joins the capture thread: its profile is complete
        if receiver is not None:
            receiver.terminate()
            receiver.wait()
        what = "memory sink" if args.scenario == "null" else f"{args.scenario} (receiver process)"
        print(
            f"{n} changes ({args.workload}) through WAL -> events -> {what} in {secs:.2f}s "
            f"= {n / secs:,.0f} changes/s (under the profiler)"
        )
        html = Path(args.html) if args.html else None
        for prof in CAPTURE_PROFILES:
            report("capture thread", prof, args.top, html)
        report("event loop thread", loop_prof, args.top, html)
    finally:
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--changes", type=int, default=100_000)
    p.add_argument("--workload", choices=["bulk", "oltp"], default="bulk")
    p.add_argument(
        "--scenario",
        choices=["null", "webhook1", "webhook_batch"],
        default="null",
        help="null (scenario 2, default) or a webhook stream to bench/receiver.py",
    )
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--html", help="also write pyinstrument HTML reports to this directory")
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
