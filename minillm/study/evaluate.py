"""Zero-shot evaluation by rank classification.

For each example (a prompt and a few answer choices) the model scores every choice by
`sum log p(choice tokens | prompt)` — no length normalisation, as in the study — and picks
the best. The prompt is fed the way the architecture reads context: the encoder input (ED),
the bidirectional prefix (ND) or plain causal context (CD); `batches.make_prompt_batch`
lays that out. All choices of many prompts are scored together in a few forward passes.

Aggregation follows the study: accuracy per task is averaged over its prompt templates
(the median is reported too, as T0 did), then averaged over tasks, and always printed
beside two floors computed from the same items: a random choice, and the best constant
answer (the majority class), which is the floor a model that ignores the prompt reaches.
"""
import numpy as np

from ..engine import kernels as K
from ..data.batches import IGNORE_INDEX, make_prompt_batch
from ..engine.tensor import no_grad
from ..model.nn import eval_mode


def score_completions(model, arch, prompts, completions, tokenizer, batch_size=256, src_eos=False):
    """sum log p(completion | prompt) for each (prompt, completion) pair, as a float64 array."""
    scores = []
    with eval_mode(model), no_grad():
        for start in range(0, len(prompts), batch_size):
            batch = make_prompt_batch(arch, prompts[start:start + batch_size], completions[start:start + batch_size],
                                      tokenizer, add_eos=False, src_eos=src_eos)
            logits = model(*batch.inputs).data
            logp = K.log_softmax(np.ascontiguousarray(logits, dtype=np.float64))
            keep = batch.targets != IGNORE_INDEX
            picked = np.take_along_axis(logp, np.where(keep, batch.targets, 0)[..., None], -1)[..., 0]
            scores.append(np.where(keep, picked, 0).sum(axis=1))
    return np.concatenate(scores) if scores else np.zeros(0)


def rank_classify(model, arch, examples, tokenizer, batch_size=256, src_eos=False):
    """Predicted choice index for each example.

    `examples` is a list of (prompt ids, [choice ids, ...]) or objects with `prompt` and
    `choices` attributes. Ties go to the lowest index.
    """
    pairs = [(_get(e, "prompt", 0), _get(e, "choices", 1)) for e in examples]
    prompts = [p for p, cs in pairs for _ in cs]
    completions = [c for _, cs in pairs for c in cs]
    flat = score_completions(model, arch, prompts, completions, tokenizer, batch_size, src_eos)
    ends = np.cumsum([len(cs) for _, cs in pairs], dtype=np.int64)  # each example's choices end here in `flat`
    return np.array([np.argmax(flat[end - len(cs):end]) for end, (_, cs) in zip(ends, pairs)], dtype=np.int64)


def accuracy(model, arch, examples, tokenizer, **kwargs):
    """Fraction of examples whose predicted choice is the answer."""
    if not examples:
        raise ValueError("accuracy: no examples given")
    answers = [_get(e, "answer", 2) for e in examples]
    return float(np.mean(rank_classify(model, arch, examples, tokenizer, **kwargs) == answers))


def random_baseline(examples):
    """Expected accuracy of a uniformly random choice over these items."""
    return float(np.mean([1.0 / len(_get(e, "choices", 1)) for e in examples]))


def constant_baseline(examples):
    """Accuracy of the best constant answer on these items: always the same choice index (the
    majority class; for tasks whose items list the same choices, the same answer every time)."""
    answers = np.array([_get(e, "answer", 2) for e in examples])
    return float(max(np.mean(answers == k) for k in range(max(len(_get(e, "choices", 1)) for e in examples))))


def summarise(per_template):
    """{task: {template: accuracy}} -> dict with per-task mean and median over templates and the mean over tasks."""
    tasks = {t: {"mean": float(np.mean(list(v.values()))), "median": float(np.median(list(v.values()))),
                 "templates": dict(v)} for t, v in per_template.items()}
    return {"tasks": tasks, "mean": float(np.mean([t["mean"] for t in tasks.values()])) if tasks else float("nan")}


def _get(example, name, index):
    return getattr(example, name) if hasattr(example, name) else example[index]
