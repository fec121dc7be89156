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
from matplotlib import colors as mcolors
from matplotlib.backends.backend_agg import FigureCanvasAgg, get_hinting_flag
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.path import Path
from matplotlib.text import Text
from matplotlib.ticker import EngFormatter, FuncFormatter, LogLocator, NullFormatter

from xorexp import nn, summary
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
_MAX_LAYOUTS = 4  # title layouts kept per RunPlotter: the latest run's, for its second plot
_MAX_GLYPHS = 20_000  # glyph bitmaps kept per RunPlotter (~0.1-0.3 kB each): characters x 64 offsets


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


class _GlyphCache:
    """Draws a one-line title as matplotlib's Agg renderer does, glyph by glyph, keeping each
    glyph's bitmap: FreeType rasterises a glyph the same at every position with the same 1/64-pixel
    fraction, so a bitmap is reused, shifted by whole pixels, wherever that glyph lands on that
    fraction again. Matplotlib renders every glyph of every title afresh (~2.5 ms of a ~40-character
    title); with the cache a title costs its layout and one blend per glyph (~0.7 ms), and the
    layout (glyphs and their offsets from the anchor) is kept for the run's other plot.

    Only for a plain title (one line, no mathtext, left/baseline, not rotated, no clip, no path
    effects, no box) with matplotlib's per-glyph Agg text drawing (matplotlib >= 3.11); any other
    text, or another matplotlib, is drawn by the artist itself. Same pixels either way (tested).
    """

    def __init__(self) -> None:
        self._bitmaps: dict[tuple[Any, ...], tuple[np.ndarray, int, int]] = {}
        self._layouts: dict[tuple[Any, ...], Any] = {}  # the last titles' glyph positions

    @staticmethod
    def usable(renderer: Any, text: Text) -> bool:
        string = text.get_text()
        return (
            hasattr(renderer, "_prepare_font")
            and hasattr(getattr(renderer, "_renderer", None), "draw_text_image")
            and string != ""
            and "\n" not in string
            and "$" not in string
            and text.get_rotation() == 0
            and text.get_horizontalalignment() == "left"
            and text.get_verticalalignment() == "baseline"
            and not text.get_usetex()
            and not text.get_path_effects()
            and text.get_bbox_patch() is None
            and not (text.get_clip_on() and (text.get_clip_box() or text.get_clip_path()))
        )

    def draw(self, figure: Figure, text: Text) -> None:
        """Draw ``text`` on ``figure``'s canvas (as ``figure.draw_artist(text)`` would)."""
        renderer = figure.canvas.get_renderer()
        font = renderer._prepare_font(text.get_fontproperties()) if self.usable(renderer, text) else None
        if font is None or not hasattr(font, "_layout") or not hasattr(font, "_render_glyph"):
            figure.draw_artist(text)
            return
        if not text.get_visible():
            return
        # a left/baseline line is drawn at its anchor whatever it says (Text._get_layout's offsets cancel)
        x, y = text.get_transform().transform(text.get_unitless_position())
        y = renderer.height - y  # Text.draw hands the renderer y downwards
        gc = renderer.new_gc()
        gc.set_foreground(mcolors.to_rgba(text.get_color()), isRGBA=True)
        gc.set_alpha(text.get_alpha())
        gc.set_antialiased(text.get_antialiased())
        gc.set_snap(text.get_snap())
        flags = get_hinting_flag()
        size = text.get_fontproperties().get_size_in_points()
        # both plots of a run carry the same title: its layout (~0.6 ms) is reused for the second
        layout_key = (font, size, renderer.dpi, flags, text.get_text(), text.get_fontfeatures(),
                      text.get_language())
        items = self._layouts.get(layout_key)
        if items is None:
            items = font._layout(text.get_text(), flags=flags, features=text.get_fontfeatures(),
                                 language=text.get_language())
            if len(self._layouts) >= _MAX_LAYOUTS:
                self._layouts.pop(next(iter(self._layouts)))
            self._layouts[layout_key] = items
        antialiased = gc.get_antialiased()
        if len(self._bitmaps) > _MAX_GLYPHS:
            self._bitmaps.clear()
        for item in items:
            # the glyph's origin in FreeType's 1/64 pixels, y upwards (RendererAgg's rounding)
            ox = round(0x40 * (x + item.x))
            oy = round(0x40 * (renderer.height - y + item.y))
            key = (item.ft_object, size, renderer.dpi, item.glyph_index, ox & 63, oy & 63, antialiased, flags)
            cached = self._bitmaps.get(key)
            if cached is None:
                cached = self._render(item, size, renderer.dpi, ox, oy, flags, antialiased)
                self._bitmaps[key] = cached
            buffer, left, top = cached
            bottom = int(renderer.height) - (top + (oy >> 6)) + buffer.shape[0]  # y downwards
            renderer._renderer.draw_text_image(buffer, left + (ox >> 6), bottom, 0, gc)
        gc.restore()

    @staticmethod
    def _render(
        item: Any, size: float, dpi: float, ox: int, oy: int, flags: Any, antialiased: bool
    ) -> tuple[np.ndarray, int, int]:
        """The glyph's bitmap at origin (ox, oy), and its left/top relative to the origin's whole pixels."""
        from matplotlib.ft2font import RenderMode

        font = item.ft_object
        font.set_size(size, dpi)
        font._set_transform(np.array([[0x10000, 0], [0, 0x10000]]), [ox, oy])
        bitmap = font._render_glyph(item.glyph_index, flags,
                                    RenderMode.NORMAL if antialiased else RenderMode.MONO)
        buffer = np.array(bitmap.buffer)  # own copy: the cache keeps it
        if not antialiased:
            buffer *= 0xFF
        return buffer, bitmap.left - (ox >> 6), bitmap.top - (oy >> 6)


