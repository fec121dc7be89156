"""Figures of one run: the learning curve and the decision boundary, rendered straight to PNG bytes.

``RunPlotter`` keeps one Figure per plot type and redraws only the data artists of each run over a
cached background, paints the decision surface into the canvas itself, draws titles from cached
glyph bitmaps (``GlyphCache``) and encodes the PNG itself (``xorexp.png``): fast enough to log every
run of a large sweep (see ``benchmarks/bench_plots.py``), with the very pixels of the Figure drawn whole by
matplotlib. Sizes are in pixels (at ``plot_style.DPI``), shown 1:1 by the MLflow UI's artifact viewer.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Sequence
from typing import Any

import contourpy
import matplotlib
import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.path import Path
from matplotlib.text import Text
from matplotlib.ticker import EngFormatter

from xorexp import mechanisms, nn, png
from xorexp.compat.matplotlib import GlyphCache
from xorexp.data import X, Y
from xorexp.plot_style import OUTCOME_COLORS, new_figure, plain_log

RUN_CURVE_PX = (640, 400)
RUN_BOUNDARY_PX = (640, 480)

_GRID = 100  # cells per side of the decision-boundary image, values at cell centres
_LOW, _HIGH = -0.25, 1.25  # the input square shown by the decision boundary
SURFACE_BUDGET = 1 << 20  # most array elements (8 MB of floats) per slice of the surface computation
_MAX_BACKGROUNDS = 64  # learning-curve backgrounds kept per process, one per set of axis limits


def run_title(name: str, outcome: str, final_loss: float) -> str:
    """``h2-lr0.1-s42: solved, final loss 0.0123`` (diverged: the non-finite value, e.g. ``inf``)."""
    return f"{name}: {outcome}, final loss {final_loss:.3g}"


def _axes_rect(fig_px: tuple[int, int], left: int, bottom: int, width: int, height: int) -> list[float]:
    """A rectangle given in pixels from the figure's lower left corner, as figure fractions."""
    w, h = fig_px
    return [left / w, bottom / h, width / w, height / h]


class _LearningCurve:
    """Loss vs iteration on a log y axis; y limits snap to whole decades, x runs from 0 to the end."""

    SIZE_PX = RUN_CURVE_PX

    def __init__(self) -> None:
        self.figure = new_figure(self.SIZE_PX)
        ax = self.figure.add_axes(_axes_rect(self.SIZE_PX, 80, 55, 535, 305))
        (self.line,) = ax.plot([], [], color=OUTCOME_COLORS["solved"], linewidth=1.5)
        ax.set_yscale("log")
        plain_log(ax.yaxis)  # decade-snapped limits: at least two labelled decades, no minor labels
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


class _MarkerPath(Path):
    """A scatter marker's path whose extents under each affine transform are computed once: a
    PathCollection asks for them on every draw (to choose Agg's marker blitting), ~0.3 ms through
    a circle's Bézier curves. The path is read-only, so the extents never change."""

    def __init__(self, path: Path) -> None:
        super().__init__(path.vertices, path.codes, readonly=True)
        self._extents: dict[bytes, Any] = {}

    def get_extents(self, transform: Any = None, **kwargs: Any) -> Any:
        if transform is None or kwargs or not transform.is_affine:
            return super().get_extents(transform, **kwargs)
        key = transform.get_matrix().tobytes()
        if key not in self._extents:
            self._extents[key] = super().get_extents(transform)
        return self._extents[key].frozen()  # a copy: a Bbox is mutable


