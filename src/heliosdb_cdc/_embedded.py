"""A private PostgreSQL cluster with ``wal_level=logical``, for the demo, tests and benchmarks.

Server binaries come from the system (``/usr/lib/postgresql/*/bin`` or ``PATH``)
or, when none is installed, from the ``pgserver`` wheel. When running as root
the cluster runs as the ``postgres`` user (created if missing), as PostgreSQL
refuses to run as root.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from ._errors import SourceError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _system_bindirs() -> list[Path]:
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    out = [Path(d) for d in reversed(dirs)]
    which = shutil.which("pg_ctl")
    if which:
        out.append(Path(os.path.realpath(which)).parent)
    return out


def _pgserver_bindir() -> Path | None:
    try:
        import pgserver
    except ImportError:
        return None
    root = Path(pgserver.__file__).parent / "pginstall"
    if not (root / "bin" / "postgres").exists():
        return None
    if os.geteuid() == 0:
        # /root is not readable by the postgres user: use a copy outside it, keeping the
        # layout the binaries' rpath expects ($ORIGIN/../../../pgserver.libs)
        base = Path("/opt/heliosdb-cdc")
        dest = base / "pgserver" / "pginstall"
        if not (dest / "bin" / "postgres").exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(root, dest, dirs_exist_ok=True)
            libs = root.parent.parent / "pgserver.libs"
            if libs.is_dir():
                shutil.copytree(libs, base / "pgserver.libs", dirs_exist_ok=True)
            for p in [base, *base.rglob("*")]:
                if p.is_dir():
                    os.chmod(p, 0o755)
        return dest / "bin"
    return root / "bin"


def find_bindir() -> Path:
    for d in _system_bindirs():
        if (d / "postgres").exists() and (d / "initdb").exists():
            return d
    d2 = _pgserver_bindir()
    if d2 is not None:
        return d2
    raise SourceError(
        "no PostgreSQL server binaries found: install the 'postgresql' package "
        "(apt-get install postgresql) or 'pip install pgserver'"
    )


def _traversable(path: Path) -> bool:
    """True when every ancestor lets other users through (o+x)."""
    p = path
    while True:
        try:
            if p.exists() and not (p.stat().st_mode & 0o001):
                return False
        except OSError:
            return False
        if p.parent == p:
            return True
        p = p.parent


def _ensure_postgres_user() -> None:
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)


class EmbeddedPostgres:
    """Start/stop a throwaway cluster: ``with EmbeddedPostgres(dir) as pg: pg.dsn``."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        extra_settings: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._as_root = os.geteuid() == 0
        if self._as_root and not _traversable(self.data_dir.parent):
            # PostgreSQL runs as the postgres user, who cannot reach this path
            # (e.g. under /root): keep the cluster in a place it can reach.
            import hashlib

            digest = hashlib.sha1(str(self.data_dir).encode()).hexdigest()[:12]
            self.data_dir = Path("/var/lib/heliosdb-cdc") / digest / "data"
        self.port = port or free_port()
        self.bindir = find_bindir()
        self.extra = extra_settings or {}

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def dsn_for(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True)

    def init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._as_root:
            _ensure_postgres_user()
            shutil.chown(self.data_dir, "postgres", "postgres")
            os.chmod(self.data_dir, 0o700)
        res = self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
            check=False,
        )
        if res.returncode != 0:
            raise SourceError(f"initdb failed: {res.stderr.strip()}", data_dir=str(self.data_dir))
        settings = {
            "wal_level": "logical",
            "max_wal_senders": "20",
            "max_replication_slots": "20",
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": "''",
            "fsync": "on",
            "synchronous_commit": "on",
            "shared_buffers": "256MB",
            "max_connections": "100",
            "logical_decoding_work_mem": "64MB",
            "wal_sender_timeout": "60s",
            **self.extra,
        }
        with open(self.data_dir / "postgresql.conf", "a") as f:
            for k, v in settings.items():
                f.write(f"{k} = {v}\n")

    def start(self) -> EmbeddedPostgres:
        self.init()
        res = self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-o",
            f"-p {self.port}",
            "-l",
            str(self.data_dir / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
            check=False,
        )
        if res.returncode != 0:
            log = ""
            with contextlib.suppress(OSError):
                log = (self.data_dir / "server.log").read_text()[-2000:]
            raise SourceError(f"PostgreSQL did not start: {res.stderr.strip()} {log}")
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30.0) -> None:
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg2.connect(self.dsn, connect_timeout=2).close()
                return
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self, mode: str = "fast") -> None:
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-m",
            mode,
            "-w",
            "stop",
            check=False,
        )

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
