"""End-to-end sweep timings with full tracking (sqlite store, plots, Hydra job dirs).

    python benchmarks/bench_sweep.py [--seeds 100] [--small-seeds 10] [--skip-basic]

1. The same sweep (h=2, lr on 10 values x N seeds, 10,000 iterations; 1,000 runs by default) under
   the basic launcher and under the vectorized launcher, each into a fresh store, with the ratio.
   The vectorized sweep, and a smaller one (10 lr x ``--small-seeds``: 100 runs), run with the timers
   of ``benchmarks/profile/sitecustomize.py`` in every process; a table then says where the time
   went: seconds per category summed over the processes (launching process and workers) and its share
   of the work. "waiting for workers" (the launching process while the workers work) and "idle" (a
   worker waiting for its next task) are shown but are not work, so not in the total.
2. The wall time of ``python -m xorexp -m lr=0.01,0.1,1`` (defaults: 150,000 iterations) on an
   existing store, and, measured apart, what of it is imports and store opening.

Prints figures; asserts nothing. Each command runs in a fresh directory under a temp dir.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LRS = "0.01,0.02,0.05,0.1,0.2,0.5,1,2,5,10"


PROFILE = ROOT / "benchmarks" / "profile"  # its sitecustomize.py times a table of functions
CATEGORIES = (
    "training", "Hydra job work", "MLflow calls", "plots", "start-up", "end of sweep", "other",
)
NOT_WORK = ("waiting for workers", "idle")


def run(cwd: Path, *args: str, profile_dir: Path | None = None) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
        env.update(PYTHONPATH=f"{PROFILE}{os.pathsep}{ROOT}", XOREXP_PROFILE_DIR=str(profile_dir))
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


def profile_table(profile_dir: Path, wall: float) -> str:
    """Seconds per category summed over the processes that wrote their totals, and shares."""
    records = [json.loads(path.read_text()) for path in sorted(profile_dir.glob("*.json"))]
    if not records:
        return "  (no process wrote its times: was benchmarks/profile/sitecustomize.py imported?)"
    by_role: dict[str, dict[str, float]] = {"main": {}, "worker": {}}
    for record in records:
        for category, seconds in record["seconds"].items():
            by_role[record["role"]][category] = by_role[record["role"]].get(category, 0.0) + seconds
    total = {c: by_role["main"].get(c, 0.0) + by_role["worker"].get(c, 0.0) for c in CATEGORIES + NOT_WORK}
    work = sum(total[c] for c in CATEGORIES)
    workers = sum(record["role"] == "worker" for record in records)
    lines = [
        f"  where the time went ({len(records) - workers} launching process + {workers} workers; "
        f"{wall:.1f} s wall x processes = {wall * len(records):.1f} s):",
        f"  {'category':<22}{'seconds':>9}{'share':>8}{'launching':>11}{'workers':>9}",
    ]
    for category in CATEGORIES + ("total of work",) + NOT_WORK:
        seconds = work if category == "total of work" else total[category]
        share = f"{100 * seconds / work:6.1f} %" if category not in NOT_WORK else "       -"
        main = "" if category == "total of work" else f"{by_role['main'].get(category, 0.0):11.2f}"
        worker = "" if category == "total of work" else f"{by_role['worker'].get(category, 0.0):9.2f}"
        lines.append(f"  {category:<22}{seconds:9.2f}{share}{main}{worker}")
    missing = sorted({name for record in records for name in record.get("missing", [])})
    if missing:
        lines.append(f"  not timed (not found, adapt benchmarks/profile/sitecustomize.py): {missing}")
    return "\n".join(lines)


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
    parser.add_argument("--small-seeds", type=int, default=10, help="seeds per lr of the smaller sweep")
    parser.add_argument("--skip-basic", action="store_true", help="only the vectorized launcher")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        root = Path(tmp)
        times = {}
        runs = [("vectorized", args.seeds)]
        runs += [("vectorized", args.small_seeds)] if args.small_seeds != args.seeds else []
        runs += [] if args.skip_basic else [("basic", args.seeds)]
        for launcher, seeds in runs:
            n_runs = 10 * seeds
            sweep = ["-m", "xorexp", "-m", f"lr={LRS}", f"seed=range(0,{seeds})", "iterations=10000"]
            where = root / f"{launcher}-{n_runs}"
            where.mkdir()
            profiled = root / f"profile-{n_runs}" if launcher == "vectorized" else None
            seconds = run(where, *sweep, f"hydra/launcher={launcher}", profile_dir=profiled)
            if seeds == args.seeds:
                times[launcher] = seconds
            per_run = 1000 * seconds / n_runs
            finished = count_runs(where) - 1  # minus the parent
            print(
                f"{launcher:>10}: {n_runs} runs in {seconds:7.1f} s wall ({per_run:.1f} ms per run; "
                f"{finished} runs FINISHED)"
            )
            if profiled is not None:
                print(profile_table(profiled, seconds))
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
