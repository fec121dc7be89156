"""The training engine: plain gradient descent on a batch of runs, one set of array operations.

A single run is a batch of one. Runs in a batch share ``hidden_units`` and ``trace_every``; each has
its own seed, lr, iterations and stop_loss. A run's numbers never depend on its batch: every
operation is elementwise per run (see ``nn``), and runs that finish are copied out and dropped.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from xorexp import nn
from xorexp.data import N_SAMPLES, X, Y

SEED_MAX = 2**32 - 1
HIDDEN_UNITS_MAX = 1_000_000  # one such run needs a few hundred MB; more would not fit a machine
UNITS_PER_BATCH = 2_000_000  # runs x hidden_units in one engine batch: each (4, h, R) array <= 64 MB
Progress = Callable[[int, int], None]  # progress(step, total steps of the batch)
OUTCOMES = ("solved", "stuck", "diverged")

_Y = Y[0]  # (4,)
_Y_COL = Y[0][:, None]  # (4, 1)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# key -> (test, what is allowed); the single source of the config's value rules
RULES = {
    "hidden_units": (
        lambda v: _is_int(v) and 1 <= v <= HIDDEN_UNITS_MAX,
        f"an integer in [1, {HIDDEN_UNITS_MAX}] (memory grows with it)",
    ),
    "lr": (lambda v: _is_real(v) and math.isfinite(v) and v > 0, "a finite number > 0"),
    "iterations": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "seed": (lambda v: _is_int(v) and 0 <= v <= SEED_MAX, f"an integer in [0, {SEED_MAX}]"),
    "trace_every": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "stop_loss": (
        lambda v: v is None or (_is_real(v) and math.isfinite(v) and v > 0),
        "null or a finite number > 0",
    ),
}


def check_value(key: str, value: object) -> str | None:
    """None when ``value`` is allowed for ``key``, else a one-line reason naming key and rule."""
    test, allowed = RULES[key]
    if test(value):
        return None
    return f"{key}={value!r} is not allowed: {key} must be {allowed}"


@dataclass(frozen=True)
class RunSpec:
    """Everything that shapes a run's numbers."""

    hidden_units: int = 2
    lr: float = 0.1
    iterations: int = 150_000
    seed: int = 42
    trace_every: int = 100
    stop_loss: float | None = None

    def __post_init__(self) -> None:
        for key in RULES:
            problem = check_value(key, getattr(self, key))
            if problem:
                raise ValueError(problem)
        # canonical Python types, so hashes and logged params do not depend on where values came from
        object.__setattr__(self, "lr", float(self.lr))
        for key in ("hidden_units", "iterations", "seed", "trace_every"):
            object.__setattr__(self, key, int(getattr(self, key)))
        if self.stop_loss is not None:
            object.__setattr__(self, "stop_loss", float(self.stop_loss))


@dataclass
class RunResult:
    spec: RunSpec
    loss_trace: np.ndarray  # (n,): loss at steps 0, trace_every, 2*trace_every, ...
    params: np.ndarray  # (4h + 1,): final parameters, one column of an ``nn`` block
    predictions: np.ndarray  # (4,): fresh forward pass with the final parameters
    final_loss: float  # loss of ``predictions``; inf or nan when diverged
    steps: int  # gradient steps actually taken
    outcome: str  # one of OUTCOMES
    # first trace step at which all four outputs were right; a run right only after its last trace
    # step gets its final step count
    solved_at: int | None = None
    trace_steps: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.trace_steps = np.arange(len(self.loss_trace)) * self.spec.trace_every

    @property
    def accuracy(self) -> float:
        return float(np.mean(np.abs(self.predictions - _Y) < 0.5))

    def arrays(self) -> dict[str, np.ndarray]:
        """The trained parameters in the spec's shapes (W1, B1, W2, B2)."""
        return nn.unpack(self.params)


class _Buffers:
    """A batch's parameter block, its views, and preallocated work arrays (R runs, h hidden units).

    A step is ~30 NumPy calls whatever R, each with a fixed cost of ~0.5 µs when its operands are
    C-contiguous and of one shape, ~2 µs when NumPy must build an iterator (broadcasting, strided
    views). So results go ``out=`` into these arrays, operands are whole contiguous slabs where the
    math allows, and constants (Y, lr) are pre-broadcast to full shape once per batch.
    """

    def __init__(self, block: np.ndarray, lr: np.ndarray) -> None:
        n_rows, r = block.shape
        h = (n_rows - 1) // 4
        self.h = h
        self.block = block  # (4h + 1, R), C-contiguous; updated in place by ``_update``
        self.p = nn.layers(block)
        self.lr = np.ascontiguousarray(np.broadcast_to(lr, block.shape))  # (4h + 1, R)
        self.y = np.ascontiguousarray(np.broadcast_to(_Y_COL, (N_SAMPLES, r)))  # (4, R)
        self.z = np.empty((N_SAMPLES, h, r))  # -Z1, then H in place (contiguous: one SIMD exp)
        self.one_minus_h = np.empty((N_SAMPLES, h, r))
        self.t = np.empty((N_SAMPLES, h, r))  # products to be summed: W2[j] * H[n, j], dZ2[n] * H[n, j]
        self.d = np.empty((N_SAMPLES, h, r))  # dH, then dZ1 in place
        self.yhat = np.empty((N_SAMPLES, r))  # W2 · H, then -Z2, then YHat in place
        self.dz2 = np.empty((N_SAMPLES, r))
        self.dz2_b = self.dz2[:, None, :]  # (4, 1, R) view, broadcasts over units
        self.grads = np.empty((nn.n_params(h), r))  # (4h + 1, R), rows as in ``nn.layers``
        self.g = nn.layers(self.grads)


