"""Everything against a real ``mlflow server`` (sqlite backend, artifacts served by the server).

The server runs on 127.0.0.1 only, once per module, in its own process group so that the gunicorn or
uvicorn workers it spawns die with it at teardown. Sweeps and runs are the real CLI in subprocesses.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from tests.conftest import free_port, run_cli, runs_of, store_uri
from tests.mlflow_server import Proxy, start_server, stop_server
from tests.test_faults import error_lines, spawn
from xorexp import provenance, run_logging
from xorexp.params import config_hash, spec_from_params
from xorexp.tracking import writing
from xorexp.train import RunSpec, train

# one xdist worker: shares the module's mlflow server and sweeps
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_tracking_server")]

SWEEP = ("-m", "seed=0,1,2", "lr=0.5,3", "iterations=500")
PARAM_KEYS = {"hidden_units", "lr", "iterations", "seed", "trace_every", "stop_loss"}
RUN_ARTIFACTS = {
    "predictions.json", "config.yaml", ".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml",
    "plots/learning_curve.png", "plots/decision_boundary.png",
}
TERMINAL = ("FINISHED", "FAILED", "KILLED")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    started = start_server(tmp_path_factory.mktemp("server"))
    yield started
    stop_server(started)


@pytest.fixture(scope="module")
def client(server):
    """A client of the server. MLflow resolves a run's logged model (``runs:/<id>/model``, listed
    under the artifact dir ``model``) with the *global* tracking URI, not the client's: without
    ``set_tracking_uri`` it would look in (and create) ``./mlflow.db`` and fail."""
    previous = mlflow.get_tracking_uri() if "MLFLOW_TRACKING_URI" in os.environ else None
    mlflow.set_tracking_uri(server.uri)
    yield MlflowClient(server.uri)
    mlflow.set_tracking_uri(previous)


@dataclass
class Sweep:
    proc: subprocess.CompletedProcess
    launch_dir: Path
    seconds: float


@pytest.fixture(scope="module")
def server_sweep(server, tmp_path_factory) -> Sweep:
    """The 6-run sweep against the server (launched from a directory that must stay free of stores)."""
    launch_dir = tmp_path_factory.mktemp("server-sweep")
    start = time.perf_counter()
    proc = run_cli(launch_dir, *SWEEP, f"tracking.uri={server.uri}", f"hydra.sweep.dir={launch_dir}/multirun")
    return Sweep(proc, launch_dir, time.perf_counter() - start)


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory) -> Sweep:
    """The same sweep into the embedded sqlite store."""
    launch_dir = tmp_path_factory.mktemp("local-sweep")
    start = time.perf_counter()
    proc = run_cli(launch_dir, *SWEEP, f"hydra.sweep.dir={launch_dir}/multirun")
    return Sweep(proc, launch_dir, time.perf_counter() - start)


def experiment_runs(client: MlflowClient, experiment: str = "xorexp") -> list:
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id], max_results=5000)


def sweep_runs(client: MlflowClient, launch_dir: Path) -> tuple:
    """(parent, children) of the sweep whose parent record is in ``launch_dir/multirun``."""
    record = json.loads((launch_dir / "multirun" / "xorexp_parent_run.json").read_text())
    parent = client.get_run(record["run_id"])
    parent_id = parent.info.run_id
    children = [r for r in experiment_runs(client) if r.data.tags.get("mlflow.parentRunId") == parent_id]
    return parent, children


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        out |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def download(client: MlflowClient, run_id: str, path: str, into: Path) -> bytes:
    into.mkdir(parents=True, exist_ok=True)
    return Path(client.download_artifacts(run_id, path, str(into))).read_bytes()


def predictions_by_name(client: MlflowClient, children: list, into: Path) -> dict[str, bytes]:
    return {c.info.run_name: download(client, c.info.run_id, "predictions.json", into / c.info.run_id)
            for c in children}


def test_sweep_against_the_server_follows_the_tracking_contract(server, client, server_sweep, tmp_path):
    proc = server_sweep.proc
    print(f"\n6-run sweep against {server.uri}: {server_sweep.seconds:.1f} s")
    assert proc.returncode == 0, proc.stderr
    parent, children = sweep_runs(client, server_sweep.launch_dir)
    assert parent.info.status == "FINISHED" and parent.data.tags["xorexp.role"] == "sweep"
    assert len(children) == 6
    names = {f"h2-lr{lr}-s{seed}" for lr in ("0.5", "3") for seed in (0, 1, 2)}
    assert {c.info.run_name for c in children} == names

    for child in children:
        spec = spec_from_params(child.data.params)
        [expected] = train([spec])
        assert child.info.status == "FINISHED"
        assert set(child.data.params) == PARAM_KEYS
        assert child.data.params["iterations"] == "500" and child.data.params["stop_loss"] == "null"
        tags = child.data.tags
        assert tags["xorexp.outcome"] == expected.outcome
        assert tags["xorexp.config_hash"] == config_hash(spec)
        assert f"seed={spec.seed}" in tags["xorexp.overrides"] and "lr=" in tags["xorexp.overrides"]
        if provenance.git_commit():
            assert tags["mlflow.source.git.commit"] == provenance.git_commit()
        metrics = child.data.metrics
        assert metrics["final_loss"] == expected.final_loss and metrics["accuracy"] == expected.accuracy
        assert metrics["steps"] == expected.steps
        assert ("solved_at" in metrics) == (expected.outcome == "solved")
        history = sorted(client.get_metric_history(child.info.run_id, "loss"), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(0, 500, 100))
        assert np.array([m.value for m in history]).tobytes() == expected.loss_trace.tobytes()

        # artifacts: stored by the server, downloadable through it
        assert child.info.artifact_uri.startswith("mlflow-artifacts:/")
        assert artifact_paths(client, child.info.run_id) >= RUN_ARTIFACTS
        into = tmp_path / child.info.run_id
        doc = json.loads(download(client, child.info.run_id, "predictions.json", into))
        assert np.array(doc["predictions"]).tobytes() == expected.predictions.tobytes()
        for png in ("plots/learning_curve.png", "plots/decision_boundary.png"):
            assert download(client, child.info.run_id, png, into)[:8] == PNG_MAGIC
        overrides = download(client, child.info.run_id, ".hydra/overrides.yaml", into).decode()
        assert f"seed={spec.seed}" in overrides

    summary_csv = download(client, parent.info.run_id, "summary.csv", tmp_path).decode()
    rows = list(csv.DictReader(summary_csv.splitlines()))
    assert sorted(float(row["lr"]) for row in rows) == [0.5, 3.0]
    assert all(int(row["n_seeds"]) == 3 for row in rows)
    assert artifact_paths(client, parent.info.run_id, "plots") == {
        "plots/success_rate_vs_lr.png", "plots/final_loss_vs_lr.png", "plots/loss_curves.png"}

    # the artifacts are the server's: under its --artifacts-destination, nothing in the launch directory
    assert list((server.root / "artifacts").rglob("predictions.json"))
    assert not (server_sweep.launch_dir / "mlflow.db").exists()
    assert not (server_sweep.launch_dir / "mlartifacts").exists()


def test_server_sweep_predictions_equal_a_local_sweep_bit_for_bit(client, server_sweep, local_sweep,
                                                                   tmp_path):
    assert server_sweep.proc.returncode == 0, server_sweep.proc.stderr
    assert local_sweep.proc.returncode == 0, local_sweep.proc.stderr
    _, remote = sweep_runs(client, server_sweep.launch_dir)
    local_client = MlflowClient(store_uri(local_sweep.launch_dir))
    _, local = sweep_runs(local_client, local_sweep.launch_dir)
    remote_docs = predictions_by_name(client, remote, tmp_path / "remote")
    local_docs = predictions_by_name(local_client, local, tmp_path / "local")
    assert len(remote_docs) == 6 and remote_docs == local_docs  # the very same bytes
    remote_hashes = {c.info.run_name: c.data.tags["xorexp.config_hash"] for c in remote}
    assert remote_hashes == {c.info.run_name: c.data.tags["xorexp.config_hash"] for c in local}


def test_single_run_against_the_server(server, client, tmp_path):
    proc = run_cli(tmp_path, "iterations=2000", "seed=3", "lr=0.5", "tracking.experiment=single",
                   f"tracking.uri={server.uri}", f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 0, proc.stderr
    [run] = experiment_runs(client, "single")
    [expected] = train([RunSpec(iterations=2000, seed=3, lr=0.5)])
    assert run.info.status == "FINISHED" and run.info.run_name == "h2-lr0.5-s3"
    assert run.data.params == {"hidden_units": "2", "lr": "0.5", "iterations": "2000", "seed": "3",
                               "trace_every": "100", "stop_loss": "null"}
    assert run.data.tags["xorexp.outcome"] == expected.outcome
    assert "mlflow.parentRunId" not in run.data.tags
    assert run.data.metrics["final_loss"] == expected.final_loss
    assert artifact_paths(client, run.info.run_id) >= RUN_ARTIFACTS
    doc = json.loads(download(client, run.info.run_id, "predictions.json", tmp_path / "dl"))
    assert np.array(doc["predictions"]).tobytes() == expected.predictions.tobytes()
    assert not (tmp_path / "mlflow.db").exists()


def test_resume_against_the_server_retrains_nothing(server, client, server_sweep):
    assert server_sweep.proc.returncode == 0, server_sweep.proc.stderr
    launch_dir = server_sweep.launch_dir
    before = {r.info.run_id for r in experiment_runs(client)}
    proc = run_cli(launch_dir, *SWEEP, f"tracking.uri={server.uri}", "tracking.skip_finished=true",
                   f"hydra.sweep.dir={launch_dir}/resumed")
    assert proc.returncode == 0, proc.stderr
    new = [r for r in experiment_runs(client) if r.info.run_id not in before]
    [parent] = new  # only the new sweep's parent: no training run
    assert parent.data.tags["xorexp.reused_runs"] == "6" and parent.info.status == "FINISHED"


def test_report_reads_a_sweep_from_the_server(server, server_sweep, tmp_path):
    assert server_sweep.proc.returncode == 0, server_sweep.proc.stderr
    proc = run_cli(tmp_path, "--tracking-uri", server.uri, "--run", sweep_parent_id(server_sweep),
                   module="xorexp.report")
    assert proc.returncode == 0, proc.stderr
    table = [line for line in proc.stdout.splitlines()[1:] if line.strip()]
    assert len(table) == 4  # header, rule, two groups
    for line in table:
        assert line in server_sweep.proc.stdout
    assert not (tmp_path / "mlflow.db").exists()


def sweep_parent_id(sweep: Sweep) -> str:
    return json.loads((sweep.launch_dir / "multirun" / "xorexp_parent_run.json").read_text())["run_id"]


def assert_one_line_refusal(proc: subprocess.CompletedProcess, uri: str, prefix: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(prefix) and uri in lines[0] and "Traceback" not in proc.stderr


def test_a_killed_server_stops_a_sweep_in_one_line_before_training(tmp_path):
    dead = start_server(tmp_path / "dead-server")
    stop_server(dead)
    start = time.perf_counter()
    proc = run_cli(tmp_path, *SWEEP, f"tracking.uri={dead.uri}", f"hydra.sweep.dir={tmp_path}/multirun",
                   timeout=60)  # refused in seconds, not after MLflow's ~100 s of retries
    seconds = time.perf_counter() - start
    print(f"\nsweep against a killed server refused in {seconds:.2f} s (exit {proc.returncode})")
    assert_one_line_refusal(proc, dead.uri, "xorexp: tracking server")
    assert not list(tmp_path.rglob("xorexp_job.json")) and not list(tmp_path.rglob("xorexp_parent_run.json"))
    assert not (tmp_path / "mlflow.db").exists()


def test_a_server_that_accepts_but_never_answers_is_refused_in_one_line(tmp_path):
    with socket.socket() as hung:  # listens (the kernel completes handshakes) but nobody ever responds
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        uri = f"http://127.0.0.1:{hung.getsockname()[1]}"
        start = time.perf_counter()
        proc = run_cli(tmp_path, "iterations=500", f"tracking.uri={uri}", f"hydra.run.dir={tmp_path}/run",
                       timeout=60)  # refused in seconds, not after MLflow's retries
        seconds = time.perf_counter() - start
    print(f"\nsingle run against a hung server refused in {seconds:.2f} s")
    assert_one_line_refusal(proc, uri, "xorexp: tracking server")
    assert not list(tmp_path.rglob("xorexp_job.json"))


def test_report_against_a_dead_server_fails_in_one_line(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    proc = run_cli(tmp_path, "--tracking-uri", uri, module="xorexp.report", timeout=120)
    assert_one_line_refusal(proc, uri, "xorexp: tracking server")


def test_sweep_output_against_the_server_is_as_quiet_as_locally(server_sweep, local_sweep):
    assert server_sweep.proc.returncode == 0 and local_sweep.proc.returncode == 0
    assert "View run" not in server_sweep.proc.stdout
    def lines(proc):  # less the lines on how to open the UI: a local store needs a command, a server not
        ui = ("MLflow UI", "then open")
        return [line for line in proc.stdout.splitlines() if not line.startswith(ui)]

    assert len(lines(server_sweep.proc)) == len(lines(local_sweep.proc))


def test_no_run_is_left_running_on_the_server(client, server_sweep):
    assert server_sweep.proc.returncode == 0, server_sweep.proc.stderr
    assert not [r.info.run_name for r in experiment_runs(client) if r.info.status == "RUNNING"]


def test_local_store_sanity(local_sweep):  # the reference of the bit-for-bit comparison is itself complete
    assert local_sweep.proc.returncode == 0, local_sweep.proc.stderr
    assert len([r for r in runs_of(local_sweep.launch_dir) if "mlflow.parentRunId" in r.data.tags]) == 6


def refuse_decision_boundary(method: str, path: str) -> int | None:
    """The proxy refuses one of each run's uploads: HTTP 403, which MLflow does not retry."""
    return 403 if method == "PUT" and path.endswith("/plots/decision_boundary.png") else None


