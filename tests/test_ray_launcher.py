"""The vectorized launcher's ``ray`` backend: its checks, and sweeps on a real Ray cluster kept on loopback.

The cluster (``tests/ray_cluster.py``) runs in namespaces of its own that have only loopback; tests
that need Ray are marked ``ray`` and are skipped when Ray is not installed (``.ci/run`` turns that
skip into a failure, see ``tests/conftest.py``).
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from hydra_plugins.xorexp_vectorized_launcher import _job_runner, _ray_backend, _ray_tasks
from hydra_plugins.xorexp_vectorized_launcher._compose import Planned
from hydra_plugins.xorexp_vectorized_launcher._ray_backend import (
    RayBackendError,
    _host_port,
    check_reachable,
)
from tests.conftest import free_port, run_cli, snapshot_differences, store_snapshot
from tests.mlflow_server import start_server, stop_server
from tests.ray_cluster import RAY_PORT, LoopbackRayCluster, is_loopback
from xorexp import progress
from xorexp.background import RUNS_IN_FLIGHT
from xorexp.errors import Abort
from xorexp.train import RunSpec

pytestmark = pytest.mark.xdist_group("test_ray_launcher")  # one xdist worker: one Ray cluster

SWEEP = ["-m", "seed=range(0,100)", "lr=0.5,3", "iterations=500"]
CHUNK_SIZE = 50  # 200 runs in 4 chunks
N_RUNS, N_CHUNKS = 200, 4


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = LoopbackRayCluster(tmp_path_factory.mktemp("ray_cluster"))
    try:
        cluster.start()
    except RuntimeError as error:
        cluster.stop()
        pytest.fail(f"could not start the loopback Ray cluster: {error}", pytrace=False)
    yield cluster
    left = cluster.stop()
    assert not left, f"Ray processes left after the cluster was stopped: {left}"


@pytest.fixture(scope="module")
def local_snapshot(tmp_path_factory):
    """The store of the same sweep under the default local backend (worker processes, no Ray)."""
    where = tmp_path_factory.mktemp("local")
    flags = [f"hydra.launcher.chunk_size={CHUNK_SIZE}", f"hydra.sweep.dir={where}/multirun"]
    proc = run_cli(where, *SWEEP, *flags)
    assert proc.returncode == 0, proc.stderr
    return store_snapshot(where)


def test_this_module_runs_on_one_xdist_worker(request):
    """Under ``--dist loadgroup`` xdist tags each test of the group (its node id ends ``@group``): the
    module's tests then share one worker, one Ray cluster and one server. A pytest whose node ids
    drop the tag splits them silently, each worker starting its own (pytest 9.2 with xdist 3.8)."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run by pytest-xdist with --dist loadgroup")
    assert request.node.nodeid.endswith("@test_ray_launcher"), request.node.nodeid


def test_address_parsing():
    assert _host_port("127.0.0.1:6379") == ("127.0.0.1", 6379)
    assert _host_port("ray://head.example:10001") == ("head.example", 10001)
    assert _host_port("[::1]:6379") == ("::1", 6379)
    assert _host_port("auto") is None


def test_nothing_listening_is_refused_not_waited_for():
    port = free_port()  # nothing listens there: the connection is refused, not timed out
    with pytest.raises(RayBackendError) as refused:
        check_reachable(f"127.0.0.1:{port}", timeout=5)
    message = str(refused.value)
    assert message.startswith(f"hydra.launcher.ray.address=127.0.0.1:{port}: no Ray cluster reachable there")
    assert "(Connection refused)" in message


@pytest.mark.parametrize(
    "address, message",
    [
        (None, "needs Ray in this environment: pip install 'xorexp[ray]'"),
        pytest.param("local", "hydra.launcher.ray.address=local would start a new Ray cluster",
                     marks=pytest.mark.ray),
    ],
)
def test_backend_refuses_in_one_line(monkeypatch, address, message):
    if address is None:
        monkeypatch.setattr(_ray_backend, "ray", None)
    with pytest.raises(Abort) as stop:
        _ray_backend.RayExecutor({"address": address, "max_retries": 3})
    assert stop.value.status == 2
    assert "\n" not in stop.value.message and message in stop.value.message


