"""What xorexp's processes share. The helper processes (the launcher's workers, the child training a
small sweep ahead: ``xorexp.train_ahead``) each use one BLAS thread and end by themselves when the
launching process is gone (killed with -9, it cannot stop them). Every process that loaded MLflow
ends with ``quick_teardown``."""

from __future__ import annotations

import atexit
import gc
import os
import threading
import time

# the engine's arrays are small: one thread each, the processes already take every core
SINGLE_THREAD_BLAS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
PARENT_POLL_S = 0.5  # how often a helper process checks that the launching process is alive


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
    otherwise walks the object graphs MLflow and SQLAlchemy built at import (~1 s of every command
    and of every worker's end that the sweep waits for, measured); frozen, the cyclic garbage is
    left to the process's end. Files are flushed and closed by their owners' own handlers before
    (logging's shutdown, the standard streams), the stores' connections here."""

    def teardown() -> None:
        from xorexp.tracking.store import close_engines

        close_engines()
        gc.freeze()

    atexit.register(teardown)
