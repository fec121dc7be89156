"""Wall time of a sweep against a real ``mlflow server`` vs the embedded sqlite store.

    python benchmarks/bench_tracking_server.py [--seeds 100] [--iterations 2000] [--repeats 2]

Starts ``mlflow server`` on 127.0.0.1 (sqlite backend, artifacts served by the server) in a temp dir,
runs ``python -m xorexp -m seed=range(0,N) iterations=I`` against it and into a fresh local sqlite
store, alternating, and prints each wall time and the ratio. Asserts nothing.
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

from tests.mlflow_server import start_server, stop_server  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
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
        finally:
            stop_server(server)
    local, remote = statistics.median(times["local sqlite"]), statistics.median(times["server"])
    print(f"{args.seeds}-run sweep, {args.iterations} iterations: local sqlite {local:.2f} s, "
          f"server {remote:.2f} s (median of {args.repeats}); server/local = {remote / local:.2f}")


if __name__ == "__main__":
    main()
