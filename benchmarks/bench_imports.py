"""What a command pays before it does anything: importing xorexp's entry point, and a refused command.

    python benchmarks/bench_imports.py [--before REV] [--after REV] [--repeats 8]

Exports two git revisions of this checkout (default: ``main`` and ``HEAD``) to temporary directories and
alternates, ``--repeats`` times each, in fresh interpreters:
- ``python -X importtime -c "import xorexp.app"``: the cumulative import time of ``xorexp.app``, and
  which heavy packages (mlflow, matplotlib, pandas, optuna, sqlalchemy) that import loaded;
- ``python -m xorexp lr=-1`` (bad input, refused with one line and exit 2): wall time.
Prints medians, minimums and the ratio after/before; asserts nothing. Alternating the two revisions
keeps the ratio fair on a shared machine whose load changes.
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
HEAVY = ("mlflow", "matplotlib", "pandas", "optuna", "sqlalchemy")
PROBE = f"import sys, xorexp.app; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"


def export(rev: str, where: Path) -> Path:
    where.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive.stdout, check=True)
    return where


def import_time(tree: Path) -> tuple[float, str]:
    """Seconds of ``import xorexp.app`` (its cumulative line of -X importtime) and the heavy packages."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", PROBE],
        capture_output=True, text=True, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, check=True,
    )  # fmt: skip
    line = [row for row in proc.stderr.splitlines() if row.rstrip().endswith("| xorexp.app")][-1]
    return int(line.split("|")[1]) / 1e6, proc.stdout.strip() or "(none)"


def bad_input(tree: Path) -> tuple[float, int]:
    """Wall seconds and exit status of ``python -m xorexp lr=-1`` in a fresh directory."""
    with tempfile.TemporaryDirectory(prefix="bench-imports-") as cwd:
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "xorexp", "lr=-1"],
            capture_output=True, text=True, cwd=cwd, env={**os.environ, "PYTHONPATH": str(tree)},
        )  # fmt: skip
        return time.perf_counter() - start, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="main")
    parser.add_argument("--after", default="HEAD")
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-imports-") as tmp:
        labels = {"before": args.before, "after": args.after}
        trees = {f"{name} ({rev})": export(rev, Path(tmp) / name) for name, rev in labels.items()}
        imports: dict[str, list[float]] = {rev: [] for rev in trees}
        commands: dict[str, list[float]] = {rev: [] for rev in trees}
        heavy, status = {}, {}
        for _ in range(args.repeats):
            for rev, tree in trees.items():
                seconds, heavy[rev] = import_time(tree)
                imports[rev].append(seconds)
                seconds, status[rev] = bad_input(tree)
                commands[rev].append(seconds)
    for title, figures in (("import xorexp.app", imports), ("python -m xorexp lr=-1", commands)):
        print(f"{title} ({args.repeats} runs each, alternating):")
        for rev, values in figures.items():
            extra = f"; loads {heavy[rev]}" if figures is imports else f"; exit {status[rev]}"
            print(f"  {rev}: median {statistics.median(values):.3f} s, min {min(values):.3f} s{extra}")
        before, after = (statistics.median(values) for values in figures.values())
        print(f"  ratio {args.after}/{args.before} (medians): {after / before:.2f}")


if __name__ == "__main__":
    main()
