"""Params as typed, the sweep report (read-only, --list, one-line errors), the parent's description
and params, the UI hint, the experiment kind, and the README's search filters on a real store."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf

from tests.conftest import run_cli, runs_of, store_uri
from xorexp import report, summary, sweep_text
from xorexp.params import config_hash, param_text, result_params, run_name, spec_from_params
from xorexp.tracking.store import Store, open_store
from xorexp.tracking.tags import TAG_EXPERIMENT_KIND
from xorexp.tracking.uri import resolve_uri
from xorexp.train import RunSpec

# --- params as typed, hash and name unchanged -------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [(1.0, "1"), (0.1, "0.1"), (1e-05, "1e-05"), (10.0, "10"), (2.5e20, "2.5e+20"), (0.30000000000000004,
     "0.30000000000000004"), (7, "7")],
)
def test_param_text_is_shortest_exact_text(value, text):
    assert param_text(value) == text
    assert float(text) == value and type(value)(float(text)) == value


def test_result_params_as_typed_and_both_forms_parse_back():
    spec = RunSpec(lr=1.0, stop_loss=0.5, seed=3)
    params = result_params(spec)
    assert params["lr"] == "1" and params["stop_loss"] == "0.5" and params["seed"] == "3"
    assert spec_from_params(params) == spec
    old = {**params, "lr": "1.0", "stop_loss": "0.5"}  # as logged before
    assert spec_from_params(old) == spec


def test_config_hash_and_run_name_unchanged():
    spec = RunSpec(lr=1.0, stop_loss=0.5)
    # the canonical text of every existing run: floats by repr ("1.0")
    old_text = json.dumps(
        {"hidden_units": "2", "lr": "1.0", "iterations": "150000", "seed": "42", "trace_every": "100",
         "stop_loss": "0.5"}, sort_keys=True)  # fmt: skip
    assert config_hash(spec) == hashlib.sha256(old_text.encode()).hexdigest()[:16]
    assert config_hash(spec) == "77b1ab7b8ef6bbb8"  # computed before this change
    assert run_name(RunSpec(lr=1.0, seed=3)) == "h2-lr1-s3"
    assert run_name(RunSpec(lr=0.001, hidden_units=4, seed=0)) == "h4-lr0.001-s0"


# --- sweep params, UI hint, description ------------------------------------------------------------


def _config(task: list[str], sweeper_params: dict | None = None, preset: str | None = None, **values):
    base = {"hidden_units": 2, "lr": 0.1, "iterations": 150000, "seed": 42, "trace_every": 100,
            "stop_loss": None, **values}  # fmt: skip
    base["hydra"] = {
        "sweeper": {"params": sweeper_params or {}},
        "overrides": {"task": task},
        "runtime": {"choices": {"sweep": preset}},
    }
    return OmegaConf.create(base)


def test_sweep_params_fixed_and_swept():
    config = _config(["lr=0.01,0.1,1", "iterations=2000"], {"seed": "range(0,5)"}, iterations=2000)
    assert sweep_text.sweep_params(config) == {
        "hidden_units": "2", "lr": "choice(0.01,0.1,1)", "iterations": "2000", "seed": "range(0,5)",
        "trace_every": "100", "stop_loss": "null", "sweep": "grid",
    }  # fmt: skip
    tpe = _config([], {"lr": "tag(log, interval(0.001, 10))", "hidden_units": "range(1,9)"}, preset="tpe")
    params = sweep_text.sweep_params(tpe)
    assert params["lr"] == "tag(log, interval(0.001,10))" and params["hidden_units"] == "range(1,9)"
    assert params["sweep"] == "tpe"
    # a fixed value on the command line replaces the preset's sweep
    assert sweep_text.sweep_params(_config(["seed=7"], {"seed": "range(0,5)"}, seed=7))["seed"] == "7"


def test_ui_hint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    here = Store(resolve_uri(None, tmp_path), "3", None)
    assert sweep_text.ui_hint(here, "abc") == [
        "MLflow UI: python -m xorexp.ui",
        "then open http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning",
    ]
    other = Store("sqlite:////data/x.db", "3", None)
    assert sweep_text.ui_hint(other, "abc")[0] == "MLflow UI: python -m xorexp.ui --tracking-uri sqlite:////data/x.db"
    server = Store("http://bob:secret@127.0.0.1:5000", "3", None)
    [line] = sweep_text.ui_hint(server, "abc")
    assert "secret" not in line
    assert line.endswith("127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning")


def _record(run_id, lr, seed, outcome, loss):
    params = {"hidden_units": "2", "lr": lr, "iterations": "300", "seed": str(seed), "trace_every": "100",
              "stop_loss": "null"}  # fmt: skip
    solved_at = 100.0 if outcome == "solved" else None
    return summary.RunRecord(run_id, params, outcome, final_loss=loss, solved_at=solved_at)


def test_sweep_description_table_links_best_runs():
    groups = summary.summarize([
        _record("a1", "1.0", 0, "solved", 0.01), _record("a2", "1.0", 1, "stuck", 0.4),
        _record("b1", "0.1", 0, "stuck", 0.5), _record("b2", "0.1", 1, "diverged", None),
    ])  # fmt: skip
    text = sweep_text.sweep_description("7", groups)
    lines = text.splitlines()
    assert lines[0].startswith("**Best run:** [a1](#/experiments/7/runs/a1?workflowType=machine_learning)")
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    assert header[:3] == ["hidden_units", "lr", "iterations"] and "stuck" in header
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[4:6]]
    col = header.index
    assert [r[col("lr")] for r in rows] == ["1", "0.1"]  # as typed, best first
    assert [(r[col("solved")], r[col("stuck")], r[col("diverged")]) for r in rows] == [("1", "1", "0"),
                                                                                         ("0", "1", "1")]
    assert rows[1][col("best run")] == "[b1](#/experiments/7/runs/b1?workflowType=machine_learning)"
    assert [r[col("95 % interval")] for r in rows] == ["[0.09, 0.91]", "[0.00, 0.66]"]  # Wilson, 1/2 and 0/2


# --- a real sweep, the report CLI and the store ----------------------------------------------------


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    proc = run_cli(root, "-m", "seed=0,1", "lr=0.1,1", "iterations=300", f"hydra.sweep.dir={root / 'sweep'}")
    assert proc.returncode == 0, proc.stderr
    runs = runs_of(root)
    [parent] = [r for r in runs if r.data.tags.get("xorexp.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return root, parent, children


def _listing(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


@pytest.mark.slow
@pytest.mark.floor
def test_children_params_as_typed_and_hash_kept(swept):
    root, parent, children = swept
    assert sorted(c.data.params["lr"] for c in children) == ["0.1", "0.1", "1", "1"]
    for child in children:
        spec = spec_from_params(child.data.params)
        assert child.data.tags["xorexp.config_hash"] == config_hash(spec)


@pytest.mark.slow
def test_readme_search_filters_work(swept):
    root, parent, children = swept
    assert len(runs_of(root, filter_string="params.lr = '0.1'")) == 2
    assert len(runs_of(root, filter_string="params.lr = '1'")) == 2
    stuck = {c.info.run_id for c in children if c.data.tags["xorexp.outcome"] == "stuck"}
    assert stuck  # lr=0.1 for 300 iterations does not solve XOR
    assert {r.info.run_id for r in runs_of(root, filter_string="tags.\"xorexp.outcome\" = 'stuck'")} == stuck


@pytest.mark.slow
def test_experiment_kind_and_parent_description(swept, tmp_path):
    root, parent, children = swept
    client = MlflowClient(store_uri(root))
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags[TAG_EXPERIMENT_KIND] == "custom_model_development"
    note = parent.data.tags["mlflow.note.content"]
    best = parent.data.tags["xorexp.best_run_id"]
    assert f"(#/experiments/{experiment.experiment_id}/runs/{best}?workflowType=machine_learning)" in note
    assert "| hidden_units | lr |" in note
    assert parent.data.tags["xorexp.best.lr"] == "1"
    # an experiment made before the tag gets it when opened for writing, not when read
    uri = f"sqlite:///{tmp_path / 'old.db'}"
    old = MlflowClient(uri).create_experiment("old")
    open_store(uri, "old", create=False)
    assert TAG_EXPERIMENT_KIND not in MlflowClient(uri).get_experiment(old).tags
    open_store(uri, "old")
    tags = MlflowClient(uri).get_experiment(old).tags
    assert tags[TAG_EXPERIMENT_KIND] == "custom_model_development"


@pytest.mark.slow
@pytest.mark.floor
def test_report_list_and_latest(swept, monkeypatch, capsys):
    root, parent, children = swept
    proc = run_cli(root, "--list", module="xorexp.report")
    assert proc.returncode == 0 and proc.stderr == ""
    header, row = proc.stdout.splitlines()
    assert header.split() == ["run", "id", "started", "runs", "status", "name"]
    assert row.split()[0] == parent.info.run_id and row.split()[3:5] == ["4", "FINISHED"]
    assert row.endswith(parent.info.run_name)
    with monkeypatch.context() as patch:  # the latest sweep, in this process (python -m xorexp.report is
        patch.chdir(root)                  # run end to end by test_sweeps.py)
        assert report.main([]) == 0
    assert capsys.readouterr().out.startswith(f"sweep {parent.info.run_name} (run {parent.info.run_id}")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message", "end_to_end"),
    [
        (["--run", "BADID"], "xorexp: no run 'BADID' in sqlite:///", True),
        (["--run", "CHILD"], "is not a sweep (no xorexp.role tag): its sweep is run PARENT", False),
        (["--experiment", "X"], "xorexp: no experiment 'X' in sqlite:///", False),
        (["--tracking-uri", "sqlite:///corrupt.db"], "is not a readable sqlite database", False),
        (["--tracking-uri", "sqlite:///missing.db"], "xorexp: no store at sqlite:///", False),
    ],
)
def test_report_bad_input_is_one_line_and_writes_nothing(
    swept, args, message, end_to_end, monkeypatch, capsys
):
    """One case through the CLI in a subprocess; the others call ``report.main`` in this process."""
    root, parent, children = swept
    (root / "corrupt.db").write_bytes(b"not a database at all" * 10)
    args = [a.replace("CHILD", children[0].info.run_id) for a in args]
    before = _listing(root)
    if end_to_end:
        proc = run_cli(root, *args, module="xorexp.report")
        status, out, err = proc.returncode, proc.stdout, proc.stderr
    else:
        with monkeypatch.context() as patch:
            patch.chdir(root)
            status = report.main(args)
        out, err = capsys.readouterr()
    assert status == 2 and out == ""
    [line] = err.splitlines()
    assert line.startswith("xorexp: ") and message.replace("PARENT", parent.info.run_id) in line
    assert _listing(root) == before
    assert MlflowClient(store_uri(root)).get_experiment_by_name("X") is None


@pytest.mark.slow
def test_ui_refuses_a_missing_store_without_creating_it(tmp_path):
    proc = run_cli(tmp_path, "--port", "5999", module="xorexp.ui")
    assert proc.returncode == 2 and proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"xorexp: no store at sqlite:///{tmp_path}/mlflow.db")
    assert os.listdir(tmp_path) == []
