"""What each of xorexp's speed-ups is worth: the user's sweeps with each one off in turn.

    python benchmarks/bench_mechanisms.py [--rounds 2] [--sizes 1000,100,3] [--only name,name]

For each sweep size (1,000 runs: 10 lr x 100 seeds at 10,000 iterations; 100 runs: 10 lr x 10 seeds;
3 runs: ``python -m xorexp -m lr=0.01,0.1,1`` at its default 150,000 iterations), the command runs
with every mechanism on ("all on") and with each one off (``XOREXP_OFF=<name>``, see
``xorexp/mechanisms.py``), in rounds: within a round, the variants run one after the other in a
shuffled order, each in a fresh directory holding a store with one run (as a user's second command),
so a slow spell of this shared machine falls on all of them alike. A mechanism whose sweeps never
log to a tracking server (``background``) shows no difference here: a server is needed for that.

Prints, per size and variant, the median wall time and its ratio to "all on" (> 1: the mechanism
saves time), and a verdict per mechanism (kept: saves >= 5 % on a size, or >= 0.5 s on the 3-run
command). Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
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


def timed(cwd: Path, args: list[str], off: str | None) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop(OFF_ENV, None)
    if off:
        env[OFF_ENV] = off
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "xorexp", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{off or 'all on'}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sizes", default="1000,100,3")
    parser.add_argument("--only", default="", help="mechanisms to switch off (default: each in turn)")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(MECHANISMS)
    variants: list[str | None] = [None, *names]
    sizes = [int(s) for s in args.sizes.split(",")]
    times: dict[tuple[int, str | None], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="xorexp-mechanisms-") as tmp:
        seed_store = Path(tmp) / "seed"
        seed_store.mkdir()
        timed(seed_store, ["iterations=100"], None)  # a store with one run, copied for each command
        for round_no in range(args.rounds):
            for size in sizes:
                order = variants[:]
                random.Random(round_no * 7919 + size).shuffle(order)
                for off in order:
                    cwd = Path(tmp) / f"r{round_no}-{size}-{off or 'on'}"
                    shutil.copytree(seed_store, cwd)
                    times.setdefault((size, off), []).append(timed(cwd, SWEEPS[size], off))
                    shutil.rmtree(cwd, ignore_errors=True)
                    print(f"round {round_no + 1} {size:>5} runs {off or 'all on':<20} "
                          f"{times[(size, off)][-1]:7.2f} s", flush=True)
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


if __name__ == "__main__":
    main()
