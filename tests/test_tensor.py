"""The engine's specification: every op's gradient against finite differences (float64, random
shapes with broadcasting), forward values against NumPy in both dtypes, and graph semantics."""
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st
from hypothesis.extra import numpy as hnp

import minillm as mm
from minillm import functional as F
from minillm.testing import arrays, broadcastable_pair, broadcastable_shapes, gradcheck, shapes

BINARY = {
    "add": (lambda a, b: a + b, np.add, (-3, 3)),
    "sub": (lambda a, b: a - b, np.subtract, (-3, 3)),
    "mul": (lambda a, b: a * b, np.multiply, (-3, 3)),
    "div": (lambda a, b: a / b, np.divide, (0.5, 3)),
    "pow": (lambda a, b: a ** b, np.power, (0.5, 2)),
}


@pytest.mark.parametrize("name", BINARY)
@given(data=st.data())
def test_binary_gradients_with_broadcasting(name, data):
    op, _, (lo, hi) = BINARY[name]
    a, b = data.draw(broadcastable_pair(low=lo, high=hi))
    gradcheck(op, a, b)


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(data=st.data())
def test_binary_forward_matches_numpy_and_keeps_dtype(name, dtype, data):
    op, ref, (lo, hi) = BINARY[name]
    a, b = data.draw(broadcastable_pair(dtype=dtype, low=lo, high=hi))
    out = op(mm.Tensor(a), mm.Tensor(b))
    assert out.dtype == dtype
    np.testing.assert_allclose(out.data, ref(a, b), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_python_scalars_are_weakly_typed(dtype):
    x = mm.Tensor(np.ones(3, dtype))
    for y in (x * 2.0, 2.0 * x, x + 1, 1 - x, x / 3.0, 3.0 / x, x ** 2, 2.0 ** x, -x):
        assert y.dtype == dtype


def test_constructor_dtypes():
    assert mm.Tensor([1.0, 2.0]).dtype == np.float32
    assert mm.Tensor(2.5).dtype == np.float32
    assert mm.Tensor(np.zeros(2)).dtype == np.float64
    assert mm.Tensor(np.arange(3)).dtype.kind == "i"
    with pytest.raises(TypeError, match="float"):
        mm.Tensor(np.arange(3), requires_grad=True)


@st.composite
def matmul_operands(draw):
    """Operands for np.matmul: 1-D or batched, with broadcast batch dimensions."""
    n, k, m = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ba, bb = draw(broadcastable_shapes(2, max_dims=2, max_side=3))
    sa = draw(st.sampled_from([(k,), ba + (n, k)]))
    sb = draw(st.sampled_from([(k,), bb + (k, m)]))
    return draw(arrays(sa)), draw(arrays(sb))


@given(ab=matmul_operands())
def test_matmul_gradients_batched_and_1d(ab):
    a, b = ab
    np.testing.assert_allclose((mm.Tensor(a) @ mm.Tensor(b)).data, np.matmul(a, b), rtol=1e-10)
    gradcheck(lambda x, y: x @ y, a, b)


def test_matmul_with_ndarray_on_either_side():
    a, b = np.random.default_rng(0).standard_normal((2, 3, 4)), np.ones((4, 2))
    np.testing.assert_allclose((a @ mm.Tensor(b)).data, a @ b)
    np.testing.assert_allclose((mm.Tensor(a) @ b).data, a @ b)


UNARY = {
    "exp": (lambda x: x.exp(), np.exp, (-3, 3)),
    "log": (lambda x: x.log(), np.log, (0.2, 5)),
    "tanh": (lambda x: x.tanh(), np.tanh, (-3, 3)),
    "sigmoid": (lambda x: x.sigmoid(), lambda x: 1 / (1 + np.exp(-x)), (-6, 6)),
    "relu": (lambda x: x.relu(), lambda x: np.maximum(x, 0), (-3, 3)),
    "sqrt": (lambda x: x.sqrt(), np.sqrt, (0.2, 5)),
    "neg": (lambda x: -x, np.negative, (-3, 3)),
    "pow_scalar": (lambda x: x ** 3, lambda x: x ** 3, (-2, 2)),
    "pow_fraction": (lambda x: x ** 0.5, np.sqrt, (0.2, 4)),
    "gelu": (F.gelu, lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))), (-4, 4)),
}


