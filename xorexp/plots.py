"""Figures of one run and of a sweep, drawn with matplotlib's object API (no pyplot global state).

Plots only draw: every statistic a sweep figure shows (medians, bands, counts, intervals, which
values vary) comes from ``xorexp.summary``. Figures are returned, never saved or logged here.
``RunPlotter`` renders the two per-run figures straight to PNG bytes, fast enough to log every run
of a large sweep (see ``benchmarks/bench_plots.py``). Sizes are in pixels at ``DPI``, chosen to be
shown 1:1 by the MLflow UI's artifact viewer (natural size up to ~800-1000 px wide).
"""

from __future__ import annotations

import functools
import math
import struct
import threading
import zlib
from collections.abc import Sequence
from typing import Any

import contourpy
import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter, FuncFormatter, NullFormatter

from xorexp import nn
from xorexp.data import X, Y

DPI = 100
RUN_CURVE_PX = (640, 400)
RUN_BOUNDARY_PX = (640, 480)
SWEEP_PX = (900, 560)
# one colour per outcome in every figure (Okabe-Ito, readable with colour-blindness)
OUTCOME_COLORS = {"solved": "#0072B2", "stuck": "#E69F00", "diverged": "#CC79A7", "failed": "0.45"}

# ---- figures of one run: fixed layouts whose data artists are updated per run ----

_GRID = 100  # cells per side of the decision-boundary image, values at cell centres
_LOW, _HIGH = -0.25, 1.25  # the input square shown by the decision boundary
_PNG_LEVEL = 1  # zlib level: fast; the "up" filter makes the images' flat areas compress well
SURFACE_BUDGET = 1 << 20  # most array elements (8 MB of floats) per slice of the surface computation
_MAX_BACKGROUNDS = 64  # learning-curve backgrounds kept per process, one per set of axis limits


def _plain_log(axis: Any) -> None:
    """Log scale with plain tick labels (0.001, 0.1, 10) and no minor labels: matplotlib's default
    10^k labels go through mathtext (slow), and minor labels crowd a narrow range. Call after
    set_*scale."""
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def run_title(name: str, outcome: str, final_loss: float) -> str:
    """``h2-lr0.1-s42: solved, final loss 0.0123`` (diverged: the non-finite value, e.g. ``inf``)."""
    return f"{name}: {outcome}, final loss {final_loss:.3g}"


