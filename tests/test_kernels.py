"""The Numba kernels equal their plain-NumPy twins (reference.py), and bad input fails clearly.

Shapes, dtypes, masks and layouts are drawn by hypothesis; the values come from a seeded
NumPy generator (drawing millions of floats through hypothesis would be slow). Tolerances
are ULP-scaled: a few float epsilons times the size of the quantities involved.
"""
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from minillm.engine import kernels as K
from minillm.engine import reference as R
from minillm.fast import ops as F
from minillm.fast.gemm_plain import gemm_plain

DTYPES = st.sampled_from([np.float32, np.float64])


def close(got, want, scale=1.0, ulps=16):
    """|got - want| <= ulps * eps * (|want| + scale), in want's dtype; and no NaN anywhere."""
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape, got.dtype, want.dtype)
    assert not np.isnan(got).any()
    eps = np.finfo(want.dtype).eps
    np.testing.assert_array_less(np.abs(got.astype(np.float64) - want), ulps * eps * (np.abs(want) + scale) + 1e-300)


def sample(rng, shape, dtype, layout, mag=3.0):
    """Random values of `shape`; layout 0 = contiguous, 1 = every other column of a wider
    array, 2 = the transpose of a contiguous array (last two axes)."""
    if layout == 1:
        return (rng.standard_normal(shape[:-1] + (2 * shape[-1],)) * mag).astype(dtype)[..., ::2]
    if layout == 2 and len(shape) >= 2:
        return np.swapaxes((rng.standard_normal(shape[:-2] + shape[:-3:-1]) * mag).astype(dtype), -1, -2)
    return (rng.standard_normal(shape) * mag).astype(dtype)


seeds = st.integers(0, 2**32 - 1)
layouts = st.integers(0, 2)


# ---------------------------------------------------------------- GEMM

@st.composite
def matmul_shapes(draw):
    """Batch dims that broadcast (each side may drop or 1 a dim), and M, K, N around the
    register tiles (6 rows; 32 or 64 columns in float32, 16 or 32 in float64), a task's 96 rows and the K slice of 256,
    including 0 and 1."""
    batch = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3))
    dims = st.one_of(st.integers(0, 9), st.integers(28, 36), st.integers(60, 70), st.integers(94, 98))
    m, k, n = draw(dims), draw(st.one_of(dims, st.integers(254, 258))), draw(dims)
    ba = tuple(d if draw(st.booleans()) else 1 for d in batch)[draw(st.integers(0, len(batch))):]
    bb = tuple(d if draw(st.booleans()) else 1 for d in batch)
    return ba + (m, k), bb + (k, n)


@given(matmul_shapes(), DTYPES, DTYPES, layouts, layouts, seeds)
def test_gemm_equals_numpy(shapes, da, db, la, lb, seed):
    rng = np.random.default_rng(seed)
    a, b = sample(rng, shapes[0], da, la), sample(rng, shapes[1], db, lb)
    want = np.matmul(a, b)
    k = a.shape[-1]
    bound = np.matmul(np.abs(a).astype(np.float64), np.abs(b))   # error of a sum of k products
    for fn in (F.gemm, F.matmul, K.matmul.gemm):
        got = fn(a, b)
        assert got.dtype == np.result_type(a, b) and got.shape == want.shape
        eps = np.finfo(got.dtype).eps
        assert np.all(np.abs(got - want) <= 2 * (k + 1) * eps * bound + 1e-300)


def test_gemm_tiles_exactly_on_integers():
    # integer-valued floats make every partial sum exact: any indexing slip shows up as != .
    # Shapes cross every edge: 67 rows = 11 tiles + 1, 130 columns = 2 panels of 64 + 2, K =
    # 530 = three slices of 256; a broadcast batch and a transposed view take the other paths.
    rng = np.random.default_rng(0)
    a = rng.integers(-4, 5, (3, 67, 530)).astype(np.float32)
    b = rng.integers(-4, 5, (530, 130)).astype(np.float32)
    assert np.array_equal(F.gemm(a, b), a @ b)
    assert np.array_equal(F.matmul(a, b), a @ b)    # large enough for matmul to use gemm
    bt = rng.integers(-4, 5, (2, 1, 130, 530)).astype(np.float64).swapaxes(-1, -2)
    assert np.array_equal(F.gemm(a.astype(np.float64), bt), a @ bt)
    for dtype in (np.float32, np.float64):
        # narrow tile (N <= 32 float32, 16 float64) and wide; B of one or two whole panels is
        # read in place, not packed; 33 and 17 are the first widths past the narrow tile
        an, bd = a.astype(dtype), b.astype(dtype)
        for n in (16, 17, 32, 33, 64, 128):
            bn = np.ascontiguousarray(bd[:, :n])
            assert np.array_equal(F.gemm(an, bn), an @ bn)
            assert np.array_equal(F.gemm(an, bd[:, :n]), an @ bn)   # rows with a stride


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_plain_equals_numpy_exactly_on_integers(dtype):
    # the plain GEMM's 2 x 4 tiles repeat a last odd row or column: every remainder of M % 2
    # and N % 4, K = 0 (zeros), a transposed view, and a float32 b promoted to float64
    rng = np.random.default_rng(4)
    for m, k, n in ((1, 1, 1), (2, 3, 4), (3, 5, 5), (7, 9, 6), (8, 0, 7), (67, 130, 35)):
        a, b = (rng.integers(-4, 5, s).astype(dtype) for s in ((m, k), (n, k)))
        assert np.array_equal(gemm_plain(a, b.T), np.matmul(a, b.T)), (m, k, n)
    got = gemm_plain(a, b.T.astype(np.float32))
    assert got.dtype == np.result_type(dtype, np.float32) and np.array_equal(got, a @ b.T)
    with pytest.raises(ValueError, match=r"gemm_plain.*\(67, 130\).*\(35, 130\)"):
        gemm_plain(a, b)


