"""Figures of one run and of a sweep, drawn with matplotlib's object API (no pyplot global state).

The sweep functions and ``learning_curve``/``decision_boundary`` return Figures; they never save or
log them. ``RunPlotter`` renders the two per-run figures straight to PNG bytes, fast enough to log
every run of a large sweep (see ``benchmarks/bench_plots.py``).
"""

from __future__ import annotations

import functools
import io
import math
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import contourpy
import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, FuncFormatter, NullFormatter
from PIL import Image

from xorexp import nn
from xorexp.data import X, Y
from xorexp.summary import GroupSummary, RunRecord, group_labels, one_per_seed, parse_param, trace_band

# ---- figures of one run: fixed layouts whose data artists are updated per run ----

_DPI = 80
_GRID = 100  # cells per side of the decision-boundary image (2 px each), values at cell centres
_LOW, _HIGH = -0.25, 1.25  # the input square shown by the decision boundary
_PNG_COMPRESS_LEVEL = 1  # zlib level: 1 is ~1.5x faster than PIL's default 6, files ~15 % larger
_MAX_BACKGROUNDS = 64  # learning-curve backgrounds kept per process, one per set of axis limits


def _axes_rect(fig_px: tuple[int, int], left: int, bottom: int, width: int, height: int) -> list[float]:
    """A rectangle given in pixels from the figure's lower left corner, as figure fractions."""
    w, h = fig_px
    return [left / w, bottom / h, width / w, height / h]


class _LearningCurve:
    """Loss vs iteration on a log y axis; y limits snap to whole decades, x runs from 0 to the end."""

    SIZE_PX = (384, 256)

    def __init__(self) -> None:
        self.figure = Figure(figsize=(self.SIZE_PX[0] / _DPI, self.SIZE_PX[1] / _DPI), dpi=_DPI)
        FigureCanvasAgg(self.figure)
        ax = self.figure.add_axes(_axes_rect(self.SIZE_PX, 70, 40, 290, 188))
        (self.line,) = ax.plot([], [], color="tab:blue", linewidth=1.2)
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 150k: long runs' labels do not collide
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss (binary cross-entropy)")
        ax.grid(True, which="both", alpha=0.3)
        self.title = ax.set_title("", fontsize=9, y=1.0)  # fixed: no automatic placement
        self.no_data = ax.text(0.5, 0.5, "no finite positive loss", ha="center", va="center",
                               transform=ax.transAxes, color="0.4")
        self.ax = ax

    def update(
        self, steps: np.ndarray, loss_trace: np.ndarray, title: str, iterations: int | None = None
    ) -> tuple[Any, ...]:
        """Show one run; returns the key of everything drawn that does not depend on the data."""
        steps = np.asarray(steps, dtype=float)
        loss = np.asarray(loss_trace, dtype=float)
        with np.errstate(invalid="ignore"):
            shown = np.isfinite(loss) & (loss > 0) & np.isfinite(steps)
        x_end = float(iterations) if iterations is not None else (float(steps.max()) if len(steps) else 0.0)
        limits: tuple[Any, ...]
        if shown.any():
            low = math.floor(math.log10(loss[shown].min()))
            high = max(math.ceil(math.log10(loss[shown].max())), low + 1)
            limits = (max(x_end, 1.0), low, high)
        else:
            limits = (max(x_end, 1.0), None, None)
        self.line.set_data(steps[shown], loss[shown])
        self.title.set_text(title)
        self.ax.set_xlim(0.0, limits[0])
        self.ax.set_ylim(*((10.0 ** limits[1], 10.0 ** limits[2]) if limits[1] is not None else (1e-3, 1.0)))
        self.no_data.set_visible(limits[1] is None)
        return limits

    def data_artists(self) -> list[Any]:
        return [self.line, *self.ax.spines.values(), self.title]


