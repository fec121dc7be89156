"""Batch invariance, bit for bit: a run's numbers never depend on the batch or chunk it trains in."""

import numpy as np
import pytest

from xorexp import nn
from xorexp import train as engine
from xorexp.data import X
from xorexp.train import RunSpec, train


def _mixed_specs(hidden_units: int, n: int = 70) -> list[RunSpec]:
    """Runs with different lr, iterations and stop_loss; the first one diverges (lr=1000, seed=0)."""
    rng = np.random.RandomState(123)
    specs = [RunSpec(hidden_units=hidden_units, lr=1000.0, seed=0, iterations=800)]
    for s in range(1, n):
        specs.append(
            RunSpec(
                hidden_units=hidden_units,
                lr=float(rng.choice([0.05, 0.5, 3.0, 10.0, 1000.0])),
                seed=int(rng.randint(0, 2**32 - 1, dtype=np.int64)),
                iterations=int(rng.choice([1, 99, 100, 101, 450, 800])),
                stop_loss=[None, 0.3, 0.05][s % 3],
            )
        )
    return specs


def _bits(result) -> tuple:
    return (
        result.outcome,
        result.steps,
        result.solved_at,
        result.loss_trace.tobytes(),
        result.params.tobytes(),
        result.predictions.tobytes(),
        np.float64(result.final_loss).tobytes(),
    )


@pytest.mark.parametrize("hidden_units", [1, 2, 9])
def test_every_run_has_the_same_bits_with_any_chunk_size(hidden_units):
    specs = _mixed_specs(hidden_units)
    by_chunk = {chunk: [_bits(r) for r in train(specs, chunk_size=chunk)] for chunk in (1, 7, 64, 1000)}
    alone = by_chunk[1]  # chunk_size=1: every run trained as a batch of one
    for chunk, results in by_chunk.items():
        for i, (got, want) in enumerate(zip(results, alone, strict=True)):
            assert got == want, f"run {i} ({specs[i]}) differs with chunk_size={chunk}"
    outcomes = {bits[0] for bits in alone}
    if hidden_units == 2:
        assert alone[0][0] == "diverged"
        assert outcomes == {"diverged", "solved", "stuck"}


def test_a_run_in_a_batch_of_1000_has_its_bits_alone():
    lrs = np.geomspace(0.05, 2000, 1000)
    specs = [RunSpec(lr=float(lr), seed=s, iterations=300) for s, lr in enumerate(lrs)]
    batched = train(specs, chunk_size=1000)
    for i in (0, 1, 500, 998, 999):
        [alone] = train([specs[i]])
        assert _bits(alone) == _bits(batched[i])


@pytest.mark.parametrize("hidden_units", [1, 2, 3, 5, 9, 32])
@pytest.mark.parametrize("runs", [1, 7, 1000])
def test_engine_forward_has_the_bits_of_nn_forward(hidden_units, runs):
    rng = np.random.RandomState(hidden_units)
    block = rng.randn(nn.n_params(hidden_units), runs) * 4  # wide weights: saturated units too
    bufs = engine._Buffers(block.copy(), np.zeros(runs))
    engine._forward(bufs)
    yhat, hidden = nn.forward(block, X)
    assert bufs.yhat.tobytes() == yhat.tobytes()
    assert bufs.z.tobytes() == hidden.tobytes()


@pytest.mark.parametrize("hidden_units", [1, 4, 9])
def test_gradients_of_a_run_do_not_depend_on_its_batch(hidden_units):
    block = nn.init_params(hidden_units, range(50))
    loss, grads = engine.gradients(block)
    for r in (0, 17, 49):
        loss_alone, grads_alone = engine.gradients(block[:, r : r + 1])
        assert loss_alone.tobytes() == loss[r : r + 1].tobytes()
        assert grads_alone.tobytes() == np.ascontiguousarray(grads[:, r : r + 1]).tobytes()
