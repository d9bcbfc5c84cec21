"""A bias added to every row, and its gradient, the sum over rows: the two halves of a
linear layer's bias, on all threads (NumPy runs both on one). F.linear adds the bias with
`add_bias` after products too small for the GEMM, and sums its gradient with `sum_rows` when
the weight needs no gradient; otherwise the GEMM does both (`gemm_kernel.linear`,
`gemm_kernel.weight_gradients`).

`add_bias(y, b)` adds b (N,) to each row of y (..., N) in place. `sum_rows(g)` sums g
(..., N) over all leading axes: each thread sums a block of rows into its own partial sum,
in float64, and the partials are added at the end (no two threads write the same value).
"""
import numpy as np
from numba import prange

from . import checks
from .threads import jit

BLOCK = 64   # rows per task


@jit(parallel=True)
def _add_bias(y, b):
    for r in prange(y.shape[0]):
        yr = y[r]
        for j in range(yr.size):
            yr[j] += b[j]


@jit(parallel=True)
def _sum_rows(g, out):
    R, N = g.shape
    tasks = (R + BLOCK - 1) // BLOCK
    parts = np.zeros((tasks, N))
    for t in prange(tasks):
        acc = parts[t]
        for i in range(min(BLOCK, R - t * BLOCK)):
            gr = g[t * BLOCK + i]
            for j in range(N):
                acc[j] += gr[j]
    for j in range(N):
        s = 0.0
        for t in range(tasks):
            s += parts[t, j]
        out[j] = s


def add_bias(y, b):
    """Fast `reference.add_bias` (minillm/engine/reference.py): y += b over the last axis, in
    place; returns y (a C-contiguous float array)."""
    checks.writable("add_bias", "y", y)
    checks.at_least_1d("add_bias", "y", y)
    if np.shape(b) != y.shape[-1:]:
        raise ValueError(f"add_bias: b must have shape {y.shape[-1:]}, got {np.shape(b)}")
    b = checks.real("add_bias", "b", b, y.dtype)
    if np.may_share_memory(y, b):   # b a view into y: rows written first would change it
        b = b.copy()
    if y.size:
        _add_bias(y.reshape(-1, y.shape[-1]), b)
    return y


def sum_rows(g):
    """Fast `reference.sum_rows` (minillm/engine/reference.py): g summed over every axis but the
    last: shape (N,), g's dtype."""
    checks.at_least_1d("sum_rows", "g", g)
    (g,) = checks.floats("sum_rows", g=g)
    out = np.zeros(g.shape[-1], g.dtype)
    if g.size:
        _sum_rows(checks.rows2d(g), out)
    return out
