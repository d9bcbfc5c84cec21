"""Multi-head attention fused per head: scores, mask, softmax and the weighted sum.

q (B, T, D), k and v (B, S, D) hold n_heads heads of d = D / n_heads columns each. Head h
of batch row b is the column block h*d:(h+1)*d of each, a (T, d) view with contiguous rows,
which `gemm`'s tile reads in place: no head is copied out and no output copied back.
For each (b, h), on all threads (`prange` over the B * H heads), with gemm's `_work` for the
products (passed in as a function pointer, `gemm.Work`):

    forward    P = softmax(c q k^T, mask)        into P[b, h], then, while it is in cache,
               Y = P' v                          into Y's columns of head h
    backward   dP = dY v^T, dS = c P * (dP - rowsum(P * dP))   in a per-head scratch
               dQ = dS k,   dK = dS^T q,   dV = P'^T dY        into their columns of head h

with c = 1 / sqrt(d), and P' = P * keep under dropout (keep: 0 or 1 / (1 - rate)); P
(before dropout) is returned for the backward and for attention probes. The scores of one
head (T x S values) stay in L2 between the product and the softmax, where the unfused
version writes all B * H score matrices to memory and reads them back.
The NumPy twin (reference.py) does the same with batched products.
"""
import functools

import numba
import numpy as np
from numba import prange, types

from . import checks
from .gemm import _blocks, compiled, panel_width, signature
from .softmax_fused import _row_exp, _row_max
from .threads import jit, specialise


@jit()
def _softmax_rows(s, rows, idx, r0, c):
    """s = softmax(c s) in place, row i keeping rows[idx[r0 + i]]; an empty row gives zeros.
    The exponentials go to a scratch row first: with input and output the same array, LLVM's
    overlap check fails at run time and the loop runs scalar (5x slower)."""
    e = np.empty(s.shape[1], s.dtype)
    for i in range(s.shape[0]):
        sr, keep = s[i], rows[idx[r0 + i]]
        for j in range(sr.size):
            sr[j] *= c
        m = _row_max(sr, keep, sr.size)
        if m == -np.inf:
            sr[:] = 0
            continue
        inv = s.dtype.type(1) / _row_exp(sr, keep, sr.size, m, e)
        for j in range(sr.size):
            sr[j] = e[j] * inv


@jit()
def _softmax_backward_rows(p, dp, c):
    """dp = c p * (dp - rowsum(p * dp)) in place."""
    for i in range(p.shape[0]):
        pr, g = p[i], dp[i]
        t = p.dtype.type(0)
        for j in range(pr.size):
            t += pr[j] * g[j]
        for j in range(pr.size):
            g[j] = c * pr[j] * (g[j] - t)


@jit()
def _times(x, keep, out):
    """out = x * keep, elementwise, for (T, S) arrays."""
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = x[i, j] * keep[i, j]


@jit()
def _product(work, a, bt, c, plan):
    """c = a @ bt^T for one head, (1, M, K) by (1, N, K), on this thread; work is gemm's
    `_work`, passed in as a function pointer; plan = (rows, cols, tasks) from `_plan`."""
    zero, no_bias = np.zeros(1, np.intp), np.empty(0, c.dtype)
    work(a, bt, c, zero, zero, no_bias, plan[0], plan[1], 0, plan[2])


# Inside the kernels every operand is a slice of an array passed in, never a transpose made
# there: each np.transpose / ufunc instance used in compiled code is one more function for
# Numba to compile (seconds in all), so the transposed views come from Python.