def test_gemm_b_in_place_or_packed_by_alignment():
    # A B of one or two whole panels with contiguous rows is read in place when it starts on
    # a 64-byte line or when A has fewer than PACK_FROM_ROWS rows, and packed otherwise:
    # both paths, at every 16-byte offset, in both dtypes, must give the exact product.
    rng = np.random.default_rng(2)
    G = importlib.import_module("minillm.fast.gemm_kernel")
    for dtype in (np.float32, np.float64):
        a = rng.integers(-4, 5, (G.PACK_FROM_ROWS + 44, 70)).astype(dtype)
        for n in (16, 32, 64, 128):
            b = rng.integers(-4, 5, (70, n)).astype(dtype)
            for offset in (0, 16, 32, 48):
                buf = np.empty(b.nbytes + 128, np.uint8)
                start = -buf.ctypes.data % 64 + offset
                placed = buf[start:start + b.nbytes].view(dtype).reshape(b.shape)
                placed[...] = b
                for rows in (a.shape[0], 100):
                    assert np.array_equal(F.gemm(a[:rows], placed), a[:rows] @ b), (dtype, n, offset, rows)


@pytest.mark.parametrize("threads", [1, 2])
def test_gemm_weight_gradient_exactly_on_integers(threads):
    # x^T @ g and g^T @ x, weight gradients: A is a transposed view, read as panels in place
    # when x's rows are under 2 KiB apart (x[:, :67], g), packed otherwise (every other
    # column; 600 columns: 2400 bytes), with a last partial panel of 67 % 6 rows; K = 2048
    # tokens is long enough that two threads split K and add their partial products.
    rng = np.random.default_rng(1)
    x = rng.integers(-4, 5, (2048, 134)).astype(np.float32)
    g = rng.integers(-4, 5, (2048, 130)).astype(np.float32)
    wide = rng.integers(-4, 5, (2048, 600)).astype(np.float32)
    before = K.num_threads()
    try:
        K.set_num_threads(threads)
        for a in (np.ascontiguousarray(x[:, :67]), x[:, ::2], wide):
            assert np.array_equal(F.gemm(a.T, g), a.T.astype(np.float64) @ g)
            assert np.array_equal(F.gemm(g.T, a), g.T.astype(np.float64) @ a)
    finally:
        K.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2])
