"""Every speed-up has a switch (``XOREXP_OFF``), and the plain paths write what the fast ones write."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image

from tests.conftest import assert_same_sweep_both_ways, runs_of, store_uri
from xorexp import mechanisms


def test_switches_are_read_from_the_environment(monkeypatch):
    monkeypatch.delenv(mechanisms.OFF_ENV, raising=False)
    assert all(mechanisms.on(name) for name in mechanisms.MECHANISMS)
    monkeypatch.setenv(mechanisms.OFF_ENV, "glyph_cache, train_ahead")
    assert not mechanisms.on("glyph_cache") and not mechanisms.on("train_ahead")
    assert mechanisms.on("png_writer")
    monkeypatch.setenv(mechanisms.OFF_ENV, "all")
    assert not any(mechanisms.on(name) for name in mechanisms.MECHANISMS)
    with pytest.raises(KeyError, match="no mechanism 'nope'"):
        mechanisms.on("nope")


def _pixels(directory: Path) -> dict[str, np.ndarray]:
    client = MlflowClient(store_uri(directory))
    out = {}
    for run in runs_of(directory):
        for artifact in client.list_artifacts(run.info.run_id, "plots"):
            local = client.download_artifacts(run.info.run_id, artifact.path, str(directory / "px"))
            name = "sweep" if run.data.tags.get("xorexp.role") == "sweep" else run.info.run_name
            out[f"{name}/{artifact.path}"] = np.asarray(Image.open(local).convert("RGBA"))
    return out


@pytest.mark.slow
def test_a_sweep_with_every_speed_up_off_writes_what_it_writes_with_them(tmp_path):
    """20 runs (workers, the child training ahead): with all
    mechanisms off, the same runs, values, job files and plot pixels."""
    args = ("-m", "seed=range(0,10)", "lr=0.5,5", "iterations=300", "hydra.launcher.n_jobs=2")
    plain, fast = assert_same_sweep_both_ways(tmp_path, args, {mechanisms.OFF_ENV: "all"}, jobs=20)
    pixels_a, pixels_b = _pixels(plain), _pixels(fast)
    assert pixels_a.keys() == pixels_b.keys() and len(pixels_a) > 40  # the sweep's figures too
    for key in pixels_a:  # the sweep's strips are ordered by (random) run ids: not comparable
        if not key.startswith("sweep/"):
            np.testing.assert_array_equal(pixels_a[key], pixels_b[key], err_msg=key)
    parents = [r for r in runs_of(plain) if r.data.tags.get("xorexp.role") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


def test_png_writers_agree_on_pixels(monkeypatch):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from xorexp import png

    figure = Figure(figsize=(2, 1.5), dpi=100)
    FigureCanvasAgg(figure)
    figure.add_subplot().plot([0, 1, 2], [2, 0, 1])
    figure.canvas.draw()
    own = png.canvas_png(figure.canvas)
    monkeypatch.setenv(mechanisms.OFF_ENV, "png_writer")
    theirs = png.canvas_png(figure.canvas)
    assert own != theirs
    decoded = [np.asarray(Image.open(io.BytesIO(data)).convert("RGBA")) for data in (own, theirs)]
    np.testing.assert_array_equal(decoded[0], decoded[1])
    assert decoded[0].shape == (150, 200, 4)
