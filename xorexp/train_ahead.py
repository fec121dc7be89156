"""A sweep's training, started in a child process before the sweep opens its store.

Before its first job, a sweep opens its store and its parent run: MLflow's import and a fresh
store's migrations take seconds on one of the machine's cores, while the other core has nothing to
do. ``start`` (called by ``Sweep.start`` before the store opens) trains the grid's runs in a child
process meanwhile, chunk after chunk, each chunk's results sent as soon as it is trained:

- a sweep of fewer than ``MIN_RUNS`` jobs (no workers: the launching process runs them) ``collect``s a
  batch's results from the child, waiting for them, instead of training the batch itself;
- a sweep with workers takes what the child has trained when it starts them (``ready``, without
  waiting) and stops the child: the workers train only the runs missing from it.

Once all its runs are trained, the child renders their plots (``chunks.render_run_plots``, the same
bytes in any process) while it is left to run: a short sweep's store opens for longer than its
training takes, and every run's plots rendered there are work less for the workers. A
result comes with its plots where the child sent them (``(result, pngs)``, as a launcher hands
them to a job); a run whose plots the child could not render (or not yet) has them rendered by its
job, as without this module.

Threads would not do: the engine's small array operations hold the GIL, and so does importing
(measured: no overlap at all).

Only a speculation, never needed for correctness: the grid's specs are derived here from the
config (its values and the sweep's swept values), and a result is used only for a spec among them;
a run's numbers depend only on its spec (``train``: bit-identical whatever the batch or process, as
the worker processes already rely on). Whatever goes wrong with the child (it cannot start, dies,
or its training raises), ``collect`` returns None and ``ready`` what came before, and the launcher
trains the rest itself, as without this module: a training error then happens there and fails the
jobs as usual. Nothing of this is shown (debug log lines only): the sweep's output and store are
the same either way. The child is stopped when the sweep ends, however it ends; it ignores Ctrl-C
(the launching process decides) and exits by itself when the launching process is gone.

The child: ``python -m xorexp.train_ahead``, specs pickled on stdin; on stdout, one frame per chunk
(8-byte length, then ``("ok", results)`` pickled), or one ``("error", traceback)`` frame; then
``("plots", [(spec, pngs), ...])`` frames of ``PLOT_CHUNK`` runs. Its stdout
is a temporary file, not a pipe: the launching process reads only when it needs results, and a
pipe's 64 kB (one chunk's results) would have the child wait for it instead of training on. It
imports NumPy and the engine, and matplotlib once it has trained everything.
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from typing import Any

from xorexp import mechanisms
from xorexp.subprocesses import SINGLE_THREAD_BLAS, exit_with_parent
from xorexp.train import RunResult, RunSpec, plan_batches

log = logging.getLogger(__name__)

MIN_RUNS = 16  # the vectorized launcher's MIN_RUNS_FOR_WORKERS: from there on, its workers train
CHUNK = 64  # runs per chunk the child trains and sends at most: what is ready when workers start
MAX_RUNS = 1000  # the first runs of a bigger sweep only: their specs fit a pipe's buffer (the
# launching process never waits to hand them over), and more than its workers' start leaves time for
PLOT_CHUNK = 8  # runs per frame of plots
FRAME = struct.Struct("<Q")  # a frame's length, before its pickle
POLL_S = 0.01  # how often the launching process looks for a frame it waits for
LAUNCHER = "hydra_plugins.xorexp_vectorized_launcher.vectorized_launcher.VectorizedLauncher"
SWEEPER = "hydra_plugins.xorexp_grid_sweeper.xorexp_grid_sweeper.XorexpGridSweeper"
STOP_WAIT_S = 2.0  # how long a stopped child gets before it is killed

_running: AheadChild | None = None

AheadResult = RunResult | tuple[RunResult, dict[str, bytes]]  # a result, with its plots if rendered ahead


def grid_specs(config: Any) -> list[RunSpec] | None:
    """The specs of a grid sweep of the vectorized launcher on this machine, derived from the sweep's
    master config; None when it is not one (another sweeper or launcher, the ray backend, a sweep of
    anything but the run's values)."""
    from xorexp.config import count_jobs, spec_from_values, sweep_overrides, swept_values
    from xorexp.params import RESULT_KEYS

    hydra = config.hydra
    if hydra.sweeper.get("_target_") != SWEEPER or hydra.launcher.get("_target_") != LAUNCHER:
        return None
    if hydra.launcher.get("backend") != "local":
        return None
    total = count_jobs(config)
    if not total:
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


def start(config: Any) -> AheadChild | None:
    """Start training a grid sweep's runs in a child process (None: not such a sweep, or the child
    could not start: the launcher then trains as usual). ``stop`` ends it."""
    global _running
    if not mechanisms.on("train_ahead"):
        return None
    try:
        specs = grid_specs(config)
    except Exception:  # a value the sweep's checks let through: the launcher reports it
        log.debug("no training ahead", exc_info=True)
        return None
    if not specs:
        return None
    try:
        ahead = AheadChild(specs[:MAX_RUNS], int(config.hydra.launcher.chunk_size))
    except Exception:
        log.debug("could not start training ahead: the launcher trains", exc_info=True)
        return None
    _running = ahead
    return ahead


def collect(specs: Sequence[RunSpec]) -> list[AheadResult] | None:
    """The results of ``specs`` (in their order) from the child training ahead, waiting for it, each
    with its plots if the child has sent them already; None if there is none, it does not have them
    all, or it failed (the launcher then trains)."""
    if _running is None:
        return None
    return _running.collect(specs)


def ready() -> dict[RunSpec, AheadResult]:
    """What the child training ahead has sent so far, without waiting (empty if there is none): each
    run's result, with its plots if it sent them."""
    if _running is None:
        return {}
    return _running.ready()


def stop() -> None:
    """End the child (if still running) and forget it; called when the sweep ends, however."""
    global _running
    ahead, _running = _running, None
    if ahead is not None:
        ahead.stop()


class AheadChild:
    """The child process training a sweep's first runs, and what it has sent back so far."""

    def __init__(self, specs: list[RunSpec], chunk_size: int, plots: bool = True) -> None:
        self.specs = set(specs)
        self.results: dict[RunSpec, RunResult] = {}
        self.plots: dict[RunSpec, dict[str, bytes]] = {}
        self.taken: set[RunSpec] = set()
        self.ended = False  # the child's output is over (all sent, failed, or gone)
        self.warmed = False
        self.buffer = b""
        self.out = tempfile.TemporaryFile(prefix="xorexp-ahead-")  # the child's frames (no name)
        self.offset = 0  # of the next byte to read
        env = {**os.environ, **SINGLE_THREAD_BLAS}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xorexp.train_ahead", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=self.out,
            stderr=subprocess.DEVNULL,  # what goes wrong comes back on stdout, or the launcher trains
            env=env,
        )
        try:
            self.proc.stdin.write(pickle.dumps((specs, min(chunk_size, CHUNK), plots)))
            self.proc.stdin.close()
        except OSError:  # the child is gone already: nothing will come
            pass
        log.debug("training %d runs ahead in process %d", len(specs), self.proc.pid)

    def collect(self, specs: Sequence[RunSpec]) -> list[AheadResult] | None:
        """Wait for the results of ``specs`` and hand them over once (see the module's ``collect``)."""
        if not all(spec in self.specs and spec not in self.taken for spec in specs):
            return None
        self._warm_up()
        while not self.ended and not all(spec in self.results for spec in specs):
            self._receive(wait=True)
        if not all(spec in self.results for spec in specs):
            return None
        self._receive(wait=False)  # plots sent meanwhile
        found = [self._result_of(spec) for spec in specs]
        for spec in specs:  # kept once only (a sweep's jobs take each run once)
            self.results.pop(spec, None)
            self.plots.pop(spec, None)
            self.taken.add(spec)
        return found

    def ready(self) -> dict[RunSpec, AheadResult]:
        self._receive(wait=False)
        return {spec: self._result_of(spec) for spec in self.results}

    def _result_of(self, spec: RunSpec) -> AheadResult:
        result = self.results[spec]
        return (result, self.plots[spec]) if spec in self.plots else result

    def _warm_up(self) -> None:
        """While the child trains: import what the jobs and the sweep's end import anyway."""
        if not self.warmed and self.proc.poll() is None:
            from xorexp.chunks import warm_up

            warm_up()
        self.warmed = True

    def _receive(self, wait: bool) -> None:
        """Read what the child has written: until one more frame or its end (``wait``), or what is
        there now (and the rest of a frame begun: the child is writing it). Its end, failure or
        garbage ends the reading; the results read so far stay."""
        fd = self.out.fileno()
        try:
            while not self.ended:
                exited = self.proc.poll() is not None  # before reading: then nothing comes after
                data = os.pread(fd, 1 << 20, self.offset)
                if data:
                    self.offset += len(data)
                    self.buffer += data
                    if self._frames() and wait:
                        return
                    continue
                if exited:
                    self._end("its output ended")
                    return
                if not wait and not self.buffer:
                    return
                time.sleep(POLL_S)
        except Exception:
            log.debug("reading the process training ahead failed: the launcher trains", exc_info=True)
            self._end("unreadable")

    def _frames(self) -> int:
        """Take the buffer's complete frames; returns how many."""
        count = 0
        while len(self.buffer) >= FRAME.size:
            (size,) = FRAME.unpack_from(self.buffer)
            if len(self.buffer) < FRAME.size + size:
                break
            kind, payload = pickle.loads(self.buffer[FRAME.size : FRAME.size + size])
            self.buffer = self.buffer[FRAME.size + size :]
            count += 1
            if kind == "plots":
                self.plots.update((spec, pngs) for spec, pngs in payload if spec in self.results)
                continue
            if kind != "ok":
                log.debug("training ahead failed, the launcher trains:\n%s", payload)
                self._end("failed")
                break
            self.results.update((result.spec, result) for result in payload)
        return count

    def _end(self, why: str) -> None:
        if len(self.results) < len(self.specs):
            log.debug(
                "the process training ahead (%d) sent %d of %d runs (%s): the launcher trains the rest",
                self.proc.pid,
                len(self.results),
                len(self.specs),
                why,
            )
        self.ended = True

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()


