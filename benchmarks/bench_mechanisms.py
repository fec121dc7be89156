"""What each of xorexp's speed-ups is worth: the user's sweeps with each one off in turn.

    python benchmarks/bench_mechanisms.py [--rounds 2] [--sizes 1000,100,3] [--only name,name]
    python benchmarks/bench_mechanisms.py --server [--latency 20] --only background --sizes 100,3

For each sweep size (1,000 runs: 10 lr x 100 seeds at 10,000 iterations; 100 runs: 10 lr x 10 seeds;
3 runs: ``python -m xorexp -m lr=0.01,0.1,1`` at its default 150,000 iterations), the command runs
with every mechanism on ("all on") and with each one off (``XOREXP_OFF=<name>``, see
``xorexp/mechanisms.py``), in rounds: within a round, the variants run one after the other in a
shuffled order, each in a fresh directory holding a store with one run (as a user's second command),
so a slow spell of this shared machine falls on all of them alike. ``background`` only acts on
sweeps that log to a tracking server: ``--server`` starts a real ``mlflow server`` on 127.0.0.1
(``tests.mlflow_server``) and every command logs to it, ``--latency MS`` puts a loopback proxy
adding MS per request in front of it (a far-away server). Both are stopped at the end.

Prints, per size and variant, the median wall time and its ratio to "all on" (> 1: the mechanism
saves time), and a verdict per mechanism (kept: saves >= 5 % on a size, or >= 0.5 s on the 3-run
command), then the median CPU seconds of each command with its children (steadier than wall time on
this shared machine). Asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xorexp.mechanisms import MECHANISMS, OFF_ENV  # noqa: E402

LRS = "0.01,0.02,0.05,0.1,0.2,0.5,1,2,5,10"
SWEEPS = {
    1000: ["-m", f"lr={LRS}", "seed=range(0,100)", "iterations=10000"],
    100: ["-m", f"lr={LRS}", "seed=range(0,10)", "iterations=10000"],
    3: ["-m", "lr=0.01,0.1,1"],
}


def timed(cwd: Path, args: list[str], off: str | None, uri: str | None = None) -> tuple[float, float]:
    """Wall seconds of the command, and the CPU seconds (user + system) of it and the children it waited
    for (its workers, the child training ahead, the sweep end's forks): steadier than wall time here."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop(OFF_ENV, None)
    if off:
        env[OFF_ENV] = off
    if uri:
        args = [*args, f"tracking.uri={uri}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "xorexp", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    took = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"{off or 'all on'}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
    return took, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sizes", default="1000,100,3")
    parser.add_argument("--only", default="", help="mechanisms to switch off (default: each in turn)")
    parser.add_argument("--server", action="store_true", help="log to a real mlflow server on 127.0.0.1")
    parser.add_argument("--latency", type=float, default=0.0, help="ms per request added by a proxy")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        uri = _server(stack, args.latency) if args.server else None
        _measure(args, uri)


def _server(stack: contextlib.ExitStack, latency_ms: float) -> str:
    """A real ``mlflow server`` on 127.0.0.1 (behind a delaying proxy when ``latency_ms``), stopped
    when ``stack`` closes."""
    from tests.mlflow_server import Proxy, start_server, stop_server

    root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="xorexp-mechanisms-server-")))
    server = start_server(root / "server")
    stack.callback(stop_server, server)
    print(f"mlflow server at {server.uri}" + (f", {latency_ms:g} ms per request" if latency_ms else ""))
    if not latency_ms:
        return server.uri
    proxy = Proxy(server.uri, latency=latency_ms / 1000)
    stack.callback(proxy.close)
    return proxy.uri


def _copy_store(seed: Path, cwd: Path) -> None:
    """A copy of ``seed``'s store in ``cwd``, its artifact locations pointed at ``cwd`` (MLflow keeps them
    absolute: the copy would otherwise write every sweep's artifacts into ``seed``)."""
    shutil.copytree(seed, cwd)
    db = cwd / "mlflow.db"
    if db.exists():
        with contextlib.closing(sqlite3.connect(db)) as conn, conn:
            for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
                conn.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (str(seed), str(cwd)))


def _measure(args: argparse.Namespace, uri: str | None) -> None:
    names = [n for n in args.only.split(",") if n] or list(MECHANISMS)
    variants: list[str | None] = [None, *names]
    sizes = [int(s) for s in args.sizes.split(",")]
    times: dict[tuple[int, str | None], list[float]] = {}
    cpus: dict[tuple[int, str | None], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="xorexp-mechanisms-") as tmp:
        seed_store = Path(tmp) / "seed"
        seed_store.mkdir()
        timed(seed_store, ["iterations=100"], None, uri)  # a store with one run, copied for each command
        for round_no in range(args.rounds):
            for size in sizes:
                order = variants[:]
                random.Random(round_no * 7919 + size).shuffle(order)
                for off in order:
                    cwd = Path(tmp) / f"r{round_no}-{size}-{off or 'on'}"
                    _copy_store(seed_store, cwd)
                    wall, cpu = timed(cwd, SWEEPS[size], off, uri)
                    times.setdefault((size, off), []).append(wall)
                    cpus.setdefault((size, off), []).append(cpu)
                    shutil.rmtree(cwd, ignore_errors=True)
                    print(f"round {round_no + 1} {size:>5} runs {off or 'all on':<20} "
                          f"{wall:7.2f} s  cpu {cpu:7.2f} s", flush=True)
    print()
    print(f"{'mechanism off':<20}" + "".join(f"{f'{s} runs':>22}" for s in sizes) + "   verdict")
    base = {s: statistics.median(times[(s, None)]) for s in sizes}
    print(f"{'(all on)':<20}" + "".join(f"{base[s]:>14.2f} s      " for s in sizes))
    for name in names:
        cells, kept = [], False
        for s in sizes:
            median = statistics.median(times[(s, name)])
            ratio = median / base[s]
            kept = kept or ratio >= 1.05 or (s == 3 and median - base[s] >= 0.5)
            cells.append(f"{median:>9.2f} s ({ratio:4.2f}x)")
        verdict = "kept" if kept else "below the bar"
        print(f"{name:<20}" + "".join(f"{c:>22}" for c in cells) + f"   {verdict}")
    print(f"\nmedians of {args.rounds} round(s); ratio = off / all on (> 1: the mechanism saves time)")
    print(f"\n{'CPU s, mechanism off':<22}" + "".join(f"{f'{s} runs':>22}" for s in sizes))
    for name in [None, *names]:
        cells = []
        for s in sizes:
            median = statistics.median(cpus[(s, name)])
            cells.append(f"{median:>9.2f} s ({median / statistics.median(cpus[(s, None)]):4.2f}x)")
        print(f"{name or '(all on)':<22}" + "".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
