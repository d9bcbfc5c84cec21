"""Batch builders: turn token sequences into exactly what each architecture's model needs
for each objective (FLM, PLM, MLM), with padding, packing and token counts.

Every objective cuts a sequence ``x`` into a *context* ``c`` (seen, no loss) and an
*output* ``o`` (predicted, ends with EOS):

    FLM  c = []              o = x + [EOS]
    PLM  c = x[:s]           o = x[s:] + [EOS]         s ~ UniformInt[1, L-1] (or see split_ids)
    MLM  c = inputs          o = targets + [EOS]       (T5 span corruption of x)

Decoder-only (``"cd"``, ``"nd"``), called ``model(tokens, prefix_len)``:

    tokens  = [BOS] + c + o[:-1]
    targets = [-100] * len(c) + o               (-100 = ignore_index: no loss)

so ``tokens[i]`` is the token just before ``targets[i]`` (BOS shifted in). The mask is
``query i sees key j iff j <= i or (i < P and j < P)`` with ``P = prefix_len``:

- BOS/prefix convention: for ND with PLM or MLM, ``prefix_len = 1 + len(c)``: the
  bidirectional region is BOS plus the whole context *as the model is fed it*. The last
  position in the region (index ``len(c)``) reads the last context token and predicts the
  first output token ``o[0]``; it sees only BOS and the context, never anything it must
  predict. Every later position is causal. So the first loss position is always
  ``prefix_len - 1`` and no position before it carries a loss.
- CD uses ``prefix_len = 0`` for every objective (causal; PLM and MLM still put the loss
  on the output only). FLM uses ``prefix_len = 0`` for ND too (ND:FLM computes CD:FLM).

Encoder-decoder (``"ed"``), called ``model(src, tgt_in)``:

    src     = c            (MLM: c + [EOS], as T5 feeds its encoder)
    tgt_in  = [BOS] + o[:-1]
    targets = o

ED:FLM is refused (an empty encoder input makes it a causal decoder with dead weights).

Padding is on the right with ``tokenizer.pad_id``; padded targets are -100. A batch
reports ``tokens_seen`` (non-pad tokens fed to the model: decoder ``tokens``; ED ``src``
plus ``tgt_in``) and ``loss_tokens`` (targets != -100): budgets are matched on the first.

Packing (FLM only, ``pack=True``): whole sequences, each followed by EOS, are concatenated
greedily into rows of at most ``max_len`` positions, ``tokens = [BOS] + row[:-1]`` and
``targets = row``; a sequence is never split across rows.

The ``tokenizer`` argument is anything with ``pad_id``, ``bos_id``, ``eos_id`` and (for MLM)
``sentinel_ids``. NumPy only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from ..engine.rng import as_rng
from ..model.models import ARCHS  # re-exported: the one list of architectures
from .objectives import corrupted_lengths, plm_split, span_corruption

__all__ = ["IGNORE_INDEX", "ARCHS", "OBJECTIVES", "PAIRS", "PAPER_PAIRS", "Batch", "check_pair", "make_batch",
           "make_prompt_batch", "pack_sequences", "positions_needed", "longest_fitting"]

IGNORE_INDEX = -100
OBJECTIVES = ("flm", "plm", "mlm")
PAPER_PAIRS = (("cd", "flm"), ("cd", "mlm"), ("nd", "plm"), ("nd", "mlm"), ("ed", "plm"), ("ed", "mlm"))
PAIRS = tuple((a, o) for a in ARCHS for o in OBJECTIVES if (a, o) != ("ed", "flm"))


@dataclass
class Batch:
    """One batch. Decoder-only: ``tokens``, ``prefix_len``, ``targets``. Encoder-decoder:
    ``src``, ``tgt_in``, ``targets``. ``model(*batch.inputs)`` calls the model. All arrays
    are int64 ``(B, ...)``. ``objective`` is "flm", "plm", "mlm" or "prompt"
    (``make_prompt_batch``)."""

    arch: str
    objective: str
    targets: np.ndarray
    tokens: Optional[np.ndarray] = None
    prefix_len: Optional[np.ndarray] = None
    src: Optional[np.ndarray] = None
    tgt_in: Optional[np.ndarray] = None
    tokens_seen: int = 0
    loss_tokens: int = 0

    @property
    def inputs(self) -> tuple:
        return (self.src, self.tgt_in) if self.arch == "ed" else (self.tokens, self.prefix_len)

    @property
    def size(self) -> int:
        return int(self.targets.shape[0])


def check_pair(arch: str, objective: str) -> tuple:
    """Normalise and validate an (architecture, objective) pair."""
    a = str(arch).lower()
    o = str(objective).lower()
    if a not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if o not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if (a, o) == ("ed", "flm"):
        raise ValueError("arch 'ed' with objective 'flm' makes no sense: full LM gives the encoder nothing "
                         "to read; use ed:plm or ed:mlm, or a decoder-only arch for flm")
    return a, o


def _as_seq(x, index) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"sequence {index} must be a 1-D array of integer token ids, got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64)


def _cut(objective, x, index, tok, rng, noise_density, mean_span_length, split_ids=None):
    """Context and output (with EOS) of one sequence."""
    eos = np.array([tok.eos_id], dtype=np.int64)
    if objective == "flm":
        if len(x) < 1:
            raise ValueError(f"sequence {index} is empty")
        return x[:0], np.concatenate([x, eos])
    try:  # plm_split and span_corruption check the sequence; say which one it is
        if objective == "plm":
            s = plm_split(len(x), rng, None if split_ids is None else np.flatnonzero(np.isin(x, split_ids)))
            return x[:s], np.concatenate([x[s:], eos])
        inputs, targets = span_corruption(x, tok.sentinel_ids, noise_density, mean_span_length, rng)
    except ValueError as e:
        raise ValueError(f"sequence {index}: {e}") from None
    return inputs, np.concatenate([targets, eos])


def _layout(arch, ctx, out, tok, src_eos):
    """``(fed_a, fed_b, targets, len(ctx))`` for one example: decoders feed ``fed_a`` =
    tokens (``fed_b`` is None); ED feeds ``fed_a`` = src and ``fed_b`` = tgt_in."""
    bos = np.array([tok.bos_id], dtype=np.int64)
    if arch == "ed":
        src = np.concatenate([ctx, [tok.eos_id]]).astype(np.int64) if src_eos else ctx
        return src, np.concatenate([bos, out[:-1]]), out, 0
    tokens = np.concatenate([bos, ctx, out[:-1]])
    targets = np.concatenate([np.full(len(ctx), IGNORE_INDEX, dtype=np.int64), out])
    return tokens, None, targets, len(ctx)


def _pad(rows, value, width=None):
    """Rows padded on the right with ``value`` to ``width`` (None: the longest row)."""
    out = np.full((len(rows), max(map(len, rows)) if width is None else int(width)), value, dtype=np.int64)
    for b, r in enumerate(rows):
        out[b, : len(r)] = r
    return out


def _assemble(arch, objective, examples, tok, max_len, pad_to, prefix_on, what="sequence"):
    """examples: list of (fed_a, fed_b, targets, context_len). Checks lengths, pads."""
    if not examples:
        raise ValueError("empty batch: no sequences given")
    for i, (a, b, _, _) in enumerate(examples):
        need = len(a) if arch != "ed" else max(len(a), len(b))
        if max_len is not None and need > max_len:
            detail = f"{len(a)} positions" if arch != "ed" else f"src {len(a)} and target {len(b)} positions"
            raise ValueError(f"{what} {i} needs {detail} for {arch}:{objective} but max_len is {max_len}")
        if pad_to is not None and need > pad_to:
            raise ValueError(f"{what} {i} needs {need} positions, more than pad_to={pad_to}")
    fed_a, fed_b, targets, context_lens = zip(*examples)
    targets = _pad(targets, IGNORE_INDEX, pad_to)
    loss_tokens = int((targets != IGNORE_INDEX).sum())
    if arch == "ed":
        return Batch(arch, objective, targets, src=_pad(fed_a, tok.pad_id, pad_to),
                     tgt_in=_pad(fed_b, tok.pad_id, pad_to),
                     tokens_seen=sum(map(len, fed_a)) + sum(map(len, fed_b)), loss_tokens=loss_tokens)
    prefix = np.array([1 + c if prefix_on else 0 for c in context_lens], dtype=np.int64)
    return Batch(arch, objective, targets, tokens=_pad(fed_a, tok.pad_id, pad_to),
                 prefix_len=prefix, tokens_seen=sum(map(len, fed_a)), loss_tokens=loss_tokens)


def pack_sequences(sequences: Sequence, max_len: int, eos_id: Optional[int] = None) -> list:
    """Greedy packing, the one packer of minillm: each sequence, followed by ``eos_id``
    unless it is None, joins the current row if the row stays within ``max_len`` tokens,
    else starts a new row; a sequence is never split. Returns the rows (1-D int64 arrays)
    in order. FLM packing (``make_batch(pack=True)``), the examples of
    ``minillm.data.corpus.BatchStream`` and the world's pretraining sequences all use it."""
    max_len, end = int(max_len), np.array([] if eos_id is None else [eos_id], dtype=np.int64)
    rows, current, used = [], [], 0
    for i, x in enumerate(sequences):
        x = _as_seq(x, i)
        need = len(x) + len(end)
        if len(x) < 1:
            raise ValueError(f"sequence {i} is empty")
        if need > max_len:
            what = "" if eos_id is None else " for flm"
            raise ValueError(f"sequence {i} needs {need} positions{what} but max_len is {max_len}")
        if used + need > max_len:
            rows.append(np.concatenate(current))
            current, used = [], 0
        current += [x, end]
        used += need
    if current:
        rows.append(np.concatenate(current))
    return rows


