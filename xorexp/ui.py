"""Serve the MLflow UI on the project's store and print where the latest sweep is.

    python -m xorexp.ui [--tracking-uri URI] [--port P] [--experiment NAME]

Runs ``mlflow server`` bound to 127.0.0.1 with one worker and no job execution (the light setup of
the README), on the same store ``python -m xorexp`` uses from this directory by default
(``sqlite:///<cwd>/mlflow.db``). Read-only on a missing store: refuses, in one line (exit 2),
before the server could create it. Prints the URL of the latest sweep's parent run and serves until
Ctrl-C (SIGINT) or SIGTERM, which it forwards to the server before it exits with status 0.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from xorexp import report, sweep_text
from xorexp.tracking import reading
from xorexp.tracking.store import open_store
from xorexp.tracking.uri import StoreError, redact, resolve_uri, store_kind

DEFAULT_PORT = sweep_text.UI_PORT
HOST = "127.0.0.1"
START_TIMEOUT_S = 90.0  # generous: a busy machine starts mlflow server many times slower than a quiet one
STOP_TIMEOUT_S = 15.0


class UiError(Exception):
    """The UI cannot be served: str(error) is the one line shown."""


def server_command(uri: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "mlflow", "server",
        "--host", HOST,
        "--port", str(port),
        "--workers", "1",
        "--backend-store-uri", uri,
    ]  # fmt: skip


def server_env() -> dict[str, str]:
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def check_port(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
        try:
            probe.bind((HOST, port))
        except OSError as error:
            problem = f"port {port} on {HOST} is not free ({error.strerror})"
            raise UiError(f"{problem}: pass another --port") from None


def start_page(uri: str, experiment: str, base: str) -> tuple[str, str]:
    """(what, URL) of the page to open: the latest sweep's parent run, else the experiment's runs."""
    try:
        store = open_store(uri, experiment, create=False)
    except StoreError:
        return f"no experiment {experiment!r} in the store", base
    parent = reading.latest_sweep(store)
    if parent is None:
        runs_page = f"{base}#/experiments/{store.experiment_id}/runs{sweep_text.UI_QUERY}"
        return f"experiment {experiment!r} (no sweep yet)", runs_page
    name = reading.get_run(store, parent).info.run_name
    return f"latest sweep {name!r}", sweep_text.run_url(store.experiment_id, parent, base)


def wait_healthy(server: subprocess.Popen, base: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise UiError(f"mlflow server exited with status {server.returncode} while starting")
        try:
            with urllib.request.urlopen(base + "health", timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.3)
    raise UiError(f"mlflow server did not answer {base}health within {START_TIMEOUT_S:.0f} s")


def stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (mlflow server runs uvicorn as a child), then wait;
    SIGKILL after STOP_TIMEOUT_S."""
    if server.poll() is not None:
        return
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    except ProcessLookupError:
        server.wait()


def drain(stream, tail: collections.deque) -> None:
    """Keep the server's last lines (shown only if it fails), without letting its pipe fill."""
    for line in stream:
        tail.append(line.rstrip())


def serve(uri: str, port: int, experiment: str) -> int:
    """Serve the UI on ``uri`` until a signal stops it (0); UiError when it cannot or dies."""
    if store_kind(uri) == "server":
        raise UiError(
            f"{redact(uri)} is a tracking server: it serves the UI itself, open it in a browser"
        )
    report.check_readable(uri)  # before the server could create or migrate anything
    check_port(port)
    base = f"http://{HOST}:{port}/"
    what, url = start_page(uri, experiment, base)
    stopping = threading.Event()
    server = subprocess.Popen(
        server_command(uri, port),
        env=server_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: signals reach it once, from here
    )
    tail: collections.deque = collections.deque(maxlen=20)
    threading.Thread(target=drain, args=(server.stdout, tail), daemon=True).start()

    def on_signal(signum, frame) -> None:
        # forward only (the main thread waits for the server); a second signal kills it
        sig = signal.SIGKILL if stopping.is_set() else signal.SIGTERM
        stopping.set()
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        wait_healthy(server, base)
        print(f"MLflow UI of {redact(uri)} at {base}", flush=True)
        print(f"{what}: {url}", flush=True)
        print("Ctrl-C stops it.", flush=True)
        status = server.wait()
    except UiError:
        if stopping.is_set():
            return 0
        last = next((line for line in reversed(tail) if line.strip()), "")
        stop(server)
        raise UiError(f"mlflow server did not start{': ' + last if last else ''}") from None
    finally:
        stop(server)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopping.is_set():
        print("MLflow UI stopped.", flush=True)
        return 0
    raise UiError(f"mlflow server stopped by itself (status {status}): {next(reversed(tail), '')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xorexp.ui", description="Serve the MLflow UI on xorexp's store (127.0.0.1 only)."
    )
    parser.add_argument("--tracking-uri", default=None, help="default: sqlite:///./mlflow.db")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default: {DEFAULT_PORT}")
    parser.add_argument("--experiment", default="xorexp", help="whose latest sweep to point at")
    args = parser.parse_args(argv)
    uri = resolve_uri(args.tracking_uri, Path.cwd())
    if not 1 <= args.port <= 65535:
        print(f"xorexp: --port {args.port}: must be a port number 1-65535", file=sys.stderr)
        return 2
    try:
        return serve(uri, args.port, args.experiment)
    except (UiError, StoreError) as error:
        print(f"xorexp: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a store MLflow cannot read: one line, never a traceback
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        print(f"xorexp: cannot read the store {redact(uri)} ({reason})", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