class _TasksAlreadyEnded:
    """A stand-in for the Ray executor whose tasks have all ended by the time they are waited for,
    each with the (ended jobs, abort, raised) given: one ``wait`` returns them together."""

    def __init__(self, outcomes: list) -> None:
        self.outcomes = list(outcomes)

    def cpus(self) -> int:
        return 2

    def put(self, value):
        return value

    def submit(self, fn, *args):
        future = Future()
        future.set_result(self.outcomes.pop(0))
        return future


def test_a_store_failure_in_one_task_keeps_what_the_tasks_ended_with_it(tmp_path, monkeypatch):
    """Two tasks end in the same wait, one stopped by a failing store: the other's jobs still get
    their files on this machine and their ends reported before the sweep stops."""
    monkeypatch.chdir(tmp_path)
    jobs = [
        _job_runner.Job(idx, [f"seed={idx}"], Planned([], RunSpec(seed=idx, iterations=10))) for idx in (0, 1)
    ]
    job_dir = tmp_path / "multirun" / "1"
    ended_on_another_machine = [(1, "return of job 1", [("solved", False, None)], str(job_dir),
                                 {".hydra/overrides.yaml": b"- seed=1\n"})]
    executor = _TasksAlreadyEnded([
        ([], ("tracking store failed: database is locked", 2), None),
        (ended_on_another_machine, None, None),
    ])
    master = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "multirun")}}})
    runner = SimpleNamespace(composer=SimpleNamespace(master_config=master))
    launcher = SimpleNamespace(hydra_context=None, task_function=None)
    reported = []
    with progress.feeding(lambda *event: reported.append(event)), pytest.raises(Abort) as stop:
        _ray_tasks._jobs_on_ray(executor, launcher, jobs, runner, chunk_size=1)
    assert (stop.value.message, stop.value.status) == ("tracking store failed: database is locked", 2)
    assert (job_dir / ".hydra" / "overrides.yaml").read_bytes() == b"- seed=1\n"
    assert reported == [("solved", False, None)]


@pytest.mark.ray
def test_cluster_is_on_loopback_only(cluster):
    assert cluster.interfaces() == ["lo"]
    sockets = cluster.sockets()
    assert any(state == "LISTEN" and local.endswith(f":{RAY_PORT}") for state, local, _ in sockets), sockets
    assert all(is_loopback(local) and is_loopback(peer) for _, local, peer in sockets), sockets


@pytest.mark.slow
@pytest.mark.ray
def test_sweep_on_ray_equals_local_sweep(cluster, local_snapshot, tmp_path):
    (cluster.faults / "calls.log").unlink(missing_ok=True)
    proc, seen = cluster.cli(tmp_path, *SWEEP, f"hydra.launcher.chunk_size={CHUNK_SIZE}", sample_sockets=True)
    assert proc.returncode == 0, proc.stderr
    assert len(cluster.chunk_calls()) == N_CHUNKS  # the chunks were trained by the cluster's workers
    assert seen and all(is_loopback(local) and is_loopback(peer) for _, local, peer in seen), seen
    assert any(peer.endswith(f":{RAY_PORT}") for _, _, peer in seen)  # the sweep's driver was seen connected
    snapshot = store_snapshot(tmp_path)
    assert len(snapshot) == N_RUNS
    assert snapshot_differences(snapshot, local_snapshot) == []


@pytest.mark.slow
@pytest.mark.ray
def test_a_lost_worker_loses_no_run(cluster, local_snapshot, tmp_path):
    (cluster.faults / "calls.log").unlink(missing_ok=True)
    (cluster.faults / "fired").unlink(missing_ok=True)
    (cluster.faults / "arm").touch()
    proc, _ = cluster.cli(tmp_path, *SWEEP, f"hydra.launcher.chunk_size={CHUNK_SIZE}")
    assert proc.returncode == 0, proc.stderr
    assert (cluster.faults / "fired").exists() and not (cluster.faults / "arm").exists()
    calls = cluster.chunk_calls()
    assert len(calls) == N_CHUNKS + 1, calls  # the chunk whose worker died ran again
    assert len({line.split()[0] for line in calls}) >= 2  # ... in another worker process
    snapshot = store_snapshot(tmp_path)
    assert len(snapshot) == N_RUNS
    assert snapshot_differences(snapshot, local_snapshot) == []


