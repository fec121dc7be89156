"""matplotlib's internals (developed on 3.11): titles drawn from cached glyph bitmaps."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib import colors as mcolors
from matplotlib.backends.backend_agg import get_hinting_flag
from matplotlib.figure import Figure
from matplotlib.text import Text

from xorexp.compat import private_ok

_MAX_LAYOUTS = 4  # title layouts kept per cache: the latest run's, for its second plot
_MAX_GLYPHS = 20_000  # glyph bitmaps kept per cache (~0.1-0.3 kB each): characters x 64 offsets


def glyph_internals() -> bool:
    """Whether this matplotlib has the per-glyph text drawing ``GlyphCache`` uses (>= 3.11)."""
    from matplotlib import ft2font
    from matplotlib.backends.backend_agg import RendererAgg

    if not private_ok("matplotlib"):
        return False
    font_type = getattr(ft2font, "FT2Font", None)
    return (
        hasattr(ft2font, "RenderMode")
        and all(hasattr(font_type, name) for name in ("_layout", "_render_glyph", "_set_transform"))
        and hasattr(RendererAgg, "_prepare_font")
    )


class GlyphCache:
    """Replaces ``Figure.draw_artist`` (its fallback) for a run's title: ~2.5 -> ~0.7 ms a title.

    Draws a one-line title as matplotlib's Agg renderer does, glyph by glyph, keeping each
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
        self.enabled = glyph_internals()
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
        usable = self.enabled and self.usable(renderer, text)
        font = renderer._prepare_font(text.get_fontproperties()) if usable else None
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
