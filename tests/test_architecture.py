"""The house's import graph, read from the source with ``ast``: every import of every module in
``xorexp/`` and ``hydra_plugins/``, those inside functions and under ``if TYPE_CHECKING:`` included.

Held here: no import cycle among the project's modules; every module placed in one layer, importing
only the layers (and the outside packages) its layer may; MLflow's client only in
``xorexp/tracking/``, the model's code and the compat shims.

The layers, bottom up: Core (the engine), Params (the config and its checks), Summary (statistics
across seeds, and the numbers the sweep's figures show), Figures (drawing), Tracking (MLflow),
Model (a run's MLflow model and provenance), Orchestration (jobs and sweeps), Commands (the CLIs),
Plugins (Hydra's launcher and sweepers); compat shims sit beside them all.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("xorexp", "hydra_plugins")

CORE = "Core"
PARAMS = "Params"
SUMMARY = "Summary"
FIGURES = "Figures"
TRACKING = "Tracking"
MODEL = "Model"
ORCHESTRATION = "Orchestration"
COMMANDS = "Commands"
PLUGINS = "Plugins"
COMPAT = "compat"

# every module of the house, in exactly one layer: a new module fails the test until it is placed here
LAYER_OF = {
    "xorexp": CORE,
    "xorexp.data": CORE,
    "xorexp.nn": CORE,
    "xorexp.train": CORE,
    "xorexp.errors": PARAMS,
    "xorexp.params": PARAMS,
    "xorexp.config": PARAMS,
    "xorexp.mechanisms": PARAMS,  # the speed-ups' switches, read from the environment
    "xorexp.summary": SUMMARY,
    "xorexp.sweep_figure_data": SUMMARY,
    "xorexp.plot_style": FIGURES,
    "xorexp.png": FIGURES,
    "xorexp.run_plots": FIGURES,
    "xorexp.sweep_plot_axes": FIGURES,
    "xorexp.sweep_plots": FIGURES,
    "xorexp.tracking": TRACKING,
    "xorexp.tracking.tags": TRACKING,
    "xorexp.tracking.uri": TRACKING,
    "xorexp.tracking.health": TRACKING,
    "xorexp.tracking.sqlite": TRACKING,
    "xorexp.tracking.opened_store": TRACKING,
    "xorexp.tracking.store": TRACKING,
    "xorexp.tracking.reading": TRACKING,
    "xorexp.tracking.writing": TRACKING,
    "xorexp.tracking.artifacts": TRACKING,
    "xorexp.tracking.sql_writer": TRACKING,
    "xorexp.pyfunc": MODEL,
    "xorexp.provenance": MODEL,
    "xorexp.run_logging": MODEL,
    "xorexp.parent_run": ORCHESTRATION,
    "xorexp.progress": ORCHESTRATION,
    "xorexp.background": ORCHESTRATION,
    "xorexp.subprocesses": ORCHESTRATION,
    "xorexp.chunks": ORCHESTRATION,
    "xorexp.train_ahead": ORCHESTRATION,
    "xorexp.job": ORCHESTRATION,
    "xorexp.job_context": ORCHESTRATION,
    "xorexp.sweep": ORCHESTRATION,
    "xorexp.sweep_records": ORCHESTRATION,
    "xorexp.sweep_text": ORCHESTRATION,
    "xorexp.sweep_end": ORCHESTRATION,
    "xorexp.callbacks": ORCHESTRATION,
    "xorexp.__main__": COMMANDS,
    "xorexp.app": COMMANDS,
    "xorexp.report": COMMANDS,
    "xorexp.replay": COMMANDS,
    "xorexp.ui": COMMANDS,
    "hydra_plugins.xorexp_grid_sweeper": PLUGINS,
    "hydra_plugins.xorexp_grid_sweeper.xorexp_grid_sweeper": PLUGINS,
    "hydra_plugins.xorexp_optuna_sweeper": PLUGINS,
    "hydra_plugins.xorexp_optuna_sweeper.config": PLUGINS,
    "hydra_plugins.xorexp_optuna_sweeper.xorexp_optuna_sweeper": PLUGINS,
    "hydra_plugins.xorexp_optuna_sweeper._core": PLUGINS,
    "hydra_plugins.xorexp_optuna_sweeper._space": PLUGINS,
    "hydra_plugins.xorexp_optuna_sweeper._study": PLUGINS,
    "hydra_plugins.xorexp_vectorized_launcher": PLUGINS,
    "hydra_plugins.xorexp_vectorized_launcher.config": PLUGINS,
    "hydra_plugins.xorexp_vectorized_launcher.vectorized_launcher": PLUGINS,
    "hydra_plugins.xorexp_vectorized_launcher._core": PLUGINS,
    "hydra_plugins.xorexp_vectorized_launcher._job_runner": PLUGINS,
    "hydra_plugins.xorexp_vectorized_launcher._local_pool": PLUGINS,
    "hydra_plugins.xorexp_vectorized_launcher._ray_tasks": PLUGINS,
    "hydra_plugins.xorexp_vectorized_launcher._compose": PLUGINS,
    "hydra_plugins.xorexp_vectorized_launcher._hydra_job": PLUGINS,
    "hydra_plugins.xorexp_vectorized_launcher._ray_backend": PLUGINS,
    "xorexp.compat": COMPAT,
    "xorexp.compat.futures": COMPAT,
    "xorexp.compat.hydra": COMPAT,
    "xorexp.compat.matplotlib": COMPAT,
    "xorexp.compat.mlflow": COMPAT,
}

# the project's layers each layer may import besides its own (and compat, which anyone may import)
MAY_IMPORT = {
    CORE: set(),
    PARAMS: {CORE},
    SUMMARY: {CORE, PARAMS},  # statistics need no store
    FIGURES: {CORE, PARAMS, SUMMARY},  # the sweep's figures draw the summary's numbers, never compute them
    TRACKING: {CORE, PARAMS},  # never the model packaging, sweeps or commands
    MODEL: {CORE, PARAMS, TRACKING},
    ORCHESTRATION: {CORE, PARAMS, SUMMARY, FIGURES, TRACKING, MODEL},  # never Commands
    COMMANDS: {CORE, PARAMS, SUMMARY, FIGURES, TRACKING, MODEL, ORCHESTRATION},
    PLUGINS: {CORE, PARAMS, SUMMARY, FIGURES, TRACKING, MODEL, ORCHESTRATION},
    COMPAT: set(),  # a shim imports its own package only
}

# the outside packages (top-level names, beyond the standard library) a layer may import; None: any
OUTSIDE = {
    CORE: {"numpy"},
    PARAMS: {"numpy", "hydra", "omegaconf"},
    SUMMARY: {"numpy"},
    FIGURES: {"numpy", "matplotlib", "contourpy", "isal"},  # contourpy: matplotlib's; isal: PNG deflate
    TRACKING: {"numpy", "mlflow", "sqlalchemy"},  # SQLAlchemy: MLflow's SQL stores, read and written
    MODEL: {"numpy", "mlflow", "pandas", "xorexp_nn"},  # xorexp_nn: the copy of nn.py a saved model holds
    ORCHESTRATION: None,
    COMMANDS: None,
    PLUGINS: None,
    COMPAT: None,
}

# where MLflow's client may be called (MlflowClient, mlflow.*, a Store's ``client``)
MLFLOW_HOMES = ("xorexp.tracking", "xorexp.pyfunc", "xorexp.compat")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> dict[str, Path]:
    """Every module of the house by its dotted name."""
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def imported(tree: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """Every module an import of ``tree`` names, at any depth (in functions, under ``if
    TYPE_CHECKING:``, in ``try``); ``from a import b`` names the module ``a.b`` if there is one, else
    ``a``. Relative imports are resolved against ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                names.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return names


