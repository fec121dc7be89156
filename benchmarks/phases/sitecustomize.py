"""The phases of one command's launching process, for ``benchmarks/bench_small.py``.

Put this folder first on PYTHONPATH and set XOREXP_PHASES_FILE: the process that runs Hydra writes,
at exit, the seconds from its start (the kernel's start time) to the first entry and last exit of
each function of ``TIMED`` (main thread only) as JSON. Other processes (e.g. a child training ahead)
write nothing. Functions missing from a revision are simply absent. Nothing of the product changes.
"""

from __future__ import annotations

import atexit
import functools
import importlib.abc
import json
import os
import sys
import threading
import time

TIMED = (
    "hydra._internal.utils:_run_hydra",
    "xorexp.sweep:Sweep.start",
    "xorexp.job:store_for",
    "hydra_plugins.xorexp_vectorized_launcher._core:launch",
    "hydra_plugins.xorexp_vectorized_launcher._core:_train",
    "hydra_plugins.xorexp_vectorized_launcher._core:JobRunner.run",
    "xorexp.sweep:Sweep.finish",
)
_FILE = os.environ.get("XOREXP_PHASES_FILE")


def _process_start() -> float:
    with open("/proc/self/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    started_s = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return time.perf_counter() - (time.clock_gettime(time.CLOCK_BOOTTIME) - started_s)


_BORN = _process_start()
_seen: dict[str, list[float]] = {}  # name -> [first entry, last exit, total seconds]


def _timed(function, name: str):
    @functools.wraps(function)
    def timed(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            return function(*args, **kwargs)
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            end = time.perf_counter()
            entry = _seen.setdefault(name, [start - _BORN, 0.0, 0.0])
            entry[1] = end - _BORN
            entry[2] += end - start

    return timed


def _patch(module) -> None:
    for target in TIMED:
        module_name, _, attribute = target.partition(":")
        if module_name != module.__name__:
            continue
        owner_name, _, name = attribute.rpartition(".")
        owner = getattr(module, owner_name, None) if owner_name else module
        if owner is None or name not in vars(owner):
            continue
        raw = vars(owner)[name]
        if isinstance(raw, classmethod):
            setattr(owner, name, classmethod(_timed(raw.__func__, target)))
        else:
            setattr(owner, name, _timed(raw, target))


class _Patcher(importlib.abc.MetaPathFinder):
    modules = {target.partition(":")[0] for target in TIMED}

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.modules:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                execute = spec.loader.exec_module

                def exec_module(module, execute=execute):
                    execute(module)
                    _patch(module)

                spec.loader.exec_module = exec_module
                return spec
        return None


def _dump() -> None:
    if TIMED[0] in _seen:
        with open(_FILE, "w") as out:
            json.dump({"end": time.perf_counter() - _BORN, "seen": _seen}, out)


if _FILE:
    sys.meta_path.insert(0, _Patcher())
    atexit.register(_dump)
