"""Fused, masked softmax and log-softmax over the last axis, forward and backward.

Why one pass per row instead of NumPy's chain (`max`, `where`, `exp`, `sum`, `/`): each
NumPy call reads and writes the whole array, so a masked softmax streams ~8 full-size arrays
through memory. Here each row (a few hundred floats, in L1 cache) is read once for its
maximum, once to exponentiate and sum, and written once: memory traffic drops to ~2 arrays
and rows run on all threads (`prange`).

What makes the loops fast:
  * `vexp` (vmath.py) instead of `np.exp`, which is a scalar libm call here; with it the
    inner loops are plain arithmetic that LLVM vectorises.
  * The mask is never expanded to x's shape: `checks.mask_rows` keeps each distinct mask row
    once and hands the kernel an index per row. `causal=True` needs no mask at all: row i of
    a (Tq, Tk) block keeps columns j <= i + Tk - Tq, so the loops just stop early.
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
def _forward(x, rows, idx, T, causal, log, out):
    R, N = x.shape
    for r in prange(R):
        xr, o, keep = x[r], out[r], rows[idx[r]]
        n = min(N, max(0, r % T + N - T + 1)) if causal else N   # columns that may be kept
        o[n:] = 0
        m = _row_max(xr, keep, n)
        if m == -np.inf:              # nothing kept: the row stays zero
            o[:n] = 0
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
def _softmax_backward(y, dy, out, in_place):
    for r in prange(y.shape[0]):
        yr, gr = y[r], dy[r]
        s = y.dtype.type(0)
        for j in range(yr.size):
            s += yr[j] * gr[j]
        if in_place:   # written through gr itself: LLVM sees one array, not two that overlap
            for j in range(yr.size):
                gr[j] = yr[j] * (gr[j] - s)
        else:
            o = out[r]
            for j in range(yr.size):
                o[j] = yr[j] * (gr[j] - s)


@jit(parallel=True)
def _log_softmax_backward(y, dy, rows, idx, T, causal, out):
    R, N = y.shape
    for r in prange(R):
        yr, gr, o = y[r], dy[r], out[r]
        n = min(N, max(0, r % T + N - T + 1)) if causal else N
        keep = rows[idx[r]]
        s = zero = y.dtype.type(0)
        for j in range(n):
            s += gr[j] if keep[j] else zero
        o[n:] = 0
        for j in range(n):
            o[j] = gr[j] - vexp(yr[j]) * s if keep[j] else 0


def _prepare(fn, x, mask, causal):
    checks.at_least_1d(fn, "x", x)
    (x,) = checks.floats(fn, x=x)
    if causal and x.ndim < 2:
        raise ValueError(f"{fn}: causal=True needs x with at least 2 dimensions, got shape {x.shape}")
    rows, idx = checks.mask_rows(fn, mask, x.shape)
    if rows is None:   # one all-True row for every row of x: same code path, no copy of x's size
        rows, idx = np.ones((1, x.shape[-1]), bool), np.zeros(int(np.prod(x.shape[:-1])), np.intp)
    T = x.shape[-2] if x.ndim >= 2 else 1
    x2 = checks.rows2d(x)
    return x, x2, rows, idx, max(T, 1)


def _run(fn, x, mask, causal, log, out):
    x, x2, rows, idx, T = _prepare(fn, x, mask, causal)
    out = checks.out_array(fn, out, x.shape, x.dtype)
    if x.size:
        _forward(x2, rows, idx, T, bool(causal), log, out.reshape(x2.shape))
    return out


def softmax(x, mask=None, causal=False, out=None):
    """exp(x - max) / sum over kept entries of the last axis; masked entries and empty rows are 0.
    `out` (C-contiguous, x's shape and dtype) is reused when given."""
    return _run("softmax", x, mask, causal, False, out)


def log_softmax(x, mask=None, causal=False, out=None):
    """x - logsumexp(x) over kept entries; masked entries and empty rows are 0."""
    return _run("log_softmax", x, mask, causal, True, out)


def softmax_backward(y, dy, out=None):
    """dx = y * (dy - sum(dy * y)) per row. `out` may be dy itself (each row is read before
    it is written): that writes no new array, which makes it the faster form when dy is no
    longer needed (one thread, (8, 4, 128, 128) float32, benchmarks/kernels.py: 0.18 ms in
    place, 0.25 ms into a new array, NumPy 0.75 ms). The kernel then writes through dy's row
    itself: given as two arguments that overlap, LLVM's overlap check fails at run time and
    the loop runs scalar (it did, at 0.35 ms)."""
    checks.at_least_1d("softmax_backward", "y", y)
    checks.same_shape("softmax_backward", y=y, dy=dy)
    y, dy = checks.floats("softmax_backward", y=y, dy=dy)
    out = checks.out_array("softmax_backward", out, y.shape, y.dtype)
    if y.size:
        # the kernel's in-place branch writes through dy, so it takes dy writable (a read-only
        # dy, such as a broadcast gradient, is copied); out must be dy itself or apart from it
        dy2 = np.require(checks.rows2d(dy), requirements="W")
        in_place = out.ctypes.data == dy2.ctypes.data   # out is dy (both C-contiguous, one shape)
        if not in_place and (np.may_share_memory(out, dy2) or np.may_share_memory(out, y)):
            raise ValueError("softmax_backward: out must be dy itself or share no memory with y or dy")
        _softmax_backward(checks.rows2d(y), dy2, checks.rows2d(out), in_place)
    return out


def log_softmax_backward(y, dy, mask=None, causal=False):
    """dx = dy - softmax * sum(dy) over kept entries (softmax = exp(y)); masked entries get 0."""
    checks.same_shape("log_softmax_backward", y=y, dy=dy)
    y, y2, rows, idx, T = _prepare("log_softmax_backward", y, mask, causal)
    (dy,) = checks.floats("log_softmax_backward", dy=dy)
    dy = checks.rows2d(dy.astype(y.dtype, copy=False))
    out = np.empty(y.shape, y.dtype)
    if y.size:
        _log_softmax_backward(y2, dy, rows, idx, T, bool(causal), out.reshape(y2.shape))
    return out
