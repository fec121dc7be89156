"""Summary across seeds: runs grouped by every result-shaping value except the seed.

Pure functions over plain records (``sweep_records`` makes them from a store's runs); no MLflow or
Hydra import here. What the sweep's figures show is ``sweep_figure_data``.

Rules, in one place:

- A record *has a result* when it has an outcome and its status is not FAILED or KILLED; every
  other record (a failed job, a run killed before it tagged its outcome) counts as failed.
- One result per seed and group: a seed logged twice (a reused run next to its source, a retried
  job) counts once, preferring a result over none, a final loss over none, and an original over a
  reuse. A failed attempt of a seed that also has a result is not counted as failed.
- Loss statistics and ``best_run_id`` use the finite final losses of results that did not diverge.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xorexp.params import INT_KEYS, RESULT_KEYS
from xorexp.train import OUTCOMES

GROUP_KEYS = tuple(k for k in RESULT_KEYS if k != "seed")
_INT_KEYS = frozenset(INT_KEYS)
_NULL = frozenset({"null", "None", "none", ""})
_NO_RESULT_STATUSES = frozenset({"FAILED", "KILLED"})

# short names for labels and the table header
SHORT_NAMES = {
    "hidden_units": "h",
    "lr": "lr",
    "iterations": "it",
    "trace_every": "trace",
    "stop_loss": "stop",
}


@dataclass(frozen=True)
class RunRecord:
    """What the summary needs of one run; ``params`` are MLflow-style strings."""

    run_id: str
    params: Mapping[str, str]
    outcome: str | None  # one of OUTCOMES, or None when the job left no outcome
    status: str = "FINISHED"
    final_loss: float | None = None
    solved_at: float | None = None
    reused: bool = False

    @property
    def has_result(self) -> bool:
        return self.outcome in OUTCOMES and self.status not in _NO_RESULT_STATUSES


def parse_param(key: str, text: str | None) -> int | float | None:
    """The number a logged param stands for; None for null, missing or unreadable values."""
    if text is None or text.strip() in _NULL:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    if key in _INT_KEYS and number.is_integer():
        return int(number)
    return number


def _canonical(key: str, text: str | None) -> str:
    """The param as ``params.result_params`` writes it, so "0.10" and "0.1" group together."""
    if text is None:
        return ""
    value = parse_param(key, text)
    if value is None:
        return "null" if text.strip() in _NULL - {""} else text.strip()
    if isinstance(value, int):
        return str(value)
    text = repr(float(value))  # as the param is written (params.param_text): "1", not "1.0"
    return text[:-2] if text.endswith(".0") else text


def group_key(record: RunRecord) -> tuple[str, ...]:
    """The group a record belongs to: its canonical values of GROUP_KEYS ("" when missing)."""
    return tuple(_canonical(k, record.params.get(k)) for k in GROUP_KEYS)


@dataclass(frozen=True)
class GroupSummary:
    """One configuration across seeds."""

    params: dict[str, str]  # canonical strings of GROUP_KEYS ("" when the runs did not log it)
    n_seeds: int  # seeds with a result
    n_solved: int
    n_stuck: int
    n_diverged: int
    n_failed: int  # seeds (or parameterless runs) without any result
    n_reused: int  # results that were reused from an earlier run
    success_rate: float | None  # n_solved / n_seeds; None without results
    success_low: float | None  # 95 % Wilson score interval of the success rate; None without results
    success_high: float | None
    final_loss_median: float | None
    final_loss_mean: float | None
    final_loss_std: float | None  # sample std (ddof=1); None with fewer than 2 losses
    solved_at_median: float | None
    best_run_id: str | None
    run_ids: tuple[str, ...] = field(default=())  # the results counted, one per seed
    failed_run_ids: tuple[str, ...] = field(default=())

    def value(self, key: str) -> int | float | None:
        """The group's value of ``key`` as a number; None when null or not logged."""
        return parse_param(key, self.params.get(key))

    @property
    def hidden_units(self) -> int | None:
        return self.value("hidden_units")  # type: ignore[return-value]

    @property
    def lr(self) -> float | None:
        return self.value("lr")

    @property
    def iterations(self) -> int | None:
        return self.value("iterations")  # type: ignore[return-value]

    @property
    def trace_every(self) -> int | None:
        return self.value("trace_every")  # type: ignore[return-value]

    @property
    def stop_loss(self) -> float | None:
        return self.value("stop_loss")


