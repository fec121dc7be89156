"""Writing a run straight into an SQL store's tables (sqlite, PostgreSQL): the rows MLflow's own
calls would write, in two short transactions instead of MLflow's ORM round trips.

MLflow's ``create_run`` + ``log_batch`` + ``set_terminated`` on an SQL store cost tens of ms of
SQLAlchemy ORM work per run and hold sqlite's write lock across it (``log_batch`` alone opens one
session per kind of value). A run written here is two transactions of plain inserts on MLflow's
own tables (``mlflow.store.tracking.dbmodels``), with MLflow's own validation of the values:

- ``create``: the run RUNNING, with its tags (and ``mlflow.runName``) and params;
- ``finish``: its metrics, ``latest_metrics``, extra tags and its terminal status, at once.

The rows are those of MLflow's client calls (a test compares both, row by row). Whenever this
path cannot vouch for that (another kind of store, tables whose columns differ from those it was
written for, a run that is not RUNNING, an inactive experiment, a row already there), it returns
None/False and the caller goes through ``MlflowClient``, which writes or raises as MLflow does.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from xorexp import mechanisms
from xorexp.compat import mlflow as compat_mlflow

if TYPE_CHECKING:
    from mlflow.entities import Metric

    from xorexp.tracking.opened_store import Store

log = logging.getLogger(__name__)

# the columns of MLflow's tables this writer fills; a different MLflow schema -> MLflow's own path
COLUMNS = {
    "runs": (
        "run_uuid name source_type source_name entry_point_name user_id status start_time end_time "
        "deleted_time source_version lifecycle_stage artifact_uri experiment_id"
    ),
    "tags": "key value run_uuid",
    "params": "key value run_uuid",
    "metrics": "key value timestamp step is_nan run_uuid",
    "latest_metrics": "key value timestamp step is_nan run_uuid",
}
DIALECTS = ("sqlite", "postgresql")


class SqlRunWriter:
    """Runs of one experiment of one SQL store, written with MLflow's tables and validation."""

    def __init__(self, engine, tables: dict, experiment_id: str, artifact_location: str) -> None:
        self.engine = engine
        self.tables = tables
        self.experiment_id = experiment_id
        self.artifact_location = artifact_location

    def create(
        self, run_name: str, tags: Mapping[str, str], params: Mapping[str, str], start_time: int
    ) -> tuple[str, str] | None:
        """A new RUNNING run with its tags and params; (run id, artifact URI), or None when the
        experiment is not active (MLflow's ``create_run`` then says why)."""
        from mlflow.entities import Param, RunStatus, SourceType
        from mlflow.entities.lifecycle_stage import LifecycleStage
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, MLFLOW_USER
        from mlflow.utils.uri import append_to_uri_path

        checked = compat_mlflow.validated_batch([], [Param(k, v) for k, v in params.items()], [])
        if checked is None:
            return None
        _, checked_params, _ = checked
        run_id = uuid.uuid4().hex
        artifact_uri = append_to_uri_path(self.artifact_location, run_id, "artifacts")
        all_tags = dict(tags)
        all_tags.setdefault(MLFLOW_RUN_NAME, run_name)
        runs = self.tables["runs"]
        with self.engine.begin() as connection:
            # the first statement writes: sqlite takes its write lock here, waiting when busy
            connection.execute(
                runs.insert(),
                {
                    "run_uuid": run_id,
                    "name": run_name,
                    "source_type": SourceType.to_string(SourceType.UNKNOWN),
                    "source_name": "",
                    "entry_point_name": "",
                    "user_id": all_tags.get(MLFLOW_USER, "unknown"),
                    "status": RunStatus.to_string(RunStatus.RUNNING),
                    "start_time": start_time,
                    "end_time": None,
                    "deleted_time": None,
                    "source_version": "",
                    "lifecycle_stage": LifecycleStage.ACTIVE,
                    "artifact_uri": artifact_uri,
                    "experiment_id": int(self.experiment_id),
                },
            )
            if not self._experiment_active(connection):
                connection.rollback()
                return None
            self._insert(connection, "tags", [{"key": k, "value": v} for k, v in all_tags.items()], run_id)
            self._insert(
                connection, "params", [{"key": p.key, "value": p.value} for p in checked_params], run_id
            )
        return run_id, artifact_uri

    def finish(
        self,
        run_id: str,
        metrics: Sequence[Metric],
        params: Mapping[str, str],
        tags: Mapping[str, str],
        status: str,
        end_time: int,
    ) -> bool:
        """The run's metrics, params, tags and terminal status in one transaction; False (nothing
        written) when the run is not a RUNNING run of an active experiment or a value is already
        there. (No per-request limits: MLflow's 1,000 metrics per ``log_batch`` bound a request.)"""
        import sqlalchemy
        from mlflow.entities import Param, RunTag
        from mlflow.entities.lifecycle_stage import LifecycleStage

        checked = compat_mlflow.validated_batch(
            list(metrics), [Param(k, v) for k, v in params.items()], [RunTag(k, v) for k, v in tags.items()]
        )
        if checked is None:
            return False
        checked_metrics, checked_params, checked_tags = checked
        rows, latest = [], {}
        for metric in dict.fromkeys(checked_metrics):  # MLflow drops repeated identical metrics
            row = _metric_row(metric)
            rows.append(row)
            known = latest.get(metric.key)
            if known is None or _recency(row) > _recency(known):
                latest[metric.key] = row
        runs = self.tables["runs"]
        try:
            with self.engine.begin() as connection:
                updated = connection.execute(
                    runs.update()
                    .where(
                        runs.c.run_uuid == run_id,
                        runs.c.status == "RUNNING",
                        runs.c.lifecycle_stage == LifecycleStage.ACTIVE,
                    )
                    .values(status=status, end_time=end_time)
                )
                if updated.rowcount != 1 or not self._experiment_active(connection):
                    connection.rollback()
                    return False
                self._insert(connection, "metrics", rows, run_id)
                self._insert(connection, "latest_metrics", list(latest.values()), run_id)
                self._insert(
                    connection, "params", [{"key": p.key, "value": p.value} for p in checked_params], run_id
                )
                self._insert(
                    connection, "tags", [{"key": t.key, "value": t.value} for t in checked_tags], run_id
                )
        except sqlalchemy.exc.IntegrityError:  # a row already there: MLflow's path merges or refuses
            log.debug("run %s: values already in the store, logged through MLflow", run_id, exc_info=True)
            return False
        return True

    def _experiment_active(self, connection) -> bool:
        from mlflow.entities.lifecycle_stage import LifecycleStage

        experiments = self.tables["experiments"]
        stage = connection.execute(
            experiments.select()
            .with_only_columns(experiments.c.lifecycle_stage)
            .where(experiments.c.experiment_id == int(self.experiment_id))
        ).scalar()
        return stage == LifecycleStage.ACTIVE

    def _insert(self, connection, table: str, rows: list[dict], run_id: str) -> None:
        if rows:
            connection.execute(self.tables[table].insert(), [{**row, "run_uuid": run_id} for row in rows])


