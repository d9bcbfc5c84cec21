"""Plain-NumPy twins of every kernel: the readable definition each fast kernel is tested against.

Every function works over the last axis, takes and returns ndarrays, and never produces NaN or
-inf for finite input: a row whose mask keeps nothing gives zeros.
"""
import math

import numpy as np


def matmul(a, b):
    return np.matmul(a, b)


def linear(x, w, b=None):
    """x @ w + b, b (N,) or None; all three promoted to their common dtype first."""
    if b is None:
        return np.matmul(x, w)
    dt = np.result_type(x, w, b)
    return np.matmul(x.astype(dt, copy=False), w.astype(dt, copy=False)) + b


def weight_gradients(x, g):
    """A linear layer's weight and bias gradients for input x (R, K) and output gradient g
    (R, N): (x^T @ g, g summed over rows)."""
    dt = np.result_type(x, g)
    x, g = x.astype(dt, copy=False), g.astype(dt, copy=False)
    return x.T @ g, g.sum(axis=0)


def _shifted(x, mask):
    """x minus its row maximum over kept entries, and -inf where masked (exp gives 0 there,
    without overflowing on a large masked value). A row that keeps nothing is shifted by 0."""
    kept = x if mask is None else np.where(mask, x, -np.inf)
    m = kept.max(axis=-1, keepdims=True, initial=-np.inf)
    return kept - np.where(np.isfinite(m), m, 0)


def softmax(x, mask=None):
    """exp(x - max) / sum, over kept entries; masked entries and empty rows are 0."""
    e = np.exp(_shifted(x, mask))
    s = e.sum(axis=-1, keepdims=True)
    return e / np.where(s > 0, s, 1)


def softmax_backward(y, dy):
    """dx = y * (dy - sum(dy * y)); masked entries have y = 0, so they get no gradient."""
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


def log_softmax(x, mask=None):
    """x - max - log(sum(exp(x - max))) over kept entries; masked entries and empty rows are 0."""
    z = _shifted(x, mask)
    s = np.exp(z).sum(axis=-1, keepdims=True)
    out = z - np.log(np.where(s > 0, s, 1))
    return out if mask is None else np.where(mask, out, 0)


def log_softmax_backward(y, dy, mask=None):
    """dx = dy - softmax * sum(dy), over kept entries; masked entries get 0."""
    p = np.exp(y)
    if mask is not None:
        p = np.where(mask, p, 0)
        dy = np.where(mask, dy, 0)
    return (dy - p * dy.sum(axis=-1, keepdims=True)).astype(y.dtype, copy=False)


_GELU_C = np.sqrt(2.0 / np.pi)


def gelu(x):
    """The tanh approximation: 0.5 x (1 + tanh(c (x + 0.044715 x^3)))."""
    c = x.dtype.type(_GELU_C) if x.dtype.kind == "f" else _GELU_C
    return 0.5 * x * (1 + np.tanh(c * (x + 0.044715 * (x * x * x))))   # x*x*x: `x ** 3` is a slow pow()


def gelu_backward(x, dy):
    c = x.dtype.type(_GELU_C) if x.dtype.kind == "f" else _GELU_C
    t = np.tanh(c * (x + 0.044715 * (x * x * x)))
    dt = (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)
    return dy * (0.5 * (1 + t) + 0.5 * x * dt)


def layer_norm(x, weight, bias, eps):
    """Normalise over the last axis; returns (y, mean, rstd) so the backward need not recompute them."""
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    rstd = 1 / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)
    y = xc * rstd
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    dt = np.result_type(*(a for a in (x, weight, bias) if a is not None))   # mixed dtypes: promoted
    return y.astype(dt, copy=False), mean.astype(dt, copy=False), rstd.astype(dt, copy=False)


def layer_norm_backward(dy, x, weight, mean, rstd):
    """Returns (dx, dweight, dbias); dweight/dbias are summed over every leading axis."""
    xhat = (x - mean) * rstd
    lead = tuple(range(x.ndim - 1))
    dw = (dy * xhat).sum(axis=lead)
    db = dy.sum(axis=lead)
    g = dy * weight if weight is not None else dy
    dx = rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    dt = np.result_type(*(a for a in (dy, x, weight, mean, rstd) if a is not None))
    return dx.astype(dt, copy=False), dw.astype(dt, copy=False), db.astype(dt, copy=False)