class _DecisionBoundary:
    """Network output over the input square, a 0.5 contour, the four XOR points by target, a legend."""

    SIZE_PX = RUN_BOUNDARY_PX

    def __init__(self) -> None:
        self.figure = new_figure(self.SIZE_PX)
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
        for points in self.points:  # drawn every run: their marker's extents computed once
            points.set_paths([_MarkerPath(path) for path in points.get_paths()])
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
            bbox_to_anchor=(515 / self.SIZE_PX[0], 420 / self.SIZE_PX[1]),
            fontsize=9,
            frameon=False,
        )
        self.ax = ax
        centres = _LOW + (np.arange(_GRID) + 0.5) * (_HIGH - _LOW) / _GRID  # (G,)
        self.centres = centres
        gx, gy = np.meshgrid(centres, centres)  # (G, G): x1 varies along columns, x2 along rows
        self.inputs = np.stack([gx.ravel(), gy.ravel()])  # (2, G*G)
        self.pixels = self._surface_pixels()

    def _surface_pixels(self) -> tuple[slice, slice, np.ndarray] | None:
        """Where the surface goes in the canvas buffer (rows from the top, columns) and, for each of
        its pixels, the grid cell whose colour it shows (flat index into the (G, G) grid): the cell
        under the pixel's centre, as matplotlib's "nearest" resampling picks it. None when the axes
        do not sit on whole pixels (then the image artist draws the surface)."""
        bounds = np.asarray(self.ax.bbox.bounds)  # left, bottom, width, height in pixels
        if not np.allclose(bounds, np.round(bounds), atol=1e-6):
            return None
        left, bottom, width, height = (int(v) for v in np.round(bounds))
        top = self.SIZE_PX[1] - bottom - height
        column_cell = ((np.arange(width) + 0.5) * _GRID / width).astype(np.intp)  # (W,)
        row_cell = ((np.arange(height)[::-1] + 0.5) * _GRID / height).astype(np.intp)  # (H,): top row first
        cells = row_cell[:, None] * _GRID + column_cell[None, :]  # (H, W)
        return slice(top, top + height), slice(left, left + width), cells

    def surface(self, params: np.ndarray) -> np.ndarray:
        """Network output at the cell centres, (G, G), row i at x2 = centres[i]; NaN where not finite."""
        return surface_values(params, self.inputs).reshape(_GRID, _GRID)

    def update(self, params: np.ndarray, title: str, colour_here: bool = False) -> np.ndarray:
        """Show one run; returns the surface's colours, (G, G, 4) RGBA bytes (row 0 at the lowest x2).

        ``colour_here``: colour the surface here by the image's own norm and colormap (NaN -> the
        "bad" grey) and leave the image artist as it is: ``RunPlotter`` paints these colours into
        the canvas itself. Otherwise the image artist gets the values, as a Figure needs them."""
        surface = self.surface(params)
        colours = self.image.to_rgba(surface, bytes=True)  # (G, G, 4)
        if not colour_here:
            self.image.set_data(surface)
        masked = np.ma.masked_invalid(surface)
        if masked.count() >= 4:
            gen = contourpy.contour_generator(self.centres, self.centres, masked, line_type="Separate")
            self.contour.set_segments(gen.lines(0.5))
        else:
            self.contour.set_segments([])
        self.title.set_text(title)
        return colours

    def paint_surface(self, colours: np.ndarray) -> bool:
        """Write the surface's colours into the canvas at the axes' pixels, each pixel the colour of
        the cell under its centre: what the image artist draws with "nearest" resampling (at ~1/40
        of its cost), without resampling through matplotlib. False when the axes are not on whole
        pixels (then the image artist must draw it)."""
        if self.pixels is None:
            return False
        rows, columns, cells = self.pixels
        canvas = np.asarray(self.figure.canvas.get_renderer().buffer_rgba())  # (H, W, 4), writable
        flat = np.ascontiguousarray(colours, dtype=np.uint8).view(np.uint32).reshape(-1)  # (G*G,) RGBA
        canvas[rows, columns] = flat[cells].view(np.uint8).reshape(*cells.shape, 4)
        return True

    def data_artists(self) -> list[Any]:
        return [self.image, *self.overlay_artists()]

    def overlay_artists(self) -> list[Any]:
        """The data artists drawn over the surface, in drawing order."""
        return [self.contour, *self.points, *self.ax.spines.values(), self.title]


def _draw_artists(figure: Figure, artists: Sequence[Any], glyphs: GlyphCache) -> None:
    """Draw ``artists`` over the canvas in order, titles through ``glyphs``."""
    for artist in artists:
        if isinstance(artist, Text):
            glyphs.draw(figure, artist)
        else:
            figure.draw_artist(artist)


def _blit_png(figure: Figure, background: Any, artists: Sequence[Any], glyphs: GlyphCache) -> bytes:
    """Restore a background drawn without ``artists``, draw them over it, encode the canvas as PNG."""
    figure.canvas.restore_region(background)
    _draw_artists(figure, artists, glyphs)
    return png.canvas_png(figure.canvas)


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
    before it, in any process. The decision surface is painted into the canvas directly
    (``_DecisionBoundary.paint_surface``) and titles are drawn from cached glyph bitmaps
    (``GlyphCache``): the pixels are exactly those of the Figure drawn whole by matplotlib (tested).
    A lock serialises threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._curve = _LearningCurve()
        self._curve_backgrounds: dict[tuple[Any, ...], Any] = {}
        self._boundary = _DecisionBoundary()
        self._boundary_background: Any = None
        self._glyphs = GlyphCache()
        self._glyphs.enabled = self._glyphs.enabled and mechanisms.on("glyph_cache")

    def learning_curve_png(
        self,
        steps: np.ndarray,
        loss_trace: np.ndarray,
        title: str = "",
        iterations: int | None = None,
        outcome: str | None = None,
    ) -> bytes:
        """PNG of the learning curve (``_LearningCurve``): loss on a log axis, x running to
        ``iterations`` (the last step when None), the line in the colour of ``outcome``."""
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
            return _blit_png(curve.figure, background, artists, self._glyphs)

    def decision_boundary_png(self, params: np.ndarray, title: str = "") -> bytes:
        """PNG of the decision boundary (``_DecisionBoundary``): network output over the input square
        [-0.25, 1.25]² with the four XOR points; the background restored, the surface painted into the
        canvas (``_DecisionBoundary.paint_surface``), the other data artists drawn over it."""
        with self._lock:
            boundary = self._boundary
            colours = boundary.update(params, title, colour_here=True)
            artists = boundary.data_artists()
            if self._boundary_background is None:
                self._boundary_background = _background(boundary.figure, artists)
            for artist in artists:
                artist.set_visible(True)
            canvas = boundary.figure.canvas
            canvas.restore_region(self._boundary_background)
            if boundary.paint_surface(colours):
                artists = boundary.overlay_artists()
            else:
                boundary.image.set_data(colours)
            _draw_artists(boundary.figure, artists, self._glyphs)
            return png.canvas_png(canvas)


@functools.cache
def run_plotter() -> RunPlotter:
    """This process's RunPlotter, created on first use (each worker process gets its own)."""
    return RunPlotter()
