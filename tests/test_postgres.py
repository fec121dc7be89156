"""Everything against a real PostgreSQL (Debian's binaries, started once for the module in a temp dir,
as the unprivileged ``postgres`` user when run as root, on 127.0.0.1 at a free port, stopped by pid).

Sweeps, resume and report run the real CLI in subprocesses with ``tracking.uri=postgresql://...``, directly
and through ``mlflow server --workers 2`` on the same PostgreSQL; assertions read the database back.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from tests.conftest import process_alive, run_cli
from tests.mlflow_server import group_members, start_server, stop_server
from tests.postgres_server import pg_bin, start_postgres
from xorexp.params import config_hash, param_text
from xorexp.tracking import writing
from xorexp.train import RunSpec, train

# one xdist worker: shares the module's PostgreSQL server
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_postgres")]

ITERATIONS = 300
PARAM_KEYS = {"hidden_units", "lr", "iterations", "seed", "trace_every", "stop_loss"}


@pytest.fixture(scope="module")
def postgres():
    if pg_bin() is None:
        pytest.fail("PostgreSQL server binaries missing: apt-get install -y postgresql (.ci/run does)")
    server = start_postgres(fsync=False)
    try:
        yield server
    finally:
        pid = server.postmaster_pid()
        server.stop()
        assert pid is not None and not process_alive(pid), "PostgreSQL's postmaster outlived stop()"


def expected_result(seed: int, lr: float = 0.1):
    spec = RunSpec(hidden_units=2, lr=lr, iterations=ITERATIONS, seed=seed, trace_every=100)
    return spec, train([spec])[0]


def sweep_runs(client: MlflowClient, experiment: str = "xorexp"):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("xorexp.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("xorexp.role") != "sweep"]
    return exp, parents, children


def check_child(client: MlflowClient, child, lr: float = 0.1) -> None:
    """A child run holds the tracking contract, with the very numbers ``train`` gives."""
    spec, expected = expected_result(int(child.data.params["seed"]), lr)
    assert child.info.status == "FINISHED"
    assert set(child.data.params) == PARAM_KEYS
    assert child.data.params["iterations"] == str(ITERATIONS) and child.data.params["stop_loss"] == "null"
    assert child.data.params["lr"] == param_text(lr)
    assert child.data.tags["xorexp.config_hash"] == config_hash(spec)
    assert child.data.tags["xorexp.outcome"] == expected.outcome
    assert child.data.metrics["final_loss"] == expected.final_loss
    history = sorted(client.get_metric_history(child.info.run_id, "loss"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(0, ITERATIONS, 100))
    assert np.array([m.value for m in history]).tobytes() == expected.loss_trace.tobytes()


def parent_summary(client: MlflowClient, run_id: str, into: Path) -> list[dict]:
    local = client.download_artifacts(run_id, "summary.csv", str(into))
    return list(csv.DictReader(io.StringIO(Path(local).read_text())))


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    return int(proc.stdout)


def test_sweep_resume_and_report_directly_on_postgres(postgres, tmp_path):
    uri = postgres.create_database("direct")
    base = ["-m", f"iterations={ITERATIONS}", f"tracking.uri={uri}"]
    first = run_cli(tmp_path, *base, "seed=0,1,2", f"hydra.sweep.dir={tmp_path}/first")
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""  # no migration log, no warning

    client = MlflowClient(uri)
    exp, parents, children = sweep_runs(client)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(children) == 3
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    for child in children:
        check_child(client, child)
    # no server: artifacts in mlartifacts/<experiment> of the launch dir, like the sqlite store's
    assert exp.artifact_location == (tmp_path / "mlartifacts" / "xorexp").as_uri()
    for child in children:
        doc = json.loads((tmp_path / "mlartifacts" / "xorexp" / child.info.run_id / "artifacts"
                          / "predictions.json").read_text())
        assert doc["outcome"] == child.data.tags["xorexp.outcome"]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()

    # a run left RUNNING by a writer that is gone (seed 3's config): the resume marks it KILLED
    spec3, _ = expected_result(3)
    stale = client.create_run(exp.experiment_id, run_name="crashed", tags={
        "xorexp.config_hash": config_hash(spec3), **writing.process_tags(),
        "xorexp.pid": str(dead_pid())}).info.run_id

    resumed = run_cli(tmp_path, *base, "seed=0,1,2,3", "tracking.skip_finished=true",
                      f"hydra.sweep.dir={tmp_path}/second")
    assert resumed.returncode == 0, resumed.stderr
    _, parents, children = sweep_runs(client)
    newest = max(parents, key=lambda r: r.info.start_time)
    assert newest.data.tags["xorexp.reused_runs"] == "3"
    assert client.get_run(stale).info.status == "KILLED"
    finished = Counter(c.data.tags["xorexp.config_hash"] for c in children if c.info.status == "FINISHED")
    assert len(finished) == 4 and set(finished.values()) == {1}  # seed 3 trained once, the rest reused
    new = [c for c in children if c.data.tags.get("mlflow.parentRunId") == newest.info.run_id]
    assert [c.data.params["seed"] for c in new] == ["3"]
    check_child(client, new[0])
    rows = parent_summary(client, newest.info.run_id, tmp_path / "dl")
    assert len(rows) == 1 and rows[0]["n_seeds"] == "4"

    listed = run_cli(tmp_path, "--tracking-uri", uri, "--list", module="xorexp.report")
    assert listed.returncode == 0, listed.stderr
    assert newest.info.run_id in listed.stdout and parents[0].info.run_id in listed.stdout
    report = run_cli(tmp_path, "--tracking-uri", uri, module="xorexp.report")
    assert report.returncode == 0, report.stderr
    assert newest.info.run_id in report.stdout
    row = [line.split() for line in report.stdout.splitlines() if line.split()[:3] == ["2", "0.1", "300"]]
    assert row and row[0][3] == "4"  # 4 seeds in the latest sweep's summary


def test_the_sql_writer_writes_mlflows_rows_on_postgres(postgres, tmp_path, monkeypatch):
    """On PostgreSQL too, a run written by xorexp's SQL writer has exactly the rows MLflow's client
    calls write (tests/test_sql_writer.py does the same on sqlite)."""
    from tests.test_sql_writer import compare_with_mlflow

    _, result = expected_result(seed=5, lr=2.0)
    monkeypatch.chdir(tmp_path)  # the stores' artifacts go to ./mlartifacts
    reference = compare_with_mlflow(
        postgres.create_database("rows_fast"), postgres.create_database("rows_mlflow"),
        result, monkeypatch, with_params=False,
    )
    assert len(reference["metrics"]) == len(result.loss_trace) + 3 + (result.solved_at is not None)
    assert dict(reference["runs"][0])["status"] == "FINISHED"


def test_database_refusals_are_one_line(postgres, tmp_path):
    missing = postgres.uri("nope").replace("postgres@", "postgres:s3cret@")
    proc = run_cli(tmp_path, f"iterations={ITERATIONS}", f"tracking.uri={missing}", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"xorexp: database {missing.replace('s3cret', '***')} refuses the connection (database \"nope\" does "
        "not exist): create the database, or fix the user, password or database name in tracking.uri"]

    empty = postgres.create_database("empty")  # a read-only command creates no MLflow tables in it
    report = run_cli(tmp_path, "--tracking-uri", empty, module="xorexp.report", timeout=60)
    assert report.returncode == 2 and report.stderr.startswith(f"xorexp: no store at {empty} ")
    assert len(report.stderr.splitlines()) == 1
    from sqlalchemy import create_engine, inspect

    engine = create_engine(empty)
    try:
        with engine.connect() as connection:
            assert inspect(connection).get_table_names() == []
    finally:
        engine.dispose()


def test_sweep_through_mlflow_server_with_two_workers_on_postgres(postgres, tmp_path):
    backend = postgres.create_database("served")
    server = start_server(tmp_path / "server", backend=backend, workers=2)
    try:
        assert len(group_members(server.pgid)) >= 3  # the server and its 2 workers
        launch = tmp_path / "launch"
        launch.mkdir()
        proc = run_cli(launch, "-m", "seed=0,1,2", "lr=0.5,3", f"iterations={ITERATIONS}",
                       f"tracking.uri={server.uri}")
        assert proc.returncode == 0, proc.stderr
        report = run_cli(launch, "--tracking-uri", server.uri, module="xorexp.report")
        assert report.returncode == 0, report.stderr
    finally:
        stop_server(server)
    # the runs are in PostgreSQL (read back without the server), the artifacts in the server's folder
    client = MlflowClient(backend)
    exp, parents, children = sweep_runs(client)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(children) == 6
    for child in children:
        check_child(client, child, lr=float(child.data.params["lr"]))
        assert child.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert len(list((tmp_path / "server" / "artifacts").rglob("predictions.json"))) == 6
    assert parents[0].info.run_id in report.stdout
    assert sorted(line.split()[1] for line in report.stdout.splitlines() if line.split()[:1] == ["2"]
                  and len(line.split()) > 3 and line.split()[2] == "300") == ["0.5", "3"]
    assert not (launch / "mlflow.db").exists() and not (launch / "mlartifacts").exists()
