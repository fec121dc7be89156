"""Figures of one run, drawn with matplotlib's object API (no pyplot global state).

Functions return Figures; they never save or log them.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from xorexp import nn
from xorexp.data import X, Y

_GRID = 81  # points per side of the decision-boundary grid


def learning_curve(steps: np.ndarray, loss_trace: np.ndarray, title: str = "") -> Figure:
    fig = Figure(figsize=(4.8, 3.2), dpi=80, layout="constrained")
    ax = fig.add_subplot()
    if len(loss_trace):
        ax.plot(steps, loss_trace, color="tab:blue", linewidth=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (binary cross-entropy)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    return fig


def decision_boundary(params: np.ndarray, title: str = "") -> Figure:
    """Network output over the input square [-0.25, 1.25]², the four XOR points marked."""
    axis = np.linspace(-0.25, 1.25, _GRID)
    gx, gy = np.meshgrid(axis, axis)
    with np.errstate(all="ignore"):
        out, _ = nn.forward(np.asarray(params, dtype=float)[:, None], np.stack([gx.ravel(), gy.ravel()]))
    surface = out[:, 0].reshape(gx.shape)
    fig = Figure(figsize=(4.0, 3.4), dpi=80, layout="constrained")
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(gx, gy, surface, vmin=0.0, vmax=1.0, cmap="RdBu_r", shading="auto")
    if np.isfinite(surface).all():
        ax.contour(gx, gy, surface, levels=[0.5], colors="k", linewidths=1.0)
    colors = ["tab:blue" if t == 0 else "tab:red" for t in Y[0]]
    ax.scatter(X[0], X[1], c=colors, edgecolors="k", s=70, zorder=3)
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    fig.colorbar(mesh, ax=ax, label="output")
    return fig
