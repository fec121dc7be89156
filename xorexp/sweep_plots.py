"""Figures of a sweep: what varied, every run coloured by outcome, how sure (success rate, final
loss, loss curves, success heatmap), returned as Figures by artifact path (``sweep_figures``), or as
the functions that make them (``sweep_figure_makers``: the sweep's end makes the costliest in another
process while it does the rest).

They only draw: every number shown (groups, pooled counts, medians, bands, intervals, the order of
the x values, which values vary) comes from ``xorexp.sweep_figure_data`` and ``xorexp.summary``.
Figures are returned, never saved or logged here.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter

from xorexp import summary, sweep_figure_data
from xorexp.plot_style import OUTCOME_COLORS, new_figure, plain_log
from xorexp.sweep_figure_data import GroupRuns
from xorexp.sweep_plot_axes import (
    SERIES_COLORS,
    SWEEP_PX,
    jitter,
    log_decades,
    loss_axis,
    no_data,
    outcome_handles,
    series_values,
    set_title,
    sweep_figure,
    x_slots,
    x_ticks,
)

LOSS_CURVES = "plots/loss_curves.png"  # the costliest figure: every run's trace, a panel per group

MAX_RUNS_DRAWN = 50  # a group with more seeds shows solved and stuck as separate summaries
MIN_MEDIAN = 3  # a median is drawn over at least this many runs (of one or two it is the runs)
MAX_PANELS = 12  # loss curves: one panel per group up to this many groups
MAX_SERIES = 8  # series told apart by colour; beyond, series medians only


def success_rate(
    gruns: Sequence[GroupRuns], x_key: str | None, series_key: str | None = None
) -> Figure:
    """Success rate per value of ``x_key`` (one colour per ``series_key`` value), with its 95 %
    Wilson interval and ``solved/n`` written at each point. Groups sharing x and series pool."""
    fig, ax = sweep_figure(bottom=0.16)
    series = series_values(gruns, series_key)
    positions, labels, categorical = x_slots(gruns, x_key)
    pooled = sweep_figure_data.pooled_success(gruns, x_key, series_key)
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
        color = SERIES_COLORS[k % len(SERIES_COLORS)] if series_key else OUTCOME_COLORS["solved"]
        label = f"{summary.SHORT_NAMES.get(series_key, series_key)}={s}" if series_key else None
        ax.errorbar(xs, rates, yerr=[lows, highs], fmt="o", color=color, markersize=6, capsize=4,
                    linewidth=1.5, label=label)
    ax.set_ylim(-0.03, 1.1)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0], labels=["0", "25 %", "50 %", "75 %", "100 %"])
    ax.set_ylabel("runs solved")
    ax.grid(True, axis="y", alpha=0.3)
    x_ticks(ax, positions, labels, x_key, {} if series_key else n_by_x, categorical)
    if series_key:
        ax.legend(fontsize=9, ncol=min(len(series), 4), loc="lower right")
    what = f"vs {x_key}" if x_key else "of all runs"
    set_title(fig, f"success rate {what}: solved/n with 95 % Wilson interval")
    return fig


def success_heatmap(groups: Sequence[summary.GroupSummary], title: str = "") -> Figure:
    """Success rate over hidden_units (rows, ascending upwards) x lr (columns, ascending), each
    cell ``solved/n`` and its 95 % Wilson interval. A cell pools every group with that hidden_units
    and lr (other swept values); cells without results are grey."""
    cells = sweep_figure_data.success_cells(groups)
    fig, ax = sweep_figure(left=0.1, right=0.95)
    set_title(fig, title or "success rate: solved/n and 95 % Wilson interval, by hidden_units and lr")
    if not cells:
        no_data(ax, "no runs with hidden_units and lr")
        return fig
    rows, cols, rate = sweep_figure_data.success_grid(cells)
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


def final_loss(
    gruns: Sequence[GroupRuns], x_key: str | None, series_key: str | None = None
) -> Figure:
    """Final loss per value of ``x_key``: every run a dot coloured by outcome and the median as a
    black bar (groups of up to MAX_RUNS_DRAWN seeds); larger groups show the solved and the stuck
    runs as two medians with 25-75 % bars and their counts. With a series key (e.g. hidden_units in
    an lr x hidden_units sweep) series sit side by side in each slot, their medians joined by a
    line of the series' colour. Diverged and failed runs have no final loss: counted in the legend."""
    fig, ax = sweep_figure(right=0.82, bottom=0.16)
    series = series_values(gruns, series_key)
    positions, labels, categorical = x_slots(gruns, x_key)
    counts = sweep_figure_data.outcome_totals(gruns)
    all_losses = [g.finite_losses() for g in gruns]
    losses = np.concatenate(all_losses) if all_losses else np.empty(0)
    n_by_x = sweep_figure_data.runs_per_value(gruns, x_key)
    many_series = len(series) > MAX_SERIES
    slot_width = 0.8 if categorical else 0.0
    for k, s in enumerate(series):
        in_series = [g for g in gruns if not series_key or summary.show_param(series_key, g.group) == s]
        width = slot_width / len(series)
        offset = (k - (len(series) - 1) / 2) * width
        medians = []
        for g in sorted(in_series, key=lambda g: positions[sweep_figure_data.slot_text(x_key, g.group)]):
            x = positions[sweep_figure_data.slot_text(x_key, g.group)] + offset
            quart = sweep_figure_data.loss_quartiles(g.final_losses)
            if quart is not None:
                medians.append((x, quart[0]))
            if many_series:
                continue
            if g.n <= MAX_RUNS_DRAWN or not categorical:
                finite = np.isfinite(g.final_losses)
                colors = [OUTCOME_COLORS[o] for o, f in zip(g.outcomes, finite, strict=True) if f]
                xs = x + jitter(int(finite.sum()), width * 0.7) if categorical else np.full(finite.sum(), x)
                ax.scatter(xs, g.final_losses[finite], c=colors, s=40 if g.n < MIN_MEDIAN else 18,
                           alpha=0.85, linewidths=0, zorder=4)
                if quart is not None and categorical and g.n >= MIN_MEDIAN:
                    half = width * 0.42
                    ax.hlines(quart[0], x - half, x + half, color="k", linewidth=2.2, zorder=3)
            else:
                for side, outcome in ((-0.2, "solved"), (0.2, "stuck")):
                    q = sweep_figure_data.loss_quartiles(g.losses_of(outcome))
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
                     else SERIES_COLORS[k % len(SERIES_COLORS)])
            ax.plot(xs, ys, color=color, linewidth=1.2, marker="_", markersize=12, zorder=4,
                    label=f"{summary.SHORT_NAMES.get(series_key, series_key)}={s}")
    ax.set_ylabel("final loss")
    ax.grid(True, axis="y", which="major", alpha=0.3)
    if not len(losses):
        no_data(ax, "no finite final loss")
    else:
        loss_axis(ax.yaxis, losses)
    x_ticks(ax, positions, labels, x_key, {} if series_key else n_by_x, categorical)
    handles, texts = outcome_handles(counts)
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
    set_title(fig, f"final loss {what}: every run, coloured by outcome{per}")
    return fig


