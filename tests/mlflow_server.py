"""A real ``mlflow server`` on 127.0.0.1 for tests and benchmarks, in its own process group.

``start_server`` returns once ``/health`` answers; ``stop_server`` stops the whole process group (the
gunicorn or uvicorn workers the server spawns too) and checks that nothing of it is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import free_port

STARTUP_TIMEOUT_S = 90


@dataclass
class Server:
    uri: str
    process: subprocess.Popen
    root: Path  # holds server.db, artifacts/ and server.log

    @property
    def pgid(self) -> int:
        return self.process.pid  # start_new_session: the server leads its own process group


def start_server(root: Path, *, backend: str | None = None, workers: int = 1) -> Server:
    """``mlflow server`` on 127.0.0.1 at a free port; returns once ``/health`` answers.

    ``backend``: its backend store URI (default ``sqlite:///<root>/server.db``); artifacts always go
    to ``<root>/artifacts``, served by the server."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [
        sys.executable, "-m", "mlflow", "server", "--workers", str(workers), "--host", "127.0.0.1",
        "--port", str(port), "--backend-store-uri", backend or f"sqlite:///{root / 'server.db'}",
        "--artifacts-destination", str(root / "artifacts"),
    ]
    log = open(root / "server.log", "wb")  # noqa: SIM115 (closed with the process)
    process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    server = Server(f"http://127.0.0.1:{port}", process, root)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited ({process.returncode}):\n{server_log(server)}")
        try:
            with urllib.request.urlopen(server.uri + "/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"mlflow server silent on /health for {STARTUP_TIMEOUT_S} s:\n{server_log(server)}")


def server_log(server: Server) -> str:
    path = server.root / "server.log"
    return path.read_text(errors="replace")[-3000:] if path.is_file() else ""


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def stop_server(server: Server) -> None:
    """SIGTERM the server's whole process group, SIGKILL what is left after 10 s, and check nothing is."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(server.pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and group_members(server.pgid):
            if server.process.poll() is None:
                try:
                    server.process.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass
            else:
                time.sleep(0.1)
        if not group_members(server.pgid):
            break
    if server.process.poll() is None:
        server.process.wait(timeout=10)
    left = group_members(server.pgid)
    assert not left, f"processes of the mlflow server left: {left}"
