"""A big sweep end to end: wall time, peak memory of every process, and whether the store is complete.

    nice python benchmarks/bench_big_sweep.py [--seeds 1000] [--iterations 10000] [--keep DIR]

Runs ``python -m xorexp -m lr=<10 values> seed=range(0,N) iterations=I`` (10,000 runs by default, the
vectorized launcher, full tracking) into a fresh sqlite store in a temp dir. Meanwhile it polls every
~0.5 s the command's process tree (/proc/<pid>/status, VmHWM: the peak resident set so far; and
/proc/<pid>/smaps_rollup, Pss: the process's share of the pages it shares, e.g. a forked worker's
pages still shared with the launching process) and keeps the largest values seen per pid. Then it
prints the wall time, each process's peak RSS and largest PSS seen (launching process, workers,
others) and checks the store: FINISHED child runs, params and metrics per run, loss points. Prints
figures; asserts nothing (a missing run is reported, not raised).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LRS = "0.01,0.02,0.05,0.1,0.2,0.5,1,2,5,10"
POLL_S = 0.5


def children_of(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc: each process's parent)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _proc_kb(pid: int, file: str, field: str) -> int | None:
    """A ``field:  <n> kB`` line of /proc/<pid>/<file>, in kB (None: the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_kb(pid: int) -> int | None:
    return _proc_kb(pid, "status", "VmHWM:")


def pss_kb(pid: int) -> int | None:
    return _proc_kb(pid, "smaps_rollup", "Pss:")


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def role_of(pid: int, root: int) -> str:
    if pid == root:
        return "launching process"
    try:
        cmdline = _cmdline(pid)
        if "multiprocessing.spawn" in cmdline:
            return "worker"
        if cmdline == _cmdline(root):
            return "worker (forked)"
    except OSError:
        return "gone"
    if "resource_tracker" in cmdline:
        return "resource tracker"
    return cmdline[:60].strip() or "?"


def check_store(db: Path, expected: int, iterations: int) -> tuple[int, list[str]]:
    """The FINISHED child runs, and lines saying how complete the store is."""
    with sqlite3.connect(db) as conn:
        children = [row[0] for row in conn.execute(
            "select r.run_uuid from runs r join tags t on t.run_uuid = r.run_uuid "
            "where t.key = 'mlflow.parentRunId' and r.status = 'FINISHED'")]
        statuses = dict(conn.execute("select status, count(*) from runs group by status").fetchall())
        params = conn.execute(
            "select min(n), max(n) from (select count(*) n from params group by run_uuid "
            "having run_uuid in (select run_uuid from tags where key = 'mlflow.parentRunId'))").fetchone()
        metrics = conn.execute(
            "select min(n), max(n) from (select count(*) n from latest_metrics group by run_uuid "
            "having run_uuid in (select run_uuid from tags where key = 'mlflow.parentRunId'))").fetchone()
        loss = conn.execute(
            "select min(n), max(n), sum(n) from (select count(*) n from metrics where key = 'loss' "
            "group by run_uuid)").fetchone()
        parent = conn.execute(
            "select r.status from runs r join tags t on t.run_uuid = r.run_uuid "
            "where t.key = 'xorexp.role' and t.value = 'sweep'").fetchall()
    trace = iterations // 100
    return len(children), [
        f"FINISHED child runs: {len(children)} of {expected}; runs by status: {statuses}; "
        f"parent: {[p[0] for p in parent]}",
        f"params per child run: {params[0]}..{params[1]} (6 expected); latest metrics per child run: "
        f"{metrics[0]}..{metrics[1]} (4, or 5 when solved)",
        f"loss points per run: {loss[0]}..{loss[1]} (up to {trace}: fewer only when a run diverged), "
        f"{loss[2]} in all",
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=1000, help="seeds per lr (10 lrs)")
    parser.add_argument("--iterations", type=int, default=10000)
    parser.add_argument("--keep", type=Path, help="run in this (new) directory and keep it")
    args = parser.parse_args()
    n_runs = 10 * args.seeds
    command = [sys.executable, "-m", "xorexp", "-m", f"lr={LRS}", f"seed=range(0,{args.seeds})",
               f"iterations={args.iterations}"]
    with tempfile.TemporaryDirectory(prefix="bench-big-sweep-") as tmp:
        where = args.keep or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("MLFLOW_TRACKING_URI", None)
        peaks: dict[int, tuple[str, int]] = {}
        pss: dict[int, int] = {}
        start = time.perf_counter()
        with open(where / "bench.stdout", "wb") as out, open(where / "bench.stderr", "wb") as err:
            proc = subprocess.Popen(command, cwd=where, env=env, stdout=out, stderr=err,
                                    stdin=subprocess.DEVNULL)
            while proc.poll() is None:
                for pid in [proc.pid, *children_of(proc.pid)]:
                    rss = peak_rss_kb(pid)
                    if rss is not None and rss > peaks.get(pid, ("", 0))[1]:
                        role = peaks[pid][0] if pid in peaks else role_of(pid, proc.pid)
                        peaks[pid] = (role, rss)
                    share = pss_kb(pid)
                    if share is not None and share > pss.get(pid, 0):
                        pss[pid] = share
                time.sleep(POLL_S)
        wall = time.perf_counter() - start
        finished, lines = check_store(where / "mlflow.db", n_runs, args.iterations)
        per_run = 1000 * wall / max(finished, 1)
        print(f"{n_runs}-run sweep ({args.iterations} iterations): {wall:.1f} s wall, exit status "
              f"{proc.returncode}; {finished} runs FINISHED ({per_run:.1f} ms per FINISHED run)")
        if proc.returncode != 0:
            print((where / "bench.stderr").read_text()[-2000:])
        print("peak RSS (VmHWM) and largest PSS seen, per process:")
        for pid, (role, rss) in sorted(peaks.items(), key=lambda item: (item[1][0], item[0])):
            share = pss.get(pid, 0) / 1024
            print(f"  {role:<20} pid {pid:>7}: {rss / 1024:7.1f} MiB RSS, {share:7.1f} MiB PSS")
        for line in lines:
            print(line)


if __name__ == "__main__":
    main()
