"""Per-run plots: valid PNGs, the same bytes whatever was rendered before and in any process."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.path import Path
from PIL import Image

from tests.conftest import ROOT
from xorexp import nn, run_plots
from xorexp.chunks import DECISION_BOUNDARY, LEARNING_CURVE, render_run_plots
from xorexp.compat import matplotlib as compat_matplotlib
from xorexp.plot_style import OUTCOME_COLORS
from xorexp.train import RunSpec, train

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SOLVED = RunSpec(lr=5.0, seed=3, iterations=4000)
STUCK = RunSpec(lr=0.1, seed=0, iterations=2000)
DIVERGED = RunSpec(lr=1000.0, seed=0, iterations=3000)


@pytest.fixture(scope="module")
def results():
    solved, stuck, diverged = train([SOLVED, STUCK, DIVERGED])
    return {"solved": solved, "stuck": stuck, "diverged": diverged}


def name(spec: RunSpec) -> str:
    return f"h{spec.hidden_units}-lr{spec.lr:g}-s{spec.seed}"


def curve_figure(steps, loss_trace, title="", iterations=None, outcome=None) -> Figure:
    """The learning curve's layout as a Figure of its own, for matplotlib to draw whole."""
    curve = run_plots._LearningCurve()
    curve.update(steps, loss_trace, title, iterations, outcome)
    return curve.figure


def boundary_figure(params, title="") -> Figure:
    """The decision boundary's layout as a Figure of its own (the image artist shows the surface)."""
    boundary = run_plots._DecisionBoundary()
    boundary.update(params, title)
    return boundary.figure


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def digest(pngs: dict[str, bytes]) -> str:
    return hashlib.sha256(pngs[LEARNING_CURVE] + pngs[DECISION_BOUNDARY]).hexdigest()


@pytest.mark.floor
def test_both_plots_are_pngs(results):
    pngs = render_run_plots(results["solved"], name(SOLVED))
    assert set(pngs) == {LEARNING_CURVE, DECISION_BOUNDARY}
    for png in pngs.values():
        assert png.startswith(PNG_SIGNATURE)
        assert decode(png).shape[2] == 3


def test_same_run_same_bytes_whatever_was_rendered_before(results):
    def render(plotter, key):
        r = results[key]
        title = run_plots.run_title(name(r.spec), r.outcome, r.final_loss)
        return {
            "curve": plotter.learning_curve_png(
                r.trace_steps, r.loss_trace, title, r.spec.iterations, r.outcome
            ),
            "boundary": plotter.decision_boundary_png(r.params, title),
        }

    first = render(run_plots.RunPlotter(), "stuck")  # a fresh renderer: nothing drawn before
    plotter = run_plots.RunPlotter()
    render(plotter, "solved")  # other limits, other surface, other title
    render(plotter, "diverged")
    assert render(plotter, "stuck") == first
    assert render(plotter, "stuck") == first  # its background now cached
    render(plotter, "solved")
    assert render(plotter, "stuck") == first
    assert render_run_plots(results["stuck"], name(STUCK)) == {
        LEARNING_CURVE: first["curve"],
        DECISION_BOUNDARY: first["boundary"],
    }


