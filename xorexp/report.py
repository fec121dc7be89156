"""A sweep's summary across seeds, from the store: logged on the parent at the sweep's end, and
printed again for any past sweep by ``python -m xorexp.report``.

    python -m xorexp.report [--experiment NAME] [--tracking-uri URI] [--run PARENT_ID | --list]

The report only reads: it never creates a store, an experiment or a file. Bad input (no store, a
corrupt one, an unknown experiment or run, a run that is not a sweep) is one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import sqlite3
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from xorexp import subprocesses, summary
from xorexp.config import sweep_overrides
from xorexp.params import INT_KEYS, RESULT_KEYS, param_text
from xorexp.tracking import reading, writing
from xorexp.tracking.health import check_server
from xorexp.tracking.store import Store, open_store
from xorexp.tracking.tags import (
    MODEL_NAME,
    PARAMS_ARTIFACT,
    REUSED_ARTIFACT,
    ROLE_SWEEP,
    TAG_BEST_MODEL,
    TAG_BEST_PREFIX,
    TAG_BEST_RUN,
    TAG_NOTE,
    TAG_ORPHAN,
    TAG_PARENT,
    TAG_REUSED,
    TAG_ROLE,
)
from xorexp.tracking.uri import SQLITE_PREFIX, StoreError, redact, resolve_uri, store_kind

log = logging.getLogger(__name__)

UI_PORT = 5000  # python -m xorexp.ui's default port
UI_QUERY = "?workflowType=machine_learning"  # the MLflow UI's model-training view (see run_url)
MAX_NOTE_ROWS = 30  # groups shown in the parent's description; all of them are in summary.csv
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
# the best group's values logged on the parent as metrics best.<name>
BEST_METRICS = ("success_rate", "final_loss_median", "final_loss_mean", "final_loss_std", "solved_at_median")


def collect(store: Store, parent_run_id: str, reused_ids: list[str] | None = None) -> list:
    """The sweep's runs as summary records: its children plus the runs it reused."""
    if reused_ids is None:
        text = reading.read_text_artifact(store, parent_run_id, REUSED_ARTIFACT)
        reused_ids = json.loads(text) if text else []
    children = reading.sweep_children(store, parent_run_id)
    records = [summary.record_from_mlflow_run(run) for run in children if TAG_ORPHAN not in run.data.tags]
    for run in reading.get_runs(store, reused_ids):
        records.append(dataclasses.replace(summary.record_from_mlflow_run(run), reused=True))
    return records


def loss_curves(store: Store, groups: list, known: Mapping[str, tuple] | None = None) -> list:
    """Per group, the loss traces of its runs as (steps, values) pairs: from ``known`` (run id ->
    trace, e.g. what the sweep's jobs wrote in their job dirs) where there, else from the store
    (one query per run: ~8 s for 1,000 runs)."""
    known = known or {}
    return [
        [
            known[run_id] if run_id in known else reading.loss_history(store, run_id)
            for run_id in group.run_ids
        ]
        for group in groups
    ]


