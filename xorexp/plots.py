"""Figures of one run and of a sweep, drawn with matplotlib's object API (no pyplot global state).

Functions return Figures; they never save or log them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from xorexp import nn
from xorexp.data import X, Y
from xorexp.summary import GroupSummary, RunRecord, group_labels, one_per_seed, parse_param, trace_band

_GRID = 81  # points per side of the decision-boundary grid


def learning_curve(steps: np.ndarray, loss_trace: np.ndarray, title: str = "") -> Figure:
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


def decision_boundary(params: np.ndarray, title: str = "") -> Figure:
    """Network output over the input square [-0.25, 1.25]², the four XOR points marked."""
    axis = np.linspace(-0.25, 1.25, _GRID)
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


# ---- figures of a sweep: summaries across seeds (see xorexp.summary) ----

_SWEEP_SIZE = (5.0, 3.5)
_MAX_ANNOTATED = 12  # annotate heatmap cells up to this many rows and columns
_MAX_TICKS = 15  # label at most about this many ticks per heatmap axis
_HIGHLIGHT = ["tab:red", "tab:orange", "tab:pink", "tab:brown", "tab:gray", "tab:cyan", "tab:olive"]
_BANDS = {"iqr": ((25.0, 75.0), "25–75 %"), "range": ((0.0, 100.0), "min–max")}


def _sweep_figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=_SWEEP_SIZE, dpi=80, layout="constrained")
    return fig, fig.add_subplot()


def _no_data(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _thin_ticks(n: int) -> list[int]:
    step = max(1, -(-n // _MAX_TICKS))
    return list(range(0, n, step))


def success_heatmap(groups: Sequence[GroupSummary], title: str = "") -> Figure:
    """Success rate over hidden_units (rows, ascending upwards) x lr (columns, ascending).

    A cell pools every group with that hidden_units and lr (seeds and any other swept value), i.e.
    solved / seeds over those groups; cells without results are grey (NaN in the image array).
    """
    cells: dict[tuple[int, float], list[int]] = {}  # (hidden_units, lr) -> [solved, seeds]
    for g in groups:
        if g.hidden_units is None or g.lr is None:
            continue
        cell = cells.setdefault((g.hidden_units, g.lr), [0, 0])
        cell[0] += g.n_solved
        cell[1] += g.n_seeds
    fig, ax = _sweep_figure()
    ax.set_title(title or "success rate (pooled over seeds and other swept values)", fontsize=9)
    if not cells:
        _no_data(ax, "no runs with hidden_units and lr")
        return fig
    rows = sorted({h for h, _ in cells})
    cols = sorted({lr for _, lr in cells})
    rate = np.full((len(rows), len(cols)), np.nan)  # (hidden_units, lr)
    for (h, lr), (solved, seeds) in cells.items():
        if seeds:
            rate[rows.index(h), cols.index(lr)] = solved / seeds
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
    image = ax.imshow(
        np.ma.masked_invalid(rate),
        cmap=cmap,
        vmin=0.0,
        vmax=1.0,
        origin="lower",
        aspect="auto",
        interpolation="nearest",
    )
    if len(rows) <= _MAX_ANNOTATED and len(cols) <= _MAX_ANNOTATED:
        for (i, j), value in np.ndenumerate(rate):
            if np.isfinite(value):
                color = "white" if value < 0.6 else "black"
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
    xticks, yticks = _thin_ticks(len(cols)), _thin_ticks(len(rows))
    ax.set_xticks(xticks, labels=[f"{cols[j]:g}" for j in xticks], rotation=45 if len(xticks) > 6 else 0)
    ax.set_yticks(yticks, labels=[str(rows[i]) for i in yticks])
    ax.set_xlabel("lr")
    ax.set_ylabel("hidden_units")
    fig.colorbar(image, ax=ax, label="success rate")
    return fig


def final_loss_vs_lr(records: Iterable[RunRecord], band: str = "iqr", title: str = "") -> Figure:
    """Final loss against lr (log-log), one line per hidden_units: median across seeds and a band.

    ``band`` is "iqr" (25–75 %) or "range" (min–max) across seeds. Runs pool over any other swept
    value (iterations, stop_loss, ...). Diverged runs are left out of line and band and counted
    in the title; failed runs and runs without a finite positive final loss are left out.
    """
    quantiles, band_name = _BANDS[band]
    losses: dict[int, dict[float, list[float]]] = {}  # hidden_units -> lr -> final losses
    n_diverged = 0
    for r in one_per_seed(records):
        if not r.has_result:
            continue
        if r.outcome == "diverged":
            n_diverged += 1
            continue
        h = parse_param("hidden_units", r.params.get("hidden_units"))
        lr = parse_param("lr", r.params.get("lr"))
        if h is None or lr is None or r.final_loss is None or r.final_loss <= 0:
            continue
        losses.setdefault(int(h), {}).setdefault(float(lr), []).append(r.final_loss)
    fig, ax = _sweep_figure()
    ax.set_title(
        title or f"final loss: median, band {band_name} across seeds; {n_diverged} diverged excluded",
        fontsize=9,
    )
    if not losses:
        _no_data(ax, "no finite final loss")
        return fig
    units = sorted(losses)
    many = len(units) > 10
    norm = Normalize(min(units), max(units) if max(units) > min(units) else min(units) + 1)
    cmap = matplotlib.colormaps["viridis"]
    for k, h in enumerate(units):
        lrs = sorted(losses[h])
        stats = np.array([[np.median(losses[h][lr]), *np.percentile(losses[h][lr], quantiles)] for lr in lrs])
        color = cmap(norm(h)) if many else f"C{k}"
        ax.plot(lrs, stats[:, 0], marker="o", markersize=3, linewidth=1.2, color=color, label=f"h={h}")
        ax.fill_between(lrs, stats[:, 1], stats[:, 2], color=color, alpha=0.2, linewidth=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("lr")
    ax.set_ylabel("final loss")
    ax.grid(True, which="both", alpha=0.3)
    if many:
        fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label="hidden_units")
    else:
        ax.legend(fontsize=7, title=f"median, {band_name}", title_fontsize=7)
    return fig


def loss_curves(
    groups: Sequence[GroupSummary],
    curves: Sequence[Sequence[tuple[Any, Any]]],
    color_by: str = "lr",
    max_legend: int = 10,
    n_labelled: int = 5,
    title: str = "",
) -> Figure:
    """Loss traces per group: median across seeds with a 25–75 % band, log y.

    ``curves[i]`` holds the (steps, values) traces of ``groups[i]``'s seeds (e.g. of its
    ``run_ids``); groups best first, as ``summary.summarize`` returns them. Traces may differ in
    length; each step's statistics use the runs still present there. Up to ``max_legend`` groups
    get a colour and a legend entry each. With more, every group's median is drawn thin, coloured
    by ``color_by`` ("lr", "hidden_units" or "rank"; rank when the value does not vary) with a
    colorbar, and only the first ``n_labelled`` groups get a band and a legend entry.
    """
    if len(groups) != len(curves):
        raise ValueError(f"{len(curves)} lists of traces for {len(groups)} groups")
    if color_by not in ("lr", "hidden_units", "rank"):
        raise ValueError(f"color_by={color_by!r}: must be 'lr', 'hidden_units' or 'rank'")
    labels = group_labels(groups)
    bands = [(label, trace_band(traces)) for label, traces in zip(labels, curves, strict=True)]
    fig, ax = _sweep_figure()
    drawn = [(i, label, b) for i, (label, b) in enumerate(bands) if len(b[0])]
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (binary cross-entropy)")
    ax.grid(True, which="both", alpha=0.3)
    if not drawn:
        ax.set_title(title or "loss across seeds", fontsize=9)
        _no_data(ax, "no loss trace")
        return fig
    few = len(bands) <= max_legend
    ax.set_title(
        title or f"loss: median and 25–75 % across seeds still running ({len(bands)} groups)",
        fontsize=9,
    )
    if few:
        for k, (_, label, (steps, median, low, high, count)) in enumerate(drawn):
            color = f"C{k % 10}"
            ax.plot(steps, median, color=color, linewidth=1.2, label=f"{label} (n={count.max()})")
            ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
        ax.legend(fontsize=7)
        return fig
    shown = np.array([groups[i].value(color_by) for i, _, _ in drawn], dtype=float)  # None -> nan
    finite = shown[np.isfinite(shown)]
    if color_by == "rank" or len(np.unique(finite)) < 2 or len(finite) < len(shown):
        color_by, shown = "rank", np.array([i + 1 for i, _, _ in drawn], dtype=float)
    lo, hi = shown.min(), shown.max()
    hi = hi if hi > lo else lo + 1
    norm = LogNorm(lo, hi) if color_by == "lr" and hi / lo >= 10 else Normalize(lo, hi)
    background = LineCollection(
        [np.column_stack([b[0], b[1]]) for _, _, b in drawn],
        array=shown,
        cmap="viridis",
        norm=norm,
        linewidths=0.6,
        alpha=0.5,
    )
    ax.add_collection(background)
    ax.autoscale_view()
    fig.colorbar(background, ax=ax, label="rank (1 = best)" if color_by == "rank" else color_by)
    for k, (_, label, (steps, median, low, high, count)) in enumerate(drawn[:n_labelled]):
        color = _HIGHLIGHT[k % len(_HIGHLIGHT)]
        ax.plot(steps, median, color=color, linewidth=1.8, label=f"{label} (n={count.max()})")
        ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
    ax.legend(fontsize=7, title=f"first {min(n_labelled, len(drawn))} of {len(bands)}", title_fontsize=7)
    return fig