def _forward(b: _Buffers) -> None:
    """YHat into ``b.yhat`` and H into ``b.z``; same bits as ``nn.forward(block, X)``.

    X's columns are (0,0), (0,1), (1,0), (1,1), so W1 · X + B1 needs adds only. We build -Z1 (the
    argument of exp) directly: IEEE negation is exact and rounding is symmetric, so
    -B1 - W1[:, 1] has the bits of -(W1[:, 1] + B1), and no separate negation pass is needed.
    """
    p, z = b.p, b.z
    np.negative(p.b1, out=z[0])  # -Z1 (4, h, R), sample (0, 0): -B1
    np.subtract(z[0], p.w1b, out=z[1])  # (0, 1)
    np.subtract(z[0], p.w1a, out=z[2])  # (1, 0)
    np.add(p.w1a, p.w1b, out=z[3])
    np.subtract(z[0], z[3], out=z[3])  # (1, 1): -B1 - (W1[:, 0] + W1[:, 1])
    hidden = nn.sigmoid_of_negated(z, out=z)  # H (4, h, R)
    np.multiply(hidden, p.w2, out=b.t)  # W2[j] * H[n, j]  (4, h, R)
    nn.sum_over_units(b.t, out=b.yhat)  # W2 · H  (4, R)
    b.yhat += p.b2  # Z2
    np.negative(b.yhat, out=b.yhat)
    nn.sigmoid_of_negated(b.yhat, out=b.yhat)  # YHat (4, R)


def _backward(b: _Buffers) -> None:
    """Gradients of the spec (hand-written backprop) into ``b.grads``, after ``_forward``.

    Sums over the 4 samples are fixed sequences of elementwise adds on contiguous (h, R) slabs;
    any fixed order is batch-invariant, we pick the one with the fewest and cheapest calls.
    """
    p, g, hidden, t, d, dz2 = b.p, b.g, b.z, b.t, b.d, b.dz2
    np.subtract(b.yhat, b.y, out=dz2)
    dz2 *= 1.0 / N_SAMPLES  # dZ2 = (YHat - Y) / m  (4, R); m = 4, so * 0.25 has the bits of / 4
    np.multiply(hidden, b.dz2_b, out=t)  # dZ2[n] * H[n, j]  (4, h, R)
    t[0:2] += t[2:4]  # fold samples: (0 + 2), (1 + 3)
    np.add(t[0], t[1], out=g.w2)  # dW2 = dZ2 · Hᵀ  (h, R)
    np.multiply(p.w2, b.dz2_b, out=d)  # dH = W2ᵀ · dZ2  (4, h, R)
    dz2[0:2] += dz2[2:4]
    np.add(dz2[0], dz2[1], out=g.b2)  # dB2 = sum of dZ2 (R,); dz2 is spent now
    d *= hidden
    np.subtract(1.0, hidden, out=b.one_minus_h)
    d *= b.one_minus_h  # dZ1 = dH * H * (1 - H)  (4, h, R)
    np.add(d[2], d[3], out=g.w1a)  # dW1 = dZ1 · Xᵀ: x1 is 1 on samples 2, 3  (h, R)
    np.add(d[1], d[3], out=g.w1b)  # x2 is 1 on samples 1, 3
    d[0] += d[1]
    np.add(d[0], g.w1a, out=g.b1)  # dB1 = (dZ1[0] + dZ1[1]) + (dZ1[2] + dZ1[3])  (h, R)


def _update(b: _Buffers) -> None:
    """block -= lr * grads, per run."""
    b.grads *= b.lr
    b.block -= b.grads