def make_batch(arch: str, objective: str, sequences: Sequence, tokenizer, rng=None,
               max_len: Optional[int] = None, *, noise_density: float = 0.15,
               mean_span_length: float = 3.0, pack: bool = False,
               pad_to: Optional[int] = None, split_ids=None) -> Batch:
    """Build one batch of ``arch:objective`` from 1-D integer token sequences.

    ``rng`` (Generator or int seed) draws the PLM split points and MLM noise spans.
    ``max_len`` bounds every row (ED: src and target separately); a sequence that cannot
    fit raises ``ValueError``. ``pad_to`` pads to a fixed width instead of the longest row.
    ``pack=True`` (FLM only) packs several sequences per row (see the module docstring);
    then the batch may have fewer rows than sequences. ``split_ids``: PLM splits just before
    one of these token ids where a sequence holds any (``objectives.plm_split``).
    """
    arch, objective = check_pair(arch, objective)
    seqs = [_as_seq(x, i) for i, x in enumerate(sequences)]
    if pack:
        if objective != "flm":
            raise ValueError(f"pack=True is only for objective 'flm', got {objective!r}")
        if max_len is None:
            raise ValueError("pack=True needs max_len")
        seqs = [row[:-1] for row in pack_sequences(seqs, max_len, tokenizer.eos_id)]  # FLM adds the EOS back
    rng = as_rng(rng)
    examples = []
    for i, x in enumerate(seqs):
        ctx, out = _cut(objective, x, i, tokenizer, rng, noise_density, mean_span_length, split_ids)
        examples.append(_layout(arch, ctx, out, tokenizer, src_eos=(objective == "mlm")))
    prefix_on = arch == "nd" and objective != "flm"
    return _assemble(arch, objective, examples, tokenizer, max_len, pad_to, prefix_on)


