"""Progress lines for long sweeps and runs, shown only when stderr is a terminal."""

from __future__ import annotations

import sys
import time


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class SweepProgress:
    """Jobs done / total, solved so far, elapsed and remaining time; one line rewritten in place."""

    def __init__(self, total: int | None, stream=None) -> None:
        self.total = total
        self.done = 0
        self.solved = 0
        self.failed = 0
        self.start = time.monotonic()
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()

    def job_done(self, outcome: str | None, failed: bool = False) -> None:
        self.done += 1
        self.solved += outcome == "solved"
        self.failed += failed
        if self.enabled:
            self.stream.write("\r" + self.line())
            self.stream.flush()

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        of = f"/{self.total}" if self.total else ""
        remaining = ""
        if self.total and self.done:
            remaining = f", ~{_clock(elapsed / self.done * (self.total - self.done))} left"
        failed = f", {self.failed} failed" if self.failed else ""
        solved = f"{self.solved} solved{failed}"
        return f"[xorexp] {self.done}{of} jobs, {solved}, {_clock(elapsed)} elapsed{remaining}"

    def close(self) -> None:
        if self.enabled and self.done:
            self.stream.write("\n")
            self.stream.flush()


class IterationProgress:
    """A long single run: its iterations, rewritten in place at most twice a second."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.last = 0.0
        self.shown = False

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


# The running sweep's progress in this process (set by the sweep callback), for launchers whose jobs'
# callbacks run in other processes.
ACTIVE: SweepProgress | None = None
