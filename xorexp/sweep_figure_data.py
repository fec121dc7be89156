"""What the sweep's figures show, computed here so that ``xorexp.sweep_plots`` only draws: the
figures' axes (what the sweep varied), each group's runs with their outcomes, final losses and loss
traces, bands of traces across seeds, pooled success counts and the order of the x values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from xorexp.summary import GroupSummary, RunRecord, group_labels, show_param, varying_keys
from xorexp.train import OUTCOMES


def trace_band(
    traces: Iterable[tuple[Any, Any]], quantiles: tuple[float, float] = (25.0, 75.0)
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Median and a percentile band of loss traces across seeds, step by step.

    ``traces`` are (steps, values) pairs of any lengths (early stop, divergence); non-finite values
    count as absent. At each step present in any trace the statistics are over the traces that have
    that step, so the band narrows to the runs still going. Returns (steps, median, low, high,
    count), each of the length of the union of the steps; all empty when there is no finite value.
    """
    cleaned = []
    for steps, values in traces:
        s = np.asarray(steps, dtype=float).ravel()
        v = np.asarray(values, dtype=float).ravel()
        keep = np.isfinite(s) & np.isfinite(v)
        if keep.any():
            cleaned.append((s[keep], v[keep]))
    if not cleaned:
        empty = np.empty(0)
        return empty, empty, empty, empty, np.empty(0, dtype=int)
    grid = np.unique(np.concatenate([s for s, _ in cleaned]))
    table = np.full((len(cleaned), len(grid)), np.nan)  # (traces, steps)
    for row, (s, v) in zip(table, cleaned, strict=True):
        row[np.searchsorted(grid, s)] = v
    count = np.isfinite(table).sum(axis=0)  # every column has at least one value
    median = np.nanmedian(table, axis=0)
    low, high = np.nanpercentile(table, quantiles, axis=0)
    return grid, median, low, high, count


AXIS_PREFERENCE = ("lr", "hidden_units", "iterations", "stop_loss", "trace_every")


def figure_axes(groups: Sequence[GroupSummary]) -> tuple[str | None, str | None]:
    """(x key, series key) of the sweep figures: what the sweep varied.

    hidden_units and lr both varying: x = lr, one series per hidden_units (the heatmap shows both).
    Otherwise x is the first varying key of AXIS_PREFERENCE and the series the second, if any;
    (None, None) when only the seed varied. Keys beyond two pool together.
    """
    vary = set(varying_keys(groups))
    if {"hidden_units", "lr"} <= vary:
        return "lr", "hidden_units"
    ordered = [k for k in AXIS_PREFERENCE if k in vary]
    return (ordered + [None, None])[0], (ordered + [None, None])[1]