def make_prompt_batch(arch: str, prompts: Sequence, completions: Sequence, tokenizer,
                      max_len: Optional[int] = None, *, add_eos: bool = True,
                      src_eos: bool = False, pad_to: Optional[int] = None) -> Batch:
    """Prompt -> completion batches for multitask finetuning and rank classification.

    Same layout as PLM with the split at the end of the prompt: context = prompt, output =
    completion (+ EOS if ``add_eos``); the loss is on the completion only. ND gets
    ``prefix_len = 1 + len(prompt)``, CD 0. ``src_eos=True`` appends EOS to the ED source,
    matching ED:MLM pretraining (use it with prompts in the MLM format).
    Summing ``-cross_entropy`` over the loss positions of a row scores the completion.
    """
    arch = check_pair(arch, "plm")[0]  # every arch takes prompts as it takes PLM
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions")
    examples = []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        p, c = _as_seq(p, i), _as_seq(c, i)
        out = np.concatenate([c, [tokenizer.eos_id]]).astype(np.int64) if add_eos else c
        if len(out) < 1:
            raise ValueError(f"completion {i} is empty")
        examples.append(_layout(arch, p, out, tokenizer, src_eos))
    return _assemble(arch, "prompt", examples, tokenizer, max_len, pad_to, arch == "nd", what="example")


def positions_needed(arch: str, objective: str, length: int, noise_density: float = 0.15,
                     mean_span_length: float = 3.0):
    """The most positions a sequence of ``length`` tokens can need, over all random draws:
    an int for decoder-only, ``(src, target)`` for ED. (MLM lengths are deterministic.)"""
    arch, objective = check_pair(arch, objective)
    n = int(length)
    if objective == "flm":
        return n + 1
    if objective == "plm":
        if n < 2:
            raise ValueError(f"sequence too short for plm: length {n}, need >= 2")
        return (n - 1, n) if arch == "ed" else n + 1
    n_in, n_out = corrupted_lengths(n, noise_density, mean_span_length)
    return (n_in + 1, n_out + 1) if arch == "ed" else n_in + n_out + 1


def longest_fitting(arch: str, objective: str, max_len: int, **kwargs) -> int:
    """The longest sequence length whose batches always fit in ``max_len`` positions."""
    def fits(n):  # ED's source and target each within max_len
        return np.max(positions_needed(arch, objective, n, **kwargs)) <= max_len

    n = 2
    if not fits(n):
        raise ValueError(f"max_len {max_len} is too small for {arch}:{objective}")
    while fits(n + 1):
        n += 1
    return n
