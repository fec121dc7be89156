"""What every figure of a sweep shares: the figure with its size and margins, its title, the
outcome legend, and the axes (the x values as slots with their ticks and run counts, a loss axis
snapped to whole decades, the series' colours).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogLocator

from xorexp import sweep_figure_data
from xorexp.plot_style import OUTCOME_COLORS, new_figure, plain_log
from xorexp.sweep_figure_data import GroupRuns

SWEEP_PX = (900, 560)
MAX_SLOTS = 20  # x values shown as evenly spaced categories up to this many; beyond, a numeric axis
SERIES_COLORS = ["#000000", "#56B4E9", "#009E73", "#D55E00", "#0072B2", "#E69F00", "#CC79A7", "#999999"]
MARGINS = {"left": 0.09, "right": 0.97, "bottom": 0.14, "top": 0.88}


def sweep_figure(**margins: float) -> tuple[Figure, Any]:
    """A sweep figure with one Axes, at fixed margins (``MARGINS``, those given replacing them)."""
    # fixed margins: constrained layout would measure every tick label again
    fig = new_figure(SWEEP_PX)
    fig.subplots_adjust(**{**MARGINS, **margins})
    return fig, fig.add_subplot()


def set_title(fig: Figure, text: str) -> None:
    """The figure's title, top left."""
    fig.suptitle(text, x=0.01, y=0.985, ha="left", va="top", fontsize=12)


def no_data(ax: Any, message: str) -> None:
    """``message`` in the middle of an Axes with nothing to show, and no ticks."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def outcome_handles(counts: dict[str, int] | None = None, median: bool = False) -> tuple[list, list]:
    """Legend handles and labels of the outcomes (with their counts, those with none left out but
    solved), plus the median's line with ``median``."""
    handles, labels = [], []
    for outcome, color in OUTCOME_COLORS.items():
        n = None if counts is None else counts.get(outcome, 0)
        if n == 0 and outcome != "solved":
            continue
        handles.append(Line2D([], [], color=color, marker="o", linewidth=2, markersize=6))
        labels.append(outcome if n is None else f"{outcome} ({n})")
    if median:
        handles.append(Line2D([], [], color="k", linewidth=2.2))
        labels.append("median of all")
    return handles, labels


def loss_axis(axis: Any, values: np.ndarray) -> None:
    """Final losses: a log axis snapped to whole decades (at least two labelled ticks) when they
    span a factor of 10 or more, else a linear axis (a log axis over a narrow range has no labels)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    if not len(values):
        return
    low, high = float(values.min()), float(values.max())
    if high / low >= 10:
        vertical = axis is axis.axes.yaxis
        (axis.axes.set_yscale if vertical else axis.axes.set_xscale)("log")
        plain_log(axis)
        setter = axis.axes.set_ylim if vertical else axis.axes.set_xlim
        setter(10.0 ** math.floor(math.log10(low)), 10.0 ** math.ceil(math.log10(high)))
    else:  # from 0: a 1 % difference between three stuck runs must look like one
        setter = axis.axes.set_ylim if axis is axis.axes.yaxis else axis.axes.set_xlim
        setter(0.0, high * 1.15)


def log_decades(ax: Any, low: float, high: float) -> None:
    """y limits snapped to whole decades (at least one), labelled at 1-2-5 within few decades."""
    lo, hi = math.floor(math.log10(low)), math.ceil(math.log10(high))
    hi = max(hi, lo + 1)
    ax.set_ylim(10.0**lo, 10.0**hi)
    if hi - lo <= 2:
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    plain_log(ax.yaxis)


def x_slots(gruns: Sequence[GroupRuns], x_key: str | None) -> tuple[dict[str, float], list[str], bool]:
    """Position of each x value (the shown string), the tick labels, and whether positions are
    categories (evenly spaced, in value order) or the values themselves (numeric axis)."""
    ordered = sweep_figure_data.values_in_order(gruns, x_key)
    labels = [text for text, _ in ordered]
    if len(ordered) > MAX_SLOTS and all(value is not None for _, value in ordered):
        return {text: float(value) for text, value in ordered}, labels, False  # type: ignore[arg-type]
    return {text: float(i) for i, text in enumerate(labels)}, labels, True


def series_values(gruns: Sequence[GroupRuns], key: str | None) -> list[str]:
    """The series' values in value order; one unnamed series without a key."""
    return [text for text, _ in sweep_figure_data.values_in_order(gruns, key)] if key else [""]


def x_ticks(
    ax: Any, positions: dict[str, float], labels: list[str], x_key: str | None, counts: dict[str, int],
    categorical: bool,
) -> None:
    """The x ticks: category labels (thinned to about 12, each with its run count where given), or
    a log axis for a numeric lr."""
    if categorical:
        step = max(1, -(-len(labels) // 12))
        shown = labels[::step]
        with_n = [f"{t}\nn={counts[t]}" if t in counts else t for t in shown]
        ax.set_xticks([positions[t] for t in shown], labels=with_n)
        ax.set_xlim(-0.6, len(labels) - 0.4)
    elif x_key == "lr":
        ax.set_xscale("log")
        plain_log(ax.xaxis)
    ax.set_xlabel(x_key or "")


def jitter(n: int, width: float) -> np.ndarray:
    """Evenly spread offsets in [-width/2, width/2], in a shuffled but fixed order."""
    if n <= 1:
        return np.zeros(n)
    spread = np.linspace(-width / 2, width / 2, n)
    return spread[np.argsort((np.arange(n) * 0.6180339887) % 1.0)]