@pytest.mark.parametrize("name", UNARY)
@given(data=st.data())
def test_unary_gradients(name, data):
    op, _, (lo, hi) = UNARY[name]
    x = data.draw(arrays(data.draw(shapes()), low=lo, high=hi))
    if name == "relu":
        assume(np.all(np.abs(x) > 1e-3))  # relu has no derivative at 0
    gradcheck(op, x)


@pytest.mark.parametrize("name", UNARY)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(data=st.data())
def test_unary_forward_matches_numpy(name, dtype, data):
    op, ref, (lo, hi) = UNARY[name]
    x = data.draw(arrays(data.draw(shapes()), dtype=dtype, low=lo, high=hi))
    out = op(mm.Tensor(x))
    assert out.dtype == dtype
    np.testing.assert_allclose(out.data, ref(x.astype(np.float64)), rtol=2e-6 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_sigmoid_does_not_overflow():
    with np.errstate(over="raise"):
        y = mm.Tensor(np.array([-1000.0, 1000.0], np.float32)).sigmoid()
    np.testing.assert_array_equal(y.data, [0, 1])


@st.composite
def array_and_axis(draw, unique=False):
    shape = draw(shapes(min_dims=1))
    x = draw(arrays(shape)) if not unique else draw(
        hnp.arrays(
            np.float64, shape, elements=st.floats(-3, 3, allow_nan=False), unique=True))
    axis = draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1),
                          st.lists(st.integers(0, len(shape) - 1), min_size=1, unique=True).map(tuple)))
    return x, axis, draw(st.booleans())


@pytest.mark.parametrize("name", ["sum", "mean", "max"])
@given(xak=array_and_axis(unique=True))
def test_reductions(name, xak):
    x, axis, keepdims = xak
    if name == "max":  # finite differences need the maximum to stand clear of the runner-up
        assume(x.size < 2 or np.diff(np.sort(x, axis=None)).min() > 1e-4)
    op = lambda t: getattr(t, name)(axis=axis, keepdims=keepdims)  # noqa: E731
    np.testing.assert_allclose(op(mm.Tensor(x)).data, getattr(np, name if name != "max" else "amax")(x, axis=axis, keepdims=keepdims))
    gradcheck(op, x)


def test_max_ties_split_the_gradient():
    x = mm.Tensor(np.array([1.0, 3.0, 3.0, 2.0]), requires_grad=True)
    x.max().backward()
    np.testing.assert_array_equal(x.grad, [0, 0.5, 0.5, 0])


@given(x=arrays(shapes(min_dims=1, max_dims=4)), data=st.data())
def test_reshape_and_transpose(x, data):
    perm = data.draw(st.permutations(range(x.ndim)))
    gradcheck(lambda t: t.transpose(*perm), x)
    gradcheck(lambda t: t.T, x)
    gradcheck(lambda t: t.reshape(-1), x)
    gradcheck(lambda t: t.reshape((x.size, 1)), x)
    np.testing.assert_array_equal(mm.Tensor(x).transpose(*perm).data, x.transpose(perm))


@given(x=arrays(shapes(min_dims=1, max_dims=3, max_side=5)), data=st.data())
def test_indexing_slices_and_integer_arrays(x, data):
    n = x.shape[0]
    idx = np.array(data.draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=6)))
    start = data.draw(st.integers(0, n - 1))
    for index in (idx, slice(start, None, 2), (slice(None), Ellipsis), (idx, Ellipsis)):
        np.testing.assert_array_equal(mm.Tensor(x)[index].data, x[index])
        gradcheck(lambda t: t[index], x)


def test_indexing_repeated_indices_accumulate():
    x = mm.Tensor(np.zeros(3), requires_grad=True)
    x[np.array([0, 0, 2, 0])].sum().backward()
    np.testing.assert_array_equal(x.grad, [3, 0, 1])


@st.composite
def masked_input(draw):
    shape = draw(shapes(min_dims=1, max_dims=3))
    x = draw(arrays(shape, low=-5, high=5))
    mshape = draw(st.sampled_from([shape, shape[-1:], (1,) * len(shape)]))
    mask = draw(hnp.arrays(np.bool_, mshape))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    return x, mask, axis


