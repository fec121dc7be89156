"""What logging one finished run costs on the sqlite store, as the launcher's jobs log it.

    python benchmarks/bench_tracking.py [--runs 200]

Trains the runs of the benchmark sweep (h=2, lr on 10 values, 10,000 iterations: 100 trace points),
then, in this one process and into a fresh store:
- renders each run's two PNGs (``chunks.render_run_plots``), ms per run;
- logs each run exactly as a job does after the vectorized launcher trained it
  (``run_logging.start_run(with_params=False)`` + ``run_logging.log_result`` with params, tags, the trace,
  predictions, config.yaml, a .hydra folder and the two PNGs), ms per run;
- the same with 1,500-point traces (150,000 iterations, the default), ms per run;
- the 100-point case again with the runs split over 2 processes logging at once into the same store
  (as the vectorized launcher's workers do): wall time per run, the cost a sweep actually pays;
- the SQL transactions and statements per run, counted apart on a few runs with SQLAlchemy's
  engine events in this process.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from xorexp import chunks, run_logging
from xorexp.background import Background
from xorexp.params import run_name
from xorexp.tracking.store import open_store
from xorexp.train import RunSpec, train

LRS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]


def log_all(store, results, pngs, hydra_dir: Path, overlap: bool = False) -> list[float]:
    """Seconds per run. ``overlap``: as a sweep's job does to a server, each run (create, values,
    uploads, status) goes to an ``xorexp.background.Background`` and the next run starts; the last
    run's time includes waiting for all of them."""
    times = []
    config = "hidden_units: 2\nlr: 0.1\n"

    def log_run(result, plots) -> None:
        run_id = run_logging.start_run(store, result.spec, tags={"xorexp.overrides": "x"}, with_params=False)
        run_logging.log_result(
            store,
            run_id,
            result,
            blobs=plots,
            files={"config.yaml": config},
            dirs={".hydra": hydra_dir},
            params_logged=False,
            model=False,  # as in a sweep: only single runs and a sweep's best run carry the MLflow model
        )

    background = Background() if overlap else None
    for i, (result, plots) in enumerate(zip(results, pngs, strict=True)):
        start = time.perf_counter()
        if background is None:
            log_run(result, plots)
        else:
            background.submit(i, functools.partial(log_run, result, plots))
        times.append(time.perf_counter() - start)
    if background is not None:
        start = time.perf_counter()
        background.settle()
        background.close()
        times[-1] += time.perf_counter() - start
    return times


def store_calls_per_run(store, results, pngs, hydra_dir: Path) -> dict[str, float]:
    """SQL transactions (commits) and statements per logged run, counted with SQLAlchemy's engine
    events in this process (MLflow's ORM and xorexp's SQL writer alike)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    counts: Counter[str] = Counter()

    def on_commit(_connection) -> None:
        counts["transactions"] += 1

    def on_statement(*_args) -> None:
        counts["statements"] += 1

    event.listen(Engine, "commit", on_commit)
    event.listen(Engine, "before_cursor_execute", on_statement)
    try:
        log_all(store, results, pngs, hydra_dir)
    finally:
        event.remove(Engine, "commit", on_commit)
        event.remove(Engine, "before_cursor_execute", on_statement)
    return {name: counts[name] / len(results) for name in ("transactions", "statements")}


def _log_share(args) -> None:
    uri, results, pngs, hydra_dir, overlap = args
    store = open_store(uri, "bench")
    log_all(store, results, pngs, Path(hydra_dir), overlap)


def _warm(uri: str) -> int:
    open_store(uri, "bench")  # MLflow imported and the store's engine made before timing
    return os.getpid()


def log_in_processes(
    uri: str, results, pngs, hydra_dir: Path, processes: int, overlap: bool = False
) -> float:
    """Wall seconds per run with the runs split over ``processes`` concurrent writers."""
    shares = [
        (uri, results[i::processes], pngs[i::processes], str(hydra_dir), overlap) for i in range(processes)
    ]
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn")) as pool:
        list(pool.map(_warm, [uri] * processes))  # workers started and imported before timing
        start = time.perf_counter()
        list(pool.map(_log_share, shares))
        return (time.perf_counter() - start) / len(results)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    specs = [RunSpec(lr=LRS[i % len(LRS)], seed=i, iterations=10_000) for i in range(args.runs)]
    long_specs = [RunSpec(lr=LRS[i % len(LRS)], seed=i) for i in range(min(args.runs, 50))]
    results, long_results = train(specs), train(long_specs)
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        root = Path(tmp)
        hydra_dir = root / "hydra"
        hydra_dir.mkdir()
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            (hydra_dir / name).write_text("x: 1\n" * 40)
        start = time.perf_counter()
        pngs = [chunks.render_run_plots(r, run_name(r.spec)) for r in results]
        render_ms = 1000 * (time.perf_counter() - start) / len(results)
        long_pngs = [chunks.render_run_plots(r, run_name(r.spec)) for r in long_results]

        store = open_store(f"sqlite:///{root / 'mlflow.db'}", "bench")
        log_all(store, results[:5], pngs[:5], hydra_dir)  # warm-up: first calls create tables' caches
        times = log_all(store, results, pngs, hydra_dir)
        long_times = log_all(store, long_results, long_pngs, hydra_dir)
        parallel = log_in_processes(store.uri, results, pngs, hydra_dir, 2)
        calls = store_calls_per_run(store, results[:10], pngs[:10], hydra_dir)

    def describe(ts: list[float]) -> str:
        ms = [1000 * t for t in ts]
        p90 = sorted(ms)[int(0.9 * len(ms))]
        mean, median = statistics.mean(ms), statistics.median(ms)
        return f"mean {mean:6.1f} ms, median {median:6.1f} ms, p90 {p90:6.1f} ms"

    print(f"render two PNGs           : {render_ms:6.1f} ms per run (one process)")
    print(f"log, 100-point trace      : {describe(times)}  over {len(times)} runs")
    print(f"log, 1,500-point trace    : {describe(long_times)}  over {len(long_times)} runs")
    print(f"log, 2 processes at once  : {1000 * parallel:6.1f} ms wall per run over {len(results)} runs")
    both = statistics.mean(times) * 1000 + render_ms
    print(f"log + render, 100 points  : {both:6.1f} ms per run in one process")
    print(
        f"sqlite per run            : {calls['transactions']:g} transactions, "
        f"{calls['statements']:g} SQL statements"
    )


if __name__ == "__main__":
    main()