def _new_figure(size_px: tuple[int, int]) -> Figure:
    figure = Figure(figsize=(size_px[0] / DPI, size_px[1] / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _axes_rect(fig_px: tuple[int, int], left: int, bottom: int, width: int, height: int) -> list[float]:
    """A rectangle given in pixels from the figure's lower left corner, as figure fractions."""
    w, h = fig_px
    return [left / w, bottom / h, width / w, height / h]


class _LearningCurve:
    """Loss vs iteration on a log y axis; y limits snap to whole decades, x runs from 0 to the end."""

    SIZE_PX = RUN_CURVE_PX

    def __init__(self) -> None:
        self.figure = _new_figure(self.SIZE_PX)
        ax = self.figure.add_axes(_axes_rect(self.SIZE_PX, 80, 55, 535, 305))
        (self.line,) = ax.plot([], [], color=OUTCOME_COLORS["solved"], linewidth=1.5)
        ax.set_yscale("log")
        _plain_log(ax.yaxis)  # decade-snapped limits: at least two labelled decades, no minor labels
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 150k: long runs' labels do not collide
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss (binary cross-entropy)")
        ax.grid(True, which="both", alpha=0.3)
        self.title = ax.set_title("", fontsize=11, y=1.0, loc="left")  # fixed: no automatic placement
        self.no_data = ax.text(0.5, 0.5, "no finite positive loss", ha="center", va="center",
                               transform=ax.transAxes, color="0.4")
        self.ax = ax

    def update(
        self,
        steps: np.ndarray,
        loss_trace: np.ndarray,
        title: str,
        iterations: int | None = None,
        outcome: str | None = None,
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
        self.line.set_marker("o" if shown.sum() < 3 else "")  # a lone point (early divergence) shows
        self.line.set_color(OUTCOME_COLORS.get(outcome or "solved", OUTCOME_COLORS["failed"]))
        self.title.set_text(title)
        self.ax.set_xlim(0.0, limits[0])
        self.ax.set_ylim(*((10.0 ** limits[1], 10.0 ** limits[2]) if limits[1] is not None else (1e-3, 1.0)))
        self.no_data.set_visible(limits[1] is None)
        return limits

    def data_artists(self) -> list[Any]:
        return [self.line, *self.ax.spines.values(), self.title]


def surface_values(params: np.ndarray, inputs: np.ndarray, budget: int = SURFACE_BUDGET) -> np.ndarray:
    """Network output of one run at ``inputs`` (2, N), computed in slices of at most ~``budget``
    array elements, so memory stays bounded whatever hidden_units (a 100x100 grid at once would
    take N*h*8 bytes per array: 8 GB at h=100,000). NaN where not finite.

    Up to ``budget`` hidden units, slices go over the inputs and the values are exactly
    ``nn.forward``'s (each input's sum over units is the same sequence of adds). Beyond it, each
    input's sum over units is taken in blocks of units too: the same picture, last bits may differ.
    """
    params = np.asarray(params, dtype=float)
    inputs = np.asarray(inputs, dtype=float)
    h = (len(params) - 1) // 4
    n = inputs.shape[1]
    out = np.empty(n)  # (N,)
    with np.errstate(all="ignore"):
        if h <= budget:
            per_slice = max(1, budget // h)
            for start in range(0, n, per_slice):
                part = inputs[:, start : start + per_slice]
                out[start : start + part.shape[1]] = nn.forward(params[:, None], part)[0][:, 0]
        else:
            layers = nn.layers(params[:, None])
            for i in range(n):
                x1, x2 = inputs[0, i], inputs[1, i]
                z2 = 0.0
                for u in range(0, h, budget):
                    z1 = layers.w1a[u : u + budget] * x1  # (units, 1)
                    z1 += layers.w1b[u : u + budget] * x2
                    z1 += layers.b1[u : u + budget]
                    hidden = nn.sigmoid(z1, out=z1)
                    partial = np.empty((1, 1))
                    nn.sum_over_units((hidden * layers.w2[u : u + budget])[None], out=partial)
                    z2 += partial[0, 0]
                out[i] = nn.sigmoid(np.array([z2 + layers.b2[0]]))[0]
    out[~np.isfinite(out)] = np.nan
    return out


class _DecisionBoundary:
    """Network output over the input square, a 0.5 contour, the four XOR points by target, a legend."""

    SIZE_PX = RUN_BOUNDARY_PX

    def __init__(self) -> None:
        self.figure = _new_figure(self.SIZE_PX)
        ax = self.figure.add_axes(_axes_rect(self.SIZE_PX, 70, 60, 360, 360))
        cax = self.figure.add_axes(_axes_rect(self.SIZE_PX, 445, 60, 14, 360))
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
        self.contour = LineCollection([], colors="k", linewidths=1.2)
        ax.add_collection(self.contour, autolim=False)
        self.points = [
            ax.scatter(X[0][Y[0] == t], X[1][Y[0] == t], c=color, edgecolors="k", s=90, zorder=3)
            for t, color in ((0, "tab:blue"), (1, "tab:red"))
        ]
        ax.set_xlim(_LOW, _HIGH)
        ax.set_ylim(_LOW, _HIGH)
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
        self.title = ax.set_title("", fontsize=11, y=1.0, loc="left")  # fixed: no automatic placement
        self.figure.colorbar(self.image, cax=cax, label="network output")
        self.figure.legend(
            [*self.points, Line2D([], [], color="k", linewidth=1.2)],
            ["target 0", "target 1", "output 0.5"],
            loc="upper left",
            bbox_to_anchor=(528 / self.SIZE_PX[0], 420 / self.SIZE_PX[1]),
            fontsize=9,
            frameon=False,
        )
        self.ax = ax
        centres = _LOW + (np.arange(_GRID) + 0.5) * (_HIGH - _LOW) / _GRID  # (G,)
        self.centres = centres
        gx, gy = np.meshgrid(centres, centres)  # (G, G): x1 varies along columns, x2 along rows
        self.inputs = np.stack([gx.ravel(), gy.ravel()])  # (2, G*G)

    def surface(self, params: np.ndarray) -> np.ndarray:
        """Network output at the cell centres, (G, G), row i at x2 = centres[i]; NaN where not finite."""
        return surface_values(params, self.inputs).reshape(_GRID, _GRID)

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
        return [self.image, self.contour, *self.points, *self.ax.spines.values(), self.title]


def _blit_png(figure: Figure, background: Any, artists: Sequence[Any]) -> bytes:
    """Restore a background drawn without ``artists``, draw them over it, encode the canvas as PNG."""
    canvas = figure.canvas
    canvas.restore_region(background)
    for artist in artists:
        figure.draw_artist(artist)
    return _png(canvas)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(canvas: FigureCanvasAgg) -> bytes:
    """The canvas as an 8-bit RGBA PNG, no text chunks.

    Encoded here rather than by PIL, whose adaptive per-row filter choice and RGB conversion took
    ~3/4 of the time: every row uses PNG's "up" filter (difference to the row above), which turns
    the figures' flat areas, repeated rows and the opaque alpha channel into zeros that zlib
    level 1 compresses quickly and well; RGBA spares a strided copy to RGB.
    """
    width, height = canvas.get_width_height()
    pixels = np.asarray(canvas.buffer_rgba()).reshape(height, 4 * width)  # (H, 4W)
    rows = np.empty((height, 1 + 4 * width), dtype=np.uint8)
    rows[:, 0] = 2  # filter type "up"
    rows[0, 1:] = pixels[0]  # the row above the first counts as zeros
    np.subtract(pixels[1:], pixels[:-1], out=rows[1:, 1:])  # modulo 256, as PNG defines it
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA, no interlace
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(rows, _PNG_LEVEL)),
            _png_chunk(b"IEND", b""),
        ]
    )


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
        self,
        steps: np.ndarray,
        loss_trace: np.ndarray,
        title: str = "",
        iterations: int | None = None,
        outcome: str | None = None,
    ) -> bytes:
        """PNG of ``learning_curve``: x runs to ``iterations`` (the last step when None), the line
        in the colour of ``outcome``."""
        with self._lock:
            curve = self._curve
            key = curve.update(steps, loss_trace, title, iterations, outcome)
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
    steps: np.ndarray,
    loss_trace: np.ndarray,
    title: str = "",
    iterations: int | None = None,
    outcome: str | None = None,
) -> Figure:
    """Loss vs iteration, log y, as a new Figure (the layout ``RunPlotter`` renders)."""
    curve = _LearningCurve()
    curve.update(steps, loss_trace, title, iterations, outcome)
    return curve.figure


def decision_boundary(params: np.ndarray, title: str = "") -> Figure:
    """Network output over the input square [-0.25, 1.25]², the four XOR points marked, as a new Figure."""
    boundary = _DecisionBoundary()
    boundary.update(params, title)
    return boundary.figure


