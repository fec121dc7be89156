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
from PIL import Image

from tests.conftest import ROOT
from xorexp import plots
from xorexp.chunks import DECISION_BOUNDARY, LEARNING_CURVE, render_run_plots
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


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def digest(pngs: dict[str, bytes]) -> str:
    return hashlib.sha256(pngs[LEARNING_CURVE] + pngs[DECISION_BOUNDARY]).hexdigest()


def test_both_plots_are_pngs(results):
    pngs = render_run_plots(results["solved"], name(SOLVED))
    assert set(pngs) == {LEARNING_CURVE, DECISION_BOUNDARY}
    for png in pngs.values():
        assert png.startswith(PNG_SIGNATURE)
        assert decode(png).shape[2] == 3


def test_same_run_same_bytes_whatever_was_rendered_before(results):
    def render(plotter, key):
        r = results[key]
        return {
            "curve": plotter.learning_curve_png(r.trace_steps, r.loss_trace, name(r.spec), r.spec.iterations),
            "boundary": plotter.decision_boundary_png(r.params, name(r.spec)),
        }

    first = render(plots.RunPlotter(), "stuck")  # a fresh renderer: nothing drawn before
    plotter = plots.RunPlotter()
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
    image = decode(plots.run_plotter().decision_boundary_png(params, "nan"))
    grey = np.all(np.abs(image.astype(int) - 191) <= 1, axis=2)  # the "bad" colour, 0.75 grey
    assert grey.sum() > 100 * 100
    no_loss = plots.run_plotter().learning_curve_png(np.arange(3), np.full(3, np.nan), "no loss")
    assert no_loss.startswith(PNG_SIGNATURE)


def test_the_images_show_the_run(results):
    """Different runs under one title give different bytes; the surface's pixels have its colours."""
    plotter = plots.RunPlotter()
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


def test_the_figure_functions_return_new_figures(results):
    r = results["solved"]
    curve = plots.learning_curve(r.trace_steps, r.loss_trace, "curve")
    boundary = plots.decision_boundary(r.params, "boundary")
    assert isinstance(curve, Figure) and isinstance(boundary, Figure)
    assert plots.learning_curve(r.trace_steps, r.loss_trace) is not curve
    assert curve.axes[0].get_title() == "curve" and curve.axes[0].get_yscale() == "log"
    assert boundary.axes[0].get_title() == "boundary"
    for fig in (curve, boundary):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        assert buffer.getvalue().startswith(PNG_SIGNATURE)
