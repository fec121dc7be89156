"""The MLflow UI on a real sweep's store, served by ``python -m xorexp.ui`` and read in headless
Chromium (Debian's /usr/bin/chromium driven by Playwright; no downloaded browser).

Fails, never skips, when Chromium or Playwright is missing: ``.ci/run`` installs both.
Screenshots go to the test's tmp dir (``<tmp>/screenshots``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, run_cli, runs_of

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
ML_VIEW = "?workflowType=machine_learning"
SWEEP_FIGURE_SIZE = (900, 560)  # what plots renders a sweep's figures at (px), sharp in the artifact viewer
RUN_FIGURE_WIDTH = 640  # the per-run figures' width (px)
TIMEOUT_MS = 60_000

# one xdist worker: shares the module's served sweep and browser
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_ui_browser")]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A small sweep's store, the UI serving it, and the URL the UI printed; stopped by pid."""
    root = tmp_path_factory.mktemp("ui")
    sweep_dir = f"hydra.sweep.dir={root / 'sweep'}"
    proc = run_cli(root, "-m", "seed=0,1,2", "lr=0.5,5", "iterations=2000", sweep_dir)
    assert proc.returncode == 0, proc.stderr
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    ui = subprocess.Popen(
        [sys.executable, "-m", "xorexp.ui", "--port", str(port)],
        cwd=root, env=env, text=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(ui.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any("Ctrl-C" in line for line in lines):
            assert ui.poll() is None, f"xorexp.ui exited {ui.returncode}: {ui.stderr.read()}"
            assert time.monotonic() < deadline, f"xorexp.ui did not start: {lines}"
            time.sleep(0.2)
        yield root, port, list(lines)
    finally:
        if ui.poll() is None:
            ui.send_signal(signal.SIGINT)
        try:
            ui.wait(timeout=30)
        except subprocess.TimeoutExpired:
            ui.kill()
            ui.wait()
    # Ctrl-C: the UI stops its server and exits 0, with nothing on stderr
    assert ui.returncode == 0
    assert ui.stderr.read() == ""


@pytest.fixture(scope="module")
def sweep(served):
    root, port, lines = served
    runs = runs_of(root)
    [parent] = [r for r in runs if r.data.tags.get("xorexp.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 6
    return parent, children


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: apt-get install -y chromium (see .ci/run)"
    from playwright.sync_api import sync_playwright  # the test extra; missing -> this test fails

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, served):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    page.close()


def shot(page, served, name: str) -> None:
    folder = served[0] / "screenshots"
    folder.mkdir(exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def test_ui_prints_the_parent_run_url(served, sweep):
    root, port, lines = served
    parent, _ = sweep
    url = f"http://127.0.0.1:{port}/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}{ML_VIEW}"
    assert any(line.rstrip().endswith(url) for line in lines), lines
    assert not (root / "mlruns").exists()


def test_runs_page_nests_children_under_the_parent(page, served, sweep):
    root, port, _ = served
    parent, children = sweep
    runs_page = f"http://127.0.0.1:{port}/#/experiments/{parent.info.experiment_id}/runs{ML_VIEW}"
    page.goto(runs_page, wait_until="load")
    page.get_by_text("7 matching runs").wait_for()
    rows = page.locator("[role=row]", has_text=parent.info.run_name[:20])
    rows.first.wait_for()
    child_names = sorted(c.info.run_name for c in children)
    assert all(page.get_by_text(name, exact=True).count() == 0 for name in child_names)  # collapsed
    rows.first.locator("button").first.click()  # the parent's expander
    for name in child_names:
        page.get_by_text(name, exact=True).first.wait_for()
    shot(page, served, "runs_expanded")


def test_model_training_view_not_genai(page, served, sweep):
    root, port, _ = served
    parent, _ = sweep
    page.goto(
        f"http://127.0.0.1:{port}/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}{ML_VIEW}",
        wait_until="load",
    )
    page.get_by_text("Description").first.wait_for()
    nav = page.locator("nav, aside").first.inner_text() if page.locator("nav, aside").count() else ""
    body = page.inner_text("body")
    shot(page, served, "parent_run")
    assert "Evaluations" not in body and "Evaluation runs" not in body
    assert "Model registry" in body  # the model-training sidebar
    assert "Sessions" not in nav


def test_parent_description_shows_the_summary_table(page, served, sweep):
    root, port, _ = served
    parent, children = sweep
    best = parent.data.tags["xorexp.best_run_id"]
    page.goto(
        f"http://127.0.0.1:{port}/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}{ML_VIEW}",
        wait_until="load",
    )
    page.get_by_text("Best run:").wait_for()
    show_more = page.get_by_text("Show more")
    if show_more.count():
        show_more.first.click()
    table = page.locator("table", has_text="stuck").first
    table.wait_for()
    headers = [h.strip() for h in table.locator("th").all_inner_texts()]
    assert headers[:3] == ["hidden_units", "lr", "iterations"] and "stuck" in headers
    rows = table.locator("tbody tr")
    assert rows.count() == 2  # lr 5 and 0.5, best first
    assert rows.nth(0).locator("td").nth(1).inner_text().strip() == "5"
    link = page.locator(f"a[href*='{best}']").first
    assert link.get_attribute("href").startswith(f"#/experiments/{parent.info.experiment_id}/runs/{best}")
    shot(page, served, "parent_description")


def _preview(page, base: str, run, names: list[str]) -> dict[str, tuple[int, int]]:
    """Open the run's artifacts, click each plot; the natural size of the image shown."""
    page.goto(f"{base}/runs/{run.info.run_id}/artifacts{ML_VIEW}", wait_until="load")
    page.get_by_text("plots", exact=True).first.click()
    sizes = {}
    for name in names:
        page.get_by_text(name, exact=True).first.click()
        image = page.locator("img[src^='blob:']").first
        image.wait_for()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
        sizes[name] = tuple(image.evaluate("img => [img.naturalWidth, img.naturalHeight]"))
    return sizes


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[16:24]
    return int.from_bytes(data[:4], "big"), int.from_bytes(data[4:], "big")


def test_child_plots_load_as_images(page, served, sweep):
    root, port, _ = served
    parent, children = sweep
    child = children[0]
    base = f"http://127.0.0.1:{port}/#/experiments/{parent.info.experiment_id}"
    names = ["learning_curve.png", "decision_boundary.png"]
    sizes = _preview(page, base, child, names)
    shot(page, served, "child_artifacts")
    local = Path(re.sub("^file://", "", child.info.artifact_uri)) / "plots"
    assert sizes == {name: _png_size(local / name) for name in names}  # shown at full resolution
    assert all(width >= RUN_FIGURE_WIDTH for width, _ in sizes.values()), sizes


def test_sweep_figures_load_at_their_chosen_size(page, served, sweep):
    root, port, _ = served
    parent, _ = sweep
    base = f"http://127.0.0.1:{port}/#/experiments/{parent.info.experiment_id}"
    names = ["success_rate_vs_lr.png", "final_loss_vs_lr.png", "loss_curves.png"]  # an lr sweep's
    sizes = _preview(page, base, parent, names)
    shot(page, served, "parent_artifacts")
    width, height = SWEEP_FIGURE_SIZE
    assert all(w >= width and h >= height for w, h in sizes.values()), sizes
