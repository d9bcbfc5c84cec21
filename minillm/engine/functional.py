"""Neural-network ops on Tensors, each with its backward beside its forward.

The arithmetic of the hot ones (softmax, log-softmax, GELU, LayerNorm, cross-entropy) lives
in `minillm.kernels`, which runs either the plain-NumPy twin or the fast Numba kernel.
"""
import numpy as np

from . import kernels as K
from .rng import as_rng
from .tensor import Tensor, _broadcast_shape


def _t(x):
    return x if isinstance(x, Tensor) else Tensor(x)


def _check_mask(op, mask, shape):
    """`mask` as a bool ndarray that broadcasts against `shape`, or None."""
    if mask is None:
        return None
    mask = np.asarray(mask.data if isinstance(mask, Tensor) else mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"{op}: mask must be a bool array (True = keep), got dtype {mask.dtype}")
    if _broadcast_shape(f"{op} (mask, then input)", mask.shape, shape) != tuple(shape):   # a mask may not add axes
        raise ValueError(f"{op}: mask of shape {mask.shape} would broadcast the input {tuple(shape)} to more axes")
    return mask


def _along(op, x, axis, mask):
    """Kernels work on the last axis: return (x moved, mask moved, `to_last`, `back`) for `axis`."""
    if x.ndim == 0 or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{op}: axis {axis} is out of range for input of shape {x.shape}")
    axis %= x.ndim
    to_last = lambda a: np.moveaxis(a, axis, -1)  # noqa: E731
    back = lambda a: np.moveaxis(a, -1, axis)  # noqa: E731
    if mask is not None and axis != x.ndim - 1:   # on the last axis already, the mask need not be expanded
        mask = to_last(np.broadcast_to(mask, x.shape))
    return np.ascontiguousarray(to_last(x)), mask, to_last, back


def softmax(x, axis=-1, mask=None):
    """exp(x) / sum(exp(x)) along `axis` over entries where `mask` is True; a row with nothing kept is all zeros."""
    x = _t(x)
    xd, m, to_last, back = _along("softmax", x.data, axis, _check_mask("softmax", mask, x.shape))
    y = K.softmax(xd, m)
    return Tensor._op(back(y), (x,), lambda g: (back(K.softmax_backward(y, to_last(g))),))


def log_softmax(x, axis=-1, mask=None):
    """x - logsumexp(x) along `axis` over kept entries. Masked entries (and empty rows) read 0 and get no gradient."""
    x = _t(x)
    xd, m, to_last, back = _along("log_softmax", x.data, axis, _check_mask("log_softmax", mask, x.shape))
    y = K.log_softmax(xd, m)
    return Tensor._op(back(y), (x,), lambda g: (back(K.log_softmax_backward(y, to_last(g), m)),))


def gelu(x):
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    x = _t(x)
    xd = x.data
    return Tensor._op(K.gelu(xd), (x,), lambda g: (K.gelu_backward(xd, g),))


def layer_norm(x, weight, bias, eps=1e-5):
    """Normalise over the last axis to zero mean and unit variance, then scale by `weight` and shift by `bias`."""
    x = _t(x)
    n = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (n,):
            raise ValueError(f"layer_norm: {name} has shape {p.shape}, expected ({n},) for input of shape {x.shape}")
    w, b = (None if p is None else _t(p) for p in (weight, bias))
    wd, bd = (None if p is None else p.data for p in (w, b))
    y, mean, rstd = K.layer_norm(x.data, wd, bd, eps)
    given = [p is not None for p in (x, w, b)]   # weight and bias may be None: no parent, no gradient

    def vjp(g):
        grads = K.layer_norm_backward(g, x.data, wd, mean, rstd)
        return tuple(d for d, keep in zip(grads, given) if keep)

    return Tensor._op(y, tuple(p for p, keep in zip((x, w, b), given) if keep), vjp)