def _draw_artists(figure: Figure, artists: Sequence[Any], glyphs: _GlyphCache) -> None:
    """Draw ``artists`` over the canvas in order, titles through ``glyphs``."""
    for artist in artists:
        if isinstance(artist, Text):
            glyphs.draw(figure, artist)
        else:
            figure.draw_artist(artist)


def _blit_png(figure: Figure, background: Any, artists: Sequence[Any], glyphs: _GlyphCache) -> bytes:
    """Restore a background drawn without ``artists``, draw them over it, encode the canvas as PNG."""
    figure.canvas.restore_region(background)
    _draw_artists(figure, artists, glyphs)
    return _png(figure.canvas)


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
    before it, in any process. The decision surface is painted into the canvas directly
    (``_DecisionBoundary.paint_surface``) and titles are drawn from cached glyph bitmaps
    (``_GlyphCache``): the pixels are exactly those of the Figure drawn whole by matplotlib (tested),
    at about 0.85x the cost of the smaller figures of e6dfb8c (``benchmarks/bench_plots.py``).
    Not for concurrent use from several threads (a lock serialises).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._curve = _LearningCurve()
        self._curve_backgrounds: dict[tuple[Any, ...], Any] = {}
        self._boundary = _DecisionBoundary()
        self._boundary_background: Any = None
        self._glyphs = _GlyphCache()

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
            return _blit_png(curve.figure, background, artists, self._glyphs)

    def decision_boundary_png(self, params: np.ndarray, title: str = "") -> bytes:
        """PNG of ``decision_boundary``: the background restored, the surface painted into the
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
            return _png(canvas)


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


# ---- figures of a sweep: what varied, every run by outcome, how sure (see xorexp.summary) ----

MAX_RUNS_DRAWN = 50  # a group with more seeds shows solved and stuck as separate summaries
MIN_MEDIAN = 3  # a median is drawn over at least this many runs (of one or two it is the runs)
MAX_PANELS = 12  # loss curves: one panel per group up to this many groups
MAX_SLOTS = 20  # x values shown as evenly spaced categories up to this many; beyond, a numeric axis
MAX_SERIES = 8  # series told apart by colour; beyond, series medians only
_SERIES_COLORS = ["#000000", "#56B4E9", "#009E73", "#D55E00", "#0072B2", "#E69F00", "#CC79A7", "#999999"]
_MARGINS = {"left": 0.09, "right": 0.97, "bottom": 0.14, "top": 0.88}


def _sweep_figure(**margins: float) -> tuple[Figure, Any]:
    # fixed margins: constrained layout measures every tick label again, ~3/4 of the time
    fig = _new_figure(SWEEP_PX)
    fig.subplots_adjust(**{**_MARGINS, **margins})
    return fig, fig.add_subplot()


def _title(fig: Figure, text: str) -> None:
    fig.suptitle(text, x=0.01, y=0.985, ha="left", va="top", fontsize=12)


def _no_data(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _outcome_handles(counts: dict[str, int] | None = None, median: bool = False) -> tuple[list, list]:
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


def _loss_axis(axis: Any, values: np.ndarray) -> None:
    """Final losses: a log axis snapped to whole decades (at least two labelled ticks) when they
    span a factor of 10 or more, else a linear axis (a log axis over a narrow range has no labels)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    if not len(values):
        return
    low, high = float(values.min()), float(values.max())
    if high / low >= 10:
        axis._set_axes_scale("log")
        _plain_log(axis)
        setter = axis.axes.set_ylim if axis is axis.axes.yaxis else axis.axes.set_xlim
        setter(10.0 ** math.floor(math.log10(low)), 10.0 ** math.ceil(math.log10(high)))
    else:  # from 0: a 1 % difference between three stuck runs must look like one
        setter = axis.axes.set_ylim if axis is axis.axes.yaxis else axis.axes.set_xlim
        setter(0.0, high * 1.15)


