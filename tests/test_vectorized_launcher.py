"""The vectorized launcher: Hydra's own launcher suites, and the store it writes equals basic's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite
from omegaconf import OmegaConf

from hydra_plugins.xorexp_vectorized_launcher import _hydra_job
from hydra_plugins.xorexp_vectorized_launcher.vectorized_launcher import VectorizedLauncher
from tests.conftest import ROOT, run_cli, runs_of, snapshot_differences, store_snapshot
from xorexp.tracking.tags import ROLE_SWEEP, TAG_PID, TAG_ROLE


def test_discovery():
    assert VectorizedLauncher.__name__ in [x.__name__ for x in Plugins.instance().discover(Launcher)]


# override lines and values YAML writes in every style: plain, quoted, escaped, wrapped, typed
AWKWARD = [
    "lr=0.1", "tracking.experiment=a\\ name\\ with\\ spaces " + "long enough to wrap " * 5, "a='b: c'",
    "x=#c", "y=- d", "'", "", "null", "true", "1", "1e5", "z=[1,2]", "é=ü", "key: value", " lead",
    "trail ", "x" * 200, "a b " * 40,
]


@pytest.mark.parametrize("path", [(), ("task",), ("hydra", "overrides", "task")])
def test_yaml_texts_kept_per_value_are_what_a_dump_writes(path):
    """A slot's text made from kept texts (a list item by item) is the text of dumping it whole,
    and a value's kept text is not another value's that compares equal (1 and 1.0, 0.0 and -0.0)."""
    for value in [AWKWARD, AWKWARD[:1], [1, 2.5, None, "s"], [-0.0, 0.0, 1.0, 1], []]:
        for _ in range(2):  # made, then kept
            assert _hydra_job._slot_text(path, value) == _hydra_job._rendered(path, value)
    if path:
        for value in [*AWKWARD, 0.1, -0.0, 0.0, 1, 1.0, True, None, 1e-7, 10**20, {"a": [1]}]:
            for _ in range(2):
                assert _hydra_job._slot_text(path, value) == _hydra_job._rendered(path, value)
        assert "-0.0" in _hydra_job._slot_text(path, -0.0) and "-0.0" not in _hydra_job._slot_text(path, 0.0)
    lines = ["lr=0.1", "seed=3"]
    assert _hydra_job.list_yaml(lines) == OmegaConf.to_yaml(OmegaConf.create(lines))


@pytest.mark.floor
def test_a_yaml_template_writes_what_omegaconf_writes():
    """A config's YAML from its template, with other values in its slots (a typed int, a typed
    list, untyped keys, nested keys), is ``OmegaConf.to_yaml``'s text, byte for byte."""
    from dataclasses import dataclass, field
    from typing import Any

    @dataclass
    class Job:
        num: int = 0
        override_dirname: str = ""
        task: list = field(default_factory=list)

    cfg = OmegaConf.create({"lr": 0.1, "seed": 3, "job": OmegaConf.structured(Job), "deep": {"a": {"b": "x"}},
                            "after": [1, 2], "last": "${lr}"})
    slots = [("lr",), ("seed",), ("job", "num"), ("job", "task"), ("job", "override_dirname"),
             ("deep", "a", "b")]
    template = _hydra_job.YamlTemplate.of(cfg, slots)
    assert template is not None and len(template.pieces) == len(slots) + 1
    values: list[Any] = [
        (0.5, 7, 12, ["lr=0.5", "seed=7"], "lr=0.5,seed=7", "y"),
        (-0.0, "${seed}", 918273645546372819, AWKWARD, AWKWARD[1], "a b " * 40),
        (None, 1e-9, 0, [], "", "null"),
    ]
    for row in values:
        other = OmegaConf.create(OmegaConf.to_container(cfg))
        other.job = OmegaConf.merge(OmegaConf.structured(Job), other.job)
        for path, value in zip(slots, row, strict=True):
            OmegaConf.update(other, ".".join(path), value, merge=True)
        assert template.render(other) == OmegaConf.to_yaml(other)
    assert template.render(OmegaConf.create({"lr": 1})) is None  # a slot without a node: dumped whole
    assert _hydra_job.YamlTemplate.of(OmegaConf.create({"flag": True}), [("flag",)]) is not None
    typed = OmegaConf.structured(Job)
    assert _hydra_job.YamlTemplate.of(OmegaConf.create({"job": typed, "n": 1.5}), [("n",)]) is not None


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
    assert snapshot_differences(snapshots["vectorized"], snapshots["basic"]) == []


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
    assert snapshot_differences(snapshots["in_process"], snapshots["two_workers_chunks_of_7"]) == []