def gradients(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Loss (R,) and gradient block (4h + 1, R) on XOR at ``block``, from the engine's own code."""
    bufs = _Buffers(np.array(block, dtype=float, order="C"), np.zeros(block.shape[1]))
    _forward(bufs)
    loss = nn.bce_loss(bufs.yhat, _Y)
    _backward(bufs)
    return loss, bufs.grads


def _train_batch(specs: Sequence[RunSpec], progress: Progress | None = None) -> list[RunResult]:
    """Train runs sharing hidden_units and trace_every as one batch."""
    h, every = specs[0].hidden_units, specs[0].trace_every
    n = len(specs)
    iterations = np.array([s.iterations for s in specs])
    stop_loss = np.array([-np.inf if s.stop_loss is None else s.stop_loss for s in specs])
    n_trace = (iterations - 1) // every + 1
    trace = np.full((int(n_trace.max()), n), np.nan)  # (points, runs)
    trace_len = np.zeros(n, dtype=int)
    final = np.empty((nn.n_params(h), n))
    steps = iterations.copy()
    solved_at = np.full(n, -1)
    diverged = np.zeros(n, dtype=bool)

    active = np.arange(n)  # runs still training, by index into specs
    lr = np.array([s.lr for s in specs])
    bufs = _Buffers(nn.init_params(h, [s.seed for s in specs]), lr)
    next_end = int(iterations.min())  # first step count at which an active run is due to stop

    def retire(done: np.ndarray, at_step: int) -> None:
        nonlocal active, lr, bufs, next_end
        final[:, active[done]] = bufs.block[:, done]
        steps[active[done]] = at_step
        keep = ~done
        active, lr = active[keep], lr[keep]
        if len(active):
            bufs = _Buffers(np.ascontiguousarray(bufs.block[:, keep]), lr)
            next_end = int(iterations[active].min())

    with np.errstate(all="ignore"):
        for step in range(int(iterations.max())):
            _forward(bufs)
            if step % every == 0:  # the loss only on trace steps (it costs ~20% of a step)
                if progress is not None:
                    progress(step, int(iterations.max()))
                loss = nn.bce_loss(bufs.yhat, _Y)
                bad = ~(np.isfinite(loss) & np.isfinite(bufs.block).all(axis=0))
                ok = ~bad
                k = step // every
                trace[k, active[ok]] = loss[ok]
                trace_len[active[ok]] = k + 1
                newly = ok & nn.is_solved(bufs.yhat, _Y) & (solved_at[active] < 0)
                solved_at[active[newly]] = step
                diverged[active[bad]] = True
                done = bad | (ok & (loss < stop_loss[active]))
                if done.any():
                    retire(done, step)
                    if not len(active):
                        break
                    _forward(bufs)
            _backward(bufs)
            _update(bufs)
            if step + 1 == next_end:  # a plain int compare: no NumPy call on ordinary steps
                retire(iterations[active] == next_end, next_end)
                if not len(active):
                    break

        predictions, _ = nn.forward(final, X)  # (4, n)
        final_loss = nn.bce_loss(predictions, _Y)
        solved = nn.is_solved(predictions, _Y)
        finite = np.isfinite(final).all(axis=0) & np.isfinite(final_loss)

    results = []
    for i, spec in enumerate(specs):
        if diverged[i] or not finite[i]:
            outcome = "diverged"
        else:
            outcome = "solved" if solved[i] else "stuck"
        if outcome == "solved" and solved_at[i] < 0:  # became right after its last trace step
            solved_at[i] = steps[i]
        results.append(
            RunResult(
                spec=spec,
                loss_trace=trace[: trace_len[i], i].copy(),
                params=final[:, i].copy(),
                predictions=predictions[:, i].copy(),
                final_loss=float(final_loss[i]),
                steps=int(steps[i]),
                outcome=outcome,
                solved_at=int(solved_at[i]) if solved_at[i] >= 0 else None,
            )
        )
    return results


def batch_key(spec: RunSpec) -> tuple[int, int]:
    """Runs with equal keys can share a batch."""
    return spec.hidden_units, spec.trace_every


def plan_batches(specs: Sequence[RunSpec], chunk_size: int) -> list[list[int]]:
    """Indices of ``specs`` in engine batches: same batch key, at most ``chunk_size`` runs each,
    and at most ``UNITS_PER_BATCH`` hidden units in all, so a batch's memory is bounded."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, spec in enumerate(specs):
        groups.setdefault(batch_key(spec), []).append(i)
    batches = []
    for members in groups.values():
        size = max(1, min(chunk_size, UNITS_PER_BATCH // specs[members[0]].hidden_units))
        batches += [members[start : start + size] for start in range(0, len(members), size)]
    return batches


def train(
    specs: Sequence[RunSpec], chunk_size: int = 2000, progress: Progress | None = None
) -> list[RunResult]:
    """Train every run; results in the order of ``specs``. Batches of at most ``chunk_size`` runs.

    ``progress(step, total)`` is called at every trace step of each batch, if given.
    """
    results: list[RunResult | None] = [None] * len(specs)
    for batch in plan_batches(specs, chunk_size):
        for i, result in zip(batch, _train_batch([specs[i] for i in batch], progress), strict=True):
            results[i] = result
    return results  # type: ignore[return-value]
