"""A past sweep's summary across seeds, printed from the store (the table its end printed).

    python -m xorexp.report [--experiment NAME] [--tracking-uri URI] [--run PARENT_ID | --list]

The report only reads: it never creates a store, an experiment or a file. Bad input (no store, a
corrupt one, an unknown experiment or run, a run that is not a sweep) is one line on stderr, exit 2.
(What a sweep logs on its parent at its end is ``xorexp.sweep_end``.)
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from xorexp import summary, sweep_records
from xorexp.tracking import reading
from xorexp.tracking.health import check_server
from xorexp.tracking.opened_store import Store
from xorexp.tracking.store import open_store
from xorexp.tracking.tags import ROLE_SWEEP, TAG_PARENT, TAG_ROLE
from xorexp.tracking.uri import SQLITE_PREFIX, StoreError, redact, resolve_uri, store_kind


def check_readable(uri: str) -> None:
    """Refuse, before MLflow touches it, a sqlite store that is missing, not a database or not
    MLflow's: MLflow would create (or add its tables to) the file. Raises StoreError."""
    if store_kind(uri) == "server":
        check_server(uri)
        return
    if not uri.startswith(SQLITE_PREFIX):
        return
    path = Path(uri[len(SQLITE_PREFIX) :])
    if not path.is_file():
        raise StoreError(
            f"no store at {uri}: run a sweep here first, or pass --tracking-uri of an existing store"
        )
    try:
        connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            rows = connection.execute("select name from sqlite_master where type='table'").fetchall()
        finally:
            connection.close()
        tables = {row[0] for row in rows}
    except sqlite3.Error as error:
        raise StoreError(f"store {uri} is not a readable sqlite database ({error})") from None
    if not {"experiments", "runs", "alembic_version"} <= tables:
        raise StoreError(f"store {uri} is not an MLflow database (no MLflow tables in it)")


def open_sweep(store: Store, run_id: str) -> Any:
    """The parent run of a sweep, by id; StoreError when there is no such run or it is no sweep."""
    try:
        run = reading.get_run(store, run_id)
    except Exception:
        raise StoreError(
            f"no run {run_id!r} in {redact(store.uri)}: list the sweeps with --list"
        ) from None
    if run.data.tags.get(TAG_ROLE) != ROLE_SWEEP:
        parent = run.data.tags.get(TAG_PARENT)
        hint = f"its sweep is run {parent}" if parent else "list the sweeps with --list"
        raise StoreError(f"run {run_id} is not a sweep (no {TAG_ROLE} tag): {hint}")
    if run.info.experiment_id != store.experiment_id:
        raise StoreError(
            f"run {run_id} is not in the experiment given: pass its experiment with --experiment"
        )
    return run


def sweep_list(store: Store) -> list[str]:
    """One line per sweep of the experiment, newest first: id, start, runs, status, name."""
    parents = reading.sweeps(store)
    parents.sort(key=lambda run: run.info.start_time or 0, reverse=True)
    rows = []
    for run in parents:
        runs = run.data.metrics.get("runs")
        if runs is None:  # not finished: count its children so far
            runs = len(reading.sweep_children(store, run.info.run_id))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((run.info.start_time or 0) / 1000))
        rows.append([run.info.run_id, started, str(int(runs)), run.info.status, run.info.run_name or ""])
    if not rows:
        return ["no sweep in this experiment"]
    header = ["run id", "started", "runs", "status", "name"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    widths[-1] = 0  # the name goes last, unpadded
    aligned = []
    for row in [header, *rows]:
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [c.rjust(w) if i == 2 else c.ljust(w) for i, (c, w) in pairs]
        aligned.append("  ".join(cells).rstrip())
    return aligned


def main(argv: list[str] | None = None) -> int:
    """``python -m xorexp.report``: 0 with the table printed, 2 with one line on stderr."""
    parser = argparse.ArgumentParser(
        prog="python -m xorexp.report", description="Print the summary across seeds of a past sweep."
    )
    parser.add_argument("--experiment", default="xorexp", help="experiment name (default: xorexp)")
    parser.add_argument("--tracking-uri", default=None, help="default: sqlite:///./mlflow.db")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--run", default=None, help="parent run id of the sweep (default: the latest sweep)")
    which.add_argument("--list", action="store_true", help="list the experiment's sweeps, newest first")
    args = parser.parse_args(argv)
    uri = resolve_uri(args.tracking_uri, Path.cwd())
    try:
        return _report(uri, args)
    except StoreError as error:
        print(f"xorexp: {error}", file=sys.stderr)
    except Exception as error:  # a store MLflow cannot read: one line, never a traceback
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        print(f"xorexp: cannot read the store {redact(uri)} ({reason}): "
              "check --tracking-uri", file=sys.stderr)
    return 2


def _report(uri: str, args: argparse.Namespace) -> int:
    check_readable(uri)
    store = open_store(uri, args.experiment, create=False)
    if args.list:
        print("\n".join(sweep_list(store)))
        return 0
    if args.run:
        run = open_sweep(store, args.run)
    else:
        parent = reading.latest_sweep(store)
        if parent is None:
            raise StoreError(
                f"no sweep in experiment {args.experiment!r} of {redact(uri)}: run one with -m"
            )
        run = reading.get_run(store, parent)
    parent = run.info.run_id
    print(f"sweep {run.info.run_name} (run {parent}, {run.info.status})")
    print(summary.format_table(summary.summarize(sweep_records.collect(store, parent))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