class House:
    """The project's modules, the project modules each imports and the outside packages it imports."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files
        self.trees = {name: ast.parse(path.read_text(), str(path)) for name, path in files.items()}
        self.edges: dict[str, set[str]] = {}
        self.outside: dict[str, set[str]] = {}
        for name, tree in self.trees.items():
            names = imported(tree, name, files[name].name == "__init__.py", set(files))
            self.edges[name] = {n for n in names if n in files and n != name}
            tops = {n.split(".")[0] for n in names}
            self.outside[name] = {
                top for top in tops if top not in PACKAGES and top not in sys.stdlib_module_names
            } - {"__future__"}

    def cycles(self) -> list[list[str]]:
        """The strongly connected groups of more than one module (Tarjan's algorithm)."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        groups: list[list[str]] = []

        def visit(node: str) -> None:
            index[node] = low[node] = len(index)
            stack.append(node)
            on_stack.add(node)
            for succ in sorted(self.edges[node]):
                if succ not in index:
                    visit(succ)
                    low[node] = min(low[node], low[succ])
                elif succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if low[node] == index[node]:
                group = []
                while not group or group[-1] != node:
                    group.append(stack.pop())
                    on_stack.discard(group[-1])
                if len(group) > 1:
                    groups.append(sorted(group))

        for node in sorted(self.edges):
            if node not in index:
                visit(node)
        return groups


@pytest.fixture(scope="module")
def house() -> House:
    return House(source_files())


def test_the_reader_sees_every_kind_of_import():
    """Imports inside functions, under TYPE_CHECKING and relative ones are edges; a name taken from a
    package's module is an edge to that module, not to the package."""
    code = (
        "from typing import TYPE_CHECKING\n"
        "from xorexp.tracking import reading\n"
        "if TYPE_CHECKING:\n"
        "    from xorexp.tracking.store import Store\n"
        "def f():\n"
        "    from xorexp import pyfunc\n"
        "    import matplotlib.pyplot\n"
        "    from . import tags\n"
    )
    modules = {"xorexp", "xorexp.tracking", "xorexp.tracking.reading", "xorexp.tracking.store",
               "xorexp.tracking.tags", "xorexp.pyfunc"}
    names = imported(ast.parse(code), "xorexp.tracking.example", False, modules)
    assert names == {"typing", "xorexp.tracking.reading", "xorexp.tracking.store", "xorexp.pyfunc",
                     "matplotlib.pyplot", "xorexp.tracking.tags"}
    uses = mlflow_uses(ast.parse("from mlflow.entities import Metric\nself.store.client.set_tag(run_id)\n"))
    assert uses == ["line 1: from mlflow.entities import Metric", "line 2: self.store.client"]


def test_every_module_is_in_one_layer_and_the_table_holds_no_ghost(house):
    unplaced = sorted(set(house.files) - set(LAYER_OF))
    ghosts = sorted(set(LAYER_OF) - set(house.files))
    assert not unplaced, f"modules in no layer (place each in LAYER_OF): {unplaced}"
    assert not ghosts, f"LAYER_OF names modules that no longer exist: {ghosts}"


def test_no_import_cycle(house):
    cycles = house.cycles()
    described = [
        " ; ".join(f"{a} -> {b}" for a in group for b in sorted(house.edges[a]) if b in group)
        for group in cycles
    ]
    assert not cycles, "import cycles (TYPE_CHECKING and function-level imports count):\n" + "\n".join(
        described
    )


def test_each_layer_imports_only_what_it_may(house):
    wrong = []
    for module, targets in sorted(house.edges.items()):
        layer = LAYER_OF.get(module)
        if layer is None:
            continue
        for target in sorted(targets):
            target_layer = LAYER_OF.get(target)
            if target_layer is None or target_layer == layer:
                continue
            if target_layer == COMPAT and layer != COMPAT:
                continue  # anyone may import a compat shim
            if target_layer not in MAY_IMPORT[layer]:
                wrong.append(f"{module} ({layer}) -> {target} ({target_layer})")
    assert not wrong, "imports across the layer table:\n" + "\n".join(wrong)


def test_each_layer_imports_only_its_outside_packages(house):
    wrong = []
    for module, packages in sorted(house.outside.items()):
        allowed = OUTSIDE[LAYER_OF[module]] if module in LAYER_OF else None
        if allowed is None:
            continue
        extra = sorted(packages - allowed)
        if extra:
            wrong.append(f"{module} ({LAYER_OF[module]}) imports {', '.join(extra)}")
    assert not wrong, "outside packages a layer may not import:\n" + "\n".join(wrong)


def mlflow_uses(tree: ast.AST) -> list[str]:
    """Each line that imports MLflow, names ``mlflow`` or ``MlflowClient``, or takes a ``client``
    attribute (a Store's MLflow client)."""
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            used = any(alias.name.split(".")[0] == "mlflow" for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            used = not node.level and (node.module or "").split(".")[0] == "mlflow"
        elif isinstance(node, ast.Name):
            used = node.id in ("mlflow", "MlflowClient")
        elif isinstance(node, ast.Attribute):
            used = node.attr in ("client", "MlflowClient")
        else:
            used = False
        if used:
            uses.append(f"line {node.lineno}: {ast.unparse(node)[:80]}")
    return sorted(set(uses), key=lambda use: int(use.split()[1].rstrip(":")))


def test_mlflow_is_called_only_from_tracking(house):
    wrong = []
    for module, tree in sorted(house.trees.items()):
        if any(module == home or module.startswith(home + ".") for home in MLFLOW_HOMES):
            continue
        wrong += [f"{module} {use}" for use in mlflow_uses(tree)]
    assert not wrong, "MLflow (its client, a Store's client) outside xorexp/tracking/:\n" + "\n".join(wrong)
