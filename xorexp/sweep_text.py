"""A sweep in words: its parent run's params (the swept space as typed) and description (the
summary table in Markdown, best first, each row linking its best run), the best group's values as
typed, and the lines that say where the MLflow UI shows the sweep.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from xorexp import summary
from xorexp.config import sweep_overrides
from xorexp.params import INT_KEYS, RESULT_KEYS, param_text
from xorexp.tracking.uri import redact, resolve_uri, store_kind

if TYPE_CHECKING:
    from xorexp.tracking.opened_store import Store

UI_PORT = 5000  # python -m xorexp.ui's default port
UI_QUERY = "?workflowType=machine_learning"  # the MLflow UI's model-training view (see run_url)
MAX_NOTE_ROWS = 30  # groups shown in the parent's description; all of them are in summary.csv
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


def value_text(key: str, value: Any) -> str:
    """A config value as a param: numbers as typed (``params.param_text``), None as ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if key in INT_KEYS:
        return param_text(value)
    return param_text(float(value))


def _override_text(key: str, override: Any) -> str:
    """A sweep override's value as a user would type it: ``choice(0.01,0.1,1)``, ``range(0,5)``,
    ``interval(0.001,10)``, ``tag(log, interval(0.001,10))``."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    sweep = override.value()
    if isinstance(sweep, RangeSweep):
        step = "" if sweep.step == 1 else f",{value_text(key, sweep.step)}"
        text = f"range({value_text(key, sweep.start)},{value_text(key, sweep.stop)}{step})"
    elif isinstance(sweep, IntervalSweep):
        text = f"interval({value_text(key, sweep.start)},{value_text(key, sweep.end)})"
    elif isinstance(sweep, ChoiceSweep):
        text = "choice(" + ",".join(value_text(key, v) for v in override.sweep_iterator()) + ")"
    else:
        text = override.get_value_element_as_str()
    tags = sorted(getattr(sweep, "tags", None) or ())
    return f"tag({', '.join(tags)}, {text})" if tags else text


def sweep_params(config: DictConfig) -> dict[str, str]:
    """The sweep's fixed values and swept space as params of its parent run.

    One param per result key (``lr`` -> ``choice(0.01,0.1,1)`` when swept, ``0.1`` when fixed),
    plus ``sweep``: the preset (``grid`` for the command line's plain grid). Call it on the
    multirun's config once the parent run exists, and log the result on the parent.
    """
    swept = {}
    for override in sweep_overrides(config):
        key = override.get_key_element()
        if key not in RESULT_KEYS:
            continue
        if override.is_sweep_override():
            swept[key] = _override_text(key, override)
        else:
            swept.pop(key, None)  # a fixed value on the command line replaces a sweep from config
    params = {key: swept.get(key) or value_text(key, config[key]) for key in RESULT_KEYS}
    params["sweep"] = str(config.hydra.runtime.choices.get("sweep") or "grid")
    return {key: value[:MAX_PARAM_CHARS] for key, value in params.items()}


def group_value(group: summary.GroupSummary, key: str) -> str:
    """A group's value of ``key`` as typed (``5``, not ``5.0``); "" when its runs did not log it."""
    return group.params[key] and value_text(key, group.value(key))


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _interval(group: summary.GroupSummary) -> str:
    if group.success_low is None or group.success_high is None:
        return "-"
    return f"[{group.success_low:.2f}, {group.success_high:.2f}]"


def sweep_description(experiment_id: str, groups: Sequence[summary.GroupSummary]) -> str:
    """The parent run's description (Markdown): the summary table, best first, each row linking
    its best run, and a line naming the sweep's best run."""
    if not groups:
        return "**Sweep summary**: no runs to summarize."
    vary = summary.varying_keys(groups)
    param_cols = ["hidden_units", "lr", "iterations"] + [
        k for k in ("stop_loss", "trace_every") if k in vary
    ]
    header = [*param_cols, "seeds", "solved", "stuck", "diverged", "failed", "success", "95 % interval",
              "loss median", "median solved_at", "best run"]
    lines = []
    best = groups[0]
    if best.best_run_id:
        label = summary.group_labels([best])[0]
        rate = _cell(best.success_rate, ".0%")
        lines.append(
            f"**Best run:** [{best.best_run_id[:8]}]({run_url(experiment_id, best.best_run_id)}) "
            f"({label}; success {best.n_solved}/{best.n_seeds} = {rate}, "
            f"median final loss {_cell(best.final_loss_median, '.4g')})"
        )
        lines.append("")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---:" for _ in header) + "|")
    for group in groups[:MAX_NOTE_ROWS]:
        link = (
            f"[{group.best_run_id[:8]}]({run_url(experiment_id, group.best_run_id)})"
            if group.best_run_id else "-"
        )
        cells = [
            *(group_value(group, k) for k in param_cols),
            str(group.n_seeds),
            str(group.n_solved),
            str(group.n_stuck),
            str(group.n_diverged),
            str(group.n_failed),
            _cell(group.success_rate, ".0%"),
            _interval(group),
            _cell(group.final_loss_median, ".4g"),
            _cell(group.solved_at_median, ".0f"),
            link,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if len(groups) > MAX_NOTE_ROWS:
        lines.append("")
        lines.append(f"... and {len(groups) - MAX_NOTE_ROWS} more groups: see `summary.csv`.")
    lines.append("")
    lines.append("Seeds are grouped by every other value; best first (success rate, then median final loss).")
    return "\n".join(lines)


def run_url(experiment_id: str, run_id: str, base: str = "") -> str:
    """The MLflow UI's page of a run; ``base`` empty gives the link relative to the UI itself.

    ``workflowType=machine_learning`` makes MLflow 3.17's UI show the page as model training: in a
    fresh browser it otherwise defaults to its GenAI view (runs under "Evaluations") whatever the
    experiment's ``mlflow.experimentKind`` tag says (measured in headless Chromium).
    """
    return f"{base}#/experiments/{experiment_id}/runs/{run_id}{UI_QUERY}"


def ui_hint(store: Store, parent_run_id: str) -> list[str]:
    """The lines a sweep prints at its end: how to look at it in the MLflow UI.

    For a local store: the command that serves it (``--tracking-uri`` only when it is not the
    default of this directory) and the URL of the parent run. For a tracking server, which is the UI
    already: the URL only.
    """
    if store_kind(store.uri) == "server":
        base = redact(store.uri).rstrip("/") + "/"
        return [f"MLflow UI: {run_url(store.experiment_id, parent_run_id, base)}"]
    command = "python -m xorexp.ui"
    if store.uri != resolve_uri(None, Path.cwd()):
        command += f" --tracking-uri {redact(store.uri)}"
    base = f"http://127.0.0.1:{UI_PORT}/"
    return [
        f"MLflow UI: {command}",
        f"then open {run_url(store.experiment_id, parent_run_id, base)}",
    ]
