"""The 2-layer sigmoid network of ``shared/spec/trainer.md``, on stacked runs.

Layout: the parameters of R runs live in one block of shape ``(4h + 1, R)``, runs on the last
(contiguous) axis. Rows ``[0:h]`` hold ``W1[:, 0]``, ``[h:2h]`` hold ``W1[:, 1]``, ``[2h:3h]``
hold ``B1``, ``[3h:4h]`` hold ``W2`` and row ``4h`` holds ``B2``.

Every sum over samples or hidden units is written as a fixed sequence of elementwise adds, never
as ``np.sum``/BLAS, so a run's bits do not depend on how many other runs share its batch.
Elementwise NumPy operations are correctly rounded per element whatever the array's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


def n_params(hidden_units: int) -> int:
    return 4 * hidden_units + 1


class Layers(NamedTuple):
    """Views of a parameter (or gradient) block, one row per unit."""

    w1a: np.ndarray  # (h, R): weight of input x1 (W1[:, 0])
    w1b: np.ndarray  # (h, R): weight of input x2 (W1[:, 1])
    b1: np.ndarray  # (h, R)
    w2: np.ndarray  # (h, R)
    b2: np.ndarray  # (R,)


def layers(block: np.ndarray) -> Layers:
    h = (block.shape[0] - 1) // 4
    return Layers(block[0:h], block[h : 2 * h], block[2 * h : 3 * h], block[3 * h : 4 * h], block[4 * h])


def init_params(hidden_units: int, seeds: Sequence[int]) -> np.ndarray:
    """Parameter block for one run per seed, drawn as the spec orders: W1, B1, W2, B2."""
    h = hidden_units
    block = np.empty((n_params(h), len(seeds)))
    # One private RandomState, reseeded per run: ``seed(s)`` is the legacy seeding that
    # ``RandomState(s)`` runs (Gaussian cache cleared too), so the draws are the same, but it costs
    # ~1 µs where building a RandomState costs ~70 µs (70 ms per 1,000 runs).
    rng = np.random.RandomState()
    for r, seed in enumerate(seeds):
        rng.seed(seed)
        block[:, r] = pack(rng.randn(h, 2), rng.randn(h, 1), rng.randn(1, h), rng.randn(1, 1))
    return block


def pack(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """One run's parameters in the spec's shapes -> one column of a block, shape (4h + 1,)."""
    return np.concatenate([w1[:, 0], w1[:, 1], b1[:, 0], w2[0, :], b2[0, :]])


def unpack(column: np.ndarray) -> dict[str, np.ndarray]:
    """One column of a block -> the spec's arrays W1 (h, 2), B1 (h, 1), W2 (1, h), B2 (1, 1)."""
    w1a, w1b, b1, w2, b2 = layers(np.asarray(column, dtype=float)[:, None])
    return {
        "W1": np.concatenate([w1a, w1b], axis=1),
        "B1": b1.copy(),
        "W2": w2.T.copy(),
        "B2": np.array([[b2[0]]]),
    }


def sigmoid(z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """1 / (1 + exp(-z)), elementwise; ``out`` may be ``z`` itself."""
    return sigmoid_of_negated(np.negative(z, out=out), out=out)


def sigmoid_of_negated(neg_z: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """sigmoid(z) from ``neg_z = -z``: 1 / (1 + exp(neg_z)); ``out`` may be ``neg_z`` itself.

    The engine computes -Z directly (negation is exact, so the bits equal ``sigmoid(z)``) and saves
    a pass. ``np.divide(1.0, .)`` has the bits of ``np.reciprocal`` (both are IEEE division) and is
    about twice as fast in NumPy 2.x. Keep ``neg_z`` C-contiguous: NumPy's SIMD ``exp`` serves
    contiguous arrays, and the engine and ``forward`` must take the same path.
    """
    out = np.exp(neg_z, out=out)
    out += 1.0
    return np.divide(1.0, out, out=out)


def sum_over_units(terms: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Sum of ``terms`` (N, h, R) over the unit axis into ``out`` (N, R); overwrites ``terms``.

    A fixed pairwise order, written as elementwise adds (never ``np.sum``, whose order depends on
    the shape): fold the top half of the units onto the bottom half until two are left, so h units
    take about log2(h) NumPy calls instead of h - 1. For odd widths the middle unit waits a round.
    """
    width = terms.shape[1]
    while width > 2:
        half = width // 2
        top = terms[:, width - half : width]  # (N, half, R), disjoint from the bottom half
        np.add(terms[:, :half], top, out=terms[:, :half])
        width -= half
    if width == 2:
        return np.add(terms[:, 0], terms[:, 1], out=out)
    np.copyto(out, terms[:, 0])  # h = 1
    return out


def affine(w: np.ndarray, x: np.ndarray, b: np.ndarray) -> np.ndarray:
    """W · X + B for one run (the spec's helper), plain NumPy."""
    return np.dot(w, x) + b


def forward(block: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outputs of every run for inputs ``x`` (2, N): returns (YHat (N, R), H (N, h, R)).

    The sums are spelt out in a fixed order; with x in {0, 1} this gives exactly the bits of the
    training engine's own forward pass, so final predictions match the last trained step.
    """
    p = layers(block)
    x = np.asarray(x, dtype=float)
    x1 = x[0][:, None, None]  # (N, 1, 1)
    x2 = x[1][:, None, None]
    z1 = p.w1a * x1  # (N, h, R)
    z1 += p.w1b * x2
    z1 += p.b1
    hidden = sigmoid(z1, out=z1)  # (N, h, R)
    z2 = np.empty((x.shape[1], block.shape[1]))  # (N, R)
    sum_over_units(hidden * p.w2, out=z2)  # W2 · H
    z2 += p.b2
    return sigmoid(z2, out=z2), hidden


def bce_loss(yhat: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Binary cross-entropy per run: yhat (N, R), y (N,) of 0/1 -> (R,).

    Only the log term a target selects is taken: equal, bit for bit, to the spec's
    ``Y*log(YHat) + (1-Y)*log(1-YHat)`` whenever that is finite, and 0 (not 0*log 0 = NaN) for an
    output saturated on the correct side. An output saturated on the wrong side gives +inf.
    """
    total = None
    for n, target in enumerate(y):
        term = np.log(yhat[n]) if target == 1.0 else np.log(1.0 - yhat[n])  # (R,)
        total = term if total is None else total + term
    return -total / len(y)


def is_solved(yhat: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per run: every output within 0.5 of its target. yhat (N, R), y (N,) -> (R,) bool."""
    return (np.abs(yhat - y[:, None]) < 0.5).all(axis=0)