def _child(parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the launching process stops this one

    exit_with_parent(parent_pid)
    out = sys.stdout.buffer

    def send(message: tuple) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        out.write(FRAME.pack(len(data)) + data)
        out.flush()

    try:
        specs, chunk_size, plots = pickle.loads(sys.stdin.buffer.read())
        from xorexp import chunks  # the launcher's own unit of training

        trained = []
        for members in plan_batches(specs, chunk_size):
            results = chunks.train_chunk([specs[i] for i in members])
            send(("ok", results))
            trained += results
    except Exception:
        send(("error", traceback.format_exc()))
        return
    if plots:
        try:
            _render(trained, send)
        except Exception:  # e.g. matplotlib cannot start here: the jobs render their plots
            pass


def _render(results: list[RunResult], send) -> None:
    """The runs' plots, ``PLOT_CHUNK`` runs a frame. A run whose plots raise is left out (its job
    renders them, and reports what raises there); anything else going wrong ends the rendering."""
    from xorexp import chunks
    from xorexp.params import run_name

    for start in range(0, len(results), PLOT_CHUNK):
        part = results[start : start + PLOT_CHUNK]
        rendered = chunks.render_many([(result, run_name(result.spec)) for result in part])
        sent = zip(part, rendered, strict=True)
        send(("plots", [(result.spec, pngs) for result, pngs in sent if isinstance(pngs, dict)]))


if __name__ == "__main__":
    _child(int(sys.argv[1]))