def linear(x, weight, bias=None):
    """``x @ weight + bias`` for x (..., d_in), weight (d_in, d_out), bias (d_out,) or None.

    Why one op and not `@` then `+`: np.matmul runs (B, T, d_in) @ (d_in, d_out) as B small
    products, the bias add allocates a second output, and both outputs stay alive in the
    graph until the backward. Here x is viewed as (B*T, d_in), so forward and backward are
    each one matrix product per operand, the bias is added inside the product
    (`kernels.linear`: the GEMM's register tile starts from it), and one array is kept:
        dx = g W^T,   dW = x^T g,   db = sum of g over rows     (g viewed as (B*T, d_out)),
    dW and db from one product (`kernels.weight_gradients`).
    """
    x, w = _t(x), _t(weight)
    b = None if bias is None else _t(bias)
    if w.ndim != 2 or x.ndim == 0 or x.shape[-1] != w.shape[0]:
        raise ValueError(f"linear: x {x.shape} and weight {w.shape} do not line up (weight must be (d_in, d_out))")
    if b is not None and b.shape != (w.shape[1],):
        raise ValueError(f"linear: bias has shape {b.shape}, expected ({w.shape[1]},)")
    d_in, d_out = w.shape
    x2 = x.data.reshape(-1, d_in)
    if b is None or np.result_type(x2, w.data, b.data) == np.result_type(x2, w.data):
        y = K.linear(x2, w.data, None if b is None else b.data)   # the bias added inside the product
    else:
        y = K.matmul(x2, w.data) + b.data                         # a wider bias widens the output

    def vjp(g):
        g2 = g.reshape(-1, d_out)
        dx = K.matmul(g2, w.data.T).reshape(x.shape) if x.requires_grad else None
        if b is not None and w.requires_grad:
            return (dx,) + K.weight_gradients(x2, g2)             # both from one product
        dw = K.matmul(x2.T, g2) if w.requires_grad else None
        return (dx, dw) + (() if b is None else (K.sum_rows(g2),))

    parents = (x, w) + (() if b is None else (b,))
    return Tensor._op(y.reshape(x.shape[:-1] + (d_out,)), parents, vjp)


def attention(q, k, v, n_heads, mask=None, dropout=0.0, rng=None):
    """Multi-head scaled dot-product attention, softmax(q k^T / sqrt(d_head)) v, as one op.

    q (B, T, D), k and v (B, S, D), split into `n_heads` heads of D / n_heads. `mask`: bool,
    broadcastable to (B, H, T, S), True = query i may attend key j; a query with nothing kept
    outputs zeros. `dropout` > 0 zeroes each probability with that chance (scaling the rest
    by 1/(1-dropout)), drawing from `rng`. Returns ``(output (B, T, D), probabilities
    (B, H, T, S) after masking and before dropout)`` (an ndarray, for attention probes).

    Why one op: as a chain of engine ops, attention makes ~15 graph nodes, copies every
    operand to and from head layout, and keeps the raw scores and head copies alive until
    the backward. Here the kernels (`kernels.attention_forward` / `_backward`, fused per head
    on the Numba backend) keep only q, k, v and the probabilities P. With c = 1/sqrt(d_head)
    and dY the output gradient, the backward is
        dV = P^T dY,   dP = dY V^T,   dS = c P * (dP - rowsum(P * dP)),   dQ = dS K,   dK = dS^T Q
    """
    q, k, v = _t(q), _t(k), _t(v)
    if q.ndim != 3 or k.ndim != 3 or k.shape != v.shape or q.shape[::2] != k.shape[::2]:
        raise ValueError(f"attention: need q (B, T, D) and k, v (B, S, D), got {q.shape}, {k.shape}, {v.shape}")
    if n_heads < 1 or q.shape[-1] % n_heads or q.shape[-1] == 0:
        raise ValueError(f"attention: D ({q.shape[-1]}) must be a positive multiple of n_heads ({n_heads})")
    (B, T, D), S = q.shape, k.shape[1]
    mask = _check_mask("attention", mask, (B, n_heads, T, S))
    keep = None
    if dropout > 0:
        rng = as_rng(rng)
        keep = ((rng.random((B, n_heads, T, S)) >= dropout) / (1 - dropout)).astype(q.dtype)
    y, p = K.attention_forward(q.data, k.data, v.data, n_heads, mask, keep)

    def vjp(g):
        return K.attention_backward(q.data, k.data, v.data, n_heads, p, g, keep)

    return Tensor._op(y, (q, k, v), vjp), p


