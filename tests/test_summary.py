"""Summary across seeds: grouping, counting, order, table, CSV and the sweep figures."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

from xorexp import plots, summary
from xorexp.summary import RunRecord


def rec(run_id, h=2, lr="0.5", seed=0, outcome="solved", loss=0.01, solved_at=None, status="FINISHED", **kw):
    params = {
        "hidden_units": str(h),
        "lr": lr,
        "iterations": kw.pop("iterations", "1000"),
        "seed": str(seed),
        "trace_every": "100",
        "stop_loss": kw.pop("stop_loss", "null"),
    }
    if solved_at is None and outcome == "solved":
        solved_at = 100.0
    return RunRecord(run_id, params, outcome, status, loss, solved_at, **kw)


@pytest.fixture
def records():
    return [
        # h=2, lr=0.5: 5 seeds with a result (one reused), a diverged run, a failed job
        rec("a1", seed=1, loss=0.01, solved_at=500.0),
        rec("a2", seed=2, loss=0.02, solved_at=700.0, lr="0.50"),  # same lr, other spelling
        rec("a3", seed=3, outcome="stuck", loss=0.35),
        rec("a4", seed=4, outcome="diverged", loss=None),
        rec("a5", seed=5, outcome=None, loss=None, status="FAILED"),
        rec("a6", seed=6, loss=0.03, solved_at=900.0, reused=True),
        rec("a1-reused", seed=1, loss=0.01, solved_at=500.0, reused=True),  # seed 1 again: counted once
        rec("a2-failed", seed=2, outcome=None, loss=None, status="FAILED"),  # an attempt later redone
        # h=2, lr=0.1: all solved, higher loss than h=4 lr=0.5
        rec("b1", lr="0.1", seed=1, loss=0.1),
        rec("b2", lr="0.1", seed=2, loss=0.2),
        # h=4, lr=0.5: all solved, lowest loss
        rec("c1", h=4, seed=1, loss=0.05),
        # h=4, lr=0.1: all stuck
        rec("d1", h=4, lr="0.1", seed=1, outcome="stuck", loss=0.3),
        rec("d2", h=4, lr="0.1", seed=2, outcome="stuck", loss=0.4),
        # h=8, lr=1.0: the job failed (FAILED even though it tagged an outcome)
        rec("e1", h=8, lr="1.0", seed=1, outcome="solved", loss=None, status="FAILED"),
    ]


def by_params(groups):
    return {(g.hidden_units, g.lr): g for g in groups}


def test_counts_rates_and_loss_statistics_per_group(records):
    groups = by_params(summary.summarize(records))
    assert set(groups) == {(2, 0.5), (2, 0.1), (4, 0.5), (4, 0.1), (8, 1.0)}
    a = groups[2, 0.5]
    assert (a.n_seeds, a.n_solved, a.n_diverged, a.n_failed, a.n_reused) == (5, 3, 1, 1, 1)
    assert a.success_rate == pytest.approx(0.6)
    losses = [0.01, 0.02, 0.35, 0.03]  # the diverged run has none, the reused duplicate of seed 1 is dropped
    assert a.final_loss_median == pytest.approx(np.median(losses))
    assert a.final_loss_mean == pytest.approx(np.mean(losses))
    assert a.final_loss_std == pytest.approx(np.std(losses, ddof=1))
    assert a.solved_at_median == 700.0
    assert a.best_run_id == "a1"
    assert sorted(a.run_ids) == ["a1", "a2", "a3", "a4", "a6"]
    assert a.failed_run_ids == ("a5",)
    assert a.params == {
        "hidden_units": "2",
        "lr": "0.5",
        "iterations": "1000",
        "trace_every": "100",
        "stop_loss": "null",
    }
    d = groups[4, 0.1]
    assert (d.success_rate, d.solved_at_median, d.best_run_id) == (0.0, None, "d1")
    c = groups[4, 0.5]
    assert c.final_loss_std is None  # one loss: no sample std
    e = groups[8, 1.0]
    assert (e.n_seeds, e.n_failed, e.success_rate) == (0, 1, None)
    assert e.final_loss_median is None and e.best_run_id is None


def test_groups_are_sorted_best_first(records):
    order = [(g.hidden_units, g.lr) for g in summary.summarize(records)]
    # 100 % (median loss 0.05 before 0.15), 60 %, 0 %, no result
    assert order == [(4, 0.5), (2, 0.1), (2, 0.5), (4, 0.1), (8, 1.0)]


def test_equal_rate_and_loss_fall_back_to_median_solved_at():
    records = [
        rec("slow", lr="0.1", seed=1, loss=0.1, solved_at=900.0),
        rec("fast", lr="0.2", seed=1, loss=0.1, solved_at=300.0),
        rec("none", lr="0.3", seed=1, outcome="stuck", loss=None),
    ]
    assert [g.best_run_id or g.run_ids[0] for g in summary.summarize(records)] == ["fast", "slow", "none"]


def test_seed_is_the_only_value_summarized_over():
    records = [rec("x", seed=1, stop_loss="0.01"), rec("y", seed=2), rec("z", seed=3, iterations="2000")]
    groups = summary.summarize(records)
    assert len(groups) == 3 and all(g.n_seeds == 1 for g in groups)
    assert summary.varying_keys(groups) == ["iterations", "stop_loss"]


def run_like(status="FINISHED", params=None, metrics=None, tags=None, run_id="r1"):
    return SimpleNamespace(
        info=SimpleNamespace(run_id=run_id, status=status),
        data=SimpleNamespace(params=params or {}, metrics=metrics or {}, tags=tags or {}),
    )


def test_record_from_mlflow_run_by_duck_typing():
    params = dict(hidden_units="2", lr="0.5", iterations="10", seed="3", trace_every="5", stop_loss="null")
    run = run_like(
        params={**params, "other": "x"},
        metrics={"final_loss": 0.25, "solved_at": 5.0, "loss": 0.25, "accuracy": 1.0},
        tags={summary.TAG_OUTCOME: "solved", summary.TAG_REUSED_FROM: "r0"},
    )
    record = summary.record_from_mlflow_run(run)
    assert record == RunRecord("r1", params, "solved", "FINISHED", 0.25, 5.0, reused=True)
    assert record.has_result

    failed = summary.record_from_mlflow_run(run_like("FAILED", params=params))
    assert (failed.outcome, failed.final_loss, failed.solved_at, failed.reused) == (None, None, None, False)
    assert not failed.has_result

    odd = summary.record_from_mlflow_run(
        run_like(tags={summary.TAG_OUTCOME: "exploded"}, metrics={"final_loss": float("nan")})
    )
    assert odd.outcome is None and odd.final_loss is None and odd.params == {}
    tagged = summary.record_from_mlflow_run(run_like("FAILED", tags={summary.TAG_OUTCOME: "stuck"}))
    assert not tagged.has_result


def test_record_from_a_real_mlflow_run_entity():
    from mlflow.entities import Metric, Param, Run, RunData, RunInfo, RunTag

    from xorexp import tracking

    assert summary.TAG_OUTCOME == tracking.TAG_OUTCOME
    info = RunInfo(
        run_id="abc",
        experiment_id="0",
        user_id="u",
        status="FINISHED",
        start_time=0,
        end_time=1,
        lifecycle_stage="active",
    )
    data = RunData(
        metrics=[Metric("final_loss", 0.125, 0, 0)],
        params=[Param("hidden_units", "3"), Param("seed", "7")],
        tags=[RunTag(tracking.TAG_OUTCOME, "stuck")],
    )
    record = summary.record_from_mlflow_run(Run(info, data))
    assert record == RunRecord("abc", {"hidden_units": "3", "seed": "7"}, "stuck", "FINISHED", 0.125, None)


def test_summary_module_imports_no_mlflow_hydra_or_matplotlib():
    code = (
        "import sys, xorexp.summary\n"
        "bad = [m for m in ('mlflow', 'hydra', 'omegaconf', 'matplotlib', 'pandas') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_csv_has_a_header_and_round_trips_numbers():
    third = 1 / 3
    records = [
        rec("p", lr=repr(0.1 + 0.2), seed=1, loss=third, solved_at=1234.0),
        rec("q", lr=repr(0.1 + 0.2), seed=2, loss=0.1 + 0.7, solved_at=None, outcome="stuck"),
        rec("r", lr="7e-05", seed=1, outcome=None, loss=None, status="FAILED"),
    ]
    groups = summary.summarize(records)
    rows = list(csv.DictReader(io.StringIO(summary.to_csv(groups))))
    assert list(rows[0]) == list(summary.CSV_COLUMNS)
    assert len(rows) == len(groups) == 2
    for row, g in zip(rows, groups, strict=True):
        for name in summary.CSV_COLUMNS[len(summary.GROUP_KEYS) :]:
            value = getattr(g, name)
            if value is None:
                assert row[name] == "", name
            elif isinstance(value, float):
                assert float(row[name]) == value, name
            else:
                assert row[name] == str(value), name
        assert float(row["lr"]) == g.lr and int(row["n_seeds"]) == g.n_seeds
    assert float(rows[0]["lr"]) == 0.1 + 0.2
    assert float(rows[0]["final_loss_mean"]) == np.mean([third, 0.1 + 0.7])
    assert rows[1]["n_failed"] == "1" and rows[1]["success_rate"] == ""


def test_table_has_one_row_per_group_and_lists_failed_runs(records):
    groups = summary.summarize(records)
    lines = summary.format_table(groups).splitlines()
    header, rule, *rows, failed_line = lines
    assert header.split()[:3] == ["hidden_units", "lr", "iterations"]
    assert "stop_loss" not in header and "trace_every" not in header  # they do not vary
    assert "reused" in header
    assert len(rows) == 5
    assert rows[0].split()[:6] == ["4", "0.5", "1000", "1", "1/1", "100%"]
    assert rows[2].split()[:9] == ["2", "0.5", "1000", "5", "3/5", "60%", "1", "1", "1"]
    assert "0.025" in rows[2] and "700" in rows[2]
    assert rows[4].split()[:4] == ["8", "1", "1000", "0"]
    assert failed_line == "failed runs (2): a5, e1"
    assert len({len(rule)} | {len(line) for line in rows}) <= 2  # fixed width (trailing blanks trimmed)


def test_table_shows_stop_loss_when_it_varies():
    groups = summary.summarize([rec("x", seed=1, stop_loss="0.01"), rec("y", seed=1)])
    header, _, *rows = summary.format_table(groups).splitlines()
    assert "stop_loss" in header and "trace_every" not in header
    assert {row.split()[3] for row in rows} == {"0.01", "null"}
    assert summary.format_table([]) == "no runs to summarize"


def test_trace_band_uses_the_runs_present_at_each_step():
    traces = [
        (np.array([0, 10, 20]), np.array([1.0, 2.0, 3.0])),
        (np.array([0, 10]), np.array([3.0, 4.0])),  # stopped early
        (np.array([0]), np.array([8.0])),  # diverged after step 0
        (np.array([0, 10]), np.array([np.nan, np.inf])),  # non-finite values are absent
        (np.array([]), np.array([])),
    ]
    steps, median, low, high, count = summary.trace_band(traces)
    np.testing.assert_array_equal(steps, [0, 10, 20])
    np.testing.assert_array_equal(count, [3, 2, 1])
    np.testing.assert_allclose(median, [3.0, 3.0, 3.0])
    np.testing.assert_allclose(low, [2.0, 2.5, 3.0])
    np.testing.assert_allclose(high, [5.5, 3.5, 3.0])
    assert all(len(a) == 0 for a in summary.trace_band([]))


def png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    data = buffer.getvalue()
    assert data.startswith(b"\x89PNG")
    return data


def test_success_heatmap_shows_pooled_rates_by_hidden_units_and_lr(records):
    # same h and lr as group a, another group (iterations)
    extra = [rec("a-long", seed=1, iterations="5000", outcome="stuck", loss=0.3)]
    fig = plots.success_heatmap(summary.summarize(records + extra))
    ax = fig.axes[0]
    [image] = ax.images
    grid = image.get_array()
    assert grid.shape == (3, 3)  # hidden_units 2, 4, 8 x lr 0.1, 0.5, 1.0
    expected = np.array(
        [
            [1.0, 3 / 6, np.nan],  # h=2: lr=0.5 pools 3/5 and 0/1
            [0.0, 1.0, np.nan],
            [np.nan, np.nan, np.nan],  # h=8: only a failed job
        ]
    )
    np.testing.assert_allclose(np.ma.filled(grid.astype(float), np.nan), expected)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.1", "0.5", "1"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["2", "4", "8"]
    assert sorted(t.get_text() for t in ax.texts) == ["0.00", "0.50", "1.00", "1.00"]
    assert image.get_clim() == (0.0, 1.0) and len(fig.axes) == 2  # colorbar
    png(fig)


def test_success_heatmap_of_a_large_grid_is_not_annotated():
    records = [rec(f"r{h}-{j}", h=h, lr=repr(0.01 * (j + 1))) for h in range(1, 21) for j in range(30)]
    fig = plots.success_heatmap(summary.summarize(records))
    ax = fig.axes[0]
    assert ax.images[0].get_array().shape == (20, 30) and not ax.texts
    labels = [float(t.get_text()) for t in ax.get_xticklabels()]
    assert labels == sorted(labels) and len(labels) <= 15
    png(fig)


def test_final_loss_vs_lr_one_line_per_hidden_units(records):
    fig = plots.final_loss_vs_lr(records)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["h=2", "h=4"]  # h=8 has no final loss
    h2 = ax.lines[0]
    np.testing.assert_allclose(h2.get_xdata(), [0.1, 0.5])
    np.testing.assert_allclose(h2.get_ydata(), [0.15, np.median([0.01, 0.02, 0.35, 0.03])])
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert "1 diverged excluded" in ax.get_title() and "25–75 %" in ax.get_title()
    assert len(ax.collections) == 2  # one band per line
    assert "min–max" in plots.final_loss_vs_lr(records, band="range").axes[0].get_title()
    png(fig)


def test_figures_render_without_data():
    for fig in (
        plots.success_heatmap([]),
        plots.final_loss_vs_lr([]),
        plots.loss_curves([], []),
    ):
        png(fig)


def traces_for(n_seeds, rng, length=50):
    out = []
    for _ in range(n_seeds):
        n = int(rng.integers(5, length + 1))  # early stops of different lengths
        out.append((np.arange(n) * 100, np.exp(-np.linspace(0, rng.uniform(1, 5), n))))
    return out


def test_loss_curves_with_few_groups_has_a_line_and_legend_entry_each(records):
    groups = summary.summarize(records)
    rng = np.random.default_rng(0)
    curves = [traces_for(len(g.run_ids), rng) for g in groups]
    fig = plots.loss_curves(groups, curves)
    ax = fig.axes[0]
    drawn = [g for g in groups if g.run_ids]
    assert len(ax.lines) == len(drawn) == 4
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts[0] == "h=4 lr=0.5 (n=1)" and texts[2] == "h=2 lr=0.5 (n=5)"
    assert ax.get_yscale() == "log"
    png(fig)
    with pytest.raises(ValueError):
        plots.loss_curves(groups, curves[:-1])


def test_loss_curves_of_1000_groups_label_only_a_few():
    rng = np.random.default_rng(1)
    lrs = 10 ** rng.uniform(-2, 1, size=1000)
    records = [rec(f"r{i}", h=1 + i % 10, lr=repr(float(lr))) for i, lr in enumerate(lrs)]
    groups = summary.summarize(records)
    assert len(groups) == 1000
    fig = plots.loss_curves(groups, [traces_for(1, rng) for _ in groups])
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert len(legend.get_texts()) == 5 <= 10
    assert len(ax.lines) == 5 and len(fig.axes) == 2  # the highlighted groups, and a colorbar
    assert fig.axes[1].get_ylabel() == "lr"
    start = time.perf_counter()
    png(fig)
    assert time.perf_counter() - start < 20


def test_loss_curves_of_one_group_of_1000_seeds():
    rng = np.random.default_rng(2)
    records = [rec(f"r{i}", seed=i) for i in range(1000)]
    [group] = summary.summarize(records)
    fig = plots.loss_curves([group], [traces_for(1000, rng)])
    ax = fig.axes[0]
    assert len(ax.get_legend().get_texts()) == 1 and len(ax.lines) == 1
    assert ax.get_legend().get_texts()[0].get_text().endswith("(n=1000)")
    png(fig)