class _DecisionBoundary:
    """Network output over the input square, a 0.5 contour, the four XOR points coloured by target."""

    SIZE_PX = (320, 272)

    def __init__(self) -> None:
        self.figure = Figure(figsize=(self.SIZE_PX[0] / _DPI, self.SIZE_PX[1] / _DPI), dpi=_DPI)
        FigureCanvasAgg(self.figure)
        ax = self.figure.add_axes(_axes_rect(self.SIZE_PX, 48, 38, 200, 200))
        cax = self.figure.add_axes(_axes_rect(self.SIZE_PX, 260, 38, 10, 200))
        cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.75")  # NaN (diverged): grey
        self.image = ax.imshow(
            np.full((_GRID, _GRID), 0.5),
            cmap=cmap,
            vmin=0.0,
            vmax=1.0,
            origin="lower",
            extent=(_LOW, _HIGH, _LOW, _HIGH),
            interpolation="nearest",
        )
        self.contour = LineCollection([], colors="k", linewidths=1.0)
        ax.add_collection(self.contour, autolim=False)
        colors = ["tab:blue" if t == 0 else "tab:red" for t in Y[0]]
        self.points = ax.scatter(X[0], X[1], c=colors, edgecolors="k", s=70, zorder=3)
        ax.set_xlim(_LOW, _HIGH)
        ax.set_ylim(_LOW, _HIGH)
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
        self.title = ax.set_title("", fontsize=9, y=1.0)  # fixed: no automatic placement
        self.figure.colorbar(self.image, cax=cax, label="output")
        self.ax = ax
        centres = _LOW + (np.arange(_GRID) + 0.5) * (_HIGH - _LOW) / _GRID  # (G,)
        self.centres = centres
        gx, gy = np.meshgrid(centres, centres)  # (G, G): x1 varies along columns, x2 along rows
        self.inputs = np.stack([gx.ravel(), gy.ravel()])  # (2, G*G)

    def surface(self, params: np.ndarray) -> np.ndarray:
        """Network output at the cell centres, (G, G), row i at x2 = centres[i]; NaN where not finite."""
        with np.errstate(all="ignore"):
            out, _ = nn.forward(np.asarray(params, dtype=float)[:, None], self.inputs)  # (G*G, 1)
        surface = out[:, 0].reshape(_GRID, _GRID)
        surface[~np.isfinite(surface)] = np.nan
        return surface

    def update(self, params: np.ndarray, title: str, colour_here: bool = False) -> None:
        """Show one run. ``colour_here``: hand the image RGBA bytes, coloured by the image's own norm
        and colormap (NaN -> the "bad" grey), instead of values: ~0.02 ms here saves ~1.3 ms of
        matplotlib's per-draw normalising; the Figure then holds colours, not values."""
        surface = self.surface(params)
        self.image.set_data(self.image.to_rgba(surface, bytes=True) if colour_here else surface)
        masked = np.ma.masked_invalid(surface)
        if masked.count() >= 4:
            gen = contourpy.contour_generator(self.centres, self.centres, masked, line_type="Separate")
            self.contour.set_segments(gen.lines(0.5))
        else:
            self.contour.set_segments([])
        self.title.set_text(title)

    def data_artists(self) -> list[Any]:
        return [self.image, self.contour, self.points, *self.ax.spines.values(), self.title]


def _blit_png(figure: Figure, background: Any, artists: Sequence[Any]) -> bytes:
    """Restore a background drawn without ``artists``, draw them over it, encode the canvas as PNG."""
    canvas = figure.canvas
    canvas.restore_region(background)
    for artist in artists:
        figure.draw_artist(artist)
    return _png(canvas)


