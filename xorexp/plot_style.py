"""What every figure of xorexp shares: pixel size convention, outcome colours, a new Agg figure, log
axes with plain labels. Used by ``xorexp.run_plots`` (per-run figures) and ``xorexp.sweep_plots``
(per-sweep figures); matplotlib's object API only (no pyplot global state).
"""

from __future__ import annotations

from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

DPI = 100  # sizes are given in pixels at this DPI
# one colour per outcome in every figure (Okabe-Ito, readable with colour-blindness)
OUTCOME_COLORS = {"solved": "#0072B2", "stuck": "#E69F00", "diverged": "#CC79A7", "failed": "0.45"}


def plain_log(axis: Any) -> None:
    """Log scale with plain tick labels (0.001, 0.1, 10) and no minor labels: matplotlib's default
    10^k labels go through mathtext (slow), and minor labels crowd a narrow range. Call after
    set_*scale."""
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def new_figure(size_px: tuple[int, int]) -> Figure:
    """A Figure of ``size_px`` pixels at ``DPI`` on its own Agg canvas."""
    figure = Figure(figsize=(size_px[0] / DPI, size_px[1] / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure
