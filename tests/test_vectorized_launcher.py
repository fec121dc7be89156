"""The vectorized launcher: Hydra's own launcher suites, and the store it writes equals basic's."""

from __future__ import annotations

import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite

from hydra_plugins.xorexp_vectorized_launcher.vectorized_launcher import VectorizedLauncher
from tests.conftest import run_cli, store_snapshot


def test_discovery():
    assert VectorizedLauncher.__name__ in [x.__name__ for x in Plugins.instance().discover(Launcher)]


@pytest.mark.parametrize("launcher_name, overrides", [("vectorized", [])])
class TestVectorizedLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [
        (
            {
                "defaults": [
                    {"override hydra/launcher": "vectorized"},
                    {"override hydra/hydra_logging": "hydra_debug"},
                    {"override hydra/job_logging": "disabled"},
                ]
            },
            ["-m"],
        )
    ],
)
class TestVectorizedLauncherIntegration(IntegrationTestSuite):
    pass


@pytest.mark.slow
def test_store_is_the_same_under_basic_and_vectorized(tmp_path):
    sweep = ["-m", "hidden_units=2,3", "lr=0.5,4,2000", "seed=0,1,2,3", "iterations=700", "trace_every=50"]
    snapshots = {}
    for launcher in ("basic", "vectorized"):
        where = tmp_path / launcher
        where.mkdir()
        proc = run_cli(where, *sweep, f"hydra/launcher={launcher}", f"hydra.sweep.dir={where}/multirun")
        assert proc.returncode == 0, proc.stderr
        snapshots[launcher] = store_snapshot(where)
    assert len(snapshots["basic"]) == 24
    outcomes = {v["tags"]["xorexp.outcome"] for v in snapshots["basic"].values()}
    assert "diverged" in outcomes and len(outcomes) >= 2
    assert snapshots["vectorized"] == snapshots["basic"]


@pytest.mark.slow
def test_workers_and_chunks_do_not_change_bits(tmp_path):
    sweep = ["-m", "seed=range(0,20)", "lr=0.5,3", "iterations=400"]  # 40 runs: enough for workers
    snapshots = {}
    for name, flags in {
        "in_process": ["hydra.launcher.n_jobs=1"],
        "two_workers_chunks_of_7": ["hydra.launcher.n_jobs=2", "hydra.launcher.chunk_size=7"],
    }.items():
        where = tmp_path / name
        where.mkdir()
        proc = run_cli(where, *sweep, *flags, f"hydra.sweep.dir={where}/multirun")
        assert proc.returncode == 0, proc.stderr
        snapshots[name] = store_snapshot(where)
    assert len(snapshots["in_process"]) == 40
    assert snapshots["in_process"] == snapshots["two_workers_chunks_of_7"]
