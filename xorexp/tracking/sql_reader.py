"""Reading a sweep's runs straight from an SQL store's tables (sqlite, PostgreSQL), for its summary.

MLflow's ``search_runs`` builds a full ``Run`` entity per run through its ORM: a second of
a 1,000-run sweep's end spent in the launching process alone, while the summary reads five things
of each run. ``sweep_children`` reads the same rows with four plain queries on MLflow's own tables
(the ones ``sql_writer`` writes), for the runs ``search_runs`` would return (the parent's children,
active, of the store's experiment), and gives each as a ``SweepRun`` with the attributes of a
``Run`` that the summary reads: ``info.run_id``, ``info.status``, ``data.params``, ``data.tags``,
``data.metrics`` (the latest value of each, NaN where MLflow stores one). A test compares them with
MLflow's, field by field. Not an SQL store, or tables this module was not written for: None, and the
caller asks MLflow.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xorexp.tracking import sql_writer
from xorexp.tracking.tags import TAG_PARENT

if TYPE_CHECKING:
    from xorexp.tracking.opened_store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepRunInfo:
    run_id: str
    status: str


@dataclass(frozen=True)
class SweepRunData:
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepRun:
    """What the summary reads of a run, with the attribute names of ``mlflow.entities.Run``."""

    info: SweepRunInfo
    data: SweepRunData


def sweep_children(store: Store, parent_run_id: str) -> list[SweepRun] | None:
    """The active runs of the store's experiment whose parent is ``parent_run_id``, as MLflow's
    ``search_runs`` finds them (in no particular order); None when this store is not one to read
    here (the caller then goes through MLflow)."""
    writer = sql_writer.tables_for(store)
    if writer is None:
        return None
    from mlflow.entities.lifecycle_stage import LifecycleStage
    from sqlalchemy import and_, select

    tables = writer.tables  # MLflow's own, checked by the writer against the columns it knows
    runs, tags, params, latest = (tables[name] for name in ("runs", "tags", "params", "latest_metrics"))
    children = (
        select(runs.c.run_uuid)
        .join(tags, and_(tags.c.run_uuid == runs.c.run_uuid, tags.c.key == TAG_PARENT))
        .where(
            tags.c.value == parent_run_id,
            runs.c.experiment_id == int(store.experiment_id),
            runs.c.lifecycle_stage == LifecycleStage.ACTIVE,
        )
    )
    with writer.engine.connect() as connection:
        statuses = dict(
            connection.execute(
                select(runs.c.run_uuid, runs.c.status).where(runs.c.run_uuid.in_(children))
            ).all()
        )
        found = {name: defaultdict(dict) for name in ("params", "tags", "metrics")}
        for name, table in (("params", params), ("tags", tags)):
            query = select(table.c.run_uuid, table.c.key, table.c.value).where(table.c.run_uuid.in_(children))
            for run_id, key, value in connection.execute(query):
                found[name][run_id][key] = value
        query = select(latest.c.run_uuid, latest.c.key, latest.c.value, latest.c.is_nan).where(
            latest.c.run_uuid.in_(children)
        )
        for run_id, key, value, is_nan in connection.execute(query):
            found["metrics"][run_id][key] = math.nan if is_nan else float(value)
    return [
        SweepRun(
            SweepRunInfo(run_id, status),
            SweepRunData(
                dict(found["params"].get(run_id, {})),
                dict(found["tags"].get(run_id, {})),
                dict(found["metrics"].get(run_id, {})),
            ),
        )
        for run_id, status in statuses.items()
    ]
