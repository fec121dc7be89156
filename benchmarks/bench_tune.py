"""xorexp against Ray Tune on the same grid, every run tracked in MLflow on both sides.

    python benchmarks/bench_tune.py [--seeds 10] [--repeats 1] [--iterations 10000]

(as root: the Tune side runs in a network namespace of its own whose only interface is lo, see below).

The grid: hidden_units=2, 10 learning rates (0.01 ... 10) x ``--seeds`` seeds (10: 100 runs, 50: 500),
10,000 iterations. Each side writes a fresh sqlite store (``<its dir>/mlflow.db``, artifacts beside it)
and is timed as a whole child process, start-up included:

- xorexp: ``python -m xorexp -m hidden_units=2 lr=... seed=range(0,N) iterations=10000`` (the vectorized
  launcher, its defaults): per run params, the loss trace, summary metrics, predictions.json, the two run
  plots, the trained weights, Hydra's job files, provenance tags; plus the sweep's parent run and summary.
- Ray Tune (2.60): ``tune.Tuner`` with ``tune.grid_search`` on lr and seed, a function trainable that
  trains its run with the project's engine (``xorexp.train.train([RunSpec(...)])``) and logs it through
  Tune's MLflow integration, ``setup_mlflow`` inside the trainable (it sets the store and experiment and
  starts the run named after it; the trainable then logs the six params as xorexp writes them in one
  call, the loss trace with its steps and the summary metrics in ``log_batch`` calls, and predictions.json,
  the two plots rendered by ``xorexp.chunks.render_run_plots`` and the weights in one ``log_artifacts``)
  and ends the run. ``setup_mlflow`` rather than ``MLflowLoggerCallback``: the callback logs from the driver
  only what the trainable reports (one ``tune.report`` per traced loss, i.e. 101 reports and metric
  writes per run) and only Tune's trial directory as artifacts, so it would be both slower and not the
  same tracking. ``reuse_actors=True``, at most 2 trials at once (1 CPU each), storage under the side's
  dir, ``verbose=0``; Ray is started by ``ray.init(num_cpus=2, include_dashboard=False)`` in a child
  process inside ``unshare --net --pid`` (loopback only; the PID namespace ends every process Ray started
  when the child exits). The store is created and its experiment made (with the WAL journal xorexp also
  uses, so the two trials writing at once do not wait on each other's locks) before ``tuner.fit()``.

The sides alternate (``--repeats``); a table gives runs, wall seconds, the ratio xorexp / Tune and the
FINISHED training runs of each store. Then the final loss of every run is compared between the two stores:
same engine and same seed give the same bits. Prints figures; asserts only that both sides completed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LRS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)
EXPERIMENT = "xorexp"
HIDDEN_UNITS = 2


def child_env() -> dict[str, str]:
    """The environment of both sides: this checkout's xorexp, no inherited store or Ray cluster.
    ``RAY_AUTH_MODE=disabled``: see tests/ray_cluster.py (a stray ~/.ray/auth_token would turn it on)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "disabled"}
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "RAY_ADDRESS"):
        env.pop(name, None)
    return env


def timed(argv: list[str], cwd: Path, timeout: float) -> float:
    """Wall seconds of ``argv`` (output to files in ``cwd``); raises with its stderr if it fails."""
    with open(cwd / "stdout.log", "w") as out, open(cwd / "stderr.log", "w") as err:
        start = time.perf_counter()
        proc = subprocess.run(argv, cwd=cwd, env=child_env(), stdout=out, stderr=err,
                              stdin=subprocess.DEVNULL, timeout=timeout)
        elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (cwd / "stderr.log").read_text()[-4000:]
        raise RuntimeError(f"{' '.join(argv[:6])} ... exited {proc.returncode}:\n{tail}")
    return elapsed


def lr_text(lrs: Sequence[float]) -> str:
    from xorexp.params import param_text

    return ",".join(param_text(float(lr)) for lr in lrs)


# --- the xorexp side ---------------------------------------------------------------------------


def xorexp_side(where: Path, lrs: Sequence[float], seeds: int, iterations: int,
                timeout: float = 3600) -> float:
    """``python -m xorexp -m ...`` over the grid in ``where`` (a new directory); its wall seconds."""
    where.mkdir(parents=True)
    argv = [sys.executable, "-m", "xorexp", "-m", f"hidden_units={HIDDEN_UNITS}", f"lr={lr_text(lrs)}",
            f"seed=range(0,{seeds})", f"iterations={iterations}"]
    return timed(argv, where, timeout)


# --- the Ray Tune side -------------------------------------------------------------------------


