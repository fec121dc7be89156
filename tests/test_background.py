"""xorexp.background.Background with plain callables: bounded, settled by key, failures first, stop."""

from __future__ import annotations

import threading

import pytest

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
    # a second job's work queued behind the slot: submitted from the pool's own bookkeeping
    queued = background.pool.submit(seen.append, "never")
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