def test_weight_gradients_exactly_on_integers(threads):
    # dW = x^T g and db = column sums of g from one product: the row of ones rides in A's last
    # tile. Every A path: x^T with contiguous rows (x in Fortran order, read in place), read
    # as panels in place (rows under 2 KiB), packed (600 columns); K = x's columns with
    # K % 6 != 0 (ones in the padding) and == 0 (a tile of its own); R = 2048 lets two
    # threads split the rows and add their partial sums; R = 500 does not.
    rng = np.random.default_rng(3)
    before = K.num_threads()
    try:
        K.set_num_threads(threads)
        for dtype in (np.float32, np.float64):
            for R in (2048, 500):
                g = rng.integers(-4, 5, (R, 130)).astype(dtype)
                for cols in (128, 126, 600):
                    x = rng.integers(-4, 5, (R, cols)).astype(dtype)
                    for xv in (x, np.asfortranarray(x), x[:, :cols // 2]):
                        dw, db = F.weight_gradients(xv, g)
                        assert np.array_equal(dw, xv.T @ g), (dtype, R, xv.shape, xv.strides)
                        assert np.array_equal(db, g.sum(axis=0)), (dtype, R, xv.shape, xv.strides)
    finally:
        K.set_num_threads(before)


@given(st.integers(0, 40), st.integers(1, 20), st.integers(1, 70), DTYPES, DTYPES, layouts, seeds)
def test_weight_gradients_equal_numpy(r, k, n, dx, dg, layout, seed):
    rng = np.random.default_rng(seed)
    x, g = sample(rng, (r * 7, k * 7), dx, layout), sample(rng, (r * 7, n), dg, 0)
    want_w, want_b = R.weight_gradients(x, g)
    for got_w, got_b in (F.weight_gradients(x, g), K.weight_gradients(x, g)):
        assert got_w.dtype == got_b.dtype == np.result_type(x, g)
        ulps = 2 * (x.shape[0] + 1)   # sums of R products, in another order than NumPy's
        close(got_w, want_w, scale=1 + np.abs(x).T.astype(np.float64) @ np.abs(g), ulps=ulps)
        close(got_b, want_b, scale=1 + np.abs(g).sum(axis=0), ulps=ulps)


@st.composite
def linear_case(draw):
    """x (R, K) @ w (K, N) + b: rows around the tile and task edges, N around the panel edge,
    and K long enough at times for two threads to split it (K >= 4 max(R, N))."""
    r, n = draw(st.sampled_from([1, 7, 8, 9, 95, 97, 130])), draw(st.sampled_from([1, 31, 33, 64, 100]))
    k = draw(st.sampled_from([1, 40, 255, 257, 600]))
    return r, k, n


@given(linear_case(), DTYPES, DTYPES, st.booleans(), layouts, seeds)
def test_linear_equals_numpy(case, dx, db, with_bias, layout, seed):
    # gemm adds the bias in its register tile, at the first K slice only; the twin adds it after
    R_, K_, N = case
    rng = np.random.default_rng(seed)
    x, w = sample(rng, (R_, K_), dx, layout), rng.standard_normal((K_, N)).astype(dx)
    b = rng.standard_normal(N).astype(db) * 10 if with_bias else None
    want = R.linear(x, w, b)
    bound = np.abs(x).astype(np.float64) @ np.abs(w) + (0 if b is None else np.abs(b))
    for got in (F.linear(x, w, b), K.linear(x, w, b)):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.all(np.abs(got - want) <= 2 * (K_ + 2) * np.finfo(got.dtype).eps * bound + 1e-300)


def test_linear_adds_the_bias_once_on_integers():
    # integer values: exact sums, so a bias added at every K slice or in a padded column shows
    rng = np.random.default_rng(2)
    x = rng.integers(-4, 5, (67, 530)).astype(np.float32)
    w = rng.integers(-4, 5, (530, 130)).astype(np.float32)
    b = rng.integers(-50, 50, 130).astype(np.float32)
    assert np.array_equal(F.linear(x, w, b), x @ w + b)                # 2 threads split K = 530
    assert np.array_equal(F.linear(x[:, :300], w[:300], b), x[:, :300] @ w[:300] + b)   # the tile adds it
    assert np.array_equal(F.linear(x[:8, :40], w[:40], b), x[:8, :40] @ w[:40] + b)     # np.matmul path


# ---------------------------------------------------------------- attention

@st.composite
def attention_case(draw):
    # up to 40 rows: one block of the kernel's 48; 90-110: two or three blocks, which masks
    # with row ends (causal, prefix, ragged) let the kernel skip in part
    sizes = st.one_of(st.integers(1, 40), st.integers(90, 110))
    B, T, S = draw(st.integers(1, 3)), draw(sizes), draw(sizes)
    # d: 16/32/64 are whole narrow or wide panels (B read in place) in one dtype or the other
    H, d = draw(st.integers(1, 2)), draw(st.sampled_from([1, 4, 8, 16, 32, 33, 64]))
    kind = draw(st.sampled_from(["none", "causal", "prefix", "ragged", "decreasing", "random", "per-example"]))
    return B, T, S, H, d, kind, draw(st.booleans())


@given(attention_case(), DTYPES, seeds)
def test_attention_equals_numpy(case, dtype, seed):
    B, T, S, H, d, kind, dropout = case
    rng = np.random.default_rng(seed)
    D = H * d
    # q, k, v as column blocks of one wider array, as a fused qkv projection makes them
    qkv = rng.standard_normal((B, max(T, S), 3 * D)).astype(dtype)
    q, k, v = qkv[:, :T, :D], qkv[:, :S, D:2 * D], qkv[:, :S, 2 * D:]
    ends = rng.integers(0, S + 1, (B, 1, T, 1))            # ragged: row i keeps columns < its end (0: none)
    mask = {"none": None, "causal": np.tri(T, S, S - T, dtype=bool),
            "prefix": np.tri(T, S, S - T, dtype=bool) | (np.arange(S) < rng.integers(0, S + 1)),
            "ragged": np.arange(S) < ends,
            "decreasing": np.tri(T, S, S - T, dtype=bool)[::-1],   # later rows keep fewer columns
            "random": rng.random((T, S)) < 0.7, "per-example": rng.random((B, 1, T, S)) < 0.5}[kind]
    keep = ((rng.random((B, H, T, S)) >= 0.25) / 0.75).astype(dtype) if dropout else None
    gy = rng.standard_normal((B, T, D)).astype(dtype)
    y, p = F.attention_forward(q, k, v, H, mask, keep)
    ry, rp = R.attention_forward(q, k, v, H, mask, keep)
    close(p, rp, scale=1)
    close(y, ry, scale=1 + np.abs(v).max() * S)
    grads = F.attention_backward(q, k, v, H, p, gy, keep)
    want = R.attention_backward(q, k, v, H, rp, gy, keep)
    big = 1 + np.abs(qkv).max() ** 2 * np.abs(gy).max() * S * d
    for got, ref in zip(grads, want):
        close(got, ref, scale=big)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_attention_blocks_past_the_mask_are_skipped_exactly(dtype):
    # Rows 0-47 keep every column, rows 48-95 only the first 5, rows 96-109 all again: the
    # kernel computes only columns < 5 for the middle block, and its scratch for dS must
    # read as 0 past them when the key blocks' products sum over every query block. The
    # scratch is allocated fresh; NaNs freed just before make stale memory show up.
    rng = np.random.default_rng(3)
    B, T, H, d = 2, 110, 2, 8
    q, k, v, gy = (rng.standard_normal((B, T, H * d)).astype(dtype) for _ in range(4))
    mask = np.ones((T, T), bool)
    mask[48:96, 5:] = False
    for m in (mask, np.tri(T, dtype=bool)):
        y, p = F.attention_forward(q, k, v, H, m)
        ry, rp = R.attention_forward(q, k, v, H, m)
        assert np.all(p[..., 48:96, 5:] == 0) if m is mask else np.all(np.triu(p, 1) == 0)
        close(p, rp, scale=1)
        close(y, ry, scale=1 + np.abs(v).max() * T)
        del y
        stale = np.full((B, H, T, T), np.nan, dtype)    # freed: the kernel's scratch may reuse it
        del stale
        for got, ref in zip(F.attention_backward(q, k, v, H, p, gy), R.attention_backward(q, k, v, H, rp, gy)):
            close(got, ref, scale=1 + 16 * T * d)


def test_attention_helpers_compile_once_per_dtype():
    """Each helper the heads call is compiled once per dtype (`attention._helpers`), whatever
    the call sites present: P writable or read-only, a literal or variable first key, width
    KB or RB. Numba left to itself compiles 10 copies of these 4 per dtype (seconds in all)."""
    import importlib
    A = importlib.import_module("minillm.fast.attention")
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        q = rng.standard_normal((2, 100, 8)).astype(dtype)
        keep = ((rng.random((2, 2, 100, 100)) >= 0.25) / 0.75).astype(dtype)
        for mask, dropout in ((None, None), (np.tri(100, dtype=bool), keep)):
            y, p = F.attention_forward(q, q, q, 2, mask, dropout)
            F.attention_backward(q, q, q, 2, p, y, dropout)
    for helper in (A._times, A._product):
        assert len(helper.overloads) == 2, (helper, list(helper.overloads))      # one per dtype
    assert len(A._key_run.overloads) == 1, list(A._key_run.overloads)            # no float arguments
    # compiled only inside _key_run: not at all when that comes from the disk cache
    assert len(A._first_reaching.overloads) <= 1, list(A._first_reaching.overloads)


def test_attention_bad_input_is_a_clear_error():
    x = np.ones((2, 3, 4))
    with pytest.raises(ValueError, match="positive multiple of n_heads"):
        F.attention_forward(x, x, x, 3)
    with pytest.raises(ValueError, match=r"D \(0\) must be a positive multiple"):   # no heads of width 0
        F.attention_forward(np.ones((2, 3, 0)), np.ones((2, 3, 0)), np.ones((2, 3, 0)), 1)
    with pytest.raises(ValueError, match=r"attention.*\(2, 3, 4\).*\(2, 5, 4\)"):
        F.attention_forward(x, np.ones((2, 5, 4)), x, 2)
    with pytest.raises(ValueError, match="mask of shape"):
        F.attention_forward(x, x, x, 2, np.ones((4, 4), bool))


# ---------------------------------------------------------------- bias

@given(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=150), DTYPES, layouts, seeds)
def test_bias_add_and_row_sums_equal_numpy(shape, dtype, layout, seed):
    rng = np.random.default_rng(seed)
    g = sample(rng, shape, dtype, layout)          # sum_rows takes any layout
    close(F.sum_rows(g), R.sum_rows(np.ascontiguousarray(g)), scale=1 + np.abs(g).sum(axis=tuple(range(g.ndim - 1))))
    y, b = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape[-1:]).astype(dtype)
    want = R.add_bias(y.copy(), b)
    got = y.copy()
    assert F.add_bias(got, b) is got
    np.testing.assert_array_equal(got, want)       # one rounding per element either way