def tune_side(where: Path, lrs: Sequence[float], seeds: int, iterations: int,
              timeout: float = 3600) -> float:
    """The same grid under Ray Tune, in a loopback-only network namespace; its wall seconds (the
    whole child process: Python and Ray start-up, the store, ``tuner.fit()``, Ray's shutdown)."""
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"the Tune side needs `{tool}` (util-linux, iproute2)")
    if os.geteuid() != 0:
        raise RuntimeError("the Tune side needs root (unshare --net)")
    where.mkdir(parents=True)
    child = [sys.executable, str(Path(__file__).resolve()), "--tune-child", str(where),
             "--lrs", lr_text(lrs), "--seeds", str(seeds), "--iterations", str(iterations)]
    # --pid --fork --kill-child: every process Ray starts is in the namespace, and ends with the child
    argv = ["unshare", "--net", "--pid", "--mount-proc", "--fork", "--kill-child", "bash", "-c",
            'ip link set lo up && exec "$@"', "tune-child", *child]
    return timed(argv, where, timeout)


def create_store(uri: str, artifacts: Path) -> str:
    """A new MLflow sqlite store with the experiment, in WAL mode; the experiment's id."""
    from mlflow import MlflowClient

    experiment_id = MlflowClient(uri).create_experiment(EXPERIMENT, artifact_location=artifacts.as_uri())
    with sqlite3.connect(uri.removeprefix("sqlite:///")) as db:
        db.execute("pragma journal_mode=wal")
    return experiment_id


def trainable(config: dict) -> None:
    """One Tune trial: train the run with xorexp's engine and log it through ``setup_mlflow``."""
    import tempfile
    from pathlib import Path

    import numpy as np
    from mlflow.entities import Metric
    from ray import tune
    from ray.air.integrations.mlflow import setup_mlflow

    from xorexp.chunks import render_run_plots
    from xorexp.params import result_params, run_name
    from xorexp.tracking.writing import predictions_document
    from xorexp.train import RunSpec, train

    spec = RunSpec(hidden_units=config["hidden_units"], lr=config["lr"], iterations=config["iterations"],
                   seed=config["seed"])
    name = run_name(spec)
    mlflow = setup_mlflow({}, tracking_uri=config["tracking_uri"], experiment_name=EXPERIMENT, run_name=name)
    run_id = mlflow.active_run().info.run_id
    client = mlflow.MlflowClient()
    (result,) = train([spec])

    now = int(time.time() * 1000)
    metrics = [Metric("loss", float(v), now, int(s))
               for s, v in zip(result.trace_steps, result.loss_trace, strict=True) if math.isfinite(v)]
    summary = {"final_loss": result.final_loss, "accuracy": result.accuracy, "steps": float(result.steps)}
    if result.solved_at is not None:
        summary["solved_at"] = float(result.solved_at)
    metrics += [Metric(k, float(v), now, 0) for k, v in summary.items() if math.isfinite(v)]
    mlflow.log_params(result_params(spec))
    for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    mlflow.set_tag("xorexp.outcome", result.outcome)

    with tempfile.TemporaryDirectory(prefix="tune-run-") as tmp:
        files = Path(tmp)
        (files / "predictions.json").write_text(json.dumps(predictions_document(result), indent=2))
        for path, png in render_run_plots(result, name).items():
            (files / path).parent.mkdir(parents=True, exist_ok=True)
            (files / path).write_bytes(png)
        (files / "model").mkdir()
        np.savez(files / "model" / "params.npz", **result.arrays())
        mlflow.log_artifacts(str(files))
    mlflow.end_run()  # the actor is reused: the next trial must not find this run active
    tune.report({k: v for k, v in summary.items() if math.isfinite(v)})


def tune_child(where: Path, lrs: list[float], seeds: int, iterations: int) -> None:
    """Inside the namespace: store, Ray, ``tuner.fit()`` over the grid, shutdown."""
    import ray
    from ray import tune

    phases = {"start": time.perf_counter()}  # the end of each phase; seconds per phase below
    uri = f"sqlite:///{where / 'mlflow.db'}"
    create_store(uri, where / "mlartifacts")
    phases["store"] = time.perf_counter()
    # Ray's socket paths must fit in 107 bytes: a short temp dir of its own
    ray_tmp = tempfile.mkdtemp(prefix="xr-tune-", dir="/tmp")
    try:
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=ray_tmp, log_to_driver=False,
                 configure_logging=False)
        phases["ray.init"] = time.perf_counter()
        param_space = {"lr": tune.grid_search(lrs), "seed": tune.grid_search(list(range(seeds))),
                       "hidden_units": HIDDEN_UNITS, "iterations": iterations, "tracking_uri": uri}
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            param_space=param_space,
            tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=2),
            run_config=tune.RunConfig(name="grid", storage_path=str(where / "ray_results"), verbose=0),
        )
        results = tuner.fit()
        phases["tuner.fit"] = time.perf_counter()
        if results.errors:
            raise RuntimeError(f"{len(results.errors)} trials failed, first: {results.errors[0]!r}")
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    phases["ray.shutdown"] = time.perf_counter()
    ends = list(phases.values())
    seconds = {name: end - start for name, start, end in zip(list(phases)[1:], ends, ends[1:], strict=False)}
    (where / "phases.json").write_text(json.dumps(seconds))


