"""Tests for minillm.world: determinism, the held-out split, answers that match the facts,
a vocabulary the pretraining text covers, packing, probes, and that every arch:objective
batch can be built from the world; and the toy tasks of tests/toy_tasks.py."""
import time

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minillm.data.batches import PAIRS, make_batch, make_prompt_batch, pack_sequences, positions_needed
from minillm.data.world import FILLERS, PRESETS, RELATIONS, World
from toy_tasks import TOY_TASKS, toy_examples, toy_tokenizer


def pretraining_sequences(world, epoch=0, seq_len=None):
    """The sentences of one epoch packed greedily, in order, into sequences of at most
    ``seq_len`` tokens (default: the preset's)."""
    seq_len = world.config.seq_len if seq_len is None else seq_len
    return pack_sequences([world.tokenizer.encode(s) for s in world.sentences(epoch)], seq_len)


@pytest.fixture(scope="module")
def smoke():
    return World("smoke", seed=0)


@pytest.fixture(scope="module")
def default():
    return World("default", seed=0)


def test_smoke_builds_fast_and_presets_have_their_sizes():
    start = time.perf_counter()
    w = World("smoke", seed=11)
    pretraining_sequences(w)
    assert time.perf_counter() - start < 0.5
    sizes = {p: (PRESETS[p].n_entities, len(PRESETS[p].relations), PRESETS[p].n_values) for p in PRESETS}
    assert sizes["default"] == (40, 8, 8)  # the study's world
    assert sizes["smoke"][0] < sizes["default"][0] < sizes["large"][0]


def snapshot(w):
    return (w.entities, sorted(w.facts.items()), w.tokenizer.to_dict(),
            [(t.name, t.split, t.templates, t.examples) for t in w.tasks],
            [s.tolist() for e in (0, 1) for s in pretraining_sequences(w, epoch=e)],
            w.finetuning_examples(seed=4), [p.examples for p in w.probes.values()])


def test_same_seed_same_world_and_different_seed_different_world():
    a, b, c = World("smoke", seed=5), World("smoke", seed=5), World("smoke", seed=6)
    assert snapshot(a) == snapshot(b)
    assert a.facts != c.facts or a.entities != c.entities
    assert pretraining_sequences(a, epoch=0)[0].tolist() != pretraining_sequences(a, epoch=1)[0].tolist()


@pytest.mark.parametrize("preset", ["smoke", "default"])
def test_heldout_tasks_share_no_relation_no_template_no_example(preset):
    w = World(preset, seed=1)
    train, held = w.train_tasks, w.heldout_tasks
    assert train and held and len(train) + len(held) == len(w.tasks)
    train_rel = {r for t in train for r in t.relations}
    held_rel = {r for t in held for r in t.relations}
    assert held_rel == set(PRESETS[preset].heldout) and not (train_rel & held_rel)
    assert not ({tpl for t in train for tpl in t.templates} & {tpl for t in held for tpl in t.templates})
    ft_prompts = {p for p, _ in w.finetuning_examples()}
    assert not (ft_prompts & {ex.prompt for t in held for ex in t.examples})
    decode = w.tokenizer.decode
    ft_words = {word for p, a in w.finetuning_examples() for word in decode(p + a).split()}
    assert not (ft_words & held_rel)  # no held-out relation is ever named in finetuning
    assert not (ft_words & {v for r in held_rel for v in w.values[r]})  # nor any of its values
    assert len(w.finetuning_examples()) == sum(len(t.examples) for t in train)


def entity_in(text, w):
    found = [e for e in text.split() if e in w.entities]
    return found


@pytest.mark.parametrize("preset", ["smoke", "default"])
def test_answers_are_among_choices_and_match_the_facts(preset):
    w = World(preset, seed=2)
    for t in w.tasks + list(w.probes.values()) + list(w.mlm_probes.values()):
        assert t.examples and len(t.by_template()) == len(t.templates)
        assert all(g for g in t.by_template())
        (r,) = t.relations
        answers = []
        for ex in t.examples:
            assert 0 <= ex.answer < len(ex.choices) and len(set(ex.choices)) == len(ex.choices)
            assert w.tokenizer.decode(ex.prompt) == ex.text
            choice = w.tokenizer.decode(ex.target, skip_special=True)
            ents = entity_in(ex.text, w)
            words = ex.text.split()
            if t.kind in ("qa", "probe", "mlm_probe"):
                assert choice == w.facts[ents[0], r]
            elif t.kind == "verify":
                claimed = [x for x in words if x in w.values[r]]
                assert choice == ("yes" if w.facts[ents[0], r] == claimed[0] else "no")
            else:
                assert len(ents) == 2
                assert choice == ("yes" if w.facts[ents[0], r] == w.facts[ents[1], r] else "no")
            answers.append(ex.answer)
        if t.kind in ("verify", "compare"):
            assert answers.count(0) == answers.count(1)  # balanced yes/no
        assert t.random_baseline == pytest.approx(1 / len(t.examples[0].choices))


