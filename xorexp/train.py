"""The training engine: plain gradient descent on a batch of runs, one set of array operations.

A single run is a batch of one. Runs in a batch share ``hidden_units`` and ``trace_every``; each has
its own seed, lr, iterations and stop_loss. A run's numbers never depend on its batch: every
operation is elementwise per run (see ``nn``), and runs that finish are copied out and dropped.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from xorexp import nn
from xorexp.data import N_SAMPLES, X, Y

SEED_MAX = 2**32 - 1
OUTCOMES = ("solved", "stuck", "diverged")

_Y = Y[0]  # (4,)
_Y_COL = Y[0][:, None]  # (4, 1)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# key -> (test, what is allowed); the single source of the config's value rules
RULES = {
    "hidden_units": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
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
    solved_at: int | None = None  # first trace step at which all four outputs were right
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
    """Preallocated work arrays and their views for a batch of R runs at h hidden units."""

    def __init__(self, hidden_units: int, n_runs: int) -> None:
        h, r = hidden_units, n_runs
        self.h = h
        self.z = np.empty((N_SAMPLES, h, r))  # Z1, then H in place
        self.t = np.empty((N_SAMPLES, h, r))  # products to be summed
        self.d = np.empty((N_SAMPLES, h, r))  # dH, then dZ1 in place
        self.yhat = np.empty((N_SAMPLES, r))  # Z2, then YHat in place
        self.dz2 = np.empty((N_SAMPLES, r))
        self.grads = np.empty((nn.n_params(h), r))
        self.g = nn.layers(self.grads)
        self.z_n = list(self.z)  # per-sample views (h, R)
        self.t_n = list(self.t)
        self.d_n = list(self.d)
        self.t_j = [self.t[:, j, :] for j in range(h)]  # per-unit views (4, R)
        self.dz2_n = list(self.dz2)
        self.dz2_b = self.dz2[:, None, :]  # (4, 1, R) for broadcasting over units


def _forward(p: nn.Layers, b: _Buffers) -> None:
    """YHat into ``b.yhat`` and H into ``b.z``; same bits as ``nn.forward(block, X)``."""
    z = b.z_n  # X columns are (0,0), (0,1), (1,0), (1,1): W1·X + B1 needs adds only
    np.copyto(z[0], p.b1)
    np.add(p.w1b, p.b1, out=z[1])
    np.add(p.w1a, p.b1, out=z[2])
    np.add(p.w1a, p.w1b, out=z[3])
    z[3] += p.b1
    hidden = nn.sigmoid(b.z, out=b.z)  # (4, h, R)
    np.multiply(hidden, p.w2, out=b.t)  # (4, h, R): W2[j] * H[n, j]
    if b.h == 1:
        np.copyto(b.yhat, b.t_j[0])
    else:
        np.add(b.t_j[0], b.t_j[1], out=b.yhat)
        for j in range(2, b.h):
            b.yhat += b.t_j[j]
    b.yhat += p.b2  # Z2 (4, R)
    nn.sigmoid(b.yhat, out=b.yhat)


def _backward(p: nn.Layers, b: _Buffers) -> None:
    """Gradients of the spec (hand-written backprop) into ``b.grads``, after ``_forward``."""
    g, hidden, t, d, dz2 = b.g, b.z, b.t_n, b.d_n, b.dz2_n
    np.subtract(b.yhat, _Y_COL, out=b.dz2)
    b.dz2 /= N_SAMPLES  # dZ2 (4, R)
    np.multiply(hidden, b.dz2_b, out=b.t)  # dZ2[n] * H[n, j] (4, h, R)
    dw2, db2, db1 = g.w2, g.b2, g.b1
    np.add(t[0], t[1], out=dw2)  # dW2 = dZ2 · Hᵀ  (h, R)
    dw2 += t[2]
    dw2 += t[3]
    np.add(dz2[0], dz2[1], out=db2)  # dB2 (R,)
    db2 += dz2[2]
    db2 += dz2[3]
    np.multiply(p.w2, b.dz2_b, out=b.d)  # dH = W2ᵀ · dZ2 (4, h, R)
    b.d *= hidden
    np.subtract(1.0, hidden, out=b.t)
    b.d *= b.t  # dZ1 = dH * H * (1 - H)
    np.add(d[2], d[3], out=g.w1a)  # dW1 = dZ1 · Xᵀ: x1 is 1 on samples 2, 3
    np.add(d[1], d[3], out=g.w1b)  # x2 is 1 on samples 1, 3
    np.add(d[0], d[1], out=db1)  # dB1 (h, R)
    db1 += d[2]
    db1 += d[3]


def _update(block: np.ndarray, lr: np.ndarray, b: _Buffers) -> None:
    """block -= lr * grads, per run."""
    b.grads *= lr
    block -= b.grads


def gradients(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Loss (R,) and gradient block (4h + 1, R) on XOR at ``block``, from the engine's own code."""
    h = (block.shape[0] - 1) // 4
    bufs = _Buffers(h, block.shape[1])
    work = np.array(block, dtype=float, order="C")
    p = nn.layers(work)
    _forward(p, bufs)
    loss = nn.bce_loss(bufs.yhat, _Y)
    _backward(p, bufs)
    return loss, bufs.grads


def _train_batch(specs: Sequence[RunSpec]) -> list[RunResult]:
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
    block = nn.init_params(h, [s.seed for s in specs])
    lr = np.array([s.lr for s in specs])
    bufs = _Buffers(h, n)
    p = nn.layers(block)

    def retire(done: np.ndarray, at_step: int) -> None:
        nonlocal active, block, lr, bufs, p
        final[:, active[done]] = block[:, done]
        steps[active[done]] = at_step
        keep = ~done
        active, block, lr = active[keep], np.ascontiguousarray(block[:, keep]), lr[keep]
        if len(active):
            bufs = _Buffers(h, len(active))
            p = nn.layers(block)

    with np.errstate(all="ignore"):
        for step in range(int(iterations.max())):
            _forward(p, bufs)
            if step % every == 0:
                loss = nn.bce_loss(bufs.yhat, _Y)
                bad = ~(np.isfinite(loss) & np.isfinite(block).all(axis=0))
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
                    _forward(p, bufs)
            _backward(p, bufs)
            _update(block, lr, bufs)
            done = iterations[active] == step + 1
            if done.any():
                retire(done, step + 1)
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


def train(specs: Sequence[RunSpec], chunk_size: int = 2000) -> list[RunResult]:
    """Train every run; results in the order of ``specs``. Batches of at most ``chunk_size`` runs."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, spec in enumerate(specs):
        groups.setdefault(batch_key(spec), []).append(i)
    results: list[RunResult | None] = [None] * len(specs)
    for members in groups.values():
        for start in range(0, len(members), chunk_size):
            chunk = members[start : start + chunk_size]
            for i, result in zip(chunk, _train_batch([specs[i] for i in chunk]), strict=True):
                results[i] = result
    return results  # type: ignore[return-value]
