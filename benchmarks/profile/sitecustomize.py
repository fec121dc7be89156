"""Where a sweep's time goes: timers around a table of functions, in every process of a command.

Used by ``benchmarks/bench_sweep.py``: it puts this folder first on PYTHONPATH and sets
XOREXP_PROFILE_DIR, so the launching process and every spawned worker import this module at start
(a forked worker has it from its parent, and starts its accounting afresh at the fork).
Nothing of the product changes: the functions named in ``WRAPPED`` are wrapped right after their
module is first imported (an import hook), so ``from module import name`` elsewhere gets the timed one.

Accounting, per process (wall seconds of its main thread):
- ``start-up``: from the process's start (the kernel's start time, so the interpreter's own start
  counts) to its first call of a ``FIRST_WORK`` function: imports and set-up;
- each wrapped call counts for its category, less the time of wrapped calls nested in it (time goes to
  the innermost category), except in the ``ABSORBING`` categories, which keep everything under them;
- ``idle``: a worker's time between two ``TASK`` calls and after its last one (waiting for work);
- ``other``: the rest of the process's life (to the moment the totals are written).
The totals go to ``$XOREXP_PROFILE_DIR/<pid>.json`` at exit and after each ``TASK`` call (a worker
may be stopped without running its exit handlers); a process that never called a ``FIRST_WORK``
function (e.g. multiprocessing's resource tracker) writes nothing. Calls from other threads are not
timed.

When modules move, adapt the table below (``module:function`` or ``module:Class.method``;
``module:Class.*`` takes every public method defined on the class).

A second mode, for ``benchmarks/bench_small.py``: with XOREXP_PHASES_FILE set, the process that runs
Hydra writes there at exit, as JSON, the seconds from its start to the first entry and the last exit of
each function of ``PHASES`` (main thread only). Other processes (e.g. a child training ahead) write
nothing; functions missing from a revision are absent.
"""

from __future__ import annotations

import atexit
import functools
import importlib.abc
import json
import multiprocessing
import os
import sys
import threading
import time

WRAPPED = {
    "xorexp.train:train": "training",
    "xorexp.chunks:train_chunk": "training",
    "xorexp.chunks:render_run_plots": "plots",
    "xorexp.chunks:render_many": "plots",
    "mlflow.tracking.client:MlflowClient.*": "MLflow calls",
    "xorexp.tracking.store:open_store": "MLflow calls",
    "xorexp.tracking.writing:start_run": "MLflow calls",
    "xorexp.tracking.writing:log_result": "MLflow calls",
    "xorexp.tracking.artifacts:log_files": "MLflow calls",
    "xorexp.tracking.writing:finish_run": "MLflow calls",
    "xorexp.tracking.writing:log_failure": "MLflow calls",
    "xorexp.tracking.writing:start_parent": "MLflow calls",
    "xorexp.tracking.writing:log_to_run": "MLflow calls",
    "xorexp.run_logging:start_run": "MLflow calls",
    "xorexp.run_logging:log_result": "MLflow calls",
    "xorexp.run_logging:start_parent": "MLflow calls",
    "xorexp.tracking.reading:find_finished": "MLflow calls",
    "hydra._internal.utils:_run_hydra": "Hydra job work",
    "hydra.core.utils:run_job": "Hydra job work",
    "hydra_plugins.xorexp_vectorized_launcher._hydra_job:run_job": "Hydra job work",
    "hydra_plugins.xorexp_vectorized_launcher._local_pool:run_jobs_in_worker": "Hydra job work",
    "hydra_plugins.xorexp_vectorized_launcher._local_pool:launch_on_processes": "waiting for workers",
    "xorexp.sweep:Sweep.finish": "end of sweep",
}
# the same functions in revisions before the tracking package (xorexp/tracking.py), so that older
# revisions can be timed with this table; not reported when absent
OLDER_NAMES = {
    "xorexp.tracking:open_store": "MLflow calls",
    "xorexp.tracking:start_run": "MLflow calls",
    "xorexp.tracking:log_result": "MLflow calls",
    "xorexp.tracking:log_files": "MLflow calls",
    "xorexp.tracking:finish_run": "MLflow calls",
    "xorexp.tracking:log_failure": "MLflow calls",
    "xorexp.tracking:start_parent": "MLflow calls",
    "xorexp.tracking:log_to_run": "MLflow calls",
    "xorexp.tracking:find_finished": "MLflow calls",
}
WRAPPED.update(OLDER_NAMES)
ABSORBING = {"end of sweep"}  # summary, sweep figures, best model: its MLflow calls and plots included
TASK = "hydra_plugins.xorexp_vectorized_launcher._local_pool:run_jobs_in_worker"  # a worker's unit of work
FIRST_WORK = {"hydra._internal.utils:_run_hydra", TASK}  # start-up ends at the first call of one
NOT_WORK = {"waiting for workers", "idle"}  # shown, but not in the total of work

PHASES = (
    "hydra._internal.utils:_run_hydra",
    "xorexp.sweep:Sweep.start",
    "xorexp.job:store_for",
    "hydra_plugins.xorexp_vectorized_launcher._core:launch",
    "hydra_plugins.xorexp_vectorized_launcher._job_runner:train_batch",
    "hydra_plugins.xorexp_vectorized_launcher._job_runner:JobRunner.run",
    "xorexp.sweep:Sweep.finish",
)

_DIR = os.environ.get("XOREXP_PROFILE_DIR")
_PHASES_FILE = os.environ.get("XOREXP_PHASES_FILE")
_phases: dict[str, list[float]] = {}  # name -> [first entry, last exit, total seconds]
_totals: dict[str, float] = {}
_calls: dict[str, int] = {}
_missing: list[str] = []  # names of the table not found in their (imported) module
_stack: list[list] = []  # [category, start, nested seconds]
_state = {"started": None, "last_task_end": None}
_main = threading.main_thread()


