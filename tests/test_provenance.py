"""Provenance on every run: versions, platform, NumPy build and dispatch, command, git state."""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, run_cli, runs_of, store_uri
from xorexp import provenance, run_logging
from xorexp.tracking.store import open_store
from xorexp.train import RunSpec, train


@pytest.mark.floor
def test_environment_tags_name_versions_platform_and_numpy_build():
    tags = provenance.environment_tags()
    assert tags["xorexp.version.python"] == platform.python_version()
    assert tags["xorexp.version.numpy"] == np.__version__
    for name in ("hydra-core", "mlflow", "xorexp"):
        assert tags[f"xorexp.version.{name}"] == importlib.metadata.version(name)
    assert tags["xorexp.platform"] == platform.platform()
    assert tags["xorexp.numpy.blas"].strip()
    assert tags["xorexp.numpy.simd"].startswith("baseline ")
    assert "exp:" in tags["xorexp.numpy.dispatch"]
    assert all(len(value) <= provenance.MAX_TAG for value in provenance.tags().values())


def test_provenance_is_computed_once_per_process(monkeypatch):
    calls = []
    real_run = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a) or real_run(*a, **k))
    provenance.checkout.cache_clear()
    provenance.environment_tags.cache_clear()
    try:
        first = provenance.tags()
        n_calls = len(calls)
        for _ in range(5):
            assert provenance.tags() == first
            provenance.artifacts()
        assert len(calls) == n_calls
    finally:
        provenance.checkout.cache_clear()
        provenance.environment_tags.cache_clear()


def test_every_run_carries_the_tags(tmp_path):
    store = open_store(store_uri(tmp_path), "xorexp")
    [result] = train([RunSpec(iterations=200)])
    parent = run_logging.start_parent(store, "sweep", {})
    run_id = run_logging.start_run(store, result.spec, parent_run_id=parent)
    run_logging.log_result(store, run_id, result)
    for tags in (store.client.get_run(run_id).data.tags, store.client.get_run(parent).data.tags):
        for key, value in provenance.tags().items():
            assert tags[key] == value
        assert "xorexp.command" in tags


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


@pytest.mark.slow
def test_dirty_flag_and_diff_from_a_temporary_checkout(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    repo = tmp_path / "repo"
    files = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    for rel in files:
        if (ROOT / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, repo / rel)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "snapshot")
    commit = _git(repo, "rev-parse", "HEAD").strip()
    env = {"PYTHONPATH": str(repo)}

    clean = tmp_path / "clean"
    clean.mkdir()
    proc = run_cli(clean, "iterations=200", "seed=1", env=env)
    assert proc.returncode == 0, proc.stderr
    [run] = runs_of(clean)
    tags = run.data.tags
    assert tags["xorexp.git.dirty"] == "false" and tags["mlflow.source.git.commit"] == commit
    assert "xorexp.git.diff_sha256" not in tags
    assert tags["xorexp.command"] == "python -m xorexp iterations=200 seed=1"
    store = open_store(store_uri(clean), "xorexp")
    assert "provenance" not in [a.path for a in store.client.list_artifacts(run.info.run_id)]

    readme = repo / "README.md"
    readme.write_text(readme.read_text() + "\nan uncommitted line\n")
    (repo / "notes.txt").write_text("untracked\n")
    dirty = tmp_path / "dirty"
    dirty.mkdir()
    proc = run_cli(dirty, "iterations=200", "seed=1", env=env)
    assert proc.returncode == 0, proc.stderr
    [run] = runs_of(dirty)
    assert run.data.tags["xorexp.git.dirty"] == "true"
    assert run.data.tags["mlflow.source.git.commit"] == commit
    store = open_store(store_uri(dirty), "xorexp")
    local = store.client.download_artifacts(run.info.run_id, provenance.DIFF_ARTIFACT, str(tmp_path))
    diff = Path(local).read_text()
    assert "+an uncommitted line" in diff and "# notes.txt" in diff