@given(hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=30), st.integers(1, 40), st.integers(1, 9),
       DTYPES, seeds)
def test_embedding_backward_equals_numpy(id_shape, D, V, dtype, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, id_shape)             # few ids: many repeats
    g = rng.standard_normal(id_shape + (D,)).astype(dtype)
    want = np.zeros((V, D), np.float64)
    np.add.at(want, ids.reshape(-1), g.reshape(-1, D))   # element by element, in float64
    for fn in (F.embedding_backward, R.embedding_backward, K.embedding_backward):
        got = fn(ids, g, V)
        assert got.dtype == dtype and got.shape == (V, D)
        close(got, want.astype(dtype), scale=1 + np.abs(g).reshape(-1, D).sum(0), ulps=4 * (1 + ids.size))


# ---------------------------------------------------------------- AdamW

@given(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=40), DTYPES, layouts,
       st.integers(1, 5), st.sampled_from([0.0, 0.1]), seeds)
def test_adamw_update_equals_numpy(shape, dtype, layout, t, wd, seed):
    rng = np.random.default_rng(seed)
    p, m = rng.standard_normal(shape).astype(dtype), rng.standard_normal(shape).astype(dtype) * 0.1
    v, g = np.abs(rng.standard_normal(shape)).astype(dtype) * 0.01, sample(rng, shape, dtype, layout)
    want = [a.copy() for a in (p, m, v)]
    R.adamw_update(*want[:1], g, *want[1:], 1e-2, (0.9, 0.95), 1e-8, wd, t)
    got = [a.copy() for a in (p, m, v)]
    F.adamw_update(got[0], g, got[1], got[2], 1e-2, (0.9, 0.95), 1e-8, wd, t)   # g may be a strided view
    for a, b in zip(got, want):
        close(a, b, scale=1.0)
    assert not np.array_equal(got[0], p)    # it did update in place


# ---------------------------------------------------------------- softmax family

@st.composite
def softmax_case(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=9))
    if draw(st.booleans()):
        shape = shape[:-1] + (draw(st.integers(30, 140)),)   # longer rows: the vector loop body
    kinds = ["none", "full", "broadcast", "rows-empty"] + (["causal"] if len(shape) >= 2 else [])
    return shape, draw(st.sampled_from(kinds))


def make_mask(rng, shape, kind):
    if kind == "none":
        return None
    if kind == "causal":   # a (Tq, Tk) causal mask read by every (B, H) block, as attention's scores
        return np.tri(shape[-2], shape[-1], shape[-1] - shape[-2], dtype=bool)
    if kind == "full":
        return rng.random(shape) < 0.7
    if kind == "broadcast":   # e.g. a (T, T) or (B, 1, 1, T) mask against (B, H, T, T) scores
        mshape = tuple(1 if rng.random() < 0.5 else d for d in shape)[int(rng.integers(0, len(shape))):]
        return rng.random(mshape) < 0.7
    m = rng.random(shape) < 0.7
    m.reshape(int(np.prod(shape[:-1])), shape[-1])[::2] = False      # every other row keeps nothing
    return m


@given(softmax_case(), DTYPES, layouts, st.sampled_from([1.0, 30.0, 1e4]), seeds)
def test_softmax_and_log_softmax_equal_numpy(case, dtype, layout, mag, seed):
    shape, kind = case
    rng = np.random.default_rng(seed)
    x = sample(rng, shape, dtype, layout, mag)
    mask = make_mask(rng, shape, kind)
    y = F.softmax(x, mask)
    close(y, R.softmax(x, mask), scale=1e-30 if dtype == np.float64 else 1e-6)
    ly = F.log_softmax(x, mask)
    scale = 1 + (np.abs(x).max() if x.size else 0)          # log-softmax values are O(max |x|)
    close(ly, R.log_softmax(x, mask), scale=scale)
    assert np.isfinite(y).all() and np.isfinite(ly).all()
    if x.size:   # a row that keeps nothing is all zeros, the rest sum to one
        sums = y.sum(-1)
        assert np.all((np.abs(sums - 1) < 1e-4) | (sums == 0))


@given(softmax_case(), DTYPES, layouts, seeds)
def test_softmax_backwards_equal_numpy(case, dtype, layout, seed):
    shape, kind = case
    rng = np.random.default_rng(seed)
    x, dy = sample(rng, shape, dtype, layout), sample(rng, shape, dtype, (layout + 1) % 3)
    mask = make_mask(rng, shape, kind)
    y = R.softmax(x, mask)
    close(F.softmax_backward(y, dy), R.softmax_backward(y, dy), scale=1 + np.abs(dy).sum(-1, keepdims=True))
    ly = R.log_softmax(x, mask)
    close(F.log_softmax_backward(ly, dy, mask), R.log_softmax_backward(ly, dy, mask),
          scale=1 + np.abs(dy).sum(-1, keepdims=True))


