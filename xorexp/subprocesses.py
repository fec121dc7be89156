"""What xorexp's processes share. The helper processes (the launcher's workers, the child training a
sweep ahead: ``xorexp.train_ahead``) each use one BLAS thread and end by themselves when the
launching process is gone (killed with -9, it cannot stop them). Every process that loaded MLflow
ends with ``quick_teardown``. The launcher's workers are forked when that is safe (``worker_context``);
what the launching process alone must hold (the sweep directory's lock, the sweep's log file) is
registered with ``launching_only`` and let go of in every forked child.
"""

from __future__ import annotations

import atexit
import gc
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from multiprocessing.context import BaseContext

from xorexp import mechanisms

log = logging.getLogger(__name__)

# the engine's arrays are small: one thread each, the processes already take every core
SINGLE_THREAD_BLAS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
PARENT_POLL_S = 0.5  # how often a helper process checks that the launching process is alive
START_METHOD_VARIABLE = "XOREXP_WORKER_START"  # "spawn": never fork (workers spawned)


def exit_with_parent(parent_pid: int) -> None:
    """A daemon thread ends this process (``os._exit(1)``) once ``parent_pid`` is no longer its parent."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="xorexp-watch-parent", daemon=True).start()


def quick_teardown() -> None:
    """At this process's exit, after every atexit handler registered later (call it first thing):
    close the stores' SQL connections, then freeze the garbage collector. The interpreter's teardown
    otherwise walks the object graphs MLflow and SQLAlchemy built at import (a second of every command
    and of every worker's end that the sweep waits for, measured); frozen, the cyclic garbage is
    left to the process's end. Files are flushed and closed by their owners' own handlers before
    (logging's shutdown, the standard streams), the stores' connections here."""

    def teardown() -> None:
        from xorexp.tracking.store import close_engines

        close_engines()
        gc.freeze()

    if mechanisms.on("quick_teardown"):
        atexit.register(teardown)


def worker_context() -> BaseContext:
    """How the launcher's workers start. Forked when this process runs no other thread: a worker then
    begins with what this process has imported and opened (Hydra, MLflow, the store), instead of a new
    interpreter importing them again (seconds of CPU a worker: benchmarks/README.md).
    Spawned otherwise: a fork copies a lock another thread may hold at that moment, never released in
    the child. Before a fork, the stores' SQL connections are closed (``close_engines``): none crosses
    into a child, where closing or using it would act on this process's database session."""
    return multiprocessing.get_context("fork" if _ready_to_fork() else "spawn")


def _ready_to_fork() -> bool:
    """Whether this process may fork now: it runs no other thread, forking is not turned off
    (``START_METHOD_VARIABLE=spawn``, which the benchmarks use to compare) and the platform forks.
    If so, the stores' SQL connections are closed first, so that none crosses into the child."""
    if os.environ.get(START_METHOD_VARIABLE) == "spawn" or threading.active_count() != 1:
        return False
    if "fork" not in multiprocessing.get_all_start_methods():
        return False
    from xorexp.tracking.store import close_engines

    close_engines()
    return True


_launching_only: dict[int, Callable[[], None]] = {}


def launching_only(release: Callable[[], None]) -> Callable[[], None]:
    """Have ``release`` run in every child forked from now on, first thing: it lets go of something
    only this process may hold (a lock's file descriptor, a log handler). Returns the function that
    takes it back (call it once the resource is gone)."""
    key = id(release)
    _launching_only[key] = release
    return lambda: _launching_only.pop(key, None)


def _after_fork_in_child() -> None:
    """First thing in a forked child: the objects it inherited are never collected here (``gc.freeze``:
    the collector would otherwise walk the parent's whole heap, and copy its pages, at each full
    collection), and what only the parent may hold is let go of."""
    gc.freeze()
    for release in list(_launching_only.values()):
        try:
            release()
        except Exception:
            log.debug("a forked child could not let go of a resource of its parent", exc_info=True)
    _launching_only.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
