"""The 200-run sweep end to end: local worker processes against a Ray cluster, side by side.

Run (as root: the cluster gets a network namespace with only loopback, see tests/ray_cluster.py):
``python benchmarks/bench_ray.py`` (about 3-4 minutes; ``--iterations``, ``--repeats``, ``--chunk-size``).
Both sides run the same CLI command, ``python -m xorexp -m seed='range(0,100)' lr=0.5,3 ...``, into a
fresh store each time; the Ray side adds ``hydra.launcher.backend=ray hydra.launcher.ray.address=...``
and runs on a 2-CPU ``ray start --head`` cluster on this machine. Wall time of the whole command is
printed (best of the repeats, median in brackets), and the ratio Ray / local. Numbers are printed,
never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import run_cli  # noqa: E402
from tests.ray_cluster import LoopbackRayCluster  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--chunk-size", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    opts = parser.parse_args()
    args = [opts.iterations, opts.chunk_size]

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
