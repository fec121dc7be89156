"""The fault matrix of sweeps and runs: real processes, real stores, faults injected or sent as signals.

Each case checks what the user is left with: the exit status, the lines on stderr (one ``xorexp:``
line per problem, no traceback), the runs in the store by status (every job exactly one run with a
terminal status), and the processes still alive. Faults inside the code are injected by
``tests/faults/sitecustomize.py`` (see its docstring), in the launching process and in workers alike.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT, process_alive, run_cli, runs_of, store_uri
from tests.mlflow_server import start_server, stop_server

pytestmark = pytest.mark.slow

FAULTS = Path(__file__).resolve().parent / "faults"


def fault_env(faults: str) -> dict[str, str]:
    return {"PYTHONPATH": f"{FAULTS}{os.pathsep}{ROOT}", "XOREXP_FAULT": faults}


def error_lines(stderr: str) -> list[str]:
    """What the user reads on stderr, less MLflow's own two lines when it creates a store."""
    return [line for line in stderr.splitlines() if line.strip() and "mlflow.store.db.utils" not in line]


def by_status(directory: Path) -> Counter:
    """(role, status) -> runs: role is "sweep" for a parent, "job" for the others."""
    return Counter(
        ("sweep" if r.data.tags.get("xorexp.role") == "sweep" else "job", r.info.status)
        for r in runs_of(directory)
    )


def children_of(directory: Path, parent_id: str) -> list:
    return [r for r in runs_of(directory) if r.data.tags.get("mlflow.parentRunId") == parent_id]


def spawn(cwd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """The CLI in its own session (a terminal's process group), output to files in ``cwd``."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        [sys.executable, "-m", "xorexp", *args],
        cwd=cwd,
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=open(cwd / "stdout.txt", "w"),
        stderr=open(cwd / "stderr.txt", "w"),
        start_new_session=True,
    )


def wait_for_runs(directory: Path, status: str, count: int, proc: subprocess.Popen, timeout: float = 120):
    """Until the store holds ``count`` job runs with ``status`` (polled through the job records)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, (directory / "stderr.txt").read_text()
        records = list(directory.rglob("xorexp_job.json"))
        if sum(f'"status": "{status}"' in r.read_text() for r in records) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"no {count} {status} jobs within {timeout} s")


# ---- a failing job is one FAILED run, wherever it fails --------------------------------------------


@pytest.mark.parametrize(
    "seeds, fault, failed",
    [
        # in workers (chunks of 16 jobs): training raises in the first chunk, so its 16 jobs fail;
        # in the second, one job's own step (its plots) raises
        ("range(0,40)", "train:3,plot:20", 17),
        ("range(0,3)", "train:1", 3),  # training raises in the launching process (a small sweep)
    ],
)
def test_failed_jobs_are_failed_runs_counted_by_the_parent(tmp_path, seeds, fault, failed):
    n = len(range(*map(int, seeds[6:-1].split(","))))
    proc = run_cli(tmp_path, "-m", f"seed={seeds}", "iterations=300", f"hydra.sweep.dir={tmp_path}/m",
                   env=fault_env(fault))
    assert proc.returncode == 1, proc.stderr
    lines = error_lines(proc.stderr)
    assert all(line.startswith("xorexp: ") for line in lines), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len([line for line in lines if " failed: " in line]) == min(failed, 10)
    assert lines[-1].startswith(f"xorexp: {failed} job(s) of the sweep failed")
    expected = {("job", "FAILED"): failed, ("sweep", "FAILED"): 1}
    if n > failed:
        expected[("job", "FINISHED")] = n - failed
    assert by_status(tmp_path) == Counter(expected)
    [parent] = [r for r in runs_of(tmp_path) if r.data.tags.get("xorexp.role") == "sweep"]
    assert parent.data.metrics["failed_jobs"] == failed and parent.data.metrics["runs"] == n
    failed_run = next(r for r in runs_of(tmp_path) if r.info.status == "FAILED" and r.data.params)
    assert failed_run.data.tags["xorexp.config_hash"] and failed_run.data.params["iterations"] == "300"


