"""A sweep read back from the store as the summary's inputs: its runs as ``summary.RunRecord``s
(its children, orphans left out, plus the runs it reused) and their loss traces. Nothing here
writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from xorexp.params import RESULT_KEYS
from xorexp.summary import GroupSummary, RunRecord
from xorexp.tracking import reading
from xorexp.tracking.tags import REUSED_ARTIFACT, TAG_ORPHAN, TAG_OUTCOME
from xorexp.train import OUTCOMES

if TYPE_CHECKING:
    from xorexp.tracking.opened_store import Store


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def record_from_mlflow_run(run: Any) -> RunRecord:
    """A RunRecord from an ``mlflow.entities.Run``, read by duck typing (anything with the same
    attributes will do)."""
    info, data = run.info, run.data
    params = data.params or {}
    metrics = data.metrics or {}
    tags = data.tags or {}
    outcome = tags.get(TAG_OUTCOME)
    status = info.status
    return RunRecord(
        run_id=str(info.run_id),
        params={k: str(params[k]) for k in RESULT_KEYS if k in params},
        outcome=outcome if outcome in OUTCOMES else None,
        status=status if isinstance(status, str) else str(status),
        final_loss=_finite(metrics.get("final_loss")),
        solved_at=_finite(metrics.get("solved_at")),
    )


def collect(store: Store, parent_run_id: str, reused_ids: list[str] | None = None) -> list[RunRecord]:
    """The sweep's runs as summary records: its children plus the runs it reused (listed on the
    parent when not given)."""
    if reused_ids is None:
        text = reading.read_text_artifact(store, parent_run_id, REUSED_ARTIFACT)
        reused_ids = json.loads(text) if text else []
    children = reading.sweep_children(store, parent_run_id)
    records = [record_from_mlflow_run(run) for run in children if TAG_ORPHAN not in run.data.tags]
    for run in reading.get_runs(store, reused_ids):
        records.append(dataclasses.replace(record_from_mlflow_run(run), reused=True))
    return records


def loss_curves(store: Store, groups: list[GroupSummary], known: Mapping[str, tuple] | None = None) -> list:
    """Per group, the loss traces of its runs as (steps, values) pairs: from ``known`` (run id ->
    trace, e.g. what the sweep's jobs wrote in their job dirs) where there, else from the store
    (one query per run)."""
    known = known or {}
    return [
        [
            known[run_id] if run_id in known else reading.loss_history(store, run_id)
            for run_id in group.run_ids
        ]
        for group in groups
    ]
