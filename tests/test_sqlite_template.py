"""New embedded stores start from the machine's cached empty store (MLflow's migrations once per
schema revision), and are the same stores as migrated ones; a missing, unsound or unwritable cache
only means migrating."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from xorexp.tracking import sqlite, writing
from xorexp.tracking.store import open_store
from xorexp.train import RunSpec, train


def schema(db: Path) -> list[tuple]:
    """Every table, index and trigger with the lines of its SQL in sorted order: MLflow's migrations
    write a table's constraints in an order that varies between processes (a set's order)."""
    connection = sqlite3.connect(db)
    try:
        found = connection.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
        return sorted(
            (kind, name, sorted(line.strip().rstrip(",") for line in (sql or "").splitlines()))
            for kind, name, sql in found
        )
    finally:
        connection.close()


def rows(db: Path, sql: str) -> list[tuple]:
    connection = sqlite3.connect(db)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def test_the_first_store_keeps_a_template_that_the_next_ones_start_from(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(sqlite.CACHE_DIR_ENV, str(cache))
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()

    open_store(f"sqlite:///{first / 'mlflow.db'}", "exp")
    [template] = cache.glob("empty-store-*.db")
    assert template.name == f"empty-store-{sqlite._schema_revision()}.db"
    assert rows(template, "SELECT count(*) FROM experiments") == [(0,)]
    saved = template.stat().st_mtime_ns

    store = open_store(f"sqlite:///{second / 'mlflow.db'}", "exp")
    assert template.stat().st_mtime_ns == saved  # used, not made again
    assert schema(second / "mlflow.db") == schema(first / "mlflow.db")
    assert rows(
        second / "mlflow.db", "SELECT experiment_id, name, artifact_location FROM experiments ORDER BY 1"
    ) == [
        (0, "Default", (second / "mlartifacts" / "0").as_uri()),
        (1, "exp", (second / "mlartifacts" / "exp").as_uri()),
    ]
    assert rows(second / "mlflow.db", "PRAGMA journal_mode") == [("wal",)]
    [result] = train([RunSpec(iterations=200)])
    run_id = writing.start_run(store, result.spec)
    writing.log_result(store, run_id, result)
    assert store.client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, "wrong revision"])
def test_an_unsound_template_is_replaced_by_a_migrated_store(tmp_path, monkeypatch, content):
    cache = tmp_path / "cache"
    monkeypatch.setenv(sqlite.CACHE_DIR_ENV, str(cache))
    reference = tmp_path / "reference"
    reference.mkdir()
    open_store(f"sqlite:///{reference / 'mlflow.db'}", "exp")
    template = sqlite._template_path()
    if content == "wrong revision":
        connection = sqlite3.connect(template)
        connection.execute("UPDATE alembic_version SET version_num = 'abc'")
        connection.commit()
        connection.close()
    else:
        template.write_bytes(content)

    made = tmp_path / "made"
    made.mkdir()
    open_store(f"sqlite:///{made / 'mlflow.db'}", "exp")
    assert schema(made / "mlflow.db") == schema(reference / "mlflow.db")
    assert rows(made / "mlflow.db", "SELECT version_num FROM alembic_version") == [
        (sqlite._schema_revision(),)
    ]
    assert rows(template, "SELECT version_num FROM alembic_version") == [(sqlite._schema_revision(),)]


def test_a_cache_that_cannot_be_written_only_means_migrating(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv(sqlite.CACHE_DIR_ENV, str(blocker / "cache"))
    store = open_store(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp")
    assert store.experiment_id == "1"
    assert rows(tmp_path / "mlflow.db", "SELECT name FROM experiments ORDER BY experiment_id") == [
        ("Default",),
        ("exp",),
    ]


def test_no_home_directory_only_means_migrating(tmp_path, monkeypatch):
    """HOME unset and a uid without a passwd entry: Path.home() raises; the store is made anyway."""
    for name in (sqlite.CACHE_DIR_ENV, "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)

    def no_home(cls=None):
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", classmethod(no_home))
    store = open_store(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp")
    assert store.experiment_id == "1"
    revision = rows(tmp_path / "mlflow.db", "SELECT version_num FROM alembic_version")
    assert revision == [(sqlite._schema_revision(),)]