@jit(parallel=True)
def _forward(work, q, k, vT, H, rows, idx, keep, dropout, c, plans, y, p, scratch):
    B, T, D = q.shape
    d = D // H
    for bh in prange(B * H):
        b, h = bh // H, bh % H
        lo, hi = h * d, h * d + d
        ph = p[b, h:h + 1]
        _product(work, q[b:b + 1, :, lo:hi], k[b:b + 1, :, lo:hi], ph, plans[0])                    # scores
        _softmax_rows(p[b, h], rows, idx, bh * T, c)                                                # P
        if dropout:
            _times(p[b, h], keep[b, h], scratch[bh])
            ph = scratch[bh:bh + 1]
        _product(work, ph, vT[b:b + 1, lo:hi], y[b:b + 1, :, lo:hi], plans[1])                      # Y = P' v


@jit(parallel=True)
def _backward(work, q, qT, k, kT, v, H, p, pT, keep, dropout, c, gy, gyT, plans, ds, dsT, dq, dk, dv):
    B, T, D = q.shape
    d = D // H
    for bh in prange(B * H):
        b, h = bh // H, bh % H
        lo, hi = h * d, h * d + d
        _product(work, gy[b:b + 1, :, lo:hi], v[b:b + 1, :, lo:hi], ds[bh:bh + 1], plans[0])        # dP = dY v^T
        if dropout:
            _times(ds[bh], keep[b, h], ds[bh])
        _softmax_backward_rows(p[b, h], ds[bh], c)                                                  # dS
        _product(work, ds[bh:bh + 1], kT[b:b + 1, lo:hi], dq[b:b + 1, :, lo:hi], plans[1])          # dQ = dS k
        _product(work, dsT[bh:bh + 1], qT[b:b + 1, lo:hi], dk[b:b + 1, :, lo:hi], plans[2])         # dK = dS^T q
        pd = pT[b, h:h + 1]
        if dropout:                                                                                 # P' = P * keep
            _times(p[b, h], keep[b, h], ds[bh])
            pd = dsT[bh:bh + 1]
        _product(work, pd, gyT[b:b + 1, lo:hi], dv[b:b + 1, :, lo:hi], plans[2])                    # dV = P'^T dY


@functools.lru_cache(maxsize=None)
def _signature(dtype, spec):
    """Numba types for a compact spec: r3/w3 a read-only/writable 3-D array of `dtype` of any
    layout, R4/W3/W4 C-contiguous ones (rows the softmax loops run along: with a stride known
    to be 1 they vectorise), i an index, I read-only C index array, P the read-only C (n, 3)
    plans, M the read-only C bool mask rows, b a bool, f a `dtype` scalar. One compiled copy
    per dtype then serves every layout of q, k, v (column blocks of a qkv projection,
    contiguous arrays, ...)."""
    dt = numba.from_dtype(np.dtype(dtype))
    arr = lambda n, layout, ro: types.Array(dt, n, layout, readonly=ro)  # noqa: E731
    table = {"r3": arr(3, "A", True), "r4": arr(4, "A", True), "R4": arr(4, "C", True),
             "W3": arr(3, "C", False), "W4": arr(4, "C", False), "i": types.intp,
             "I": types.Array(types.intp, 1, "C", readonly=True), "P": types.Array(types.intp, 2, "C", readonly=True),
             "M": types.Array(types.boolean, 2, "C", readonly=True),
             "b": types.boolean, "f": dt, "F": types.FunctionType(signature(dtype))}
    return types.none(*(table[k] for k in spec.split()))


FORWARD = "F r3 r3 r3 i M I R4 b f P W3 W4 W3"               # work q k vT H rows idx keep dropout c plans y p scratch
BACKWARD = "F r3 r3 r3 r3 r3 i R4 r4 R4 b f r3 r3 P W3 r3 W3 W3 W3"
# work q qT k kT v H p pT keep dropout c gy gyT plans ds dsT dq dk dv


