"""Faults injected into real xorexp processes (launching process and workers) by the fault tests.

Put this folder first on PYTHONPATH and set XOREXP_FAULT to ``KIND:SEED`` (several separated by
commas); a chunk of runs that holds SEED then meets the fault:
- ``train``: training raises MemoryError (as a too-large batch would);
- ``die``: a worker process dies on the spot (as an out-of-memory kill would); no effect outside workers;
- ``slow``: training takes 2 s longer (to interrupt a sweep mid-way).
"""

import multiprocessing
import os
import time

_faults = [item.partition(":") for item in os.environ.get("XOREXP_FAULT", "").split(",") if item]
if _faults:
    import xorexp.chunks as _chunks

    _real_train_chunk = _chunks.train_chunk

    def _train_chunk(specs):
        seeds = {spec.seed for spec in specs}
        for kind, _, seed in _faults:
            if int(seed) not in seeds:
                continue
            if kind == "train":
                raise MemoryError("injected: cannot allocate the batch")
            if kind == "die" and multiprocessing.parent_process() is not None:
                os._exit(9)
            if kind == "slow":
                time.sleep(2)
        return _real_train_chunk(specs)

    _chunks.train_chunk = _train_chunk
