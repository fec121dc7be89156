"""How the launcher's workers start (forked from a single-threaded launching process, else spawned)
and what a forked child lets go of: the sweep directory's lock and the sweep's log file."""

from __future__ import annotations

import fcntl
import json
import logging
import multiprocessing
import os
import subprocess
import sys

from tests.conftest import ROOT
from xorexp import subprocesses
from xorexp.sweep import LOCK_FILE, _claim, _log_file

CHOICES = r"""
import json, os, sys, threading
from xorexp.subprocesses import worker_context
from xorexp.tracking.store import open_store

store = open_store(sys.argv[1], "x")  # a real embedded store: its engine keeps a pooled connection
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
engine = SqlAlchemyStore._engine_map[store.uri]
seen = {"pooled before": engine.pool.checkedin()}
seen["alone"] = worker_context().get_start_method()
seen["pooled after"] = engine.pool.checkedin()
os.environ["XOREXP_WORKER_START"] = "spawn"
seen["asked to spawn"] = worker_context().get_start_method()
del os.environ["XOREXP_WORKER_START"]
stop = threading.Event()
threading.Thread(target=stop.wait).start()
seen["with a thread"] = worker_context().get_start_method()
stop.set()
print(json.dumps(seen))
"""


def test_workers_fork_only_from_a_process_without_other_threads(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run(
        [sys.executable, "-c", CHOICES, uri],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.splitlines()[-1])
    assert seen == {
        "pooled before": 1,
        "alone": "fork",
        "pooled after": 0,  # no database connection crosses into a forked child
        "asked to spawn": "spawn",
        "with a thread": "spawn",
    }


def _report_inherited(fd: int, lock_file: str, handler: logging.Handler, out) -> None:
    try:  # the number may be taken again by then (multiprocessing opens /dev/null as stdin)
        fd_open = os.path.samestat(os.fstat(fd), os.stat(lock_file))
    except OSError:
        fd_open = False
    attached = [name for name in _log_file.LOGGERS if handler in logging.getLogger(name).handlers]
    out.send({"fd open": fd_open, "handler on": attached})


def test_a_forked_child_lets_go_of_the_sweep_directory_and_its_log(tmp_path):
    fork = multiprocessing.get_context("fork")
    with _claim(tmp_path / "sweep") as claim, _log_file(tmp_path / "sweep.log") as sweep_log:
        reader, writer = fork.Pipe(duplex=False)
        lock_file = str(tmp_path / "sweep" / LOCK_FILE)
        child = fork.Process(target=_report_inherited, args=(claim.fd, lock_file, sweep_log.handler, writer))
        child.start()
        seen = reader.recv()
        child.join(30)
        assert seen == {"fd open": False, "handler on": []}
        assert child.exitcode == 0
        # the launching process still holds both
        other = os.open(tmp_path / "sweep" / LOCK_FILE, os.O_RDWR)
        try:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                still_locked = False
            except BlockingIOError:
                still_locked = True
        finally:
            os.close(other)
        assert still_locked
        assert sweep_log.handler in logging.getLogger("xorexp").handlers
        assert len(subprocesses._launching_only) == 2
    assert subprocesses._launching_only == {}  # taken back when the sweep let go
