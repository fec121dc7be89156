"""Replay a logged run: train it again from its logged params and prove the numbers are the same.

    python -m xorexp.replay RUN_ID [--tracking-uri URI] [--experiment NAME] [--log]

Compares, bit for bit, the loss trace (metric ``loss`` by step), the final parameters
(``model/params.npz``), the predictions (``predictions.json``), the summary metrics and the outcome
with what the run logged. Prints ``identical``, or per quantity how many values differ and the
largest absolute difference. Differences between the recorded environment and this one (versions,
commit, uncommitted changes, BLAS, SIMD dispatch, platform) are listed first: on another CPU or
NumPy, the last bits may legitimately differ.

Exit status: 0 identical, 1 different, 2 bad input (no store, unknown run, run without params).
``--log`` records the replay as a new run (tagged ``xorexp.replay_of``) with the same contract as
any run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xorexp import provenance, run_logging
from xorexp.params import RESULT_KEYS, result_params, run_name, spec_from_params
from xorexp.pyfunc import PARAM_NAMES, load_params
from xorexp.tracking import reading, writing
from xorexp.tracking.opened_store import Store
from xorexp.tracking.store import find_run, open_store
from xorexp.tracking.tags import (
    CONFIG_ARTIFACT,
    PARAMS_ARTIFACT,
    PREDICTIONS_ARTIFACT,
    ROLE_SWEEP,
    TAG_GIT_COMMIT,
    TAG_OUTCOME,
    TAG_REPLAY_OF,
    TAG_ROLE,
)
from xorexp.tracking.uri import StoreError, describe_store_error, redact, resolve_uri
from xorexp.train import RunResult, train

SUMMARY_METRICS = ("final_loss", "accuracy", "steps", "solved_at")


class BadInput(Exception):
    """The replay cannot start: reported in one line, exit status 2."""


@dataclass
class Comparison:
    """One quantity: recorded vs replayed values (None = not finite / not logged)."""

    name: str
    recorded: list[float | None] | None  # None: the run did not record it
    replayed: list[float | None]
    mismatch: str | None = None  # a difference that is not in the values (steps, outcome)

    @property
    def recorded_at_all(self) -> bool:
        return self.recorded is not None

    def differing(self) -> list[int]:
        assert self.recorded is not None
        return [
            i for i, (a, b) in enumerate(zip(self.recorded, self.replayed, strict=True)) if not _same(a, b)
        ]

    @property
    def identical(self) -> bool:
        if self.recorded is None:
            return True
        return self.mismatch is None and len(self.recorded) == len(self.replayed) and not self.differing()

    def describe(self) -> str:
        if self.recorded is None:
            return f"{self.name}: not recorded by the run"
        if self.mismatch is not None:
            return f"{self.name}: DIFFERENT: {self.mismatch}"
        n_rec, n_rep = len(self.recorded), len(self.replayed)
        if n_rec != n_rep:
            return f"{self.name}: DIFFERENT: {n_rec} values recorded, {n_rep} replayed"
        bad = self.differing()
        if not bad:
            return f"{self.name}: identical" + (f" ({n_rec} values)" if n_rec else "")
        gaps = [
            abs(self.recorded[i] - self.replayed[i])  # type: ignore[operator]
            for i in bad
            if self.recorded[i] is not None and self.replayed[i] is not None
        ]
        largest = f"largest absolute difference {max(gaps):.3e}" if gaps else "finite vs not finite"
        return f"{self.name}: DIFFERENT: {len(bad)} of {n_rec} values differ, {largest}"


def _same(a: float | None, b: float | None) -> bool:
    """Bit for bit (float64 hex), None only equal to None."""
    if a is None or b is None:
        return a is None and b is None
    return float(a).hex() == float(b).hex()


def _finite(values) -> list[float | None]:
    return [writing.finite_or_none(float(v)) for v in np.asarray(values, dtype=np.float64).ravel()]


def open_run(
    uri: str, run_id: str, experiment: str | None, log_run: bool = False
) -> tuple[Store, object]:
    """The store holding the run, and the run; BadInput when either is missing.

    Without ``log_run`` nothing is written: no store file, schema or experiment is created (the
    store is opened in the run's own experiment; ``experiment`` only names where ``--log`` goes)."""
    try:
        run, run_experiment = find_run(uri, run_id)
    except StoreError:
        raise
    except Exception as error:
        problem = describe_store_error(error, uri)
        raise BadInput(problem or f"no run {run_id!r} in {redact(uri)}") from None
    if run.data.tags.get(TAG_ROLE) == ROLE_SWEEP:
        raise BadInput(
            f"run {run_id} is a sweep's parent run, not a training run: replay one of its child runs "
            f"(python -m xorexp.report --run {run_id} lists its groups)"
        )
    missing = [key for key in RESULT_KEYS if key not in run.data.params]
    if missing:
        raise BadInput(
            f"run {run_id} has no xorexp params ({', '.join(missing)} missing): not a training run"
        )
    if experiment is None or not log_run:
        experiment = run_experiment
    return open_store(uri, experiment, create=log_run), run


def environment_differences(recorded_tags: dict[str, str]) -> list[str]:
    """One line per recorded environment tag (and commit) that differs from this process's."""
    now = dict(provenance.environment_tags())
    keys = list(provenance.ENVIRONMENT_KEYS)
    commit = provenance.git_commit()
    if commit:
        now[TAG_GIT_COMMIT] = commit
    keys.append(TAG_GIT_COMMIT)
    lines = []
    for key in keys:
        recorded, current = recorded_tags.get(key), now.get(key)
        if recorded is None and current is None:
            continue
        if recorded != current:
            lines.append(
                f"environment differs: {key}: recorded {recorded or '(none)'}, now {current or '(none)'}"
            )
    return lines


def _recorded_params(store: Store, run_id: str) -> list[float | None] | None:
    with reading.downloaded(store, run_id, PARAMS_ARTIFACT) as local:
        if local is None:
            return None
        arrays = load_params(local)
        return _finite(np.concatenate([arrays[name].ravel() for name in PARAM_NAMES]))


def compare(store: Store, run, result: RunResult) -> list[Comparison]:
    """Every logged quantity of ``run`` against ``result``."""
    run_id = run.info.run_id
    steps, values = reading.loss_history(store, run_id)
    replayed_trace = [(m.step, m.value) for m in writing.run_metrics(result, 0) if m.key == "loss"]
    recorded_steps = [int(s) for s in steps]
    replayed_steps = [s for s, _ in replayed_trace]
    mismatch = None
    if len(recorded_steps) == len(replayed_steps) and recorded_steps != replayed_steps:
        mismatch = f"logged at steps {recorded_steps[:5]}..., replayed at {replayed_steps[:5]}..."
    out = [Comparison("loss trace", _finite(values), [v for _, v in replayed_trace], mismatch)]

    arrays = result.arrays()
    out.append(
        Comparison(
            "params (W1, B1, W2, B2)",
            _recorded_params(store, run_id),
            _finite(np.concatenate([arrays[name].ravel() for name in PARAM_NAMES])),
        )
    )

    text = reading.read_text_artifact(store, run_id, PREDICTIONS_ARTIFACT)
    recorded_predictions = None
    if text is not None:
        recorded_predictions = [None if v is None else float(v) for v in json.loads(text)["predictions"]]
    out.append(Comparison("predictions", recorded_predictions, _finite(result.predictions)))

    replayed_metrics = {m.key: m.value for m in writing.run_metrics(result, 0) if m.key in SUMMARY_METRICS}
    logged = run.data.metrics
    names = [name for name in SUMMARY_METRICS if name in logged or name in replayed_metrics]
    out.append(
        Comparison(
            f"metrics ({', '.join(names)})",
            [logged.get(name) for name in names],
            [replayed_metrics.get(name) for name in names],
        )
    )
    recorded_outcome = run.data.tags.get(TAG_OUTCOME)
    out.append(
        Comparison(
            "outcome",
            None if recorded_outcome is None else [],
            [],
            None
            if recorded_outcome == result.outcome
            else f"recorded {recorded_outcome}, replayed {result.outcome}",
        )
    )
    return out


def log_replay(store: Store, run, result: RunResult) -> str:
    """The replay as a new run of the store with the contract of any run (its model included; no
    Hydra files: it did not go through Hydra), tagged ``xorexp.replay_of``; returns its id."""
    from xorexp.chunks import render_run_plots

    config = reading.read_text_artifact(store, run.info.run_id, CONFIG_ARTIFACT)
    replay_of = {TAG_REPLAY_OF: run.info.run_id}
    run_id = run_logging.start_run(store, result.spec, tags=replay_of, with_params=False)
    try:
        run_logging.log_result(
            store,
            run_id,
            result,
            blobs=render_run_plots(result, run_name(result.spec)),
            files={CONFIG_ARTIFACT: config} if config is not None else None,
            params_logged=False,
            model=True,
        )
    except Exception:
        writing.finish_run(store, run_id, "FAILED")
        raise
    return run_id


def replay(run_id: str, uri: str, experiment: str | None = None, log_run: bool = False) -> int:
    """Replay the run and print the comparison; 0 when identical, 1 when not (BadInput: bad input)."""
    store, run = open_run(uri, run_id, experiment, log_run)
    try:
        spec = spec_from_params(run.data.params)
    except (KeyError, ValueError) as error:
        raise BadInput(f"run {run_id} has params that are not a valid config: {error}") from None
    print(
        f"replay of run {run_id} ({run.info.run_name}): "
        + " ".join(f"{k}={v}" for k, v in result_params(spec).items())
    )
    for line in environment_differences(run.data.tags):
        print(line)
    [result] = train([spec])
    comparisons = compare(store, run, result)
    for comparison in comparisons:
        print(comparison.describe())
    # the trace and the predictions must have been logged; params.npz is missing from older runs
    essential = [c for c in comparisons if c.name in ("loss trace", "predictions")]
    identical = all(c.identical for c in comparisons) and all(c.recorded_at_all for c in essential)
    if log_run:
        print(f"replay logged as run {log_replay(store, run, result)}")
    print("identical" if identical else "different")
    return 0 if identical else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xorexp.replay",
        description="Train a logged run again and check that its numbers are identical, bit for bit.",
    )
    parser.add_argument("run_id", metavar="RUN_ID", help="MLflow run id of a training run")
    parser.add_argument("--tracking-uri", default=None, help="default: sqlite:///./mlflow.db")
    parser.add_argument(
        "--experiment", default=None, help="experiment for --log (default: the replayed run's experiment)"
    )
    parser.add_argument("--log", action="store_true", help="record the replay as a new run")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # our output is the report
    uri = resolve_uri(args.tracking_uri, Path.cwd())
    try:
        return replay(args.run_id, uri, args.experiment, args.log)
    except (BadInput, StoreError) as error:
        print(f"xorexp.replay: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a store that fails midway (locked, full, server gone): one line
        problem = describe_store_error(error, uri)
        if problem is None:
            raise
        print(f"xorexp.replay: {problem}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