def loss_curves(gruns: Sequence[GroupRuns]) -> Figure:
    """Loss traces. Up to MAX_PANELS groups: one panel per group (shared axes), every run a thin
    line coloured by outcome with the median of all on top, or, beyond MAX_RUNS_DRAWN seeds, the
    median and 25-75 % band of the solved and of the stuck runs apart. More groups: one panel with
    every run, coloured by outcome, and the median of each outcome."""
    drawn = sorted((g for g in gruns if g.traces), key=lambda g: summary.params_order(g.group))  # by value
    counts = sweep_figure_data.outcome_totals(gruns)
    if not drawn or len(drawn) > MAX_PANELS:
        fig, ax = sweep_figure(right=0.8)
        panels = [(ax, None)]
    else:
        fig = new_figure(SWEEP_PX)
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
        plain_log(ax.yaxis)
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))
        ax.grid(True, which="major", alpha=0.3)
        if g is None:
            if not drawn:
                no_data(ax, "no loss trace")
                continue
            for outcome in ("stuck", "diverged", "solved"):
                lines = [np.column_stack(t) for r in drawn for t in r.traces_of(outcome)]
                if lines:
                    ax.add_collection(LineCollection(lines, colors=OUTCOME_COLORS[outcome], linewidths=0.5,
                                                     alpha=0.25))
                band = sweep_figure_data.trace_band([t for r in drawn for t in r.traces_of(outcome)])
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
        log_decades(top, float(values.min()), float(values.max()))
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
    handles, texts = outcome_handles(counts, median=not many and any(g.n >= MIN_MEDIAN for g in drawn))
    fig.legend(handles, texts, title="runs", loc="upper left", bbox_to_anchor=(0.81, 0.86), fontsize=9,
               title_fontsize=9, frameon=False)
    if many:
        fig.text(0.81, 0.1, "thick: median of each\noutcome; band: 25-75 %", fontsize=8)
    set_title(fig, "loss per group: every run coloured by outcome" if not many else
           "loss: median (and 25-75 % band) of each outcome")
    return fig


def sweep_figures(
    groups: Sequence[summary.GroupSummary],
    records: Sequence[summary.RunRecord],
    curves: Sequence[Sequence[tuple[Any, Any]]] | None = None,
) -> dict[str, Figure]:
    """The sweep's figures by artifact path, chosen by what the sweep varied (``figure_axes``).

    - hidden_units and lr both varied: ``plots/success_rate_heatmap.png`` and
      ``plots/final_loss_vs_lr.png`` (one median line per hidden_units);
    - one value varied (or more, not both of those): ``plots/success_rate_vs_<key>.png`` and
      ``plots/final_loss_vs_<key>.png``;
    - only seeds: ``plots/success_rate.png`` and ``plots/final_loss.png`` of the one group;
    - always, when ``curves`` are given: ``plots/loss_curves.png`` (``LOSS_CURVES``).

    ``curves[i]``: the (steps, values) traces of ``groups[i].run_ids``.
    """
    return {path: make() for path, make in sweep_figure_makers(groups, records, curves).items()}


def sweep_figure_makers(
    groups: Sequence[summary.GroupSummary],
    records: Sequence[summary.RunRecord],
    curves: Sequence[Sequence[tuple[Any, Any]]] | None = None,
) -> dict[str, Callable[[], Figure]]:
    """``sweep_figures``, each made only when its function is called (one at a time at the sweep's end)."""
    if not groups:
        return {}
    gruns = sweep_figure_data.figure_groups(groups, records, curves)
    x_key, series_key = sweep_figure_data.figure_axes(groups)
    suffix = f"_vs_{x_key}" if x_key else ""
    makers: dict[str, Callable[[], Figure]] = {}
    if x_key == "lr" and series_key == "hidden_units":
        makers["plots/success_rate_heatmap.png"] = functools.partial(success_heatmap, groups)
    else:
        makers[f"plots/success_rate{suffix}.png"] = functools.partial(success_rate, gruns, x_key, series_key)
    makers[f"plots/final_loss{suffix}.png"] = functools.partial(final_loss, gruns, x_key, series_key)
    if curves is not None:
        makers[LOSS_CURVES] = functools.partial(loss_curves, gruns)
    return makers


def png(figure: Figure) -> bytes:
    """The figure as the PNG ``figure.savefig(path)`` writes."""
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()