def _log_decades(ax: Any, low: float, high: float) -> None:
    """y limits snapped to whole decades (at least one), labelled at 1-2-5 within few decades."""
    lo, hi = math.floor(math.log10(low)), math.ceil(math.log10(high))
    hi = max(hi, lo + 1)
    ax.set_ylim(10.0**lo, 10.0**hi)
    if hi - lo <= 2:
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    _plain_log(ax.yaxis)


def _slots(gruns: Sequence[summary.GroupRuns], x_key: str | None) -> tuple[dict[str, float], list[str], bool]:
    """Position of each x value (the shown string), the tick labels, and whether positions are
    categories (evenly spaced, in value order) or the values themselves (numeric axis)."""
    shown: dict[str, float | None] = {}
    for g in gruns:
        text = summary.show_param(x_key, g.group) if x_key else "all runs"
        shown[text] = g.group.value(x_key) if x_key else None
    ordered = sorted(shown, key=lambda t: (shown[t] is None, shown[t] if shown[t] is not None else 0.0, t))
    numeric = len(ordered) > MAX_SLOTS and all(shown[t] is not None for t in ordered)
    if numeric:
        return {t: float(shown[t]) for t in ordered}, ordered, False  # type: ignore[arg-type]
    return {t: float(i) for i, t in enumerate(ordered)}, ordered, True


def _series(gruns: Sequence[summary.GroupRuns], key: str | None) -> list[str]:
    if key is None:
        return [""]
    values = {summary.show_param(key, g.group): g.group.value(key) for g in gruns}
    return sorted(values, key=lambda t: (values[t] is None, values[t] if values[t] is not None else 0.0, t))


