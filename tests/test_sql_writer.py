"""The SQL writer writes the rows MLflow's own calls write (real sqlite stores, row by row), and
hands every case it cannot vouch for to MLflow's path."""

from __future__ import annotations

import pytest

from xorexp.tracking import sql_writer, writing
from xorexp.tracking.store import open_store
from xorexp.train import RunSpec, train

TABLES = ("runs", "tags", "params", "metrics", "latest_metrics")
TIME_TAGS = ("xorexp.pid",)


def log_one(uri: str, result, *, with_params: bool, experiment: str = "rows") -> str:
    store = open_store(uri, experiment)
    run_id = writing.start_run(
        store, result.spec, tags={"xorexp.overrides": "lr=0.5"}, with_params=with_params
    )
    writing.log_result(store, run_id, result, files={"config.yaml": "lr: 0.5\n"}, params_logged=with_params)
    return run_id


def rows(uri: str, run_id: str) -> dict[str, list[tuple]]:
    """Every row of the run in MLflow's run tables (any SQL store), its id and times made comparable."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri)
    out = {}
    try:
        with engine.connect() as connection:
            for table in TABLES:
                result = connection.execute(
                    sqlalchemy.text(f"SELECT * FROM {table} WHERE run_uuid = :id"), {"id": run_id}
                )
                found = []
                for row in result.mappings():
                    record = dict(row)
                    record["run_uuid"] = "RUN"
                    for key in ("start_time", "end_time", "timestamp"):
                        if record.get(key) is not None:
                            record[key] = "TIME"
                    if table == "runs":
                        record["artifact_uri"] = (
                            record["artifact_uri"].replace(run_id, "RUN").split("/mlartifacts/")[1]
                        )
                    if table == "tags" and record["key"] in TIME_TAGS:
                        record["value"] = "PID"
                    found.append(tuple(sorted(record.items())))
                out[table] = sorted(found)
    finally:
        engine.dispose()
    return out


def compare_with_mlflow(fast_uri: str, mlflow_uri: str, result, monkeypatch, *, with_params: bool) -> dict:
    """Log ``result`` through the SQL writer into one store and through MLflow's client calls into
    the other; the two runs' rows must be equal. Returns MLflow's rows."""
    assert sql_writer.writer_for(open_store(fast_uri, "rows")) is not None  # the writer's path, not MLflow's
    fast_id = log_one(fast_uri, result, with_params=with_params)
    with monkeypatch.context() as patch:
        patch.setattr(sql_writer, "writer_for", lambda store: None)  # MLflow's own calls
        mlflow_id = log_one(mlflow_uri, result, with_params=with_params)
    reference = rows(mlflow_uri, mlflow_id)
    assert rows(fast_uri, fast_id) == reference
    return reference


@pytest.fixture(scope="module")
def result():
    [trained] = train([RunSpec(hidden_units=3, lr=0.5, seed=4, iterations=3000, trace_every=50)])
    return trained


@pytest.mark.parametrize("with_params", [True, False])
@pytest.mark.floor
def test_a_run_has_the_rows_mlflow_writes(tmp_path, monkeypatch, result, with_params):
    (tmp_path / "fast").mkdir(), (tmp_path / "mlflow").mkdir()
    reference = compare_with_mlflow(
        f"sqlite:///{tmp_path / 'fast' / 'mlflow.db'}",
        f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}",
        result,
        monkeypatch,
        with_params=with_params,
    )
    # the trace, final_loss, accuracy, steps and (it solved) solved_at
    assert result.solved_at is not None
    assert len(reference["metrics"]) == len(result.loss_trace) + 4
    assert len(reference["params"]) == 6
    assert dict(row for row in reference["runs"][0])["status"] == "FINISHED"
    # the artifacts are the same files
    fast_files = sorted(
        p.relative_to(tmp_path / "fast" / "mlartifacts").parts[2:]
        for p in (tmp_path / "fast" / "mlartifacts").rglob("*")
        if p.is_file()
    )
    mlflow_files = sorted(
        p.relative_to(tmp_path / "mlflow" / "mlartifacts").parts[2:]
        for p in (tmp_path / "mlflow" / "mlartifacts").rglob("*")
        if p.is_file()
    )
    assert fast_files == mlflow_files and fast_files


def test_the_latest_value_of_a_key_is_mlflows_latest(tmp_path):
    """latest_metrics keeps, per key, the highest (step, timestamp, value), as MLflow does."""
    from mlflow.entities import Metric

    store = open_store(f"sqlite:///{tmp_path / 'mlflow.db'}", "latest")
    writer = sql_writer.writer_for(store)
    assert writer is not None
    run_id, _ = writer.create("r", {}, {}, 1000)
    metrics = [
        Metric("m", 3.0, 10, 2),
        Metric("m", 1.0, 20, 2),
        Metric("m", 9.0, 5, 1),
        Metric("m", 1.0, 20, 2),
    ]
    assert writer.finish(run_id, metrics, {}, {}, "FINISHED", 2000)
    run = store.client.get_run(run_id)
    assert run.data.metrics == {"m": 1.0}  # step 2, timestamp 20 beats step 2, timestamp 10
    assert len(store.client.get_metric_history(run_id, "m")) == 3  # the repeated metric once
    assert run.info.status == "FINISHED" and run.info.end_time == 2000


def test_a_run_that_is_not_running_is_left_to_mlflow(tmp_path, result):
    store = open_store(f"sqlite:///{tmp_path / 'mlflow.db'}", "ended")
    writer = sql_writer.writer_for(store)
    run_id, _ = writer.create("r", {"a": "1"}, {"p": "1"}, 1000)
    writing.finish_run(store, run_id, "KILLED")
    from mlflow.entities import Metric

    assert not writer.finish(run_id, [Metric("m", 1.0, 1, 0)], {}, {"t": "x"}, "FINISHED", 2000)
    run = store.client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.metrics == {} and "t" not in run.data.tags
    # a value already there: nothing written, MLflow's path merges it
    other, _ = writer.create("r2", {}, {"p": "1"}, 1000)
    assert not writer.finish(other, [], {"p": "1"}, {}, "FINISHED", 2000)
    assert store.client.get_run(other).info.status == "RUNNING"


def test_a_deleted_experiment_gets_mlflows_refusal(tmp_path, result):
    from mlflow.exceptions import MlflowException

    store = open_store(f"sqlite:///{tmp_path / 'mlflow.db'}", "gone")
    writer = sql_writer.writer_for(store)
    assert writer is not None
    store.client.delete_experiment(store.experiment_id)
    assert writer.create("r", {}, {}, 1000) is None
    with pytest.raises(MlflowException, match="active"):
        writing.start_run(store, result.spec)
    assert store.client.search_runs([store.experiment_id], run_view_type=3) == []


def test_a_store_of_another_kind_has_no_sql_writer(tmp_path):
    from xorexp.tracking.store import Store

    assert sql_writer.writer_for(Store("http://127.0.0.1:1", "0", client=None)) is None
