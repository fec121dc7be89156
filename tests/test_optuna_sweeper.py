"""xorexp's Optuna sweeper (hydra/sweeper=xorexp_optuna): unit checks of its core, then the real CLI in
subprocesses writing real sqlite stores (MLflow's and Optuna's) under tmp_path."""

from __future__ import annotations

import math

import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.xorexp_optuna_sweeper._space import (
    SweepConfigError,
    overrides_parser,
    parse_search_space,
    value_text,
)
from hydra_plugins.xorexp_optuna_sweeper._study import trial_result
from tests.conftest import run_cli, runs_of

FAST = ("iterations=300",)


def test_search_space_from_config_and_command_line():
    space = parse_search_space(
        {"lr": "tag(log, interval(0.001, 10))", "hidden_units": "interval(1, 8)", "seed": 3},
        ["hidden_units=range(2,10,2)", "stop_loss=choice(0.01,0.1)", "+x=interval(0.0,1)", "iterations=300"],
    )
    by_name = {p.name: p for p in space.params}
    assert by_name["lr"].distribution == FloatDistribution(0.001, 10.0, log=True)
    assert by_name["hidden_units"].distribution == IntDistribution(2, 8, step=2)  # the command line wins
    assert by_name["hidden_units"].grid_values == (2, 4, 6, 8)
    assert by_name["stop_loss"].distribution == CategoricalDistribution((0.01, 0.1))
    assert by_name["x"].key == "+x" and by_name["x"].distribution == FloatDistribution(0.0, 1.0)
    assert set(space.fixed) == {"seed=3", "iterations=300"}
    ints = parse_search_space(
        {"h": "interval(1, 8)", "f": "interval(1, 8.0)", "c": "int(interval(1.0, 8.0))"}, []
    )
    assert [p.distribution for p in ints.params] == [
        IntDistribution(1, 8),
        FloatDistribution(1.0, 8.0),
        IntDistribution(1, 8),
    ]


@pytest.mark.parametrize(
    "params,grid,message",
    [
        ({"lr": "interval(0.5"}, False, "hydra.sweeper.params.lr='interval(0.5': no viable alternative"),
        ({"lr": "intervl(0.5, 1)"}, False, "Unknown function 'intervl'"),
        ({"lr": "tag(log, interval(0, 1))"}, False, "hydra.sweeper.params.lr="),
        ({"lr": "tag(fast, interval(1, 2))"}, False, "unknown tag ['fast']"),
        ({"lr": "interval(0.1, 1)"}, True, "sampler grid needs choice(...) or range(...)"),
    ],
)
def test_bad_search_space_is_one_clear_error(params, grid, message):
    with pytest.raises(SweepConfigError) as caught:
        space = parse_search_space(params, [])
        if grid:
            space.grid()
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "value", [0.001, 1e-05, 8.589512894663638, 3, -2, True, None, "abc", "a b", "1.5", "it's", "null"]
)
def test_value_text_parses_back_to_the_value(value):
    parsed = overrides_parser().parse_override(f"k={value_text(value)}").value()
    assert parsed == value and type(parsed) is type(value)


def _job(value=None, error=None) -> JobReturn:
    ret = JobReturn()
    ret.status = JobStatus.FAILED if error else JobStatus.COMPLETED
    ret.return_value = error or value
    return ret


def test_what_is_told_for_each_job_result():
    assert trial_result(_job(0.25), "minimize")[:2] == (TrialState.COMPLETE, 0.25)
    # a diverged run's loss is the worst possible value: a COMPLETE trial the sampler learns from
    assert trial_result(_job(math.inf), "minimize")[:2] == (TrialState.COMPLETE, math.inf)
    assert trial_result(_job(-math.inf), "maximize")[:2] == (TrialState.COMPLETE, -math.inf)
    for bad, direction in [
        (math.inf, "maximize"),
        (-math.inf, "minimize"),
        (math.nan, "minimize"),
        ("x", "minimize"),
        (None, "minimize"),
    ]:
        assert trial_result(_job(bad), direction)[0] is TrialState.FAIL
    state, value, text = trial_result(_job(error=RuntimeError("boom")), "minimize")
    assert state is TrialState.FAIL and value is None and "boom" in text


# --- the real CLI ------------------------------------------------------------------------------------


