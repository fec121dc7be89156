"""xorexp.background.Background with plain callables: bounded, settled by key, failures first, stop."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import Future

import pytest

from tests.conftest import ROOT
from xorexp import progress
from xorexp.background import Background
from xorexp.errors import Abort

WAIT_S = 10.0  # only ever waited out when the code is wrong


def test_at_most_runs_in_flight_and_settle_returns_each_jobs_value():
    background = Background(runs=2)
    release = threading.Event()
    started = []

    def work(key):
        def run():
            started.append(key)
            release.wait(WAIT_S)
            return key * 10

        return run

    background.submit(1, work(1))
    background.submit(2, work(2))
    third = threading.Thread(target=background.submit, args=(3, work(3)))
    third.start()
    third.join(0.3)
    assert third.is_alive() and sorted(started) == [1, 2]  # the third waits for a free slot
    release.set()
    third.join(WAIT_S)
    assert background.settle() == {1: 10, 2: 20, 3: 30}
    assert background.settle() == {}  # settled runs are forgotten
    background.close()


def test_each_jobs_end_in_the_background_reaches_the_sink_it_was_submitted_under():
    """Jobs handed over one after the other, each under its own ``progress.feeding``, end later in
    the background threads, in another order: each end still reaches its own job's sink."""
    background = Background(runs=3)
    release = {key: threading.Event() for key in (1, 2, 3)}
    sinks: dict[int, list] = {key: [] for key in release}
    process_wide: list = []

    def work(key):
        def run():
            release[key].wait(WAIT_S)
            progress.job_ended(f"outcome {key}", failed=key == 2, message=f"job {key}")
            return key

        return run

    with progress.feeding(lambda *event: process_wide.append(event)):
        for key in release:
            with progress.feeding(lambda *event, into=sinks[key]: into.append(event)):
                background.submit(key, work(key))
        for key in (3, 1, 2):  # they end after their feeding is over, out of order
            release[key].set()
        assert background.settle() == {1: 1, 2: 2, 3: 3}
    background.close()
    assert sinks == {
        1: [("outcome 1", False, "job 1")],
        2: [("outcome 2", True, "job 2")],
        3: [("outcome 3", False, "job 3")],
    }
    assert process_wide == []


def test_a_failure_is_raised_by_settle_and_by_the_next_submit():
    background = Background(runs=2)
    background.submit("ok", lambda: 1.0)
    background.submit("bad", lambda: (_ for _ in ()).throw(Abort("the store failed")))
    with pytest.raises(Abort, match="the store failed"):
        background.settle()
    with pytest.raises(Abort, match="the store failed"):
        background.submit("next", lambda: 2.0)
    background.stop("FAILED")
    background.close()


def test_stop_gives_running_work_its_status_and_drops_work_not_started():
    background = Background(runs=1)
    in_work, go_on = threading.Event(), threading.Event()
    seen = []

    def first():
        in_work.set()
        go_on.wait(WAIT_S)
        seen.append(background.stop_status)  # e.g. ends its run KILLED

    background.submit(1, first)
    assert in_work.wait(WAIT_S)
    # a second job's work queued behind the busy thread (put as ``submit`` does, without its slot)
    queued = Future()
    background.queue.put((queued, lambda: seen.append("never")))
    background.futures[2] = queued
    stopper = threading.Thread(target=background.stop, args=("KILLED",))
    stopper.start()
    for _ in range(int(WAIT_S / 0.01)):  # the stop has begun: its status set, the queued work dropped
        if queued.cancelled():
            break
        threading.Event().wait(0.01)
    go_on.set()
    stopper.join(WAIT_S)
    assert not stopper.is_alive()
    assert seen == ["KILLED"] and queued.cancelled()
    background.close()


def test_a_failure_met_while_waiting_for_a_slot_is_raised_and_the_work_never_runs():
    background = Background(runs=1)
    failing, ran = threading.Event(), []

    def first():
        failing.wait(WAIT_S)
        raise Abort("the store failed")

    background.submit(1, first)
    raised = []

    def second():
        try:
            background.submit(2, lambda: ran.append(2))
        except Abort as error:
            raised.append(error.message)

    waiter = threading.Thread(target=second)
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # waiting for the only slot
    failing.set()
    waiter.join(WAIT_S)
    assert raised == ["the store failed"] and ran == []
    assert 2 not in background.futures
    background.stop("FAILED")
    background.close()


def test_work_stuck_in_a_request_does_not_hold_the_process_exit(tmp_path):
    """A run's request that never returns (a dead server, a long timeout): once the launcher has
    stopped the background, the process exits without waiting for it."""
    script = tmp_path / "stuck.py"
    script.write_text(
        "import sys, threading, time\n"
        "from xorexp import background as b\n"
        "b.STOP_WAIT_S = 0.5\n"
        "bg = b.Background(runs=2)\n"
        "started = threading.Event()\n"
        "bg.submit(1, lambda: (started.set(), time.sleep(600)))\n"
        "started.wait(10)\n"
        "bg.stop('KILLED')\n"
        "bg.close()\n"
        "print('stopped', bg.stop_status, flush=True)\n"
        "sys.exit(130)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        out, _ = proc.communicate(timeout=60)  # far less than the stuck work's 600 s
    finally:
        proc.kill()
    assert proc.returncode == 130 and out == "stopped KILLED\n"
