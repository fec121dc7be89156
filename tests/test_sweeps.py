"""Sweeps as a whole, end to end: parent run, summary across seeds, presets, resume, failures, progress."""

from __future__ import annotations

import csv
import io
import os
import pty
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT, run_cli, runs_of, store_uri

pytestmark = pytest.mark.slow


def parents_and_children(directory):
    runs = runs_of(directory)
    parents = [r for r in runs if r.data.tags.get("xorexp.role") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def parent_csv(directory, parent_id):
    client = MlflowClient(store_uri(directory))
    path = client.download_artifacts(parent_id, "summary.csv", str(directory / f"csv-{parent_id}"))
    return list(csv.DictReader(open(path)))


def finished_in_the_database_file(directory: Path) -> int:
    """FINISHED runs in ``mlflow.db`` itself, read as an immutable file: a ``-wal`` file left by the
    command would hold what it wrote last, unseen here (the command must close its store at exit)."""
    assert not (directory / "mlflow.db-wal").exists()
    connection = sqlite3.connect(f"{(directory / 'mlflow.db').as_uri()}?immutable=1", uri=True)
    try:
        return connection.execute("SELECT count(*) FROM runs WHERE status = 'FINISHED'").fetchone()[0]
    finally:
        connection.close()


def test_grid_sweep_has_one_parent_and_a_summary_matching_its_children(tmp_path):
    proc = run_cli(tmp_path, "-m", "hidden_units=2,3", "lr=0.5,2,8", "seed=0,1", "iterations=1500",
                   f"hydra.sweep.dir={tmp_path}/multirun")
    assert proc.returncode == 0, proc.stderr
    assert finished_in_the_database_file(tmp_path) == 13  # the parent and its 12 runs
    assert "[xorexp]" not in proc.stderr + proc.stdout  # no progress line when output is not a terminal
    [parent], children = parents_and_children(tmp_path)
    assert parent.info.status == "FINISHED"
    assert len(children) == 12
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    # the launching process's log of the sweep keeps its lines (the launchers' logging set-up dropped them)
    sweep_log = (tmp_path / "multirun" / "xorexp.log").read_text()
    assert "Launching 12 jobs" in sweep_log
    assert sum(f"run {c.info.run_id}" in sweep_log for c in children) == 12

    expected = {}
    for child in children:
        key = (child.data.params["hidden_units"], child.data.params["lr"])
        expected.setdefault(key, []).append(child.data.tags["xorexp.outcome"] == "solved")
    rows = parent_csv(tmp_path, parent.info.run_id)
    assert len(rows) == 6
    for row in rows:
        solved = expected[(row["hidden_units"], row["lr"])]
        assert int(row["n_seeds"]) == 2
        assert float(row["success_rate"]) == sum(solved) / len(solved)

    client = MlflowClient(store_uri(tmp_path))
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/success_rate_heatmap.png", "plots/final_loss_vs_lr.png", "plots/loss_curves.png"}
    best = parent.data.tags["xorexp.best_run_id"]
    assert best in {c.info.run_id for c in children}
    # the printed table: header, rule, one row per group with its solved count
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:4] == ["hidden_units", "lr", "iterations",
                                                                            "seeds"])
    header, printed = lines[start], lines[start + 2 : start + 8]
    assert "success" in header.split() and set(lines[start + 1]) == {"-", " "}
    solved_cells = {(row.split()[0], row.split()[1]): row.split()[4] for row in printed}
    assert solved_cells == {key: f"{sum(solved)}/2" for key, solved in expected.items()}

    # the report command prints the same table from the store
    again = run_cli(tmp_path, module="xorexp.report")
    assert again.returncode == 0, again.stderr
    table_lines = [line for line in again.stdout.splitlines()[1:] if line.strip()]
    assert table_lines == lines[start : start + 8]


def test_preset_switches_to_multirun_and_a_resume_trains_nothing_already_finished(tmp_path):
    args = ["sweep=smoke", "iterations=300"]
    first = run_cli(tmp_path, *args, f"hydra.sweep.dir={tmp_path}/first")
    assert first.returncode == 0, first.stderr
    [parent], children = parents_and_children(tmp_path)  # the preset: a multirun without -m
    assert len(children) == 8
    assert parent.info.run_name.startswith("smoke @ ")
    assert parent.data.tags["xorexp.sweep"] == "smoke"
    assert {c.data.params["iterations"] for c in children} == {"300"}

    second = run_cli(tmp_path, *args, "tracking.skip_finished=true", f"hydra.sweep.dir={tmp_path}/second")
    assert second.returncode == 0, second.stderr
    parents, children = parents_and_children(tmp_path)
    assert len(parents) == 2 and len(children) == 8  # no new training run
    newest = max(parents, key=lambda r: r.info.start_time)
    assert newest.data.tags["xorexp.reused_runs"] == "8"
    rows = parent_csv(tmp_path, newest.info.run_id)
    assert sum(int(r["n_seeds"]) for r in rows) == 8


