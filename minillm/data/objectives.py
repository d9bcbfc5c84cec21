"""The three pretraining objectives of Wang et al. 2022, at the level of one sequence.

- FLM (full language modeling): predict every next token. Nothing to cut; the batch
  builders in ``minillm.data.batches`` lay it out.
- PLM (prefix language modeling): split a sequence at ``s ~ UniformInt[1, L-1]`` (or at one
  of the positions a corpus marks); the prefix ``x[:s]`` is context, the continuation
  ``x[s:]`` carries the loss.
- MLM (T5 span corruption): ``random_spans_noise_mask`` picks noise spans exactly as T5's
  ``random_spans_noise_mask`` does; ``span_corruption`` replaces each span by a sentinel in
  the inputs and makes targets of "sentinel, hidden tokens" for every span.

How these become model inputs for each architecture (BOS, prefix length, padding) lives
in ``minillm.data.batches``. Everything here is NumPy only. Wherever randomness is drawn,
``rng`` is a ``np.random.Generator`` or an int seed (``None`` = fresh OS entropy), as
``minillm.engine.rng.as_rng`` takes it.
"""
from __future__ import annotations

import numpy as np

from ..engine.rng import as_rng  # re-exported: objectives.as_rng is the same helper

__all__ = ["as_rng", "noise_counts", "random_spans_noise_mask", "apply_noise_mask", "span_corruption",
           "corrupted_lengths", "plm_split"]


def noise_counts(length: int, noise_density: float = 0.15, mean_span_length: float = 3.0):
    """T5's counts for a sequence of ``length`` tokens: ``(N, S)`` = (noise tokens, spans).

    ``n' = max(length, 2)``; ``N = clip(round(n' * density), 1, n' - 1)``;
    ``S = max(round(N / mean_span_length), 1)``, all in float64 with ``np.round`` (half to
    even). One guard T5 lacks (HF transformers PR #22938): ``S`` is capped at the number of
    kept tokens ``n' - N``, since every kept part must be non-empty. The counts refer to
    ``n'``; for ``length < 2`` the truncated mask holds fewer noise tokens.
    """
    density, mean = float(noise_density), float(mean_span_length)
    if not 0.0 < density < 1.0:  # also rejects NaN
        raise ValueError(f"noise_density must be in (0, 1), got {noise_density!r}")
    if not mean >= 1.0:  # also rejects NaN
        raise ValueError(f"mean_span_length must be >= 1, got {mean_span_length!r}")
    length = int(length)
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    n = max(length, 2)
    n_noise = min(max(int(np.round(n * density)), 1), n - 1)  # Python floats are float64
    n_spans = min(max(int(np.round(n_noise / mean)), 1), n - n_noise)
    return n_noise, n_spans


