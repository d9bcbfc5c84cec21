"""Rank classification: batched scoring equals a brute-force one-pair-at-a-time scorer, and
the invariants of `sum log p(choice | prompt)` hold."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minillm as mm
from minillm.study import evaluate
from toy_tasks import toy_tokenizer

TOK = toy_tokenizer()
CFG = mm.ModelConfig(vocab_size=TOK.vocab_size, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_len=24,
                     pad_id=TOK.pad_id, dtype="float64")
MODELS = {arch: mm.build_model(arch, CFG, seed=1) for arch in ("cd", "nd", "ed")}


def brute_force_score(model, arch, prompt, choice):
    """Score one (prompt, choice) pair without batching or padding."""
    prompt, choice = list(prompt), list(choice)
    if arch == "ed":
        logits = model(np.array([prompt]), np.array([[TOK.bos_id] + choice[:-1]])).data[0]
        rows = range(len(choice))
    else:
        tokens = np.array([[TOK.bos_id] + prompt + choice[:-1]])
        logits = model(tokens, np.array([1 + len(prompt) if arch == "nd" else 0])).data[0]
        rows = range(len(prompt), len(prompt) + len(choice))
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    return sum(logp[r, c] for r, c in zip(rows, choice))


ids = st.integers(TOK.n_special, TOK.vocab_size - 1)
examples = st.lists(st.tuples(st.lists(ids, min_size=1, max_size=8),
                              st.lists(st.lists(ids, min_size=1, max_size=4), min_size=2, max_size=4)),
                    min_size=1, max_size=4)


@pytest.mark.parametrize("arch", ["cd", "nd", "ed"])
@settings(max_examples=15)
@given(exs=examples, batch_size=st.integers(1, 5))
def test_batched_scores_equal_brute_force(arch, exs, batch_size):
    model = MODELS[arch]
    prompts = [p for p, cs in exs for _ in cs]
    choices = [c for _, cs in exs for c in cs]
    got = evaluate.score_completions(model, arch, prompts, choices, TOK, batch_size=batch_size)
    want = [brute_force_score(model, arch, p, c) for p, c in zip(prompts, choices)]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    preds = evaluate.rank_classify(model, arch, exs, TOK, batch_size=batch_size)
    at = 0
    for (p, cs), pred in zip(exs, preds):
        assert pred == int(np.argmax(want[at:at + len(cs)]))
        at += len(cs)


class Shifted(mm.nn.Module):
    """A model whose logits are another model's plus a constant."""
    def __init__(self, model, c):
        self.model, self.c = model, c

    def forward(self, *args):
        return self.model(*args) + self.c


class Uniform(mm.nn.Module):
    """A model that gives every token the same probability."""
    def __init__(self, arch):
        self.arch = arch

    def forward(self, first, second):
        fed = second if self.arch == "ed" else first  # decoder input: tgt_in (ED) or tokens
        return mm.Tensor(np.zeros(fed.shape + (TOK.vocab_size,)))


@given(exs=examples)
def test_constant_added_to_all_logits_changes_nothing(exs):
    for arch, model in MODELS.items():
        a = evaluate.rank_classify(model, arch, exs, TOK)
        b = evaluate.rank_classify(Shifted(model, 7.5), arch, exs, TOK)
        np.testing.assert_array_equal(a, b)


@given(exs=examples)
def test_uniform_model_picks_the_choice_with_fewest_tokens(exs):
    for arch in ("cd", "ed"):
        preds = evaluate.rank_classify(Uniform(arch), arch, exs, TOK)
        for (p, cs), pred in zip(exs, preds):
            assert pred == int(np.argmin([len(c) for c in cs]))  # ties: the first shortest


def test_accuracy_and_summary():
    exs = [([5], [[6], [7]], 0), ([5, 6], [[6], [7], [8], [9]], 3)]
    acc = evaluate.accuracy(Uniform("cd"), "cd", exs, TOK)
    assert acc == 0.5  # picks index 0 both times: right once
    s = evaluate.summarise({"a": {0: 1.0, 1: 0.0, 2: 0.5}, "b": {0: 0.25}})
    assert s["tasks"]["a"]["mean"] == 0.5 and s["tasks"]["a"]["median"] == 0.5 and s["mean"] == pytest.approx(0.375)
    with pytest.raises(ValueError, match="no examples"):
        evaluate.accuracy(Uniform("cd"), "cd", [], TOK)


@pytest.mark.parametrize("arch", ["cd", "ed"])
@given(exs=examples, prefix=st.lists(ids, min_size=1, max_size=3))
def test_a_prefix_shared_by_all_choices_adds_the_same_score_to_each(arch, exs, prefix):
    """Why the study can probe an ED with the statement's rest on the decoder side: scoring
    `prefix + choice` is log p(prefix | prompt) + log p(choice | prompt, prefix)."""
    model = MODELS[arch]
    prompts = [p for p, cs in exs for _ in cs]
    choices = [c for _, cs in exs for c in cs]
    joint = evaluate.score_completions(model, arch, prompts, [prefix + c for c in choices], TOK)
    shared = evaluate.score_completions(model, arch, prompts, [prefix] * len(prompts), TOK)
    conditional = []
    for p, c in zip(prompts, choices):  # log p(c | prompt, prefix) by brute force on the full sequence
        conditional.append(brute_force_score(model, arch, p, prefix + c) - brute_force_score(model, arch, p, prefix))
    np.testing.assert_allclose(joint - shared, conditional, rtol=1e-9, atol=1e-9)


def test_scoring_turns_dropout_off_and_restores_the_mode():
    model = mm.build_model("cd", mm.ModelConfig(**{**vars(CFG), "dropout": 0.5}), seed=1)
    model.eval()
    want = evaluate.score_completions(model, "cd", [[5, 6]], [[7, 8]], TOK)
    model.train()
    got = evaluate.score_completions(model, "cd", [[5, 6]], [[7, 8]], TOK)
    assert model.training and all(m.training for _, m in model.named_modules())
    np.testing.assert_array_equal(got, want)
