"""Text generation: greedy and temperature/top-k sampling for CD, ND and ED, with a key/value
cache.

How each architecture reads the prompt (the same layout as training, see `batches.py`):

    cd   tokens = [BOS] + prompt, causal; generated tokens follow
    nd   tokens = [BOS] + prompt as the bidirectional prefix (prefix_len = 1 + len(prompt));
         generated tokens are causal
    ed   src = prompt (+ EOS for models trained with MLM) to the encoder; the decoder starts
         from [BOS]

**The key/value cache.** Without a cache, generating T tokens runs T full forward passes
over ever longer sequences. But in a causal (or prefix) model the keys and values of a
position never change once computed: position p attends only to positions <= p (the
prompt also to the rest of the prompt, all of which is there from the start). So we run
the prompt once, keep every layer's keys and values, and then feed one new token at a
time, appending its key and value. Cross-attention keys and values (ED) come from the
encoder output and are computed once.

`nn.MultiHeadAttention` has no cache hook, so ``CachedDecoder`` below re-walks the model's
own modules (the same Linear, LayerNorm and FeedForward objects, the same softmax) step by
step. ``generate(..., use_cache=False)`` runs the plain full forward at every step; the
tests check that both give the same tokens and (to rounding) the same logits.
"""
import math

import numpy as np

from ..engine import functional as F
from . import masks
from ..engine.rng import as_rng
from ..engine.tensor import Tensor, no_grad

__all__ = ["generate", "sample_next", "CachedDecoder"]


def sample_next(logits, temperature=0.0, top_k=None, rng=None):
    """Pick one id from a ``(V,)`` logit vector: the argmax when ``temperature == 0``, else a
    draw from ``softmax(logits / temperature)`` restricted to the ``top_k`` largest logits."""
    logits = np.asarray(logits, dtype=np.float64)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if top_k < len(z):
            kth = np.partition(z, -top_k)[-top_k]
            z = np.where(z >= kth, z, -np.inf)
    p = np.exp(z - z.max())
    p /= p.sum()
    rng = as_rng(rng)
    return int(rng.choice(len(p), p=p))


class CachedDecoder:
    """Incremental decoding for one model: ``start(...)`` feeds the prompt, ``step(token)``
    feeds one more token; both return the logits ``(V,)`` of the last position."""

    def __init__(self, model):
        self.model = model
        self.ed = model.arch == "ed"
        self.blocks = model.decoder if self.ed else model.blocks
        self.pos = model.dec_pos if self.ed else model.pos_emb
        self.ln_f = model.dec_ln if self.ed else model.ln_f
        c = model.config
        heads, d_head = c.n_heads, c.d_model // c.n_heads
        shape = (1, heads, c.max_len, d_head)
        dt = np.dtype(c.dtype)
        self.keys = [np.zeros(shape, dt) for _ in self.blocks]
        self.values = [np.zeros(shape, dt) for _ in self.blocks]
        self.length = 0

    def start(self, tokens, prefix_len=0, src=None):
        """Feed the first tokens (1-D ids): for decoders ``[BOS] + prompt`` with ``prefix_len``
        (ND), for ED ``[BOS]`` with the encoder input ``src``."""
        self.length, self.prefix_len = 0, prefix_len
        if self.ed:
            src = np.asarray(src, dtype=np.int64)[None]
            memory = self.model.encode(src)
            self.cross = []
            for block in self.blocks:
                a = block.cross_attn
                self.cross.append((a._split(a.k(memory), 1, src.shape[1]).data,
                                   a._split(a.v(memory), 1, src.shape[1]).data))
            self.cross_mask = self.model._pad_keys(src)
        return self._feed(np.asarray(tokens, dtype=np.int64))

    def step(self, token):
        return self._feed(np.array([token], dtype=np.int64))

    def _attend(self, a, q, k, v, mask):
        """softmax(q k^T) v for queries (1, H, t, d) over cached keys; back to (1, t, D)."""
        att = F.softmax(q @ Tensor(k).transpose(0, 1, 3, 2), axis=-1, mask=mask)
        y = att @ Tensor(v)
        t = q.shape[2]
        return a.out(y.transpose(0, 2, 1, 3).reshape(1, t, a.n_heads * a.d_head))

    def _feed(self, new):
        start, t = self.length, len(new)
        end = start + t
        if end > self.model.config.max_len:
            raise ValueError(f"sequence would reach {end} positions, more than max_len={self.model.config.max_len}")
        # rows start..end-1 of the full mask: prefix (ND) or causal, over keys 0..end-1
        full = masks.prefix(end, self.prefix_len) if self.prefix_len else masks.causal(end)
        mask = full[start:end][None, None]
        with no_grad():
            x = self.model.tok_emb(new[None]) + self.pos.weight[start:end]
            for i, block in enumerate(self.blocks):
                a = block.self_attn
                h = block.ln1(x)
                q = a._split(a.q(h), 1, t) * (1.0 / math.sqrt(a.d_head))
                self.keys[i][:, :, start:end] = a._split(a.k(h), 1, t).data
                self.values[i][:, :, start:end] = a._split(a.v(h), 1, t).data
                x = x + self._attend(a, q, self.keys[i][:, :, :end], self.values[i][:, :, :end], mask)
                if self.ed:
                    c = block.cross_attn
                    hq = c._split(c.q(block.ln_cross(x)), 1, t) * (1.0 / math.sqrt(c.d_head))
                    cm = None if self.cross_mask is None else self.cross_mask[:, None]
                    x = x + self._attend(c, hq, *self.cross[i], cm)
                x = x + block.ff(block.ln2(x))
            logits = self.model._logits(self.ln_f(x))
        self.length = end
        return logits.data[0, -1]


