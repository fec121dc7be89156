"""End-to-end sweep timings with full tracking (sqlite store, plots, Hydra job dirs).

    python benchmarks/bench_sweep.py [--seeds 100] [--skip-basic]

1. The same sweep (h=2, lr on 10 values x N seeds, 10,000 iterations; 1,000 runs by default) under
   the basic launcher and under the vectorized launcher, each into a fresh store, with the ratio.
2. The wall time of ``python -m xorexp -m lr=0.01,0.1,1`` (defaults: 150,000 iterations) on an
   existing store, and, measured apart, what of it is imports and store opening.

Prints figures; asserts nothing. Each command runs in a fresh directory under a temp dir.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LRS = "0.01,0.02,0.05,0.1,0.2,0.5,1,2,5,10"


def run(cwd: Path, *args: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{proc.stderr[-3000:]}")
    return elapsed


def count_runs(cwd: Path) -> int:
    import sqlite3

    with sqlite3.connect(cwd / "mlflow.db") as db:
        return db.execute("select count(*) from runs where status = 'FINISHED'").fetchone()[0]


STARTUP = """
import time
start = time.perf_counter()
import xorexp.app, xorexp.callbacks, hydra_plugins.xorexp_vectorized_launcher._core
imported = time.perf_counter()
from xorexp.tracking.store import open_store
open_store("sqlite:///{db}", "xorexp")
print(imported - start, time.perf_counter() - imported)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=100, help="seeds per lr (10 lrs)")
    parser.add_argument("--skip-basic", action="store_true", help="only the vectorized launcher")
    args = parser.parse_args()
    n_runs = 10 * args.seeds
    sweep = ["-m", "xorexp", "-m", f"lr={LRS}", f"seed=range(0,{args.seeds})", "iterations=10000"]
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        root = Path(tmp)
        times = {}
        for launcher in ("vectorized",) + (() if args.skip_basic else ("basic",)):
            where = root / launcher
            where.mkdir()
            times[launcher] = run(where, *sweep, f"hydra/launcher={launcher}")
            per_run = 1000 * times[launcher] / n_runs
            finished = count_runs(where) - 1  # minus the parent
            print(
                f"{launcher:>10}: {n_runs} runs in {times[launcher]:7.1f} s wall ({per_run:.1f} ms per run; "
                f"{finished} runs FINISHED)"
            )
        if "basic" in times:
            print(f"     ratio: basic / vectorized = {times['basic'] / times['vectorized']:.1f}x")

        where = root / "small"
        where.mkdir()
        run(where, "-m", "xorexp", "iterations=10")  # creates the store: the next timings use an existing one
        small = [run(where, "-m", "xorexp", "-m", "lr=0.01,0.1,1") for _ in range(2)]
        timing = subprocess.run(
            [sys.executable, "-c", STARTUP.format(db=where / "mlflow.db")],
            cwd=where,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        ).stdout.split()
        print(f"python -m xorexp -m lr=0.01,0.1,1 (existing store): {min(small):.2f} s wall (best of 2)")
        imports, opening = float(timing[0]), float(timing[1])
        print(f"  of which: imports {imports:.2f} s, opening the existing store {opening:.2f} s")


if __name__ == "__main__":
    main()
