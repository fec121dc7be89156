"""Per-run plots: the old matplotlib figures, the RunPlotter of a git revision (``--before``, default
e6dfb8c: 384x256 / 320x272 px at 80 dpi, PIL's PNG encoder) and today's ``chunks.render_run_plots``
(640x400 / 640x480 px at 100 dpi, own PNG encoder), side by side, in one process.

Run: ``python benchmarks/bench_plots.py`` (about 1-2 minutes; ``--runs 30`` for a quick look).
Trains ~100 runs of a 10,000-iteration h=2 sweep once, then renders both PNGs of every run with
each approach. Prints ms per run (both PNGs together): the best of a few repeats (the machine is
shared; the best is the least disturbed) and the median, and the ratio of the bests. Numbers are
printed, never asserted: they depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from xorexp import nn
from xorexp.chunks import render_run_plots
from xorexp.data import X, Y
from xorexp.run_plots import RunPlotter, run_title
from xorexp.train import RunResult, RunSpec, train

LRS = (0.1, 0.5, 1.0, 5.0, 10.0)


# ---- the per-run figures as they were before RunPlotter, kept here for comparison ----


def old_learning_curve(steps: np.ndarray, loss_trace: np.ndarray, title: str = "") -> Figure:
    fig = Figure(figsize=(4.8, 3.2), dpi=80, layout="constrained")
    ax = fig.add_subplot()
    if len(loss_trace):
        ax.plot(steps, loss_trace, color="tab:blue", linewidth=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (binary cross-entropy)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    return fig


def old_decision_boundary(params: np.ndarray, title: str = "") -> Figure:
    axis = np.linspace(-0.25, 1.25, 81)
    gx, gy = np.meshgrid(axis, axis)
    with np.errstate(all="ignore"):
        out, _ = nn.forward(np.asarray(params, dtype=float)[:, None], np.stack([gx.ravel(), gy.ravel()]))
    surface = out[:, 0].reshape(gx.shape)
    fig = Figure(figsize=(4.0, 3.4), dpi=80, layout="constrained")
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(gx, gy, surface, vmin=0.0, vmax=1.0, cmap="RdBu_r", shading="auto")
    if np.isfinite(surface).all():
        ax.contour(gx, gy, surface, levels=[0.5], colors="k", linewidths=1.0)
    colors = ["tab:blue" if t == 0 else "tab:red" for t in Y[0]]
    ax.scatter(X[0], X[1], c=colors, edgecolors="k", s=70, zorder=3)
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    fig.colorbar(mesh, ax=ax, label="output")
    return fig


def old_render(result: RunResult, name: str) -> dict[str, bytes]:
    out = {}
    figures = {
        "plots/learning_curve.png": old_learning_curve(result.trace_steps, result.loss_trace, name),
        "plots/decision_boundary.png": old_decision_boundary(result.params, name),
    }
    for path, fig in figures.items():
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        out[path] = buffer.getvalue()
    return out


def plots_at(revision: str) -> object | None:
    """The per-run renderer as it was at ``revision`` (git: ``xorexp/run_plots.py``, before the split
    ``xorexp/plots.py``), imported as a module; None without git or either file."""
    root = Path(__file__).resolve().parent.parent
    errors = []
    for path in ("xorexp/run_plots.py", "xorexp/plots.py"):
        try:
            source = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=root, check=True,
                                    capture_output=True, text=True).stdout
            break
        except (OSError, subprocess.CalledProcessError) as error:
            errors.append(f"{path}: {error}")
    else:
        print(f"no per-run renderer at {revision}: {'; '.join(errors)}")
        return None
    spec = importlib.util.spec_from_loader(f"plots_{revision}", loader=None)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]
    exec(compile(source, f"{revision}:{path}", "exec"), module.__dict__)
    return module


def before_render(plotter: object) -> Callable[[RunResult, str], dict[str, bytes]]:
    def render(result: RunResult, name: str) -> dict[str, bytes]:
        return {
            "plots/learning_curve.png": plotter.learning_curve_png(  # type: ignore[attr-defined]
                result.trace_steps, result.loss_trace, name, iterations=result.spec.iterations
            ),
            "plots/decision_boundary.png": plotter.decision_boundary_png(result.params, name),  # type: ignore[attr-defined]
        }

    return render


# ---- timing ----


def run_name(spec: RunSpec) -> str:
    return f"h{spec.hidden_units}-lr{spec.lr:g}-s{spec.seed}"


def ms_per_run(
    render: Callable[[RunResult, str], object], results: list[RunResult], repeats: int
) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for r in results:
            render(r, run_name(r.spec))
        times.append((time.perf_counter() - start) / len(results) * 1e3)
    return times


def report(label: str, times: list[float]) -> None:
    print(f"{label:<44} best {min(times):7.2f}   median {statistics.median(times):7.2f}  ms/run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="runs rendered per repeat (default 100)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the new renderer (default 5)")
    parser.add_argument("--old-repeats", type=int, default=3, help="repeats of the old figures (default 3)")
    parser.add_argument("--before", default="e6dfb8c", help="git revision of the RunPlotter to compare with")
    args = parser.parse_args()

    seeds = range(-(-args.runs // len(LRS)))
    specs = [RunSpec(iterations=10_000, seed=s, lr=lr) for s in seeds for lr in LRS][: args.runs]
    start = time.perf_counter()
    results = train(specs)
    outcomes = {o: sum(r.outcome == o for r in results) for o in ("solved", "stuck", "diverged")}
    print(f"trained {len(results)} runs (h=2, 10,000 iterations, lr in {LRS}) in "
          f"{time.perf_counter() - start:.1f} s: {outcomes}")

    start = time.perf_counter()
    cold = RunPlotter()
    built = time.perf_counter()
    cold.learning_curve_png(results[0].trace_steps, results[0].loss_trace, "x", 10_000)
    cold.decision_boundary_png(results[0].params, "x")
    print(f"RunPlotter once per process: build {(built - start) * 1e3:.0f} ms, "
          f"first run {(time.perf_counter() - built) * 1e3:.0f} ms (backgrounds drawn)")

    old = ms_per_run(old_render, results, args.old_repeats)
    report("old: new Figures, constrained layout, savefig", old)
    before_module = plots_at(args.before)
    if before_module is not None:
        render_before = before_render(before_module.RunPlotter())  # type: ignore[attr-defined]
        render_before(results[0], "warm-up")
    render_run_plots(results[0], "warm-up")  # this process's RunPlotter, as the workers use it
    for _ in range(2):  # interleaved, so both see the same machine load
        if before_module is not None:
            before = ms_per_run(render_before, results, args.repeats)
            report(f"before: RunPlotter at {args.before}", before)
        new = ms_per_run(render_run_plots, results, args.repeats)
        report("new: chunks.render_run_plots (RunPlotter)", new)
    plotter = RunPlotter()  # each plot alone, titled as render_run_plots titles it

    def titled(r: RunResult, n: str) -> str:
        return run_title(n, r.outcome, r.final_loss)

    curve = ms_per_run(
        lambda r, n: plotter.learning_curve_png(r.trace_steps, r.loss_trace, titled(r, n), r.spec.iterations,
                                                r.outcome),
        results,
        args.repeats,
    )
    boundary = ms_per_run(lambda r, n: plotter.decision_boundary_png(r.params, titled(r, n)), results,
                          args.repeats)
    report("  learning curve alone", curve)
    report("  decision boundary alone", boundary)
    print(f"speed-up (best old / best new): {min(old) / min(new):.1f}x")
    if before_module is not None:
        print(f"new / before ({args.before}), best of each: {min(new) / min(before):.2f}")

    old_sizes = [sum(map(len, old_render(r, run_name(r.spec)).values())) for r in results[:20]]
    new_sizes = [sum(map(len, render_run_plots(r, run_name(r.spec)).values())) for r in results[:20]]
    before_sizes = [sum(map(len, render_before(r, run_name(r.spec)).values())) for r in results[:20]] \
        if before_module is not None else [0]
    print(f"PNG bytes per run (both plots, mean of 20): old {statistics.mean(old_sizes):,.0f}, "
          f"before {statistics.mean(before_sizes):,.0f}, new {statistics.mean(new_sizes):,.0f}")


if __name__ == "__main__":
    main()