def _full_logits(model, fed, prefix_len, src):
    """The plain, uncached forward pass: logits (V,) of the last position."""
    with no_grad():
        if model.arch == "ed":
            out = model(np.asarray(src, dtype=np.int64)[None], fed[None])
        else:
            out = model(fed[None], prefix_len if model.arch == "nd" else None)
    return out.data[0, -1]


def generate(model, prompt, max_new_tokens=20, *, bos_id, eos_id=None, temperature=0.0,
             top_k=None, rng=None, src_eos=False, use_cache=True, return_logits=False):
    """Continue ``prompt`` (1-D ids) with up to ``max_new_tokens`` ids; stops after ``eos_id``
    (not included) or when the model's ``max_len`` is reached. Returns the new ids as an
    int64 array (and, with ``return_logits``, the list of logit vectors they were drawn from).

    ``src_eos=True`` appends EOS to an ED encoder input (models trained with MLM saw that).
    ``rng`` (Generator or seed) drives sampling; greedy when ``temperature == 0``.
    """
    prompt = np.asarray(prompt, dtype=np.int64).reshape(-1)
    rng = as_rng(rng)
    was_training = model.training
    model.eval()
    try:
        if model.arch == "ed":
            src = np.concatenate([prompt, [eos_id]]) if src_eos else prompt
            if len(src) == 0:
                raise ValueError("an encoder-decoder needs a non-empty prompt")
            fed, prefix_len = np.array([bos_id], dtype=np.int64), 0
        else:
            src = None
            fed = np.concatenate([[bos_id], prompt]).astype(np.int64)
            prefix_len = len(fed) if model.arch == "nd" else 0
        if len(fed) > model.config.max_len or (src is not None and len(src) > model.config.max_len):
            raise ValueError(f"prompt of {len(prompt)} tokens does not fit max_len={model.config.max_len}")
        cache = CachedDecoder(model) if use_cache else None
        logits = cache.start(fed, prefix_len, src) if use_cache else _full_logits(model, fed, prefix_len, src)
        out, seen = [], []
        for _ in range(max_new_tokens):
            seen.append(logits)
            token = sample_next(logits, temperature, top_k, rng)
            if eos_id is not None and token == eos_id:
                break
            out.append(token)
            if len(fed) + 1 > model.config.max_len:
                break
            fed = np.append(fed, token)
            if len(out) == max_new_tokens:
                break
            logits = cache.step(token) if use_cache else _full_logits(model, fed, prefix_len, src)
    finally:
        model.train(was_training)
    out = np.asarray(out, dtype=np.int64)
    return (out, seen) if return_logits else out