def _png(canvas: FigureCanvasAgg) -> bytes:
    """The canvas as an RGB PNG (the figures are opaque), fast zlib level, no text chunks."""
    width, height = canvas.get_width_height()
    rgba = Image.frombuffer("RGBA", (width, height), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
    buffer = io.BytesIO()
    rgba.convert("RGB").save(buffer, format="png", compress_level=_PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def _background(figure: Figure, artists: Sequence[Any]) -> Any:
    """Draw the whole figure with ``artists`` hidden and copy it; the artists stay hidden."""
    for artist in artists:
        artist.set_visible(False)
    figure.canvas.draw()
    return figure.canvas.copy_from_bbox(figure.bbox)


class RunPlotter:
    """Renders the two per-run figures to PNG, reusing one Figure per plot type.

    Per run only the data artists change (``set_data``, ``set_segments``, ``set_text``). Everything
    else (axes, ticks, labels, colorbar) is drawn once into a background and then restored, and the
    data artists are drawn over it: the decision boundary has one background; the learning curve
    one per set of axis limits (decade-snapped y, so a sweep needs few). A background depends only
    on its limits, never on earlier runs, so a run's PNG bytes are the same whatever was rendered
    before it, in any process. Not for concurrent use from several threads (a lock serialises).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._curve = _LearningCurve()
        self._curve_backgrounds: dict[tuple[Any, ...], Any] = {}
        self._boundary = _DecisionBoundary()
        self._boundary_background: Any = None

    def learning_curve_png(
        self, steps: np.ndarray, loss_trace: np.ndarray, title: str = "", iterations: int | None = None
    ) -> bytes:
        """PNG of ``learning_curve``: x runs to ``iterations`` (the last step when None)."""
        with self._lock:
            curve = self._curve
            key = curve.update(steps, loss_trace, title, iterations)
            artists = curve.data_artists()
            background = self._curve_backgrounds.get(key)
            if background is None:
                if len(self._curve_backgrounds) >= _MAX_BACKGROUNDS:
                    self._curve_backgrounds.pop(next(iter(self._curve_backgrounds)))
                background = self._curve_backgrounds[key] = _background(curve.figure, artists)
            for artist in artists:
                artist.set_visible(True)
            return _blit_png(curve.figure, background, artists)

    def decision_boundary_png(self, params: np.ndarray, title: str = "") -> bytes:
        """PNG of ``decision_boundary``."""
        with self._lock:
            boundary = self._boundary
            boundary.update(params, title, colour_here=True)
            artists = boundary.data_artists()
            if self._boundary_background is None:
                self._boundary_background = _background(boundary.figure, artists)
            for artist in artists:
                artist.set_visible(True)
            return _blit_png(boundary.figure, self._boundary_background, artists)


@functools.cache
def run_plotter() -> RunPlotter:
    """This process's RunPlotter, created on first use (each worker process gets its own)."""
    return RunPlotter()


def learning_curve(
    steps: np.ndarray, loss_trace: np.ndarray, title: str = "", iterations: int | None = None
) -> Figure:
    """Loss vs iteration, log y, as a new Figure (the layout ``RunPlotter`` renders)."""
    curve = _LearningCurve()
    curve.update(steps, loss_trace, title, iterations)
    return curve.figure


def decision_boundary(params: np.ndarray, title: str = "") -> Figure:
    """Network output over the input square [-0.25, 1.25]², the four XOR points marked, as a new Figure."""
    boundary = _DecisionBoundary()
    boundary.update(params, title)
    return boundary.figure


# ---- figures of a sweep: summaries across seeds (see xorexp.summary) ----

_SWEEP_SIZE = (5.0, 3.5)
_MAX_ANNOTATED = 12  # annotate heatmap cells up to this many rows and columns
_MAX_TICKS = 15  # label at most about this many ticks per heatmap axis
_HIGHLIGHT = ["tab:red", "tab:orange", "tab:pink", "tab:brown", "tab:gray", "tab:cyan", "tab:olive"]
_BANDS = {"iqr": ((25.0, 75.0), "25–75 %"), "range": ((0.0, 100.0), "min–max")}


def _sweep_figure() -> tuple[Figure, Any]:
    # fixed margins: constrained layout measured every tick label again and took ~3/4 of the time
    fig = Figure(figsize=_SWEEP_SIZE, dpi=80)
    fig.subplots_adjust(left=0.17, right=0.97, bottom=0.14, top=0.9)
    return fig, fig.add_subplot()


def _plain_log(axis: Any) -> None:
    """Log scale with plain tick labels (0.001, 0.1, 10): matplotlib's default 10^k labels go
    through mathtext, a large part of a summary figure's rendering time. Call after set_*scale."""
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


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
    _plain_log(ax.xaxis)
    _plain_log(ax.yaxis)
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
    _plain_log(ax.yaxis)
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
