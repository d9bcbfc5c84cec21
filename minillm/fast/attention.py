"""Multi-head attention fused per head: scores, mask, softmax and the weighted sum.

q (B, T, D), k and v (B, S, D) hold n_heads heads of d = D / n_heads columns each. Head h
of batch row b is the column block h*d:(h+1)*d of each, a (T, d) view with contiguous rows,
which `gemm`'s tile reads in place: no head is copied out and no output copied back.
For each (b, h), on all threads (`prange` over the B * H heads), with gemm's `_work` for the
products (passed in as a function pointer, `gemm_kernel.compiled`):

    forward    P = softmax(c q k^T, mask)        into P[b, h], then, while it is in cache,
               Y = P' v                          into Y's columns of head h
    backward   dP = dY v^T, dS = c P * (dP - rowsum(P * dP))   in a per-head scratch
               dQ = dS k,   dK = dS^T q,   dV = P'^T dY        into their columns of head h

with c = 1 / sqrt(d), and P' = P * keep under dropout (keep: 0 or 1 / (1 - rate)); P
(before dropout) is returned for the backward and for attention probes. The scores of one
head (T x S values) stay in L2 between the product and the softmax, where the unfused
version writes all B * H score matrices to memory and reads them back.

Skipping what the mask removes. Query rows go in blocks of RB; a block needs only the
columns up to the last one any of its rows keeps (from the mask in the forward; in the
backward, from where P's rows end, which is the same thing, as P is 0 where masked). Past
it P and dS are written as 0 and nothing is computed: the scores and dP are computed by
blocks of keys for the query blocks that reach them, Y = P v and dQ = dS k only over the
columns a block needs, dK and dV by blocks of keys over the query rows that reach them.
With a causal mask that is 72% of the products at T = 128, 62% at 256, 56% at 512; with no
mask it is the same work as one product per head (runs of keys with the same rows go in
one product). Measured on one thread, 16 x 256 tokens, 4 heads of 64: forward + backward
31-33 ms -> 24-25 ms causal, no mask unchanged within noise (29-32 ms); at T = 512,
31-33 -> 22-24 ms.
The NumPy twin (reference.py) computes everything, with batched products.
"""
import functools

import numba
import numpy as np
from numba import prange, types

from . import checks
from .gemm_kernel import MR, PANEL_BYTES, ROWS, compiled, signature
from .softmax_fused import _row_exp, _row_max
from .threads import Pointer, jit, specialise


RB = 8 * MR   # query (and key) rows per block: whole register tiles of gemm
KB = 64       # key columns per block of the scores: whole panels of gemm's tiles with AVX-512


@jit()
def _softmax_rows(s, n, rows, idx, r0, c):
    """s[:, :n] = softmax(c s[:, :n]) in place, row i keeping rows[idx[r0 + i]]; an empty row
    gives zeros; s[:, n:] = 0. The exponentials go to a scratch row first: with input and
    output the same array, LLVM's overlap check fails at run time and the loop runs scalar
    (5x slower). Rows are taken as s[i][:n], which Numba knows to be contiguous (s[:, :n] is
    not): the loops vectorise."""
    e = np.empty(n, s.dtype)
    for i in range(s.shape[0]):
        sr, keep, tail = s[i][:n], rows[idx[r0 + i]], s[i][n:]
        for j in range(tail.size):
            tail[j] = 0
        for j in range(n):
            sr[j] *= c
        m = _row_max(sr, keep, n)
        if m == -np.inf:
            for j in range(n):
                sr[j] = 0
            continue
        inv = s.dtype.type(1) / _row_exp(sr, keep, n, m, e)
        for j in range(n):
            sr[j] = e[j] * inv


@jit()
def _softmax_backward_rows(p, dp, n, c):
    """dp[:, :n] = c p * (dp - rowsum(p * dp)) in place, over the first n columns (p is 0 past
    them); dp[:, n:] = 0."""
    for i in range(p.shape[0]):
        pr, g, tail = p[i][:n], dp[i][:n], dp[i][n:]
        for j in range(tail.size):
            tail[j] = 0
        t = p.dtype.type(0)
        for j in range(n):
            t += pr[j] * g[j]
        for j in range(n):
            g[j] = c * pr[j] * (g[j] - t)


@jit()
def _times(x, keep, out, n):
    """out[:, :n] = x * keep, elementwise, for (rows, S) arrays."""
    for i in range(x.shape[0]):
        xr, kr, o = x[i][:n], keep[i][:n], out[i][:n]
        for j in range(n):
            o[j] = xr[j] * kr[j]


