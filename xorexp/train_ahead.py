"""A small sweep's training, started in a child process before the sweep opens its store.

A sweep of fewer than ``MIN_RUNS`` jobs trains in the launching process (the vectorized launcher
starts no workers for it), after the sweep has opened its store and its parent run: MLflow's import
and a fresh store's migrations (seconds) and then the training (seconds) one after the other, on one
of the machine's cores. ``start`` (called by ``Sweep.start`` before the store opens) trains the
grid's runs in a child process meanwhile; the launcher ``take``s the results of a batch from it
instead of training the batch itself. Threads would not do: the engine's small array operations
hold the GIL, and so does importing (measured: no overlap at all).

Only a speculation, never needed for correctness: the grid's specs are derived here from the
config (its values and the sweep's swept values), and a batch is taken only if every one of its
specs is among them; a run's numbers depend only on its spec (``train``: bit-identical whatever
the batch or process, as the worker processes already rely on). Whatever goes wrong with the
child (it cannot start, dies, or its training raises), ``take`` returns None and the launcher
trains the batch itself, as without this module: a training error then happens there and fails
the jobs as usual. Nothing of this is shown (debug log lines only): the sweep's output and store
are the same either way. The child is stopped when the sweep ends, however it ends; it ignores Ctrl-C
(the launching process decides) and exits by itself when the launching process is gone.

The child: ``python -m xorexp.train_ahead``, specs pickled on stdin, ``("ok", results)`` or
``("error", traceback)`` pickled on stdout. It imports NumPy and the engine only.
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import signal
import subprocess
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from xorexp.subprocesses import SINGLE_THREAD_BLAS, exit_with_parent
from xorexp.train import RunResult, RunSpec, plan_batches

log = logging.getLogger(__name__)

MIN_RUNS = 16  # the vectorized launcher's MIN_RUNS_FOR_WORKERS: from there on, its workers train
LAUNCHER = "hydra_plugins.xorexp_vectorized_launcher.vectorized_launcher.VectorizedLauncher"
SWEEPER = "hydra_plugins.xorexp_grid_sweeper.xorexp_grid_sweeper.XorexpGridSweeper"
STOP_WAIT_S = 2.0  # how long a stopped child gets before it is killed

_running: Ahead | None = None


def grid_specs(config: Any) -> list[RunSpec] | None:
    """The specs of a small grid sweep that the vectorized launcher trains in this process, derived
    from the sweep's master config; None when it is not one (another sweeper or launcher, workers,
    a sweep of anything but the run's values, too many jobs)."""
    from xorexp.config import count_jobs, spec_from_values, sweep_overrides, swept_values
    from xorexp.params import RESULT_KEYS

    hydra = config.hydra
    if hydra.sweeper.get("_target_") != SWEEPER or hydra.launcher.get("_target_") != LAUNCHER:
        return None
    if hydra.launcher.get("backend") != "local":
        return None
    total = count_jobs(config)
    if total is None or not 0 < total < MIN_RUNS:
        return None
    for override in sweep_overrides(config):  # fixed values are in ``config`` already
        if override.is_sweep_override() and override.get_key_element() not in RESULT_KEYS:
            return None  # e.g. a config group swept: its jobs' values are Hydra's to say
    swept = swept_values(config)
    keys = list(swept)
    specs = []
    for values in itertools.product(*(swept[key] for key in keys)):
        job = {key: config[key] for key in RESULT_KEYS} | dict(zip(keys, values, strict=True))
        specs.append(spec_from_values(job))
    return specs if len(specs) == total else None


def start(config: Any) -> Ahead | None:
    """Start training a small grid sweep's runs in a child process (None: not such a sweep, or the
    child could not start: the launcher then trains as usual). ``stop`` ends it."""
    global _running
    try:
        specs = grid_specs(config)
    except Exception:  # a value the sweep's checks let through: the launcher reports it
        log.debug("no training ahead", exc_info=True)
        return None
    if not specs:
        return None
    try:
        ahead = Ahead(specs, int(config.hydra.launcher.chunk_size))
    except Exception:
        log.debug("could not start training ahead: the launcher trains", exc_info=True)
        return None
    _running = ahead
    return ahead


def take(specs: Sequence[RunSpec]) -> list[RunResult] | None:
    """The results of ``specs`` (in their order) from the child training ahead, waiting for it;
    None if there is none, it does not have them all, or it failed (the launcher then trains)."""
    if _running is None:
        return None
    return _running.take(specs)


def stop() -> None:
    """End the child (if still running) and forget it; called when the sweep ends, however."""
    global _running
    ahead, _running = _running, None
    if ahead is not None:
        ahead.stop()


class Ahead:
    def __init__(self, specs: list[RunSpec], chunk_size: int) -> None:
        self.specs = specs
        self.results: dict[RunSpec, RunResult] | None = None
        self.failed = False
        env = {**os.environ, **SINGLE_THREAD_BLAS}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xorexp.train_ahead", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # what goes wrong comes back on stdout, or the launcher trains
            env=env,
        )
        try:
            self.proc.stdin.write(pickle.dumps((specs, chunk_size)))
            self.proc.stdin.close()
        except OSError:  # the child is gone already: take() finds no result
            pass
        log.debug("training %d runs ahead in process %d", len(specs), self.proc.pid)

    def take(self, specs: Sequence[RunSpec]) -> list[RunResult] | None:
        if self.failed or not all(spec in self.specs for spec in specs):
            return None
        if self.results is None:
            self._warm_up()
            self.results = self._read()
            if self.results is None:
                self.failed = True
                return None
        return [self.results[spec] for spec in specs]

    def _warm_up(self) -> None:
        """While the child trains: import what the jobs and the sweep's end import anyway (matplotlib
        for the plots, MLflow's model code and pandas for the best run's model)."""
        if self.proc.poll() is not None:
            return
        try:
            from xorexp import pyfunc, run_plots, sweep_plots  # noqa: F401

            run_plots.run_plotter()
        except Exception:  # they fail again where they are used, and are reported there
            log.debug("warming up failed", exc_info=True)

    def _read(self) -> dict[RunSpec, RunResult] | None:
        try:
            data = self.proc.stdout.read()
            self.proc.wait()
            kind, payload = pickle.loads(data)
        except Exception:
            log.debug(
                "the process training ahead (%d) ended without results (status %s): the launcher trains",
                self.proc.pid, self.proc.returncode, exc_info=True,
            )
            return None
        if kind != "ok":
            log.debug("training ahead failed, the launcher trains again:\n%s", payload)
            return None
        return {result.spec: result for result in payload}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


def _child(parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the launching process stops this one

    exit_with_parent(parent_pid)
    out = sys.stdout.buffer
    try:
        specs, chunk_size = pickle.loads(sys.stdin.buffer.read())
        from xorexp import chunks  # the launcher's own unit of training

        results = []
        for members in plan_batches(specs, chunk_size):
            results += chunks.train_chunk([specs[i] for i in members])
        message = ("ok", results)
    except Exception:
        message = ("error", traceback.format_exc())
    out.write(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
    out.flush()


if __name__ == "__main__":
    _child(int(sys.argv[1]))
