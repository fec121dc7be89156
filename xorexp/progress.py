"""Progress of a sweep (one line for the whole sweep) and of a long single run, on a terminal only.

Jobs report their end with ``job_ended``, in whichever process they run; the launching process
``feeds`` the events into the sweep's one ``SweepProgress`` (launchers with worker processes pass
each worker a queue, see ``queue_sink``). A failed job's one line is printed above the progress line.
"""

from __future__ import annotations

import contextvars
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Sink = Callable[[str | None, bool, str | None], None]  # (outcome, failed, message to print)
_sink: Sink | None = None
_UNSET: Any = object()
# the sink of ``feeding`` in this context: a job's run ending in a background thread that carries
# the job's context (``xorexp.background``) reports to its job's sink, whatever the process's is then
_fed: contextvars.ContextVar = contextvars.ContextVar("xorexp_progress_sink", default=_UNSET)


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def job_ended(outcome: str | None, *, failed: bool, message: str | None = None) -> None:
    """A job of the running sweep ended (``message``: a line for the user, e.g. why it failed)."""
    sink = _fed.get()
    if sink is _UNSET:
        sink = _sink
    if sink is not None:
        sink(outcome, failed, message)
    elif message:
        print(f"xorexp: {message}", file=sys.stderr, flush=True)


def feed(sink: Sink | None) -> Sink | None:
    """Jobs of this process report to ``sink`` from now on (e.g. a forked worker's, whatever its
    parent fed when it forked); returns the previous sink."""
    global _sink
    previous, _sink = _sink, sink
    _fed.set(sink)
    return previous


@contextmanager
def feeding(sink: Sink | None) -> Iterator[None]:
    """Jobs of this process report to ``sink`` while inside; so does work started inside that
    carries this context along (a job's run handed to ``xorexp.background``), also after."""
    global _sink
    previous = _sink
    token = _fed.set(sink)
    _sink = sink
    try:
        yield
    finally:
        _fed.reset(token)
        _sink = previous


def queue_sink(queue: Any) -> Sink:
    """A sink for a worker process: events go to the launching process through ``queue``."""
    return lambda outcome, failed, message: queue.put((outcome, failed, message))


class SweepProgress:
    """Jobs done / total, solved, failed, elapsed and remaining time: one line rewritten in place.

    The remaining time is the pace since the first job ended (start-up and the first chunk's
    training are not a pace), shown from 5 % of the jobs on, and smoothed as a predicted end time so
    it does not swing when jobs end in bursts (a worker logs a trained chunk's jobs one after another).
    """

    SMOOTHING = 0.15  # weight of the newest prediction of the end
    MAX_MESSAGES = 10  # failure lines printed; the rest are counted (the summary lists every failed run)

    def __init__(self, total: int | None, stream=None) -> None:
        self.total = total
        self.done = self.solved = self.failed = 0
        self.start = time.monotonic()
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.first: float | None = None  # when the first job ended
        self.end: float | None = None  # predicted end (time.monotonic())
        self.lock = threading.Lock()
        self.shown = False
        self.messages = 0

    def __call__(self, outcome: str | None, failed: bool, message: str | None = None) -> None:
        """The sink of the launching process."""
        with self.lock:
            self.done += 1
            self.solved += outcome == "solved"
            self.failed += bool(failed)
            now = time.monotonic()
            self.first = self.first if self.first is not None else now
            if self.total and self.done >= max(3, self.total / 20):
                guess = now + (now - self.first) / (self.done - 1) * (self.total - self.done)
                self.end = guess if self.end is None else self.end + self.SMOOTHING * (guess - self.end)
            if message:
                self.messages += 1
                if self.messages <= self.MAX_MESSAGES:
                    self._print(f"xorexp: {message}")
            self._draw()

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        of = f"/{self.total}" if self.total else ""
        remaining = ""
        if self.end is not None and self.total and self.done < self.total:
            remaining = f", ~{_clock(self.end - time.monotonic())} left"
        failed = f", {self.failed} failed" if self.failed else ""
        counts = f"{self.done}{of} jobs, {self.solved} solved{failed}"
        return f"[xorexp] {counts}, {_clock(elapsed)} elapsed{remaining}"

    def _draw(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K" + self.line())
            self.stream.flush()
            self.shown = True

    def _print(self, text: str) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        with self.lock:
            if self.enabled and self.shown:
                self.stream.write("\n")
                self.stream.flush()
                self.shown = False
            self.enabled = False
            hidden = self.messages - self.MAX_MESSAGES
            if hidden > 0:
                self._print(f"xorexp: ... and {hidden} more failed job(s), listed in the summary")
                self.messages = self.MAX_MESSAGES


class IterationProgress:
    """A long single run: its iterations, rewritten in place at most twice a second."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.last = 0.0
        self.shown = False
        self.messages = 0

    def __call__(self, step: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < 0.5:
            return
        self.last = now
        self.shown = True
        self.stream.write(f"\r[xorexp] iteration {step:,}/{total:,}")
        self.stream.flush()

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