@jit()
def _product(work, a, bt, c):
    """c = a @ bt^T for one block of a head, (1, M, K) by (1, N, K), all on this thread; work
    is gemm's `_work`, passed in as a function pointer. K = 0 gives zeros. Column blocks are
    whole wide panels: `_work` picks the narrow tile itself when N is small."""
    M, N = c.shape[1], c.shape[2]
    if M == 0 or N == 0:
        return
    if a.shape[2] == 0:
        for i in range(M):
            for j in range(N):
                c[0, i, j] = 0
        return
    zero, no_bias, nr = np.zeros(1, np.intp), np.empty(0, c.dtype), PANEL_BYTES // c.itemsize
    rows = min(ROWS, -(-M // MR) * MR)     # tasks: blocks of rows, each with every column
    work(a, bt, c, zero, zero, no_bias, rows, -(-N // nr) * nr, 0, -(-M // rows))


@jit()
def _rows_end(row_ends, idx, i0, i1):
    """The columns rows i0..i1 need: 1 + the last column any of them keeps (0: none)."""
    n = 0
    for i in range(i0, i1):
        n = max(n, row_ends[idx[i]])
    return n


@jit()
def _nonzero_end(p):
    """1 + the last column where any row of p is not 0 (0: none), scanning each row from the
    right only down to the answer so far."""
    n = 0
    for i in range(p.shape[0] - 1, -1, -1):
        j = p.shape[1] - 1
        while j >= n and p[i, j] == 0:
            j -= 1
        n = max(n, j + 1)
    return n


@jit()
def _first_reaching(needs, j):
    """The first block of query rows whose columns reach column j (len(needs): none);
    needs[r]: the columns block r needs."""
    r = 0
    while r < needs.size and needs[r] <= j:
        r += 1
    return r


@jit()
def _key_run(needs, j0, S, width):
    """(i0, j1): i0 the first row of the first block of query rows whose columns reach key j0,
    and j1 the end of the run of blocks of `width` keys from j0 for which that is the same
    (without a mask: every key, in one product)."""
    r = _first_reaching(needs, j0)
    j1 = min(S, j0 + width)
    while j1 < S and _first_reaching(needs, j1) == r:
        j1 = min(S, j1 + width)
    return r * RB, j1


# Inside the kernels every operand is a slice of an array passed in, never a transpose made
# there: each np.transpose / ufunc instance used in compiled code is one more function for
# Numba to compile (seconds in all), so the transposed views come from Python.

@jit()
def _forward_head(work, q, k, vT, H, rows, idx, row_ends, keep, dropout, c, y, p, scratch, bh):
    """The forward of head h of batch row b, bh = b * H + h (serial: `_forward` runs the heads
    in parallel). row_ends[m]: 1 + the last column mask row m keeps."""
    B, T, D = q.shape
    S, d = k.shape[1], D // H
    b, h = bh // H, bh % H
    lo, hi = h * d, h * d + d
    needs = np.empty(-(-T // RB), np.intp)        # per block of query rows: past column n all is masked
    for r in range(needs.size):
        needs[r] = _rows_end(row_ends, idx, bh * T + r * RB, bh * T + min(T, r * RB + RB))
    j0 = 0
    while j0 < S:                                 # scores, by blocks of keys, for the query blocks reaching them
        i0, j1 = _key_run(needs, j0, S, KB)
        _product(work, q[b:b + 1, i0:, lo:hi], k[b:b + 1, j0:j1, lo:hi], p[b, h:h + 1, i0:, j0:j1])
        j0 = j1
    for r0 in range(0, T, RB):                    # softmax and Y by blocks of query rows
        r1, n = min(T, r0 + RB), needs[r0 // RB]
        ph = p[b, h:h + 1, r0:r1, :n]
        _softmax_rows(p[b, h, r0:r1], n, rows, idx, bh * T + r0, c)                     # P
        if dropout:
            _times(p[b, h, r0:r1], keep[b, h, r0:r1], scratch[bh, r0:r1], n)
            ph = scratch[bh:bh + 1, r0:r1, :n]
        _product(work, ph, vT[b:b + 1, lo:hi, :n], y[b:b + 1, r0:r1, lo:hi])             # Y = P' v


@jit()
def _backward_head(work, q, qT, k, kT, v, H, p, pT, keep, dropout, c, gy, gyT, ds, dsT, dq, dk, dv, bh):
    """The backward of head bh = b * H + h (serial), into dq, dk, dv; ds, a scratch."""
    B, T, D = q.shape
    S, d = k.shape[1], D // H
    blocks = -(-T // RB)
    b, h = bh // H, bh % H
    lo, hi = h * d, h * d + d
    needs = np.empty(blocks, np.intp)
    for r in range(blocks):                       # per block of query rows: P = 0 past column n, so dS = 0
        needs[r] = _nonzero_end(p[b, h, r * RB:min(T, r * RB + RB)])
    j0 = 0
    while j0 < S:                                 # dP = dY v^T, by blocks of keys, as the scores
        i0, j1 = _key_run(needs, j0, S, KB)
        _product(work, gy[b:b + 1, i0:, lo:hi], v[b:b + 1, j0:j1, lo:hi], ds[bh:bh + 1, i0:, j0:j1])
        j0 = j1
    for r in range(blocks):                       # dS and dQ by blocks of query rows
        r0, r1, n = r * RB, min(T, r * RB + RB), needs[r]
        dsh = ds[bh:bh + 1, r0:r1, :n]
        if dropout:
            _times(ds[bh, r0:r1], keep[b, h, r0:r1], ds[bh, r0:r1], n)
        _softmax_backward_rows(p[b, h, r0:r1], ds[bh, r0:r1], n, c)                     # dS
        _product(work, dsh, kT[b:b + 1, lo:hi, :n], dq[b:b + 1, r0:r1, lo:hi])          # dQ = dS k
    j0 = 0
    while j0 < S:                                 # dK = dS^T q by blocks of keys, over the query rows reaching them
        i0, j1 = _key_run(needs, j0, S, RB)
        _product(work, dsT[bh:bh + 1, j0:j1, i0:], qT[b:b + 1, lo:hi, i0:], dk[b:b + 1, j0:j1, lo:hi])
        j0 = j1
    pd = pT[b, h:h + 1]
    if dropout:                                                                         # P' = P * keep
        _times(p[b, h], keep[b, h], ds[bh], S)
        pd = dsT[bh:bh + 1]
    j0 = 0
    while j0 < S:                                 # dV = P'^T dY, the same way
        i0, j1 = _key_run(needs, j0, S, RB)
        _product(work, pd[:, j0:j1, i0:], gyT[b:b + 1, lo:hi, i0:], dv[b:b + 1, j0:j1, lo:hi])
        j0 = j1


@jit(parallel=True)
def _forward(head, work, q, k, vT, H, rows, idx, row_ends, keep, dropout, c, y, p, scratch):
    """`_forward_head` for every (b, h) on all threads. The head is a function pointer: Numba
    compiles the serial head once, and this trivial loop in a fraction of a second, where
    a parallel loop around the head's whole body took seconds to compile."""
    for bh in prange(q.shape[0] * H):   # np.intp: prange may make bh unsigned, and the pointer's type is exact
        head(work, q, k, vT, H, rows, idx, row_ends, keep, dropout, c, y, p, scratch, np.intp(bh))


@jit(parallel=True)
def _backward(head, work, q, qT, k, kT, v, H, p, pT, keep, dropout, c, gy, gyT, ds, dsT, dq, dk, dv):
    """`_backward_head` for every (b, h) on all threads, as `_forward`."""
    for bh in prange(q.shape[0] * H):
        head(work, q, qT, k, kT, v, H, p, pT, keep, dropout, c, gy, gyT, ds, dsT, dq, dk, dv, np.intp(bh))


@functools.lru_cache(maxsize=None)
def _kernel(launcher, head, dtype, spec):
    """`launcher` compiled for `dtype`, and `head` as the function pointer it takes."""
    _helpers(dtype)
    head_signature = _signature(dtype, spec + " i")
    pointer = Pointer(head, head_signature)
    return specialise(launcher, types.none(pointer.type, *head_signature.args[:-1])), pointer


@functools.lru_cache(maxsize=None)
def _helpers(dtype):
    """One compiled copy of each helper the heads call with differing argument types. Left to
    itself, Numba compiles a helper again for each combination a call site presents: P
    read-only in the backward and writable in the forward, a first key that is the literal 0
    on the first pass of type inference and a variable after it, a width of KB or of RB (global
    constants, so literals): 8 copies of 3 helpers (with `_first_reaching`, 10 of 4), ~2.5 s
    of compile per dtype on the build machine, where one copy of each serves every call."""
    specialise(_times, _signature(dtype, "R2 R2 W2 i"))
    specialise(_product, _signature(dtype, "F r3 r3 w3"))
    specialise(_key_run, types.UniTuple(types.intp, 2)(*_signature(dtype, "N i i i").args))


@functools.lru_cache(maxsize=None)
def _signature(dtype, spec):
    """Numba types for a compact spec: r3/r4 a read-only 3-D/4-D array of `dtype` of any
    layout, w3 a writable one; R2/R4 a read-only and W2/W3/W4 a writable C-contiguous one
    (rows the softmax loops run along: with a stride known to be 1 they vectorise); i an
    index, I a read-only and N a writable C index array, M the read-only C bool mask rows,
    b a bool, f a `dtype` scalar, F gemm's `_work` as a function pointer. One compiled copy
    per dtype then serves every layout of q, k, v (column blocks of a qkv projection,
    contiguous arrays, ...)."""
    dt = numba.from_dtype(np.dtype(dtype))
    arr = lambda n, layout, ro: types.Array(dt, n, layout, readonly=ro)  # noqa: E731
    table = {"r3": arr(3, "A", True), "r4": arr(4, "A", True), "R4": arr(4, "C", True),
             "W3": arr(3, "C", False), "W4": arr(4, "C", False), "i": types.intp,
             "R2": arr(2, "C", True), "W2": arr(2, "C", False), "w3": arr(3, "A", False),
             "I": types.Array(types.intp, 1, "C", readonly=True), "N": types.Array(types.intp, 1, "C"),
             "M": types.Array(types.boolean, 2, "C", readonly=True),
             "b": types.boolean, "f": dt, "F": types.FunctionType(signature(dtype))}
    return types.none(*(table[k] for k in spec.split()))


FORWARD = "F r3 r3 r3 i M I I R4 b f W3 W4 W3"       # work q k vT H rows idx row_ends keep dropout c y p scratch
BACKWARD = "F r3 r3 r3 r3 r3 i R4 r4 R4 b f r3 r3 W3 r3 W3 W3 W3"
# work q qT k kT v H p pT keep dropout c gy gyT ds dsT dq dk dv


def _check(q, k, v, n_heads, **more):
    """q, k, v (and `more`: p and gy in the backward) promoted to one float dtype, checked."""
    q, k, v, *more = checks.floats("attention", q=q, k=k, v=v, **more)
    checks.integer("attention", "n_heads", n_heads, low=1)
    if q.ndim != 3 or k.ndim != 3 or k.shape != v.shape or q.shape[::2] != k.shape[::2]:
        raise ValueError(f"attention: need q (B, T, D) and k, v (B, S, D), got {q.shape}, {k.shape}, {v.shape}")
    if q.shape[-1] % n_heads or q.shape[-1] == 0:
        raise ValueError(f"attention: D ({q.shape[-1]}) must be a positive multiple of n_heads ({n_heads})")
    return (q, k, v, *more)


def _keep(keep, shape, dtype):
    if keep is None:
        return np.zeros((1, 1, 1, 1), dtype), False
    checks.same_shape("attention", keep=keep, scores=np.empty(shape, bool))
    return np.ascontiguousarray(checks.real("attention", "keep", keep, dtype)), True


def attention_forward(q, k, v, n_heads, mask=None, keep=None):
    """Fast `reference.attention_forward` (minillm/engine/reference.py): (Y (B, T, D), P (B, H, T, S)),
    as in the module docstring. `mask`: bool, broadcastable to (B, H, T, S), True = keep;
    `keep`: the dropout multipliers (B, H, T, S) or None."""
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
        row_ends = np.where(rows.any(axis=1), S - np.argmax(rows[:, ::-1], axis=1), 0)   # of each mask row
        scratch = np.empty((B * n_heads, T, S) if dropout else (1, 1, 1), q.dtype)
        work = compiled(q.dtype)   # the GEMM first: the kernel calls it
        forward, head = _kernel(_forward, _forward_head, q.dtype, FORWARD)
        forward(head, work, q, k, v.transpose(0, 2, 1), n_heads, rows, idx, row_ends, keep, dropout,
                q.dtype.type(1 / np.sqrt(d)), y, p, scratch)
    elif y.size:
        y[...] = 0
    return y, p


def attention_backward(q, k, v, n_heads, p, gy, keep=None):
    """Fast `reference.attention_backward` (minillm/engine/reference.py): (dQ, dK, dV) for the
    output gradient gy (B, T, D), given P from attention_forward."""
    q, k, v, p, gy = _check(q, k, v, n_heads, p=p, gy=gy)
    (B, T, D), S = q.shape, k.shape[1]
    checks.same_shape("attention_backward", gy=gy, q=q)
    checks.same_shape("attention_backward", p=p, scores=np.empty((B, n_heads, T, S), bool))
    keep, dropout = _keep(keep, p.shape, q.dtype)
    dq, dk, dv = np.empty(q.shape, q.dtype), np.empty(k.shape, q.dtype), np.empty(v.shape, q.dtype)
    d = D // n_heads
    if q.size and S:
        p = np.ascontiguousarray(p)
        ds = np.empty((B * n_heads, T, S), q.dtype)    # dP, then dS, of every head
        t = (lambda a: a.transpose(0, 2, 1))
        work = compiled(q.dtype)
        backward, head = _kernel(_backward, _backward_head, q.dtype, BACKWARD)
        backward(head, work, q, t(q), k, t(k), v, n_heads, p, p.transpose(0, 1, 3, 2), keep, dropout,
                 q.dtype.type(1 / np.sqrt(d)), gy, t(gy), ds, t(ds), dq, dk, dv)
    else:
        dq[...], dk[...], dv[...] = 0, 0, 0
    return dq, dk, dv