def test_facts_are_balanced_and_stated_consistently(default):
    w = default
    for r in w.relations:
        counts = np.unique([w.facts[e, r] for e in w.entities], return_counts=True)[1]
        assert len(counts) == 8 and counts.max() - counts.min() <= 1
    stated = set()
    value_of = {v: r for r in w.relations for v in w.values[r]}
    for s in w.sentences(epoch=0):
        words = s.split()
        ents = [x for x in words if x in w.entities]
        vals = [x for x in words if x in value_of]
        if not ents:  # filler: no entity, no value
            assert s in FILLERS and not vals
            continue
        assert len(ents) == 1 and len(vals) == 1
        assert w.facts[ents[0], value_of[vals[0]]] == vals[0]
        stated.add((ents[0], value_of[vals[0]]))
    assert stated == set(w.facts)  # every fact is stated in every epoch
    n_filler = sum(s in FILLERS for s in w.sentences(epoch=0))
    assert 0.03 < n_filler / len(w.sentences(epoch=0)) < 0.08


@pytest.mark.parametrize("preset", ["smoke", "default"])
def test_pretraining_text_covers_every_prompt_and_answer_word(preset):
    w = World(preset, seed=3)
    text_words = set("\n".join(w.sentences()).split())
    used = set()
    for t in w.tasks + list(w.probes.values()):
        for ex in t.examples:
            used |= set(w.tokenizer.decode(ex.prompt + ex.target).split())
    assert used - text_words == set()


@pytest.mark.parametrize("seq_len", [24, 31, 63])
def test_packing_keeps_whole_sentences_in_order(smoke, seq_len):
    seqs = pretraining_sequences(smoke, epoch=2, seq_len=seq_len)
    assert all(1 <= len(s) <= seq_len for s in seqs)
    sentences = smoke.sentences(epoch=2)
    assert smoke.tokenizer.decode(np.concatenate(seqs)) == " ".join(sentences)
    for s in seqs:
        assert smoke.tokenizer.decode(s).endswith(" .")  # every sequence ends a sentence
    # greedy, recomputed from the sentence lengths: a new sequence starts only when the
    # next sentence does not fit
    expected, used = [], 0
    for n in (len(x.split()) for x in sentences):
        if used + n > seq_len:
            expected.append(used)
            used = 0
        used += n
    assert [len(s) for s in seqs] == expected + [used]
    with pytest.raises(ValueError, match="needs .* positions but max_len is 5"):
        pretraining_sequences(smoke, seq_len=5)


def test_probes():
    w = World("smoke", seed=0, mentions=30)  # every template of every fact appears
    text = "\n".join(w.sentences())
    for r in w.relations:
        probe, mlm = w.probes[r], w.mlm_probes[r]
        assert list(probe.choice_texts) == list(w.values[r]) == list(RELATIONS[r].values[:4])
        assert [w.tokenizer.decode(c) for c in probe.examples[0].choices] == list(w.values[r])
        for ex, mx in zip(probe.examples, mlm.examples):
            full = ex.text + " " + w.tokenizer.decode(ex.target) + " ."
            assert full in text  # the probe is a statement the text makes, cut before the value
            s0 = w.tokenizer.sentinel_ids[0]
            assert mx.prompt.count(s0) == 1 and all(c[0] == s0 and len(c) == 2 for c in mx.choices)
            filled = mx.text.replace("<extra_id_0>", w.tokenizer.decode(mx.target[1:]))
            assert filled == full
    assert {p.split for p in w.probes.values()} == {"train", "heldout"}


@pytest.mark.parametrize("arch,objective", PAIRS)
def test_every_pair_builds_batches_from_the_world(smoke, arch, objective):
    seqs = pretraining_sequences(smoke)
    need = positions_needed(arch, objective, smoke.config.seq_len)
    max_len = max(need) if isinstance(need, tuple) else need
    b = make_batch(arch, objective, seqs[:8], smoke.tokenizer, rng=0, max_len=max_len)
    assert b.loss_tokens > 0 and b.tokens_seen >= b.loss_tokens
    prompts, answers = zip(*smoke.finetuning_examples(seed=0)[:8])
    pb = make_prompt_batch(arch, prompts, answers, smoke.tokenizer)
    assert pb.loss_tokens == sum(len(a) + 1 for a in answers)


def test_bad_world_arguments():
    with pytest.raises(ValueError, match="preset must be one of .* got 'huge'"):
        World("huge")
    with pytest.raises(ValueError, match="heldout: 'weather'"):
        World("smoke", heldout=("weather",))
    with pytest.raises(ValueError, match="n_values must be in \\[2, 8\\], got 9"):
        World("smoke", n_values=9)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        World("smoke").task("nope")


@given(name=st.sampled_from(TOY_TASKS), seed=st.integers(0, 1000), max_len=st.integers(1, 6))
def test_toy_tasks_are_correct(name, seed, max_len):
    tok = toy_tokenizer()
    examples = toy_examples(name, 20, seed=seed, max_len=max_len)
    assert examples == toy_examples(name, 20, seed=seed, max_len=max_len)
    for ex in examples:
        assert tok.decode(ex.prompt) == ex.prompt_text and tok.decode(ex.answer) == ex.answer_text
        head, body = ex.prompt_text.split(" : ")
        assert head == name and body.endswith(" =")
        got = ex.answer_text.split()
        if name == "addition":
            a, b = body[:-2].split(" + ")
            a, b = int(a.replace(" ", "")), int(b.replace(" ", ""))
            assert int("".join(got)) == a + b
            assert len(str(a)) <= max_len and len(str(b)) <= max_len
        else:
            digits = body[:-2].split()
            assert 1 <= len(digits) <= max_len
            expected = {"copy": digits, "reverse": digits[::-1], "sort": sorted(digits)}[name]
            assert got == expected
    with pytest.raises(ValueError, match="toy task must be one of"):
        toy_examples("multiply", 1)