def cli_through_proxy(server, tmp_path, *args, **proxy_options):
    """The CLI with ``args`` logging to the server through a ``Proxy`` (closed after); (process, proxy)."""
    proxy = Proxy(server.uri, **proxy_options)
    try:
        proc = run_cli(tmp_path, *args, f"tracking.uri={proxy.uri}")
    finally:
        proxy.close()
    return proc, proxy


def assert_jobs_refused(proc, failed: int) -> None:
    """The sweep exited 1 after ``failed`` jobs failed on a refused upload (403), each in one line."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    failed_lines = [line for line in proc.stderr.splitlines() if " failed: " in line and "403" in line]
    assert len(failed_lines) == failed, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"xorexp: {failed} job(s) of the sweep failed")


def test_a_failed_upload_ends_the_run_failed_in_one_line(server, client, tmp_path):
    proc, _ = cli_through_proxy(server, tmp_path, "iterations=500", "seed=4",
                                "tracking.experiment=refused-upload", f"hydra.run.dir={tmp_path}/run",
                                refuse=refuse_decision_boundary)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("xorexp: ") and "failed" in lines[0], proc.stderr
    assert "403" in lines[0] and "Traceback" not in proc.stderr
    [run] = experiment_runs(client, "refused-upload")
    assert run.info.status == "FAILED"
    assert run.data.params["seed"] == "4"
    stored = artifact_paths(client, run.info.run_id)
    assert "plots/decision_boundary.png" not in stored
    # uploads started with it went on (files not started yet may be dropped); the failure is recorded
    assert {".hydra/config.yaml", "config.yaml", "error/traceback.txt"} <= stored
    text = download(client, run.info.run_id, "error/traceback.txt", tmp_path / "dl").decode()
    assert "403" in text and "decision_boundary.png" in text


def test_a_failed_upload_in_a_sweep_fails_its_jobs_not_the_sweep(server, client, tmp_path):
    proc, _ = cli_through_proxy(server, tmp_path, "-m", "seed=0,1", "iterations=500",
                                "tracking.experiment=refused-sweep", f"hydra.sweep.dir={tmp_path}/multirun",
                                refuse=refuse_decision_boundary)
    assert_jobs_refused(proc, failed=2)
    runs = experiment_runs(client, "refused-sweep")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.info.status for r in children) == ["FAILED", "FAILED"]
    [parent] = [r for r in runs if r.data.tags.get("xorexp.role") == "sweep"]
    assert parent.info.status == "FAILED"


# ---- runs in flight together: a far-away server ----------------------------------------------------


class RefuseSome:
    """Refuses (403) the decision_boundary.png uploads whose rank among them is in ``ranks``."""

    def __init__(self, ranks: set[int]) -> None:
        self.ranks = ranks
        self.seen = 0
        self.lock = threading.Lock()

    def __call__(self, method: str, path: str) -> int | None:
        if not refuse_decision_boundary(method, path):
            return None
        with self.lock:
            self.seen += 1
            return 403 if self.seen in self.ranks else None


def test_runs_on_workers_overlap_and_refused_uploads_fail_only_their_runs(server, client, tmp_path):
    """32 runs on 2 workers through a proxy adding 50 ms a request, 3 of their uploads refused: the
    requests of more runs than workers are in flight at once; exactly those 3 runs end FAILED (with
    their traceback), the others FINISHED and complete, none RUNNING; each job's record agrees with
    its run; the sweep counts 3 failed jobs and exits 1."""
    refuse = RefuseSome({2, 9, 20})
    proc, proxy = cli_through_proxy(server, tmp_path, "-m", "seed=range(0,32)", "iterations=300",
                                    "hydra.launcher.n_jobs=2", "tracking.experiment=overlap-refused",
                                    f"hydra.sweep.dir={tmp_path}/multirun", latency=0.05, refuse=refuse)
    assert_jobs_refused(proc, failed=3)
    assert proxy.peak_runs > 2, proxy.peak_runs  # not one run per worker at a time

    runs = experiment_runs(client, "overlap-refused")
    [parent] = [r for r in runs if r.data.tags.get("xorexp.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 32 and len(runs) == 33
    by_status = {status: [r for r in children if r.info.status == status] for status in TERMINAL}
    assert len(by_status["FAILED"]) == 3 and len(by_status["FINISHED"]) == 29 and not by_status["KILLED"]
    assert parent.info.status == "FAILED"
    assert parent.data.metrics["failed_jobs"] == 3 and parent.data.metrics["runs"] == 32
    for run in by_status["FAILED"]:
        assert run.data.params["iterations"] == "300"
        stored = artifact_paths(client, run.info.run_id)
        assert "error/traceback.txt" in stored and "plots/decision_boundary.png" not in stored
        text = download(client, run.info.run_id, "error/traceback.txt", tmp_path / run.info.run_id).decode()
        assert "403" in text
    for run in by_status["FINISHED"]:
        assert set(run.data.params) == PARAM_KEYS and "final_loss" in run.data.metrics
        assert artifact_paths(client, run.info.run_id) >= RUN_ARTIFACTS
    records = [json.loads(p.read_text()) for p in (tmp_path / "multirun").rglob("xorexp_job.json")]
    assert len(records) == 32
    status_of = {r.info.run_id: r.info.status for r in children}
    assert {record["run_id"]: record["status"] for record in records} == status_of
    # each failed job's log file holds its traceback, written when its run failed in the background
    logs = [p.read_text() for p in (tmp_path / "multirun").rglob("app.log")]
    assert sum("job failed:" in text and "403" in text for text in logs) == 3
    assert sum("final_loss" in text for text in logs) == 29


@pytest.mark.parametrize("runs", [12, 40], ids=["in the launching process", "on workers"])
def test_ctrl_c_with_runs_in_flight_leaves_none_running(server, client, tmp_path, runs):
    """Ctrl-C while runs' requests are in flight (a proxy adding 200 ms a request): the sweep stops
    with 130 and one line, its parent KILLED, no run of it RUNNING, and every job record that says
    FINISHED is a FINISHED run."""
    experiment = f"interrupted-{runs}"
    proxy = Proxy(server.uri, latency=0.2)
    try:
        proc = spawn(tmp_path, "-m", f"seed=range(0,{runs})", "iterations=300", "hydra.launcher.n_jobs=2",
                     f"tracking.experiment={experiment}", f"tracking.uri={proxy.uri}",
                     f"hydra.sweep.dir={tmp_path}/multirun")
        deadline = time.monotonic() + 180
        while sum('"FINISHED"' in p.read_text() for p in tmp_path.rglob("xorexp_job.json")) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr.txt").read_text()
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        status = proc.wait(timeout=60)
    finally:
        proxy.close()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert status == 130, stderr
    lines = error_lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("xorexp: interrupted (Ctrl-C): "), lines
    all_runs = experiment_runs(client, experiment)
    [parent] = [r for r in all_runs if r.data.tags.get("xorexp.role") == "sweep"]
    assert parent.info.status == "KILLED"
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert children and not [r.info.run_name for r in children if r.info.status == "RUNNING"]
    assert len(children) < runs  # stopped mid-sweep
    status_of = {r.info.run_id: r.info.status for r in children}
    for path in tmp_path.rglob("xorexp_job.json"):
        record = json.loads(path.read_text())
        if record["status"] == "FINISHED":
            assert status_of[record["run_id"]] == "FINISHED"


def test_a_resumed_run_whose_values_landed_keeps_one_loss_history(server, client):
    """A Ray task's worker died after its run's values reached the server; the retried task logs the
    run again (``resumed``): the values are not sent twice, the rest is, the run ends FINISHED."""
    from xorexp.tracking.store import open_store

    store = open_store(server.uri, "resumed")
    [result] = train([RunSpec(iterations=500, seed=3)])
    run_id = run_logging.start_run(store, result.spec)
    store.client.log_batch(run_id, metrics=writing.run_metrics(result, 1))  # the first attempt's values
    run_logging.log_result(store, run_id, result, model=False, resumed=True)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["xorexp.outcome"] == result.outcome
    history = client.get_metric_history(run_id, "loss")
    assert [m.step for m in history] == list(result.trace_steps)  # once each, not twice
    assert run.data.metrics["final_loss"] == result.final_loss
    assert {"predictions.json", "model/params.npz"} <= artifact_paths(client, run_id)
