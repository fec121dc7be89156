"""The batched engine against a plain per-run NumPy loop, side by side, in one process.

Run: ``python benchmarks/bench_engine.py`` (about 1-2 minutes). Prints ns per run·iteration: the
best of a few repeats (the machine is shared; the best is the least disturbed), and the median.
Numbers are printed, never asserted: they depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from xorexp.train import RunSpec, train

X = np.array([[0, 0, 1, 1], [0, 1, 0, 1]], dtype=float)
Y = np.array([[0, 1, 1, 0]], dtype=float)


def seed_style_run(hidden_units: int, seed: int, lr: float, iterations: int) -> list[float]:
    """One run, the spec written out literally, as the seed project did: np.dot, every step a loss."""
    rng, h = np.random.RandomState(seed), hidden_units
    w1, b1, w2, b2 = rng.randn(h, 2), rng.randn(h, 1), rng.randn(1, h), rng.randn(1, 1)
    m = Y.shape[1]
    trace = []
    for e in range(iterations):
        z1 = np.dot(w1, X) + b1
        h = 1 / (1 + np.exp(-z1))
        z2 = np.dot(w2, h) + b2
        yhat = 1 / (1 + np.exp(-z2))
        loss = -np.sum(Y * np.log(yhat) + (1 - Y) * np.log(1 - yhat)) / m
        if e % 100 == 0:
            trace.append(loss)
        dz2 = (yhat - Y) / m
        dw2 = np.dot(dz2, h.T)
        db2 = np.sum(dz2, axis=1, keepdims=True)
        dh = np.dot(w2.T, dz2)
        dz1 = dh * h * (1 - h)
        dw1 = np.dot(dz1, X.T)
        db1 = np.sum(dz1, axis=1, keepdims=True)
        w1 -= lr * dw1
        b1 -= lr * db1
        w2 -= lr * dw2
        b2 -= lr * db2
    return trace


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def iterations_for(seconds: float, per_iteration: float, lo: int = 200, hi: int = 200_000) -> int:
    return int(min(hi, max(lo, seconds / per_iteration)) // 100 * 100)


def engine_ns(runs: int, hidden_units: int, seconds: float, repeats: int, chunk_size: int | None = None):
    """(best, median) ns per run·iteration of ``train`` on ``runs`` runs, end to end (init included)."""
    kwargs = {} if chunk_size is None else {"chunk_size": chunk_size}

    def specs(iterations: int) -> list[RunSpec]:
        return [RunSpec(hidden_units=hidden_units, seed=s, iterations=iterations) for s in range(runs)]

    probe = specs(500)
    [warm] = timed(lambda: train(probe, **kwargs), 1)  # warm-up, and an estimate to size the timing
    iterations = iterations_for(seconds, warm / 500)
    work = specs(iterations)
    times = timed(lambda: train(work, **kwargs), repeats)
    scale = 1e9 / (runs * iterations)
    return min(times) * scale, statistics.median(times) * scale, iterations


def loop_ns(hidden_units: int, seconds: float, repeats: int):
    """(best, median) ns per run·iteration of the per-run loop; per run, so independent of R."""
    [warm] = timed(lambda: seed_style_run(hidden_units, 0, 0.1, 200), 1)
    iterations = iterations_for(seconds, warm / 200, hi=20_000)
    times = timed(lambda: seed_style_run(hidden_units, 1, 0.1, iterations), repeats)
    scale = 1e9 / iterations
    return min(times) * scale, statistics.median(times) * scale, iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.8, help="target duration of one timed call")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    seconds, repeats = args.seconds, args.repeats

    print(f"ns per run·iteration, best of {repeats} [median], lr=0.1. The engine is timed end to end")
    print("(init, training, results); the loop on one run, as its cost per run does not depend on R.\n")
    print(f"{'h':>3} {'R':>6} {'iters':>7} {'loop ns':>18} {'engine ns':>18} {'loop/engine':>12}")
    for hidden_units in (2, 8, 32):
        loop_best, loop_median, loop_iters = loop_ns(hidden_units, seconds / 2, repeats)
        for runs in (1, 10, 100, 1000):
            best, median, iterations = engine_ns(runs, hidden_units, seconds, repeats)
            print(
                f"{hidden_units:>3} {runs:>6} {iterations:>7} {loop_best:>8.0f} [{loop_median:>7.0f}]"
                f" {best:>8.1f} [{median:>7.1f}] {loop_best / best:>11.0f}x"
            )

    chunk_cases = [
        (2, 1000, (125, 250, 500, 1000)),
        (2, 4000, (1000, 2000, 4000)),
        (32, 2000, (250, 500, 1000, 2000)),
    ]
    for hidden_units, runs, chunk_sizes in chunk_cases:
        print(f"\nchunk_size at h={hidden_units}, R={runs} runs in total: train(specs, chunk_size=...)")
        print(f"{'chunk_size':>10} {'engine ns':>18}")
        for chunk_size in chunk_sizes:
            best, median, _ = engine_ns(runs, hidden_units, seconds, repeats, chunk_size=chunk_size)
            print(f"{chunk_size:>10} {best:>8.1f} [{median:>7.1f}]")


if __name__ == "__main__":
    main()
