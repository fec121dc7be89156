"""The network math against the spec's reference values, finite differences and a hand-worked step."""

import numpy as np
import pytest

from tests import reference
from xorexp import nn
from xorexp.data import X, Y
from xorexp.train import gradients


def test_helpers_match_spec_values():
    out = nn.affine(np.array([[1, 1], [2, 2]]), np.array([[1], [1]]), np.array([[1], [2]]))
    assert out.tolist() == [[3], [6]]
    assert nn.sigmoid(np.array([0.1]))[0] == pytest.approx(0.52497918747894, abs=1e-13)


def test_init_draws_w1_b1_w2_b2_from_legacy_randomstate_in_order():
    rng = np.random.RandomState(42)
    expected = [rng.randn(3, 2), rng.randn(3, 1), rng.randn(1, 3), rng.randn(1, 1)]
    got = nn.unpack(nn.init_params(3, [42])[:, 0])
    for key, want in zip(["W1", "B1", "W2", "B2"], expected, strict=True):
        np.testing.assert_array_equal(got[key], want)


def test_init_leaves_global_random_state_alone():
    np.random.seed(7)
    before = np.random.get_state()[1].copy()
    nn.init_params(4, [1, 2, 3])
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_one_forward_pass_matches_spec_reference_2():
    block = nn.init_params(2, [42])
    x = np.array([[0.5], [0.1]])
    yhat, hidden = nn.forward(block, x)
    np.testing.assert_allclose(hidden[0, :, 0], [0.50009432, 0.560209], atol=5e-9)
    assert yhat[0, 0] == pytest.approx(0.67922332, abs=5e-9)
    assert nn.bce_loss(yhat, np.array([1.0]))[0] == pytest.approx(0.3868053036181012, abs=1e-12)
    z1, _, z2, _ = reference.forward([nn.unpack(block[:, 0])[k] for k in ("W1", "B1", "W2", "B2")], x)
    np.testing.assert_allclose(z1[:, 0], [0.00037727, 0.2420103], atol=5e-9)
    assert z2[0, 0] == pytest.approx(0.75020481, abs=5e-9)


def test_loss_is_the_spec_formula_and_zero_for_a_correctly_saturated_output():
    yhat = np.array([[0.1, 0.7], [0.8, 0.6], [0.9, 0.55], [0.2, 0.4]])  # (4 samples, 2 runs)
    for r in range(2):
        assert nn.bce_loss(yhat, Y[0])[r] == reference.loss(yhat[:, r][None, :], Y)
    saturated = np.array([[0.0], [1.0], [1.0], [0.0]])
    assert nn.bce_loss(saturated, Y[0])[0] == 0.0
    wrong = np.array([[1.0], [1.0], [1.0], [0.0]])
    with np.errstate(divide="ignore"):
        assert nn.bce_loss(wrong, Y[0])[0] == np.inf


@pytest.mark.parametrize("hidden_units", [1, 2, 5])
def test_gradients_match_central_differences(hidden_units):
    block = nn.init_params(hidden_units, [3, 11])
    _, grads = gradients(block)
    eps = 1e-6
    for row in range(block.shape[0]):
        for r in range(block.shape[1]):
            plus, minus = block.copy(), block.copy()
            plus[row, r] += eps
            minus[row, r] -= eps
            up = nn.bce_loss(nn.forward(plus, X)[0], Y[0])[r]
            down = nn.bce_loss(nn.forward(minus, X)[0], Y[0])[r]
            numeric = (up - down) / (2 * eps)
            assert grads[row, r] == pytest.approx(numeric, abs=1e-8)


def test_gradients_match_the_spec_backprop():
    block = nn.init_params(3, [5])
    _, grads = gradients(block)
    params = nn.unpack(block[:, 0])
    ref = reference.gradients([params[k] for k in ("W1", "B1", "W2", "B2")], X, Y)
    got = nn.unpack(grads[:, 0])
    for key, want in zip(("W1", "B1", "W2", "B2"), ref, strict=True):
        np.testing.assert_allclose(got[key], want, rtol=0, atol=1e-15)


def test_pack_unpack_round_trip():
    rng = np.random.RandomState(0)
    arrays = [rng.randn(4, 2), rng.randn(4, 1), rng.randn(1, 4), rng.randn(1, 1)]
    back = nn.unpack(nn.pack(*arrays))
    for key, want in zip(("W1", "B1", "W2", "B2"), arrays, strict=True):
        np.testing.assert_array_equal(back[key], want)
