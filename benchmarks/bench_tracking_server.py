"""Wall time of a sweep against a real ``mlflow server`` vs the embedded sqlite store, and with latency.

    python benchmarks/bench_tracking_server.py [--seeds 100] [--iterations 2000] [--repeats 2]
                                               [--latencies 0,20,100] [--latency-runs 32]

Starts ``mlflow server`` on 127.0.0.1 (sqlite backend, artifacts served by the server) in a temp dir,
1. runs ``python -m xorexp -m seed=range(0,N) iterations=I`` against it and into a fresh local sqlite
   store, alternating, and prints each wall time and the ratio (``--repeats 0`` skips this part);
2. a far-away server: the same server behind a loopback proxy (``tests.mlflow_server.Proxy``,
   127.0.0.1 only) that delays every request by 0, 20 and 100 ms; a sweep of ``--latency-runs`` runs
   (2 lr x seeds, 2 workers) goes through it at each latency. Prints a table: latency -> wall time,
   seconds per run, what each ms of latency adds per run, and the requests the proxy saw per run (all
   of the sweep's requests divided by its runs, and by kind);
3. the same latencies for the logging alone (no Hydra, no process start): ``--logging-runs`` finished
   runs logged as a sweep's job logs them (``bench_tracking.log_all``: start_run + log_result with
   plots, config and .hydra files) through the proxy, by 1 process and by 2 processes at once: wall
   ms per run, sequential (each run's requests before the next run's: how jobs logged before) and
   overlapped (each run in ``xorexp.background``, as a sweep's jobs to a server do now), side by
   side. Less disturbed by a loaded machine than whole sweeps.
The server and the proxy are stopped at the end. Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_tracking import log_all, log_in_processes  # noqa: E402

from tests.mlflow_server import Proxy, start_server, stop_server  # noqa: E402
from xorexp import chunks  # noqa: E402
from xorexp.params import run_name  # noqa: E402
from xorexp.tracking.store import open_store  # noqa: E402
from xorexp.train import RunSpec, train  # noqa: E402


def sweep(cwd: Path, *args: str) -> tuple[float, int]:
    """Seconds of one sweep, and the lines it printed on stdout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    cwd.mkdir(parents=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "xorexp", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed in {cwd}:\n{proc.stderr[-3000:]}")
    return elapsed, len(proc.stdout.splitlines())


def latency_table(upstream: str, root: Path, latencies_ms: list[float], args) -> None:
    seeds = max(8, args.latency_runs // 2)  # a sweep of 16 runs or more goes to the worker processes
    n_runs = 2 * seeds
    grid = ["-m", "lr=0.5,3", f"seed=range(0,{seeds})", f"iterations={args.iterations}",
            "hydra.launcher.n_jobs=2"]
    rows = []
    for ms in latencies_ms:
        proxy = Proxy(upstream, latency=ms / 1000)
        try:
            seconds, _ = sweep(root / f"latency-{ms:g}", *grid, f"tracking.uri={proxy.uri}",
                               f"tracking.experiment=latency-{ms:g}")
        finally:
            proxy.close()
        rows.append((ms, seconds, proxy.total(), dict(proxy.counts)))
        print(f"latency {ms:5g} ms: {n_runs} runs in {seconds:6.2f} s, {proxy.total()} requests")
    print(f"\n{n_runs}-run sweep (2 workers, {args.iterations} iterations) through a proxy adding latency:")
    print(f"{'latency':>9} {'wall s':>8} {'s per run':>10} {'added s per run':>16} {'requests per run':>17}")
    base = rows[0][1]
    for ms, seconds, total, _ in rows:
        print(f"{ms:>6g} ms {seconds:8.2f} {seconds / n_runs:10.3f} {(seconds - base) / n_runs:16.3f} "
              f"{total / n_runs:17.1f}")
    print("requests per run by kind (at the last latency):")
    for (method, kind), count in sorted(rows[-1][3].items(), key=lambda item: -item[1]):
        print(f"  {count / n_runs:6.2f}  {method:<5} {kind}")


def logging_table(upstream: str, root: Path, latencies_ms: list[float], n_runs: int) -> None:
    specs = [RunSpec(lr=0.5 + i % 3, seed=i, iterations=2000) for i in range(n_runs)]
    results = train(specs)
    pngs = [chunks.render_run_plots(r, run_name(r.spec)) for r in results]
    hydra_dir = root / "hydra-files"
    hydra_dir.mkdir()
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (hydra_dir / name).write_text("x: 1\n" * 40)
    print(f"\nlogging {n_runs} finished runs through the proxy (no Hydra, no process start), wall ms per"
          " run; sequential: each run's requests before the next run's, overlapped: each run's rest in"
          " xorexp.background as a sweep's jobs do:")
    print(f"{'latency':>9} {'sequential':>11} {'sequential':>11} {'overlapped':>11} {'overlapped':>11}"
          f" {'requests':>9}")
    print(f"{'':>9} {'1 process':>11} {'2 procs':>11} {'1 process':>11} {'2 procs':>11} {'per run':>9}")
    for ms in latencies_ms:
        proxy = Proxy(upstream, latency=ms / 1000)
        try:
            store = open_store(proxy.uri, f"logging-{ms:g}")
            log_all(store, results[:2], pngs[:2], hydra_dir)  # warm-up: connections, caches
            before = proxy.total()
            one = sum(log_all(store, results, pngs, hydra_dir)) / n_runs
            requests = (proxy.total() - before) / n_runs
            two = log_in_processes(proxy.uri, results, pngs, hydra_dir, 2)
            one_overlapped = sum(log_all(store, results, pngs, hydra_dir, overlap=True)) / n_runs
            two_overlapped = log_in_processes(proxy.uri, results, pngs, hydra_dir, 2, overlap=True)
        finally:
            proxy.close()
        print(f"{ms:>6g} ms {1000 * one:11.1f} {1000 * two:11.1f} {1000 * one_overlapped:11.1f}"
              f" {1000 * two_overlapped:11.1f} {requests:9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--latencies", default="0,20,100", help="ms added to each request, comma-separated")
    parser.add_argument("--latency-runs", type=int, default=32, help="runs of each sweep through the proxy")
    parser.add_argument("--logging-runs", type=int, default=40, help="runs logged without Hydra (0: skip)")
    parser.add_argument("--skip-sweeps", action="store_true", help="only the logging table of part 3")
    args = parser.parse_args()
    grid = ["-m", f"seed=range(0,{args.seeds})", f"iterations={args.iterations}"]
    times: dict[str, list[float]] = {"local sqlite": [], "server": []}
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        server = start_server(root / "server")
        print(f"mlflow server up at {server.uri} in {time.perf_counter() - start:.1f} s")
        try:
            for i in range(args.repeats):
                seconds, lines = sweep(root / f"local-{i}", *grid)
                times["local sqlite"].append(seconds)
                print(f"local sqlite  #{i}: {seconds:6.2f} s ({lines} stdout lines)")
                seconds, lines = sweep(root / f"server-{i}", *grid, f"tracking.uri={server.uri}",
                                       "tracking.experiment=bench-" + str(i))
                times["server"].append(seconds)
                print(f"server        #{i}: {seconds:6.2f} s ({lines} stdout lines)")
            latencies = [float(ms) for ms in args.latencies.split(",")]
            if not args.skip_sweeps:
                latency_table(server.uri, root, latencies, args)
            if args.logging_runs:
                logging_table(server.uri, root, latencies, args.logging_runs)
        finally:
            stop_server(server)
    if not args.repeats:
        return
    local, remote = statistics.median(times["local sqlite"]), statistics.median(times["server"])
    print(f"{args.seeds}-run sweep, {args.iterations} iterations: local sqlite {local:.2f} s, "
          f"server {remote:.2f} s (median of {args.repeats}); server/local = {remote / local:.2f}")


if __name__ == "__main__":
    main()