def _sweep(tmp_path, *args, sweep_dir="sweep"):
    proc = run_cli(
        tmp_path,
        "sweep=tpe",
        *FAST,
        f"hydra.sweep.dir={tmp_path / sweep_dir}",
        "hydra.sweeper.storage=sqlite:///optuna.db",
        *args,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def _children_by_parent(tmp_path):
    runs = runs_of(tmp_path)
    parents = {r.info.run_id: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    children = {pid: [] for pid in parents}
    for run in runs:
        if run.data.tags.get("mlflow.parentRunId") in children:
            children[run.data.tags["mlflow.parentRunId"]].append(run)
    return parents, children


def _best_value_printed(stdout: str) -> float:
    [line] = [line for line in stdout.splitlines() if line.startswith("Best value: ")]
    return float(line.removeprefix("Best value: "))


@pytest.mark.slow
def test_tpe_sweep_reports_the_best_child_and_a_rerun_continues_the_study(tmp_path):
    first = _sweep(tmp_path, "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=3")
    assert first.stdout.count("Launching 3 jobs, vectorized") == 2  # one launcher call per batch

    parents, children = _children_by_parent(tmp_path)
    [(parent_id, parent)] = parents.items()
    kids = children[parent_id]
    assert len(kids) == 6 and all(r.info.status == "FINISHED" for r in kids)
    assert sorted(int(r.data.tags.get("xorexp.trial", -1)) for r in kids) == list(range(6))

    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    losses = {int(r.data.tags["xorexp.trial"]): r.data.metrics.get("final_loss", math.inf) for r in kids}
    best = min(losses, key=losses.get)
    assert results["best_value"] == losses[best] == _best_value_printed(first.stdout)
    assert results["best_trial"] == best and results["n_trials"] == 6
    assert results["storage"] == f"sqlite:///{tmp_path / 'optuna.db'}"
    best_run = next(r for r in kids if int(r.data.tags["xorexp.trial"]) == best)
    assert best_run.data.params["hidden_units"] == str(results["best_params"]["hidden_units"])
    assert float(best_run.data.params["lr"]) == results["best_params"]["lr"]
    assert parent.data.metrics["best.value"] == losses[best]
    assert parent.data.tags["xorexp.best_trial"] == str(best)
    assert float(parent.data.params["best.lr"]) == results["best_params"]["lr"]

    second = _sweep(tmp_path, "hydra.sweeper.n_trials=6", sweep_dir="sweep2")
    assert "6 trials so far" in second.stdout
    parents, children = _children_by_parent(tmp_path)
    [new_parent] = set(parents) - {parent_id}
    assert sorted(int(r.data.tags.get("xorexp.trial", -1)) for r in children[new_parent]) == list(
        range(6, 12)
    )
    assert sorted(p.name for p in (tmp_path / "sweep2").iterdir() if p.name.isdigit()) == sorted(
        str(n) for n in range(6, 12)
    )  # job number = trial number
    results = yaml.safe_load((tmp_path / "sweep2" / "optimization_results.yaml").read_text())
    all_losses = [r.data.metrics.get("final_loss", math.inf) for kids in children.values() for r in kids]
    assert results["n_trials"] == 12 and results["best_value"] == min(all_losses)  # best of the whole study


@pytest.mark.slow
def test_grid_sampler_visits_each_point_once_and_tells_a_diverged_run(tmp_path):
    proc = _sweep(
        tmp_path,
        "hydra.sweeper.sampler=grid",
        "hydra.sweeper.n_trials=10",
        "hydra.sweeper.n_jobs=2",
        "lr=choice(0.5,1000)",
        "hidden_units=range(2,4)",
    )
    runs = [r for r in runs_of(tmp_path) if "mlflow.parentRunId" in r.data.tags]
    assert sorted((r.data.params["lr"], r.data.params["hidden_units"]) for r in runs) == [
        ("0.5", "2"),
        ("0.5", "3"),
        ("1000", "2"),
        ("1000", "3"),
    ]
    assert "Every grid point has a trial" in proc.stdout
    assert sum(r.data.tags["xorexp.outcome"] == "diverged" for r in runs) == 2
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert results["n_trials"] == 4 and results["best_params"]["lr"] == 0.5
    assert results["best_value"] == min(
        r.data.metrics["final_loss"] for r in runs if r.data.params["lr"] == "0.5"
    )


@pytest.mark.slow
def test_random_sampler_with_a_journal_storage(tmp_path):
    proc = run_cli(
        tmp_path,
        "-m",
        "hydra/sweeper=xorexp_optuna",
        *FAST,
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "hydra.sweeper.sampler=random",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.seed=7",
        "hydra.sweeper.storage=journal:///studies/xor.log",
        "lr=tag(log, interval(0.05, 5))",
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "studies" / "xor.log").is_file()
    runs = [r for r in runs_of(tmp_path) if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 3 and all(0.05 <= float(r.data.params["lr"]) <= 5 for r in runs)
    assert _best_value_printed(proc.stdout) == min(r.data.metrics["final_loss"] for r in runs)


@pytest.mark.slow
@pytest.mark.parametrize(
    "args,message",
    [
        (
            ['hydra.sweeper.params={lr: "interval(0.5"}'],
            "xorexp: invalid sweep: hydra.sweeper.params.lr='interval(0.5': no viable alternative",
        ),
        (
            ["hydra.sweeper.sampler=bayes"],
            "xorexp: invalid sweep: hydra.sweeper.sampler='bayes': must be tpe",
        ),
        (["hydra.sweeper.storage=sqlite:///mlflow.db"], "xorexp: invalid sweep: hydra.sweeper.storage="),
    ],
)
def test_bad_sweep_settings_stop_before_any_trial(tmp_path, args, message):
    proc = run_cli(tmp_path, "sweep=tpe", *FAST, f"hydra.sweep.dir={tmp_path / 'sweep'}", *args)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1].startswith(message), proc.stderr
    assert not [r for r in runs_of(tmp_path) if "mlflow.parentRunId" in r.data.tags]
