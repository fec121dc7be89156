"""Units of work a launcher can hand to worker processes: train a chunk of runs, render run plots.

Only NumPy and the engine are imported here (matplotlib when the first plot is rendered): whoever
calls them (a launcher's worker, a Ray task, the child training ahead) gets results, and the jobs
log them. (matplotlib is not imported with this module: it was ~1.1 s of every command's start-up,
before a sweep could start training.)
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Sequence

from xorexp.train import RunResult, RunSpec, train

LEARNING_CURVE = "plots/learning_curve.png"
DECISION_BOUNDARY = "plots/decision_boundary.png"

log = logging.getLogger(__name__)


def train_chunk(specs: Sequence[RunSpec]) -> list[RunResult]:
    """One engine call: the specs must share a batch key."""
    return train(specs, chunk_size=len(specs))


def render_run_plots(result: RunResult, name: str) -> dict[str, bytes]:
    """The two per-run figures as PNG bytes, keyed by artifact path (``run_plots.RunPlotter``), titled
    with the run's name, outcome and final loss."""
    from xorexp import run_plots

    plotter = run_plots.run_plotter()
    title = run_plots.run_title(name, result.outcome, result.final_loss)
    return {
        LEARNING_CURVE: plotter.learning_curve_png(
            result.trace_steps, result.loss_trace, title, iterations=result.spec.iterations,
            outcome=result.outcome,
        ),
        DECISION_BOUNDARY: plotter.decision_boundary_png(result.params, title),
    }


def warm_up() -> None:
    """Import and set up what a sweep's jobs and its end use anyway: matplotlib and the run plotter
    (each run's plots), the sweep's figures, MLflow's model code (the best run's model). Done by the
    launching process while something else runs (the training ahead), and before its workers are
    forked: they have it then. Failures are left to where the modules are used (reported there)."""
    try:
        from xorexp import pyfunc, run_plots, sweep_plots  # noqa: F401

        run_plots.run_plotter()
    except Exception:
        log.debug("warming up failed", exc_info=True)


class WorkerError(RuntimeError):
    """An error met by a launcher's worker on a run: str() is one line, ``details`` the traceback."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message, details)
        self.details = details

    def __str__(self) -> str:
        return str(self.args[0])


def render_many(items: Sequence[tuple[RunResult, str]]) -> list[dict[str, bytes] | WorkerError]:
    """Plots of several runs; a run whose plots fail gets its error, the others are unaffected."""
    out: list[dict[str, bytes] | WorkerError] = []
    for result, name in items:
        try:
            out.append(render_run_plots(result, name))
        except Exception as error:
            out.append(WorkerError(f"{type(error).__name__}: {error}", traceback.format_exc()))
    return out
