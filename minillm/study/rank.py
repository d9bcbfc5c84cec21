"""Why decoder-only? The low-rank argument, measured.

A bidirectional attention matrix is softmax(Q Kᵀ) with Q, K of shape (n, d): before the
softmax it has rank at most d, so for n >> d it can end up close to low rank. A causal
attention matrix is lower triangular with a positive diagonal, so it is always full rank
(its determinant is the product of its diagonal). Whether that matters depends on *how*
close to low rank the bidirectional matrix gets, which depends on the logit scale: so we
measure three ranks of real matrices instead of arguing.

- numerical (`numerical_rank`): singular values above `rtol * largest` (a hard count);
- entropy: exp(entropy of the normalised singular values) (a soft count, Roy and
  Vetterli 2007);
- stable: ||A||_F^2 / ||A||_2^2 (how many directions carry the energy).

`ranks(A)` gives all three.

`synthetic(...)` compares bidirectional, causal and prefix softmax attention on random
Q, K across logit scales, with bidirectional *linear* attention (rank <= d exactly) as the
control; `attention_ranks(...)` does the same for the attention of a trained model.
"""
import numpy as np

from ..model import masks


def singular_values(A):
    return np.linalg.svd(np.asarray(A, dtype=np.float64), compute_uv=False)


def numerical_rank(A, rtol=1e-6):
    s = singular_values(A)
    return int((s > rtol * s[0]).sum()) if s.size and s[0] > 0 else 0


def ranks(A, rtol=1e-6):
    """The three rank measures of one matrix, as a dict: numerical, entropy and stable."""
    s = singular_values(A)
    p = s[s > 0] / s.sum()   # the normalised singular values (those above 0) of the entropy rank
    return {"numerical": numerical_rank(A, rtol), "entropy": float(np.exp(-(p * np.log(p)).sum())),
            "stable": float((s ** 2).sum() / s[0] ** 2)}


def _mean(rows):
    """Each rank measure averaged over `rows` (dicts holding the three)."""
    return {k: float(np.mean([r[k] for r in rows])) for k in ("numerical", "entropy", "stable")}


def softmax_attention(logits, kind="bidirectional", prefix=0):
    """Row-softmax of an (n, n) logit matrix under a mask kind; a float64 probability matrix."""
    logits = np.asarray(logits, dtype=np.float64)
    n = logits.shape[0]
    if kind not in ("bidirectional", "causal", "prefix"):
        raise ValueError(f"mask kind must be bidirectional, causal or prefix, got {kind!r}")
    keep = masks.prefix(n, {"bidirectional": n, "causal": 0}.get(kind, prefix))  # prefix n: all; prefix 0: causal
    z = np.where(keep, logits, -np.inf)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def linear_attention(Q, K):
    """Bidirectional linear attention phi(Q) phi(K)ᵀ, rows normalised, phi = elu + 1: rank <= d exactly."""
    phi = lambda x: np.where(x > 0, x + 1, np.exp(np.minimum(x, 0)))  # noqa: E731
    A = phi(np.asarray(Q, np.float64)) @ phi(np.asarray(K, np.float64)).T
    return A / A.sum(axis=1, keepdims=True)


def synthetic(n=64, d=8, scales=(0.01, 0.1, 1.0, 3.0), seeds=3, prefix=None, rtol=1e-6):
    """Ranks of attention on random Q, K ~ N(0, 1) with logits scale * Q Kᵀ / sqrt(d).

    Returns a list of rows {scale, kind, numerical, entropy, stable} averaged over seeds.
    """
    if n < 2 or d < 1:
        raise ValueError(f"synthetic: need n >= 2 and d >= 1, got n={n}, d={d}")
    prefix = n // 2 if prefix is None else prefix
    rows = []
    for scale in scales:
        per_kind = {}
        for seed in range(seeds):
            Q, K = np.random.default_rng(seed).standard_normal((2, n, d))   # Q first, then K
            logits = scale * Q @ K.T / np.sqrt(d)
            mats = {kind: softmax_attention(logits, kind, prefix) for kind in ("bidirectional", "causal", "prefix")}
            mats["linear (control)"] = linear_attention(np.sqrt(scale) * Q, np.sqrt(scale) * K)
            for kind, A in mats.items():
                per_kind.setdefault(kind, []).append(ranks(A, rtol))
        rows += [{"scale": scale, "kind": kind, **_mean(r)} for kind, r in per_kind.items()]
    return rows


def attention_ranks(probs, rtol=1e-6):
    """Ranks of every attention matrix in `probs`: a dict layer name -> array (B, H, T, T).

    Returns rows {layer, head, numerical, entropy, stable} averaged over the batch.
    """
    rows = []
    for layer, P in probs.items():
        P = np.asarray(P)
        for h in range(P.shape[1]):
            per_row = [ranks(P[b, h], rtol) for b in range(P.shape[0])]
            rows.append({"layer": layer, "head": h, **_mean(per_row)})
    return rows


def format_table(rows, columns=None):
    """Rows of dicts as an aligned text table of `columns` (default: the first row's keys)."""
    columns = columns or list(rows[0])
    cells = [[f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


# ---- trained models ------------------------------------------------------------------------------

def model_ranks(model, sequences, rtol=1e-6):
    """Ranks of a trained model's attention on equal-length `sequences` (B, T) of token ids.

    Decoder-only models are run under all three masks (same weights: the causal, prefix
    with P = T/2, and bidirectional masks); an encoder-decoder's encoder is bidirectional
    and its decoder self-attention causal. Returns rows {mask, layer, numerical, entropy,
    stable, n} with the measures averaged over heads and the batch.
    """
    tokens = np.asarray(sequences, dtype=np.int64)
    B, T = tokens.shape
    if getattr(model, "arch", None) == "ed":
        probes = model.attention_probes(tokens, tokens)
        runs = {"bidirectional": {k: v for k, v in probes.items() if k.startswith("encoder")},
                "causal": {k: v for k, v in probes.items() if k.endswith("self_attn")}}
    else:
        arch, runs = model.arch, {}
        try:
            for mask, P in (("causal", 0), ("prefix", T // 2), ("bidirectional", T)):
                model.arch = "nd"
                runs[mask] = model.attention_probes(tokens, np.full(B, P))
        finally:
            model.arch = arch
    return [{"mask": mask, "layer": layer, **_mean(attention_ranks({layer: P}, rtol)), "n": T}
            for mask, probes in runs.items() for layer, P in probes.items()]