def _job_dir_files(sweep_dir: Path, where: Path) -> dict[str, str]:
    """Each job dir's ``.hydra/*.yaml`` texts, with only what legitimately differs between the two
    launchers normalised: the launch dir, the launcher's own node, overrides and choice, the job id
    (Hydra's basic launcher uses the job number, the joblib-style launchers ``<name>_<num>``)."""
    out = {}
    for path in sorted(sweep_dir.glob("*/.hydra/*.yaml")):
        lines, skipping = [], False
        for line in path.read_text().replace(str(where), "<launch dir>").splitlines(keepends=True):
            if skipping and line.startswith("   "):
                continue
            skipping = line == "  launcher:\n"
            if skipping or line.startswith(("    - hydra/launcher=", "    - hydra.launcher.")):
                continue
            if line.startswith("      hydra/launcher: "):
                line = "      hydra/launcher: <launcher>\n"
            if line.startswith("    id: "):
                line = "    id: <job id>\n"
            lines.append(line)
        out[str(path.relative_to(sweep_dir))] = "".join(lines)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_job_dirs_are_what_hydras_basic_launcher_writes(tmp_path, workers):
    """The lean job runner writes each job dir's .hydra files as Hydra's run_job does, byte for byte
    (an experiment name long enough to wrap in hydra.yaml, quoted values), and each job's log file
    where Hydra's job logging puts it, holding that job's lines only."""
    experiment = "an experiment name with spaces long enough to wrap in hydra yaml " + "x" * 60
    sweep = ["-m", "lr=0.5,4", "seed=range(0,10)", "iterations=200", f"tracking.experiment={experiment}",
             "stop_loss=null", "trace_every=20", "hydra.sweep.dir=sweep"]
    files = {}
    for launcher in ("basic", "vectorized"):
        where = tmp_path / launcher
        where.mkdir()
        flags = [f"hydra.launcher.n_jobs={workers}"] if launcher == "vectorized" else []
        proc = run_cli(where, *sweep, f"hydra/launcher={launcher}", *flags)
        assert proc.returncode == 0, proc.stderr
        files[launcher] = _job_dir_files(where / "sweep", where)
        for num in range(20):
            job_dir = where / "sweep" / str(num)
            assert sorted(p.name for p in job_dir.glob("*.log")) == ["app.log"]
            lines = (job_dir / "app.log").read_text().splitlines()
            names = [line.split(" - ")[1].split(":")[0] for line in lines]
            lr, seed = ("0.5", "4")[num // 10], num % 10
            assert names == [f"h2-lr{lr}-s{seed}"], (launcher, num, names)
    assert len(files["basic"]) == 60
    # the long override wraps over two lines of hydra.yaml, escaped as Hydra writes it
    assert "    - tracking.experiment=an\\ experiment\\ name" in files["basic"]["0/.hydra/hydra.yaml"]
    assert files["vectorized"] == files["basic"]


@pytest.mark.slow
@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_workers_are_forked_unless_spawn_is_asked_for(tmp_path, start):
    """The workers of a sweep start as forks of the launching process (no interpreter start, no imports:
    they have its modules and opened store), or as spawned interpreters when XOREXP_WORKER_START=spawn;
    either way they log the sweep's runs, each job its own (the runs' writer pids are the workers')."""
    starts = tmp_path / "starts"
    starts.mkdir()
    env = {"PYTHONPATH": f"{ROOT / 'tests' / 'faults'}{os.pathsep}{ROOT}", "XOREXP_STARTS_DIR": str(starts)}
    if start == "spawn":
        env["XOREXP_WORKER_START"] = "spawn"
    sweep = ["-m", "seed=range(0,20)", "lr=0.5,3", "iterations=400", "hydra.launcher.n_jobs=2"]
    proc = run_cli(tmp_path, *sweep, env=env)
    assert proc.returncode == 0, proc.stderr
    interpreters = {int(path.stem): path.read_text() for path in starts.glob("*.start")}
    spawned = {pid for pid, cmdline in interpreters.items() if "spawn_main" in cmdline}
    runs = [run for run in runs_of(tmp_path) if run.data.tags.get(TAG_ROLE) != ROLE_SWEEP]
    writers = {run.data.tags[TAG_PID] for run in runs}
    launching = {pid for pid, cmdline in interpreters.items() if "-m xorexp " in cmdline}
    assert len(launching) == 1
    assert len(writers) == 2 and str(*launching) not in writers  # two workers wrote the runs
    if start == "fork":
        assert spawned == set()
        assert not writers & {str(pid) for pid in interpreters}
    else:
        assert len(spawned) == 2 and writers == {str(pid) for pid in spawned}
    assert len([run for run in runs_of(tmp_path) if run.info.status == "FINISHED"]) == 41