Z_95 = 1.959963984540054  # two-sided 95 % quantile of the standard normal


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float] | None:
    """Wilson score interval of a success rate ``successes / n``; None when n is 0.

    Unlike p ± z·sqrt(p(1-p)/n) it stays inside [0, 1] and does not shrink to a point at 0/n or n/n:
    0/20 gives [0, 0.161], 20/20 gives [0.839, 1], 13/20 gives [0.433, 0.819].
    """
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"{successes} successes out of {n}")
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(p * (1 - p) / n + z2n / (4 * n)) / (1 + z2n)
    # at 0/n and n/n one end is exactly 0 or 1; clamp the other's rounding
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def _preference(record: RunRecord) -> tuple:
    """Lower is better, for choosing one record per seed."""
    return (not record.has_result, record.final_loss is None, record.reused, record.run_id)


def _median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if len(values) else None


def one_per_seed(records: Iterable[RunRecord]) -> list[RunRecord]:
    """The records to count: one per (group, seed), chosen as the module docstring says.

    Records without a seed param are all kept. Order: first appearance of each (group, seed).
    """
    chosen: dict[tuple, RunRecord] = {}
    for i, record in enumerate(records):
        seed = record.params.get("seed")
        key = (group_key(record), _canonical("seed", seed)) if seed is not None else ("unseeded", i)
        if key not in chosen or _preference(record) < _preference(chosen[key]):
            chosen[key] = record
    return list(chosen.values())


def _summarize_group(params: dict[str, str], records: list[RunRecord]) -> GroupSummary:
    """Summary of one group's records, already reduced by ``one_per_seed``."""
    chosen = sorted(records, key=lambda r: r.run_id)
    results = [r for r in chosen if r.has_result]
    failed = [r for r in chosen if not r.has_result]
    n_solved = sum(r.outcome == "solved" for r in results)
    interval = wilson_interval(n_solved, len(results))
    scored = [r for r in results if r.outcome != "diverged" and r.final_loss is not None]
    losses = np.array([r.final_loss for r in scored], dtype=float)
    solved_at = [r.solved_at for r in results if r.outcome == "solved" and r.solved_at is not None]
    best = min(scored, key=lambda r: (r.final_loss, r.run_id)) if scored else None
    return GroupSummary(
        params=params,
        n_seeds=len(results),
        n_solved=n_solved,
        n_stuck=sum(r.outcome == "stuck" for r in results),
        n_diverged=sum(r.outcome == "diverged" for r in results),
        n_failed=len(failed),
        n_reused=sum(r.reused for r in results),
        success_rate=n_solved / len(results) if results else None,
        success_low=interval[0] if interval else None,
        success_high=interval[1] if interval else None,
        final_loss_median=_median(losses),
        final_loss_mean=float(losses.mean()) if len(losses) else None,
        final_loss_std=float(losses.std(ddof=1)) if len(losses) >= 2 else None,
        solved_at_median=_median(solved_at),
        best_run_id=best.run_id if best else None,
        run_ids=tuple(r.run_id for r in results),
        failed_run_ids=tuple(r.run_id for r in failed),
    )


def _none_last(value: float | None) -> tuple[bool, float]:
    return (value is None, 0.0 if value is None else value)


def params_order(group: GroupSummary) -> tuple:
    """Sort key of a group by its values, key by key in GROUP_KEYS order (missing values last)."""
    keys = []
    for key in GROUP_KEYS:
        value = group.value(key)
        keys.append((value is None, -math.inf if value is None else value, group.params[key]))
    return tuple(keys)


def sort_key(group: GroupSummary) -> tuple:
    """Best first: success rate desc, median final loss asc, median solved_at asc (None last)."""
    rate = None if group.success_rate is None else -group.success_rate
    return (
        _none_last(rate),
        _none_last(group.final_loss_median),
        _none_last(group.solved_at_median),
        params_order(group),
    )


