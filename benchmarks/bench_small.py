"""The 3-run sweep of the README, ``python -m xorexp -m lr=0.01,0.1,1`` (150,000 iterations), before
and after: wall time and where the launching process's time goes, side by side.

    python benchmarks/bench_small.py [--before main] [--repeats 3]

``--before`` is exported with ``git archive`` into a temp dir; "after" is this checkout's working
tree. Each repeat runs, alternating which tree goes first, the command in a fresh directory (a new
store) and then again there (an existing store), with ``benchmarks/profile/sitecustomize.py``
recording the launching process's phases. Prints medians over the repeats, and the machine's load
average before and after. Asserts nothing.

Phases (seconds of the launching process, from its start):
- start-up: interpreter and imports, to Hydra's start;
- Hydra compose: Hydra composes the config, to the sweep's start;
- store open: ``job.store_for`` (MLflow's import, a new store's creation and migrations);
- sweep start, rest: the sweep's checks, its directory, the parent run;
- launcher plan: the launcher's start: every job's overrides parsed and spec checked;
- training (wait): the launcher's ``_train``: training, or waiting for the training done ahead;
- jobs: the jobs' Hydra machinery and logging (plots, MLflow);
- end of sweep: summary, sweep figures, the best run's model;
- other: the rest (Hydra's own work between these, the process's exit).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = ROOT / "benchmarks" / "profile"  # its sitecustomize.py, XOREXP_PHASES_FILE mode
COMMAND = ("-m", "xorexp", "-m", "lr=0.01,0.1,1")
ROWS = (
    "start-up", "Hydra compose", "store open", "sweep start, rest", "launcher plan",
    "training (wait)", "jobs", "end of sweep", "other", "wall",
)
CORE = "hydra_plugins.xorexp_vectorized_launcher._core"


def export(rev: str, where: Path) -> Path:
    where.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where


def phases(record: dict, wall: float) -> dict[str, float]:
    seen = record["seen"]

    def first(name: str) -> float:
        return seen.get(name, [0.0, 0.0, 0.0])[0]

    def total(name: str) -> float:
        return seen.get(name, [0.0, 0.0, 0.0])[2]

    out = {
        "start-up": first("hydra._internal.utils:_run_hydra"),
        "Hydra compose": first("xorexp.sweep:Sweep.start") - first("hydra._internal.utils:_run_hydra"),
        "store open": total("xorexp.job:store_for"),
        "sweep start, rest": total("xorexp.sweep:Sweep.start") - total("xorexp.job:store_for"),
        "launcher plan": first(f"{CORE}:_train") - first(f"{CORE}:launch"),
        "training (wait)": total(f"{CORE}:_train"),
        "jobs": total(f"{CORE}:JobRunner.run"),
        "end of sweep": total("xorexp.sweep:Sweep.finish"),
    }
    out["other"] = record["end"] - sum(out.values())
    out["wall"] = wall
    return out


def run(tree: Path, cwd: Path, out: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": f"{PHASES}{os.pathsep}{tree}", "XOREXP_PHASES_FILE": str(out)}
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *COMMAND], cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed in {tree}:\n{proc.stderr[-3000:]}")
    return phases(json.loads(out.read_text()), wall)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default="main", help="git revision of the 'before' tree")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-small-") as tmp:
        root = Path(tmp)
        trees = {"before": export(args.before, root / "tree-before"), "after": ROOT}
        results: dict[tuple[str, str], list[dict]] = {}
        for repeat in range(args.repeats):
            order = ["before", "after"] if repeat % 2 == 0 else ["after", "before"]
            for name in order:
                where = root / f"{name}-{repeat}"
                where.mkdir()
                for store in ("fresh", "existing"):
                    timing = run(trees[name], where, root / f"{name}-{repeat}-{store}.json")
                    results.setdefault((name, store), []).append(timing)
                    print(f"  repeat {repeat + 1}, {name}, {store} store: {timing['wall']:.2f} s", flush=True)
    load_after = os.getloadavg()
    columns = [(name, store) for store in ("fresh", "existing") for name in ("before", "after")]
    print(f"\npython {' '.join(COMMAND)}: medians of {args.repeats}, seconds (before = {args.before})")
    print(f"{'phase':<20}" + "".join(f"{f'{name}, {store}':>20}" for name, store in columns))
    for row in ROWS:
        cells = [statistics.median(timing[row] for timing in results[column]) for column in columns]
        print(f"{row:<20}" + "".join(f"{cell:20.2f}" for cell in cells))
    print(f"load average before: {load_before[0]:.2f}, after: {load_after[0]:.2f} ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
