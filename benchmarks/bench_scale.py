"""Runs logged per second with 1, 2 and 4 writer processes, per tracking backend.

    python benchmarks/bench_scale.py [--runs 40] [--writers 1,2,4] [--server-workers 2]

Backends: (a) an embedded sqlite store, (b) ``mlflow server`` on sqlite, (c) ``mlflow server`` on
PostgreSQL, (d) PostgreSQL directly (``tracking.uri=postgresql://...``). PostgreSQL is Debian's, started
in a temp dir with its default settings (fsync on); every server listens on 127.0.0.1 and is stopped at
the end. Each writer is a process that opens the store, waits for the common start, then logs ``--runs``
finished runs the way a sweep's job does (``run_logging.start_run`` + ``run_logging.log_result``: params, a
3-point loss trace, summary metrics, outcome tag, predictions.json and model/params.npz; no plots, no
model), and reports its wall and CPU time. Prints runs/s per backend and writer count, ratios, and the
CPU per run of the writers, of the MLflow server (all its processes) and of PostgreSQL (postmaster and
its backends). Asserts nothing: the machine may be shared, figures vary.
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
sys.path.insert(0, str(ROOT))

from tests.mlflow_server import group_members, start_server, stop_server  # noqa: E402
from tests.postgres_server import start_postgres  # noqa: E402

EXPERIMENT = "bench-scale"
TICKS = os.sysconf("SC_CLK_TCK")


def writer(uri: str, runs: int, first_seed: int) -> None:
    """One writer process: open the store, say ready, wait for 'go' on stdin, log ``runs`` runs."""
    from xorexp import run_logging
    from xorexp.tracking.store import open_store
    from xorexp.train import RunSpec, train

    store = open_store(uri, EXPERIMENT)
    specs = [RunSpec(hidden_units=2, lr=0.5, iterations=300, seed=first_seed + i, trace_every=100)
             for i in range(runs)]
    results = train(specs)
    print("ready", flush=True)
    sys.stdin.readline()
    wall, cpu = time.perf_counter(), time.process_time()
    for spec, result in zip(specs, results, strict=True):
        run_id = run_logging.start_run(store, spec, with_params=False)
        run_logging.log_result(store, run_id, result, params_logged=False, model=False)
    print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}), flush=True)


def cpu_seconds(pids: list[int], *, children: bool = True) -> float:
    """CPU time of these processes (with their reaped children's), from /proc."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()  # fields[11:15]: utime stime cutime cstime
        total += int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if children else 0)
    return total / TICKS


def postgres_pids(postmaster: int) -> list[int]:
    """The postmaster and its live children (backends, background processes)."""
    pids = [postmaster]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2 :].split()[1]) == postmaster:
            pids.append(int(stat.parent.name))
    return pids


def measure(uri: str, n_writers: int, runs: int, first_seed: int, cpu_probe) -> dict:
    """Start ``n_writers`` writers on ``uri``; returns runs/s and CPU seconds per run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [
        subprocess.Popen([sys.executable, __file__, "--writer", uri, str(runs), str(first_seed + i * runs)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for i in range(n_writers)
    ]
    for proc in procs:
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"a writer on {uri} failed to start (exit {proc.wait()})")
    before = cpu_probe()
    start = time.perf_counter()
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    reports = []
    for proc in procs:
        line = proc.stdout.readline()
        if proc.wait() != 0 or not line:
            raise SystemExit(f"a writer on {uri} failed (exit {proc.returncode})")
        reports.append(json.loads(line))
    wall = time.perf_counter() - start
    total = n_writers * runs
    return {
        "runs_per_s": total / wall,
        "writer_cpu_ms": 1000 * sum(r["cpu"] for r in reports) / total,
        "backend_cpu_ms": {key: 1000 * (value - before[key]) / total for key, value in cpu_probe().items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=40, help="runs per writer")
    parser.add_argument("--writers", default="1,2,4")
    parser.add_argument("--server-workers", type=int, default=2)
    parser.add_argument("--writer", nargs=3, metavar=("URI", "RUNS", "FIRST_SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.writer:
        writer(args.writer[0], int(args.writer[1]), int(args.writer[2]))
        return
    from xorexp.tracking.store import open_store

    counts = [int(n) for n in args.writers.split(",")]
    results: dict[str, dict[int, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        root = Path(tmp)
        postgres = start_postgres()
        servers = []
        try:
            pg_cpu = lambda: {"postgres": cpu_seconds(postgres_pids(postgres.postmaster_pid()))}  # noqa: E731
            sqlite_server = start_server(root / "server-sqlite", workers=args.server_workers)
            servers.append(sqlite_server)
            pg_server = start_server(root / "server-pg", workers=args.server_workers,
                                     backend=postgres.create_database("served"))
            servers.append(pg_server)
            direct = postgres.create_database("direct")

            def server_cpu(server):
                return lambda: {"server": cpu_seconds(group_members(server.pgid))}

            backends = {
                "sqlite": (f"sqlite:///{root / 'local' / 'mlflow.db'}", lambda: {}),
                "server on sqlite": (sqlite_server.uri, server_cpu(sqlite_server)),
                "server on postgresql": (
                    pg_server.uri, lambda: {**server_cpu(pg_server)(), **pg_cpu()}),
                "postgresql direct": (direct, pg_cpu),
            }
            (root / "local").mkdir()
            for name, (uri, probe) in backends.items():
                cwd = os.getcwd()
                os.chdir(root / "local")  # the direct store's artifacts go to the temp dir
                try:
                    open_store(uri, EXPERIMENT)  # schema and experiment made once, up front
                finally:
                    os.chdir(cwd)
                results[name] = {}
                for n in counts:
                    results[name][n] = measure(uri, n, args.runs, 1000 * n, probe)
                    print(f"  {name}, {n} writer(s): {results[name][n]['runs_per_s']:.1f} runs/s", flush=True)
        finally:
            for server in servers:
                stop_server(server)
            postgres.stop()

    print(f"\nruns logged per second ({args.runs} runs per writer; servers with {args.server_workers} "
          f"workers; {os.cpu_count()} CPUs)")
    print(f"{'backend':<22}" + "".join(f"{f'{n} writer(s)':>14}" for n in counts) + f"{'scaling':>10}")
    for name, by_n in results.items():
        row = "".join(f"{by_n[n]['runs_per_s']:>14.1f}" for n in counts)
        print(f"{name:<22}{row}{by_n[counts[-1]]['runs_per_s'] / by_n[counts[0]]['runs_per_s']:>9.2f}x")
    base = results["sqlite"]
    print("\nratio to the embedded sqlite store at the same writer count")
    for name, by_n in results.items():
        ratios = [by_n[n]["runs_per_s"] / base[n]["runs_per_s"] for n in counts]
        print(f"{name:<22}" + "".join(f"{ratio:>14.2f}" for ratio in ratios))
    print("\nCPU ms per run (at 1 writer; in brackets at the most writers)")
    for name, by_n in results.items():
        one, most = by_n[counts[0]], by_n[counts[-1]]
        parts = [f"writer {one['writer_cpu_ms']:.1f} ({most['writer_cpu_ms']:.1f})"]
        parts += [f"{key} {value:.1f} ({most['backend_cpu_ms'][key]:.1f})"
                  for key, value in one["backend_cpu_ms"].items()]
        print(f"{name:<22}" + ", ".join(parts))


if __name__ == "__main__":
    main()
