"""A sweep's summary across seeds, from the store: logged on the parent at the sweep's end, and
printed again for any past sweep by ``python -m xorexp.report``.

    python -m xorexp.report [--experiment NAME] [--tracking-uri URI] [--run PARENT_ID]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from xorexp import plots, summary, tracking

log = logging.getLogger(__name__)

REUSED_FILE = "reused_runs.json"  # artifact of the parent: ids of FINISHED runs reused by the sweep
TAG_BEST_MODEL = "xorexp.best_model"  # on the parent: runs:/<best run id>/model


def collect(store: tracking.Store, parent_run_id: str, reused_ids: list[str] | None = None) -> list:
    """The sweep's runs as summary records: its children plus the runs it reused."""
    if reused_ids is None:
        text = tracking.read_text_artifact(store, parent_run_id, REUSED_FILE)
        reused_ids = json.loads(text) if text else []
    records = [summary.record_from_mlflow_run(run) for run in tracking.sweep_children(store, parent_run_id)]
    for run in tracking.get_runs(store, reused_ids):
        records.append(dataclasses.replace(summary.record_from_mlflow_run(run), reused=True))
    return records


def loss_curves(store: tracking.Store, groups: list, known: Mapping[str, tuple] | None = None) -> list:
    """Per group, the loss traces of its runs as (steps, values) pairs: from ``known`` (run id ->
    trace, e.g. what the sweep's jobs wrote in their job dirs) where there, else from the store
    (one query per run: ~8 s for 1,000 runs)."""
    known = known or {}
    return [
        [
            known[run_id] if run_id in known else tracking.loss_history(store, run_id)
            for run_id in group.run_ids
        ]
        for group in groups
    ]


def log_best_model(store: tracking.Store, run_id: str) -> bool:
    """Give the sweep's best run its MLflow model (from its ``model/params.npz``); False if it cannot."""
    try:
        if tracking.has_model(store, run_id):
            return True
        with tempfile.TemporaryDirectory(prefix="xorexp-") as tmp:
            try:
                params_file = store.client.download_artifacts(run_id, tracking.PARAMS_ARTIFACT, tmp)
            except Exception:
                log.warning("best run %s has no %s: no model logged", run_id, tracking.PARAMS_ARTIFACT)
                return False
            tracking.log_model(store, run_id, params_file)
        return True
    except Exception:
        log.warning("could not log the model of best run %s", run_id, exc_info=True)
        return False


def finish_sweep(
    store: tracking.Store,
    parent_run_id: str,
    reused_ids: list[str],
    traces: Mapping[str, tuple] | None = None,
    lost: int = 0,
) -> int:
    """Summarise the sweep, print the table, log it on the parent and end the parent.

    ``traces`` (run id -> (steps, values)) spares reading loss histories back from the store.

    ``lost``: jobs the launcher ran that left no run at all (counted as failed, never dropped).

    Returns the number of failed jobs (the parent ends FAILED when there are any).
    """
    records = collect(store, parent_run_id, reused_ids)
    groups = summary.summarize(records)
    print(summary.format_table(groups), flush=True)
    failed = sum(group.n_failed for group in groups) + lost
    if lost:
        print(f"{lost} job(s) of the sweep left no run in the store (see the sweep's log)", flush=True)
    metrics: dict[str, float] = {"runs": float(len(records)), "failed_jobs": float(failed)}
    tags = {tracking.TAG_REUSED: str(len(reused_ids))}
    best = groups[0] if groups and groups[0].n_seeds else None
    if best is not None:
        names = ("success_rate", "final_loss_median", "final_loss_mean", "final_loss_std", "solved_at_median")
        for name in names:
            value = getattr(best, name)
            if value is not None:
                metrics[f"best.{name}"] = float(value)
        tags["xorexp.best_run_id"] = best.best_run_id or ""
        tags.update({f"xorexp.best.{key}": value for key, value in best.params.items()})
        if best.best_run_id and log_best_model(store, best.best_run_id):
            tags[TAG_BEST_MODEL] = f"runs:/{best.best_run_id}/{tracking.MODEL_NAME}"
    figures = {}
    if records:
        figures = plots.sweep_figures(groups, records, loss_curves(store, groups, traces))
    tracking.log_to_run(
        store,
        parent_run_id,
        metrics=metrics,
        tags=tags,
        files={"summary.csv": summary.to_csv(groups), REUSED_FILE: json.dumps(reused_ids)},
        figures=figures,
    )
    tracking.finish_run(store, parent_run_id, "FAILED" if failed else "FINISHED")
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xorexp.report", description="Print the summary across seeds of a past sweep."
    )
    parser.add_argument("--experiment", default="xorexp", help="experiment name (default: xorexp)")
    parser.add_argument("--tracking-uri", default=None, help="default: sqlite:///./mlflow.db")
    parser.add_argument("--run", default=None, help="parent run id of the sweep (default: the latest sweep)")
    args = parser.parse_args(argv)
    uri = tracking.resolve_uri(args.tracking_uri, Path.cwd())
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        print(f"xorexp.report: no store at {uri}", file=sys.stderr)
        return 2
    try:
        store = tracking.open_store(uri, args.experiment)
    except tracking.StoreError as error:
        print(f"xorexp.report: {error}", file=sys.stderr)
        return 2
    parent = args.run or tracking.latest_sweep(store)
    if parent is None:
        print(f"xorexp.report: no sweep in experiment {args.experiment!r} of {uri}", file=sys.stderr)
        return 2
    run = store.client.get_run(parent)
    print(f"sweep {run.info.run_name} (run {parent}, {run.info.status})")
    print(summary.format_table(summary.summarize(collect(store, parent))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
