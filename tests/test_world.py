"""Tests for minillm.world: determinism, the held-out split, answers that match the facts,
a vocabulary the pretraining text covers, packing, probes, and that every arch:objective
batch can be built from the world; and the toy tasks of tests/toy_tasks.py."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minillm.data.batches import PAIRS, make_batch, make_prompt_batch, pack_sequences, positions_needed
from minillm.data.world import FILLERS, HELDOUT_KINDS, PRESETS, RELATIONS, TRAIN_KINDS, World
from toy_tasks import TOY_TASKS, toy_examples, toy_tokenizer


def pretraining_sequences(world, epoch=0, seq_len=None):
    """The documents of one epoch as token arrays, each at most ``seq_len`` tokens (default: the preset's)."""
    return [world.tokenizer.encode(d) for d in world.documents(epoch, seq_len)]


@pytest.fixture(scope="module")
def smoke():
    return World("smoke", seed=0)


@pytest.fixture(scope="module")
def default():
    return World("default", seed=0)


def test_presets_have_their_sizes():
    sizes = {p: (PRESETS[p].n_entities, len(PRESETS[p].relations), PRESETS[p].n_values) for p in PRESETS}
    assert sizes["default"] == (16, 8, 8)  # the study's world
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
def test_heldout_tasks_share_no_relation_no_type_no_example_with_finetuning(preset):
    w = World(preset, seed=1)
    train, held = w.train_tasks, w.heldout_tasks
    assert train and held and len(train) + len(held) == len(w.tasks)
    assert {t.kind for t in train} == set(TRAIN_KINDS) and {t.split for t in held} == {"heldout_relation",
                                                                                       "heldout_type"}
    assert not ({r for t in train for r in t.relations} & set(PRESETS[preset].heldout))
    types = [t for t in held if t.split == "heldout_type"]
    assert {t.kind for t in types} == set(HELDOUT_KINDS) and {t.relations[0] for t in types} == set(w.relations)
    assert all(t.kind in TRAIN_KINDS and t.relations[0] in w.heldout_relations for t in held if t not in types)
    ft = w.finetuning_examples(seed=3)
    ft_prompts = {p for p, _ in ft}
    assert ft_prompts == {ex.prompt for t in train for ex in t.examples}   # every training example, nothing else
    assert not (ft_prompts & {ex.prompt for t in held for ex in t.examples})
    # no finetuning prompt has the form of a held-out type: no "or" choice, no stated facts before a question,
    # no fresh entity; and no held-out relation or its values is ever named
    texts = [w.tokenizer.decode(p) for p, _ in ft]
    values = {v for r in w.relations for v in w.values[r]}
    assert not any(stated_facts(x, w) or sum(x in values for x in x.split()) > 1 for x in texts)
    named = {x for t in texts for x in t.split()}
    assert not (named & set(w.fresh_entities))
    assert not (named & (set(w.heldout_relations) | {v for r in w.heldout_relations for v in w.values[r]}))


def test_finetuning_mixture_gives_every_training_task_an_equal_share(default):
    w = default
    ft = w.finetuning_examples(seed=0)
    owner = {ex.prompt: t.name for t in w.train_tasks for ex in t.examples}
    counts = {t.name: 0 for t in w.train_tasks}
    for p, _ in ft:
        counts[owner[p]] += 1
    assert len(set(counts.values())) == 1, counts   # qa has 3x16 examples and verify 3x32: still equal shares
    assert len({len(t.examples) for t in w.train_tasks}) > 1


def entity_in(text, w):
    return [e for e in text.split() if e in w.entities + w.fresh_entities]


def stated_facts(text, w):
    """(entity, relation, value) of every statement in a text, read back through the templates."""
    found = []
    for sentence in text.split(" . "):
        words = sentence.rstrip(" .").split()
        ents = [x for x in words if x in w.entities + w.fresh_entities]
        for r in w.relations:
            vals = [x for x in words if x in w.values[r]]
            if vals and any(sentence.rstrip(" .") + " ." == t.format(e=ents[0], v=vals[0])
                            for t in RELATIONS[r].statements):
                found.append((ents[0], r, vals[0]))
    return found


@pytest.mark.parametrize("preset", ["smoke", "default"])
def test_answers_are_among_choices_and_match_the_facts(preset):
    w = World(preset, seed=2)
    for t in w.tasks + list(w.probes.values()) + list(w.mlm_probes.values()):
        assert t.examples and len(t.by_template()) == len(t.templates) and all(g for g in t.by_template())
        (r,) = t.relations
        answers = []
        for ex in t.examples:
            assert 0 <= ex.answer < len(ex.choices) and len(set(ex.choices)) == len(ex.choices)
            assert w.tokenizer.decode(ex.prompt) == ex.text
            choice = w.tokenizer.decode(ex.target, skip_special=True)
            ents = set(entity_in(ex.text, w))
            assert len(ents) == 1
            (e,) = ents
            if t.kind == "read":   # the answer is stated in the prompt, about a fresh entity
                assert e in w.fresh_entities and (e, r, choice) in stated_facts(ex.text, w)
                assert [f[1] for f in stated_facts(ex.text, w)].count(r) == 1
            elif t.kind == "verify":
                claimed = [x for x in ex.text.split() if x in w.values[r]]
                assert choice == ("yes" if w.facts[e, r] == claimed[0] else "no")
            else:
                assert choice == w.facts[e, r]
            if t.kind in ("probe", "mlm_probe"):   # the other facts around it are true, the probed one unstated
                facts = stated_facts(ex.text, w)
                assert facts and all(w.facts[f[0], f[1]] == f[2] and f[1] != r for f in facts)
            answers.append(ex.answer)
        if t.kind in ("verify", "choice"):
            assert abs(answers.count(0) - answers.count(1)) <= len(answers) // 3


def test_documents_are_about_one_entity_and_state_its_facts(default):
    w = default
    docs = w.documents(epoch=0, length=57)
    assert docs != w.documents(epoch=1, length=57) and docs == w.documents(epoch=0, length=57)
    kinds = {"known": 0, "fresh": 0, "filler": 0}
    stated = set()
    for d in docs:
        assert 1 <= len(d.split()) <= 57 and d.endswith(" .")
        ents = set(entity_in(d, w))
        if not ents:
            rest = d
            for f in FILLERS:
                rest = rest.replace(f, "")
            assert rest.strip() == "", d   # filler sentences only
            kinds["filler"] += 1
            continue
        assert len(ents) == 1   # one entity per document, always in view
        (e,) = ents
        facts = stated_facts(d, w)
        assert len(facts) == d.count(" . ") + 1 and len(facts) >= 7   # every sentence a statement about e
        if e in w.entities:
            kinds["known"] += 1
            assert all(w.facts[e, r] == v for _, r, v in facts)
            assert {r for _, r, _ in facts[:len(w.relations)]} == set(w.relations)  # each fact before any repeat
            stated |= {(e, r) for _, r, _ in facts}
        else:
            kinds["fresh"] += 1
            assert len({(r, v) for _, r, v in facts}) == len({r for _, r, _ in facts})   # consistent within the row
    assert stated == set(w.facts)
    assert kinds["known"] == len(w.entities) * w.config.mentions
    assert kinds["fresh"] / len(docs) == pytest.approx(w.config.fresh_fraction, abs=0.02)
    assert kinds["filler"] / len(docs) == pytest.approx(w.config.filler_fraction, abs=0.02)


@pytest.mark.parametrize("preset", ["smoke", "default"])
def test_pretraining_text_covers_every_prompt_and_answer_word(preset):
    w = World(preset, seed=3)
    text_words = set(" ".join(d for e in range(3) for d in w.documents(e)).split())
    used = set()
    for t in w.tasks + list(w.probes.values()):
        for ex in t.examples:
            used |= set(w.tokenizer.decode(ex.prompt + ex.target).split())
    assert used - text_words - set(w.fresh_entities) == set()
    if preset == "default":   # every fresh name occurs within 20 epochs (a study's pretraining runs ~150)
        assert set(w.fresh_entities) <= set(" ".join(d for e in range(20) for d in w.documents(e)).split())


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
