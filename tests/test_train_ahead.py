"""A small sweep trains ahead in a child process (``xorexp.train_ahead``) while its store opens.

Real commands into real sqlite stores. Faults come from ``tests/faults/sitecustomize.py``: ``here``
(training raises in the launching process only) shows the runs really come from the child; ``die``
(the child dies) and ``train`` (training raises everywhere) show the launcher's own training takes
over, as before. Signals show the child never outlives the sweep.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import process_alive, run_cli, runs_of, store_snapshot
from tests.test_faults import by_status, error_lines, fault_env, spawn
from xorexp.train import RunSpec, train

pytestmark = pytest.mark.slow

SWEEP = ["-m", "lr=0.5,4", "seed=0,1", "iterations=700", "trace_every=50"]  # 4 runs: trained ahead


def ahead_children(parent_pid: int) -> list[int]:
    """Processes training ahead for the launching process ``parent_pid`` (it is their argument)."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    pids = []
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        if args.split()[-2:] == ["xorexp.train_ahead", str(parent_pid)] and process_alive(int(pid)):
            pids.append(int(pid))
    return pids


def test_a_small_sweep_is_trained_ahead_with_the_bits_of_the_basic_launcher(tmp_path):
    snapshots = {}
    for launcher, env in (("basic", None), ("vectorized", fault_env("here:0,here:1"))):
        where = tmp_path / launcher
        where.mkdir()
        proc = run_cli(where, *SWEEP, f"hydra/launcher={launcher}", f"hydra.sweep.dir={where}/m", env=env)
        assert proc.returncode == 0, proc.stderr  # the launching process could not have trained them
        snapshots[launcher] = store_snapshot(where)
    assert len(snapshots["basic"]) == 4
    assert {run["status"] for run in snapshots["basic"].values()} == {"FINISHED"}
    assert snapshots["vectorized"] == snapshots["basic"]


def test_when_the_child_dies_the_launcher_trains_the_runs_itself(tmp_path):
    proc = run_cli(tmp_path, *SWEEP, f"hydra.sweep.dir={tmp_path}/m", env=fault_env("die:0"))
    assert proc.returncode == 0, proc.stderr
    assert error_lines(proc.stderr) == [] and "Traceback" not in proc.stdout
    assert by_status(tmp_path) == Counter({("job", "FINISHED"): 4, ("sweep", "FINISHED"): 1})
    expected = {
        (result.spec.lr, result.spec.seed): result.final_loss
        for result in train([RunSpec(lr=lr, seed=seed, iterations=700, trace_every=50)
                             for lr in (0.5, 4.0) for seed in (0, 1)])
    }
    got = {
        (float(run.data.params["lr"]), int(run.data.params["seed"])): run.data.metrics["final_loss"]
        for run in runs_of(tmp_path) if run.data.tags.get("xorexp.role") != "sweep"
    }
    assert got == expected


def test_when_training_raises_ahead_the_jobs_fail_as_before(tmp_path):
    proc = run_cli(tmp_path, *SWEEP, f"hydra.sweep.dir={tmp_path}/m", env=fault_env("train:1"))
    assert proc.returncode == 1
    lines = error_lines(proc.stderr)
    assert lines[-1].startswith("xorexp: 4 job(s) of the sweep failed"), lines  # one batch: all 4
    assert "Traceback" not in proc.stderr + proc.stdout and "MemoryError" in proc.stderr
    assert by_status(tmp_path) == Counter({("job", "FAILED"): 4, ("sweep", "FAILED"): 1})


def _waiting_sweep(tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """A small sweep whose training takes minutes, once its parent run exists (the launching process
    then waits for the child): the process and the child's pid."""
    proc = spawn(tmp_path, "-m", "lr=0.5,4", "iterations=50000000", f"hydra.sweep.dir={tmp_path}/m")
    deadline = time.monotonic() + 120
    while not (tmp_path / "m" / "xorexp_parent_run.json").exists() or not ahead_children(proc.pid):
        assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
        assert time.monotonic() < deadline, "the sweep did not start training ahead"
        time.sleep(0.2)
    [child] = ahead_children(proc.pid)
    return proc, child


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["INT", "TERM", "KILL"])
def test_a_stopped_sweep_leaves_no_child_training(tmp_path, sig):
    proc, child = _waiting_sweep(tmp_path)
    if sig == signal.SIGINT:
        os_kill = lambda: __import__("os").killpg(proc.pid, sig)  # noqa: E731 (a terminal's Ctrl-C)
    else:
        os_kill = lambda: __import__("os").kill(proc.pid, sig)  # noqa: E731 (the launching process only)
    os_kill()
    status = proc.wait(timeout=30)
    if sig == signal.SIGKILL:  # the child notices within a second
        deadline = time.monotonic() + 5
        while process_alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not process_alive(child)
        return
    assert not process_alive(child)  # stopped by the launching process before it exits
    assert status == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig]
    [line] = error_lines((tmp_path / "stderr.txt").read_text())
    assert line.startswith("xorexp: interrupted (")
    assert by_status(tmp_path) == Counter({("sweep", "KILLED"): 1})  # no job had a run yet


def test_a_refused_store_stops_the_child_too(tmp_path):
    (tmp_path / "bad.db").write_text("not a database\n" * 100)
    proc = spawn(tmp_path, "-m", "lr=0.5,4", "iterations=50000000", f"tracking.uri=sqlite:///{tmp_path}/bad.db")
    assert proc.wait(timeout=60) == 2
    [line] = error_lines((tmp_path / "stderr.txt").read_text())
    assert line.startswith("xorexp: ") and "bad.db" in line
    assert ahead_children(proc.pid) == []
