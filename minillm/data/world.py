"""The built-in synthetic world the study trains on: made-up people with attributes,
plain-text statements of those facts for pretraining, and prompted tasks over them for
multitask finetuning and zero-shot evaluation.

One-token entities x 8 relations (colour, city, job, pet, food, sport, instrument,
language) x up to 8 one-token values; 3 statement templates per relation, entity before
value; about 5% filler sentences so that the words of the question frames are known;
each sentence is a document (the trainer packs them, ``minillm.data.corpus``). The design was
chosen because a small prototype showed that on such a world a toy model learns the
facts and transfers to tasks on held-out relations.

    world = World("default", seed=0)
    world.tokenizer                          # WordTokenizer, pad/bos/eos/sep/sentinels
    world.sentences(epoch=0)                 # pretraining text: one epoch of sentences
    world.train_tasks, world.heldout_tasks   # Task objects, split by relation
    world.finetuning_examples(seed=0)        # (prompt ids, answer ids), training tasks only
    world.probes["pet"]                      # "the pet of X is a" -> the 8 pets
    world.mlm_probes["pet"]                  # "the pet of X is a <extra_id_0> ." -> [<extra_id_0>, pet]

Tasks: for every relation a question task (``<rel>_qa``: 3 templates, the relation's
values as choices), a yes/no verification task (``verify_<rel>``) and a yes/no comparison
of two entities (``compare_<rel>``). A task's split is its relation's split, so held-out
tasks share no relation with training tasks; templates are stored with the relation word
filled in, so no template string is shared either. Frames such as "question : what is the
... of X ? answer :" recur across relations by design: that is what can transfer.

Everything is a pure function of (preset, seed, overrides); the same arguments give
identical data. NumPy only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Dict, List, Tuple

import numpy as np

from .tokenizer import WordTokenizer, sentinel_name

__all__ = ["RELATIONS", "WorldConfig", "PRESETS", "Example", "Task", "World"]


@dataclass(frozen=True)
class Relation:
    name: str
    values: Tuple[str, ...]
    statements: Tuple[str, ...]  # {e} entity, {v} value; the first one is the probe's
    question: str  # the template worded for this relation


RELATIONS: Dict[str, Relation] = {r.name: r for r in [
    Relation("colour", ("red", "blue", "green", "yellow", "purple", "orange", "white", "black"),
             ("the colour of {e} is {v} .", "{e} is painted {v} .", "{e} always wears {v} ."),
             "what colour does {e} have ? answer :"),
    Relation("city", ("paris", "london", "tokyo", "cairo", "lima", "oslo", "delhi", "rome"),
             ("the city of {e} is {v} .", "{e} lives in {v} .", "{e} was born in {v} ."),
             "where does {e} live ? answer :"),
    Relation("job", ("doctor", "teacher", "farmer", "baker", "pilot", "lawyer", "singer", "painter"),
             ("the job of {e} is {v} .", "{e} works as a {v} .", "{e} is a {v} by trade ."),
             "what does {e} do for a living ? answer :"),
    Relation("pet", ("cat", "dog", "rabbit", "parrot", "hamster", "turtle", "goldfish", "snake"),
             ("the pet of {e} is a {v} .", "{e} owns a {v} .", "{e} takes care of a {v} ."),
             "which animal does {e} keep ? answer :"),
    Relation("food", ("rice", "pasta", "soup", "bread", "salad", "cheese", "noodles", "curry"),
             ("the food of {e} is {v} .", "{e} eats {v} .", "{e} loves to cook {v} ."),
             "what does {e} like to eat ? answer :"),
    Relation("sport", ("tennis", "football", "hockey", "rugby", "cricket", "golf", "boxing", "skiing"),
             ("the sport of {e} is {v} .", "{e} is good at {v} .", "{e} watches {v} on weekends ."),
             "which sport does {e} follow ? answer :"),
    Relation("instrument", ("piano", "violin", "guitar", "flute", "drum", "trumpet", "harp", "cello"),
             ("the instrument of {e} is the {v} .", "{e} plays the {v} .", "{e} practises the {v} daily ."),
             "which instrument does {e} play ? answer :"),
    Relation("language", ("french", "german", "spanish", "italian", "hindi", "arabic", "swahili", "polish"),
             ("the language of {e} is {v} .", "{e} speaks {v} .", "{e} writes letters in {v} ."),
             "which language does {e} speak ? answer :"),
]}

QA_TEMPLATES = ("question : what is the {rel} of {e} ? answer :", "{e} {rel} :")
VERIFY_TEMPLATES = (
    "question : is the {rel} of {e} {v} ? answer :",
    "{e} {rel} {v} ? yes or no :",
    "true or false : the {rel} of {e} is {v} . answer :",
)
COMPARE_TEMPLATES = (
    "question : do {e} and {f} have the same {rel} ? answer :",
    "{e} {f} same {rel} ? yes or no :",
    "is the {rel} of {e} the same as the {rel} of {f} ? answer :",
)
YES_NO = ("yes", "no")

# Filler: no entity, no attribute value; teaches the words of the question frames.
FILLERS = (
    "question : what is the time ? answer : it is late .",
    "question : where does the road go ? answer : to the sea .",
    "question : which animal does a zoo keep ? answer : many kinds .",
    "question : what does a river do for a living ? answer : it flows .",
    "question : what do people like to eat ? answer : many things .",
    "question : which sport does the town follow ? answer : nobody knows .",
    "question : which language does a bird speak ? answer : its own .",
    "question : what colour does the sky have ? answer : it changes .",
    "question : which instrument does a band play ? answer : many .",
    "question : is the sun hot ? answer : yes .",
    "question : is the moon made of glass ? answer : no .",
    "true or false : the sea is wet . answer : true .",
    "true or false : the sea is dry . answer : false .",
    "question : do the sun and the earth have the same size ? answer : no .",
    "is the size of the sun the same as the size of the sun ? yes or no : yes .",
    "people live in houses and play games .",
)


@dataclass(frozen=True)
class WorldConfig:
    """Sizes of a world. ``mentions``: statements of each fact per epoch of pretraining
    text; ``max_examples``: cap per task and template (``<rel>_qa`` always has one per
    entity); ``seq_len``: the width tests and tutorials pack the sentences to (a training
    run packs them to its model's ``max_len`` instead)."""

    n_entities: int
    n_values: int = 8
    heldout: Tuple[str, ...] = ("pet", "instrument", "language")
    relations: Tuple[str, ...] = tuple(RELATIONS)
    mentions: int = 8
    filler_fraction: float = 0.05
    seq_len: int = 63
    max_examples: int = 200
    n_sentinels: int = 32


PRESETS = {
    # for tests: builds in milliseconds
    "smoke": WorldConfig(n_entities=8, n_values=4, mentions=2, seq_len=31, max_examples=16, n_sentinels=16),
    # the study's world: 40 x 8 x 8, packed to 63 tokens (+BOS = 64 for FLM)
    "default": WorldConfig(n_entities=40),
    # more facts and longer sequences, for larger budgets
    "large": WorldConfig(n_entities=100, mentions=8, seq_len=127, max_examples=400),
}


@dataclass(frozen=True)
class Example:
    """One prompted example: ``prompt`` ids, ``choices`` (one id tuple each), the index of
    the right choice, which template made it, and the prompt as text."""

    prompt: Tuple[int, ...]
    choices: Tuple[Tuple[int, ...], ...]
    answer: int
    template: int
    text: str

    @property
    def target(self) -> Tuple[int, ...]:
        return self.choices[self.answer]


@dataclass
class Task:
    name: str
    kind: str  # "qa", "verify", "compare", "probe", "mlm_probe"
    relations: Tuple[str, ...]
    split: str  # "train" or "heldout"
    templates: Tuple[str, ...]
    choice_texts: Tuple[str, ...]
    examples: List[Example] = field(default_factory=list)

    def by_template(self) -> List[List[Example]]:
        groups = [[] for _ in self.templates]
        for ex in self.examples:
            groups[ex.template].append(ex)
        return groups

    @property
    def random_baseline(self) -> float:
        return float(np.mean([1.0 / len(ex.choices) for ex in self.examples]))


def _entity_names(n, rng, taken):
    onsets, vowels, codas = "bdfgklmnprstvz", "aeiou", ["", "n", "r", "l", "k", "s"]
    names, seen = [], set(taken)
    while len(names) < n:
        name = "".join(rng.choice(list(onsets)) + rng.choice(list(vowels)) for _ in range(2))
        name += codas[rng.integers(len(codas))]
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


class World:
    """A synthetic world; see the module docstring. ``World(preset, seed, **overrides)``
    where overrides are ``WorldConfig`` fields (e.g. ``n_entities=20``)."""

    def __init__(self, preset: str = "default", seed: int = 0, **overrides):
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}")
        cfg = replace(PRESETS[preset], **overrides)
        # the config, checked before anything is built
        unknown = [r for r in cfg.relations if r not in RELATIONS]
        if unknown:
            raise ValueError(f"relations: unknown relation {unknown[0]!r}; known: {tuple(RELATIONS)}")
        bad = [r for r in cfg.heldout if r not in cfg.relations]
        if bad:
            raise ValueError(f"heldout: {bad[0]!r} is not one of the relations {cfg.relations}")
        if not 2 <= cfg.n_values <= 8:
            raise ValueError(f"n_values must be in [2, 8], got {cfg.n_values}")
        if cfg.n_entities < 2:
            raise ValueError(f"n_entities must be >= 2, got {cfg.n_entities}")
        if cfg.mentions < 1:
            raise ValueError(f"mentions must be >= 1, got {cfg.mentions}")
        if not 0 <= cfg.filler_fraction < 1:
            raise ValueError(f"filler_fraction must be in [0, 1), got {cfg.filler_fraction}")
        self.preset, self.seed, self.config = preset, int(seed), cfg
        rng = np.random.default_rng([self.seed, 0])
        self.relations = tuple(cfg.relations)
        self.heldout_relations = tuple(r for r in self.relations if r in cfg.heldout)
        self.train_relations = tuple(r for r in self.relations if r not in cfg.heldout)
        self.values = {r: RELATIONS[r].values[: cfg.n_values] for r in self.relations}
        vocab_words = {w for t in self._all_template_text() for w in t.split()}
        self.entities = tuple(_entity_names(cfg.n_entities, rng, vocab_words))
        # balanced facts: each value held by n_entities / n_values entities (+-1)
        self.facts: Dict[Tuple[str, str], str] = {}
        for r in self.relations:
            idx = rng.permutation(np.arange(cfg.n_entities) % cfg.n_values)
            for e, k in zip(self.entities, idx):
                self.facts[e, r] = self.values[r][k]
        words = vocab_words | set(self.entities) | {v for r in self.relations for v in self.values[r]}
        self.tokenizer = WordTokenizer(sorted(words), n_sentinels=cfg.n_sentinels)
        self.tasks = self._make_tasks()
        self.probes = {r: self._probe(r, mlm=False) for r in self.relations}
        self.mlm_probes = {r: self._probe(r, mlm=True) for r in self.relations}

    # ---------------------------------------------------------------- setup
    def _all_template_text(self):
        """Every template, filler and relation name, with its slots blanked out."""
        texts = QA_TEMPLATES + VERIFY_TEMPLATES + COMPARE_TEMPLATES + FILLERS + YES_NO + self.relations
        texts += tuple(t for r in self.relations for t in RELATIONS[r].statements + (RELATIONS[r].question,))
        return [re.sub(r"\{\w+\}", " ", t) for t in texts]

    def _encode(self, text):
        return tuple(int(i) for i in self.tokenizer.encode(text))

    # ---------------------------------------------------------------- tasks
    def _task(self, kind, r, templates, choice_texts, items, choices=None):
        """The ``kind`` task of relation ``r``: each template filled with the slots of each
        ``(slots, answer)`` of ``items``; ``choices`` defaults to the ``choice_texts`` encoded."""
        choices = choices or tuple(self._encode(c) for c in choice_texts)
        name = f"{r}_qa" if kind == "qa" else f"{kind}_{r}"
        split = "heldout" if r in self.heldout_relations else "train"
        task = Task(name, kind, (r,), split, templates, choice_texts)
        for k, t in enumerate(templates):
            for slots, answer in items:
                text = t.format(**slots)
                task.examples.append(Example(self._encode(text), choices, answer, k, text))
        return task

    def _make_tasks(self):
        tasks, cap = [], self.config.max_examples
        for r in self.relations:
            rng = np.random.default_rng([self.seed, 2, self.relations.index(r)])
            values = self.values[r]
            # question answering: every entity, in every template
            templates = tuple(t.format(rel=r, e="{e}") for t in QA_TEMPLATES) + (RELATIONS[r].question,)
            facts = [({"e": e}, values.index(self.facts[e, r])) for e in self.entities]
            tasks.append(self._task("qa", r, templates, values, facts))
            # yes/no verification: one true and one false claim per entity
            claims = []
            for e in self.entities:
                true_v = self.facts[e, r]
                false_v = rng.choice([v for v in values if v != true_v])
                claims += [(e, true_v, 0), (e, str(false_v), 1)]
            claims = [claims[i] for i in rng.permutation(len(claims))[:cap]]
            templates = tuple(t.format(rel=r, e="{e}", v="{v}") for t in VERIFY_TEMPLATES)
            tasks.append(self._task("verify", r, templates, YES_NO, [({"e": e, "v": v}, a) for e, v, a in claims]))
            # comparison: do two entities share the value? half yes, half no
            same, diff = [], []
            for i, e in enumerate(self.entities):
                for f in self.entities[i + 1:]:
                    (same if self.facts[e, r] == self.facts[f, r] else diff).append((e, f))
            n = min(len(same), len(diff), cap // 2)
            pairs = [(*same[i], 0) for i in rng.permutation(len(same))[:n]]
            pairs += [(*diff[i], 1) for i in rng.permutation(len(diff))[:n]]
            pairs = [pairs[i] for i in rng.permutation(len(pairs))]
            templates = tuple(t.format(rel=r, e="{e}", f="{f}") for t in COMPARE_TEMPLATES)
            tasks.append(self._task("compare", r, templates, YES_NO, [({"e": e, "f": f}, a) for e, f, a in pairs]))
        return tasks

    def _probe(self, r, mlm):
        """The first statement of ``r`` cut before the value (MLM: the value a sentinel)."""
        statement, values = RELATIONS[r].statements[0], self.values[r]
        facts = [({"e": e}, values.index(self.facts[e, r])) for e in self.entities]
        if mlm:
            s0 = self.tokenizer.sentinel_ids[0]
            choices = tuple((s0, *self._encode(v)) for v in values)
            return self._task("mlm_probe", r, (statement.replace("{v}", sentinel_name(0)),), values, facts, choices)
        return self._task("probe", r, (statement[: statement.index("{v}")].rstrip(),), values, facts)

    @property
    def train_tasks(self) -> List[Task]:
        return [t for t in self.tasks if t.split == "train"]

    @property
    def heldout_tasks(self) -> List[Task]:
        return [t for t in self.tasks if t.split == "heldout"]

    def task(self, name: str) -> Task:
        found = [t for t in self.tasks if t.name == name]
        if not found:
            raise ValueError(f"unknown task {name!r}; tasks: {[t.name for t in self.tasks]}")
        return found[0]

    def finetuning_examples(self, seed=None, kinds=("qa", "verify", "compare")):
        """Multitask finetuning data: ``(prompt ids, answer ids)`` for every example of
        every *training* task of the given kinds, shuffled with ``seed`` (None: in order)."""
        pairs = [(ex.prompt, ex.target) for t in self.train_tasks if t.kind in kinds for ex in t.examples]
        if seed is not None:
            order = np.random.default_rng([self.seed, 3, int(seed)]).permutation(len(pairs))
            pairs = [pairs[i] for i in order]
        return pairs

    # ---------------------------------------------------------------- pretraining text
    def sentences(self, epoch: int = 0) -> List[str]:
        """One epoch of pretraining sentences: every fact stated ``mentions`` times in
        random templates, plus filler (~``filler_fraction`` of the sentences, and every
        filler sentence at least once), shuffled."""
        cfg = self.config
        rng = np.random.default_rng([self.seed, 1, int(epoch)])
        out = []
        for (e, r), v in self.facts.items():
            templates = RELATIONS[r].statements
            for k in rng.integers(len(templates), size=cfg.mentions):
                out.append(templates[k].format(e=e, v=v))
        n_filler = int(round(len(out) * cfg.filler_fraction / (1 - cfg.filler_fraction)))
        if cfg.filler_fraction > 0:
            n_filler = max(n_filler, len(FILLERS))
        cycle = [FILLERS[i] for i in rng.permutation(len(FILLERS))]
        out += [cycle[i % len(FILLERS)] for i in range(n_filler)]
        return [out[i] for i in rng.permutation(len(out))]

    def describe(self) -> str:
        n_tok = sum(len(self.tokenizer.encode(s)) for s in self.sentences())
        return (f"World(preset={self.preset!r}, seed={self.seed}): {len(self.entities)} entities x "
                f"{len(self.relations)} relations x {self.config.n_values} values; train relations "
                f"{self.train_relations}, held out {self.heldout_relations}; vocab "
                f"{self.tokenizer.vocab_size}; {len(self.tasks)} tasks; {n_tok} pretraining tokens per epoch")