def _random_composition(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``total`` into ``parts`` positive integers, uniformly over all compositions:
    choose ``parts - 1`` distinct cut points among the ``total - 1`` gaps."""
    cuts = np.sort(rng.choice(total - 1, size=parts - 1, replace=False)) + 1
    return np.diff(np.concatenate(([0], cuts, [total])))


def random_spans_noise_mask(length, noise_density=0.15, mean_span_length=3.0, rng=None):
    """T5's noise mask: a bool array ``(length,)``, True = noise (hidden) token.

    The mask is ``[keep_0, noise_0, keep_1, noise_1, ..., keep_{S-1}, noise_{S-1}]`` with
    the noise and kept counts each split into S positive parts uniformly at random, so for
    ``length >= 2`` it starts with a kept token, ends with noise, and holds exactly N noise
    tokens in exactly S runs (see ``noise_counts``). Lengths 0 and 1 follow T5: the mask of
    length 2 truncated, i.e. no noise at all.
    """
    n_noise, n_spans = noise_counts(length, noise_density, mean_span_length)
    rng = as_rng(rng)
    n = max(int(length), 2)
    noise_parts = _random_composition(n_noise, n_spans, rng)
    keep_parts = _random_composition(n - n_noise, n_spans, rng)
    run_lengths = np.stack([keep_parts, noise_parts], axis=1).reshape(-1)
    run_is_noise = np.tile([False, True], n_spans)
    return np.repeat(run_is_noise, run_lengths)[: int(length)]


def apply_noise_mask(tokens, noise_mask, sentinels):
    """Cut ``tokens`` by a given ``noise_mask`` into T5 ``(inputs, targets)``.

    Span k of noise becomes ``sentinels[k]`` in ``inputs``; ``targets`` is, for each span
    in order, ``sentinels[k]`` followed by the tokens it hid. No EOS is added.
    """
    tokens = np.asarray(tokens)
    mask = np.asarray(noise_mask, dtype=bool)
    if tokens.ndim != 1 or mask.shape != tokens.shape:
        raise ValueError(f"tokens and noise_mask must be 1-D of the same length, got shapes {tokens.shape} "
                         f"and {mask.shape}")
    is_start = mask & ~np.concatenate(([False], mask[:-1]))  # first token of a noise span
    n_spans = int(is_start.sum())
    sentinels = np.asarray(sentinels, dtype=np.int64).reshape(-1)
    if n_spans > len(sentinels):
        raise ValueError(f"out of sentinels: {n_spans} noise spans but only {len(sentinels)} sentinels "
                         f"(give the tokenizer more sentinels or use shorter sequences)")
    span = np.cumsum(is_start) - 1  # index of the span a noise token belongs to
    # inputs: kept tokens; span k's first token becomes sentinel k, the rest are dropped
    inputs = tokens.astype(np.int64)
    inputs[is_start] = sentinels[:n_spans]
    inputs = inputs[~mask | is_start]
    # targets: span k's tokens move right by k + 1, making room for sentinel k before them
    noise = np.flatnonzero(mask)
    targets = np.empty(len(noise) + n_spans, dtype=np.int64)
    targets[np.arange(len(noise)) + span[noise] + 1] = tokens[noise]
    targets[np.flatnonzero(is_start[noise]) + np.arange(n_spans)] = sentinels[:n_spans]
    return inputs, targets


def span_corruption(tokens, sentinels, noise_density=0.15, mean_span_length=3.0, rng=None):
    """T5 span corruption of a 1-D token sequence: returns ``(inputs, targets)``.

    ``len(inputs) == n - N + S`` and ``len(targets) == N + S`` (``noise_counts``); the k-th
    noise span is replaced in ``inputs`` by ``sentinels[k]``, and ``targets`` is every
    sentinel followed by the tokens it hid. EOS is the caller's to add.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tokens.shape}")
    if len(tokens) < 2:
        raise ValueError(f"sequence too short to corrupt: length {len(tokens)}, need at least 2 tokens")
    n_spans = noise_counts(len(tokens), noise_density, mean_span_length)[1]   # checked before any draw
    if n_spans > len(sentinels):
        raise ValueError(f"out of sentinels: a sequence of {len(tokens)} tokens gets {n_spans} noise spans "
                         f"but only {len(sentinels)} sentinels were given")
    mask = random_spans_noise_mask(len(tokens), noise_density, mean_span_length, rng)
    return apply_noise_mask(tokens, mask, sentinels)


def corrupted_lengths(length, noise_density=0.15, mean_span_length=3.0):
    """``(len(inputs), len(targets))`` that span corruption gives a sequence of ``length``
    tokens (no EOS). Deterministic: only the span positions are random."""
    if int(length) < 2:
        raise ValueError(f"sequence too short to corrupt: length {length}, need at least 2")
    n_noise, n_spans = noise_counts(length, noise_density, mean_span_length)
    return int(length) - n_noise + n_spans, n_noise + n_spans


def plm_split(length, rng=None, at=None) -> int:
    """A PLM split point ``s ~ UniformInt[1, length - 1]`` (both ends included); or, if the
    positions ``at`` hold any in that range, one of them drawn uniformly (the world splits
    just before a fact's value, so the continuation starts where a question's answer does)."""
    length = int(length)
    if length < 2:
        raise ValueError(f"sequence too short to split for PLM: length {length}, need >= 2")
    rng = as_rng(rng)
    at = [] if at is None else [int(s) for s in at if 1 <= s < length]
    return at[int(rng.integers(len(at)))] if at else int(rng.integers(1, length))