def test_fully_masked_rows_and_huge_logits():
    x = np.array([[1e30, -1e30, 0.0], [5.0, 6.0, 7.0], [1e38, 1e38, -1e38]], np.float32)
    mask = np.array([[True, True, False], [False, False, False], [True, True, True]])
    for fn in (F.softmax, F.log_softmax):
        y = fn(x, mask)
        assert np.isfinite(y).all()
        assert np.array_equal(y[1], np.zeros(3, np.float32))
    np.testing.assert_allclose(F.softmax(x, mask)[2], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(F.softmax(x, mask)[0], [1.0, 0.0, 0.0])


# ---------------------------------------------------------------- vexp (vmath.py)

_LIMITS = {np.float32: ("MIN_32", "MAX_32"), np.float64: ("MIN_64", "MAX_64")}


def _vexp(x):
    """vexp over an array, in compiled code (the only place it is defined)."""
    import numba
    from minillm.fast.vmath import vexp

    @numba.njit
    def each(x, out):
        for i in range(x.size):
            out[i] = vexp(x[i])
    out = np.empty_like(x)
    each(x, out)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vexp_within_one_ulp_of_exp(dtype):
    """Every normal result within 1 ULP of exp computed in extended precision, on a grid over
    the whole normal range and random points; below it 0, above it inf, as documented."""
    from minillm.fast import vmath
    lo, hi = (getattr(vmath, name) for name in _LIMITS[dtype])
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(lo, hi, 100001), rng.uniform(lo, hi, 50000),
                        rng.uniform(-1, 1, 50000), [0.0, -0.0, lo, hi]]).astype(dtype)
    want = np.exp(x.astype(np.longdouble))
    ulps = np.abs(_vexp(x).astype(np.longdouble) - want) / np.spacing(want.astype(dtype)).astype(np.longdouble)
    exact = np.finfo(np.longdouble).eps < np.finfo(dtype).eps   # else the reference itself is 0.5 ULP off
    assert ulps.max() < (1.0 if exact else 1.5), (ulps.max(), x[np.argmax(ulps)])
    edges = np.array([lo - 1, 2 * lo, -np.inf, hi + 1, 2 * hi, np.inf], dtype)
    np.testing.assert_array_equal(_vexp(edges), [0, 0, 0, np.inf, np.inf, np.inf])


# ---------------------------------------------------------------- GELU, LayerNorm, cross-entropy

@given(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40), DTYPES, layouts,
       st.sampled_from([1.0, 10.0, 1e3]), seeds)
def test_gelu_equals_numpy(shape, dtype, layout, mag, seed):
    rng = np.random.default_rng(seed)
    x = sample(rng, shape, dtype, layout if shape else 0, mag)
    dy = sample(rng, shape, dtype, 0)
    close(F.gelu(x), R.gelu(x), scale=1)
    # the twin's 1 - tanh^2 cancels for large |x|: its error grows like |dy| |x|^3 eps
    close(F.gelu_backward(x, dy), R.gelu_backward(x, dy), scale=np.abs(dy) * (1 + np.abs(x) ** 3))


@given(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=40), DTYPES, layouts,
       st.booleans(), seeds)
def test_layer_norm_equals_numpy(shape, dtype, layout, affine, seed):
    rng = np.random.default_rng(seed)
    x = sample(rng, shape, dtype, layout) + dtype(rng.normal() * 10)
    n = shape[-1]
    w, b = (rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)) if affine else (None, None)
    got, want = F.layer_norm(x, w, b, 1e-5), R.layer_norm(x, w, b, 1e-5)
    rows = x.size // n
    for g, r in zip(got, want):
        close(g, r, scale=1 + np.abs(r).max(), ulps=64)
    dy = sample(rng, shape, dtype, 0)
    gb, wb = F.layer_norm_backward(dy, x, w, *want[1:]), R.layer_norm_backward(dy, x, w, *want[1:])
    g = np.abs(dy) * (1 if w is None else np.abs(w))           # dx = rstd * (g - mean(g) - ...)
    close(gb[0], wb[0], scale=(want[2] * g).max() + 1, ulps=64 * n)
    for g, r in zip(gb[1:], wb[1:]):      # sums over rows: rounding grows with their number
        close(g, r, scale=np.abs(dy).max() * 4, ulps=8 * rows + 64)


@given(st.integers(0, 30), st.integers(1, 300), DTYPES, st.sampled_from([1.0, 1e3, 1e30]),
       st.sampled_from(["scalar", "rows"]), seeds)
def test_cross_entropy_equals_numpy(n, v, dtype, mag, scale_kind, seed):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((n, v)) * mag).astype(dtype)
    targets = rng.integers(0, v, n)
    targets[rng.random(n) < 0.3] = -100
    losses, lse = F.cross_entropy(logits, targets, -100)
    rlosses, rlse = R.cross_entropy(logits, targets, -100)
    big = 1 + np.abs(logits).max(initial=0)
    close(losses, rlosses, scale=big)
    close(lse, rlse, scale=big)
    assert np.isfinite(losses).all()
    scale = dtype(0.25) if scale_kind == "scalar" else rng.random(n).astype(dtype)
    close(F.cross_entropy_backward(logits, targets, lse, -100, scale),
          R.cross_entropy_backward(logits, targets, rlse, -100, scale), scale=1)


# ---------------------------------------------------------------- dtypes, bad input, switch, threads

def test_mixed_dtypes_promote_like_numpy():
    a32, b64 = np.ones((3, 4), np.float32), np.ones((4, 2), np.float64)
    assert F.matmul(a32, b64).dtype == np.float64 == F.gemm(a32, b64).dtype
    y = np.full((2, 3), 1 / 3, np.float32)
    assert F.softmax_backward(y, y.astype(np.float64)).dtype == np.float64
    x, w = np.ones((2, 3), np.float32), np.ones(3)
    for impl in (F, R):   # both backends: y, mean and rstd, dx, dw and db all promoted
        y, mean, rstd = impl.layer_norm(x, w, None, 1e-5)
        assert [a.dtype for a in (y, mean, rstd)] == [np.float64] * 3, impl
        assert [a.dtype for a in impl.layer_norm_backward(x, x, w, mean, rstd)] == [np.float64] * 3, impl


