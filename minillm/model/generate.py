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

The cache is an `nn.KVCache` passed to the model's own forward (``model(new_ids,
cache=cache)``), which attention fills and reads. ``generate(..., use_cache=False)`` runs
the plain forward over the whole sequence at every step; the tests check that both give
the same tokens and (to rounding) the same logits.
"""
import numpy as np

from . import nn
from ..engine.rng import as_rng
from ..engine.tensor import no_grad

__all__ = ["generate", "sample_next"]


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
        z = np.where(z >= np.sort(z)[-min(top_k, len(z))], z, -np.inf)  # keep the top_k largest (and ties)
    p = np.exp(z - z.max())
    p /= p.sum()
    return int(as_rng(rng).choice(len(p), p=p))


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
    src, memory = None, None  # the model checks that the prompt fits max_len
    if model.arch == "ed":
        src = (np.concatenate([prompt, [eos_id]]) if src_eos else prompt).astype(np.int64)[None]
        if src.shape[1] == 0:
            raise ValueError("an encoder-decoder needs a non-empty prompt")
        fed = np.array([bos_id], dtype=np.int64)
    else:
        fed = np.concatenate([[bos_id], prompt]).astype(np.int64)
    prefix_len = len(fed) if model.arch == "nd" else None
    cache = nn.KVCache() if use_cache else None

    def last_logits(ids):  # the new ids with a cache, else every id fed so far
        if memory is not None:
            return model.decode(ids[None], memory, src, cache=cache).data[0, -1]
        return model(ids[None], prefix_len, cache=cache).data[0, -1]

    out, seen = [], []
    with nn.eval_mode(model), no_grad():
        if src is not None:
            memory = model.encode(src)
        logits = last_logits(fed)
        for _ in range(max_new_tokens):
            seen.append(logits)
            token = sample_next(logits, temperature, top_k, rng)
            if eos_id is not None and token == eos_id:
                break
            out.append(token)
            if len(out) == max_new_tokens or len(fed) == model.config.max_len:
                break
            fed = np.append(fed, np.int64(token))
            logits = last_logits(fed[-1:] if use_cache else fed)
    out = np.asarray(out, dtype=np.int64)
    return (out, seen) if return_logits else out
