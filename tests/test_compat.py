"""xorexp.compat: every private name of another package lives there, each internal holds on the
installed versions (the contract), and each fallback gives what the internal gives."""

from __future__ import annotations

import ast
import inspect
import multiprocessing
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep
from mlflow import MlflowClient
from omegaconf import OmegaConf

from tests.conftest import ROOT, assert_same_sweep_both_ways, run_cli
from xorexp import compat, run_plots
from xorexp.compat import futures as compat_futures
from xorexp.compat import hydra as compat_hydra
from xorexp.compat import matplotlib as compat_matplotlib
from xorexp.compat import mlflow as compat_mlflow
from xorexp.train import RunSpec, train

pytestmark = pytest.mark.floor  # the contracts must hold on the lowest supported set too

SOURCES = [p for folder in ("xorexp", "hydra_plugins") for p in sorted((ROOT / folder).rglob("*.py"))]
OWN_PACKAGES = {"xorexp", "hydra_plugins"}
PUBLIC_BY_DOCUMENTATION = {"_exit"}  # os._exit is documented, public API


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _own_private_names() -> set[str]:
    """Every underscore name the project itself defines (functions, classes, attributes, modules)."""
    names = {p.stem for p in SOURCES}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.alias):
                names.add(node.asname or node.name.split(".")[-1])
    return {name for name in names if _private(name)}


def private_uses(path: Path, own: set[str], root: Path = ROOT) -> list[str]:
    """The places in ``path`` that name another package's private name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[0] in OWN_PACKAGES:
                continue
            if any(_private(part) for part in parts) or any(_private(a.name) for a in node.names):
                found.append(f"{where}: from {node.module} import {', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] not in OWN_PACKAGES and any(_private(part) for part in parts):
                    found.append(f"{where}: import {alias.name}")
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            if node.attr in own or node.attr in PUBLIC_BY_DOCUMENTATION:
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            found.append(f"{where}: .{node.attr}")
    return found


def test_private_names_of_other_packages_appear_only_in_compat():
    own = _own_private_names()
    compat_dir = ROOT / "xorexp" / "compat"
    uses = [use for path in SOURCES if compat_dir not in path.parents for use in private_uses(path, own)]
    assert uses == []


def test_the_private_name_check_finds_what_it_looks_for(tmp_path):
    """The check itself can fail: each kind of private use is found in a module outside compat."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from hydra._internal.config_loader_impl import get_overrides_dirname\n"
        "from omegaconf._utils import get_omega_conf_dumper\n"
        "import mlflow.tracking._tracking_service.utils\n"
        "from mlflow.utils.validation import _validate_batch_log_data\n"
        "def f(store, pool):\n"
        "    return store.SqlAlchemyStore._engine_map, pool._processes\n"
    )
    found = [line.split(": ", 1)[1] for line in private_uses(sample, set(), root=tmp_path)]
    assert len(found) == 6, found


# ---- MLflow ------------------------------------------------------------------------------------


def test_mlflows_internals_are_there_in_the_installed_mlflow():
    """The contract: a release that renames one fails here (then update xorexp/compat/mlflow.py)."""
    assert compat_mlflow.internals() == dict.fromkeys(compat_mlflow.internals(), True)


def test_the_schema_revision_is_alembics_reading_of_mlflows_scripts(monkeypatch):
    native = compat_mlflow.latest_schema_revision()
    import mlflow.store.db.utils as db_utils

    monkeypatch.delattr(db_utils, "_get_latest_schema_revision")
    assert compat_mlflow.latest_schema_revision() == native
    assert len(native) >= 8