def test_same_run_same_bytes_in_another_process(results):
    here = digest(render_run_plots(results["stuck"], name(STUCK)))
    code = (
        "import hashlib\n"
        "from xorexp.chunks import render_run_plots\n"
        "from xorexp.train import RunSpec, train\n"
        f"r, = train([RunSpec(lr={STUCK.lr!r}, seed={STUCK.seed}, iterations={STUCK.iterations})])\n"
        f"p = render_run_plots(r, {name(STUCK)!r})\n"
        "both = p['plots/learning_curve.png'] + p['plots/decision_boundary.png']\n"
        "print(hashlib.sha256(both).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == here


def test_a_diverged_run_renders(results):
    diverged = results["diverged"]
    assert diverged.outcome == "diverged"
    pngs = render_run_plots(diverged, name(DIVERGED))
    assert all(png.startswith(PNG_SIGNATURE) for png in pngs.values())


def test_non_finite_outputs_show_grey(results):
    params = results["solved"].params.copy()
    params[0] = np.nan  # W1[0, 0]: NaN * x1 is NaN, so every output is
    image = decode(run_plots.run_plotter().decision_boundary_png(params, "nan"))
    grey = np.all(np.abs(image.astype(int) - 191) <= 1, axis=2)  # the "bad" colour, 0.75 grey
    assert grey.sum() > 100 * 100
    no_loss = run_plots.run_plotter().learning_curve_png(np.arange(3), np.full(3, np.nan), "no loss")
    assert no_loss.startswith(PNG_SIGNATURE)


@pytest.mark.floor
def test_the_images_show_the_run(results):
    """Different runs under one title give different bytes; the surface's pixels have its colours."""
    plotter = run_plots.RunPlotter()
    a, b = results["solved"], results["stuck"]
    assert plotter.learning_curve_png(a.trace_steps, a.loss_trace, "t", 4000) != plotter.learning_curve_png(
        b.trace_steps, b.loss_trace, "t", 4000
    )
    png = plotter.decision_boundary_png(a.params, "t")
    assert png != plotter.decision_boundary_png(b.params, "t")

    image = decode(png)
    boundary = plotter._boundary
    surface = boundary.surface(a.params)
    cmap = matplotlib.colormaps["RdBu_r"]
    height = image.shape[0]
    checked = 0
    for i, j in [(10, 40), (40, 10), (40, 70), (70, 40), (40, 40), (5, 5), (75, 75)]:  # (x2 row, x1 column)
        x, y = boundary.ax.transData.transform((boundary.centres[j], boundary.centres[i]))
        pixel = image[height - 1 - int(y), int(x)].astype(int)
        expected = (np.array(cmap(surface[i, j])[:3]) * 255).astype(int)
        if abs(surface[i, j] - 0.5) < 0.45:  # steep regions: bilinear neighbours differ, skip
            continue
        assert np.all(np.abs(pixel - expected) <= 12), (i, j, pixel, expected)
        checked += 1
    assert checked >= 3
    # the fixture's premise: this run solved XOR
    predictions = results["solved"].predictions
    assert np.all((predictions > 0.5) == np.array([False, True, True, False]))


def test_run_plots_are_titled_with_outcome_and_final_loss(results):
    r = results["solved"]
    title = run_plots.run_title("h2-lr5-s3", r.outcome, r.final_loss)
    assert title == f"h2-lr5-s3: solved, final loss {r.final_loss:.3g}"
    assert run_plots.run_title("x", "diverged", float("inf")) == "x: diverged, final loss inf"
    render_run_plots(r, "h2-lr5-s3")  # the process's plotter now shows this run
    plotter = run_plots.run_plotter()
    assert plotter._curve.title.get_text() == title and plotter._boundary.title.get_text() == title


def test_run_figures_size_legend_and_labels_inside(results):
    r = results["stuck"]
    curve = curve_figure(r.trace_steps, r.loss_trace, "curve", outcome=r.outcome)
    boundary = boundary_figure(r.params, "boundary")
    assert curve.canvas.get_width_height() == run_plots.RUN_CURVE_PX == (640, 400)
    assert boundary.canvas.get_width_height() == run_plots.RUN_BOUNDARY_PX == (640, 480)
    assert decode(render_run_plots(r, "x")[DECISION_BOUNDARY]).shape[:2] == (480, 640)
    [legend] = boundary.legends
    assert [t.get_text() for t in legend.get_texts()] == ["target 0", "target 1", "output 0.5"]
    renderer = boundary.canvas.get_renderer()
    boundary.canvas.draw()
    for fig in (curve, boundary):
        fig.canvas.draw()
        ax = fig.axes[0]
        for label in (ax.xaxis.label, ax.yaxis.label, ax.title):
            box = label.get_window_extent(fig.canvas.get_renderer())
            assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height
        assert all(t.get_text() for t in ax.get_yticklabels() if t.get_visible())
    assert legend.get_window_extent(renderer).x1 <= boundary.bbox.width
    assert curve.axes[0].lines[0].get_color() == OUTCOME_COLORS["stuck"]


def test_decision_surface_in_slices_equals_the_whole_computation():
    rng = np.random.RandomState(0)
    h = 3000
    params = rng.randn(4 * h + 1)
    inputs = np.stack(np.meshgrid(np.linspace(-0.25, 1.25, 30), np.linspace(-0.25, 1.25, 30))).reshape(2, -1)
    with np.errstate(all="ignore"):
        whole = nn.forward(params[:, None], inputs)[0][:, 0]  # (900,): 900 x 3000 at once
    # slices over the inputs (7 inputs x 3000 units at a time): the same bits
    assert run_plots.surface_values(params, inputs, budget=7 * h).tobytes() == whole.tobytes()
    # more units than the budget: sums over blocks of units, the same values to rounding
    blocks = run_plots.surface_values(params, inputs, budget=1000)
    np.testing.assert_allclose(blocks, whole, rtol=1e-12, atol=1e-15)
    # the plotter computes its 100 x 100 grid through the same slicing
    boundary = run_plots.RunPlotter()._boundary
    assert boundary.surface(params).shape == (100, 100)
    expected = run_plots.surface_values(params, boundary.inputs)
    np.testing.assert_array_equal(boundary.surface(params).ravel(), expected)


def test_a_wide_network_surface_stays_within_a_memory_bound():
    import tracemalloc

    params = np.random.RandomState(1).randn(4 * 100_000 + 1)  # the hidden_units=100000
    inputs = np.random.RandomState(2).uniform(-0.25, 1.25, size=(2, 200))  # 20 slices of 10 inputs
    tracemalloc.start()
    values = run_plots.surface_values(params, inputs)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # 200 inputs at once would take 160 MB per array (the 100 x 100 grid: 8 GB)
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MB"
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(values, nn.forward(params[:, None], inputs)[0][:, 0])


def canvas_pixels(figure: Figure) -> np.ndarray:
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba()).copy()


