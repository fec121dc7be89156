"""A sweep's children read from an SQL store's tables (``xorexp.tracking.sql_reader``) are what
MLflow's ``search_runs`` gives, field by field: real sqlite stores here, PostgreSQL in
tests/test_postgres.py."""

from __future__ import annotations

import math
import sys

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from xorexp.tracking import reading, sql_reader
from xorexp.tracking.store import open_store
from xorexp.tracking.tags import TAG_PARENT


def _seen(runs) -> dict:
    """run id -> (status, params, tags, metrics as reprs: NaN equals NaN)."""
    return {
        run.info.run_id: (
            run.info.status,
            dict(run.data.params),
            dict(run.data.tags),
            {key: repr(value) for key, value in run.data.metrics.items()},
        )
        for run in runs
    }


def fill_and_compare(uri: str) -> dict:
    """Runs of two sweeps (values of every kind, each status, a deleted run, a run of the same
    parent in another experiment) written by MLflow; returns what both readers see of the first
    sweep, after checking they agree."""
    store = open_store(uri, "reader")
    client = MlflowClient(uri)
    other_experiment = client.create_experiment("elsewhere")
    parents = [client.create_run(store.experiment_id, run_name=f"sweep{i}").info.run_id for i in range(2)]
    made = {}
    for i, status in enumerate(["FINISHED", "FAILED", "RUNNING", "FINISHED", "KILLED"]):
        parent = parents[i % 2]
        run_id = client.create_run(store.experiment_id, tags={TAG_PARENT: parent, "n": str(i)}).info.run_id
        client.log_batch(
            run_id,
            metrics=[
                Metric("final_loss", 0.5 / (i + 1), 1, 0),
                Metric("loss", 1.0, 1, 0), Metric("loss", 0.25 * i, 2, 100),  # latest: step 100
                Metric("odd", [math.nan, math.inf, -math.inf, 1e-300, 0.0][i], 1, 0),
            ],
            params=[Param("lr", str(0.1 * (i + 1))), Param("seed", str(i))],
            tags=[RunTag("xorexp.outcome", ["solved", "stuck", "diverged", "solved", "stuck"][i])],
        )
        if status != "RUNNING":
            client.set_terminated(run_id, status)
        made[run_id] = parent
    deleted = next(run_id for run_id, parent in made.items() if parent == parents[0])
    client.delete_run(deleted)
    client.create_run(other_experiment, tags={TAG_PARENT: parents[0]})
    store.client.create_run(store.experiment_id, tags={"no parent": "x"})

    fast = sql_reader.sweep_children(store, parents[0])
    assert fast is not None
    mlflow_view = reading.search_all(store, f"tags.`{TAG_PARENT}` = '{parents[0]}'")
    assert _seen(fast) == _seen(mlflow_view)
    assert reading.sweep_children(store, parents[0]) == fast  # the path the summary takes
    expected = {run_id for run_id, parent in made.items() if parent == parents[0]} - {deleted}
    assert set(_seen(fast)) == expected
    return _seen(fast)


def test_a_sweeps_children_read_from_the_tables_are_mlflows(tmp_path):
    seen = fill_and_compare(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert sorted(status for status, *_ in seen.values()) == ["KILLED", "RUNNING"]  # 0 deleted, 2, 4
    metrics = [values[3] for values in seen.values()]
    assert {m["loss"] for m in metrics} == {repr(0.5), repr(1.0)}  # the latest step's value
    assert {m["odd"] for m in metrics} == {repr(-sys.float_info.max), repr(0.0)}  # as MLflow stores -inf


def test_a_store_of_another_kind_is_left_to_mlflow(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'mlflow.db'}", "reader")
    server_like = type(store)("http://127.0.0.1:9/", store.experiment_id, store.client)
    assert sql_reader.sweep_children(server_like, "0" * 32) is None
