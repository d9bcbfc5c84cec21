"""Modules: the building blocks of a Transformer, written out by hand.

A `Module` owns `Parameter`s (Tensors that require grad) and other Modules, as plain
attributes or lists of them; nothing needs registering. Read this file top to bottom:

    Parameter, Module                      parameter discovery, state dicts, train/eval
    Linear, Embedding, LayerNorm, Dropout  the leaves
    KVCache                                keys and values kept between generation steps
    MultiHeadAttention                     self- or cross-attention under a bool mask
    FeedForward                            Linear -> GELU -> Linear
    EncoderBlock, DecoderBlock             pre-LayerNorm residual blocks

**Pre-LayerNorm.** Every block computes ``x = x + sublayer(LayerNorm(x))`` (GPT-2, T5),
not the original ``x = LayerNorm(x + sublayer(x))``. The residual stream is then never
normalised inside the stack, gradients reach early layers unchanged through the identity
path, and training is stable without learning-rate warm-up tricks at toy scale. The price
is that the stream's scale grows with depth, so the model applies one final LayerNorm
before the output layer (see `models.py`).

**Initialisation (GPT-2).** Linear and embedding weights ~ N(0, 0.02), biases 0,
LayerNorm weight 1 and bias 0. The two projections that write into the residual stream
(attention output, second feed-forward layer) get std ``0.02 / sqrt(2 * n_layers)`` so
that the stream's variance does not grow with depth (``n_layers`` is the depth of the
block's own stack; an ED decoder layer has a third branch, cross-attention, which we scale
the same way for simplicity). Every random draw comes from a
`np.random.Generator` passed in, so a model is a function of its seed.

**Attention probes.** Inside ``with record_attention() as probes:`` every attention layer
appends ``(layer, probabilities)`` to ``probes``, probabilities being the ``(B, H, T_q,
T_k)`` ndarray after masking and before dropout. Outside the block the only cost is one
``is None`` check per layer.
"""
import math
from contextlib import contextmanager

import numpy as np

from ..engine import functional as F
from ..engine.rng import as_rng
from ..engine.tensor import Tensor

__all__ = ["Parameter", "Module", "Linear", "Embedding", "LayerNorm", "Dropout",
           "KVCache", "MultiHeadAttention", "FeedForward", "EncoderBlock", "DecoderBlock",
           "record_attention", "eval_mode", "init_std"]

init_std = 0.02  # GPT-2's standard deviation for weights and embeddings


def _normal(rng, shape, std, dtype):
    return (as_rng(rng).standard_normal(shape) * std).astype(dtype)


def _array(value):
    return np.asarray(value.data if isinstance(value, Tensor) else value)


class Parameter(Tensor):
    """A Tensor that requires grad and that Modules discover as one of their parameters."""

    def __init__(self, data):
        super().__init__(data, requires_grad=True)


class Module:
    """Base class: subclasses set Parameters and Modules as attributes and define `forward`."""

    training = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- discovery ------------------------------------------------------------------
    def _members(self):
        """(name, Parameter or Module) for every attribute, in the order they were set."""
        for name, value in vars(self).items():
            if isinstance(value, (Parameter, Module)):
                yield name, value
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, (Parameter, Module)):
                        yield f"{name}.{i}", item

    def named_modules(self, prefix=""):
        """(dotted name, module) for this module and every module inside it; this one is ``""``."""
        yield prefix, self
        for name, value in self._members():
            if isinstance(value, Module):
                yield from value.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix=""):
        """(dotted name, Parameter) pairs; a parameter shared by two modules is listed once."""
        seen = set()
        for mod_name, mod in self.named_modules(prefix):
            for name, value in mod._members():
                if isinstance(value, Parameter) and id(value) not in seen:
                    seen.add(id(value))
                    yield (f"{mod_name}.{name}" if mod_name else name), value

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def num_parameters(self):
        return sum(p.size for p in self.parameters())

    # ---- modes and gradients -----------------------------------------------------------
    def train(self, mode=True):
        for _, m in self.named_modules():
            m.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    # ---- state dicts ------------------------------------------------------------------
    def state_dict(self):
        """name -> a copy of the parameter's array."""
        return {name: p.data.copy() for name, p in self.named_parameters()}

    def check_state_dict(self, state):
        """Raise ``KeyError`` (a missing or extra entry) or ``ValueError`` (a misshapen or
        non-numeric one) unless `state` fits this module; returns name -> Parameter."""
        params = dict(self.named_parameters())
        missing = sorted(set(params) - set(state))
        extra = sorted(set(state) - set(params))
        if missing or extra:
            raise KeyError(f"state dict: missing entries {missing}, unexpected entries {extra}")
        for name, p in params.items():
            value = _array(state[name])
            if value.shape != p.shape:
                raise ValueError(f"state dict: {name!r} has shape {value.shape}, the model expects {p.shape}")
            if value.dtype.kind not in "fiu":
                raise ValueError(f"state dict: {name!r} has non-numeric dtype {value.dtype}")
        return params

    def load_state_dict(self, state):
        """Copy arrays into the parameters. Strict (`check_state_dict`): a missing, extra or
        misshapen entry raises before anything is changed. Values take the parameter's dtype."""
        for name, p in self.check_state_dict(state).items():  # checked: the copies below cannot fail
            p.data = _array(state[name]).astype(p.dtype, copy=True)
        return self

    def __repr__(self):
        return f"{type(self).__name__}({self.num_parameters():,} parameters)"