# --- reading the stores ------------------------------------------------------------------------


def store_runs(where: Path) -> dict[str, dict]:
    """Training runs of ``where/mlflow.db`` by run name: status, params, final_loss (None if absent);
    a sweep's parent run (tag ``xorexp.role``) is left out."""
    with sqlite3.connect(f"file:{where / 'mlflow.db'}?mode=ro", uri=True) as db:
        parents = {row[0] for row in db.execute("select run_uuid from tags where key = 'xorexp.role'")}
        runs = {}
        for run_id, name, status in db.execute("select run_uuid, name, status from runs"):
            if run_id in parents:
                continue
            params = dict(db.execute("select key, value from params where run_uuid = ?", (run_id,)))
            final = db.execute("select value from latest_metrics where run_uuid = ? and key = 'final_loss'",
                               (run_id,)).fetchone()
            runs[name] = {"id": run_id, "status": status, "params": params,
                          "final_loss": None if final is None else final[0]}
    return runs


def finished(runs: dict[str, dict]) -> int:
    return sum(run["status"] == "FINISHED" for run in runs.values())


def compare_final_losses(ours: dict[str, dict], theirs: dict[str, dict]) -> tuple[int, list[str]]:
    """(runs compared, names whose final_loss differs or that only one store has)."""
    differ = sorted(ours.keys() ^ theirs.keys())
    both = sorted(ours.keys() & theirs.keys())
    differ += [name for name in both if ours[name]["final_loss"] != theirs[name]["final_loss"]]
    return len(both), differ


def bits(value: float | None) -> str:
    return "absent" if value is None else float(value).hex()


# --- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds per lr (10 lrs): 10 -> 100 runs")
    parser.add_argument("--iterations", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the two sides, alternating")
    parser.add_argument("--lrs", help=argparse.SUPPRESS)  # the Tune child's grid
    parser.add_argument("--tune-child", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tune_child:
        tune_child(Path(args.tune_child), [float(lr) for lr in args.lrs.split(",")], args.seeds,
                   args.iterations)
        return

    n_runs = len(LRS) * args.seeds
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        root = Path(tmp)
        for n in range(args.repeats):  # alternated: both sides see the same machine load
            ours = xorexp_side(root / f"xorexp-{n}", LRS, args.seeds, args.iterations)
            theirs = tune_side(root / f"tune-{n}", LRS, args.seeds, args.iterations)
            ours_runs, tune_runs = store_runs(root / f"xorexp-{n}"), store_runs(root / f"tune-{n}")
            compared, differ = compare_final_losses(ours_runs, tune_runs)
            rows.append((ours, theirs, finished(ours_runs), finished(tune_runs), compared, differ))
            phases = json.loads((root / f"tune-{n}" / "phases.json").read_text())
        sample = sorted(ours_runs)[:: max(1, len(ours_runs) // 4)][:4]
        examples = [(name, bits(ours_runs[name]["final_loss"]),
                     bits(tune_runs.get(name, {}).get("final_loss"))) for name in sample]

    print(f"{n_runs} runs (h={HIDDEN_UNITS}, 10 lrs x {args.seeds} seeds, {args.iterations} iterations), "
          f"whole child process each; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"  {'round':>5} {'runs':>5} {'xorexp s':>9} {'Tune s':>8} {'xorexp/Tune':>12} "
          f"{'FINISHED xorexp':>16} {'FINISHED Tune':>14}")
    for n, (ours, theirs, ours_done, tune_done, _, _) in enumerate(rows):
        print(f"  {n:>5} {n_runs:>5} {ours:9.1f} {theirs:8.1f} {ours / theirs:12.3f} {ours_done:>16} "
              f"{tune_done:>14}")
    startup = rows[-1][1] - sum(phases.values())
    print(f"  Tune side of round {len(rows) - 1}: Python start-up and imports {startup:.1f} s, "
          + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in phases.items()))
    for n, (*_, compared, differ) in enumerate(rows):
        verdict = "all equal" if not differ else f"{len(differ)} differ, e.g. {differ[:3]}"
        print(f"  round {n}: final_loss compared bit for bit in {compared} runs: {verdict}")
    for name, a, b in examples:
        print(f"    {name:<16} xorexp {a:<24} Tune {b}")


if __name__ == "__main__":
    main()
