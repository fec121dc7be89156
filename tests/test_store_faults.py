"""A tracking store that cannot be used stops a command in one line, fast, with nothing created.

End to end: the real CLI in subprocesses against real stores under tmp_path: garbage, truncated
and locked sqlite files, a read-only and a full file system (tmpfs mounts, root only), a plain HTTP
server, a real ``mlflow server``, concurrent first commands on a fresh directory. Each refusal:
exit 2, exactly one non-empty stderr line starting ``xorexp``, no traceback, no password, and the
store as it was. In-process: ``redact``, ``describe_store_error`` on a real full disk, read-only
opening, stale runs, a moved store.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Param

from tests.conftest import ROOT, free_port, run_cli, runs_of, store_uri
from xorexp.tracking import artifacts, writing
from xorexp.tracking.store import _safe_name, open_store
from xorexp.tracking.tags import TAG_HOST, TAG_PID
from xorexp.tracking.uri import StoreError, describe_store_error, redact

PASSWORD = "s3cret-pw"
SINGLE = ("iterations=100",)
SWEEP = ("-m", "seed=0,1", "iterations=100")


def assert_refused(proc: subprocess.CompletedProcess, prefix: str = "xorexp:") -> str:
    """Exit 2, one non-empty stderr line starting ``prefix``, no traceback, no password; the line."""
    output = proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, output
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(prefix), lines[0]
    assert "Traceback" not in output
    assert PASSWORD not in output
    return lines[0]


def cli(where: Path, mode: tuple[str, ...], *overrides: str) -> subprocess.CompletedProcess:
    """``python -m xorexp`` with the mode's arguments (``-m`` first, as Hydra wants it)."""
    flags, rest = (mode[:2], mode[2:]) if mode[0] == "-m" else ((), mode)
    return run_cli(where, *flags, *overrides, *rest, timeout=120)


def count_runs(db: Path) -> int:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT count(*) FROM runs").fetchone()[0]


def mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.decode().strip()}")


def fill(directory: Path) -> None:
    """Write zeros in ``directory`` until its file system is full."""
    with open(directory / "filler", "wb", buffering=0) as filler:
        chunk = b"\0" * 65536
        while True:
            try:
                filler.write(chunk)
            except OSError:
                if len(chunk) == 1:
                    return
                chunk = chunk[: len(chunk) // 2]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A real store with one finished run (made by the CLI), to copy per test."""
    where = tmp_path_factory.mktemp("template")
    proc = run_cli(where, *SINGLE)
    assert proc.returncode == 0, proc.stderr
    return where


@pytest.fixture
def mounts():
    """tmpfs mounts made by a test, unmounted after it."""
    made: list[Path] = []
    yield made
    for where in made:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture(scope="module")
def plain_http_server(tmp_path_factory):
    """``python -m http.server`` on 127.0.0.1: 200 on /health (a file of that name), 404 elsewhere."""
    root = tmp_path_factory.mktemp("www")
    (root / "health").write_text("OK")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=1) as response:
                assert response.status == 200
                break
        except OSError:
            time.sleep(0.1)
    yield uri
    process.kill()
    process.wait()


# --- bad URIs and names: refused before anything exists -------------------------------------------

BAD_TRACKING = {
    "garbage": ["tracking.uri=garbage"],
    "file store": ["tracking.uri=file:./mlruns"],
    "databricks without credentials": ["tracking.uri=databricks"],
    # pg8000: a driver SQLAlchemy knows that no extra installs (the postgres extra brings psycopg)
    "postgresql without driver": [f"tracking.uri=postgresql://bob:{PASSWORD}@127.0.0.1:5/db"],
    "postgresql server down": ["tracking.uri=postgresql://bob:{PASSWORD}@127.0.0.1:{port}/db"],
    "dead server with password": ["tracking.uri=http://bob:{PASSWORD}@127.0.0.1:{port}"],
    "experiment name of 501 characters": ["tracking.experiment=" + "e" * 501],
}