def embedding(ids, weight):
    """Rows of `weight` (V, D) picked by integer `ids` (any shape) -> (*ids.shape, D)."""
    ids = np.asarray(ids.data if isinstance(ids, Tensor) else ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"embedding: ids must be integers, got dtype {ids.dtype}")
    V = weight.shape[0]
    bad = ids[(ids < 0) | (ids >= V)]
    if bad.size:
        raise IndexError(f"embedding: token id {bad[0]} is outside [0, {V}) (ids of shape {ids.shape})")
    w = _t(weight)

    def vjp(g):   # the rows of g summed by id (kernels.embedding_backward)
        return (K.embedding_backward(ids, g, V),)

    return Tensor._op(w.data[ids], (w,), vjp)


def dropout(x, p, training, rng=None):
    """Zero each entry with probability `p` and scale the rest by 1/(1-p); identity when not training."""
    if not 0 <= p <= 1:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    x = _t(x)
    if not training or p == 0:
        return x
    rng = as_rng(rng)
    keep = rng.random(x.shape) >= p
    scale = (keep / (1 - p) if p < 1 else np.zeros(x.shape)).astype(x.dtype)
    return Tensor._op(x.data * scale, (x,), lambda g: (g * scale,))


def concat(tensors, axis=0):
    """Join tensors along `axis`; the gradient is split back into the pieces."""
    tensors = [_t(t) for t in tensors]
    if not tensors:
        raise ValueError("concat: needs at least one tensor")
    try:
        out = np.concatenate([t.data for t in tensors], axis=axis)
    except ValueError:
        raise ValueError(f"concat: shapes {[t.shape for t in tensors]} do not match off axis {axis}") from None
    cuts = np.cumsum([t.shape[axis] for t in tensors])[:-1]
    return Tensor._op(out, tuple(tensors), lambda g: tuple(np.split(g, cuts, axis=axis)))


def where(cond, x, y):
    """`x` where `cond` is True, else `y` (all three broadcast together)."""
    cond = np.asarray(cond.data if isinstance(cond, Tensor) else cond, dtype=bool)
    x = _t(x)
    y = x._lift(y)
    _broadcast_shape("where (cond, x, y)", cond.shape, x.shape, y.shape)
    out = np.where(cond, x.data, y.data)
    return Tensor._op(out, (x, y), lambda g: (np.where(cond, g, 0), np.where(cond, 0, g)))


def cross_entropy(logits, targets, ignore_index=-100):
    """Mean of -log softmax(logits)[target] over positions whose target is not `ignore_index`.

    logits (..., V), integer targets (...). With no kept position the loss is 0 (not NaN).
    """
    logits = _t(logits)
    targets = np.asarray(targets.data if isinstance(targets, Tensor) else targets)
    V = logits.shape[-1]
    if targets.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: targets must be integers, got dtype {targets.dtype}")
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"cross_entropy: logits {logits.shape} need targets of shape {logits.shape[:-1]}, got {targets.shape}")
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= V))
    if bad.any():
        raise ValueError(f"cross_entropy: target {targets[bad][0]} is outside [0, {V}) and is not ignore_index={ignore_index}")
    flat = logits.data.reshape(-1, V)
    t = targets.reshape(-1)
    losses, lse = K.cross_entropy(flat, t, ignore_index)
    n = int((t != ignore_index).sum())
    scale = 1.0 / max(n, 1)
    loss = np.asarray(losses.sum(dtype=np.float64) * scale, dtype=logits.dtype)

    def vjp(g):
        return (K.cross_entropy_backward(flat, t, lse, ignore_index, float(g) * scale).reshape(logits.shape),)

    return Tensor._op(loss, (logits,), vjp)