@pytest.mark.ray
def test_unreachable_address_fails_in_one_line(cluster, tmp_path):
    argv = [sys.executable, "-m", "xorexp", "-m", "seed=0,1", "iterations=100", "hydra.launcher.backend=ray",
            f"hydra.launcher.ray.address=127.0.0.1:{RAY_PORT + 1}", f"hydra.sweep.dir={tmp_path}/multirun"]
    proc = cluster.run(argv, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("xorexp:")]
    assert errors == [
        f"xorexp: hydra.launcher.ray.address=127.0.0.1:{RAY_PORT + 1}: no Ray cluster reachable there "
        "(Connection refused); start one with `ray start --head --port=PORT` or fix the address"
    ], proc.stderr
    assert "Traceback" not in proc.stderr


# ---- a tracking server: the Ray tasks log their own runs ------------------------------------------

SERVER_SWEEP = ["-m", "seed=range(0,20)", "lr=0.5,3", "iterations=500", "hydra.launcher.chunk_size=50"]
N_SERVER_RUNS = 40  # in tasks of 16, 16 and 8 runs (2 CPUs: at least 16 runs a task)
SERVER_PORT = 5757  # inside the cluster's network namespace, where only Ray listens
STATE = """
import json, sys
from pathlib import Path
from mlflow import MlflowClient
from tests.conftest import runs_of, store_snapshot
where, uri, experiment, parent_id = sys.argv[1:]
only = f"tags.mlflow.parentRunId = '{parent_id}'"
parent = MlflowClient(uri).get_run(parent_id)
def row(run):
    tags = run.data.tags
    return {"name": run.info.run_name, "status": run.info.status, "pid": tags.get("xorexp.pid"),
            "hash": tags.get("xorexp.config_hash"), "parent": tags.get("mlflow.parentRunId")}
print(json.dumps({
    "parent": {"status": parent.info.status, **parent.data.tags},
    "children": [row(run) for run in runs_of(Path(where), experiment, only, uri=uri)],
    "experiment": [row(run) for run in runs_of(Path(where), experiment, uri=uri)
                   if run.data.tags.get("xorexp.role") != "sweep"],
    "snapshot": store_snapshot(Path(where), uri=uri, filter_string=only) if experiment == "xorexp" else None,
}))
"""


@pytest.fixture(scope="module")
def server(cluster, tmp_path_factory):
    """A real ``mlflow server`` inside the cluster's namespaces (the workers reach it on 127.0.0.1)."""
    started = start_server(tmp_path_factory.mktemp("server"), enter=cluster.enter, port=SERVER_PORT)
    yield started
    stop_server(started)