def test_a_dying_worker_fails_only_its_unfinished_jobs(tmp_path):
    proc = run_cli(tmp_path, "-m", "seed=range(0,64)", "iterations=300", f"hydra.sweep.dir={tmp_path}/m",
                   env=fault_env("die:40"))
    assert proc.returncode == 1, proc.stderr
    counts = by_status(tmp_path)
    assert counts[("job", "FINISHED")] + counts[("job", "FAILED")] == 64, counts
    assert counts[("job", "FAILED")] >= 1 and counts[("sweep", "FAILED")] == 1
    assert "its worker process died" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("fault, status", [("created", "FAILED"), ("logged", "FINISHED")])
def test_a_worker_dying_right_after_creating_or_ending_a_run_leaves_that_job_one_run(tmp_path, fault, status):
    """The worker dies between its job's run creation (or the run's end) and the job's record of it:
    the launching process ends that job with the very run (found by its sweep and job number), or
    records its end, and never makes it a second run."""
    proc = run_cli(tmp_path, "-m", "seed=range(0,40)", "iterations=300", f"hydra.sweep.dir={tmp_path}/m",
                   env=fault_env(f"{fault}:20"))
    assert proc.returncode == 1, proc.stderr  # the dead worker's jobs not yet started fail
    [parent] = [r for r in runs_of(tmp_path) if r.data.tags.get("xorexp.role") == "sweep"]
    children = children_of(tmp_path, parent.info.run_id)
    per_seed = Counter(r.data.params.get("seed") for r in children)
    assert len(children) == 40 and set(per_seed.values()) == {1}, per_seed
    assert not [r for r in children if "xorexp.orphan" in r.data.tags]
    [died] = [r for r in children if r.data.params["seed"] == "20"]
    assert died.info.status == status and died.data.tags["xorexp.job"] == "20"
    assert sorted(int(r.data.tags["xorexp.job"]) for r in children) == list(range(40))
    [record] = [json.loads(p.read_text()) for p in (tmp_path / "m").rglob("xorexp_job.json")
                if json.loads(p.read_text()).get("run_id") == died.info.run_id]
    assert record["status"] == status
    if status == "FINISHED":  # as the sweep's summary reads it
        assert record["final_loss"] == died.data.metrics["final_loss"]
    assert "its worker process died" in proc.stderr and "Traceback" not in proc.stderr


def test_a_single_run_that_raises_reports_its_own_error(tmp_path):
    proc = run_cli(tmp_path, "iterations=300", "seed=0", env=fault_env("plot:0"))
    assert proc.returncode == 1
    [line] = error_lines(proc.stderr)
    assert line.startswith("xorexp: the run (iterations=300 seed=0) failed: RuntimeError: injected plotting")
    assert "hydra.job.num" not in proc.stderr and "Traceback" not in proc.stderr
    assert by_status(tmp_path) == Counter({("job", "FAILED"): 1})


def test_an_error_at_the_sweeps_end_fails_the_command(tmp_path):
    proc = run_cli(tmp_path, "-m", "seed=0,1", "iterations=300", f"hydra.sweep.dir={tmp_path}/m",
                   env=fault_env("summary:0"))
    assert proc.returncode == 1
    [line] = error_lines(proc.stderr)
    assert line.startswith("xorexp: ") and "injected summary fault" in line
    assert by_status(tmp_path) == Counter({("job", "FINISHED"): 2, ("sweep", "FAILED"): 1})


# ---- checked before anything is created -----------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["hydra.launcher.backend=foo"], "hydra.launcher.backend='foo': must be 'local' or 'ray'"),
        (["hydra/sweeper=xorexp_optuna", "lr=interval(0.1,1)", "hydra.sweeper.sampler=foo"],
         "hydra.sweeper.sampler='foo'"),
        (["hydra/sweeper=xorexp_optuna", "lr=interval(0.1,1)", "hydra.sweeper.n_trials=0"],
         "hydra.sweeper.n_trials=0"),
        (["tracking.experiment=a,b"], "tracking.experiment cannot be swept"),
        (["seed=range(0,1000000000)"], "1,000,000,000 jobs"),
        (["hidden_units=2,1000000000"], "hidden_units must be an integer in [1, 1000000]"),
    ],
)
def test_bad_sweep_settings_stop_before_any_store_or_directory(tmp_path, args, message):
    proc = run_cli(tmp_path, "-m", "iterations=100", *args, f"hydra.sweep.dir={tmp_path}/m")
    assert proc.returncode == 2, proc.stderr
    [line] = error_lines(proc.stderr)
    assert line.startswith("xorexp: ") and message in line, line
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "m").exists()