def _x_ticks(
    ax: Any, positions: dict[str, float], labels: list[str], x_key: str | None, counts: dict[str, int],
    categorical: bool,
) -> None:
    if categorical:
        step = max(1, -(-len(labels) // 12))
        shown = labels[::step]
        with_n = [f"{t}\nn={counts[t]}" if t in counts else t for t in shown]
        ax.set_xticks([positions[t] for t in shown], labels=with_n)
        ax.set_xlim(-0.6, len(labels) - 0.4)
    elif x_key == "lr":
        ax.set_xscale("log")
        _plain_log(ax.xaxis)
    ax.set_xlabel(x_key or "")


def success_rate(
    gruns: Sequence[summary.GroupRuns], x_key: str | None, series_key: str | None = None
) -> Figure:
    """Success rate per value of ``x_key`` (one colour per ``series_key`` value), with its 95 %
    Wilson interval and ``solved/n`` written at each point. Groups sharing x and series pool."""
    fig, ax = _sweep_figure(bottom=0.16)
    series = _series(gruns, series_key)
    positions, labels, categorical = _slots(gruns, x_key)
    pooled: dict[tuple[str, str], list[int]] = {}
    for g in gruns:
        x = summary.show_param(x_key, g.group) if x_key else "all runs"
        s = summary.show_param(series_key, g.group) if series_key else ""
        cell = pooled.setdefault((x, s), [0, 0])
        cell[0] += g.group.n_solved
        cell[1] += g.group.n_seeds
    width = 0.7 if categorical else 0.0
    n_by_x: dict[str, int] = {}
    for k, s in enumerate(series):
        offset = (k - (len(series) - 1) / 2) * width / max(len(series), 1) if categorical else 0.0
        xs, rates, lows, highs = [], [], [], []
        for (x, s2), (solved, n) in sorted(pooled.items(), key=lambda item: positions[item[0][0]]):
            if s2 != s or n == 0:
                continue
            n_by_x[x] = n_by_x.get(x, 0) + n
            low, high = summary.wilson_interval(solved, n)  # type: ignore[misc]
            xs.append(positions[x] + offset)
            rates.append(solved / n)
            lows.append(solved / n - low)
            highs.append(high - solved / n)
            if len(gruns) <= 30:
                ax.annotate(f"{solved}/{n}", (xs[-1], high), textcoords="offset points", xytext=(0, 4),
                            ha="center", va="bottom", fontsize=9)
        color = _SERIES_COLORS[k % len(_SERIES_COLORS)] if series_key else OUTCOME_COLORS["solved"]
        label = f"{summary.SHORT_NAMES.get(series_key, series_key)}={s}" if series_key else None
        ax.errorbar(xs, rates, yerr=[lows, highs], fmt="o", color=color, markersize=6, capsize=4,
                    linewidth=1.5, label=label)
    ax.set_ylim(-0.03, 1.1)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0], labels=["0", "25 %", "50 %", "75 %", "100 %"])
    ax.set_ylabel("runs solved")
    ax.grid(True, axis="y", alpha=0.3)
    _x_ticks(ax, positions, labels, x_key, {} if series_key else n_by_x, categorical)
    if series_key:
        ax.legend(fontsize=9, ncol=min(len(series), 4), loc="lower right")
    what = f"vs {x_key}" if x_key else "of all runs"
    _title(fig, f"success rate {what}: solved/n with 95 % Wilson interval")
    return fig