def test_resume_after_sigkill_finishes_every_config_exactly_once(tmp_path):
    args = ["-m", "seed=range(0,8)", "iterations=40000", f"hydra.sweep.dir={tmp_path}/multirun"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "xorexp", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:  # watch the job records on disk: opening the store now could race
            if len(list((tmp_path / "multirun").rglob("xorexp_job.json"))) >= 2:  # its creation
                break
            time.sleep(0.1)
        time.sleep(0.3)  # most likely mid-training of the next job, whose run is RUNNING
        assert proc.poll() is None, "sweep ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    running_before = {r.info.run_id for r in runs_of(tmp_path) if r.info.status == "RUNNING"}
    assert running_before  # at least the killed sweep's parent

    resumed = run_cli(tmp_path, *args, "tracking.skip_finished=true")
    assert resumed.returncode == 0, resumed.stderr
    runs = runs_of(tmp_path)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    finished = Counter(r.data.tags["xorexp.config_hash"] for r in runs
                       if r.info.status == "FINISHED" and "xorexp.config_hash" in r.data.tags)
    assert len(finished) == 8 and set(finished.values()) == {1}
    status = {r.info.run_id: r.info.status for r in runs}
    assert {status[run_id] for run_id in running_before} == {"KILLED"}


def test_a_failing_job_is_recorded_and_the_rest_of_the_sweep_runs(tmp_path):
    faults = ROOT / "tests" / "faults"  # see its sitecustomize.py: rendering seed 1's plots raises
    proc = run_cli(tmp_path, "-m", "seed=0,1,2", "iterations=300", f"hydra.sweep.dir={tmp_path}/multirun",
                   env={"PYTHONPATH": f"{faults}{os.pathsep}{ROOT}", "XOREXP_FAULT": "plot:1"})
    assert proc.returncode != 0
    failure_lines = [line for line in proc.stderr.splitlines() if "failed: RuntimeError" in line]
    assert len(failure_lines) == 1 and "injected plotting fault" in failure_lines[0]
    assert "full log:" in failure_lines[0]
    [parent], children = parents_and_children(tmp_path)
    status = {c.info.run_name: c.info.status for c in children}
    assert status == {"h2-lr0.1-s0": "FINISHED", "h2-lr0.1-s1": "FAILED", "h2-lr0.1-s2": "FINISHED"}
    failed = next(c for c in children if c.info.status == "FAILED")
    client = MlflowClient(store_uri(tmp_path))
    text = open(client.download_artifacts(failed.info.run_id, "error/traceback.txt", str(tmp_path))).read()
    assert "injected plotting fault" in text and "Traceback" in text
    assert parent.info.status == "FAILED"
    assert failed.info.run_id in proc.stdout  # the summary lists the failed job


def on_a_terminal(tmp_path, *args: str, stdout_too: bool = False) -> tuple[int, str]:
    """The CLI with stderr (and stdout) on a pseudo-terminal; its exit status and what the terminal got."""
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "xorexp", *args], cwd=tmp_path, env=env,
                            stdout=slave if stdout_too else subprocess.DEVNULL, stderr=slave,
                            stdin=subprocess.DEVNULL)
    os.close(slave)
    output = io.BytesIO()
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        output.write(chunk)
    return proc.wait(timeout=180), output.getvalue().decode()


def test_progress_shows_on_a_terminal_only(tmp_path):
    status, text = on_a_terminal(tmp_path, "-m", "seed=0,1,2", "iterations=200",
                                 f"hydra.sweep.dir={tmp_path}/multirun")
    assert status == 0
    assert "[xorexp] 3/3 jobs" in text
    # not on a terminal: no progress line (test_grid_sweep_has_one_parent_and_a_summary_matching_its_children)


@pytest.mark.floor
def test_one_progress_line_for_a_sweep_on_workers(tmp_path):
    status, text = on_a_terminal(tmp_path, "-m", "seed=range(0,24)", "iterations=200",
                                 f"hydra.sweep.dir={tmp_path}/multirun", stdout_too=True)
    assert status == 0
    assert finished_in_the_database_file(tmp_path) == 25  # workers and the launching process closed it
    counts = [int(n) for n in re.findall(r"\[xorexp\] (\d+)/24 jobs", text)]
    assert counts and counts == sorted(counts) and counts[-1] == 24  # one counter for the whole sweep
    assert "final_loss" not in text  # the jobs' own log lines stay in their log files
    assert len(list((tmp_path / "multirun").rglob("app.log"))) == 24
    assert any("final_loss" in log.read_text() for log in (tmp_path / "multirun").rglob("app.log"))