@contextmanager
def eval_mode(model):
    """Eval mode (no dropout) inside the block; the model's previous mode is restored after it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


# ---- leaves ------------------------------------------------------------------------------

class Linear(Module):
    """``y = x @ weight + bias`` with ``weight`` of shape ``(d_in, d_out)``."""

    def __init__(self, d_in, d_out, bias=True, std=init_std, rng=None, dtype=np.float32):
        self.weight = Parameter(_normal(rng, (d_in, d_out), std, dtype))
        self.bias = Parameter(np.zeros(d_out, dtype=dtype)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class Embedding(Module):
    """A table of ``num`` vectors of size ``dim``; ``forward(ids)`` picks rows."""

    def __init__(self, num, dim, std=init_std, rng=None, dtype=np.float32):
        self.weight = Parameter(_normal(rng, (num, dim), std, dtype))

    def forward(self, ids):
        return F.embedding(ids, self.weight)


class LayerNorm(Module):
    def __init__(self, d, eps=1e-5, dtype=np.float32):
        self.eps = eps
        self.weight = Parameter(np.ones(d, dtype=dtype))
        self.bias = Parameter(np.zeros(d, dtype=dtype))

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps)


class Dropout(Module):
    """Zero activations with probability ``p`` in training mode; identity in eval mode."""

    def __init__(self, p=0.0, rng=None):
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must lie in [0, 1), got {p!r}")
        self.p = p
        self.rng = as_rng(rng)

    def forward(self, x):
        return F.dropout(x, self.p, self.training, rng=self.rng)


# ---- attention probes ----------------------------------------------------------------------

_probes = None  # a list while `record_attention` is active, else None


@contextmanager
def record_attention():
    """Collect ``(attention module, probabilities ndarray (B, H, T_q, T_k))`` from every
    attention layer that runs inside the block, in the order they ran."""
    global _probes
    old, _probes = _probes, []
    try:
        yield _probes
    finally:
        _probes = old


# ---- attention -----------------------------------------------------------------------------

class KVCache:
    """What incremental decoding keeps between calls of ``model(..., cache=cache)``.

    ``kv`` maps each attention layer to its keys and values (B, S, D) so far: a self-attention
    layer appends those of the new positions, a cross-attention layer computes those of the
    encoder memory once. ``tokens`` (B, S) are the ids fed so far; the model keeps them, for
    the position of the next id and for the mask rows of the new positions. It serves
    inference: cached keys and values carry no gradient.
    """

    def __init__(self):
        self.kv, self.tokens = {}, None


class MultiHeadAttention(Module):
    """Scaled dot-product attention with ``n_heads`` heads.

    ``forward(x, memory=None, mask=None, cache=None)``: queries come from ``x`` (B, T, D); keys
    and values from ``memory`` (B, S, D) for cross-attention, or from ``x`` itself (S = T) for
    self-attention. ``mask`` is a bool array, True = query i may attend key j, of shape
    ``(T, S)``, ``(B, T, S)`` or ``(B, 1, S)`` (key padding), or anything that broadcasts to
    ``(B, T, S)``; the same mask serves every head (this module adds the head axis to a 3-D
    mask; `F.attention` checks it).
    A query with no allowed key outputs zeros (before the output projection's bias).
    With a `KVCache`, self-attention keys ``S`` = the cached positions followed by ``x``'s, and
    cross-attention reuses the memory's keys and values from the first call.
    """

    def __init__(self, d_model, n_heads, dropout=0.0, rng=None, out_std=init_std,
                 dtype=np.float32, dropout_rng=None):
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.q = Linear(d_model, d_model, rng=rng, dtype=dtype)
        self.k = Linear(d_model, d_model, rng=rng, dtype=dtype)
        self.v = Linear(d_model, d_model, rng=rng, dtype=dtype)
        self.out = Linear(d_model, d_model, std=out_std, rng=rng, dtype=dtype)
        self.attn_drop = Dropout(dropout, dropout_rng)
        self.resid_drop = Dropout(dropout, dropout_rng)

    def _keys_values(self, x, memory, cache):
        if cache is None:
            src = x if memory is None else memory
            return self.k(src), self.v(src)
        if memory is not None:                       # cross-attention: the memory's, once
            if self not in cache.kv:
                cache.kv[self] = (self.k(memory).data, self.v(memory).data)
            return cache.kv[self]
        k, v = self.k(x).data, self.v(x).data        # self-attention: append the new positions'
        if self in cache.kv:
            k, v = (np.concatenate([old, new], axis=1) for old, new in zip(cache.kv[self], (k, v)))
        cache.kv[self] = (k, v)
        return k, v

    def forward(self, x, memory=None, mask=None, cache=None):
        q = self.q(x)
        k, v = self._keys_values(x, memory, cache)
        if np.ndim(mask) == 3:
            mask = np.asarray(mask)[:, None]  # (B, T, S) -> (B, 1, T, S), broadcast over the heads
        drop = self.attn_drop.p if self.attn_drop.training else 0.0
        y, att = F.attention(q, k, v, self.n_heads, mask, dropout=drop, rng=self.attn_drop.rng)  # y (B, T, D)
        if _probes is not None:
            _probes.append((self, att.copy()))                              # att (B, H, T, S)
        return self.resid_drop(self.out(y))


class FeedForward(Module):
    """``Linear(d_model, d_ff) -> GELU -> Linear(d_ff, d_model) -> Dropout``."""

    def __init__(self, d_model, d_ff, dropout=0.0, rng=None, out_std=init_std,
                 dtype=np.float32, dropout_rng=None):
        self.fc1 = Linear(d_model, d_ff, rng=rng, dtype=dtype)
        self.fc2 = Linear(d_ff, d_model, std=out_std, rng=rng, dtype=dtype)
        self.drop = Dropout(dropout, dropout_rng)

    def forward(self, x):
        return self.drop(self.fc2(F.gelu(self.fc1(x))))


# ---- blocks ------------------------------------------------------------------------------

def _residual_std(n_layers):
    return init_std / math.sqrt(2 * n_layers)


class EncoderBlock(Module):
    """Pre-LN block: ``x + attn(ln1(x), mask)``, then ``x + ff(ln2(x))``.

    The mask decides what it is: all True makes it an encoder layer, causal a GPT layer.
    ``n_layers`` is the depth of the stack it belongs to (for the residual init scale).
    """

    def __init__(self, d_model, n_heads, d_ff, n_layers=1, dropout=0.0, rng=None,
                 dtype=np.float32, dropout_rng=None):
        std = _residual_std(n_layers)
        self.ln1 = LayerNorm(d_model, dtype=dtype)
        self.attn = MultiHeadAttention(d_model, n_heads, dropout, rng, std, dtype, dropout_rng)
        self.ln2 = LayerNorm(d_model, dtype=dtype)
        self.ff = FeedForward(d_model, d_ff, dropout, rng, std, dtype, dropout_rng)

    def forward(self, x, mask=None):
        x = x + self.attn(self.ln1(x), mask=mask)
        return x + self.ff(self.ln2(x))


class DecoderBlock(Module):
    """Pre-LN block: masked self-attention, then (if ``cross``) attention to ``memory``,
    then the feed-forward layer, each as ``x + sublayer(LayerNorm(x))``.

    ``forward(x, mask=None, memory=None, memory_mask=None, cache=None)``; ``memory_mask`` is
    ``(B, 1, S)`` or ``(B, T, S)`` (usually the source's key padding); ``cache`` a `KVCache`.
    """

    def __init__(self, d_model, n_heads, d_ff, n_layers=1, cross=False, dropout=0.0, rng=None,
                 dtype=np.float32, dropout_rng=None):
        std = _residual_std(n_layers)
        self.ln1 = LayerNorm(d_model, dtype=dtype)
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout, rng, std, dtype, dropout_rng)
        self.ln_cross = LayerNorm(d_model, dtype=dtype) if cross else None
        self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout, rng, std, dtype, dropout_rng) if cross else None
        self.ln2 = LayerNorm(d_model, dtype=dtype)
        self.ff = FeedForward(d_model, d_ff, dropout, rng, std, dtype, dropout_rng)

    def forward(self, x, mask=None, memory=None, memory_mask=None, cache=None):
        x = x + self.self_attn(self.ln1(x), mask=mask, cache=cache)
        if self.cross_attn is not None:
            if memory is None:
                raise ValueError("DecoderBlock: this block has cross-attention and needs `memory`")
            x = x + self.cross_attn(self.ln_cross(x), memory=memory, mask=memory_mask, cache=cache)
        elif memory is not None:
            raise ValueError("DecoderBlock: got `memory` but this block has no cross-attention")
        return x + self.ff(self.ln2(x))