@pytest.mark.parametrize("call, err, words", [
    (lambda: F.matmul(np.ones((2, 3)), np.ones((4, 2))), ValueError, ["matmul", "(2, 3)", "(4, 2)"]),
    (lambda: F.gemm(np.ones((2, 2, 3)), np.ones((3, 3, 2))), ValueError, ["gemm", "batch"]),
    (lambda: F.gemm(np.ones(3), np.ones((3, 2))), ValueError, ["gemm", "2 dimensions"]),
    (lambda: F.matmul(np.ones((2, 2), int), np.ones((2, 2))), TypeError, ["matmul", "a", "int"]),
    (lambda: F.softmax(np.ones((2, 3)), np.ones((2, 4), bool)), ValueError, ["softmax", "mask", "(2, 4)", "(2, 3)"]),
    (lambda: F.softmax(np.ones((2, 3)), np.ones((2, 3))), TypeError, ["softmax", "mask", "bool"]),
    (lambda: F.softmax(np.ones(3, np.int64)), TypeError, ["softmax", "x"]),
    (lambda: F.softmax_backward(np.ones((2, 3)), np.ones((3, 2))), ValueError, ["softmax_backward", "(2, 3)", "(3, 2)"]),
    (lambda: F.log_softmax_backward(np.ones((2, 3)), np.ones((2, 2))), ValueError, ["log_softmax_backward"]),
    (lambda: F.adamw_update(np.ones((3, 4)).T, np.ones((4, 3)), np.ones((4, 3)), np.ones((4, 3)), 0.1, (0.9, 0.9),
                            1e-8, 0.0, 1), ValueError, ["adamw_update", "p", "C-contiguous"]),
    (lambda: F.adamw_update(np.ones(3), np.ones(4), np.ones(3), np.ones(3), 0.1, (0.9, 0.9), 1e-8, 0.0, 1),
     ValueError, ["adamw_update", "(3,)", "(4,)"]),
    (lambda: F.add_bias(np.ones((2, 3)), np.ones(2)), ValueError, ["add_bias", "(3,)", "(2,)"]),
    (lambda: F.linear(np.ones((2, 3)), np.ones((4, 5))), ValueError, ["linear", "(2, 3)", "(4, 5)"]),
    (lambda: F.weight_gradients(np.ones((2, 3)), np.ones((4, 5))), ValueError, ["weight_gradients", "(2, 3)", "(4, 5)"]),
    (lambda: F.linear(np.ones((2, 3)), np.ones((3, 5)), np.ones(4)), ValueError, ["linear", "b", "(5,)", "(4,)"]),
    (lambda: F.linear(np.ones((2, 3)), np.ones((3, 5), int)), TypeError, ["linear", "w", "int"]),
    (lambda: F.add_bias(np.ones((3, 2)).T, np.ones(3)), ValueError, ["add_bias", "C-contiguous"]),
    (lambda: F.sum_rows(np.ones((2, 3), int)), TypeError, ["sum_rows", "int"]),
    (lambda: F.embedding_backward(np.array([0, 3]), np.ones((2, 4)), 3), IndexError, ["embedding_backward", "[0, 3)", "0..3"]),
    (lambda: F.embedding_backward(np.array([0, 1]), np.ones((3, 4)), 3), ValueError, ["embedding_backward", "(2,)", "(3, 4)"]),
    (lambda: F.embedding_backward(np.array([0.0]), np.ones((1, 4)), 3), TypeError, ["embedding_backward", "ids", "float"]),
    (lambda: F.gelu_backward(np.ones(3), np.ones(4)), ValueError, ["gelu_backward", "(3,)", "(4,)"]),
    (lambda: F.layer_norm(np.ones((2, 3)), np.ones(4), None, 1e-5), ValueError, ["layer_norm", "weight", "(4,)"]),
    (lambda: F.cross_entropy(np.ones((2, 3)), np.array([0, 3]), -100), ValueError, ["cross_entropy", "targets"]),
    (lambda: F.cross_entropy(np.ones((2, 3)), np.array([0.0, 1.0]), -100), TypeError, ["cross_entropy", "integers"]),
    (lambda: F.cross_entropy(np.ones((2, 3)), np.array([0]), -100), ValueError, ["cross_entropy", "(2, 3)", "(1,)"]),
    (lambda: F.cross_entropy(np.ones((2, 3)), np.array([0, 1]), 2**64), ValueError, ["cross_entropy", "ignore_index"]),
    (lambda: F.cross_entropy(np.ones((2, 3)), np.array([0, 1]), -1.5), TypeError, ["cross_entropy", "ignore_index", "-1.5"]),
    (lambda: F.cross_entropy_backward(np.ones((2, 3)), np.array([0, 1]), np.ones(2), -100, np.ones(3)), ValueError,
     ["cross_entropy_backward", "scale", "(2,)", "(3,)"]),
    (lambda: F.cross_entropy_backward(np.ones((2, 3)), np.array([0, 1]), np.ones(2, complex), -100, 1.0), TypeError,
     ["cross_entropy_backward", "lse", "complex"]),
    (lambda: F.layer_norm(np.ones((2, 3)), None, None, None), TypeError, ["layer_norm", "eps", "None"]),
    (lambda: F.layer_norm(np.ones((2, 3)), None, None, np.array([1e-5])), TypeError, ["layer_norm", "eps", "ndarray"]),
    (lambda: F.layer_norm(np.ones((2, 3)), None, None, -1e-5), ValueError, ["layer_norm", "eps", "-1e-05"]),
    (lambda: F.layer_norm(np.ones((2, 3)), None, None, float("nan")), ValueError, ["layer_norm", "eps", "nan"]),
    (lambda: F.attention_forward(np.ones((1, 2, 4)), np.ones((1, 2, 4)), np.ones((1, 2, 4)), 2.0), TypeError,
     ["attention", "n_heads", "2.0"]),
    (lambda: F.attention_forward(np.ones((1, 2, 4)), np.ones((1, 2, 4)), np.ones((1, 2, 4)), 0), ValueError,
     ["attention", "n_heads", "0"]),
    (lambda: F.attention_backward(np.ones((1, 2, 4)), np.ones((1, 2, 4)), np.ones((1, 2, 4)), 1, np.ones((1, 1, 2, 2)),
                                  np.ones((1, 2, 4), int)), TypeError, ["attention", "gy", "int"]),
    (lambda: F.attention_forward(np.ones((1, 2, 4)), np.ones((1, 2, 4)), np.ones((1, 2, 4)), 1,
                                 keep=np.ones((1, 1, 2, 2), complex)), TypeError, ["attention", "keep", "complex"]),
    (lambda: F.add_bias(np.ones((2, 2)), np.array([1 + 5j, 2j])), TypeError, ["add_bias", "b", "complex"]),
    (lambda: F.add_bias(np.array(1.0), np.array(2.0)), ValueError, ["add_bias", "y", "1 dimension"]),
    (lambda: F.adamw_update(np.ones(2), np.ones(2, complex), np.ones(2), np.ones(2), 0.1, (0.9, 0.9), 1e-8, 0.0, 1),
     TypeError, ["adamw_update", "g", "complex"]),
    (lambda: F.embedding_backward(np.array(1), np.float64(2.0), 3), ValueError, ["embedding_backward", "g", "()"]),
])
def test_bad_input_is_a_clear_error(call, err, words):
    with pytest.raises(err) as info:
        call()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_kernels_gemm_stays_the_function_after_its_module_is_imported():
    # importing a submodule binds its name in its package: a kernel module named gemm once
    # replaced the function minillm.kernels.gemm on the first call (which imports the backend)
    import pkgutil

    import minillm
    import minillm.fast
    modules = [m.name for m in pkgutil.iter_modules(minillm.fast.__path__)]
    assert {"gemm_kernel", "gemm_plain", "ops", "threads"} <= set(modules), modules
    for name in modules:
        importlib.import_module(f"minillm.fast.{name}")
    a = np.arange(6.0).reshape(2, 3)
    for _ in range(2):
        np.testing.assert_array_equal(minillm.kernels.gemm(a, a.T), a @ a.T)


