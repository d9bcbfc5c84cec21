"""The three architectures of Wang et al. 2022, in one file.

    cd   causal decoder (GPT):            DecoderOnly with arch="cd", causal mask
    nd   non-causal (prefix) decoder:     DecoderOnly with arch="nd", prefix mask
    ed   encoder-decoder (T5-like):       EncoderDecoder; bidirectional encoder, causal
                                          decoder, cross-attention in every decoder layer

CD and ND are the *same class with the same parameters*; only the mask differs. Switching
one into the other (the paper's adaptation experiments) is ``model.arch = "nd"`` and
changes no weight. An ND given ``prefix_len=0`` computes exactly what CD computes.

All models: learned position embeddings (std 0.02), token embeddings tied to the output
layer (logits = final_ln(h) @ token_embedding.T, no output bias), pre-LayerNorm blocks
(see `nn.py`) and a final LayerNorm.

Padding: with ``ModelConfig.pad_id`` set, every attention ANDs its mask with "the key is not
PAD", so pad tokens never influence a non-pad position. Pad query positions still produce
logits; their targets are the caller's to ignore.

FLOPs: ``forward_flops`` counts the multiply-adds of every matrix product as 2 FLOPs each
and ignores everything else (embedding lookups, LayerNorm, softmax, GELU, biases, residual
adds), as Kaplan et al. 2020 do. Per layer, per token, with ``n_keys`` the number of keys:

    attention projections   2 * 4 * d^2        (q, k, v, out)
    attention scores + mix  2 * 2 * n_keys * d (q k^T and att @ v)
    feed-forward            2 * 2 * d * d_ff
    output layer (once)     2 * d * V

The implementation is dense: it computes every query-key score and masks afterwards, so
``n_keys`` is the full length ``T`` for every mask (causal masking saves nothing here).
Cross-attention costs ``2*2*d^2 + 2*2*S*d`` per target token (q, out, scores, mix) plus
``2*2*d^2`` per source token per layer for its keys and values.
"""
from dataclasses import dataclass
import numbers

import numpy as np

from . import masks, nn
from ..engine.rng import as_rng
from ..engine.tensor import no_grad

__all__ = ["ModelConfig", "DecoderOnly", "EncoderDecoder", "build_model", "ARCHS"]

ARCHS = ("cd", "nd", "ed")


@dataclass
class ModelConfig:
    vocab_size: int
    d_model: int
    n_heads: int
    n_layers: int          # per stack for "ed"
    d_ff: int
    max_len: int           # longest sequence (each of source and target for "ed")
    dropout: float = 0.0
    pad_id: int | None = None
    dtype: str = "float32"

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "d_ff", "max_len"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"ModelConfig: {name} must be a positive int, got {v!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"ModelConfig: d_model ({self.d_model}) must be divisible by "
                             f"n_heads ({self.n_heads})")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"ModelConfig: dropout must lie in [0, 1), got {self.dropout!r}")
        if self.pad_id is not None and not (
                isinstance(self.pad_id, numbers.Integral) and 0 <= self.pad_id < self.vocab_size):
            raise ValueError(f"ModelConfig: pad_id must be None or an int in [0, vocab_size="
                             f"{self.vocab_size}), got {self.pad_id!r}")
        if np.dtype(self.dtype) not in (np.float32, np.float64):
            raise ValueError(f"ModelConfig: dtype must be 'float32' or 'float64', got {self.dtype!r}")


def _check_tokens(tokens, name, config):
    """Integer (B, T) ids in [0, vocab_size), 1 <= T <= max_len; else a ValueError naming `name`."""
    t = np.asarray(getattr(tokens, "data", tokens))
    if t.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integer token ids, got dtype {t.dtype}")
    if t.ndim != 2 or t.shape[1] == 0:
        raise ValueError(f"{name} must have shape (B, T) with T >= 1, got {t.shape}")
    if t.shape[1] > config.max_len:
        raise ValueError(f"{name} has length {t.shape[1]}, longer than max_len={config.max_len}")
    bad = (t < 0) | (t >= config.vocab_size)
    if bad.any():
        raise ValueError(f"{name} contains id {t[bad][0]} outside [0, vocab_size={config.vocab_size})")
    return t