def _process_start() -> float:
    """The process's start, on the perf_counter clock (10 ms resolution: the kernel counts in ticks)."""
    with open("/proc/self/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    started_s = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time since boot
    return time.perf_counter() - (time.clock_gettime(time.CLOCK_BOOTTIME) - started_s)


_BORN = _process_start()


def _forked() -> None:
    """A worker forked from the launching process keeps its own accounting from the fork on: it starts
    empty (the parent's totals, phases and open calls stay the parent's; a forked child never returns
    into those calls), and its start-up is the time from the fork to its first task."""
    global _BORN
    _BORN = time.perf_counter()
    for kept in (_totals, _calls, _phases):
        kept.clear()
    _stack.clear()
    _state.update(started=None, last_task_end=None)


os.register_at_fork(after_in_child=_forked)


def _timed(function, name: str, category: str):
    @functools.wraps(function)
    def timed(*args, **kwargs):
        if threading.current_thread() is not _main:
            return function(*args, **kwargs)
        now = time.perf_counter()
        if name in FIRST_WORK and _state["started"] is None:
            _state["started"] = now
        if name == TASK and _state["last_task_end"] is not None:
            _add("idle", now - _state["last_task_end"])
        absorbed = any(frame[0] in ABSORBING for frame in _stack)
        if not absorbed:
            _stack.append([category, now, 0.0])
        try:
            return function(*args, **kwargs)
        finally:
            if not absorbed:
                category_, start, nested = _stack.pop()
                spent = time.perf_counter() - start
                _add(category_, spent - nested)
                _calls[category_] = _calls.get(category_, 0) + 1
                if _stack:
                    _stack[-1][2] += spent
            if name == TASK:
                _state["last_task_end"] = time.perf_counter()
                _dump()

    return timed


def _add(category: str, seconds: float) -> None:
    _totals[category] = _totals.get(category, 0.0) + seconds


def _dump() -> None:
    started = _state["started"]
    if not _DIR or started is None:  # not an xorexp process (e.g. multiprocessing's resource tracker)
        return
    now = time.perf_counter()
    categories = dict(_totals)
    categories["start-up"] = started - _BORN
    if _state["last_task_end"] is not None and not _stack:
        categories["idle"] = categories.get("idle", 0.0) + now - _state["last_task_end"]
    lifetime = now - _BORN
    categories["other"] = lifetime - sum(categories.values())
    record = {
        "pid": os.getpid(),
        "role": "worker" if multiprocessing.parent_process() is not None else "main",
        "argv": sys.argv,
        "lifetime": lifetime,
        "seconds": categories,
        "calls": _calls,
        "missing": _missing,
        "peak_rss_kb": _peak_rss_kb(),
    }
    path = os.path.join(_DIR, f"{os.getpid()}.json")
    with open(path + ".tmp", "w") as out:
        json.dump(record, out)
    os.replace(path + ".tmp", path)


def _peak_rss_kb() -> int | None:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def _phase(function, name: str):
    @functools.wraps(function)
    def timed(*args, **kwargs):
        if threading.current_thread() is not _main:
            return function(*args, **kwargs)
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            end = time.perf_counter()
            entry = _phases.setdefault(name, [start - _BORN, 0.0, 0.0])
            entry[1] = end - _BORN
            entry[2] += end - start

    return timed


def _dump_phases() -> None:
    if PHASES[0] in _phases:
        with open(_PHASES_FILE, "w") as out:
            json.dump({"end": time.perf_counter() - _BORN, "seen": _phases}, out)


def _patch_phases(module) -> None:
    for target in PHASES:
        module_name, _, attribute = target.partition(":")
        if module_name != module.__name__:
            continue
        owner_name, _, name = attribute.rpartition(".")
        owner = getattr(module, owner_name, None) if owner_name else module
        if owner is None or name not in vars(owner):
            continue
        raw = vars(owner)[name]
        if isinstance(raw, classmethod):
            setattr(owner, name, classmethod(_phase(raw.__func__, target)))
        else:
            setattr(owner, name, _phase(raw, target))


def _patch(module) -> None:
    if _PHASES_FILE:
        _patch_phases(module)
    if _DIR:
        _patch_profile(module)


def _patch_profile(module) -> None:
    for target, category in WRAPPED.items():
        module_name, _, attribute = target.partition(":")
        if module_name != module.__name__:
            continue
        owner_name, _, method = attribute.rpartition(".")
        owner = getattr(module, owner_name, None) if owner_name else module
        if owner is None or (method != "*" and not callable(getattr(owner, method, None))):
            if target not in OLDER_NAMES:
                _missing.append(target)  # moved or renamed: not timed (its time goes to its caller)
            continue
        names = [method]
        if method == "*":
            names = [n for n, v in vars(owner).items() if not n.startswith("_") and callable(v)]
        for name in names:
            full = f"{module_name}:{owner_name + '.' if owner_name else ''}{name}"
            setattr(owner, name, _timed(getattr(owner, name), target if method != "*" else full, category))


_MODULES = {target.partition(":")[0] for target in [*WRAPPED, *PHASES]}


class _Patcher(importlib.abc.MetaPathFinder):
    """Finds nothing itself: lets the other finders find a listed module, then patches it once run."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _MODULES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                loader, execute = spec.loader, spec.loader.exec_module

                def exec_module(module, execute=execute):
                    execute(module)
                    _patch(module)

                loader.exec_module = exec_module
                return spec
        return None


if _DIR or _PHASES_FILE:
    sys.meta_path.insert(0, _Patcher())
if _DIR:
    atexit.register(_dump)
if _PHASES_FILE:
    atexit.register(_dump_phases)