def test_softmax_backward_read_only_dy():
    rng = np.random.default_rng(3)
    y = R.softmax(rng.standard_normal((4, 5)))
    dy = rng.standard_normal((4, 5))
    ro = dy.copy()
    ro.setflags(write=False)     # as a gradient broadcast by a sum's backward arrives
    for g in (ro, np.broadcast_to(dy[:1], dy.shape)):
        np.testing.assert_allclose(F.softmax_backward(y, g), R.softmax_backward(y, g), rtol=1e-12, atol=1e-15)
    assert np.array_equal(ro, dy)


def test_add_bias_with_b_a_view_of_y():
    y = np.arange(12, dtype=np.float32).reshape(4, 3)
    want = y + y[0]
    np.testing.assert_array_equal(F.add_bias(y, y[0]), want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_backward_is_exactly_flat_for_large_inputs(dtype):
    # GELU'(x) is 1 (x > 0) and 0 (x < 0) to the last bit from |x| ~ 10 up; computed as
    # written, its second term was 0 * inf = nan once x^3 overflowed (float32 from ~1e13)
    big = np.array([10.0, 1e4, 3e4, 1e13, 1e19, np.finfo(dtype).max], dtype)
    dy = np.full(big.shape, 2.0, dtype)
    np.testing.assert_array_equal(F.gelu_backward(big, dy), np.full(big.shape, 2.0, dtype))
    np.testing.assert_array_equal(F.gelu_backward(-big[1:], dy[1:]), np.zeros(big.size - 1, dtype))
    x = np.array([-9999.0, -30.0, 0.5, 9999.0], dtype)      # below the cut: the twin's values
    np.testing.assert_allclose(F.gelu_backward(x, dy[:4]), R.gelu_backward(x, dy[:4]), atol=1e-30)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_backward_within_a_few_ulps_of_the_exact_derivative(dtype):
    """Against the tanh form's derivative s + d in extended precision, with s = sigmoid(2u) and
    d = 2 x s (1 - s) u', 1 - s computed without cancellation. Computed as 1 - s, the kernel
    lost most of d at x ~ 4-10 (measured: 16.5 ULP in float32, 43.5 in float64)."""
    x = np.linspace(-12, 12, 24001).astype(dtype)
    xl, c, a = x.astype(np.longdouble), np.longdouble(np.sqrt(2 / np.pi)), np.longdouble(0.044715)
    u = c * (xl + a * xl ** 3)
    s, rest = 1 / (1 + np.exp(-2 * u)), 1 / (1 + np.exp(2 * u))      # s and 1 - s, each direct
    d = 2 * xl * s * rest * c * (1 + 3 * a * xl ** 2)
    got = F.gelu_backward(x, np.ones_like(x)).astype(np.longdouble)
    eps, floor = np.finfo(dtype).eps, np.finfo(dtype).tiny / np.finfo(dtype).eps   # below: underflow
    # scale: the larger of the result and s (the two terms cancel near x = -0.75), plus d's
    # share of exp's conditioning (its argument 2u is only known to within |2u| eps)
    ulps = np.abs(got - (s + d)) / (eps * (np.maximum(np.abs(s + d), s) + 2 * np.abs(u * d)) + floor)
    assert ulps.max() < 4, (ulps.max(), x[np.argmax(ulps)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_rstd_exact_at_zero_and_overflowing_variance(dtype):
    x = np.array([[1.0, -1.0], [3.0, 3.0], [2e19, -2e19] if dtype == np.float32 else [1e160, -1e160]], dtype)
    y, mean, rstd = F.layer_norm(x, None, None, 0.0)
    assert rstd[0, 0] == 1 and y[0].tolist() == [1, -1]   # var 1: exactly 1, not a reciprocal estimate
    assert rstd[1, 0] == np.inf                            # var + eps = 0: as NumPy, 1 / 0
    assert rstd[2, 0] == 0 and not y[2].any()              # var overflows to inf: 1 / sqrt(inf) = 0
    with np.errstate(all="ignore"):
        _, rmean, rrstd = R.layer_norm(x, None, None, 0.0)
    np.testing.assert_array_equal(rstd, rrstd)
    empty = F.layer_norm(np.zeros((3, 0), dtype), None, None, 1e-5)   # no values: mean and rstd nan, as NumPy
    assert empty[0].shape == (3, 0) and np.isnan(empty[1]).all() and np.isnan(empty[2]).all()
    assert empty[1].shape == empty[2].shape == (3, 1)


@pytest.mark.parametrize("dtype, big", [(np.float32, 1e8), (np.float64, 1e17)])
def test_log_softmax_keeps_the_log_sum_beside_large_logits(dtype, big):
    # x - (max + log s) rounds max + log s to max when |max| >> log s; (x - max) - log s does not
    x = np.array([[big, big, -np.inf], [big, big - 1, big - 2]], dtype)
    for got in (F.log_softmax(x), F.log_softmax(x, np.array([True, True, False]))):
        np.testing.assert_allclose(got[0, :2], [-np.log(2)] * 2, rtol=4 * np.finfo(dtype).eps)
    np.testing.assert_allclose(F.log_softmax(x)[1], R.log_softmax(x.astype(np.float64))[1],
                               rtol=4 * np.finfo(dtype).eps)


def test_backend_switch():
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    tril = np.tri(3, 5, 2, dtype=bool)
    with K.use("numpy"):
        assert K.backend() == "numpy"
        assert np.array_equal(K.softmax(x, tril), R.softmax(x, tril))
    with K.use("numba"):
        assert K.backend() == "numba"
        assert np.array_equal(K.softmax(x, tril), F.softmax(x, tril))
    with pytest.raises(ValueError, match="backend"):
        with K.use("cuda"):
            pass


def test_thread_count_does_not_change_results():
    x = np.random.default_rng(1).standard_normal((64, 40, 33)).astype(np.float32)   # gemm splits work at 2
    tril = np.tri(40, 33, dtype=bool)
    before = K.num_threads()
    try:
        assert K.set_num_threads(1) == 1 == K.num_threads()
        one = F.softmax(x, tril), F.gemm(x, x.swapaxes(-1, -2))
        K.set_num_threads(2)
        two = F.softmax(x, tril), F.gemm(x, x.swapaxes(-1, -2))
    finally:
        K.set_num_threads(before)
    for a, b in zip(one, two):
        assert np.array_equal(a, b)


def test_a_cold_compile_says_so_once_and_a_cached_start_says_nothing(tmp_path):
    # two fresh processes sharing an empty Numba cache, compiling two small float32 kernels
    # (~5 s each): the first compiles and prints one line, the second loads and prints nothing
    code = ("import numpy as np; from minillm.fast import bias; x = np.ones((2, 3), np.float32); "
            "bias.add_bias(x, x[0]); bias.sum_rows(x)")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), MINILLM_NUM_THREADS="1")
    cold, cached = (subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                   timeout=120) for _ in range(2))
    assert cold.returncode == 0 == cached.returncode, cold.stderr + cached.stderr
    assert cold.stderr.count("minillm: compiling Numba kernels") == 1, cold.stderr
    assert "for float32" in cold.stderr and "float64" not in cold.stderr, cold.stderr   # float64: when used
    assert "compiling" not in cached.stderr, cached.stderr