def both_modes(cases, swept):
    """(case, mode) pairs: every case as a single run; as a sweep too for ``swept`` (one case per
    stage where a sweep's refusal happens, to keep the module's CPU time down)."""
    return [
        pytest.param(case, mode, id=f"{case}-{name}")
        for case in cases
        for name, mode in (("single", SINGLE), ("sweep", SWEEP))
        if name == "single" or case in swept
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "mode"), both_modes(BAD_TRACKING, {"garbage", "experiment name of 501 characters"})
)
def test_an_unusable_tracking_setting_is_refused_in_one_line(case, mode, tmp_path):
    overrides = [o.format(PASSWORD=PASSWORD, port=free_port()) for o in BAD_TRACKING[case]]
    env = {"HOME": str(tmp_path)} if "databricks" in case else None  # no ~/.databrickscfg
    if "without driver" in case:  # the test extra installs one: hide it (see tests/faults/sitecustomize.py)
        faults = Path(__file__).resolve().parent / "faults"
        env = {"PYTHONPATH": f"{faults}{os.pathsep}{ROOT}", "XOREXP_FAULT": "nodriver:0"}
    flags, rest = (mode[:2], mode[2:]) if mode[0] == "-m" else ((), mode)
    proc = run_cli(tmp_path, *flags, *overrides, *rest, timeout=120, env=env)
    line = assert_refused(proc)
    if "experiment" in case:
        assert "tracking.experiment" in line and "500" in line
    if "password" in case or "postgresql" in case:
        assert "bob:***@" in line
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()
    assert not list(tmp_path.rglob("xorexp_parent_run.json"))


# --- embedded store faults ------------------------------------------------------------------------


def _garbage(where: Path, template: Path, mounts: list) -> Path | None:
    (where / "mlflow.db").write_bytes(os.urandom(16384))
    return None


