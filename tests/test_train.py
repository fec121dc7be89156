"""The training engine: the spec's reference run, outcomes, early stop, input checks, import boundary.

Batch invariance has its own home: tests/test_train_invariance.py."""

import subprocess
import sys

import numpy as np
import pytest

from tests import reference
from tests.conftest import ROOT
from xorexp import nn
from xorexp.data import X
from xorexp.train import RunSpec, train

REF_PREDICTIONS = [6.216205510610014e-04, 4.998461114142931e-01, 9.995916117465786e-01, 5.001965684028389e-01]
REF_PARAMS = {
    "W1": [[5.153348304508131, -11.281029803170169], [6.091882696710884, 11.635049679229624]],
    "B1": [[-3.359689544547214], [-2.2311529593706187]],
    "W2": [[9.305732169988318, 8.52161219344589]],
    "B2": [[-8.521529682122887]],
}


def test_reference_run_3_of_the_spec():
    [result] = train([RunSpec()])
    assert len(result.loss_trace) == 1500
    assert result.loss_trace[0] == pytest.approx(0.770718622225264, abs=1e-12)
    assert result.loss_trace[1] == pytest.approx(0.6886479519573798, abs=1e-12)
    assert result.loss_trace[-1] == pytest.approx(0.3470067255462489, abs=1e-12)
    np.testing.assert_allclose(result.predictions, REF_PREDICTIONS, rtol=0, atol=1e-12)
    for key, want in REF_PARAMS.items():
        np.testing.assert_allclose(result.arrays()[key], want, rtol=0, atol=1e-12)
    assert result.outcome == "stuck" and result.solved_at is None and result.steps == 150_000
    assert result.trace_steps[-1] == 149_900


@pytest.mark.parametrize("hidden_units,seed,lr", [(1, 0, 0.5), (3, 7, 1.0), (9, 1, 2.0)])
def test_engine_agrees_with_literal_spec_transcription(hidden_units, seed, lr):
    params, trace, yhat = reference.train(hidden_units, seed, lr, 1000)
    [result] = train([RunSpec(hidden_units=hidden_units, seed=seed, lr=lr, iterations=1000)])
    np.testing.assert_allclose(result.loss_trace, trace, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.predictions, yhat[0], rtol=0, atol=1e-12)
    for key, want in zip(("W1", "B1", "W2", "B2"), params, strict=True):
        np.testing.assert_allclose(result.arrays()[key], want, rtol=0, atol=1e-12)


def test_final_predictions_are_a_fresh_forward_pass_of_the_final_params():
    [result] = train([RunSpec(iterations=1234, lr=2.0, seed=3)])
    yhat, _ = nn.forward(result.params[:, None], X)
    assert yhat[:, 0].tobytes() == result.predictions.tobytes()
    assert result.final_loss == nn.bce_loss(yhat, np.array([0.0, 1, 1, 0]))[0]


def test_solved_run_records_first_solved_trace_step():
    [result] = train([RunSpec(lr=10.0, seed=0, iterations=3000)])
    assert result.outcome == "solved" and result.accuracy == 1.0
    assert result.solved_at is not None and result.solved_at % 100 == 0
    # it was not solved one trace step earlier
    [before] = train([RunSpec(lr=10.0, seed=0, iterations=result.solved_at - 1)])
    assert before.solved_at in (None, before.steps)  # not at any of its trace steps
    # a run right only after its last trace step gets its final step count
    [late] = train([RunSpec(lr=10.0, seed=0, iterations=result.solved_at, trace_every=10 * result.solved_at)])
    assert late.outcome == "solved" and late.solved_at == result.solved_at == late.steps


def test_stop_loss_stops_at_first_trace_step_below_it():
    [full] = train([RunSpec(lr=10.0, seed=0, iterations=3000)])
    [stopped] = train([RunSpec(lr=10.0, seed=0, iterations=3000, stop_loss=0.01)])
    k = int(np.argmax(full.loss_trace < 0.01))
    assert full.loss_trace[k] < 0.01 <= full.loss_trace[k - 1]
    np.testing.assert_array_equal(stopped.loss_trace, full.loss_trace[: k + 1])
    assert stopped.steps == k * 100


def test_divergence_is_an_outcome_with_a_finite_trace():
    [result] = train([RunSpec(lr=1000.0, seed=0, iterations=3000)])
    assert result.outcome == "diverged"
    assert np.isfinite(result.loss_trace).all() and len(result.loss_trace) >= 1
    assert result.steps == len(result.loss_trace) * 100
    [late] = train([RunSpec(lr=1e307, iterations=50)])  # diverges after the only trace step
    assert late.outcome == "diverged" and late.final_loss == np.inf and late.steps == 50


def test_trace_every_and_iterations_not_multiple():
    [result] = train([RunSpec(iterations=250, trace_every=30)])
    assert result.trace_steps.tolist() == [0, 30, 60, 90, 120, 150, 180, 210, 240]


@pytest.mark.parametrize(
    "key,value",
    [("lr", 0.0), ("lr", -1), ("lr", "abc"), ("lr", float("inf")), ("lr", float("nan")), ("hidden_units", 0),
     ("hidden_units", 2.5), ("hidden_units", True), ("iterations", 0), ("iterations", 2.5), ("seed", 2**32),
     ("seed", -1), ("trace_every", 0), ("stop_loss", 0), ("stop_loss", -1.0)],
)
def test_runspec_rejects_bad_values_naming_the_key(key, value):
    with pytest.raises(ValueError, match=f"^{key}="):
        RunSpec(**{key: value})


def test_the_core_imports_numpy_and_itself_only():
    """core <- tracking/plots/summary <- job/sweep <- app: nn, train and data load no edge package."""
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import xorexp.train, xorexp.nn, xorexp.data\n"
        "loaded = set(sys.modules) - before\n"
        "print(' '.join(sorted({m.split('.')[0] for m in loaded} - set(sys.stdlib_module_names))))\n"
        "print(' '.join(sorted(m for m in loaded if m.split('.')[0] == 'xorexp')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    third_party, own = out.stdout.splitlines()
    assert third_party.split() == ["numpy", "xorexp"]
    assert set(own.split()) <= {"xorexp", "xorexp.data", "xorexp.nn", "xorexp.train"}, own