def summarize(records: Iterable[RunRecord]) -> list[GroupSummary]:
    """One GroupSummary per configuration (GROUP_KEYS), best first (see ``sort_key``)."""
    groups: dict[tuple[str, ...], list[RunRecord]] = {}
    for record in one_per_seed(records):
        groups.setdefault(group_key(record), []).append(record)
    summaries = [_summarize_group(dict(zip(GROUP_KEYS, key, strict=True)), rs) for key, rs in groups.items()]
    return sorted(summaries, key=sort_key)


def varying_keys(groups: Sequence[GroupSummary]) -> list[str]:
    """GROUP_KEYS whose value differs between groups, in GROUP_KEYS order."""
    return [k for k in GROUP_KEYS if len({g.params[k] for g in groups}) > 1]


def group_labels(groups: Sequence[GroupSummary]) -> list[str]:
    """Short labels naming only the values that vary, e.g. ``h=2 lr=0.5``; in the order given."""
    keys = varying_keys(groups) or ["hidden_units", "lr"]
    return [" ".join(f"{SHORT_NAMES[k]}={show_param(k, g)}" for k in keys) for g in groups]


def show_param(key: str, group: GroupSummary) -> str:
    """A group's value of ``key`` as labels show it: ``0.1``, ``2``, ``null``."""
    value = group.value(key)
    if value is None:
        return "null" if group.params[key] == "null" else (group.params[key] or "?")
    return str(value) if isinstance(value, int) else f"{value:g}"


def _num(value: float | None, fmt: str = ".4g") -> str:
    return "-" if value is None else format(value, fmt)


_TABLE_BASE = ["hidden_units", "lr", "iterations"]
_TABLE_OPTIONAL = ["stop_loss", "trace_every"]
MAX_LISTED_FAILED = 20


def format_table(groups: Sequence[GroupSummary]) -> str:
    """A fixed-width table, one row per group in the order given, plus a line of failed run ids."""
    if not groups:
        return "no runs to summarize"
    vary = set(varying_keys(groups))
    param_cols = _TABLE_BASE + [k for k in _TABLE_OPTIONAL if k in vary]
    show_reused = any(g.n_reused for g in groups)
    header = [
        *param_cols,
        "seeds",
        "success",
        "95 % interval",
        "stuck",
        "diverged",
        "failed",
        *(["reused"] if show_reused else []),
        "loss median",
        "loss mean ± std",
        "median solved_at",
    ]
    rows = []
    for g in groups:
        rate = "-" if g.success_rate is None else f"{g.n_solved}/{g.n_seeds} {g.success_rate:4.0%}"
        interval = "-" if g.success_low is None else f"[{g.success_low:.2f}, {g.success_high:.2f}]"
        mean_std = (
            "-" if g.final_loss_mean is None else f"{g.final_loss_mean:.4g} ± {_num(g.final_loss_std, '.2g')}"
        )
        rows.append(
            [
                *(show_param(k, g) for k in param_cols),
                str(g.n_seeds),
                rate,
                interval,
                str(g.n_stuck),
                str(g.n_diverged),
                str(g.n_failed),
                *([str(g.n_reused)] if show_reused else []),
                _num(g.final_loss_median),
                mean_std,
                _num(g.solved_at_median, ".0f"),
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    failed = [rid for g in groups for rid in g.failed_run_ids]
    if failed:
        shown = ", ".join(failed[:MAX_LISTED_FAILED])
        more = f" (+{len(failed) - MAX_LISTED_FAILED} more)" if len(failed) > MAX_LISTED_FAILED else ""
        lines.append(f"failed runs ({len(failed)}): {shown}{more}")
    return "\n".join(lines)


CSV_COLUMNS = (
    *GROUP_KEYS,
    "n_seeds",
    "n_solved",
    "success_rate",
    "success_low",
    "success_high",
    "n_stuck",
    "n_diverged",
    "n_failed",
    "n_reused",
    "final_loss_median",
    "final_loss_mean",
    "final_loss_std",
    "solved_at_median",
    "best_run_id",
)


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def to_csv(groups: Sequence[GroupSummary]) -> str:
    """CSV with a header row (CSV_COLUMNS); params as logged, floats by repr, None as empty."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for g in groups:
        stats = [_csv_cell(getattr(g, c)) for c in CSV_COLUMNS[len(GROUP_KEYS) :]]
        writer.writerow([g.params[k] for k in GROUP_KEYS] + stats)
    return out.getvalue()
