"""Fused GELU, LayerNorm and cross-entropy, forward and backward, over the last axis.

Why fuse: each of these is a chain of 5-10 elementwise NumPy calls, and every call streams
whole arrays through memory and allocates a temporary. Here one compiled loop per row (or
per element) reads the inputs once and writes each output once, on all threads.

Numerical choices:
  * GELU (tanh form) as x * sigmoid(2u), u = c (x + 0.044715 x^3), since
    0.5 (1 + tanh(u)) = sigmoid(2u): no cancellation for large negative x, and the
    sigmoid uses `vexp`, which vectorises (np.tanh / np.exp inside Numba are scalar here).
  * GELU's backward takes 1 - s as s e (e = the exp in s = 1 / (1 + e)): computed as 1 - s
    it cancels, and from x ~ 4 up lost the term it multiplies (16 ULP in float32, 44 in
    float64; now under 1.4). From |x| = GELU_FLAT up the result is exactly 1 or 0, where
    its second term, computed, would be 0 * inf once x^3 overflows.
  * LayerNorm uses two passes over the row (mean, then variance of x - mean): the row is in
    L1 cache, and it avoids E[x^2] - E[x]^2 cancellation. Its 1/sqrt is exact (compiled
    without `arcp`, threads.NO_ARCP): 1 ULP closer, and inf or 0 where the fast estimate
    gave nan, for ~10 ns a row (LayerNorm of (16, 128, 128) float32: 0.17 -> 0.19 ms on 1
    thread). Its weight/bias gradients are summed over rows in per-task float64 partial
    sums (no race between threads).
  * Cross-entropy's log-sum-exp subtracts the row max before `vexp`, so large logits
    never overflow.
"""
import math

import numpy as np
from numba import prange

from . import checks
from .threads import NO_ARCP, jit
from .vmath import vexp, vmax

GELU_C, GELU_A = math.sqrt(2 / math.pi), 0.044715
GELU_FLAT = 1e4   # from |x| = GELU_FLAT up, s below is exactly 0 or 1 and GELU'(x) exactly 0 or 1


@jit(parallel=True)
def _gelu(x, dy, out, backward):
    # constants in x's dtype: a bare Python 2 or 1.0 would promote float32 maths to float64
    one, c2, a, a3 = x.dtype.type(1), x.dtype.type(2 * GELU_C), x.dtype.type(GELU_A), x.dtype.type(3 * GELU_A)
    zero, flat, inf = x.dtype.type(0), x.dtype.type(GELU_FLAT), x.dtype.type(np.inf)
    for i in prange(x.size):
        v = x[i]
        e = vexp(-c2 * (v + a * v * v * v))
        s = one / (one + e)                                     # sigmoid(2u) = (1 + tanh u) / 2
        if backward:                                            # d/dx [x s] with ds/du = 2 s (1 - s)
            # 1 - s as s e: computed as 1 - s it cancels to 0 in float32 from x ~ 4 up, where
            # the term is still ~1e-6; and 1 where e = inf (s = 0), as 1 - s is
            d = c2 * v * s * (s * e if e < inf else one) * (one + a3 * v * v)
            # d is 0 for flat x, but computed there it can be 0 * inf = nan (v^3 overflows)
            out[i] = dy[i] * (s + (d if abs(v) < flat else zero))
        else:
            out[i] = v * s


def _flat(fn, x):
    (x,) = checks.floats(fn, x=x)
    return x, np.ascontiguousarray(x).reshape(-1)


def gelu(x):
    """Fast `reference.gelu` (minillm/engine/reference.py): the tanh approximation, as
    x * sigmoid(2u)."""
    x, xf = _flat("gelu", x)
    out = np.empty(x.shape, x.dtype)
    if x.size:
        _gelu(xf, xf, out.reshape(-1), False)
    return out


def gelu_backward(x, dy):
    """Fast `reference.gelu_backward` (minillm/engine/reference.py): dy * GELU'(x)."""
    checks.same_shape("gelu_backward", x=x, dy=dy)
    x, dy = checks.floats("gelu_backward", x=x, dy=dy)
    out = np.empty(x.shape, x.dtype)
    if x.size:
        _gelu(np.ascontiguousarray(x).reshape(-1), np.ascontiguousarray(dy).reshape(-1), out.reshape(-1), True)
    return out