class BestModel:
    """The sweep's best run's MLflow model, made from its ``model/params.npz``: the model directory
    saved (``save``: the params read from the store, then MLflow's ``save_model``, ~0.3-0.9 s of CPU
    the first time in a process, most of it MLflow checking the environment's packages), then
    logged to the run (``log``). ``save`` may run in a forked child (its reads open their own
    connection). Whatever fails is a warning: the sweep's parent then names no model."""

    PRESENT = "present"  # ``save``'s answer when the run has its model already

    def __init__(self, store: Store, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self.tmp = tempfile.TemporaryDirectory(prefix="xorexp-model-")  # its owner removes it

    def save(self) -> str | None:
        """The saved model directory's path (in a new folder of its own), ``PRESENT``, or None when
        the run's params cannot be had (a warning says why)."""
        from xorexp import pyfunc  # MLflow's model code and pandas: only when a sweep ends

        try:
            if pyfunc.has_model(self.store, self.run_id):
                return self.PRESENT
            with reading.downloaded(self.store, self.run_id, PARAMS_ARTIFACT) as params_file:
                if params_file is None:
                    log.warning("best run %s has no %s: no model logged", self.run_id, PARAMS_ARTIFACT)
                    return None
                folder = Path(tempfile.mkdtemp(dir=self.tmp.name))
                return str(pyfunc.save_model(folder, self.run_id, params_file))
        except Exception:
            log.warning("could not log the model of best run %s", self.run_id, exc_info=True)
            return None

    def log(self, saving: subprocesses.Aside | None = None) -> bool:
        """Log the model saved by the child ``saving`` (saved here if there is none or it failed);
        whether the run has a model."""
        saved = subprocesses.made_aside(saving, self.save)
        if saved is None or saved == self.PRESENT:
            return saved is not None
        try:
            writing.log_files(self.store, self.run_id, dirs={MODEL_NAME: Path(saved)})
            return True
        except Exception:
            log.warning("could not log the model of best run %s", self.run_id, exc_info=True)
            return False


def finish_sweep(
    store: Store,
    parent_run_id: str,
    reused_ids: list[str],
    traces: Mapping[str, tuple] | None = None,
    lost: int = 0,
) -> int:
    """Summarise the sweep, print the table, log it on the parent and end the parent.

    ``traces`` (run id -> (steps, values)) spares reading loss histories back from the store.

    ``lost``: jobs the launcher ran that left no run at all (counted as failed, never dropped).

    Returns the number of failed jobs (the parent ends FAILED when there are any).
    """
    records = collect(store, parent_run_id, reused_ids)
    groups = summary.summarize(records)
    print(summary.format_table(groups), flush=True)
    failed = sum(group.n_failed for group in groups) + lost
    if lost:
        print(f"{lost} job(s) of the sweep left no run in the store (see the sweep's log)", flush=True)
    metrics: dict[str, float] = {"runs": float(len(records)), "failed_jobs": float(failed)}
    tags = {TAG_REUSED: str(len(reused_ids))}
    best = groups[0] if groups and groups[0].n_seeds else None
    makers, apart = {}, {}
    if records:
        from xorexp import sweep_plots  # matplotlib: loaded when a sweep ends, not by every command

        makers = sweep_plots.sweep_figure_makers(groups, records, loss_curves(store, groups, traces))
        if sweep_plots.LOSS_CURVES in makers:  # the costliest figure: drawn in a child meanwhile
            apart[sweep_plots.LOSS_CURVES] = makers.pop(sweep_plots.LOSS_CURVES)
    model = BestModel(store, best.best_run_id) if best is not None and best.best_run_id else None
    with contextlib.ExitStack() as children:  # each child is gone when this block is left
        # the model's saving and the costliest figure, each in a forked child, while the rest is done here
        saving = drawing = None
        if model is not None:
            children.callback(model.tmp.cleanup)
            saving = children.enter_context(subprocesses.aside(model.save))
        if apart:
            drawing = children.enter_context(subprocesses.aside(functools.partial(_pngs, apart)))
        if best is not None:
            for name in BEST_METRICS:
                value = getattr(best, name)
                if value is not None:
                    metrics[f"best.{name}"] = float(value)
            tags[TAG_BEST_RUN] = best.best_run_id or ""
            tags.update({f"{TAG_BEST_PREFIX}{key}": _group_value(best, key) for key in best.params})
        tags[TAG_NOTE] = sweep_description(store.experiment_id, groups)
        figures = {path: make() for path, make in makers.items()}
        blobs = subprocesses.made_aside(drawing, functools.partial(_pngs, apart)) if apart else {}
        if model is not None and model.log(saving):
            tags[TAG_BEST_MODEL] = f"runs:/{model.run_id}/{MODEL_NAME}"
    writing.log_to_run(
        store,
        parent_run_id,
        metrics=metrics,
        tags=tags,
        files={"summary.csv": summary.to_csv(groups), REUSED_ARTIFACT: json.dumps(reused_ids)},
        figures=figures,
        blobs=blobs,
    )
    status = "FAILED" if failed else "FINISHED"
    writing.finish_run(store, parent_run_id, status)
    print(f"sweep: parent run {parent_run_id}, {len(records)} runs, {failed} failed: {status}")
    if best is not None and best.best_run_id:
        config = " ".join(f"{key}={_group_value(best, key)}" for key in best.params)
        rate = f"{best.n_solved}/{best.n_seeds} solved"
        print(f"best: run {best.best_run_id} ({config}; {rate})", flush=True)
    return failed


def _pngs(makers: Mapping[str, Any]) -> dict[str, bytes]:
    from xorexp import sweep_plots

    return {path: sweep_plots.png(make()) for path, make in makers.items()}


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


def _value_text(key: str, value: Any) -> str:
    """A config value as a param: numbers as typed (``params.param_text``), None as ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if key in INT_KEYS:
        return param_text(value)
    return param_text(float(value))


def _sweep_text(key: str, override: Any) -> str:
    """A sweep override's value as a user would type it: ``choice(0.01,0.1,1)``, ``range(0,5)``,
    ``interval(0.001,10)``, ``tag(log, interval(0.001,10))``."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    sweep = override.value()
    if isinstance(sweep, RangeSweep):
        step = "" if sweep.step == 1 else f",{_value_text(key, sweep.step)}"
        text = f"range({_value_text(key, sweep.start)},{_value_text(key, sweep.stop)}{step})"
    elif isinstance(sweep, IntervalSweep):
        text = f"interval({_value_text(key, sweep.start)},{_value_text(key, sweep.end)})"
    elif isinstance(sweep, ChoiceSweep):
        text = "choice(" + ",".join(_value_text(key, v) for v in override.sweep_iterator()) + ")"
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
            swept[key] = _sweep_text(key, override)
        else:
            swept.pop(key, None)  # a fixed value on the command line replaces a sweep from config
    params = {key: swept.get(key) or _value_text(key, config[key]) for key in RESULT_KEYS}
    params["sweep"] = str(config.hydra.runtime.choices.get("sweep") or "grid")
    return {key: value[:MAX_PARAM_CHARS] for key, value in params.items()}


def _group_value(group: summary.GroupSummary, key: str) -> str:
    """A group's value of ``key`` as typed (``5``, not ``5.0``); "" when its runs did not log it."""
    return group.params[key] and _value_text(key, group.value(key))


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
            *(_group_value(group, k) for k in param_cols),
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


def check_readable(uri: str) -> None:
    """Refuse, before MLflow touches it, a sqlite store that is missing, not a database or not
    MLflow's: MLflow would create (or add its tables to) the file. Raises StoreError."""
    if store_kind(uri) == "server":
        check_server(uri)
        return
    if not uri.startswith(SQLITE_PREFIX):
        return
    path = Path(uri[len(SQLITE_PREFIX) :])
    if not path.is_file():
        raise StoreError(
            f"no store at {uri}: run a sweep here first, or pass --tracking-uri of an existing store"
        )
    try:
        connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            rows = connection.execute("select name from sqlite_master where type='table'").fetchall()
        finally:
            connection.close()
        tables = {row[0] for row in rows}
    except sqlite3.Error as error:
        raise StoreError(f"store {uri} is not a readable sqlite database ({error})") from None
    if not {"experiments", "runs", "alembic_version"} <= tables:
        raise StoreError(f"store {uri} is not an MLflow database (no MLflow tables in it)")


def open_sweep(store: Store, run_id: str) -> Any:
    """The parent run of a sweep, by id; StoreError when there is no such run or it is no sweep."""
    try:
        run = reading.get_run(store, run_id)
    except Exception:
        raise StoreError(
            f"no run {run_id!r} in {redact(store.uri)}: list the sweeps with --list"
        ) from None
    if run.data.tags.get(TAG_ROLE) != ROLE_SWEEP:
        parent = run.data.tags.get(TAG_PARENT)
        hint = f"its sweep is run {parent}" if parent else "list the sweeps with --list"
        raise StoreError(f"run {run_id} is not a sweep (no {TAG_ROLE} tag): {hint}")
    if run.info.experiment_id != store.experiment_id:
        raise StoreError(
            f"run {run_id} is not in the experiment given: pass its experiment with --experiment"
        )
    return run


def sweep_list(store: Store) -> list[str]:
    """One line per sweep of the experiment, newest first: id, start, runs, status, name."""
    parents = reading.sweeps(store)
    parents.sort(key=lambda run: run.info.start_time or 0, reverse=True)
    rows = []
    for run in parents:
        runs = run.data.metrics.get("runs")
        if runs is None:  # not finished: count its children so far
            runs = len(reading.sweep_children(store, run.info.run_id))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((run.info.start_time or 0) / 1000))
        rows.append([run.info.run_id, started, str(int(runs)), run.info.status, run.info.run_name or ""])
    if not rows:
        return ["no sweep in this experiment"]
    header = ["run id", "started", "runs", "status", "name"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    widths[-1] = 0  # the name goes last, unpadded
    aligned = []
    for row in [header, *rows]:
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [c.rjust(w) if i == 2 else c.ljust(w) for i, (c, w) in pairs]
        aligned.append("  ".join(cells).rstrip())
    return aligned


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xorexp.report", description="Print the summary across seeds of a past sweep."
    )
    parser.add_argument("--experiment", default="xorexp", help="experiment name (default: xorexp)")
    parser.add_argument("--tracking-uri", default=None, help="default: sqlite:///./mlflow.db")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--run", default=None, help="parent run id of the sweep (default: the latest sweep)")
    which.add_argument("--list", action="store_true", help="list the experiment's sweeps, newest first")
    args = parser.parse_args(argv)
    uri = resolve_uri(args.tracking_uri, Path.cwd())
    try:
        return _report(uri, args)
    except StoreError as error:
        print(f"xorexp: {error}", file=sys.stderr)
    except Exception as error:  # a store MLflow cannot read: one line, never a traceback
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        print(f"xorexp: cannot read the store {redact(uri)} ({reason}): "
              "check --tracking-uri", file=sys.stderr)
    return 2


def _report(uri: str, args: argparse.Namespace) -> int:
    check_readable(uri)
    store = open_store(uri, args.experiment, create=False)
    if args.list:
        print("\n".join(sweep_list(store)))
        return 0
    if args.run:
        run = open_sweep(store, args.run)
    else:
        parent = reading.latest_sweep(store)
        if parent is None:
            raise StoreError(
                f"no sweep in experiment {args.experiment!r} of {redact(uri)}: run one with -m"
            )
        run = reading.get_run(store, parent)
    parent = run.info.run_id
    print(f"sweep {run.info.run_name} (run {parent}, {run.info.status})")
    print(summary.format_table(summary.summarize(collect(store, parent))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