def cross_entropy(logits, targets, ignore_index):
    """Per-row loss lse(logits) - logits[target] for 2-D logits (N, V); 0 where target == ignore_index.

    Returns (losses (N,), lse (N,)); the lse is kept for the backward.
    """
    m = logits.max(axis=-1)
    lse = m + np.log(np.exp(logits - m[:, None]).sum(axis=-1))
    keep = targets != ignore_index
    safe = np.where(keep, targets, 0)
    picked = logits[np.arange(len(targets)), safe]
    return np.where(keep, lse - picked, 0).astype(logits.dtype, copy=False), lse


def cross_entropy_backward(logits, targets, lse, ignore_index, scale):
    """d(scale * sum(losses))/d logits = scale * (softmax - onehot(target)) on kept rows, 0 elsewhere."""
    keep = targets != ignore_index
    g = np.exp(logits - lse[:, None])
    g[np.arange(len(targets)), np.where(keep, targets, 0)] -= 1
    g *= np.where(keep, scale, 0).astype(logits.dtype)[:, None]
    return g


def adamw_update(p, g, m, v, lr, betas, eps, weight_decay, t):
    """AdamW (PyTorch's update) in place at step t >= 1; weight_decay 0 leaves p undecayed."""
    b1, b2 = betas
    if weight_decay:
        p *= 1.0 - lr * weight_decay
    m *= b1
    m += (1.0 - b1) * g
    v *= b2
    v += (1.0 - b2) * (g * g)
    p -= lr / (1.0 - b1 ** t) * (m / (np.sqrt(v) / math.sqrt(1.0 - b2 ** t) + eps))


def _heads(a, n_heads):
    B, n, D = a.shape
    return a.reshape(B, n, n_heads, D // n_heads).transpose(0, 2, 1, 3)


def _merge(a):
    B, H, n, d = a.shape
    return a.transpose(0, 2, 1, 3).reshape(B, n, H * d)


def attention_forward(q, k, v, n_heads, mask=None, keep=None):
    """(Y, P) of multi-head attention: P = softmax(q k^T / sqrt(d), mask) per head, Y = (P * keep) v."""
    c = 1 / np.sqrt(q.shape[-1] // n_heads)
    p = softmax(_heads(q, n_heads) @ _heads(k, n_heads).swapaxes(-1, -2) * q.dtype.type(c), mask)
    return _merge((p if keep is None else p * keep) @ _heads(v, n_heads)), p


def attention_backward(q, k, v, n_heads, p, gy, keep=None):
    """(dQ, dK, dV) of `attention_forward` for the output gradient gy."""
    c = q.dtype.type(1 / np.sqrt(q.shape[-1] // n_heads))
    qh, kh, vh, gh = (_heads(a, n_heads) for a in (q, k, v, gy))
    dp = gh @ vh.swapaxes(-1, -2)
    ds = softmax_backward(p, dp if keep is None else dp * keep) * c
    pd = p if keep is None else p * keep
    return _merge(ds @ kh), _merge(ds.swapaxes(-1, -2) @ qh), _merge(pd.swapaxes(-1, -2) @ gh)


def add_bias(y, b):
    """y += b over the last axis, in place."""
    y += b
    return y


def sum_rows(g):
    """g summed over every axis but the last."""
    return g.sum(axis=tuple(range(g.ndim - 1)))


def embedding_backward(ids, g, num_embeddings):
    """dW (num_embeddings, D): rows of g summed by id. Sorting groups equal ids and
    np.add.reduceat sums each group in one call (np.add.at, element by element, is ~3.5x
    slower at 2048 ids)."""
    flat, g2 = np.asarray(ids).reshape(-1), np.asarray(g).reshape(-1, g.shape[-1])
    dw = np.zeros((num_embeddings, g2.shape[-1]), g2.dtype)
    if flat.size:
        order = np.argsort(flat, kind="stable")
        used, starts = np.unique(flat[order], return_index=True)
        dw[used] = np.add.reduceat(g2[order], starts, axis=0)
    return dw