def _truncated(where: Path, template: Path, mounts: list) -> Path | None:
    data = (template / "mlflow.db").read_bytes()
    (where / "mlflow.db").write_bytes(data[: len(data) // 3])
    return None


def _read_only(where: Path, template: Path, mounts: list) -> Path | None:
    mount_tmpfs(where / "ro", "ro,size=1m")
    mounts.append(where / "ro")
    return where / "ro" / "mlflow.db"


def _full(where: Path, template: Path, mounts: list) -> Path | None:
    mount_tmpfs(where / "full", "size=2m")
    mounts.append(where / "full")
    shutil.copy(template / "mlflow.db", where / "full" / "mlflow.db")
    fill(where / "full")
    return where / "full" / "mlflow.db"


STORE_FAULTS = {"garbage file": _garbage, "truncated file": _truncated, "read-only place": _read_only,
                "full disk": _full}


@pytest.mark.slow
@pytest.mark.parametrize(("case", "mode"), both_modes(STORE_FAULTS, {"garbage file", "full disk"}))
def test_an_unusable_embedded_store_is_refused_in_one_line(case, mode, template, mounts, tmp_path):
    elsewhere = STORE_FAULTS[case](tmp_path, template, mounts)  # None: the default ./mlflow.db
    db = elsewhere or tmp_path / "mlflow.db"
    before = db.read_bytes() if db.exists() else None
    proc = cli(tmp_path, mode, *([f"tracking.uri=sqlite:///{db}"] if elsewhere else []))
    line = assert_refused(proc)
    assert str(db) in line
    assert (db.read_bytes() if db.exists() else None) == before  # untouched, or still absent
    assert not (db.parent / "mlartifacts").exists() or case == "full disk"
    assert not list(db.parent.glob(".mlflow.db.*")) and not list(db.parent.glob(".xorexp-probe-*"))


@pytest.mark.slow
@pytest.mark.parametrize("mode", [SINGLE, SWEEP], ids=["single", "sweep"])
def test_too_little_room_for_a_new_store_is_one_line_and_nothing_made(mode, mounts, tmp_path):
    """1 MB free where a new store needs ~1 MB (its schema) and room for runs: refused before MLflow's
    engine creation, which would retry for ~100 s with a warning a try."""
    where = tmp_path / "small"
    mount_tmpfs(where, "size=2m")
    mounts.append(where)
    (where / "pad").write_bytes(b"\0" * 1_000_000)
    proc = run_cli(where, *mode)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "kB free in" in lines[0] and "a new store needs" in lines[0], proc.stderr
    assert sorted(p.name for p in where.iterdir()) == ["pad"]  # no store, no outputs/ or multirun/


@pytest.mark.slow
@pytest.mark.parametrize("mode", [SINGLE, SWEEP], ids=["single", "sweep"])
def test_a_locked_store_is_refused_in_one_line(mode, template, tmp_path):
    shutil.copy(template / "mlflow.db", tmp_path / "mlflow.db")
    hold = (
        "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None);"
        " c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(120)"
    )
    locker = subprocess.Popen(
        [sys.executable, "-c", hold, str(tmp_path / "mlflow.db")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout.readline().strip() == "locked"
        proc = cli(tmp_path, mode)  # MLflow alone would wait 20 s per call, with retries
    finally:
        locker.kill()
        locker.wait()
    line = assert_refused(proc)
    assert "locked by another process" in line
    assert count_runs(tmp_path / "mlflow.db") == 1


@pytest.mark.slow
@pytest.mark.parametrize("mode", [SINGLE, SWEEP], ids=["single", "sweep"])
def test_a_plain_http_server_is_not_taken_for_mlflow(mode, plain_http_server, tmp_path):
    proc = cli(tmp_path, mode, f"tracking.uri={plain_http_server}")
    line = assert_refused(proc)
    assert "not an MLflow tracking server" in line and plain_http_server in line
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_credentials_in_the_server_url_pass_the_check_and_are_never_shown(tmp_path):
    from tests.mlflow_server import start_server, stop_server

    server = start_server(tmp_path / "server")
    try:
        uri = server.uri.replace("http://", f"http://bob:{PASSWORD}@")
        proc = run_cli(tmp_path, *SINGLE, f"tracking.uri={uri}", timeout=120)
        runs = MlflowClient(server.uri).search_runs(
            [MlflowClient(server.uri).get_experiment_by_name("xorexp").experiment_id]
        )
    finally:
        stop_server(server)
    assert proc.returncode == 0, proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr
    assert [run.info.status for run in runs] == ["FINISHED"]


# --- concurrency ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 4])
def test_first_commands_started_at_once_on_a_fresh_directory_all_succeed(n, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "xorexp", "iterations=200", f"seed={i}", f"hydra.run.dir=run{i}"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        for i in range(n)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for proc in procs:
        proc.stdout.close()
        proc.stderr.close()
    assert [rc for rc, _ in results] == [0] * n, [err for _, err in results]
    runs = runs_of(tmp_path)
    assert sorted(run.data.params["seed"] for run in runs) == [str(i) for i in range(n)]
    assert {run.info.status for run in runs} == {"FINISHED"}
    with sqlite3.connect(tmp_path / "mlflow.db") as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert not [t for t in tables if t.startswith("_alembic_tmp_")]
    assert not list(tmp_path.glob(".mlflow.db.*"))
    store = open_store(store_uri(tmp_path), "xorexp")  # and it opens fine for writing afterwards
    assert store.experiment_id == runs[0].info.experiment_id


# --- experiment folders -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../../up", "/abs", "." * 3, "x" * 500, "é\\z"])
def test_an_experiment_folder_name_stays_inside_mlartifacts(name):
    folder = _safe_name(name)
    assert folder and "/" not in folder and "\\" not in folder
    assert not folder.startswith(".") and len(folder) <= 100


@pytest.mark.slow
def test_experiment_dot_dot_keeps_artifacts_under_mlartifacts(tmp_path):
    proc = run_cli(tmp_path, *SINGLE, "tracking.experiment=..")
    assert proc.returncode == 0, proc.stderr
    [run] = runs_of(tmp_path, "..")
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    assert artifacts.resolve().is_relative_to((tmp_path / "mlartifacts").resolve())
    made = {p.name for p in tmp_path.iterdir()} - {"mlflow.db-wal", "mlflow.db-shm"}  # (runs_of's open)
    assert made == {"mlartifacts", "mlflow.db", "outputs"}


# --- replay: read-only, and refusals ---------------------------------------------------------------


@pytest.mark.slow
def test_replay_without_log_writes_nothing(template, tmp_path):
    [run] = runs_of(template)
    before = {e.name for e in MlflowClient(store_uri(template)).search_experiments()}
    proc = run_cli(template, run.info.run_id, "--experiment", "elsewhere", module="xorexp.replay")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {e.name for e in MlflowClient(store_uri(template)).search_experiments()} == before
    assert count_runs(template / "mlflow.db") == 1


@pytest.mark.slow
@pytest.mark.parametrize("case", ["garbage store", "unknown run id", "no store"])
def test_replay_refuses_in_one_line(case, template, tmp_path):
    if case == "garbage store":
        (tmp_path / "mlflow.db").write_bytes(os.urandom(16384))
    if case == "unknown run id":
        shutil.copy(template / "mlflow.db", tmp_path / "mlflow.db")
    proc = run_cli(tmp_path, "0" * 32, module="xorexp.replay", timeout=120)
    line = assert_refused(proc, "xorexp.replay:")
    assert str(tmp_path / "mlflow.db") in line
    assert (case == "no store") != (tmp_path / "mlflow.db").exists()


# --- in-process: the store API ------------------------------------------------------------------------


def test_redact_hides_passwords_and_nothing_else():
    assert redact("http://bob:pw@host:5000/x") == "http://bob:***@host:5000/x"
    assert redact("postgresql+psycopg2://u:p@ss@db/x") == "postgresql+psycopg2://u:***@db/x"
    assert redact("https://h/?token=abc&x=1") == "https://h/?token=***&x=1"
    for plain in ("sqlite:////tmp/a b/mlflow.db", "http://127.0.0.1:5000", "databricks", "http://bob@h"):
        assert redact(plain) == plain


def test_open_store_read_only_creates_nothing(template, tmp_path):
    missing = store_uri(tmp_path / "nowhere")
    with pytest.raises(StoreError, match="no store at"):
        open_store(missing, "xorexp", create=False)
    assert not (tmp_path / "nowhere").exists()
    shutil.copy(template / "mlflow.db", tmp_path / "mlflow.db")
    with pytest.raises(StoreError, match="no experiment 'other'"):
        open_store(store_uri(tmp_path), "other", create=False)
    assert MlflowClient(store_uri(tmp_path)).get_experiment_by_name("other") is None
    store = open_store(store_uri(tmp_path), "xorexp", create=False)
    assert len(store.client.search_runs([store.experiment_id])) == 1


def test_an_empty_file_becomes_a_store_and_a_leftover_migration_table_is_dropped(template, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "mlflow.db").touch()
    store = open_store(store_uri(tmp_path / "empty"), "xorexp")
    assert store.client.search_runs([store.experiment_id]) == []
    shutil.copy(template / "mlflow.db", tmp_path / "mlflow.db")
    with sqlite3.connect(tmp_path / "mlflow.db") as connection:  # as an interrupted migration leaves it
        connection.execute("CREATE TABLE _alembic_tmp_latest_metrics AS SELECT * FROM latest_metrics")
    with pytest.raises(StoreError, match="not a complete MLflow store"):
        open_store(store_uri(tmp_path), "xorexp", create=False)  # read-only: repairs nothing
    store = open_store(store_uri(tmp_path), "xorexp")
    assert len(store.client.search_runs([store.experiment_id])) == 1
    with sqlite3.connect(tmp_path / "mlflow.db") as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "_alembic_tmp_latest_metrics" not in tables and "latest_metrics" in tables


def test_open_store_cleans_runs_of_dead_writers_when_asked(tmp_path):
    store = open_store(store_uri(tmp_path), "xorexp")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is free now
    tags = {TAG_HOST: socket.gethostname(), TAG_PID: str(dead.pid)}
    stale = store.client.create_run(store.experiment_id, tags=tags).info.run_id
    alive = store.client.create_run(store.experiment_id, tags=writing.process_tags()).info.run_id
    assert open_store(store_uri(tmp_path), "xorexp").stale_runs == []  # not asked
    reopened = open_store(store_uri(tmp_path), "xorexp", clean_stale=True)
    assert reopened.stale_runs == [stale]
    assert store.client.get_run(stale).info.status == "KILLED"
    assert store.client.get_run(alive).info.status == "RUNNING"


def test_a_moved_store_warns_that_artifacts_go_to_the_old_place(tmp_path, caplog):
    old = tmp_path / "old"
    store = open_store(store_uri(old), "xorexp")
    run_id = store.client.create_run(store.experiment_id).info.run_id
    artifacts.log_files(store, run_id, files={"note.txt": "x"})
    old.rename(tmp_path / "new")
    with caplog.at_level(logging.WARNING, logger="xorexp.tracking"):
        open_store(store_uri(tmp_path / "new"), "xorexp")
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "no longer exists" in warning and str(old / "mlartifacts" / "xorexp") in warning


def test_describe_store_error_on_a_real_full_disk(mounts, tmp_path):
    mount_tmpfs(tmp_path / "full", "size=2m")
    mounts.append(tmp_path / "full")
    uri = store_uri(tmp_path / "full")
    store = open_store(uri, "xorexp")
    run_id = store.client.create_run(store.experiment_id).info.run_id
    fill(tmp_path / "full")
    with pytest.raises(Exception) as raised:
        artifacts.log_files(store, run_id, files={"big.txt": "x" * 1_000_000})
    line = describe_store_error(raised.value)
    assert line is not None and uri in line and "no space left" in line and "\n" not in line
    with pytest.raises(Exception) as raised:
        store.client.log_batch(run_id, params=[Param(f"p{i}", "v" * 5000) for i in range(100)])
    line = describe_store_error(raised.value, uri)
    assert line is not None and uri in line and "full" in line
    assert describe_store_error(ValueError("not a store problem")) is None


def test_describe_store_error_on_a_dead_server(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://bob:{PASSWORD}@127.0.0.1:{free_port()}"
    with pytest.raises(Exception) as raised:
        MlflowClient(uri).get_experiment_by_name("xorexp")
    line = describe_store_error(raised.value, uri)
    assert line is not None and "does not answer" in line and PASSWORD not in line


# --- mid-run failure: reported by the job (the lead's part) --------------------------------------------


@pytest.mark.slow
def test_a_disk_that_fills_during_a_single_run_ends_in_one_line(template, mounts, tmp_path):
    mount_tmpfs(tmp_path / "full", "size=2m")
    mounts.append(tmp_path / "full")
    shutil.copy(template / "mlflow.db", tmp_path / "full" / "mlflow.db")
    fill(tmp_path / "full")
    os.truncate(tmp_path / "full" / "filler", os.path.getsize(tmp_path / "full" / "filler") - 64 * 1024)
    proc = run_cli(tmp_path, *SINGLE, f"tracking.uri={store_uri(tmp_path / 'full')}", timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr  # the store failed
    assert len(lines) == 1 and lines[0].startswith("xorexp:") and "full" in lines[0]
