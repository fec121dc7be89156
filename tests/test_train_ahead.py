"""A sweep trains ahead in a child process (``xorexp.train_ahead``) while its store opens.

Real commands into real sqlite stores. Faults come from ``tests/faults/sitecustomize.py``: ``here``
(training raises in the launching process only) shows the runs really come from the child; ``die``
(the child dies) and ``train`` (training raises everywhere) show the launcher's own training takes
over, as before. Signals show the child never outlives the sweep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import process_alive, run_cli, runs_of, store_snapshot
from tests.test_faults import by_status, error_lines, fault_env, spawn
from xorexp import chunks, train_ahead
from xorexp.params import run_name
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


def test_a_sweep_with_workers_gets_the_runs_trained_ahead_and_trains_only_the_rest(tmp_path):
    """A 40-run sweep on 2 workers whose training raises in the workers (fault ``worker``): the runs
    the child trained ahead (all of them: ``ahead`` has the launching process wait for it) need no
    training there, and the store holds what a sweep without workers writes, bit for bit."""
    sweep = ["-m", "seed=range(0,20)", "lr=0.5,3", "iterations=400"]
    snapshots = {}
    for name, flags, env in (
        ("in_process", ["hydra.launcher.n_jobs=1"], None),
        ("workers", ["hydra.launcher.n_jobs=2"], fault_env("ahead:0,worker:0,worker:10")),
    ):
        where = tmp_path / name
        where.mkdir()
        proc = run_cli(where, *sweep, *flags, f"hydra.sweep.dir={where}/m", env=env)
        assert proc.returncode == 0, proc.stderr
        snapshots[name] = store_snapshot(where)
    assert len(snapshots["in_process"]) == 40
    assert snapshots["workers"] == snapshots["in_process"]



def _same(a, b) -> bool:
    return a.spec == b.spec and a.loss_trace.tobytes() == b.loss_trace.tobytes() and a.outcome == b.outcome


def test_the_child_sends_its_chunks_as_they_are_trained_and_each_run_is_taken_once():
    specs = [RunSpec(lr=lr, seed=seed, iterations=300) for lr in (0.5, 4.0) for seed in range(65)]  # 3 chunks
    ahead = train_ahead.AheadChild(specs, chunk_size=1000, plots=False)
    try:
        first = ahead.collect(specs[:64])  # waits for the chunks holding them only
        assert all(_same(got, want) for got, want in zip(first, train(specs[:64]), strict=True))
        ahead.proc.wait(60)
        rest = ahead.ready()
        assert set(rest) == set(specs[64:])
        expected = train(specs[64:])
        assert all(_same(rest[spec], result) for spec, result in zip(specs[64:], expected, strict=True))
        assert ahead.collect(specs[:1]) is None  # taken already: the launcher would train it
        assert ahead.collect([RunSpec(lr=0.25, iterations=300)]) is None  # not among the child's
    finally:
        ahead.stop()


def test_a_child_gone_midway_leaves_what_it_sent_and_the_rest_to_the_launcher():
    quick = [RunSpec(hidden_units=2, lr=0.5, seed=seed, iterations=300) for seed in range(5)]
    endless = [RunSpec(hidden_units=3, lr=0.5, seed=seed, iterations=50_000_000) for seed in range(5)]
    ahead = train_ahead.AheadChild(quick + endless, chunk_size=1000, plots=False)  # two chunks: h differs
    try:
        assert ahead.collect(quick) is not None
        assert ahead.ready() == {}  # the second chunk is minutes away
        ahead.proc.kill()
        ahead.proc.wait(10)
        assert ahead.collect(endless) is None  # its output ended: no waiting
        assert ahead.ready() == {}
    finally:
        ahead.stop()


def test_the_child_trains_everything_while_nobody_reads_and_one_look_takes_it_all():
    """The launcher reads when its workers start, once (``ready``), seconds after the child started:
    meanwhile the child trains on, whatever it has written (~2 MB here: a pipe, 64 kB, would have
    stopped it after its first chunk), then renders every run's plots: the bytes a job renders."""
    specs = [RunSpec(lr=0.5, seed=seed, iterations=10_000, trace_every=10) for seed in range(256)]
    ahead = train_ahead.AheadChild(specs, chunk_size=1000)
    try:
        assert ahead.proc.wait(120) == 0  # all trained, rendered and written, nothing read
        got = ahead.ready()
        assert set(got) == set(specs)
        assert all(isinstance(known, tuple) for known in got.values())  # (result, plots) each
        expected = train(specs)
        assert all(_same(got[spec][0], result) for spec, result in zip(specs, expected, strict=True))
        for result in expected[:3] + expected[-3:]:
            pngs = got[result.spec][1]
            assert pngs == chunks.render_run_plots(result, run_name(result.spec))
            assert set(pngs) == {chunks.LEARNING_CURVE, chunks.DECISION_BOUNDARY}
    finally:
        ahead.stop()


def test_a_run_whose_plots_fail_in_the_child_is_left_to_its_job():
    """The child's rendering raises for one run (fault ``plot``, in whichever process renders): the
    other runs come with their plots, that one without (its job renders them, and fails there)."""
    env = {**os.environ, **fault_env("plot:2")}
    code = (
        "import pickle, sys\n"
        "from xorexp import train_ahead\n"
        "from xorexp.train import RunSpec\n"
        "specs = [RunSpec(lr=0.5, seed=seed, iterations=300) for seed in range(4)]\n"
        "ahead = train_ahead.AheadChild(specs, chunk_size=1000)\n"
        "ahead.proc.wait(60)\n"
        "got = ahead.ready()\n"
        "ahead.stop()\n"
        "print(sorted((spec.seed, isinstance(known, tuple)) for spec, known in got.items()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[(0, True), (1, True), (2, False), (3, True)]"
