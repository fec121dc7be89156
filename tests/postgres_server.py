"""A throwaway PostgreSQL server for tests and benchmarks: Debian's binaries, a temp data dir.

``initdb`` refuses to run as root, so when this process is root the server runs as the unprivileged
``postgres`` system user (``runuser``); otherwise as the current user. It listens on 127.0.0.1 at a
free port and on a unix socket in its own directory, trusts local connections (tests only), and is
stopped with ``pg_ctl stop -m fast``, after which its postmaster pid must be gone.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import free_port, process_alive

PG_BIN_DIRS = [Path("/usr/lib/postgresql") / v / "bin" for v in ("17", "16", "15")]
START_TIMEOUT_S = 60


def pg_bin() -> Path | None:
    """The directory of PostgreSQL's server binaries (initdb, pg_ctl), or None if not installed."""
    for directory in PG_BIN_DIRS:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@dataclass
class PostgresServer:
    root: Path  # data/, sock/, server.log (a temp dir, removed by stop)
    port: int
    bin_dir: Path
    user: str | None  # the system user the server runs as (None: this process's user)

    def uri(self, database: str, driver: str = "") -> str:
        """A SQLAlchemy URI of ``database`` over TCP on 127.0.0.1 (``driver``: e.g. ``+psycopg2``)."""
        return f"postgresql{driver}://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        return subprocess.run(
            [*prefix, *command], capture_output=True, text=True, check=check, stdin=subprocess.DEVNULL,
            timeout=START_TIMEOUT_S, cwd=self.root,
        )

    def create_database(self, name: str) -> str:
        """A new database ``name``; returns its URI."""
        self._run(str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                  name)
        return self.uri(name)

    def postmaster_pid(self) -> int | None:
        pid_file = self.root / "data" / "postmaster.pid"
        try:
            return int(pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """``pg_ctl stop -m fast``; SIGKILL the postmaster if it is still there after 30 s."""
        pid = self.postmaster_pid()
        self._run(str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.root / "data"), "-m", "fast", "-w",
                  "-t", "30", check=False)
        if pid is not None and process_alive(pid):
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while process_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        if pid is not None and process_alive(pid):
            raise RuntimeError(f"PostgreSQL postmaster {pid} still running")
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(*, fsync: bool = True) -> PostgresServer:
    """initdb + pg_ctl start in a new temp dir (handed to the ``postgres`` user when root; removed
    by ``stop``). The temp dir is made directly in the system's temp folder so that the ``postgres``
    user can reach it (pytest's own temp folders are private to root).

    ``fsync=False`` trades durability for speed (tests); benchmarks keep PostgreSQL's defaults.
    """
    bin_dir = pg_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries not found: apt-get install -y postgresql")
    root = Path(tempfile.mkdtemp(prefix="xorexp-pg-"))
    (root / "sock").mkdir()
    user = None
    if os.geteuid() == 0:
        user = "postgres"
        entry = pwd.getpwnam(user)
        for path in (root, root / "sock"):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    server = PostgresServer(root, free_port(), bin_dir, user)
    server._run(str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", "postgres", "-A", "trust",
                "-E", "UTF8", "--locale=C", "--no-sync")
    options = f"-k {root / 'sock'} -p {server.port} -c listen_addresses=127.0.0.1"
    if not fsync:
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    log_file = root / "server.log"
    started = server._run(str(bin_dir / "pg_ctl"), "start", "-D", str(root / "data"), "-l", str(log_file),
                          "-w", "-t", str(START_TIMEOUT_S), "-o", options, check=False)
    if started.returncode != 0:
        log = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
        server.stop()
        raise RuntimeError(f"pg_ctl start failed ({started.returncode}): {started.stderr}\n{log}")
    return server
