"""The 200-run sweep end to end: local worker processes against a Ray cluster, side by side.

Run (as root: the cluster gets a network namespace with only loopback, see tests/ray_cluster.py):
``python benchmarks/bench_ray.py`` (about 3-4 minutes; ``--iterations``, ``--repeats``, ``--chunk-size``).
Both sides run the same CLI command, ``python -m xorexp -m seed='range(0,100)' lr=0.5,3 ...``, into a
fresh store each time; the Ray side adds ``hydra.launcher.backend=ray hydra.launcher.ray.address=...``
and runs on a 2-CPU ``ray start --head`` cluster on this machine. Wall time of the whole command is
printed (best of the repeats, median in brackets), and the ratio Ray / local. Numbers are printed,
never asserted.

``--server [--before DIR]``: the same sweep logged to a real ``mlflow server`` (sqlite backend,
``--server-workers``, started inside the cluster's namespaces so that its workers reach it on 127.0.0.1)
with the Ray backend, for two checkouts side by side: DIR (e.g. ``git archive main | tar x -C DIR``:
its tasks only train and render, the launching process logs every run) and this one (each task logs its
own runs). Each checkout gets its own 2-CPU cluster and server, started before the first sweep; the
sweeps alternate. Prints runs logged per second (runs / wall time of the whole command) and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import ROOT, run_cli  # noqa: E402
from tests.mlflow_server import start_server, stop_server  # noqa: E402
from tests.ray_cluster import LoopbackRayCluster  # noqa: E402

SERVER_PORT = 5757  # inside each cluster's own network namespace


def sweep_args(iterations: int, chunk_size: int, where: Path) -> list[str]:
    return ["-m", "seed=range(0,100)", "lr=0.5,3", f"iterations={iterations}",
            f"hydra.launcher.chunk_size={chunk_size}", f"hydra.sweep.dir={where}/multirun"]


def timed_local(root: Path, n: int, args: list[str]) -> float:
    where = root / f"local-{n}"
    where.mkdir()
    start = time.perf_counter()
    proc = run_cli(where, *sweep_args(*args, where), timeout=1800)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"local sweep failed:\n{proc.stderr}")
    return elapsed


def timed_ray(cluster: LoopbackRayCluster, root: Path, n: int, args: list[str]) -> float:
    where = root / f"ray-{n}"
    where.mkdir()
    # cluster.cli adds the backend, the address and the sweep dir
    flags = [a for a in sweep_args(*args, where) if not a.startswith("hydra.sweep.dir")]
    start = time.perf_counter()
    proc, _ = cluster.cli(where, *flags, timeout=1800)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"Ray sweep failed:\n{proc.stderr}")
    return elapsed


def describe(times: list[float]) -> str:
    return f"{min(times):7.1f} s  [{statistics.median(times):.1f}]"


def timed_server(cluster: LoopbackRayCluster, uri: str, root: Path, name: str, args: list[str]) -> float:
    where = root / name
    where.mkdir()
    flags = [a for a in sweep_args(*args, where) if not a.startswith("hydra.sweep.dir")]
    start = time.perf_counter()
    proc, _ = cluster.cli(where, *flags, f"tracking.uri={uri}", f"tracking.experiment={name}", timeout=3600)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"Ray sweep to the server ({cluster.root}) failed:\n{proc.stderr}")
    return elapsed


def server_main(opts, args: list[str]) -> None:
    checkouts = {"before": Path(opts.before).resolve(), "after": ROOT}
    with tempfile.TemporaryDirectory(prefix="bench-ray-server-") as tmp:
        root = Path(tmp)
        clusters, servers = {}, {}
        try:
            for label, code in checkouts.items():
                clusters[label] = LoopbackRayCluster(root / f"cluster-{label}", root=code).start()
                servers[label] = start_server(root / f"server-{label}", enter=clusters[label].enter,
                                              port=SERVER_PORT, workers=opts.server_workers)
            times: dict[str, list[float]] = {label: [] for label in checkouts}
            for n in range(opts.repeats):  # alternated: both see the same machine load
                for label in checkouts:
                    times[label].append(
                        timed_server(clusters[label], servers[label].uri, root, f"{label}-{n}", args))
        finally:
            for server in servers.values():
                stop_server(server)
            left = [pid for cluster in clusters.values() for pid in cluster.stop()]
    runs = 200
    print(f"{runs} runs, iterations={opts.iterations}, chunk_size={opts.chunk_size}, Ray backend (2 CPUs) to "
          f"mlflow server on sqlite (--workers {opts.server_workers}), best of {opts.repeats} [median]:")
    for label, code in checkouts.items():
        best, median = min(times[label]), statistics.median(times[label])
        rates = f"{runs / best:5.2f} runs/s [{runs / median:.2f}]"
        print(f"  {label:6} {code}: {describe(times[label])}  {rates}")
    print(f"  runs/s after / before: {min(times['before']) / min(times['after']):.2f}")
    if left:
        print(f"warning: cluster processes left: {left}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--chunk-size", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--server", action="store_true", help="Ray sweeps to an mlflow server, before/after")
    parser.add_argument("--before", help="with --server: the checkout to compare with (a directory)")
    parser.add_argument("--server-workers", type=int, default=2)
    opts = parser.parse_args()
    args = [opts.iterations, opts.chunk_size]
    if opts.server:
        if not opts.before:
            parser.error("--server needs --before DIR")
        server_main(opts, args)
        return

    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        root = Path(tmp)
        cluster = LoopbackRayCluster(root / "cluster")
        start = time.perf_counter()
        cluster.start()
        started = time.perf_counter() - start
        try:
            local, on_ray = [], []
            for n in range(opts.repeats):  # interleaved: both sides see the same machine load
                local.append(timed_local(root, n, args))
                on_ray.append(timed_ray(cluster, root, n, args))
        finally:
            left = cluster.stop()
    print(f"200 runs, iterations={opts.iterations}, chunk_size={opts.chunk_size}, best of {opts.repeats} "
          "[median], whole CLI command:")
    print(f"  local processes (n_jobs=-1)    {describe(local)}")
    print(f"  Ray cluster (2 CPUs, loopback) {describe(on_ray)}")
    print(f"  ratio Ray / local              {min(on_ray) / min(local):7.2f}")
    print(f"  (starting the cluster, not counted above: {started:.1f} s)")
    if left:
        print(f"warning: cluster processes left: {left}", file=sys.stderr)


if __name__ == "__main__":
    main()
