"""The vectorized launcher's ``ray`` backend: its checks, and sweeps on a real Ray cluster kept on loopback.

The cluster (``tests/ray_cluster.py``) runs in namespaces of its own that have only loopback; tests
that need Ray are marked ``ray`` and are skipped when Ray is not installed (``.ci/run`` turns that
skip into a failure, see ``tests/conftest.py``).
"""

from __future__ import annotations

import sys

import pytest

from hydra_plugins.xorexp_vectorized_launcher import _ray_backend
from hydra_plugins.xorexp_vectorized_launcher._ray_backend import (
    RayBackendError,
    _host_port,
    check_reachable,
)
from tests.conftest import free_port, run_cli, snapshot_differences, store_snapshot
from tests.ray_cluster import RAY_PORT, LoopbackRayCluster, is_loopback
from xorexp.errors import Abort

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
