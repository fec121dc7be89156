"""The sweep's one progress line: counts, failure lines above it, a remaining time that does not swing."""

from __future__ import annotations

import io

from xorexp import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_counts_failures_and_a_steady_remaining_time(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    screen = Terminal()
    bar = progress.SweepProgress(100, stream=screen)
    clock[0] = 130.0  # start-up and the first chunk's training: no pace yet
    bar("solved", False)
    assert "left" not in bar.line()
    remaining = []
    for job in range(2, 61):  # then bursts: 10 jobs in 1 s, a 9 s pause (the next chunk trains)
        clock[0] += 0.1 if job % 10 else 9.1
        bar("stuck" if job % 4 else "solved", job == 7, "job #7 failed: boom" if job == 7 else None)
        if "left" in bar.line():
            remaining.append(bar.end - clock[0])
    assert bar.done == 60 and bar.failed == 1 and bar.solved == 16
    assert remaining[0] < 100  # not the 2,000 s that elapsed / done * total would say after the start-up
    true_left = 40 * 1.0  # 1 s a job since the first ended
    assert all(abs(left - true_left) < 35 for left in remaining[-20:])
    text = screen.getvalue()
    assert "xorexp: job #7 failed: boom\n" in text and text.count("job #7") == 1
    last = text.rsplit("\r\x1b[K", 1)[-1]
    assert last.startswith("[xorexp] 60/100 jobs, 16 solved, 1 failed, ") and last.endswith(" left")


def test_nothing_but_failures_when_not_a_terminal():
    quiet = io.StringIO()
    bar = progress.SweepProgress(10, stream=quiet)
    for job in range(12):
        bar(None, True, f"job #{job} failed")
    bar.close()
    lines = quiet.getvalue().splitlines()
    assert lines[:10] == [f"xorexp: job #{job} failed" for job in range(10)]
    assert lines[10:] == ["xorexp: ... and 2 more failed job(s), listed in the summary"]
    assert "[xorexp]" not in quiet.getvalue()