def success_heatmap(groups: Sequence[summary.GroupSummary], title: str = "") -> Figure:
    """Success rate over hidden_units (rows, ascending upwards) x lr (columns, ascending), each
    cell ``solved/n`` and its 95 % Wilson interval. A cell pools every group with that hidden_units
    and lr (other swept values); cells without results are grey."""
    cells = summary.success_cells(groups)
    fig, ax = _sweep_figure(left=0.1, right=0.95)
    _title(fig, title or "success rate: solved/n and 95 % Wilson interval, by hidden_units and lr")
    if not cells:
        _no_data(ax, "no runs with hidden_units and lr")
        return fig
    rows = sorted({h for h, _ in cells})
    cols = sorted({lr for _, lr in cells})
    rate = np.full((len(rows), len(cols)), np.nan)  # (hidden_units, lr)
    for (h, lr), (solved, n) in cells.items():
        if n:
            rate[rows.index(h), cols.index(lr)] = solved / n
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
    image = ax.imshow(np.ma.masked_invalid(rate), cmap=cmap, vmin=0.0, vmax=1.0, origin="lower",
                      aspect="auto", interpolation="nearest")
    big = max(len(rows), len(cols))
    if big <= 16:
        size = 11 if big <= 5 else 9 if big <= 8 else 7
        for (h, lr), (solved, n) in cells.items():
            if not n:
                continue
            low, high = summary.wilson_interval(solved, n)  # type: ignore[misc]
            text = f"{solved}/{n}" if big > 10 else f"{solved}/{n}\n[{low:.2f}, {high:.2f}]"
            color = "white" if solved / n < 0.6 else "black"
            ax.text(cols.index(lr), rows.index(h), text, ha="center", va="center", fontsize=size, color=color)
    step_x, step_y = max(1, -(-len(cols) // 15)), max(1, -(-len(rows) // 15))
    xt, yt = list(range(0, len(cols), step_x)), list(range(0, len(rows), step_y))
    ax.set_xticks(xt, labels=[f"{cols[j]:g}" for j in xt])
    ax.set_yticks(yt, labels=[str(rows[i]) for i in yt])
    ax.set_xlabel("lr")
    ax.set_ylabel("hidden_units")
    fig.colorbar(image, ax=ax, label="success rate", fraction=0.04, pad=0.02)
    return fig


def _jitter(n: int, width: float) -> np.ndarray:
    """Evenly spread offsets in [-width/2, width/2], in a shuffled but fixed order."""
    if n <= 1:
        return np.zeros(n)
    spread = np.linspace(-width / 2, width / 2, n)
    return spread[np.argsort((np.arange(n) * 0.6180339887) % 1.0)]


def final_loss(
    gruns: Sequence[summary.GroupRuns], x_key: str | None, series_key: str | None = None
) -> Figure:
    """Final loss per value of ``x_key``: every run a dot coloured by outcome and the median as a
    black bar (groups of up to MAX_RUNS_DRAWN seeds); larger groups show the solved and the stuck
    runs as two medians with 25-75 % bars and their counts. With a series key (e.g. hidden_units in
    an lr x hidden_units sweep) series sit side by side in each slot, their medians joined by a
    line of the series' colour. Diverged and failed runs have no final loss: counted in the legend."""
    fig, ax = _sweep_figure(right=0.82, bottom=0.16)
    series = _series(gruns, series_key)
    positions, labels, categorical = _slots(gruns, x_key)
    counts = {o: 0 for o in OUTCOME_COLORS}
    all_losses = [g.finite_losses() for g in gruns]
    losses = np.concatenate(all_losses) if all_losses else np.empty(0)
    n_by_x: dict[str, int] = {}
    many_series = len(series) > MAX_SERIES
    slot_width = 0.8 if categorical else 0.0
    for g in gruns:
        for outcome, n in g.counts().items():
            counts[outcome] += n
    for k, s in enumerate(series):
        in_series = [g for g in gruns if not series_key or summary.show_param(series_key, g.group) == s]
        width = slot_width / len(series)
        offset = (k - (len(series) - 1) / 2) * width
        medians = []
        def slot(g: summary.GroupRuns) -> str:
            return summary.show_param(x_key, g.group) if x_key else "all runs"

        for g in sorted(in_series, key=lambda g: positions[slot(g)]):
            x_text = slot(g)
            n_by_x[x_text] = n_by_x.get(x_text, 0) + g.n
            x = positions[x_text] + offset
            quart = summary.loss_quartiles(g.final_losses)
            if quart is not None:
                medians.append((x, quart[0]))
            if many_series:
                continue
            if g.n <= MAX_RUNS_DRAWN or not categorical:
                finite = np.isfinite(g.final_losses)
                colors = [OUTCOME_COLORS[o] for o, f in zip(g.outcomes, finite, strict=True) if f]
                xs = x + _jitter(int(finite.sum()), width * 0.7) if categorical else np.full(finite.sum(), x)
                ax.scatter(xs, g.final_losses[finite], c=colors, s=40 if g.n < MIN_MEDIAN else 18,
                           alpha=0.85, linewidths=0, zorder=4)
                if quart is not None and categorical and g.n >= MIN_MEDIAN:
                    half = width * 0.42
                    ax.hlines(quart[0], x - half, x + half, color="k", linewidth=2.2, zorder=3)
            else:
                for side, outcome in ((-0.2, "solved"), (0.2, "stuck")):
                    q = summary.loss_quartiles(g.losses_of(outcome))
                    if q is None:
                        continue
                    xo = x + side * width
                    ax.errorbar([xo], [q[0]], yerr=[[q[0] - q[1]], [q[2] - q[0]]], fmt="s", markersize=6,
                                color=OUTCOME_COLORS[outcome], capsize=3, zorder=3)
                    ax.annotate(f"{len(g.losses_of(outcome))}", (xo, q[2]), textcoords="offset points",
                                xytext=(0, 3), ha="center", fontsize=8, color=OUTCOME_COLORS[outcome])
        if series_key and medians:
            xs, ys = zip(*medians, strict=True)
            color = (matplotlib.colormaps["viridis"](k / max(len(series) - 1, 1)) if many_series
                     else _SERIES_COLORS[k % len(_SERIES_COLORS)])
            ax.plot(xs, ys, color=color, linewidth=1.2, marker="_", markersize=12, zorder=4,
                    label=f"{summary.SHORT_NAMES.get(series_key, series_key)}={s}")
    ax.set_ylabel("final loss")
    ax.grid(True, axis="y", which="major", alpha=0.3)
    if not len(losses):
        _no_data(ax, "no finite final loss")
    else:
        _loss_axis(ax.yaxis, losses)
    _x_ticks(ax, positions, labels, x_key, {} if series_key else n_by_x, categorical)
    handles, texts = _outcome_handles(counts)
    legend = ax.legend(handles, texts, title="runs", fontsize=9, title_fontsize=9, loc="upper left",
                       bbox_to_anchor=(1.01, 1.0), frameon=False)
    if series_key:
        ax.add_artist(legend)
        ax.legend(fontsize=9, title="median of", title_fontsize=9, loc="lower left",
                  bbox_to_anchor=(1.01, 0.0), frameon=False)
    elif any(g.n > MAX_RUNS_DRAWN for g in gruns) and categorical:
        ax.text(1.02, 0.02, f"groups over {MAX_RUNS_DRAWN} runs:\nmedian and 25-75 %\nof solved (left)\n"
                "and stuck (right),\ncount above", transform=ax.transAxes, fontsize=8, va="bottom")
    elif any(g.n >= MIN_MEDIAN for g in gruns):
        ax.add_artist(legend)
        ax.legend([Line2D([], [], color="k", linewidth=2.2)], ["median"], fontsize=9, loc="lower left",
                  bbox_to_anchor=(1.01, 0.0), frameon=False)
    what = f"vs {x_key}" if x_key else "of all runs"
    per = f", one line per {series_key}" if series_key else ""
    _title(fig, f"final loss {what}: every run, coloured by outcome{per}")
    return fig


def loss_curves(gruns: Sequence[summary.GroupRuns]) -> Figure:
    """Loss traces. Up to MAX_PANELS groups: one panel per group (shared axes), every run a thin
    line coloured by outcome with the median of all on top, or, beyond MAX_RUNS_DRAWN seeds, the
    median and 25-75 % band of the solved and of the stuck runs apart. More groups: one panel with
    every run, coloured by outcome, and the median of each outcome."""
    drawn = sorted((g for g in gruns if g.traces), key=lambda g: summary.params_order(g.group))  # by value
    counts = {o: 0 for o in OUTCOME_COLORS}
    for g in gruns:
        for outcome, n in g.counts().items():
            counts[outcome] += n
    if not drawn or len(drawn) > MAX_PANELS:
        fig, ax = _sweep_figure(right=0.8)
        panels = [(ax, None)]
    else:
        fig = _new_figure(SWEEP_PX)
        ncols = min(len(drawn), 4)
        nrows = -(-len(drawn) // ncols)
        axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
        fig.subplots_adjust(left=0.08, right=0.8, bottom=0.1, top=0.86 if nrows > 1 else 0.84,
                            wspace=0.08, hspace=0.32)
        flat = list(axes.ravel())
        for extra in flat[len(drawn):]:
            extra.set_visible(False)
        panels = list(zip(flat, drawn, strict=False))
    positive = []
    for ax, g in panels:
        ax.set_yscale("log")
        _plain_log(ax.yaxis)
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))
        ax.grid(True, which="major", alpha=0.3)
        if g is None:
            if not drawn:
                _no_data(ax, "no loss trace")
                continue
            for outcome in ("stuck", "diverged", "solved"):
                lines = [np.column_stack(t) for r in drawn for t in r.traces_of(outcome)]
                if lines:
                    ax.add_collection(LineCollection(lines, colors=OUTCOME_COLORS[outcome], linewidths=0.5,
                                                     alpha=0.25))
                band = summary.trace_band([t for r in drawn for t in r.traces_of(outcome)])
                if len(band[0]):
                    ax.plot(band[0], band[1], color=OUTCOME_COLORS[outcome], linewidth=2.5, zorder=3)
            positive += [t[1] for r in drawn for t in r.traces]
            ax.set_title(f"{len(drawn)} groups, {sum(r.n for r in drawn)} runs", fontsize=10, loc="left")
            continue
        if g.n <= MAX_RUNS_DRAWN:
            for outcome in ("stuck", "diverged", "solved"):
                lines = [np.column_stack(t) for t in g.traces_of(outcome)]
                if lines:
                    few = g.n < MIN_MEDIAN
                    width = 1.8 if few else 0.8
                    ax.add_collection(LineCollection(lines, colors=OUTCOME_COLORS[outcome], linewidths=width,
                                                     alpha=1.0 if few else 0.6))
            if g.n >= MIN_MEDIAN:
                steps, median = g.band()[:2]
                ax.plot(steps, median, color="k", linewidth=2.0, zorder=3)
        else:
            for outcome in ("stuck", "solved", "diverged"):
                steps, median, low, high, _ = g.band(outcome)
                if len(steps):
                    color = OUTCOME_COLORS[outcome]
                    ax.fill_between(steps, low, high, color=color, alpha=0.25, linewidth=0)
                    ax.plot(steps, median, color=color, linewidth=2.0)
        positive += [t[1] for t in g.traces]
        ax.set_title(f"{g.label} (n={g.n})\n{g.count_text()}", fontsize=9, loc="left")
    values = np.concatenate(positive) if positive else np.empty(0)
    values = values[np.isfinite(values) & (values > 0)]
    if len(values):
        top = panels[0][0]
        top.autoscale_view()
        _log_decades(top, float(values.min()), float(values.max()))
        ends = [t[0][-1] for g in drawn for t in g.traces if len(t[0])]
        ends += [g.group.iterations for g in drawn if g.group.iterations is not None]
        if ends:
            top.set_xlim(0, max(ends))
    for ax, _ in panels:
        if ax.get_subplotspec().is_last_row() or len(panels) == 1:
            ax.set_xlabel("iteration")
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("loss")
    many = any(g.n > MAX_RUNS_DRAWN for _, g in panels if g is not None) or panels[0][1] is None
    handles, texts = _outcome_handles(counts, median=not many and any(g.n >= MIN_MEDIAN for g in drawn))
    fig.legend(handles, texts, title="runs", loc="upper left", bbox_to_anchor=(0.81, 0.86), fontsize=9,
               title_fontsize=9, frameon=False)
    if many:
        fig.text(0.81, 0.1, "thick: median of each\noutcome; band: 25-75 %", fontsize=8)
    _title(fig, "loss per group: every run coloured by outcome" if not many else
           "loss: median (and 25-75 % band) of each outcome")
    return fig


def sweep_figures(
    groups: Sequence[summary.GroupSummary],
    records: Sequence[summary.RunRecord],
    curves: Sequence[Sequence[tuple[Any, Any]]] | None = None,
) -> dict[str, Figure]:
    """The sweep's figures by artifact path, chosen by what the sweep varied (``summary.figure_axes``).

    - hidden_units and lr both varied: ``plots/success_rate_heatmap.png`` and
      ``plots/final_loss_vs_lr.png`` (one median line per hidden_units);
    - one value varied (or more, not both of those): ``plots/success_rate_vs_<key>.png`` and
      ``plots/final_loss_vs_<key>.png``;
    - only seeds: ``plots/success_rate.png`` and ``plots/final_loss.png`` of the one group;
    - always, when ``curves`` are given: ``plots/loss_curves.png``.

    ``curves[i]``: the (steps, values) traces of ``groups[i].run_ids``.
    """
    if not groups:
        return {}
    gruns = summary.figure_groups(groups, records, curves)
    x_key, series_key = summary.figure_axes(groups)
    suffix = f"_vs_{x_key}" if x_key else ""
    figures: dict[str, Figure] = {}
    if x_key == "lr" and series_key == "hidden_units":
        figures["plots/success_rate_heatmap.png"] = success_heatmap(groups)
    else:
        figures[f"plots/success_rate{suffix}.png"] = success_rate(gruns, x_key, series_key)
    figures[f"plots/final_loss{suffix}.png"] = final_loss(gruns, x_key, series_key)
    if curves is not None:
        figures["plots/loss_curves.png"] = loss_curves(gruns)
    return figures
