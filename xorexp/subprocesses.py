"""What xorexp's processes share. The helper processes (the launcher's workers, the child training a
sweep ahead: ``xorexp.train_ahead``) each use one BLAS thread and end by themselves when the
launching process is gone (killed with -9, it cannot stop them). Every process that loaded MLflow
ends with ``quick_teardown``. The launcher's workers are forked when that is safe (``worker_context``);
what the launching process alone must hold (the sweep directory's lock, the sweep's log file) is
registered with ``launching_only`` and let go of in every forked child. ``aside`` computes one thing in
a forked child while the launching process does another (the sweep's end).
"""

from __future__ import annotations

import atexit
import gc
import logging
import multiprocessing
import os
import pickle
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.context import BaseContext
from typing import Any

from xorexp import mechanisms

log = logging.getLogger(__name__)

# the engine's arrays are small: one thread each, the processes already take every core
SINGLE_THREAD_BLAS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
PARENT_POLL_S = 0.5  # how often a helper process checks that the launching process is alive
START_METHOD_VARIABLE = "XOREXP_WORKER_START"  # "spawn": never fork (workers spawned, nothing aside)
ASIDE_TIMEOUT_S = 300.0  # the longest a forked child of ``aside`` is waited for


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


class Aside:
    """``fn()`` computed in a forked child while this process goes on (see ``aside``)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        parent = os.getpid()
        read_fd, write_fd = os.pipe()
        self.pid: int | None = os.fork()
        if self.pid == 0:  # the child: never returns into the parent's code
            status = 1
            try:
                os.close(read_fd)
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides, and ends this one
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                exit_with_parent(parent)
                data = pickle.dumps(fn(), protocol=pickle.HIGHEST_PROTOCOL)
                with os.fdopen(write_fd, "wb") as out:
                    out.write(data)
                status = 0
            finally:
                os._exit(status)
        os.close(write_fd)
        self.read_fd: int | None = read_fd

    def result(self, timeout: float = ASIDE_TIMEOUT_S) -> Any:
        """``fn()``'s value; ``AsideFailed`` if it raised, the child died, or it took longer than
        ``timeout`` seconds (then it is killed). Whatever it was, doing the work in this process says
        it again, with its traceback."""
        deadline = time.monotonic() + timeout
        chunks = []
        with os.fdopen(self.read_fd, "rb", buffering=0) as data_in:
            self.read_fd = None
            while True:
                ready, _, _ = select.select([data_in], [], [], max(0.0, deadline - time.monotonic()))
                if not ready:
                    self.cancel()
                    raise AsideFailed(f"the forked child took more than {timeout:g} s: killed")
                chunk = data_in.read(1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        data = b"".join(chunks)
        _, status = os.waitpid(self.pid, 0)
        self.pid = None
        if os.waitstatus_to_exitcode(status) != 0:
            raise AsideFailed(f"the forked child ended with status {os.waitstatus_to_exitcode(status)}")
        return pickle.loads(data)

    def cancel(self) -> None:
        """The child is killed (if not collected yet) and nothing of it is left."""
        if self.read_fd is not None:
            os.close(self.read_fd)
            self.read_fd = None
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.pid, 0)
            self.pid = None


class AsideFailed(RuntimeError):
    """The forked child of ``aside`` did not give its value."""


@contextmanager
def aside(fn: Callable[[], Any]) -> Iterator[Aside | None]:
    """``fn()`` in a forked child while the ``with`` block runs here; its value is the child's
    ``result()``. None (do it here then) when forking is not safe (another thread runs: see
    ``worker_context``) or not possible. The child is killed when the block is left without its
    value (an interrupt, an error), so it never outlives the block; it ignores Ctrl-C (this process
    ends it) and ends by itself when this process is gone."""
    child = None
    if mechanisms.on("aside") and _ready_to_fork():
        try:
            child = Aside(fn)
        except OSError:
            log.debug("could not fork: done in this process", exc_info=True)
    try:
        yield child
    finally:
        if child is not None:
            child.cancel()


def made_aside(child: Aside | None, fn: Callable[[], Any]) -> Any:
    """``fn()``'s value: the child's (``aside(fn)``), or computed here when there is no child or it
    failed (what failed there then fails here, with its traceback)."""
    if child is not None:
        try:
            return child.result()
        except AsideFailed:
            log.debug("the forked child failed: done in this process", exc_info=True)
    return fn()