class _Model(nn.Module):
    """What every architecture shares: config, embeddings, dtype (``config.dtype``: build with
    ``dtype="float64"`` for gradient checks), FLOPs and attention probes."""

    def _common(self, config, rng):
        self.config = config
        dt = np.dtype(config.dtype)
        self.dropout_rng = np.random.default_rng(rng.integers(2 ** 63))
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model, rng=rng, dtype=dt)
        self.drop = nn.Dropout(config.dropout, self.dropout_rng)  # on the embeddings
        return dt

    def _pad_keys(self, tokens):
        pad = self.config.pad_id
        return None if pad is None else masks.key_padding(tokens, pad)

    def _fed(self, tokens, name, cache):
        """(checked new ids, every id fed so far, position of the first new one): without a
        cache the same ids and 0; with one, its ids followed by the new ones. The caller stores
        them in the cache once every check has passed, so a refused call leaves it as it was."""
        tokens = _check_tokens(tokens, name, self.config)
        if cache is None:
            return tokens, tokens, 0
        start = 0 if cache.tokens is None else cache.tokens.shape[1]
        fed = tokens if start == 0 else np.concatenate([cache.tokens, tokens], axis=1)
        if fed.shape[1] > self.config.max_len:
            raise ValueError(f"{name}: the cache would reach {fed.shape[1]} positions, more than "
                             f"max_len={self.config.max_len}")
        return tokens, fed, start

    def _logits(self, h):
        return h @ self.tok_emb.weight.T  # tied output layer

    def _lengths(self, lengths):
        """ED's ``[S, T]`` or a decoder's ``[T]``; lengths left out or None are max_len."""
        n = 2 if self.arch == "ed" else 1
        if len(lengths) > n:
            raise TypeError(f"{type(self).__name__}: at most {n} lengths, got {lengths}")
        return [self.config.max_len if x is None else x for x in lengths + (None,) * (n - len(lengths))]

    def forward_flops(self, *lengths):
        """Forward FLOPs for one sequence of length ``T`` (ED: a source of length ``S`` and a
        target of length ``T``); lengths left out or None are max_len. Formula in the module doc."""
        *src, T = self._lengths(lengths)
        c, d, L = self.config, self.config.d_model, self.config.n_layers

        def layer(n_keys):  # one token through one layer: projections, scores + mix, feed-forward
            return 2 * 4 * d * d + 2 * 2 * n_keys * d + 2 * 2 * d * c.d_ff

        flops = T * (L * layer(T) + 2 * d * c.vocab_size)  # a decoder stack and the output layer
        for S in src:  # ED: the encoder, the memory's keys and values, cross-attention's q, out, scores, mix
            flops += S * L * (layer(S) + 2 * 2 * d * d) + T * L * (2 * 2 * d * d + 2 * 2 * S * d)
        return flops

    def flops_per_token(self, *lengths):
        """``forward_flops(*lengths)`` per token seen, source and target tokens alike."""
        return self.forward_flops(*lengths) / sum(self._lengths(lengths))

    def attention_probes(self, *args, **kwargs):
        """Run the model in eval mode without a graph; return {layer name: (B, H, T_q, T_k)
        attention probabilities} for every attention layer, in forward order."""
        names = {id(m): name for name, m in self.named_modules()}
        with nn.eval_mode(self), no_grad(), nn.record_attention() as rec:
            self(*args, **kwargs)
        return {names[id(m)]: p for m, p in rec}


# ---- decoder-only: CD and ND -------------------------------------------------------------

class DecoderOnly(_Model):
    """Token + position embeddings -> n_layers pre-LN blocks -> LayerNorm -> tied output.

    ``model(tokens, prefix_len=None, cache=None)`` -> logits (B, T, V). ``arch`` ("cd" or "nd")
    picks the mask: causal, or prefix with ``prefix_len`` (int or (B,) array; None means 0).
    With a BOS token shifted in, pass ``prefix_len = 1 + number of prefix tokens`` (see
    `masks.py`). With an `nn.KVCache`, ``tokens`` continue the ids fed before: positions
    start after them, and the mask rows are those of the new positions in the whole sequence.
    """

    def __init__(self, config, arch="cd", rng=None):
        rng = as_rng(rng)
        self.arch = arch
        dt = self._common(config, rng)
        c = config
        self.pos_emb = nn.Embedding(c.max_len, c.d_model, rng=rng, dtype=dt)
        self.blocks = [nn.DecoderBlock(c.d_model, c.n_heads, c.d_ff, c.n_layers, cross=False,
                                       dropout=c.dropout, rng=rng, dtype=dt, dropout_rng=self.dropout_rng)
                       for _ in range(c.n_layers)]
        self.ln_f = nn.LayerNorm(c.d_model, dtype=dt)

    @property
    def arch(self):
        return self._arch

    @arch.setter
    def arch(self, value):
        if value not in ("cd", "nd"):
            raise ValueError(f"DecoderOnly: arch must be 'cd' or 'nd', got {value!r}")
        self._arch = value

    def forward(self, tokens, prefix_len=None, cache=None):
        tokens, fed, start = self._fed(tokens, "tokens", cache)
        (B, T), P = fed.shape, 0 if prefix_len is None else prefix_len
        if self.arch == "cd" and np.any(np.asarray(P) != 0):
            raise ValueError(f"prefix_len must be 0 or None for a causal decoder ('cd'), got "
                             f"{prefix_len!r}; switch to 'nd' (model.arch = 'nd') for a prefix")
        m = masks.prefix(T, masks.check_prefix_len(P, T, B)) if self.arch == "nd" else masks.causal(T)
        mask = masks.combine(m, self._pad_keys(fed))[..., start:, :]
        if cache is not None:
            cache.tokens = fed
        x = self.drop(self.tok_emb(tokens) + self.pos_emb.weight[start:fed.shape[1]])
        for block in self.blocks:
            x = block(x, mask=mask, cache=cache)
        return self._logits(self.ln_f(x))


