"""What xorexp's helper processes share: the launcher's workers and the child training a small sweep
ahead (``xorexp.train_ahead``) each use one BLAS thread, and end by themselves when the launching
process is gone (killed with -9, it cannot stop them)."""

from __future__ import annotations

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