def server_state(cluster, server, where: Path, experiment: str = "xorexp") -> dict:
    """The sweep launched in ``where``: its parent's tags, its children, the experiment's runs and
    (experiment xorexp) the children's store snapshot, read through the server from inside."""
    parent_id = json.loads((where / "multirun" / "xorexp_parent_run.json").read_text())["run_id"]
    (where / "dl").mkdir(exist_ok=True)
    proc = cluster.run([sys.executable, "-c", STATE, str(where / "dl"), server.uri, experiment, parent_id],
                       cwd=where, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def fault_log(cluster, name: str) -> list[str]:
    path = cluster.faults / name
    return path.read_text().splitlines() if path.is_file() else []


def clear_faults(cluster) -> None:
    for path in cluster.faults.iterdir():
        path.unlink()


@pytest.fixture(scope="module")
def server_local_snapshot(cluster, server, tmp_path_factory):
    """The same sweep to the same server under the local backend (2 worker processes, no Ray)."""
    where = tmp_path_factory.mktemp("server-local")
    argv = [sys.executable, "-m", "xorexp", *SERVER_SWEEP, f"tracking.uri={server.uri}",
            f"hydra.sweep.dir={where}/multirun"]
    proc = cluster.run(argv, cwd=where, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return server_state(cluster, server, where)["snapshot"]


@pytest.mark.slow
@pytest.mark.ray
def test_ray_tasks_log_their_runs_to_a_server(cluster, server, server_local_snapshot, tmp_path):
    clear_faults(cluster)
    proc, _ = cluster.cli(tmp_path, *SERVER_SWEEP, f"tracking.uri={server.uri}")
    assert proc.returncode == 0, proc.stderr
    state = server_state(cluster, server, tmp_path)
    assert len(state["snapshot"]) == N_SERVER_RUNS
    assert snapshot_differences(state["snapshot"], server_local_snapshot) == []  # bits, tags, artifacts
    workers = {line.split()[0] for line in fault_log(cluster, "calls.log")}
    writers = {run["pid"] for run in state["children"]}
    assert len(state["children"]) == N_SERVER_RUNS
    assert writers <= workers and len(writers) >= 2, (writers, workers)  # the tasks wrote, in parallel
    assert state["parent"]["xorexp.pid"] not in writers  # not the launching process
    # the sweep's end read every job's record: summary and best run on the parent, which FINISHED
    assert state["parent"]["status"] == "FINISHED"
    assert state["parent"]["xorexp.best_run_id"]
    records = list((tmp_path / "multirun").rglob("xorexp_job.json"))
    assert len(records) == N_SERVER_RUNS


def sweep_with_a_raising_task(cluster, server, where: Path, experiment: str, **cli_options):
    """The server sweep with a task raising at its second job: exit 1, one run per job, FAILED (by the
    launching process) exactly the task's jobs but the first, which it had ended; the rest FINISHED.
    Returns (process, server state, failed runs, finished runs)."""
    clear_faults(cluster)
    (cluster.faults / "arm-raise-job").write_text("2")
    proc, _ = cluster.cli(where, *SERVER_SWEEP, f"tracking.uri={server.uri}",
                          f"tracking.experiment={experiment}", **cli_options)
    assert proc.returncode == 1, proc.stderr
    assert (cluster.faults / "fired-raise-job").exists()
    state = server_state(cluster, server, where, experiment)
    children = state["children"]
    assert len(children) == N_SERVER_RUNS == len({run["name"] for run in children})  # one run per job
    failed = [run for run in children if run["status"] == "FAILED"]
    finished = [run for run in children if run["status"] == "FINISHED"]
    assert len(failed) in (15, 7), failed  # tasks of 16, 16 and 8 jobs
    assert len(failed) + len(finished) == N_SERVER_RUNS
    assert {run["pid"] for run in failed} == {state["parent"]["xorexp.pid"]}  # ended FAILED here
    return proc, state, failed, finished


@pytest.mark.slow
@pytest.mark.ray
def test_a_task_that_raises_fails_its_jobs_only_and_a_resume_trains_them(cluster, server, tmp_path):
    first, again = tmp_path / "first", tmp_path / "again"
    first.mkdir()
    again.mkdir()
    proc, state, failed, finished = sweep_with_a_raising_task(cluster, server, first, "raise")
    said = "its Ray task failed: RuntimeError: injected fault in run_job"
    lines = [line for line in proc.stderr.splitlines() if said in line]
    assert len(lines) == min(10, len(failed)), proc.stderr  # every failed job reported, by the progress
    assert state["parent"]["status"] == "FAILED"

    proc, _ = cluster.cli(again, *SERVER_SWEEP, f"tracking.uri={server.uri}", "tracking.experiment=raise",
                          "tracking.skip_finished=true")
    assert proc.returncode == 0, proc.stderr
    state = server_state(cluster, server, again, "raise")
    assert state["parent"]["xorexp.reused_runs"] == str(len(finished))
    assert len(state["children"]) == len(failed) and {r["status"] for r in state["children"]} == {"FINISHED"}
    per_config = {}
    for run in state["experiment"]:
        per_config.setdefault(run["hash"], []).append(run["status"])
    assert len(per_config) == N_SERVER_RUNS
    assert all(statuses.count("FINISHED") == 1 for statuses in per_config.values()), per_config


@pytest.mark.slow
@pytest.mark.ray
def test_a_worker_lost_mid_job_finishes_that_run_on_retry(cluster, server, server_local_snapshot, tmp_path):
    clear_faults(cluster)
    (cluster.faults / "arm-exit-log").write_text("2")  # a worker dies logging its second job
    proc, _ = cluster.cli(tmp_path, *SERVER_SWEEP, f"tracking.uri={server.uri}")
    assert proc.returncode == 0, proc.stderr
    assert (cluster.faults / "fired-exit-log").exists()
    # every job logged once, but the one whose worker died logged again by the retry, and so are the
    # task's other runs still in flight then (at most RUNS_IN_FLIGHT in all); a job FINISHED before
    # the death is not: its record says so
    logged = len(fault_log(cluster, "calls-log_result.log"))
    assert N_SERVER_RUNS + 1 <= logged <= N_SERVER_RUNS + RUNS_IN_FLIGHT, logged
    state = server_state(cluster, server, tmp_path)
    assert len(state["children"]) == N_SERVER_RUNS  # no second run for any job
    assert snapshot_differences(state["snapshot"], server_local_snapshot) == []


@pytest.mark.slow
@pytest.mark.ray
def test_a_worker_lost_right_after_creating_a_run_finishes_that_run_on_retry(
    cluster, server, server_local_snapshot, tmp_path
):
    """The worker dies once its third run is created, before its job records it: the retried task
    finds that run by its sweep and job number and finishes it, no job gets a second run."""
    clear_faults(cluster)
    (cluster.faults / "arm-exit-created").write_text("3")
    proc, _ = cluster.cli(tmp_path, *SERVER_SWEEP, f"tracking.uri={server.uri}")
    assert proc.returncode == 0, proc.stderr
    assert (cluster.faults / "fired-exit-created").exists()
    state = server_state(cluster, server, tmp_path)
    assert len(state["children"]) == N_SERVER_RUNS  # no second run for any job
    assert snapshot_differences(state["snapshot"], server_local_snapshot) == []


@pytest.mark.slow
@pytest.mark.ray
def test_tasks_on_another_machine_send_their_job_files_back(cluster, server, tmp_path):
    """The launching process's sweep dir is a private tmpfs, the tasks write theirs on the disk: as if
    they ran on another machine. They still find the parent run (sent with them), and the launching
    process gets every job's record (sent back) for the sweep's summary."""
    clear_faults(cluster)
    (tmp_path / "multirun").mkdir()
    proc, _ = cluster.cli(tmp_path, *SERVER_SWEEP, f"tracking.uri={server.uri}", "tracking.experiment=apart",
                          private=tmp_path / "multirun")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    # the tasks' side of the disk: the parent record they were given, the job dirs they wrote
    assert (tmp_path / "multirun" / "xorexp_parent_run.json").is_file()
    assert not (tmp_path / "multirun" / "xorexp.log").exists()  # the launching process's file: not here
    assert len(list((tmp_path / "multirun").rglob("xorexp_job.json"))) == N_SERVER_RUNS
    state = server_state(cluster, server, tmp_path, "apart")
    assert len(state["children"]) == N_SERVER_RUNS  # the runs are the parent's children
    assert {run["status"] for run in state["children"]} == {"FINISHED"}
    assert state["parent"]["status"] == "FINISHED"  # the summary found all 40 job records
    assert "left no run" not in proc.stdout


@pytest.mark.slow
@pytest.mark.ray
def test_a_task_on_another_machine_that_raises_keeps_the_runs_it_ended(cluster, server, tmp_path):
    """The task raises at its second job, its first job's record on the task's machine only: that job
    keeps its one FINISHED run (the task sends back what it ended), the task's other jobs end FAILED."""
    (tmp_path / "multirun").mkdir()
    sweep_with_a_raising_task(cluster, server, tmp_path, "apart-raise", private=tmp_path / "multirun")