@pytest.fixture
def opened(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.search_experiments()  # MLflow opens its SQL store, and its engine
    yield uri, client
    compat_mlflow.dispose_engine(uri)


def test_the_shared_engine_is_mlflows_own_and_the_fallback_one_to_the_same_store(opened, monkeypatch):
    uri, _ = opened
    engine = compat_mlflow.shared_engine(uri)
    assert compat_mlflow.engine_open(uri)
    assert any(e is engine for e in compat_mlflow.sql_engines())
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    monkeypatch.delattr(SqlAlchemyStore, "_get_or_create_engine")
    own = compat_mlflow.shared_engine(uri)
    assert own is not engine and str(own.url) == str(engine.url)
    own.dispose()


def test_without_the_engine_map_engines_are_found_by_a_scan(opened, monkeypatch):
    uri, _ = opened
    mapped = {id(e) for e in compat_mlflow.sql_engines()}
    monkeypatch.setattr(compat_mlflow, "_ENGINE_MAPS", ("no_such_map",))
    assert mapped <= {id(e) for e in compat_mlflow.sql_engines()}
    assert not compat_mlflow.engine_open(uri)  # cannot tell: the store's file is checked again


def test_a_disposed_engine_is_forgotten(opened):
    uri, client = opened
    compat_mlflow.dispose_engine(uri)
    assert not compat_mlflow.engine_open(uri)
    assert client.search_experiments()[0].name == "Default"  # MLflow opens a new one


def test_batch_validation_is_mlflows_and_its_absence_sends_runs_through_the_client(monkeypatch):
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException

    metrics, params, tags = [Metric("loss", 0.5, 1, 0)], [Param("lr", "0.1")], [RunTag("a", "b")]
    checked = compat_mlflow.validated_batch(metrics, params, tags)
    assert [list(part) for part in checked] == [metrics, params, tags]
    with pytest.raises(MlflowException):
        compat_mlflow.validated_batch([], [Param("x" * 300, "1")], [])  # MLflow's key length limit
    import mlflow.utils.validation as validation

    monkeypatch.delattr(validation, "_validate_batch_log_data")
    assert compat_mlflow.validated_batch(metrics, params, tags) is None


def test_the_tracking_schemes_are_mlflows_and_any_without_its_registry(monkeypatch):
    assert {"sqlite", "http", "https", "postgresql", "file"} <= compat_mlflow.tracking_schemes()
    import mlflow.tracking._tracking_service.utils as service

    monkeypatch.delattr(service, "_tracking_store_registry")
    assert compat_mlflow.tracking_schemes() == {"*"}


def test_engine_retries_are_cut_and_put_back():
    import mlflow.store.db.utils as db_utils

    before = db_utils.MAX_RETRY_COUNT
    with compat_mlflow.engine_retries(1):
        assert db_utils.MAX_RETRY_COUNT == 1
    assert db_utils.MAX_RETRY_COUNT == before


@pytest.mark.slow
def test_a_schema_upgrade_in_process_and_by_mlflows_command(tmp_path, monkeypatch):
    from sqlalchemy import create_engine, text

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()
    compat_mlflow.dispose_engine(uri)
    head = compat_mlflow.latest_schema_revision()
    compat_mlflow.upgrade_schema(uri)  # at the head already: nothing to do
    import mlflow.store.db.utils as db_utils

    monkeypatch.delattr(db_utils, "_upgrade_db")
    compat_mlflow.upgrade_schema(uri)  # ``mlflow db upgrade``
    engine = create_engine(uri)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == head
    engine.dispose()


# ---- matplotlib ----------------------------------------------------------------------------------


def test_matplotlibs_glyph_internals_are_there_in_the_installed_matplotlib():
    import matplotlib

    if tuple(int(x) for x in matplotlib.__version__.split(".")[:2]) >= (3, 11):
        assert compat_matplotlib.glyph_internals()
    else:  # the cache is off there: titles drawn by matplotlib (same pixels)
        assert not compat_matplotlib.glyph_internals()


def test_titles_from_the_glyph_cache_and_from_matplotlib_are_the_same_pixels():
    [result] = train([RunSpec(hidden_units=2, lr=1.0, iterations=300, seed=3, trace_every=10)])
    title = "h2-lr1-s3: stuck, final loss 0.25 Ä →"
    cached, drawn = run_plots.RunPlotter(), run_plots.RunPlotter()
    drawn._glyphs.enabled = False
    for _ in range(2):  # the second time from kept bitmaps
        a = cached.learning_curve_png(result.trace_steps, result.loss_trace, title, 300, result.outcome)
        b = drawn.learning_curve_png(result.trace_steps, result.loss_trace, title, 300, result.outcome)
        assert a == b
        assert cached.decision_boundary_png(result.params, title) == drawn.decision_boundary_png(
            result.params, title
        )
    assert drawn._glyphs._bitmaps == {}
    assert len(cached._glyphs._bitmaps) > 0 or not compat_matplotlib.glyph_internals()


# ---- Hydra and OmegaConf -------------------------------------------------------------------------


def test_hydras_grid_sweeper_is_the_one_extended():
    from hydra.plugins.sweeper import Sweeper

    assert compat_hydra.BasicSweeper.__module__ == "hydra._internal.core_plugins.basic_sweeper"
    assert issubclass(compat_hydra.BasicSweeper, Sweeper)


def test_override_dirnames_are_hydras_and_the_fallbacks_rule_the_same(monkeypatch):
    overrides = OverridesParser.create().parse_overrides(
        ["seed=3", "lr=0.1", "+x='a=b'", "hidden_units=2", "tracking.uri=null"]
    )
    native = compat_hydra.overrides_dirname(overrides, ["tracking.uri"], ",", "=")
    assert native == "+x='a=b',hidden_units=2,lr=0.1,seed=3"
    import hydra._internal.config_loader_impl as loader

    monkeypatch.delattr(loader, "get_overrides_dirname")
    for exclude, item_sep, kv_sep in ((["tracking.uri"], ",", "="), (["seed"], "/", ":")):
        monkeypatch.undo()
        expected = compat_hydra.overrides_dirname(overrides, exclude, item_sep, kv_sep)
        monkeypatch.delattr(loader, "get_overrides_dirname")
        assert compat_hydra.overrides_dirname(overrides, exclude, item_sep, kv_sep) == expected


@pytest.mark.parametrize(
    "container",
    [{"a": {"b": [1, "x y", None, True, 1e5, "null", "a: b"]}}, ["one", 2, 3.5, "-0.0"], {"s": "x" * 200}],
)
def test_yaml_dumps_are_omegaconfs_and_the_fallbacks_the_same(container, monkeypatch):
    native = compat_hydra.yaml_dump(container)
    assert native == OmegaConf.to_yaml(OmegaConf.create(container))
    import omegaconf._utils as utils

    monkeypatch.delattr(utils, "get_omega_conf_dumper")
    assert compat_hydra.yaml_dump(container) == native


def test_nodes_and_parents_through_omegaconfs_internals():
    cfg = OmegaConf.create({"a": 1, "b": "${a}", "hydra": {"c": "${a}"}})
    node = compat_hydra.child_node(cfg, "b")
    assert compat_hydra.node_value(node) == "${a}"
    alone = OmegaConf.create({"c": "${a}"})
    assert compat_hydra.set_parent(alone, cfg)
    assert alone.c == 1


def test_a_parser_with_hydras_interval_replaced(monkeypatch):
    def interval(start: int, end: int) -> IntervalSweep:
        return IntervalSweep(start=start, end=end)

    interval.__signature__ = inspect.signature(interval, eval_str=True)  # Hydra checks the types

    [override] = compat_hydra.parser_with_function("interval", interval).parse_overrides(["x=interval(1,5)"])
    assert (type(override.value().start), override.value().start) == (int, 1)
    [plain] = OverridesParser.create().parse_overrides(["x=interval(1,5)"])
    assert type(plain.value().start) is float  # Hydra's own: the fallback
    from hydra.core.override_parser.overrides_parser import OverridesParser as Parser

    monkeypatch.setattr(Parser, "functions", None, raising=False)
    broken = compat_hydra.parser_with_function("interval", interval)
    assert isinstance(broken, OverridesParser)


# ---- concurrent.futures --------------------------------------------------------------------------


def _pid() -> int:
    import os

    return os.getpid()


def test_a_pools_processes_are_its_workers_and_the_fallback_this_processs_children(monkeypatch):
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        pids = {pool.submit(_pid).result() for _ in range(4)}
        processes = compat_futures.pool_processes(pool)
        assert pids <= {p.pid for p in processes} and len(processes) <= 2
        monkeypatch.setattr(pool, "_processes", None)
        assert {p.pid for p in processes} <= {p.pid for p in compat_futures.pool_processes(pool)}
        monkeypatch.undo()


# ---- a dependency outside the declared range ------------------------------------------------------


def test_an_import_error_inside_a_dependency_is_one_line_naming_it():
    namespace = {"__name__": "sqlalchemy.pool"}
    exec("def fail():\n    raise ImportError(\"cannot import name 'X' from 'sqlalchemy.pool'\")", namespace)
    try:
        namespace["fail"]()
    except ImportError as error:
        line = compat.unsupported(error)
    assert line is not None
    assert line.startswith(f"SQLAlchemy {compat.installed_version('SQLAlchemy')} (xorexp supports ")
    assert compat.declared_range("SQLAlchemy") not in ("unknown", "any")
    assert "constraints/tested.txt" in line
    assert compat.unsupported(ValueError("x")) is None


@pytest.mark.slow
def test_a_command_with_an_unimportable_dependency_says_so_in_one_line(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['sqlalchemy.pool'] = None\n")
    done = run_cli(tmp_path, "iterations=100", env={"PYTHONPATH": f"{site}:{ROOT}"})
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("xorexp: SQLAlchemy "), done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_a_sweep_on_public_paths_only_writes_what_the_internals_write(tmp_path):
    """``XOREXP_PUBLIC_ONLY=all`` (every internal off, as after a release that renamed them all):
    the same runs, the same values, every run FINISHED, the same job files."""
    args = ("-m", "seed=0,1,2", "lr=0.5,5", "iterations=300")
    assert_same_sweep_both_ways(tmp_path, args, {compat.PUBLIC_ONLY_ENV: "all"}, jobs=6)


def test_numpy_show_config_in_the_installed_numpy():
    """provenance reads NumPy's build with ``show_config(mode="dicts")`` (NumPy >= 1.26)."""
    config = np.show_config(mode="dicts")
    assert "Build Dependencies" in config


def test_the_check_runs_on_every_source_file():
    assert len(SOURCES) > 30 and (ROOT / "xorexp" / "compat" / "mlflow.py") in SOURCES
    assert subprocess.run([sys.executable, "-c", "import xorexp.compat"], cwd=ROOT).returncode == 0
