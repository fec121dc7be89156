"""A sweep's end: its summary across seeds printed and logged on the parent run (metrics, the best
group's values as tags, the description, ``summary.csv``, the figures, the best run's MLflow model),
then the parent ended FINISHED, or FAILED when any job failed.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from xorexp import summary, sweep_records, sweep_text
from xorexp.tracking import artifacts, reading, writing
from xorexp.tracking.tags import (
    MODEL_NAME,
    PARAMS_ARTIFACT,
    REUSED_ARTIFACT,
    TAG_BEST_MODEL,
    TAG_BEST_PREFIX,
    TAG_BEST_RUN,
    TAG_NOTE,
    TAG_REUSED,
)

if TYPE_CHECKING:
    from xorexp.tracking.opened_store import Store

log = logging.getLogger(__name__)

# the best group's values logged on the parent as metrics best.<name>
BEST_METRICS = ("success_rate", "final_loss_median", "final_loss_mean", "final_loss_std", "solved_at_median")


class BestModel:
    """The sweep's best run's MLflow model, made from its ``model/params.npz``: the model directory
    saved (``save``: the params read from the store, then MLflow's ``save_model``, costly the first
    time in a process, most of it MLflow checking the environment's packages), then logged to the
    run (``log``). Whatever fails is a warning: the sweep's parent then names no model."""

    PRESENT = "present"  # ``save``'s answer when the run has its model already

    def __init__(self, store: Store, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self.tmp = tempfile.TemporaryDirectory(prefix="xorexp-model-")  # its owner removes it

    def save(self) -> str | None:
        """The saved model directory's path (in a new folder of its own), ``PRESENT``, or None when
        the run's params cannot be had (a warning says why)."""
        from xorexp import pyfunc  # MLflow's model code and pandas: only when a sweep ends

        try:
            if pyfunc.has_model(self.store, self.run_id):
                return self.PRESENT
            with reading.downloaded(self.store, self.run_id, PARAMS_ARTIFACT) as params_file:
                if params_file is None:
                    log.warning("best run %s has no %s: no model logged", self.run_id, PARAMS_ARTIFACT)
                    return None
                folder = Path(tempfile.mkdtemp(dir=self.tmp.name))
                return str(pyfunc.save_model(folder, self.run_id, params_file))
        except Exception:
            log.warning("could not log the model of best run %s", self.run_id, exc_info=True)
            return None

    def log(self) -> bool:
        """Save the model and log it; whether the run has a model."""
        saved = self.save()
        if saved is None or saved == self.PRESENT:
            return saved is not None
        try:
            artifacts.log_files(self.store, self.run_id, dirs={MODEL_NAME: Path(saved)})
            return True
        except Exception:
            log.warning("could not log the model of best run %s", self.run_id, exc_info=True)
            return False


def finish_sweep(
    store: Store,
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
    records = sweep_records.collect(store, parent_run_id, reused_ids)
    groups = summary.summarize(records)
    print(summary.format_table(groups), flush=True)
    failed = sum(group.n_failed for group in groups) + lost
    if lost:
        print(f"{lost} job(s) of the sweep left no run in the store (see the sweep's log)", flush=True)
    metrics: dict[str, float] = {"runs": float(len(records)), "failed_jobs": float(failed)}
    tags = {TAG_REUSED: str(len(reused_ids))}
    best = groups[0] if groups and groups[0].n_seeds else None
    figures = {}
    if records:
        from xorexp import sweep_plots  # matplotlib: loaded when a sweep ends, not by every command

        makers = sweep_plots.sweep_figure_makers(
            groups, records, sweep_records.loss_curves(store, groups, traces)
        )
        figures = {path: sweep_plots.png(make()) for path, make in makers.items()}
    if best is not None:
        for name in BEST_METRICS:
            value = getattr(best, name)
            if value is not None:
                metrics[f"best.{name}"] = float(value)
        tags[TAG_BEST_RUN] = best.best_run_id or ""
        tags.update({f"{TAG_BEST_PREFIX}{key}": sweep_text.group_value(best, key) for key in best.params})
    tags[TAG_NOTE] = sweep_text.sweep_description(store.experiment_id, groups)
    if best is not None and best.best_run_id:
        model = BestModel(store, best.best_run_id)
        try:
            if model.log():
                tags[TAG_BEST_MODEL] = f"runs:/{model.run_id}/{MODEL_NAME}"
        finally:
            model.tmp.cleanup()
    writing.log_to_run(
        store,
        parent_run_id,
        metrics=metrics,
        tags=tags,
        files={"summary.csv": summary.to_csv(groups), REUSED_ARTIFACT: json.dumps(reused_ids)},
        blobs=figures,
    )
    status = "FAILED" if failed else "FINISHED"
    writing.finish_run(store, parent_run_id, status)
    print(f"sweep: parent run {parent_run_id}, {len(records)} runs, {failed} failed: {status}")
    if best is not None and best.best_run_id:
        config = " ".join(f"{key}={sweep_text.group_value(best, key)}" for key in best.params)
        rate = f"{best.n_solved}/{best.n_seeds} solved"
        print(f"best: run {best.best_run_id} ({config}; {rate})", flush=True)
    return failed