@pytest.mark.parametrize("backend", mm.kernels.BACKENDS)
@given(xma=masked_input())
def test_softmax_and_log_softmax_with_mask(backend, xma):
    x, mask, axis = xma
    with mm.kernels.use(backend):
        full = np.broadcast_to(mask, x.shape)
        y = F.softmax(mm.Tensor(x), axis=axis, mask=mask).data
        e = np.where(full, np.exp(x - x.max(axis=axis, keepdims=True)), 0)
        s = e.sum(axis=axis, keepdims=True)
        np.testing.assert_allclose(y, np.where(s > 0, e / np.where(s > 0, s, 1), 0), atol=1e-12)
        ly = F.log_softmax(mm.Tensor(x), axis=axis, mask=mask).data
        assert np.all(np.isfinite(ly)) and np.all(np.isfinite(y))
        np.testing.assert_allclose(np.where(full, np.exp(ly), 0), y, atol=1e-12)
        gradcheck(lambda t: F.softmax(t, axis=axis, mask=mask), x)
        gradcheck(lambda t: F.log_softmax(t, axis=axis, mask=mask), x)


def test_fully_masked_rows_give_zeros_and_zero_gradient():
    x = mm.Tensor(np.random.default_rng(0).standard_normal((2, 3)), requires_grad=True)
    mask = np.array([[True, False, True], [False, False, False]])
    for f in (F.softmax, F.log_softmax):
        x.grad = None
        y = f(x, mask=mask)
        assert np.all(y.data[1] == 0) and np.all(np.isfinite(y.data))
        (y * np.arange(1.0, 7.0).reshape(2, 3)).sum().backward()
        assert np.all(x.grad[1] == 0) and x.grad[0, 1] == 0


def test_softmax_large_logits_do_not_overflow():
    y = F.softmax(mm.Tensor(np.array([[1e4, 0, -1e4]], np.float32))).data
    np.testing.assert_allclose(y, [[1, 0, 0]])


@pytest.mark.parametrize("backend", mm.kernels.BACKENDS)
@given(x=arrays(shapes(min_dims=1, max_dims=3, min_side=2)), data=st.data())
def test_layer_norm(backend, x, data):
    n = x.shape[-1]
    w = data.draw(arrays((n,)))
    b = data.draw(arrays((n,)))
    with mm.kernels.use(backend):
        y = F.layer_norm(mm.Tensor(x), mm.Tensor(w), mm.Tensor(b)).data
        ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w + b
        np.testing.assert_allclose(y, ref, rtol=1e-9, atol=1e-9)
        gradcheck(lambda t, wt, bt: F.layer_norm(t, wt, bt), x, w, b, rtol=1e-3)


