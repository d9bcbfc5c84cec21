"""The three attention masks of the study, and padding.

Every mask is a bool ndarray with ``M[..., i, j] = True`` when query position ``i`` may attend
to key position ``j``. Attention takes the softmax over the kept keys only; a query row that
keeps nothing (possible only with padding) gives zeros, never NaN.

=================  ================================  ==========================================
mask               rule                              used by
=================  ================================  ==========================================
``bidirectional``  every ``j``                       the encoder of ED
``causal``         ``j <= i``                        CD, the decoder self-attention of ED
``prefix(P)``      ``j <= i or (i < P and j < P)``   ND (prefix LM)
=================  ================================  ==========================================

Convention for ``prefix``: ``P`` counts positions *of the sequence the model is fed*. With a
BOS token shifted in, the caller passes ``P = 1 + number of prefix tokens``, so the position
that reads the last prefix token (and predicts the first target) is inside the bidirectional
region. ``prefix(T, 0)`` is ``causal(T)`` and ``prefix(T, T)`` is ``bidirectional(T)``.

Padding combines with any of these by AND (``combine``): ``key_padding(tokens, pad_id)`` has
shape ``(B, 1, T)`` and broadcasts against ``(T, T)`` or ``(B, T, T)`` masks.
"""
import numbers

import numpy as np

__all__ = ["bidirectional", "causal", "prefix", "key_padding", "combine", "check_prefix_len"]


def _check_length(T, name="T"):
    if isinstance(T, (bool, np.bool_)) or not isinstance(T, numbers.Integral) or T < 0:
        raise ValueError(f"masks: {name} must be a non-negative int, got {T!r}")
    return int(T)


def bidirectional(T):
    """All True ``(T, T)``: every position sees every position."""
    T = _check_length(T)
    return np.ones((T, T), dtype=bool)


def causal(T):
    """Lower triangle ``(T, T)``: position ``i`` sees ``j <= i``."""
    return np.tril(bidirectional(T))


def check_prefix_len(prefix_len, T, B=None):
    """Validate a prefix length against sequence length ``T`` (and batch size ``B`` if given).

    Accepts an int (or 0-d integer array) or a 1-D integer array of shape ``(B,)``; returns an
    int or an int64 array.
    Raises ``ValueError`` naming ``prefix_len`` and the bad value otherwise.
    """
    P = np.asarray(prefix_len)
    if P.ndim > 1 or P.dtype.kind not in "iu":
        got = repr(prefix_len) if P.ndim == 0 else f"shape {P.shape} dtype {P.dtype}"
        raise ValueError(f"prefix_len must be an int or a 1-D integer array, got {got}")
    if P.ndim == 1 and B is not None and P.shape[0] != B:
        raise ValueError(f"prefix_len must have shape ({B},) to match the batch, got {P.shape}")
    bad = (P < 0) | (P > T)
    if bad.any():
        where = f" at index {int(np.argmax(bad))}" if P.ndim else ""
        raise ValueError(f"prefix_len must lie in [0, T={T}], got {P[bad][0]}{where}")
    return int(P) if P.ndim == 0 else P.astype(np.int64)


def prefix(T, P):
    """The non-causal (prefix-LM) mask: ``j <= i or (i < P and j < P)``.

    ``P`` an int gives ``(T, T)``; ``P`` a 1-D integer array of per-example prefix lengths gives
    ``(B, T, T)``.
    """
    T = _check_length(T)
    P = np.asarray(check_prefix_len(P, T))[..., None, None]  # (1, 1), or (B, 1, 1) broadcast to (B, T, T)
    i = np.arange(T)[:, None]
    j = np.arange(T)[None, :]
    return (j <= i) | ((i < P) & (j < P))


def key_padding(tokens, pad_id):
    """``(B, 1, T)`` bool: True where the *key* token is not ``pad_id``.

    AND it with a ``(T, T)`` or ``(B, T, T)`` mask (see ``combine``) so that no query attends to
    a pad. Query rows at pad positions are left as they are: their outputs are never read
    (their targets are ignored) and cannot influence non-pad positions.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"key_padding: tokens must have shape (B, T), got {tokens.shape}")
    return (tokens != pad_id)[:, None, :]


def combine(*masks):
    """AND of masks with NumPy broadcasting; ``None`` entries are skipped (``None`` if all are)."""
    out = None
    for m in masks:
        if m is None:
            continue
        m = np.asarray(m)
        if m.dtype != bool:
            raise ValueError(f"combine: masks must be bool arrays, got dtype {m.dtype}")
        out = m if out is None else (out & m)
    return out