def _plan(M, N, dtype):
    """(rows, cols, tasks) of one head's (M, N) product, run on one thread."""
    rows, cols = _blocks(1, M, N, panel_width(dtype, N), 1)
    return (rows, cols, -(-M // rows) * -(-N // cols))


def _check(q, k, v, n_heads):
    q, k, v = checks.floats("attention", q=q, k=k, v=v)
    if q.ndim != 3 or k.ndim != 3 or k.shape != v.shape or q.shape[::2] != k.shape[::2]:
        raise ValueError(f"attention: need q (B, T, D) and k, v (B, S, D), got {q.shape}, {k.shape}, {v.shape}")
    if n_heads < 1 or q.shape[-1] % n_heads:
        raise ValueError(f"attention: D ({q.shape[-1]}) must be divisible by n_heads ({n_heads})")
    return q, k, v


def _keep(keep, shape, dtype):
    if keep is None:
        return np.zeros((1, 1, 1, 1), dtype), False
    checks.same_shape("attention", keep=keep, scores=np.empty(shape, bool))
    return np.ascontiguousarray(keep, dtype=dtype), True


def attention_forward(q, k, v, n_heads, mask=None, keep=None):
    """(Y (B, T, D), P (B, H, T, S)): see the module docstring. `mask`: bool, broadcastable to
    (B, H, T, S), True = keep; `keep`: the dropout multipliers (B, H, T, S) or None."""
    q, k, v = _check(q, k, v, n_heads)
    (B, T, D), S = q.shape, k.shape[1]
    shape = (B, n_heads, T, S)
    rows, idx = checks.mask_rows("attention", mask, shape)
    if rows is None:
        rows, idx = np.ones((1, S), bool), np.zeros(B * n_heads * T, np.intp)
    keep, dropout = _keep(keep, shape, q.dtype)
    y, p = np.empty(q.shape, q.dtype), np.empty(shape, q.dtype)
    d = D // n_heads
    if y.size and S:
        plans = np.array([_plan(T, S, q.dtype), _plan(T, d, q.dtype)], np.intp)
        scratch = np.empty((B * n_heads, T, S) if dropout else (1, 1, 1), q.dtype)
        work = compiled(q.dtype)   # the GEMM first: the kernel calls it
        forward = specialise(_forward, _signature(q.dtype, FORWARD))
        forward(work, q, k, v.transpose(0, 2, 1), n_heads, rows, idx, keep, dropout, q.dtype.type(1 / np.sqrt(d)), plans,
                y, p, scratch)
    elif y.size:
        y[...] = 0
    return y, p


def attention_backward(q, k, v, n_heads, p, gy, keep=None):
    """(dQ, dK, dV) for the output gradient gy (B, T, D), given P from attention_forward."""
    q, k, v = _check(q, k, v, n_heads)
    (B, T, D), S = q.shape, k.shape[1]
    checks.same_shape("attention_backward", gy=gy, q=q)
    checks.same_shape("attention_backward", p=p, scores=np.empty((B, n_heads, T, S), bool))
    keep, dropout = _keep(keep, p.shape, q.dtype)
    gy = np.asarray(gy, q.dtype)
    dq, dk, dv = np.empty(q.shape, q.dtype), np.empty(k.shape, q.dtype), np.empty(v.shape, q.dtype)
    d = D // n_heads
    if q.size and S:
        plans = np.array([_plan(T, S, q.dtype), _plan(T, d, q.dtype), _plan(S, d, q.dtype)], np.intp)
        p = np.ascontiguousarray(p, q.dtype)
        ds = np.empty((B * n_heads, T, S), q.dtype)    # dP, then dS, of every head
        t = (lambda a: a.transpose(0, 2, 1))
        work = compiled(q.dtype)
        backward = specialise(_backward, _signature(q.dtype, BACKWARD))
        backward(work, q, t(q), k, t(k), v, n_heads, p, p.transpose(0, 1, 3, 2), keep, dropout,
                 q.dtype.type(1 / np.sqrt(d)), gy, t(gy), plans, ds, t(ds), dq, dk, dv)
    else:
        dq[...], dk[...], dv[...] = 0, 0, 0
    return dq, dk, dv
