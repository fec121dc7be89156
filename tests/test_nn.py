"""The network math: the spec's reference values, finite differences, and one SGD step worked by hand."""

import numpy as np
import pytest

from tests import reference
from xorexp import nn
from xorexp import train as engine
from xorexp.data import X, Y
from xorexp.train import gradients


def test_helpers_match_spec_values():
    out = nn.affine(np.array([[1, 1], [2, 2]]), np.array([[1], [1]]), np.array([[1], [2]]))
    assert out.tolist() == [[3], [6]]
    assert nn.sigmoid(np.array([0.1]))[0] == pytest.approx(0.52497918747894, abs=1e-13)


def test_init_draws_w1_b1_w2_b2_from_a_fresh_legacy_randomstate_in_order():
    seeds = [0, 1, 42, 7, 2**32 - 1, 123_456]
    for h in (1, 2, 3, 9):
        block = nn.init_params(h, seeds)
        for r, seed in enumerate(seeds):
            rng = np.random.RandomState(seed)
            want = [rng.randn(h, 2), rng.randn(h, 1), rng.randn(1, h), rng.randn(1, 1)]
            got = nn.unpack(block[:, r])
            for key, array in zip(("W1", "B1", "W2", "B2"), want, strict=True):
                assert got[key].shape == array.shape and got[key].tobytes() == array.tobytes(), (h, seed, key)


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


def test_one_sgd_step_worked_by_hand():
    """h = 1, lr = 1/2, weights chosen so that every sigmoid is 1/4, 1/2 or 3/4 (sigmoid(±ln 3) = 3/4, 1/4).

    By hand, samples (x1, x2) = (0,0), (0,1), (1,0), (1,1), targets Y = 0, 1, 1, 0:
      Z1 = ln3·x1 - ln3·x2 + 0 = 0, -ln3, ln3, 0          H = 1/2, 1/4, 3/4, 1/2
      Z2 = 4ln3·H - 2ln3         = 0, -ln3, ln3, 0          YHat = 1/2, 1/4, 3/4, 1/2
      loss = -(ln 1/2 + ln 1/4 + ln 3/4 + ln 1/2) / 4 = (6 ln2 - ln3) / 4
      dZ2 = (YHat - Y) / 4 = 1/8, -3/16, -1/16, 1/8
      dW2 = sum dZ2·H = 1/16 - 3/64 - 3/64 + 1/16 = 1/32      dB2 = 1/8 - 3/16 - 1/16 + 1/8 = 0
      dZ1 = 4ln3·dZ2·H(1-H) = 4ln3·(1/8·1/4, -3/16·3/16, -1/16·3/16, 1/8·1/4) = ln3·(8, -9, -3, 8)/64
      dW1 = (sum dZ1·x1, sum dZ1·x2) = ln3·(-3 + 8, -9 + 8)/64 = (5 ln3/64, -ln3/64)
      dB1 = ln3·(8 - 9 - 3 + 8)/64 = ln3/16
    Step, param -= 1/2 · grad:
      W1 = (ln3 - 5ln3/128, -ln3 + ln3/128)   B1 = -ln3/32   W2 = 4ln3 - 1/64   B2 = -2ln3
    """
    ln3, ln2 = np.log(3.0), np.log(2.0)
    block = nn.pack(np.array([[ln3, -ln3]]), np.array([[0.0]]), np.array([[4 * ln3]]), np.array([[-2 * ln3]]))
    block = block[:, None]  # one run

    yhat, hidden = nn.forward(block, X)
    np.testing.assert_allclose(hidden[:, 0, 0], [1 / 2, 1 / 4, 3 / 4, 1 / 2], rtol=0, atol=1e-15)
    np.testing.assert_allclose(yhat[:, 0], [1 / 2, 1 / 4, 3 / 4, 1 / 2], rtol=0, atol=1e-15)
    assert nn.bce_loss(yhat, Y[0])[0] == pytest.approx((6 * ln2 - ln3) / 4, abs=1e-15)

    loss, grads = gradients(block)
    assert loss[0] == pytest.approx((6 * ln2 - ln3) / 4, abs=1e-15)
    got = nn.unpack(grads[:, 0])
    want = {"W1": [[5 * ln3 / 64, -ln3 / 64]], "B1": [[ln3 / 16]], "W2": [[1 / 32]], "B2": [[0.0]]}
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=0, atol=1e-12, err_msg=key)

    bufs = engine._Buffers(block.copy(), np.array([0.5]))  # the training loop's own step
    engine._forward(bufs)
    engine._backward(bufs)
    engine._update(bufs)
    stepped = nn.unpack(bufs.block[:, 0])
    want = {
        "W1": [[ln3 - 5 * ln3 / 128, -ln3 + ln3 / 128]],
        "B1": [[-ln3 / 32]],
        "W2": [[4 * ln3 - 1 / 64]],
        "B2": [[-2 * ln3]],
    }
    for key, value in want.items():
        np.testing.assert_allclose(stepped[key], value, rtol=0, atol=1e-12, err_msg=key)