# ---- encoder-decoder: ED -------------------------------------------------------------------

class EncoderDecoder(_Model):
    """Encoder: n_layers bidirectional blocks over ``src``; decoder: n_layers causal blocks over
    ``tgt``, each also attending to every non-pad encoder output. One token embedding is
    shared by encoder, decoder and output layer; each stack has its own position embedding
    and final LayerNorm.

    ``model(src, tgt)`` -> logits (B, T_tgt, V); ``tgt`` is the decoder input (BOS-shifted).
    """

    arch = "ed"

    def __init__(self, config, rng=None):
        rng = as_rng(rng)
        dt = self._common(config, rng)
        c, drng = config, self.dropout_rng
        self.enc_pos = nn.Embedding(c.max_len, c.d_model, rng=rng, dtype=dt)
        self.dec_pos = nn.Embedding(c.max_len, c.d_model, rng=rng, dtype=dt)
        self.encoder = [nn.EncoderBlock(c.d_model, c.n_heads, c.d_ff, c.n_layers, c.dropout, rng, dt, drng)
                        for _ in range(c.n_layers)]
        self.enc_ln = nn.LayerNorm(c.d_model, dtype=dt)
        self.decoder = [nn.DecoderBlock(c.d_model, c.n_heads, c.d_ff, c.n_layers, cross=True,
                                        dropout=c.dropout, rng=rng, dtype=dt, dropout_rng=drng)
                        for _ in range(c.n_layers)]
        self.dec_ln = nn.LayerNorm(c.d_model, dtype=dt)

    def encode(self, src):
        """Encoder outputs (B, S, D) for source ids (B, S); pad keys are masked."""
        src = _check_tokens(src, "src", self.config)
        mask = self._pad_keys(src)  # None: bidirectional, every key allowed
        x = self.drop(self.tok_emb(src) + self.enc_pos.weight[:src.shape[1]])
        for block in self.encoder:
            x = block(x, mask=mask)
        return self.enc_ln(x)

    def decode(self, tgt, memory, src, cache=None):
        """Logits (B, T, V) for decoder input ``tgt`` given encoder outputs ``memory`` of ``src``;
        with an `nn.KVCache`, ``tgt`` continues the ids fed before (as in `DecoderOnly`)."""
        tgt, fed, start = self._fed(tgt, "tgt", cache)
        if tgt.shape[0] != memory.shape[0]:
            raise ValueError(f"tgt has batch size {tgt.shape[0]} but src has {memory.shape[0]}")
        if cache is not None:
            cache.tokens = fed
        T = fed.shape[1]
        self_mask = masks.combine(masks.causal(T), self._pad_keys(fed))[..., start:, :]
        cross_mask = self._pad_keys(np.asarray(src))
        x = self.drop(self.tok_emb(tgt) + self.dec_pos.weight[start:T])
        for block in self.decoder:
            x = block(x, mask=self_mask, memory=memory, memory_mask=cross_mask, cache=cache)
        return self._logits(self.dec_ln(x))

    def forward(self, src, tgt):
        return self.decode(tgt, self.encode(src), src)


# ---- construction ----------------------------------------------------------------------------

def build_model(arch, config, seed=0):
    """A fresh model: ``arch`` is "cd", "nd" or "ed"; weights are a function of ``seed``.

    "cd" and "nd" built with the same seed have identical weights.
    """
    if not isinstance(config, ModelConfig):
        raise TypeError(f"build_model: config must be a ModelConfig, got {type(config).__name__}")
    if arch in ("cd", "nd"):
        return DecoderOnly(config, arch=arch, rng=seed)
    if arch == "ed":
        return EncoderDecoder(config, rng=seed)
    raise ValueError(f"build_model: arch must be one of {ARCHS}, got {arch!r}")