def test_jit_falls_back_without_a_cache(monkeypatch):
    import numba

    from minillm.fast import threads
    real = numba.njit

    def no_cache_location(*args, **kw):
        if kw.get("cache"):
            raise RuntimeError("cannot cache function: no locator available")
        return real(*args, **kw)

    monkeypatch.setattr(threads.numba, "njit", no_cache_location)

    @threads.jit()
    def add(a, b):
        return a + b
    assert add(2, 3) == 5


def test_512_bit_vectors_only_on_avx512_and_never_over_the_users_choice(monkeypatch):
    import numba

    from minillm.fast import threads
    host = "+sse2,+avx2,+avx512f,+fma"

    class Features:
        def __init__(self, text):
            self.text = text

        def flatten(self):
            return self.text

    monkeypatch.setattr(threads.binding, "get_host_cpu_features", lambda: Features(host))
    monkeypatch.setattr(numba.config, "CPU_FEATURES", None)
    monkeypatch.delenv("NUMBA_CPU_FEATURES", raising=False)
    threads._prefer_512_bit_vectors()
    assert numba.config.CPU_FEATURES == host + ",-prefer-256-bit"

    monkeypatch.setattr(numba.config, "CPU_FEATURES", None)
    monkeypatch.setenv("NUMBA_CPU_FEATURES", "+avx2")        # the user's choice stands
    threads._prefer_512_bit_vectors()
    assert numba.config.CPU_FEATURES is None

    monkeypatch.delenv("NUMBA_CPU_FEATURES")
    host = "+sse2,+avx2,+fma"                                 # no AVX-512: nothing to change
    threads._prefer_512_bit_vectors()
    assert numba.config.CPU_FEATURES is None


def test_compile_message_hook_leaves_other_numba_functions_alone():
    """The cold-start listener sees every Numba compile in the process; a user's function
    whose __module__ is None (made by exec, or sympy.lambdify) must still compile."""
    import numba
    K.num_threads()                     # loads minillm's Numba backend and its listener
    ns = {}
    exec("def f(x):\n    return x * x + 1", ns)
    ns["f"].__module__ = None
    assert numba.njit(ns["f"])(3.0) == 10.0