def decode_rgba(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))


@pytest.mark.parametrize(
    "title",
    ["h2-lr5-s3: solved, final loss 0.000513", "gypsy jQ_ WAVE Tj: diverged, final loss inf", "Ä é ² →"],
)
@pytest.mark.floor
def test_run_plotter_pixels_equal_the_figures_drawn_by_matplotlib(results, title):
    """The fast path (surface painted into the canvas, titles from cached glyph bitmaps, blitting)
    gives the very pixels of the same Figure drawn whole by matplotlib (imshow "nearest", Text.draw)."""
    plotter = run_plots.RunPlotter()
    for key in ("solved", "stuck", "diverged", "solved"):  # the last: every glyph now from the cache
        r = results[key]
        boundary = decode_rgba(plotter.decision_boundary_png(r.params, title))
        expected = boundary_figure(r.params, title)
        for points in expected.axes[0].collections[1:]:  # the scatters, back to matplotlib's own paths
            points.set_paths([Path(p.vertices, p.codes) for p in points.get_paths()])
        np.testing.assert_array_equal(boundary, canvas_pixels(expected))
        curve = decode_rgba(plotter.learning_curve_png(r.trace_steps, r.loss_trace, title, r.spec.iterations,
                                                       r.outcome))
        expected = curve_figure(r.trace_steps, r.loss_trace, title, r.spec.iterations, r.outcome)
        np.testing.assert_array_equal(curve, canvas_pixels(expected))


def test_the_surface_is_painted_one_cell_per_pixel_centre(results):
    """Each pixel of the axes shows the colour of the grid cell under its centre (3.6 px per cell)."""
    plotter = run_plots.RunPlotter()
    boundary = plotter._boundary
    r = results["solved"]
    png = plotter.decision_boundary_png(r.params, "")
    rows, columns, cells = boundary.pixels
    assert (rows.stop - rows.start, columns.stop - columns.start) == (360, 360)
    image = decode_rgba(png)[rows, columns]  # (360, 360, 4), top row first
    surface = boundary.surface(r.params)  # (G, G), row 0 at the lowest x2
    colours = boundary.image.to_rgba(surface, bytes=True)
    grid = run_plots._GRID
    checked = 0
    for row in (5, 30, 120, 180, 240, 330, 354):  # from the top; markers sit at 60 and 300
        for column in (5, 30, 120, 180, 240, 330, 354):
            i = int((359 - row + 0.5) * grid / 360)  # the cell under the pixel's centre
            j = int((column + 0.5) * grid / 360)
            if abs(surface[i, j] - 0.5) < 0.3:  # the 0.5 contour may pass near: skip
                continue
            np.testing.assert_array_equal(image[row, column], colours[i, j], err_msg=str((row, column)))
            checked += 1
    assert checked >= 10
    # cells shown as 3 or 4 pixels: 100 distinct cells along each side, none skipped
    assert len(np.unique(cells[0])) == len(np.unique(cells[:, 0])) == run_plots._GRID


@pytest.mark.floor
def test_glyph_cache_reuses_bitmaps_and_stays_bounded(results, monkeypatch):
    """With matplotlib's per-glyph internals, bitmaps are kept and reused, within a bound; without
    them (an older matplotlib), every title is drawn by matplotlib and nothing is kept."""
    r = results["stuck"]
    plotter = run_plots.RunPlotter()
    plotter.learning_curve_png(r.trace_steps, r.loss_trace, "aaaa aaaa", r.spec.iterations, r.outcome)
    held = len(plotter._glyphs._bitmaps)
    if not compat_matplotlib.glyph_internals():
        assert held == 0 and not plotter._glyphs.enabled
        return
    assert 1 <= held <= 9  # 'a' and ' ' at a few 1/64-pixel offsets
    plotter.learning_curve_png(r.trace_steps, r.loss_trace, "aaaa aaaa", r.spec.iterations, r.outcome)
    assert len(plotter._glyphs._bitmaps) == held  # drawn again from the cache
    monkeypatch.setattr(compat_matplotlib, "_MAX_GLYPHS", 3)
    for text in ("bcdefgh", "ijklmnop", "qrstuvw"):
        plotter.learning_curve_png(r.trace_steps, r.loss_trace, text, r.spec.iterations, r.outcome)
        assert len(plotter._glyphs._bitmaps) <= 3 + len(text)


def test_marker_path_extents_are_matplotlibs_computed_once():
    circle = Path.unit_circle()
    marker = run_plots._MarkerPath(circle)
    scale = matplotlib.transforms.Affine2D().scale(4.7).translate(3, -2)
    assert marker.get_extents(scale).bounds == circle.get_extents(scale).bounds
    marker.get_extents(scale).set_points(np.zeros((2, 2)))  # callers get a copy
    assert marker.get_extents(scale).bounds == circle.get_extents(scale).bounds
    assert len(marker._extents) == 1
    assert marker.get_extents().bounds == circle.get_extents().bounds