# ---- two sweeps at once -------------------------------------------------------------------------------


def test_two_sweeps_started_together_keep_their_own_runs(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run_cli(tmp_path, "iterations=10")  # an existing store: this case is about sweep dirs, not creation
    env = {"PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "xorexp", "-m", f"lr={lr}", "seed=range(0,20)", "iterations=200"],
            cwd=tmp_path, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / name / "stderr.txt", "w"),
        )
        for lr, name in ((0.5, "a"), (1, "b"))
    ]
    statuses = [p.wait(timeout=300) for p in procs]
    assert statuses == [0, 0], [(tmp_path / n / "stderr.txt").read_text() for n in "ab"]
    parents = [r for r in runs_of(tmp_path) if r.data.tags.get("xorexp.role") == "sweep"]
    assert len(parents) == 2
    for parent in parents:
        children = children_of(tmp_path, parent.info.run_id)
        lr = parent.data.tags["xorexp.overrides"].split()[0].split("=")[1]
        assert len(children) == 20 and {c.data.params["lr"] for c in children} == {lr}
        assert parent.data.metrics["runs"] == 20
        client = MlflowClient(store_uri(tmp_path))
        for child in children:  # its job's own Hydra files, not the other sweep's
            local = client.download_artifacts(child.info.run_id, ".hydra/overrides.yaml", str(tmp_path))
            assert f"lr={lr}" in Path(local).read_text()
    sweep_dirs = {p.parent for p in (tmp_path / "multirun").rglob("xorexp_parent_run.json")}
    assert len(sweep_dirs) == 2


# ---- interrupts --------------------------------------------------------------------------------------


def test_ctrl_c_stops_the_sweep_and_a_resume_finishes_each_config_once(tmp_path):
    args = ["-m", "seed=range(0,200)", "iterations=3000", f"hydra.sweep.dir={tmp_path}/m"]
    proc = spawn(tmp_path, *args)
    wait_for_runs(tmp_path, "FINISHED", 10, proc)
    workers = _children_pids(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: the whole process group
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)  # impatient: twice
    assert proc.wait(timeout=20) == 130  # stopped in seconds; a sweep that went on would end 0
    lines = error_lines((tmp_path / "stderr.txt").read_text())
    assert len(lines) == 1 and lines[0].startswith("xorexp: interrupted (Ctrl-C): "), lines
    assert "tracking.skip_finished=true" in lines[0]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(process_alive(p) for p in workers):
        time.sleep(0.2)
    assert workers and not [p for p in workers if process_alive(p)]
    counts = by_status(tmp_path)
    assert counts[("sweep", "KILLED")] == 1 and not [k for k in counts if k[1] == "RUNNING"], counts

    resumed = run_cli(tmp_path, *args[:-1], f"hydra.sweep.dir={tmp_path}/m2", "tracking.skip_finished=true")
    assert resumed.returncode == 0, resumed.stderr
    finished = Counter(r.data.tags["xorexp.config_hash"] for r in runs_of(tmp_path)
                       if r.info.status == "FINISHED" and "xorexp.config_hash" in r.data.tags)
    assert len(finished) == 200 and set(finished.values()) == {1}


