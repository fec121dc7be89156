"""PNG bytes of an Agg canvas: xorexp's own encoder (``encode_png``), or matplotlib's writer when the
``png_writer`` mechanism is off (same pixels)."""

from __future__ import annotations

import io
import struct
import zlib

import matplotlib.image
import numpy as np
from isal import isal_zlib
from matplotlib.backends.backend_agg import FigureCanvasAgg

from xorexp import mechanisms

LEVEL = 1  # ISA-L's deflate level (0-3)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def canvas_png(canvas: FigureCanvasAgg) -> bytes:
    """The canvas as PNG bytes: ``encode_png``'s, or matplotlib's writer's (the same pixels)."""
    if mechanisms.on("png_writer"):
        return encode_png(canvas)
    out = io.BytesIO()
    matplotlib.image.imsave(out, np.asarray(canvas.buffer_rgba()), format="png")
    return out.getvalue()


def encode_png(canvas: FigureCanvasAgg) -> bytes:
    """The canvas as an 8-bit RGBA PNG, no text chunks: every row with PNG's "up" filter (the
    figures' flat areas and repeated rows become zeros), deflated by ISA-L (``isal``), not PIL's
    adaptive filters and zlib (benchmarks/README.md). The bytes depend on ISA-L's version and the
    CPU; the pixels do not."""
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
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", isal_zlib.compress(rows, LEVEL)),
            _chunk(b"IEND", b""),
        ]
    )
