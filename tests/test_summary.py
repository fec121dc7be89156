"""Summary across seeds: grouping, counting, order, table, CSV and the sweep figures."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from matplotlib.colors import to_hex

from xorexp import summary, sweep_figure_data, sweep_plots, sweep_records
from xorexp.plot_style import OUTCOME_COLORS
from xorexp.summary import RunRecord
from xorexp.tracking.tags import TAG_OUTCOME


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
        tags={TAG_OUTCOME: "solved"},
    )
    record = sweep_records.record_from_mlflow_run(run)
    assert record == RunRecord("r1", params, "solved", "FINISHED", 0.25, 5.0)
    assert record.has_result

    failed = sweep_records.record_from_mlflow_run(run_like("FAILED", params=params))
    assert (failed.outcome, failed.final_loss, failed.solved_at, failed.reused) == (None, None, None, False)
    assert not failed.has_result

    odd = sweep_records.record_from_mlflow_run(
        run_like(tags={TAG_OUTCOME: "exploded"}, metrics={"final_loss": float("nan")})
    )
    assert odd.outcome is None and odd.final_loss is None and odd.params == {}
    tagged = sweep_records.record_from_mlflow_run(run_like("FAILED", tags={TAG_OUTCOME: "stuck"}))
    assert not tagged.has_result


def test_record_from_a_real_mlflow_run_entity():
    from mlflow.entities import Metric, Param, Run, RunData, RunInfo, RunTag

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
        tags=[RunTag(TAG_OUTCOME, "stuck")],
    )
    record = sweep_records.record_from_mlflow_run(Run(info, data))
    assert record == RunRecord("abc", {"hidden_units": "3", "seed": "7"}, "stuck", "FINISHED", 0.125, None)


def test_summary_module_imports_no_mlflow_hydra_or_matplotlib():
    code = (
        "import sys, xorexp.summary, xorexp.sweep_figure_data\n"
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
    # success, its 95 % Wilson interval, stuck, diverged, failed
    assert rows[2].split()[:11] == ["2", "0.5", "1000", "5", "3/5", "60%", "[0.23,", "0.88]", "1", "1", "1"]
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
    steps, median, low, high, count = sweep_figure_data.trace_band(traces)
    np.testing.assert_array_equal(steps, [0, 10, 20])
    np.testing.assert_array_equal(count, [3, 2, 1])
    np.testing.assert_allclose(median, [3.0, 3.0, 3.0])
    np.testing.assert_allclose(low, [2.0, 2.5, 3.0])
    np.testing.assert_allclose(high, [5.5, 3.5, 3.0])
    assert all(len(a) == 0 for a in sweep_figure_data.trace_band([]))


def test_wilson_interval_against_hand_computed_values():
    # 13/20: p = 0.65, z²/n = 0.19207; centre 0.62583, half-width 0.19298
    assert summary.wilson_interval(13, 20) == pytest.approx((0.4328543, 0.8188082), abs=1e-6)
    assert summary.wilson_interval(0, 20) == (0.0, pytest.approx(0.1611252, abs=1e-6))  # z²/n / (1 + z²/n)
    assert summary.wilson_interval(20, 20) == (pytest.approx(0.8388748, abs=1e-6), 1.0)
    assert summary.wilson_interval(1, 1) == (pytest.approx(0.2065493, abs=1e-6), 1.0)
    assert summary.wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        summary.wilson_interval(3, 2)


def test_groups_carry_stuck_counts_and_intervals_into_the_csv(records):
    groups = summary.summarize(records)
    rows = {(r["hidden_units"], r["lr"]): r for r in csv.DictReader(io.StringIO(summary.to_csv(groups)))}
    assert {"success_low", "success_high", "n_stuck"} <= set(summary.CSV_COLUMNS)
    a = rows["2", "0.5"]  # 3 solved, 1 stuck, 1 diverged of 5
    assert (a["n_solved"], a["n_stuck"], a["n_diverged"]) == ("3", "1", "1")
    low, high = summary.wilson_interval(3, 5)
    assert (float(a["success_low"]), float(a["success_high"])) == (low, high)
    assert rows["8", "1"]["success_low"] == "" and rows["8", "1"]["n_stuck"] == "0"  # no result


def png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    data = buffer.getvalue()
    assert data.startswith(b"\x89PNG")
    return data


def sweep(h_values, lrs, n_seeds, solved_per_group=None, iterations=300, stuck_loss=0.35):
    """Records and traces of a synthetic sweep: per group the first ``solved_per_group(h, lr)``
    seeds solve (loss falling to 0.005), the others stick at ``stuck_loss``."""
    records, traces = [], {}
    for h in h_values:
        for lr in lrs:
            n_solved = solved_per_group(h, lr) if solved_per_group else n_seeds // 2
            for seed in range(n_seeds):
                solved = seed < n_solved
                end = 0.005 * (1 + seed / 100) if solved else stuck_loss + seed / 1e4
                rid = f"h{h}-lr{lr}-s{seed}"
                records.append(
                    rec(
                        rid,
                        h=h,
                        lr=lr,
                        seed=seed,
                        outcome="solved" if solved else "stuck",
                        loss=end,
                        iterations=str(iterations),
                    )
                )
                steps = np.arange(0, iterations, 100)
                traces[rid] = (steps, np.geomspace(0.7, end, len(steps)))
    groups = summary.summarize(records)
    curves = [[traces[rid] for rid in g.run_ids] for g in groups]
    return groups, records, curves


def tick_texts(axis):
    return [t.get_text() for t in axis.get_ticklabels() if t.get_visible()]


def test_which_figures_follow_what_the_sweep_varied():
    lr_only = sweep_plots.sweep_figures(*sweep([2], ["0.01", "0.1", "1"], 1))
    assert set(lr_only) == {
        "plots/success_rate_vs_lr.png",
        "plots/final_loss_vs_lr.png",
        "plots/loss_curves.png",
    }
    h_only = sweep_plots.sweep_figures(*sweep([1, 2, 3], ["0.1"], 4))
    assert set(h_only) == {
        "plots/success_rate_vs_hidden_units.png",
        "plots/final_loss_vs_hidden_units.png",
        "plots/loss_curves.png",
    }
    both = sweep_plots.sweep_figures(*sweep([2, 3], ["0.5", "2"], 2))
    assert set(both) == {
        "plots/success_rate_heatmap.png",
        "plots/final_loss_vs_lr.png",
        "plots/loss_curves.png",
    }
    seeds_only = sweep_plots.sweep_figures(*sweep([2], ["0.1"], 5))
    assert set(seeds_only) == {"plots/success_rate.png", "plots/final_loss.png", "plots/loss_curves.png"}
    without_curves = sweep_plots.sweep_figures(*sweep([2], ["0.1", "1"], 2)[:2])
    assert "plots/loss_curves.png" not in without_curves
    assert sweep_plots.sweep_figures([], [], []) == {}
    for fig in [*lr_only.values(), *h_only.values(), *both.values(), *seeds_only.values()]:
        width, height = fig.canvas.get_width_height()
        assert (width, height) == sweep_plots.SWEEP_PX and min(sweep_plots.SWEEP_PX) >= 560
        png(fig)


def test_narrow_final_losses_get_a_labelled_linear_axis_from_zero():
    # the README's lr sweep: three stuck runs at 0.347-0.352 must not look like an improvement
    figs = sweep_plots.sweep_figures(*sweep([2], ["0.01", "0.1", "1"], 1, solved_per_group=lambda h, lr: 0))
    ax = figs["plots/final_loss_vs_lr.png"].axes[0]
    assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0.0
    assert len(tick_texts(ax.yaxis)) >= 3 and all(tick_texts(ax.yaxis))
    assert tick_texts(ax.xaxis) == ["0.01\nn=1", "0.1\nn=1", "1\nn=1"]
    # a wide range: log axis on whole decades, every major tick labelled
    wide = sweep_plots.sweep_figures(*sweep([2], ["0.1", "1"], 4))["plots/final_loss_vs_lr.png"].axes[0]
    assert wide.get_yscale() == "log"
    png(wide.figure)
    labelled = [t for t in wide.yaxis.get_majorticklocs() if wide.get_ylim()[0] <= t <= wide.get_ylim()[1]]
    assert len(labelled) >= 2 and all(tick_texts(wide.yaxis))


def test_success_rate_points_carry_counts_and_wilson_intervals():
    groups, records, curves = sweep(
        [1, 2, 3], ["0.1"], 20, solved_per_group=lambda h, lr: {1: 0, 2: 13, 3: 20}[h]
    )
    ax = sweep_plots.sweep_figures(groups, records, curves)["plots/success_rate_vs_hidden_units.png"].axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["0/20", "13/20", "20/20"]
    assert tick_texts(ax.xaxis) == ["1\nn=20", "2\nn=20", "3\nn=20"]
    [points] = [line for line in ax.lines if line.get_marker() == "o"]
    np.testing.assert_allclose(np.asarray(points.get_ydata(), dtype=float), [0.0, 0.65, 1.0])
    [bars] = ax.collections  # the error bars: one segment per point, the Wilson interval
    ends = sorted(tuple(np.round(seg[:, 1], 4)) for seg in bars.get_segments())
    assert ends == [(0.0, 0.1611), (0.4329, 0.8188), (0.8389, 1.0)]


def test_success_heatmap_cells_show_count_and_interval():
    groups, records, curves = sweep(
        [2, 3], ["0.1", "1"], 20, solved_per_group=lambda h, lr: 13 if h == 2 else 20
    )
    extra = [rec("other-it", h=2, lr="0.1", seed=0, iterations="5000", outcome="stuck", loss=0.3)]
    fig = sweep_plots.success_heatmap(summary.summarize(records + extra))  # pools the other iterations
    ax = fig.axes[0]
    texts = sorted(t.get_text() for t in ax.texts)
    assert (
        "13/20\n[0.43, 0.82]" in texts and "13/21\n[0.41, 0.79]" in texts and "20/20\n[0.84, 1.00]" in texts
    )
    assert tick_texts(ax.xaxis) == ["0.1", "1"] and tick_texts(ax.yaxis) == ["2", "3"]
    np.testing.assert_allclose(ax.images[0].get_array(), [[13 / 21, 13 / 20], [1.0, 1.0]])
    png(fig)


def test_final_loss_draws_every_run_by_outcome_and_the_median():
    groups, records, curves = sweep([2], ["0.1"], 20, solved_per_group=lambda h, lr: 13)
    ax = sweep_plots.sweep_figures(groups, records, curves)["plots/final_loss.png"].axes[0]
    [dots] = [c for c in ax.collections if len(c.get_offsets()) == 20]
    colours = [tuple(np.round(c[:3], 3)) for c in dots.get_facecolors()]
    from matplotlib.colors import to_rgb

    assert colours.count(tuple(np.round(to_rgb(OUTCOME_COLORS["solved"]), 3))) == 13
    assert colours.count(tuple(np.round(to_rgb(OUTCOME_COLORS["stuck"]), 3))) == 7
    [median] = [c for c in ax.collections if c is not dots]
    assert median.get_segments()[0][0, 1] == pytest.approx(np.median([r.final_loss for r in records]))
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["median"]
    assert any("solved (13)" in t.get_text() for a in ax.artists for t in a.get_texts())


def test_loss_curves_show_every_run_by_outcome_with_n_in_each_panel():
    groups, records, curves = sweep([2, 3], ["0.1"], 20, solved_per_group=lambda h, lr: {2: 13, 3: 20}[h])
    fig = sweep_plots.sweep_figures(groups, records, curves)["plots/loss_curves.png"]
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title(loc="left") for ax in panels] == [
        "h=2 (n=20)\n13 solved, 7 stuck",
        "h=3 (n=20)\n20 solved",
    ]
    h2 = panels[0]
    per_outcome = {}
    for collection in h2.collections:
        per_outcome[to_hex(collection.get_colors()[0])] = len(
            collection.get_segments()
        )
    assert per_outcome == {
        OUTCOME_COLORS["stuck"].lower(): 7,
        OUTCOME_COLORS["solved"].lower(): 13,
    }
    assert len(h2.lines) == 1  # the median of all 20 on top
    assert all(tick_texts(h2.yaxis)) and len(tick_texts(h2.yaxis)) >= 2  # shared y: labels on the first
    assert all(tick_texts(h2.xaxis)) and len(tick_texts(h2.xaxis)) >= 2
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["solved (33)", "stuck (7)", "median of all"]
    png(fig)


def test_loss_curves_beyond_50_seeds_show_solved_and_stuck_apart():
    groups, records, curves = sweep([2], ["0.1"], 60, solved_per_group=lambda h, lr: 45)
    fig = sweep_plots.sweep_figures(groups, records, curves)["plots/loss_curves.png"]
    [ax] = [a for a in fig.axes if a.get_visible()]
    assert ax.get_title(loc="left") == "h=2 lr=0.1 (n=60)\n45 solved, 15 stuck"
    assert not [c for c in ax.collections if hasattr(c, "get_segments") and len(c.get_segments()) > 2]
    colours = sorted(to_hex(line.get_color()) for line in ax.lines)
    assert colours == sorted([OUTCOME_COLORS["solved"].lower(), OUTCOME_COLORS["stuck"].lower()])
    final = sweep_plots.sweep_figures(groups, records, curves)["plots/final_loss.png"].axes[0]
    assert sorted(t.get_text() for t in final.texts if t.get_text().isdigit()) == ["15", "45"]
    png(fig)


def test_many_groups_draw_all_runs_in_one_panel():
    groups, records, curves = sweep(list(range(1, 8)), ["0.1", "1"], 2)  # 14 groups
    fig = sweep_plots.sweep_figures(groups, records, curves)["plots/loss_curves.png"]
    [ax] = fig.axes
    assert sum(len(c.get_segments()) for c in ax.collections) == 28
    png(fig)


def test_figures_need_the_traces_of_every_run():
    groups, records, curves = sweep([2], ["0.1", "1"], 2)
    with pytest.raises(ValueError):
        sweep_plots.sweep_figures(groups, records, curves[:-1])
    with pytest.raises(ValueError):
        sweep_plots.sweep_figures(groups, records, [c[:1] for c in curves])


def test_figure_values_are_ordered_by_number_not_text():
    groups, records, curves = sweep([10, 2, 1], ["1", "0.01", "0.1"], 2)
    gruns = sweep_figure_data.figure_groups(groups, records, curves)
    assert sweep_figure_data.values_in_order(gruns, "lr") == [("0.01", 0.01), ("0.1", 0.1), ("1", 1.0)]
    assert sweep_figure_data.values_in_order(gruns, "hidden_units") == [("1", 1), ("2", 2), ("10", 10)]
    assert sweep_figure_data.values_in_order(gruns, None) == [(sweep_figure_data.ALL_RUNS, None)]
    # a value without a number ("null") comes after every number
    nulls = [rec("a", stop_loss="0.5"), rec("b", stop_loss="null"), rec("c", stop_loss="0.05")]
    grouped = summary.summarize(nulls)
    shown = sweep_figure_data.values_in_order(sweep_figure_data.figure_groups(grouped, nulls), "stop_loss")
    assert shown == [("0.05", 0.05), ("0.5", 0.5), ("null", None)]


def test_pooled_success_and_runs_per_value_pool_the_other_values():
    _, records, _ = sweep([2, 3], ["0.1", "1"], 4, solved_per_group=lambda h, lr: h - 1 + (lr == "1"))
    failed = rec("f", h=2, lr="0.1", seed=9, outcome=None, loss=None, status="FAILED")
    groups = summary.summarize([*records, failed])
    gruns = sweep_figure_data.figure_groups(groups, records, None)
    # solved per (h, lr): (2, 0.1) 1, (2, 1) 2, (3, 0.1) 2, (3, 1) 3, each of 4 seeds
    assert sweep_figure_data.pooled_success(gruns, "lr", "hidden_units") == {
        ("0.1", "2"): (1, 4), ("1", "2"): (2, 4), ("0.1", "3"): (2, 4), ("1", "3"): (3, 4)
    }
    assert sweep_figure_data.pooled_success(gruns, "lr", None) == {("0.1", ""): (3, 8), ("1", ""): (5, 8)}
    assert sweep_figure_data.pooled_success(gruns, None, None) == {(sweep_figure_data.ALL_RUNS, ""): (8, 16)}
    assert sweep_figure_data.runs_per_value(gruns, "hidden_units") == {"2": 8, "3": 8}
    assert sweep_figure_data.runs_per_value(gruns, None) == {sweep_figure_data.ALL_RUNS: 16}
    assert sweep_figure_data.outcome_totals(gruns) == {"solved": 8, "stuck": 8, "diverged": 0, "failed": 1}
    assert sweep_figure_data.outcome_totals([]) == {"solved": 0, "stuck": 0, "diverged": 0, "failed": 0}


def test_success_grid_puts_rates_in_ascending_rows_and_columns():
    cells = {(3, 1.0): (4, 4), (2, 0.1): (1, 4), (3, 0.1): (0, 0), (2, 10.0): (2, 5)}
    rows, cols, rate = sweep_figure_data.success_grid(cells)
    assert rows == [2, 3] and cols == [0.1, 1.0, 10.0]
    np.testing.assert_array_equal(rate, [[0.25, np.nan, 0.4], [np.nan, 1.0, np.nan]])
    rows, cols, rate = sweep_figure_data.success_grid({})
    assert rows == [] and cols == [] and rate.shape == (0, 0)