def _metric_row(metric: Metric) -> dict:
    """MLflow's row of a metric (xorexp logs finite values only; MLflow stores NaN as 0 flagged
    ``is_nan`` and infinities as the largest float, as here)."""
    value = float(metric.value)
    is_nan = math.isnan(value)
    if is_nan:
        value = 0.0
    elif math.isinf(value):
        value = math.copysign(sys.float_info.max, value)
    return {
        "key": metric.key,
        "value": value,
        "timestamp": metric.timestamp,
        "step": metric.step,
        "is_nan": is_nan,
    }


def _recency(row: dict) -> tuple:
    """MLflow's order of a key's values for ``latest_metrics``: step, then timestamp, then value."""
    return row["step"], row["timestamp"], row["value"]


def writer_for(store: Store) -> SqlRunWriter | None:
    """The store's writer when it is an SQL store whose tables this module knows, else None."""
    return _writer(store.uri, store.experiment_id) if mechanisms.on("sql_writer") else None


@functools.lru_cache(maxsize=8)
def _writer(uri: str, experiment_id: str) -> SqlRunWriter | None:
    from xorexp.tracking.uri import store_kind

    if store_kind(uri) not in ("sqlite", "database"):
        return None
    from mlflow.store.tracking.dbmodels.models import (
        SqlExperiment,
        SqlLatestMetric,
        SqlMetric,
        SqlParam,
        SqlRun,
        SqlTag,
    )
    tables = {
        model.__tablename__: model.__table__
        for model in (SqlRun, SqlTag, SqlParam, SqlMetric, SqlLatestMetric)
    }
    for name, columns in COLUMNS.items():
        if [column.name for column in tables[name].columns] != columns.split():
            log.info("MLflow's %s table differs from what xorexp writes: runs go through MLflow", name)
            return None
    tables["experiments"] = SqlExperiment.__table__
    if compat_mlflow.validated_batch([], [], []) is None:  # MLflow's checks cannot be applied here
        return None
    engine = compat_mlflow.shared_engine(uri)
    if engine.dialect.name not in DIALECTS:
        return None
    with engine.connect() as connection:
        location = connection.execute(
            SqlExperiment.__table__.select()
            .with_only_columns(SqlExperiment.__table__.c.artifact_location)
            .where(SqlExperiment.__table__.c.experiment_id == int(experiment_id))
        ).scalar()
    if location is None:
        return None
    return SqlRunWriter(engine, tables, experiment_id, location)