@dataclass(frozen=True)
class GroupRuns:
    """One group's runs with a result, as the sweep figures show them (all in ``group.run_ids`` order)."""

    group: GroupSummary
    label: str  # the values that vary, e.g. "h=2 lr=0.1"
    outcomes: tuple[str, ...]
    final_losses: np.ndarray  # (n,): NaN where a run has no finite final loss (diverged)
    traces: tuple[tuple[np.ndarray, np.ndarray], ...]  # (steps, loss) per run; empty when not given

    @property
    def n(self) -> int:
        return len(self.outcomes)

    def counts(self) -> dict[str, int]:
        """Runs per outcome, failed jobs included (``failed``)."""
        out = {o: sum(x == o for x in self.outcomes) for o in OUTCOMES}
        out["failed"] = self.group.n_failed
        return out

    def count_text(self) -> str:
        """E.g. ``13 solved, 7 stuck`` (outcomes with no run left out)."""
        return ", ".join(f"{n} {o}" for o, n in self.counts().items() if n) or "no runs"

    def losses_of(self, outcome: str) -> np.ndarray:
        """Finite final losses of the runs with ``outcome``."""
        mask = np.array([o == outcome for o in self.outcomes], dtype=bool)
        values = self.final_losses[mask] if len(mask) else np.empty(0)
        return values[np.isfinite(values)]

    def finite_losses(self) -> np.ndarray:
        """The finite final losses of the group's runs, in run order."""
        return self.final_losses[np.isfinite(self.final_losses)]

    def traces_of(self, outcome: str | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Traces of the runs with ``outcome`` (every run when None)."""
        return [t for t, o in zip(self.traces, self.outcomes, strict=True) if outcome in (None, o)]

    def band(self, outcome: str | None = None) -> tuple[np.ndarray, ...]:
        """``trace_band`` of the runs with ``outcome`` (every run when None)."""
        return trace_band(self.traces_of(outcome))


def loss_quartiles(values: np.ndarray) -> tuple[float, float, float] | None:
    """(median, 25 %, 75 %) of finite values; None when there are none."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    q25, median, q75 = np.percentile(values, [25.0, 50.0, 75.0])
    return float(median), float(q25), float(q75)


def figure_groups(
    groups: Sequence[GroupSummary],
    records: Iterable[RunRecord],
    curves: Sequence[Sequence[tuple[Any, Any]]] | None = None,
) -> list[GroupRuns]:
    """Per group (in the order given), its runs' outcomes, final losses and, from ``curves``, traces.

    ``records`` must hold every run id of the groups (e.g. the records they were summarised from).
    ``curves[i]`` holds the (steps, values) traces of ``groups[i].run_ids``, in that order.
    """
    if curves is not None and len(curves) != len(groups):
        raise ValueError(f"{len(curves)} lists of traces for {len(groups)} groups")
    by_id = {r.run_id: r for r in records}
    labels = group_labels(groups)
    out = []
    for i, (group, label) in enumerate(zip(groups, labels, strict=True)):
        chosen = [by_id[run_id] for run_id in group.run_ids]  # runs with a result: outcome is set
        outcomes = tuple(str(r.outcome) for r in chosen)
        losses = np.array(
            [np.nan if r.final_loss is None or r.outcome == "diverged" else r.final_loss for r in chosen],
            dtype=float,
        )
        traces: tuple = ()
        if curves is not None:
            if len(curves[i]) != len(group.run_ids):
                raise ValueError(f"group {label}: {len(curves[i])} traces for {len(group.run_ids)} runs")
            traces = tuple(
                (np.asarray(s, dtype=float).ravel(), np.asarray(v, dtype=float).ravel()) for s, v in curves[i]
            )
        out.append(GroupRuns(group, label, outcomes, losses, traces))
    return out


def success_cells(groups: Sequence[GroupSummary]) -> dict[tuple[int, float], tuple[int, int]]:
    """(hidden_units, lr) -> (solved, seeds), pooled over every other value (iterations, ...)."""
    cells: dict[tuple[int, float], list[int]] = {}
    for g in groups:
        h, lr = g.hidden_units, g.lr
        if h is None or lr is None:
            continue
        cell = cells.setdefault((h, lr), [0, 0])
        cell[0] += g.n_solved
        cell[1] += g.n_seeds
    return {key: (solved, n) for key, (solved, n) in cells.items()}


ALL_RUNS = "all runs"  # the one x value of a figure over a sweep that varied only the seed


def slot_text(key: str | None, group: GroupSummary) -> str:
    """A group's x (or series) value as the figures show it; ``ALL_RUNS`` without a key."""
    return show_param(key, group) if key else ALL_RUNS


def values_in_order(gruns: Sequence[GroupRuns], key: str | None) -> list[tuple[str, float | None]]:
    """The distinct shown values of ``key`` among the groups, with their numbers, ordered by value
    (values without a number last, then by text): the x values or series of a sweep figure."""
    shown: dict[str, float | None] = {}
    for g in gruns:
        shown[slot_text(key, g.group)] = g.group.value(key) if key else None
    return sorted(shown.items(), key=lambda item: (item[1] is None, item[1] if item[1] is not None else 0.0,
                                                   item[0]))


def pooled_success(
    gruns: Sequence[GroupRuns], x_key: str | None, series_key: str | None
) -> dict[tuple[str, str], tuple[int, int]]:
    """(x value, series value) -> (solved, seeds), pooling the groups that share both (series ``""``
    without a series key)."""
    pooled: dict[tuple[str, str], list[int]] = {}
    for g in gruns:
        s = show_param(series_key, g.group) if series_key else ""
        cell = pooled.setdefault((slot_text(x_key, g.group), s), [0, 0])
        cell[0] += g.group.n_solved
        cell[1] += g.group.n_seeds
    return {key: (solved, n) for key, (solved, n) in pooled.items()}


def runs_per_value(gruns: Sequence[GroupRuns], key: str | None) -> dict[str, int]:
    """Runs with a result per shown value of ``key`` (``ALL_RUNS`` without a key)."""
    out: dict[str, int] = {}
    for g in gruns:
        text = slot_text(key, g.group)
        out[text] = out.get(text, 0) + g.n
    return out


def outcome_totals(gruns: Sequence[GroupRuns]) -> dict[str, int]:
    """Runs per outcome over every group, failed jobs included (``failed``)."""
    totals = {o: 0 for o in (*OUTCOMES, "failed")}
    for g in gruns:
        for outcome, n in g.counts().items():
            totals[outcome] += n
    return totals


def success_grid(
    cells: Mapping[tuple[int, float], tuple[int, int]],
) -> tuple[list[int], list[float], np.ndarray]:
    """``success_cells`` as a table: hidden_units ascending (rows), lr ascending (columns) and the
    success rate of each cell, NaN where it has no result."""
    rows = sorted({h for h, _ in cells})
    cols = sorted({lr for _, lr in cells})
    rate = np.full((len(rows), len(cols)), np.nan)  # (hidden_units, lr)
    for (h, lr), (solved, n) in cells.items():
        if n:
            rate[rows.index(h), cols.index(lr)] = solved / n
    return rows, cols, rate