@jit(parallel=True, fastmath=NO_ARCP)   # rstd exact: 1/sqrt(0) = inf, 1/sqrt(inf) = 0
def _layer_norm(x, w, b, eps, y, mean, rstd):
    R, N = x.shape
    zero, one, inv_n = x.dtype.type(0), x.dtype.type(1), x.dtype.type(1 / N)
    for r in prange(R):
        xr, yr = x[r], y[r]
        s = zero
        for j in range(N):
            s += xr[j]
        mu = s * inv_n
        v = zero
        for j in range(N):
            v += (xr[j] - mu) * (xr[j] - mu)
        rs = one / math.sqrt(v * inv_n + eps)
        for j in range(N):
            yr[j] = (xr[j] - mu) * rs * w[j] + b[j]
        mean[r], rstd[r] = mu, rs


@jit(parallel=True)
def _layer_norm_backward(dy, x, w, mean, rstd, dx, dw_parts, db_parts):
    R, N = x.shape
    tasks, zero, inv_n = dw_parts.shape[0], x.dtype.type(0), x.dtype.type(1 / N)
    for t in prange(tasks):
        for r in range(t * R // tasks, (t + 1) * R // tasks):
            xr, gr, o = x[r], dy[r], dx[r]
            mu, rs = mean[r], rstd[r]
            sg = sgx = zero
            for j in range(N):
                xhat = (xr[j] - mu) * rs
                g = gr[j] * w[j]
                sg += g
                sgx += g * xhat
                dw_parts[t, j] += gr[j] * xhat
                db_parts[t, j] += gr[j]
            sg, sgx = sg * inv_n, sgx * inv_n
            for j in range(N):
                xhat = (xr[j] - mu) * rs
                o[j] = rs * (gr[j] * w[j] - sg - xhat * sgx)


def _ln_params(fn, x, weight, bias):
    checks.at_least_1d(fn, "x", x)
    N = np.shape(x)[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and np.shape(p) != (N,):
            raise ValueError(f"{fn}: {name} must have shape ({N},) to match x {np.shape(x)}, got {np.shape(p)}")
    return N


def layer_norm(x, weight, bias, eps):
    """Fast `reference.layer_norm` (minillm/engine/reference.py): returns (y, mean, rstd); mean and
    rstd have shape x.shape[:-1] + (1,). Rows of no values (N = 0) have mean and rstd nan,
    as NumPy's mean of nothing."""
    N = _ln_params("layer_norm", x, weight, bias)
    eps = checks.number("layer_norm", "eps", eps)
    x, w, b = checks.floats("layer_norm", x=x, weight=np.ones(N, np.asarray(x).dtype) if weight is None else weight,
                            bias=np.zeros(N, np.asarray(x).dtype) if bias is None else bias)
    x2 = checks.rows2d(x)
    y, mean, rstd = np.empty(x.shape, x.dtype), np.empty(x2.shape[0], x.dtype), np.empty(x2.shape[0], x.dtype)
    if x.size:
        _layer_norm(x2, np.ascontiguousarray(w), np.ascontiguousarray(b), x.dtype.type(eps), y.reshape(x2.shape), mean, rstd)
    elif N == 0:
        mean[:], rstd[:] = np.nan, np.nan
    lead = x.shape[:-1] + (1,)
    return y, mean.reshape(lead), rstd.reshape(lead)


def layer_norm_backward(dy, x, weight, mean, rstd):
    """Fast `reference.layer_norm_backward` (minillm/engine/reference.py): returns (dx, dweight,
    dbias); dweight/dbias are summed over every leading axis."""
    N = _ln_params("layer_norm_backward", x, weight, None)
    checks.same_shape("layer_norm_backward", dy=dy, x=x)
    lead = np.shape(x)[:-1] + (1,)
    if np.shape(mean) != lead or np.shape(rstd) != lead:
        raise ValueError(f"layer_norm_backward: mean and rstd must have shape {lead}, got {np.shape(mean)}, {np.shape(rstd)}")
    w = np.ones(N, np.asarray(x).dtype) if weight is None else weight
    dy, x, w, mean, rstd = checks.floats("layer_norm_backward", dy=dy, x=x, weight=w, mean=mean, rstd=rstd)
    x2 = checks.rows2d(x)
    R = x2.shape[0]
    tasks = max(1, min(R, 4 * 2))
    dx = np.empty(x.shape, x.dtype)
    dw_parts, db_parts = np.zeros((tasks, N)), np.zeros((tasks, N))
    if x.size:
        _layer_norm_backward(checks.rows2d(dy), x2, np.ascontiguousarray(w),
                             mean.reshape(-1), rstd.reshape(-1), dx.reshape(x2.shape), dw_parts, db_parts)
    return dx, dw_parts.sum(0).astype(x.dtype), db_parts.sum(0).astype(x.dtype)


@jit(parallel=True)
def _cross_entropy(logits, targets, ignore_index, losses, lse):
    N, V = logits.shape
    for r in prange(N):
        xr = logits[r]
        m = xr[0]
        for j in range(V):
            m = vmax(m, xr[j])
        s = logits.dtype.type(0)
        for j in range(V):
            s += vexp(xr[j] - m)
        lse[r] = m + math.log(s)
        t = targets[r]
        losses[r] = 0 if t == ignore_index else lse[r] - xr[t]


@jit(parallel=True)
def _cross_entropy_backward(logits, targets, lse, ignore_index, scale, out):
    N, V = logits.shape
    for r in prange(N):
        xr, o, t = logits[r], out[r], targets[r]
        if t == ignore_index:
            o[:] = 0
            continue
        sc, l = scale[r], lse[r]
        for j in range(V):
            o[j] = sc * vexp(xr[j] - l)
        o[t] -= sc


def _ce_check(fn, logits, targets, ignore_index):
    checks.integer(fn, "ignore_index", ignore_index)
    logits = np.asarray(logits)
    targets = np.asarray(targets)
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"{fn}: needs logits (N, V) and targets (N,), got logits {logits.shape}, targets {targets.shape}")
    if targets.dtype.kind not in "iu":
        raise TypeError(f"{fn}: targets must be integers, got {targets.dtype}")
    (logits,) = checks.floats(fn, logits=logits)
    if logits.shape[0] and logits.shape[1] == 0:
        raise ValueError(f"{fn}: logits need at least one class, got {logits.shape}")
    keep = targets != ignore_index
    if np.any(keep & ((targets < 0) | (targets >= logits.shape[1]))):
        raise ValueError(f"{fn}: targets must lie in [0, {logits.shape[1]}) or equal ignore_index={ignore_index}")
    return np.ascontiguousarray(logits), targets.astype(np.int64)


def cross_entropy(logits, targets, ignore_index):
    """Fast `reference.cross_entropy` (minillm/engine/reference.py): per-row loss lse(logits) -
    logits[target]; 0 where target == ignore_index. Returns (losses, lse)."""
    logits, targets = _ce_check("cross_entropy", logits, targets, ignore_index)
    losses, lse = np.empty(len(targets), logits.dtype), np.empty(len(targets), logits.dtype)
    if len(targets):
        _cross_entropy(logits, targets, ignore_index, losses, lse)
    return losses, lse


def cross_entropy_backward(logits, targets, lse, ignore_index, scale):
    """Fast `reference.cross_entropy_backward` (minillm/engine/reference.py): scale * (softmax -
    onehot(target)) on kept rows, 0 elsewhere; scale a scalar or (N,)."""
    logits, targets = _ce_check("cross_entropy_backward", logits, targets, ignore_index)
    if np.shape(lse) != targets.shape:
        raise ValueError(f"cross_entropy_backward: lse must have shape {targets.shape}, got {np.shape(lse)}")
    dt = logits.dtype
    if np.shape(scale) not in ((), targets.shape):
        raise ValueError(f"cross_entropy_backward: scale must be a scalar or of shape {targets.shape}, "
                         f"got {np.shape(scale)}")
    scale = np.ascontiguousarray(np.broadcast_to(checks.real("cross_entropy_backward", "scale", scale, dt), targets.shape))
    lse = checks.real("cross_entropy_backward", "lse", lse, dt)
    out = np.empty(logits.shape, dt)
    if len(targets):
        _cross_entropy_backward(logits, targets, lse, ignore_index, scale, out)
    return out