def grads_of(fn, *arrays):
    """Output and gradients of sum(fn(*leaves) * fixed weights) w.r.t. every array."""
    leaves = [mm.Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = fn(*leaves)
    (out * np.random.default_rng(1).standard_normal(out.shape)).sum().backward()
    return out.data, [t.grad for t in leaves]


@pytest.mark.parametrize("backend", mm.kernels.BACKENDS)
@given(data=st.data())
def test_linear_equals_matmul_plus_bias(backend, data):
    lead = data.draw(shapes(min_dims=0, max_dims=2))
    d_in, d_out = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    x, w, b = data.draw(arrays(lead + (d_in,))), data.draw(arrays((d_in, d_out))), data.draw(arrays((d_out,)))
    with mm.kernels.use(backend):
        for fused, plain, args in ((lambda x, w, b: F.linear(x, w, b), lambda x, w, b: x @ w + b, (x, w, b)),
                                   (lambda x, w: F.linear(x, w), lambda x, w: x @ w, (x, w))):
            y, g = grads_of(fused, *args)
            y_ref, g_ref = grads_of(plain, *args)
            np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
            for a, r in zip(g, g_ref):
                np.testing.assert_allclose(a, r, rtol=1e-12, atol=1e-12)
            gradcheck(fused, *args)
    y32 = F.linear(mm.Tensor(x.astype(np.float32)), w.astype(np.float32), b.astype(np.float32))
    assert y32.dtype == np.float32


def unfused_attention(q, k, v, H, mask=None, dropout=0.0, rng=None):
    """Attention composed of engine ops: the definition `F.attention` is tested against."""
    (B, T, D), S = q.shape, k.shape[1]
    heads = lambda t, n: t.reshape(B, n, H, D // H).transpose(0, 2, 1, 3)  # noqa: E731
    att = F.softmax(heads(q, T) @ heads(k, S).transpose(0, 1, 3, 2) * (1 / np.sqrt(D // H)), mask=mask)
    dropped = F.dropout(att, dropout, True, rng) if dropout else att
    return (dropped @ heads(v, S)).transpose(0, 2, 1, 3).reshape(B, T, D), att.data


@pytest.mark.parametrize("backend", mm.kernels.BACKENDS)
@given(data=st.data())
def test_attention_equals_unfused_composition(backend, data):
    B, T, S = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    H = data.draw(st.sampled_from([1, 2, 3]))
    D = H * data.draw(st.integers(1, 3))
    q, k, v = data.draw(arrays((B, T, D))), data.draw(arrays((B, S, D))), data.draw(arrays((B, S, D)))
    mask = data.draw(st.sampled_from([None, (T, S), (B, 1, T, S), (B, 1, 1, S)]))
    if mask is not None:
        mask = np.random.default_rng(data.draw(st.integers(0, 99))).random(mask) < 0.6
    drop = data.draw(st.sampled_from([0.0, 0.3]))
    with mm.kernels.use(backend):
        fused = lambda q, k, v: F.attention(q, k, v, H, mask, drop, rng=5)[0]  # noqa: E731
        plain = lambda q, k, v: unfused_attention(q, k, v, H, mask, drop, np.random.default_rng(5))[0]  # noqa: E731
        y, g = grads_of(fused, q, k, v)
        y_ref, g_ref = grads_of(plain, q, k, v)
        np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-12)
        for a, r in zip(g, g_ref):
            np.testing.assert_allclose(a, r, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(F.attention(q, k, v, H, mask)[1], unfused_attention(
            mm.Tensor(q), mm.Tensor(k), mm.Tensor(v), H, mask)[1], rtol=1e-10, atol=1e-12)
        gradcheck(fused, q, k, v)


def test_attention_keeps_float32_and_leaves_inputs_alone():
    rng = np.random.default_rng(0)
    q, k, v = (mm.Tensor(rng.standard_normal((2, 3, 4)).astype(np.float32), requires_grad=True) for _ in range(3))
    before = q.data.copy()
    y, p = F.attention(q, k, v, 1, mask=np.tri(3, dtype=bool))
    y.sum().backward()
    assert y.dtype == p.dtype == q.grad.dtype == k.grad.dtype == v.grad.dtype == np.float32
    np.testing.assert_array_equal(q.data, before)  # one head: the scaled head copy is not a view of q
    with pytest.raises(ValueError, match="n_heads"):
        F.attention(q, k, v, 3)


@given(data=st.data())
def test_embedding(data):
    V, D = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 4))
    w = data.draw(arrays((V, D)))
    ids = np.array(data.draw(st.lists(st.lists(st.integers(0, V - 1), min_size=1, max_size=4), min_size=1, max_size=3)
                             .filter(lambda rows: len({len(r) for r in rows}) == 1)))
    np.testing.assert_array_equal(F.embedding(ids, mm.Tensor(w)).data, w[ids])
    gradcheck(lambda wt: F.embedding(ids, wt), w)


def test_embedding_out_of_range_names_the_id():
    with pytest.raises(IndexError, match="token id 7"):
        F.embedding(np.array([1, 7]), mm.Tensor(np.zeros((5, 2))))


@given(x=arrays(shapes(min_dims=1)), p=st.sampled_from([0.0, 0.1, 0.5, 0.9]))
def test_dropout(x, p):
    gradcheck(lambda t: F.dropout(t, p, training=True, rng=3), x)
    y = F.dropout(mm.Tensor(x), p, training=True, rng=3).data
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p))
    np.testing.assert_array_equal(F.dropout(mm.Tensor(x), p, training=False).data, x)


def test_dropout_keeps_expected_fraction():
    y = F.dropout(mm.Tensor(np.ones(100_000, np.float32)), 0.3, training=True, rng=0).data
    assert y.dtype == np.float32
    assert abs((y != 0).mean() - 0.7) < 0.01 and abs(y.mean() - 1) < 0.02


@given(data=st.data())
def test_concat(data):
    base = data.draw(shapes(min_dims=1, max_dims=3))
    axis = data.draw(st.integers(0, len(base) - 1))
    parts = [data.draw(arrays(base[:axis] + (data.draw(st.integers(1, 3)),) + base[axis + 1:])) for _ in range(3)]
    np.testing.assert_array_equal(F.concat([mm.Tensor(p) for p in parts], axis).data, np.concatenate(parts, axis))
    gradcheck(lambda *ts: F.concat(ts, axis), *parts)


@given(ab=broadcastable_pair(), data=st.data())
def test_where(ab, data):
    a, b = ab
    cond = data.draw(hnp.arrays(np.bool_, np.broadcast_shapes(a.shape, b.shape)))
    np.testing.assert_array_equal(F.where(cond, mm.Tensor(a), mm.Tensor(b)).data, np.where(cond, a, b))
    gradcheck(lambda x, y: F.where(cond, x, y), a, b)
    gradcheck(lambda x: F.where(cond, -7.0, x), np.broadcast_to(a, cond.shape).copy())   # a scalar branch


@pytest.mark.parametrize("backend", mm.kernels.BACKENDS)
@given(data=st.data())
def test_cross_entropy(backend, data):
    lead = data.draw(shapes(min_dims=1, max_dims=2))
    V = data.draw(st.integers(1, 6))
    logits = data.draw(arrays(lead + (V,), low=-5, high=5))
    targets = np.array(data.draw(hnp.arrays(
        np.int64, lead, elements=st.sampled_from(list(range(V)) + [-100]))))
    with mm.kernels.use(backend):
        loss = F.cross_entropy(mm.Tensor(logits), targets).item()
        keep = targets != -100
        lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        picked = np.take_along_axis(lp, np.where(keep, targets, 0)[..., None], -1)[..., 0]
        expected = -picked[keep].mean() if keep.any() else 0.0
        np.testing.assert_allclose(loss, expected, rtol=1e-10, atol=1e-12)
        gradcheck(lambda t: F.cross_entropy(t, targets), logits)


def test_cross_entropy_is_stable_and_checks_targets():
    logits = mm.Tensor(np.array([[1000.0, -1000.0]], np.float32), requires_grad=True)
    loss = F.cross_entropy(logits, np.array([1]))
    assert np.isfinite(loss.item()) and abs(loss.item() - 2000) < 1e-2
    with pytest.raises(ValueError, match="target 2 is outside"):
        F.cross_entropy(logits, np.array([2]))
    with pytest.raises(ValueError, match="shape"):
        F.cross_entropy(logits, np.array([0, 1]))


# ---- graph semantics ---------------------------------------------------------------------

def test_reuse_gets_both_contributions():
    x = mm.Tensor(np.array([3.0]), requires_grad=True)
    y = x * x + x  # dy/dx = 2x + 1
    y.backward()
    assert x.grad[0] == 7


def test_many_uses_accumulate_in_place_without_sharing_memory():
    # x + w hands one gradient array to both x and w; x is used three more times, so its
    # sum is made once and then added to in place, and h's sum (h feeds three ops) too. The
    # leaves' .grad must be right and must not share memory with each other.
    rng = np.random.default_rng(0)
    x = mm.Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    w = mm.Tensor(rng.standard_normal((3, 4)), requires_grad=True)
    h = (x + w) * 2
    y = (h + h * h + h + x + x * 3 + x).sum()    # dy/dh = 2 + 2h, dy/dx = 2 dy/dh + 5
    y.backward()
    dh = 2 + 2 * h.data
    assert np.allclose(x.grad, 2 * dh + 5) and np.allclose(w.grad, 2 * dh)
    assert not np.shares_memory(x.grad, w.grad)
    w.grad *= 0                                   # changing one leaf's grad leaves the other alone
    assert np.allclose(x.grad, 2 * dh + 5)
    # here x + w is the last use of x: x and w first receive the very array the final add
    # handed to both of its inputs, which must not be added to in place
    x.grad = w.grad = None
    y = ((x * 3 + x * x) + (x + w)).sum()
    y.backward()
    assert np.allclose(x.grad, 4 + 2 * x.data) and np.allclose(w.grad, 1)
    x.grad = w.grad = None
    (x + w).sum().backward()                      # one array for both, so each leaf gets a copy
    assert not np.shares_memory(x.grad, w.grad)


def test_backward_twice_accumulates():
    x = mm.Tensor(np.array([2.0]), requires_grad=True)
    y = (x * 3).sum()
    y.backward()
    y.backward()
    assert x.grad[0] == 6


def test_intermediates_get_no_grad_and_leaves_that_do_not_require_grad_neither():
    x = mm.Tensor(np.ones(2), requires_grad=True)
    c = mm.Tensor(np.ones(2))
    h = x * 2
    (h * c).sum().backward()
    assert h.grad is None and c.grad is None and x.grad is not None


def test_no_grad_and_detach():
    x = mm.Tensor(np.ones(2), requires_grad=True)
    with mm.no_grad():
        y = x * 2
    assert not y.requires_grad
    z = (x.detach() * 2 + x).sum()
    z.backward()
    np.testing.assert_array_equal(x.grad, [1, 1])


def test_deep_chain_has_no_recursion_limit():
    x = mm.Tensor(np.array([1.0]), requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0 + 0.0
    y.backward()
    assert x.grad[0] == 1


def test_backward_errors():
    x = mm.Tensor(np.ones((2, 2)), requires_grad=True)
    with pytest.raises(ValueError, match="one-element"):
        (x * 2).backward()
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        (x * 2).backward(np.ones(3))
    with pytest.raises(RuntimeError, match="does not require grad"):
        mm.Tensor(np.ones(1)).backward()


def test_incompatible_shapes_are_refused_with_the_shapes():
    with pytest.raises(ValueError, match=r"add: shapes \(2, 3\) and \(2,\)"):
        mm.Tensor(np.ones((2, 3))) + mm.Tensor(np.ones(2))
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3\) and \(2, 3\)"):
        mm.Tensor(np.ones((2, 3))) @ mm.Tensor(np.ones((2, 3)))
    with pytest.raises(IndexError, match=r"shape \(2,\)"):
        mm.Tensor(np.ones(2))[np.array([5])]
    with pytest.raises(ValueError, match="axis 3"):
        mm.Tensor(np.ones(2)).sum(axis=3)


def test_bad_masks_and_where_shapes_are_refused_with_the_shapes():
    x = mm.Tensor(np.ones((2, 3)))
    with pytest.raises(TypeError, match="softmax: mask must be a bool array .* float64"):
        F.softmax(x, mask=np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"log_softmax \(mask, then input\): shapes \(4,\) and \(2, 3\)"):
        F.log_softmax(x, mask=np.ones(4, bool), axis=0)
    with pytest.raises(ValueError, match=r"attention \(mask, then input\): shapes \(3,\) and \(1, 1, 2, 2\)"):
        F.attention(*[mm.Tensor(np.ones((1, 2, 4)))] * 3, n_heads=1, mask=np.ones(3, bool))
    with pytest.raises(ValueError, match=r"where \(cond, x, y\): shapes \(2,\) and \(2, 3\) and \(\)"):
        F.where(np.ones(2, bool), x, 0.0)


def test_log_of_negative_is_nan_like_numpy():
    with np.errstate(invalid="ignore"):
        assert np.isnan(mm.Tensor(np.array([-1.0])).log().item())


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("small_first", [True, False])
@given(data=st.data())
def test_binary_gradients_when_a_size_one_axis_is_stretched(name, axis, small_first, data):
    """One operand has a size-1 axis at `axis` (leading included) that the other stretches to 2-4;
    the small operand may also lack leading axes before `axis`. Its gradient must be summed back
    to its own shape, which gradcheck checks exactly."""
    op, _, (lo, hi) = BINARY[name]
    full = data.draw(shapes(min_dims=axis + 1, max_dims=3, min_side=2))
    small = full[:axis] + (1,) + full[axis + 1:]
    small = small[data.draw(st.integers(0, axis)):]
    a, b = data.draw(arrays(small, low=lo, high=hi)), data.draw(arrays(full, low=lo, high=hi))
    gradcheck(op, *((a, b) if small_first else (b, a)))


@pytest.mark.parametrize("backend", mm.kernels.BACKENDS)
def test_a_mask_may_not_add_axes(backend):
    """A mask that broadcasts only by adding axes to the input is refused by the op itself (on the
    NumPy backend it used to fail inside the kernel with "too many values to unpack")."""
    x = mm.Tensor(np.zeros((2, 4, 6), np.float32))
    with mm.kernels.use(backend), pytest.raises(ValueError, match=r"attention: mask of shape \(2, 2, 1, 1, 4\)"):
        F.attention(x[:, :, :4], x[:, :, :4], x[:, :, :4], 2, mask=np.ones((2, 2, 1, 1, 4), bool))
    with mm.kernels.use(backend), pytest.raises(ValueError, match=r"softmax: mask of shape \(3, 2, 4, 6\)"):
        F.softmax(x, mask=np.ones((3, 2, 4, 6), bool))
