"""A real ``mlflow server`` on 127.0.0.1 for tests and benchmarks, in its own process group.

``start_server`` returns once ``/health`` answers; ``stop_server`` stops the whole process group (the
gunicorn or uvicorn workers the server spawns too) and checks that nothing of it is left. ``Proxy`` puts
a loopback forwarder with a delay per request (a far-away server) in front of one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


def start_server(root: Path, *, backend: str | None = None, workers: int = 1,
                 enter: Callable[[list[str]], list[str]] | None = None, port: int | None = None) -> Server:
    """``mlflow server`` on 127.0.0.1 at a free port; returns once ``/health`` answers.

    ``backend``: its backend store URI (default ``sqlite:///<root>/server.db``); artifacts always go
    to ``<root>/artifacts``, served by the server. ``enter``: makes a command run in other namespaces
    (e.g. ``LoopbackRayCluster.enter``: the server, and the probe of its health, run there), with
    ``port`` then (free there)."""
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [
        sys.executable, "-m", "mlflow", "server", "--workers", str(workers), "--host", "127.0.0.1",
        "--port", str(port), "--backend-store-uri", backend or f"sqlite:///{root / 'server.db'}",
        "--artifacts-destination", str(root / "artifacts"),
    ]
    if enter is not None:
        command = enter(command)
    log = open(root / "server.log", "wb")  # noqa: SIM115 (closed with the process)
    process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    server = Server(f"http://127.0.0.1:{port}", process, root)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited ({process.returncode}):\n{server_log(server)}")
        if _healthy(server.uri, enter):
            return server
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"mlflow server silent on /health for {STARTUP_TIMEOUT_S} s:\n{server_log(server)}")


def _healthy(uri: str, enter: Callable[[list[str]], list[str]] | None) -> bool:
    if enter is None:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False
    probe = f"import urllib.request; urllib.request.urlopen({uri + '/health'!r}, timeout=2)"
    done = subprocess.run(enter([sys.executable, "-c", probe]), capture_output=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    return done.returncode == 0


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


HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate", "content-length"}


class Proxy:
    """A loopback HTTP forwarder in front of a server: each request waits ``latency`` seconds, then
    goes on to ``upstream``; counts requests by (method, path without the run's part); ``refuse``
    (method, path) -> an HTTP status answers a request itself instead (e.g. a failing upload).
    ``peak_runs``: the most runs that had requests in flight at once (a run's requests: its uploads,
    log-batch, update, by the run id in the path or JSON body).

    Threaded (one thread per client connection, as many at once as clients open), 127.0.0.1 only;
    ``close()`` stops it."""

    def __init__(self, upstream: str, latency: float = 0.0,
                 refuse: Callable[[str, str], int | None] | None = None) -> None:
        self.upstream = upstream.removeprefix("http://")
        self.latency = latency
        self.refuse = refuse
        self.counts: Counter[tuple[str, str]] = Counter()
        self.lock = threading.Lock()
        self.in_flight: Counter[str] = Counter()  # run id -> its requests in flight
        self.peak_runs = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _forward(self) -> None:
                body = self._body()
                path = self.path.split("?", 1)[0]
                kind = path.split("/mlflow-artifacts/artifacts/", 1)[0]
                if kind != path:
                    kind += "/mlflow-artifacts/artifacts/<file>"
                run_id = _run_of(path, body)
                with proxy.lock:
                    proxy.counts[(self.command, kind)] += 1
                    if run_id:
                        proxy.in_flight[run_id] += 1
                        proxy.peak_runs = max(proxy.peak_runs, len(proxy.in_flight))
                try:
                    self._handle(body, path)
                finally:
                    if run_id:
                        with proxy.lock:
                            proxy.in_flight[run_id] -= 1
                            if not proxy.in_flight[run_id]:
                                del proxy.in_flight[run_id]

            def _handle(self, body: bytes | None, path: str) -> None:
                time.sleep(proxy.latency)
                status = proxy.refuse(self.command, path) if proxy.refuse else None
                if status is not None:
                    refusal = {"error_code": "PERMISSION_DENIED", "message": "refused by the proxy"}
                    self._answer(status, [("Content-Type", "application/json")], json.dumps(refusal).encode())
                    return
                upstream = HTTPConnection(proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
                    self._answer(response.status, kept, data)
                finally:
                    upstream.close()

            def _body(self) -> bytes | None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(parts)
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else None

            def _answer(self, status: int, headers: list, data: bytes) -> None:
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="proxy", daemon=True)
        self.thread.start()

    def total(self) -> int:
        with self.lock:
            return sum(self.counts.values())

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def _run_of(path: str, body: bytes | None) -> str | None:
    """The run a request is for: in an artifact's path (``.../artifacts/<experiment>/<run>/...``),
    or the ``run_id`` of a JSON body (log-batch, update); None for others (create, searches)."""
    if "/mlflow-artifacts/artifacts/" in path:
        parts = path.split("/mlflow-artifacts/artifacts/", 1)[1].split("/")
        return parts[1] if len(parts) > 2 else None
    if body and path.endswith(("/runs/log-batch", "/runs/update")):
        try:
            return json.loads(body).get("run_id")
        except ValueError:
            return None
    return None
