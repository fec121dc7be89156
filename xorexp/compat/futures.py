"""The standard library's ``concurrent.futures`` internals: a process pool's worker processes."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from xorexp.compat import private_ok


def pool_processes(pool: ProcessPoolExecutor) -> list:
    """The pool's live worker processes (``ProcessPoolExecutor._processes``: it has no public way to
    stop busy workers); fallback: every live child process of this one (``active_children``)."""
    processes = getattr(pool, "_processes", None)
    if isinstance(processes, dict) and private_ok("futures"):
        return list(processes.values())
    return multiprocessing.active_children()
