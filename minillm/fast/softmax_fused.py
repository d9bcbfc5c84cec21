"""Fused, masked softmax and log-softmax over the last axis, forward and backward.

Definitions: `softmax`, `softmax_backward`, `log_softmax`, `log_softmax_backward` in
minillm/engine/reference.py.

Why one pass per row instead of NumPy's chain (`max`, `where`, `exp`, `sum`, `/`): each
NumPy call reads and writes the whole array, so a masked softmax streams ~8 full-size arrays
through memory. Here each row (a few hundred floats, in L1 cache) is read once for its
maximum, once to exponentiate and sum, and written once: memory traffic drops to ~2 arrays
and rows run on all threads (`prange`).

What makes the loops fast:
  * `vexp` (vmath.py) instead of `np.exp`, which is a scalar libm call here; with it the
    inner loops are plain arithmetic that LLVM vectorises.
  * The mask is never expanded to x's shape: `checks.mask_rows` keeps each distinct mask row
    once and hands the kernel an index per row (a causal (T, T) mask against (B, H, T, T)
    scores is read as its T rows).
  * Masked entries are selected (`e if keep else 0`), not branched around, so the loop body
    stays straight-line code; every loop starts at 0 (loops with non-zero start stay scalar).
  * Rows that keep nothing give all zeros: the row max is then -inf and we skip the row.
"""
import math

import numpy as np
from numba import prange

from . import checks
from .threads import EXACT, jit
from .vmath import vexp, vmax


@jit()
def _row_max(xr, keep, n):
    """Max over kept entries; -inf when nothing is kept."""
    m = ninf = xr.dtype.type(-np.inf)
    for j in range(n):
        m = vmax(m, xr[j] if keep[j] else ninf)
    return m


@jit()
def _row_exp(xr, keep, n, m, o):
    """o[j] = exp(x[j] - m) on kept entries, 0 elsewhere; returns their sum."""
    s = zero = xr.dtype.type(0)   # typed constants: a bare 0 or 1 would promote to float64
    for j in range(n):
        e = vexp(xr[j] - m)
        e = e if keep[j] else zero
        o[j] = e
        s += e
    return s


@jit(parallel=True, fastmath=EXACT)   # no reductions here (they are in _row_max, _row_exp)
def _forward(x, rows, idx, log, out):
    for r in prange(x.shape[0]):
        xr, o, keep = x[r], out[r], rows[idx[r]]
        n = xr.size
        m = _row_max(xr, keep, n)
        if m == -np.inf:              # nothing kept: the row stays zero
            o[:] = 0
            continue
        s = _row_exp(xr, keep, n, m, o)
        if log:   # (x - m) - log s, in this order (EXACT): m + log s would round to m when |m| >> log s
            ls = math.log(s)
            for j in range(n):
                o[j] = (xr[j] - m) - ls if keep[j] else 0
        else:
            inv = x.dtype.type(1) / s
            for j in range(n):
                o[j] *= inv


@jit(parallel=True)
def _softmax_backward(y, dy, out):
    for r in prange(y.shape[0]):
        yr, gr, o = y[r], dy[r], out[r]
        s = y.dtype.type(0)
        for j in range(yr.size):
            s += yr[j] * gr[j]
        for j in range(yr.size):
            o[j] = yr[j] * (gr[j] - s)


@jit(parallel=True)
def _log_softmax_backward(y, dy, rows, idx, out):
    for r in prange(y.shape[0]):
        yr, gr, o, keep = y[r], dy[r], out[r], rows[idx[r]]
        s = zero = y.dtype.type(0)
        for j in range(yr.size):
            s += gr[j] if keep[j] else zero
        for j in range(yr.size):
            o[j] = gr[j] - vexp(yr[j]) * s if keep[j] else 0


def _prepare(fn, x, mask):
    """x checked and promoted, as (x, x as rows, mask rows, mask row of each row of x)."""
    checks.at_least_1d(fn, "x", x)
    (x,) = checks.floats(fn, x=x)
    rows, idx = checks.mask_rows(fn, mask, x.shape)
    if rows is None:   # one all-True row for every row of x: same code path, no copy of x's size
        rows, idx = np.ones((1, x.shape[-1]), bool), np.zeros(int(np.prod(x.shape[:-1])), np.intp)
    return x, checks.rows2d(x), rows, idx


def _run(fn, x, mask, log):
    x, x2, rows, idx = _prepare(fn, x, mask)
    out = np.empty(x.shape, x.dtype)
    if x.size:
        _forward(x2, rows, idx, log, out.reshape(x2.shape))
    return out


def softmax(x, mask=None):
    """Fast `reference.softmax` (minillm/engine/reference.py): exp(x - max) / sum over kept
    entries of the last axis; masked entries and empty rows are 0."""
    return _run("softmax", x, mask, False)


def log_softmax(x, mask=None):
    """Fast `reference.log_softmax` (minillm/engine/reference.py): x - logsumexp(x) over kept
    entries; masked entries and empty rows are 0."""
    return _run("log_softmax", x, mask, True)


def softmax_backward(y, dy):
    """Fast `reference.softmax_backward` (minillm/engine/reference.py): dx = y * (dy - sum(dy * y))
    per row, into a new array."""
    checks.at_least_1d("softmax_backward", "y", y)
    checks.same_shape("softmax_backward", y=y, dy=dy)
    y, dy = checks.floats("softmax_backward", y=y, dy=dy)
    out = np.empty(y.shape, y.dtype)
    if y.size:
        _softmax_backward(checks.rows2d(y), checks.rows2d(dy), checks.rows2d(out))
    return out


def log_softmax_backward(y, dy, mask=None):
    """Fast `reference.log_softmax_backward` (minillm/engine/reference.py): dx = dy - softmax *
    sum(dy) over kept entries (softmax = exp(y)); masked entries get 0."""
    checks.same_shape("log_softmax_backward", y=y, dy=dy)
    y, y2, rows, idx = _prepare("log_softmax_backward", y, mask)
    (dy,) = checks.floats("log_softmax_backward", dy=dy)
    dy = checks.rows2d(dy.astype(y.dtype, copy=False))
    out = np.empty(y.shape, y.dtype)
    if y.size:
        _log_softmax_backward(y2, dy, rows, idx, out.reshape(y2.shape))
    return out