def _children_pids(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_signal_to_the_launching_process_only_leaves_no_worker(tmp_path, sig):
    proc = spawn(tmp_path, "-m", "seed=range(0,200)", "iterations=3000", f"hydra.sweep.dir={tmp_path}/m")
    wait_for_runs(tmp_path, "FINISHED", 5, proc)
    workers = _children_pids(proc.pid)
    assert workers
    os.kill(proc.pid, sig)  # the launching process only, not its group
    status = proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(process_alive(p) for p in workers):
        time.sleep(0.2)
    assert not [p for p in workers if process_alive(p)]
    if sig == signal.SIGTERM:
        assert status == 143
        lines = error_lines((tmp_path / "stderr.txt").read_text())
        assert len(lines) == 1 and lines[0].startswith("xorexp: interrupted (SIGTERM): ")
        counts = by_status(tmp_path)
        assert counts[("sweep", "KILLED")] == 1 and not [k for k in counts if k[1] == "RUNNING"], counts
    else:  # the next command of any kind cleans what kill -9 left RUNNING
        assert run_cli(tmp_path, "iterations=10").returncode == 0
        assert not [k for k in by_status(tmp_path) if k[1] == "RUNNING"]


def test_an_interrupt_a_finalizer_drops_comes_again_and_stops_the_sweep(tmp_path):
    """A signal whose handler runs inside a finalizer (a weakref callback, a ``__del__``) raises
    there, and Python drops that exception with a traceback on stderr: the sweep went on and ended
    0 (as CI saw, SIGTERM and Ctrl-C alike). The dropped interrupt comes again and stops the sweep
    as any SIGTERM does: 143, one line, the sweep KILLED, nothing RUNNING."""
    args = ["-m", "seed=range(0,200)", "iterations=3000", f"hydra.sweep.dir={tmp_path}/m"]
    proc = spawn(tmp_path, *args, env=fault_env("finalizer:0"))
    assert proc.wait(timeout=120) == 143, (tmp_path / "stderr.txt").read_text()
    stderr = (tmp_path / "stderr.txt").read_text()
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("xorexp: interrupted (SIGTERM): "), lines
    assert "Exception ignored" not in stderr
    counts = by_status(tmp_path)
    assert counts[("sweep", "KILLED")] == 1 and not [k for k in counts if k[1] == "RUNNING"], counts
    assert counts[("job", "FINISHED")] < 200, counts


def test_ctrl_c_on_a_single_run_marks_it_killed(tmp_path):
    proc = spawn(tmp_path, "iterations=5000000")
    wait_for_runs(tmp_path, "STARTING", 1, proc)  # its record: the store exists (opening it before: a race)
    deadline = time.monotonic() + 60
    while by_status(tmp_path) != Counter({("job", "RUNNING"): 1}):
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr.txt").read_text()
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    [line] = error_lines((tmp_path / "stderr.txt").read_text())
    assert line.startswith("xorexp: interrupted (Ctrl-C): run ") and line.endswith(" marked KILLED")
    assert by_status(tmp_path) == Counter({("job", "KILLED"): 1})


# ---- the store fails mid-sweep, or is read while a sweep writes -------------------------------------


def test_a_store_that_turns_read_only_mid_sweep_stops_it_in_one_line(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root for a read-only bind mount")
    args = ["-m", "seed=range(0,60)", "iterations=3000"]
    assert run_cli(tmp_path, "iterations=10").returncode == 0  # the store and its artifact folder
    artifacts = next((tmp_path / "mlartifacts").iterdir())
    proc = spawn(tmp_path, *args, f"hydra.sweep.dir={tmp_path}/m")
    wait_for_runs(tmp_path, "FINISHED", 3, proc)
    subprocess.run(["mount", "--bind", artifacts, artifacts], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", artifacts, artifacts], check=True)
        status = proc.wait(timeout=60)  # stopped within seconds, not at the sweep's end
    finally:
        subprocess.run(["umount", artifacts], check=True)
    assert status == 1, status
    lines = error_lines((tmp_path / "stderr.txt").read_text())
    assert len(lines) == 1 and "read-only" in lines[0].lower() and str(tmp_path) in lines[0], lines
    counts = by_status(tmp_path)
    assert counts[("sweep", "FAILED")] == 1 and not [k for k in counts if k[1] == "RUNNING"], counts
    resumed = run_cli(tmp_path, *args, f"hydra.sweep.dir={tmp_path}/m2", "tracking.skip_finished=true")
    assert resumed.returncode == 0, resumed.stderr
    finished = Counter(r.data.tags["xorexp.config_hash"] for r in runs_of(tmp_path)
                       if r.info.status == "FINISHED" and r.data.params.get("iterations") == "3000"
                       and "xorexp.config_hash" in r.data.tags)
    assert len(finished) == 60 and set(finished.values()) == {1}


def _search(uri: str) -> int:
    """One REST call of the UI's runs page; its HTTP status."""
    body = json.dumps({"experiment_ids": ["1"], "max_results": 100}).encode()
    request = urllib.request.Request(f"{uri}/ajax-api/2.0/mlflow/runs/search", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            json.loads(response.read())
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return -1


def test_a_killed_tracking_server_stops_the_sweep_and_the_ui_reads_without_errors(tmp_path):
    server = start_server(tmp_path / "server")
    try:
        proc = spawn(tmp_path, "-m", "seed=range(0,120)", "iterations=2000", f"tracking.uri={server.uri}",
                     f"hydra.sweep.dir={tmp_path}/m")
        statuses = []
        while True:  # the UI's REST calls while the sweep writes
            statuses.append(_search(server.uri))
            if sum('"FINISHED"' in p.read_text() for p in tmp_path.rglob("xorexp_job.json")) >= 20:
                break
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
            time.sleep(0.2)
        assert len(statuses) >= 5 and set(statuses) == {200}, Counter(statuses)
        os.killpg(server.pgid, signal.SIGKILL)
        status = proc.wait(timeout=60)  # not after MLflow's ~100 s of retries
    finally:
        stop_server(server)
    assert status == 1, status
    lines = error_lines((tmp_path / "stderr.txt").read_text())
    assert len(lines) == 1 and server.uri in lines[0] and "Traceback" not in lines[0], lines


def test_a_sweep_into_a_deleted_experiment_stops_in_one_line(tmp_path):
    assert run_cli(tmp_path, "iterations=10").returncode == 0
    client = MlflowClient(store_uri(tmp_path))
    client.delete_experiment(client.get_experiment_by_name("xorexp").experiment_id)
    proc = run_cli(tmp_path, "-m", "seed=0,1", "iterations=100", f"hydra.sweep.dir={tmp_path}/m")
    assert proc.returncode == 2
    [line] = error_lines(proc.stderr)
    assert line.startswith("xorexp: experiment 'xorexp' of ") and "was deleted in MLflow: restore it" in line
    runs = client.search_runs([client.get_experiment_by_name("xorexp").experiment_id], run_view_type=3)
    assert len(runs) == 1  # the first command's run only: no parent, no job


def test_a_run_no_job_owns_ends_failed_and_out_of_the_summary(tmp_path):
    """A job's run created twice (the first create's answer lost, as after a server's timeout and
    MLflow's retry): the sweep ends that extra run FAILED, tagged, says so in one warning, and its
    summary counts the 3 jobs' own runs only."""
    proc = run_cli(tmp_path, "-m", "seed=0,1,2", "iterations=500", env=fault_env("twice:1"))
    assert proc.returncode == 0, proc.stderr
    runs = runs_of(tmp_path)
    [parent] = [r for r in runs if r.data.tags.get("xorexp.role") == "sweep"]
    children = children_of(tmp_path, parent.info.run_id)
    assert len(children) == 4
    orphans = [r for r in children if "xorexp.orphan" in r.data.tags]
    assert [r.info.status for r in orphans] == ["FAILED"]
    owned = [r for r in children if "xorexp.orphan" not in r.data.tags]
    assert sorted(r.data.params["seed"] for r in owned) == ["0", "1", "2"]
    assert {r.info.status for r in owned} == {"FINISHED"}
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["runs"] == 3 and parent.data.metrics["failed_jobs"] == 0
    warnings = [line for line in proc.stdout.splitlines() if "no job owns" in line]  # the sweep's log lines
    assert len(warnings) == 1 and orphans[0].info.run_id in warnings[0], proc.stdout
