"""The built-in synthetic world the study trains on: made-up people with attributes,
entity-centric pretraining text stating those facts, and prompted tasks over them for
multitask finetuning and zero-shot evaluation.

One-token entities x 8 relations (colour, city, job, pet, food, sport, instrument,
language) x up to 8 one-token values, 3 statement templates per relation (entity before
value). A pretraining *document* is about one entity: its facts in random order and
templates, restated while whole sentences fit the row ("zibo owns a cat . zibo lives in
rome . the job of zibo is baker . ..."). So the entity is always in view, a PLM prefix is
about its continuation, and a split just before a value puts that value where a question's
answer goes. Besides the known entities' documents there are *fresh* ones, about a name
with facts drawn anew for that document (they can be predicted only by reading the row),
and filler documents that teach the words of the question frames.

    world = World("default", seed=0)
    world.documents(epoch=0, length=63)      # pretraining text: one epoch of documents
    world.train_tasks, world.heldout_tasks   # Task objects (see below)
    world.finetuning_examples(seed=0)        # (prompt ids, answer ids), an equal share per training task
    world.probes["pet"]                      # "<zibo's other facts> the pet of zibo is a" -> the 8 pets
    world.mlm_probes["pet"]                  # the same with the value a sentinel -> [<extra_id_0>, pet]

Task types, as T0 splits them: finetuning shows two types, on the training relations only:
``qa`` ("question : what is the pet of X ? answer :" -> a value) and ``verify`` ("question :
is the pet of X a cat ? answer :" -> yes/no). Held out are (1) the same types on the
held-out relations, whose facts the model knows only from pretraining, and (2) two task
*types* no finetuning example shows, in any relation: ``read`` (the prompt states a fresh
entity's facts, then asks one: nothing to remember, only the input to read) and ``choice``
(a memorised fact in a new format: "question : is the pet of X a cat or a dog ? answer :").
Task names are ``<kind>_<relation>``; ``Task.split`` is "train", "heldout_relation" or
"heldout_type".

Everything is a pure function of (preset, seed, overrides); the same arguments give
identical data. NumPy only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Dict, List, Tuple

import numpy as np

from .tokenizer import WordTokenizer, sentinel_name

__all__ = ["RELATIONS", "WorldConfig", "PRESETS", "Example", "Task", "World", "TRAIN_KINDS", "HELDOUT_KINDS"]
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
CHOICE_TEMPLATES = (
    "question : is the {rel} of {e} {v} or {w} ? answer :",
    "{e} {rel} : {v} or {w} ?",
    "which is the {rel} of {e} , {v} or {w} ? answer :",
)
YES_NO = ("yes", "no")
TRAIN_KINDS, HELDOUT_KINDS = ("qa", "verify"), ("read", "choice")

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
    "question : is the sea blue or grey ? answer : both .",
    "which is bigger , the sun or the moon ? answer : the sun .",
    "people live in houses and play games .",
)


@dataclass(frozen=True)
class WorldConfig:
    """Sizes of a world. ``mentions``: documents per known entity per epoch of pretraining
    text; ``fresh_fraction`` and ``filler_fraction``: shares of all documents about fresh
    entities and of filler; ``n_fresh``: names reserved for fresh entities (the ``read``
    tasks use them too); ``max_examples``: items per task and template; ``seq_len``: the
    document length tests and tutorials use (a training run fits documents to its rows)."""

    n_entities: int
    n_values: int = 8
    heldout: Tuple[str, ...] = ("pet", "instrument", "language")
    relations: Tuple[str, ...] = tuple(RELATIONS)
    mentions: int = 8
    fresh_fraction: float = 0.1
    filler_fraction: float = 0.05
    n_fresh: int = 32
    seq_len: int = 63
    max_examples: int = 48
    n_sentinels: int = 32


PRESETS = {
    # for tests: builds in milliseconds
    "smoke": WorldConfig(n_entities=8, n_values=4, mentions=2, n_fresh=8, seq_len=31, max_examples=8,
                         n_sentinels=16),
    # the study's world (16 known entities: the pilot's size at which ED:MLM learns the facts in budget)
    "default": WorldConfig(n_entities=16),
    # more facts, for larger budgets
    "large": WorldConfig(n_entities=64, max_examples=64),
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
        for name, low in (("n_entities", 2), ("mentions", 1), ("n_fresh", 1), ("max_examples", 1)):
            if getattr(cfg, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(cfg, name)}")
        if not (0 <= cfg.fresh_fraction and 0 <= cfg.filler_fraction and cfg.fresh_fraction + cfg.filler_fraction < 1):
            raise ValueError(f"fresh_fraction and filler_fraction must be >= 0 with a sum below 1, got "
                             f"{cfg.fresh_fraction} and {cfg.filler_fraction}")
        self.preset, self.seed, self.config = preset, int(seed), cfg
        rng = np.random.default_rng([self.seed, 0])
        self.relations = tuple(cfg.relations)
        self.heldout_relations = tuple(r for r in self.relations if r in cfg.heldout)
        self.train_relations = tuple(r for r in self.relations if r not in cfg.heldout)
        self.values = {r: RELATIONS[r].values[: cfg.n_values] for r in self.relations}
        vocab_words = {w for t in self._all_template_text() for w in t.split()}
        names = _entity_names(cfg.n_entities + cfg.n_fresh, rng, vocab_words)
        self.entities, self.fresh_entities = tuple(names[:cfg.n_entities]), tuple(names[cfg.n_entities:])
        # balanced facts: each value held by n_entities / n_values entities (+-1)
        self.facts: Dict[Tuple[str, str], str] = {}
        for r in self.relations:
            idx = rng.permutation(np.arange(cfg.n_entities) % cfg.n_values)
            for e, k in zip(self.entities, idx):
                self.facts[e, r] = self.values[r][k]
        words = vocab_words | set(names) | {v for r in self.relations for v in self.values[r]}
        self.tokenizer = WordTokenizer(sorted(words), n_sentinels=cfg.n_sentinels)
        self.value_ids = np.array(sorted({self.tokenizer.encode(v)[0] for vs in self.values.values() for v in vs}))
        self.tasks = self._make_tasks()
        self.probes = {r: self._probe(r, mlm=False) for r in self.relations}
        self.mlm_probes = {r: self._probe(r, mlm=True) for r in self.relations}

    # ---------------------------------------------------------------- setup
    def _all_template_text(self):
        """Every template, filler and relation name, with its slots blanked out."""
        texts = QA_TEMPLATES + VERIFY_TEMPLATES + CHOICE_TEMPLATES + FILLERS + YES_NO + self.relations
        texts += tuple(t for r in self.relations for t in RELATIONS[r].statements + (RELATIONS[r].question,))
        return [re.sub(r"\{\w+\}", " ", t) for t in texts]

    def _encode(self, text):
        return tuple(int(i) for i in self.tokenizer.encode(text))

    def _statements(self, e, facts, rng, budget, skip=None):
        """Sentences stating entity ``e``'s ``facts`` (relation -> value), each round in a
        fresh random order and random templates, while they fit ``budget`` words in all;
        never the fact of relation ``skip``."""
        out, used, relations = [], 0, [r for r in self.relations if r != skip]
        while True:
            for r in (relations[i] for i in rng.permutation(len(relations))):
                templates = RELATIONS[r].statements
                sentence = templates[rng.integers(len(templates))].format(e=e, v=facts[r])
                if used + len(sentence.split()) > budget:
                    return out
                out.append(sentence)
                used += len(sentence.split())

    def _fresh(self, rng):
        """A fresh entity: a reserved name and facts drawn for this use only."""
        e = self.fresh_entities[rng.integers(len(self.fresh_entities))]
        return e, {r: self.values[r][rng.integers(len(self.values[r]))] for r in self.relations}

    # ---------------------------------------------------------------- tasks
    def _task(self, kind, r, templates, choice_texts, items):
        """The ``kind`` task of relation ``r``: each template filled with the slots of each
        ``(slots, answer, choices)`` of ``items``, ``choices`` None for the ``choice_texts``."""
        fixed = tuple(self._encode(c) for c in choice_texts)
        split = "heldout_type" if kind in HELDOUT_KINDS else "heldout_relation" if r in self.heldout_relations \
            else "train" if kind in TRAIN_KINDS else "probe"
        task = Task(f"{kind}_{r}", kind, (r,), split, templates, choice_texts)
        for k, t in enumerate(templates):
            for slots, answer, choices in items:
                text = t.format(**slots)
                task.examples.append(Example(self._encode(text), choices or fixed, answer, k, text))
        return task

    def _make_tasks(self):
        tasks, cap = [], self.config.max_examples
        for r in self.relations:
            rng = np.random.default_rng([self.seed, 2, self.relations.index(r)])
            values = self.values[r]
            fill = lambda templates, **slots: tuple(t.format(rel=r, **slots) for t in templates)  # noqa: E731
            # question answering: every entity, in every template
            facts = [({"e": e}, values.index(self.facts[e, r]), None) for e in self.entities]
            tasks.append(self._task("qa", r, fill(QA_TEMPLATES, e="{e}") + (RELATIONS[r].question,), values, facts))
            # yes/no verification: a true and a false claim per entity, as many yes as no
            n = min(len(self.entities), cap // 2)
            true = [({"e": e, "v": self.facts[e, r]}, 0, None) for e in self.entities]
            false = [({"e": e, "v": str(rng.choice([v for v in values if v != self.facts[e, r]]))}, 1, None)
                     for e in self.entities]
            claims = [true[i] for i in rng.permutation(len(true))[:n]] + [false[i] for i in rng.permutation(n)]
            claims = [claims[i] for i in rng.permutation(len(claims))]
            tasks.append(self._task("verify", r, fill(VERIFY_TEMPLATES, e="{e}", v="{v}"), YES_NO, claims))
            # choice: the true value and another, in random order, as the two choices
            items = []   # the true value first for half the entities, second for the others
            for e, a in zip(self.entities, rng.permutation(np.arange(len(self.entities)) % 2)):
                pair = [self.facts[e, r], str(rng.choice([v for v in values if v != self.facts[e, r]]))]
                pair = pair[::-1] if a else pair
                items.append(({"e": e, "v": pair[0], "w": pair[1]}, int(a), tuple(self._encode(v) for v in pair)))
            tasks.append(self._task("choice", r, fill(CHOICE_TEMPLATES, e="{e}", v="{v}", w="{w}"), values, items))
            # reading: a fresh entity's facts in the prompt (the asked one among them), then the question
            items, questions = [], fill(QA_TEMPLATES, e="{e}") + (RELATIONS[r].question,)
            for _ in range(cap):   # up to 3 other facts, as many as a row holds beside the question
                e, facts = self._fresh(rng)
                stated = RELATIONS[r].statements[rng.integers(3)].format(e=e, v=facts[r])
                room = self.config.seq_len - 2 - len(stated.split()) - max(len(q.split()) for q in questions)
                others = self._statements(e, facts, rng, budget=room, skip=r)[:3]
                others.insert(int(rng.integers(len(others) + 1)), stated)
                items.append(({"e": e, "context": " ".join(others)}, values.index(facts[r]), None))
            tasks.append(self._task("read", r, tuple("{context} " + q for q in questions), values, items))
        return tasks

    def _probe(self, r, mlm):
        """Each entity's ``r`` statement at the end of a row of its other facts, cut before the
        value (MLM: the value a sentinel, scored as the sentinel's target): the format, and
        nearly the length, of a pretraining row. The fact itself is never stated."""
        statement, values = RELATIONS[r].statements[0], self.values[r]
        rng = np.random.default_rng([self.seed, 4, self.relations.index(r)])
        s0 = self.tokenizer.sentinel_ids[0]
        items = []
        for e in self.entities:
            facts = {q: self.facts[e, q] for q in self.relations}
            context = self._statements(e, facts, rng, self.config.seq_len - len(statement.split()) - 2, skip=r)
            choices = tuple((s0, *self._encode(v)) for v in values) if mlm else None
            items.append(({"e": e, "context": " ".join(context)}, values.index(self.facts[e, r]), choices))
        cut = statement.replace("{v}", sentinel_name(0)) if mlm else statement[: statement.index("{v}")].rstrip()
        return self._task("mlm_probe" if mlm else "probe", r, ("{context} " + cut,), values, items)

    @property
    def train_tasks(self) -> List[Task]:
        return [t for t in self.tasks if t.split == "train"]

    @property
    def heldout_tasks(self) -> List[Task]:
        return [t for t in self.tasks if t.split.startswith("heldout")]

    def task(self, name: str) -> Task:
        found = [t for t in self.tasks if t.name == name]
        if not found:
            raise ValueError(f"unknown task {name!r}; tasks: {[t.name for t in self.tasks]}")
        return found[0]

    def finetuning_examples(self, seed=None):
        """Multitask finetuning data: ``(prompt ids, answer ids)`` from every *training* task,
        an equal share each (a task with fewer examples repeats them in a seeded order, up to
        the largest task's count), shuffled with ``seed`` (None: in order)."""
        rng = np.random.default_rng([self.seed, 3, -1 if seed is None else int(seed)])
        n = max(len(t.examples) for t in self.train_tasks)
        pairs = [(t.examples[i].prompt, t.examples[i].target) for t in self.train_tasks
                 for i in np.resize(rng.permutation(len(t.examples)), n)]
        return pairs if seed is None else [pairs[i] for i in rng.permutation(len(pairs))]

    # ---------------------------------------------------------------- pretraining text
    def documents(self, epoch: int = 0, length: int = None) -> List[str]:
        """One epoch of pretraining documents, each at most ``length`` words (default
        ``seq_len``), shuffled: ``mentions`` per known entity, plus fresh-entity and filler
        documents in the config's shares (and every filler sentence at least once)."""
        cfg, length = self.config, int(length or self.config.seq_len)
        rng = np.random.default_rng([self.seed, 1, int(epoch)])
        docs = [" ".join(self._statements(e, {r: self.facts[e, r] for r in self.relations}, rng, length))
                for e in self.entities for _ in range(cfg.mentions)]
        per_share = len(docs) / (1 - cfg.fresh_fraction - cfg.filler_fraction)
        docs += [" ".join(self._statements(*self._fresh(rng), rng, length))
                 for _ in range(int(round(per_share * cfg.fresh_fraction)))]
        fill, n_fill = [FILLERS[i] for i in rng.permutation(len(FILLERS))], int(round(per_share * cfg.filler_fraction))
        while cfg.filler_fraction > 0 and (n_fill > 0 or fill):   # every filler sentence at least once
            ends = np.cumsum([len(f.split()) for f in fill + list(FILLERS)])
            take = max(1, int(np.sum(ends <= length)))
            docs.append(" ".join((fill + list(FILLERS))[:take]))
            fill, n_fill = fill[take:], n_fill - 1
        return [docs[i] for i in rng.permutation(len(docs))]

    def describe(self) -> str:
        n_tok = sum(len(d.split()) for d in self.documents())
        return (f"World(preset={self.preset!r}, seed={self.seed}): {len(self.entities)} entities x "
                f"{len(self.relations)} relations x {self.config.n_values} values, {len(self.fresh_entities)} "
                f"fresh names; train relations {self.train_relations}, held out {self.heldout_relations}; vocab "
                f"{self.tokenizer.vocab_size}; {len(self.tasks)} tasks; {n_tok} pretraining tokens per epoch")
