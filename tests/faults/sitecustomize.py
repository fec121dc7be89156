"""Faults injected into real xorexp processes (launching process and workers) by the fault tests.

Put this folder first on PYTHONPATH and set XOREXP_FAULT to ``KIND:SEED`` (several separated by
commas); a chunk of runs that holds SEED then meets the fault:
- ``train``: training raises MemoryError (as a too-large batch would);
- ``die``: a worker process, or the child training a small sweep ahead (``xorexp.train_ahead``),
  dies on the spot (as an out-of-memory kill would); no effect in the launching process;
- ``here``: training raises in the launching process only (so a small sweep succeeds only with
  its runs trained ahead);
- ``worker``: training raises in a launcher's worker process only (so a sweep with workers succeeds
  only with its runs trained ahead);
- ``ahead:0``: the launching process starts its workers only once the child training ahead has
  sent all it trains (so that the workers get every run it trained, however loaded the machine);
- ``slow``: training takes 2 s longer (to interrupt a sweep mid-way);
- ``plot``: rendering the run's plots raises (in whichever process renders them);
- ``summary:0``: the sweep's summary at its end raises;
- ``twice``: the run is created twice, the first one left RUNNING and unknown to its job (as when a
  server commits a create_run whose answer times out, and MLflow's client sends it again);
- ``created``, ``logged``: a worker process dies (as if killed) right after the run's creation, or its
  result's logging (the run FINISHED), returns, before its job could record it (in the launching
  process: no effect);
- ``nodriver:0``: no PostgreSQL driver can be imported (whether one is installed or not);
- ``finalizer:0``: right after the sweep's start, the launching process sends itself SIGTERM from a
  weakref callback and runs on there, so that the signal's handler runs inside that finalizer,
  whose exception Python drops ("Exception ignored in ...").

With XOREXP_STARTS_DIR set, every Python interpreter that starts with this folder on its path writes
``<pid>.start`` there, holding its command line (a forked process is no interpreter start: it writes
nothing).
"""

import multiprocessing
import os
import time

_STARTED_PID = os.getpid()  # this interpreter's: a process forked from it has another

if os.environ.get("XOREXP_STARTS_DIR"):
    with open("/proc/self/cmdline", "rb") as _cmdline, open(
        os.path.join(os.environ["XOREXP_STARTS_DIR"], f"{os.getpid()}.start"), "wb"
    ) as _out:
        _out.write(_cmdline.read().replace(b"\0", b" "))

_faults = [item.partition(":") for item in os.environ.get("XOREXP_FAULT", "").split(",") if item]
if any(kind == "nodriver" for kind, _, _ in _faults):  # as if no PostgreSQL driver were installed
    import sys

    sys.modules["psycopg2"] = sys.modules["psycopg"] = None  # importing either raises ImportError
    _faults = [fault for fault in _faults if fault[0] != "nodriver"]


def _ahead() -> bool:
    """Whether this process is the child training a small sweep ahead."""
    import sys

    return getattr(sys.modules["__main__"].__spec__, "name", None) == "xorexp.train_ahead"


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
            if kind == "die" and (multiprocessing.parent_process() is not None or _ahead()):
                os._exit(9)
            if kind == "here" and multiprocessing.parent_process() is None and not _ahead():
                raise RuntimeError("injected: no training in the launching process")
            if kind == "worker" and multiprocessing.parent_process() is not None:
                raise RuntimeError("injected: no training in the launcher's workers")
            if kind == "slow":
                time.sleep(2)
        return _real_train_chunk(specs)

    _chunks.train_chunk = _train_chunk

    import xorexp.job_context as _job_context

    _real_render = _chunks.render_run_plots

    def _render_run_plots(result, name):
        for kind, _, seed in _faults:
            if kind == "plot" and result.spec.seed == int(seed):
                raise RuntimeError("injected plotting fault")
        return _real_render(result, name)

    _chunks.render_run_plots = _job_context.render_run_plots = _render_run_plots

    if any(kind == "twice" for kind, _, _ in _faults):
        from xorexp.tracking import writing as _writing

        _real_start_run = _writing.start_run

        def _start_run(store, spec, *args, **kwargs):
            if any(kind == "twice" and spec.seed == int(seed) for kind, _, seed in _faults):
                _real_start_run(store, spec, *args, **kwargs)  # the first create, its answer "lost"
            return _real_start_run(store, spec, *args, **kwargs)

        _writing.start_run = _start_run

    def _die_after(real, kind):
        """``real``, then the worker dies if the call's spec (or its result's: the argument after the
        run id) holds a seed of ``kind``."""

        def call(store, *args, **kwargs):
            returned = real(store, *args, **kwargs)
            spec = args[0] if kind == "created" else args[1].spec
            if multiprocessing.parent_process() is not None and any(
                k == kind and spec.seed == int(seed) for k, _, seed in _faults
            ):
                os._exit(9)
            return returned

        return call

    if any(kind in ("created", "logged") for kind, _, _ in _faults):
        from xorexp.tracking import writing as _writing

        _writing.start_run = _die_after(_writing.start_run, "created")
        _writing.log_result = _die_after(_writing.log_result, "logged")

    if any(kind == "ahead" for kind, _, _ in _faults):
        import xorexp.train_ahead as _train_ahead

        _real_ready = _train_ahead.ready

        def _ready():
            running = _train_ahead._running
            deadline = time.monotonic() + 120
            while running is not None and running.proc.poll() is None and time.monotonic() < deadline:
                running._receive(wait=False)  # its output must not fill the pipe meanwhile
                time.sleep(0.05)
            return _real_ready()

        _train_ahead.ready = _ready

    if any(kind == "summary" for kind, _, _ in _faults):
        import xorexp.sweep_end as _sweep_end

        def _finish_sweep(*args, **kwargs):
            raise RuntimeError("injected summary fault")

        _sweep_end.finish_sweep = _finish_sweep


if any(kind == "finalizer" for kind, _, _ in _faults):
    import signal
    import weakref

    import xorexp.sweep as _sweep

    _real_sweep_start = _sweep.Sweep.start.__func__

    def _sweep_start(cls, config):
        started = _real_sweep_start(cls, config)

        def _finalizer(_ref):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10**7):  # the handler runs here, within a few iterations
                pass

        class _Going:
            pass

        going = _Going()
        ref = weakref.ref(going, _finalizer)
        del going  # the callback runs now, in this thread
        del ref
        return started

    _sweep.Sweep.start = classmethod(_sweep_start)
