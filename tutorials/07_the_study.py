# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 7. The study: six pairs, zero-shot rank classification, multitask finetuning
#
# Wang et al. (2022) asked a simple question with an expensive answer: *which
# architecture and which pretraining objective give a language model that does well on
# tasks it was never trained on?* They trained the same-size models for every sensible
# pairing, measured zero-shot accuracy on held-out tasks, finetuned every model on a
# mixture of prompted tasks, and measured again.
#
# minillm reruns that grid at toy scale on its built-in world. This tutorial takes the
# study apart piece by piece (the grid, the budgets, the evaluation, the probe, the
# finetuning), then runs a small study in-process with `minillm.study` and reads its
# table, including what a table this small *cannot* tell you.

# %%
import dataclasses
import os
import tempfile
import time

import numpy as np

import minillm as mm
from minillm import study as S
from minillm.data.batches import PAPER_PAIRS, make_prompt_batch
from minillm.train.checkpoint import load_checkpoint
from minillm.study.plan import unit_dir
from minillm.study.evaluate import accuracy, constant_baseline, rank_classify, score_completions, summarise
from minillm.train.trainer import BatchStream, TrainConfig, load_corpus
from minillm.data.world import World

from _setup import FAST, finish, plt, rejected, assert_all_rejected  # fast mode (MINILLM_TUTORIAL_FAST), optional matplotlib


work = tempfile.mkdtemp(prefix="minillm-tutorial-07-")   # the study's directory goes here

# %% [markdown]
# ## 7.1 The grid: six pairs, and why these six
#
# Three architectures (tutorial 4) times three objectives (tutorial 5) make nine
# combinations; the paper trained six of them:

# %%
print("  ".join(f"{a.upper()}:{o.upper()}" for a, o in PAPER_PAIRS))

# %% [markdown]
# Each architecture is paired with MLM, and with the language-modelling objective that
# suits it: CD with FLM (GPT), ND and ED with PLM, which hands them a context to read in
# the way they are built for (bidirectionally, or with the encoder). The three left out
# are either impossible or redundant:
#
# - **ED:FLM** gives the encoder nothing to read (minillm refuses it, tutorial 5).
# - **ND:FLM** *is* CD:FLM: with no context the prefix is empty and the prefix mask is the
#   causal mask (tutorial 3; tutorial 8 checks it on a model).
# - **CD:PLM** reads the context causally, exactly as CD:FLM does, but drops the loss on
#   it: the same computation with fewer training signals.
#
# A fair comparison also has to say what "the same size" means. The paper matched
# *compute*: ED gets L encoder layers plus L decoder layers against the decoders' L, so
# it has about twice the parameters but about the same FLOPs per token (each token goes
# through one stack). Here are the models the study builds at the `smoke` and `default`
# presets:

# %%
world = World("smoke", seed=0)
tok = world.tokenizer
print(f"{'preset':8s} {'arch':4s} {'parameters':>11s} {'FLOPs/token':>12s}")
for preset in ("smoke", "default"):
    for arch in ("cd", "nd", "ed"):
        objective = "plm" if arch == "ed" else "flm"
        model_cfg = TrainConfig(arch=arch, objective=objective, preset=preset).resolved().model_config(tok)
        model = mm.build_model(arch, model_cfg, seed=0)
        print(f"{preset:8s} {arch:4s} {model.num_parameters():11,d} {model.flops_per_token():12,.0f}")

# %% [markdown]
# (The vocabulary here is the smoke world's; the default world has more words.)
# CD and ND have identical parameters: they are the same model with different masks.
#
# ## 7.2 Budgets matched on tokens seen
#
# Every pair gets the same budget of **tokens seen**: non-pad tokens fed to the model,
# which is what compute is proportional to. It is *not* the same number of training
# signals: tutorial 5 showed that FLM puts a loss on every token it sees, PLM on about
# half and MLM on about a fifth. Here is the first batch each pair trains on in the study
# (the trainer's `BatchStream`, smoke preset):

# %%
print(f"{'pair':8s} {'rows':>4s} {'seen':>5s} {'loss':>5s} {'loss/seen':>9s}")
for arch, objective in PAPER_PAIRS:
    cfg = TrainConfig(arch=arch, objective=objective, preset="smoke").resolved()
    stream = BatchStream(arch, objective, load_corpus(cfg), cfg.batch_size, cfg.max_len, seed=0)
    b = stream.batch(0)
    print(f"{arch}:{objective:4s} {b.size:4d} {b.tokens_seen:5d} {b.loss_tokens:5d} {b.loss_tokens / b.tokens_seen:9.2f}")

# %% [markdown]
# So "matched budgets" is itself a choice with consequences: at the same compute an MLM
# model learns from far fewer predictions. Keep that in mind when you read the table.
#
# ## 7.3 Zero-shot evaluation by rank classification
#
# The world's tasks are prompted questions about its people, named `<kind>_<relation>`,
# each in three templates. Finetuning (7.5) shows two task types, on the training
# relations only: a question (`qa_city`, one of the relation's values is the answer) and a
# yes/no verification (`verify_city`). Two groups are **held out**, as in T0:
#
# - the same two types on three **held-out relations** (`qa_pet`, `verify_pet`, ...),
#   whose facts the model knows only from pretraining: no finetuning example mentions
#   them (`Task.split == "heldout_relation"`);
# - two **held-out task types**, in every relation, that no finetuning example shows
#   (`Task.split == "heldout_type"`): `read_<rel>` states a *fresh* person's facts in the
#   prompt and then asks one (nothing to remember, only the prompt to read), and
#   `choice_<rel>` asks for a known fact in a new format ("is the pet of X a cat or a
#   dog ?", the two values as the choices).
#
# The study's "zero-shot" and "finetuned" columns are the held-out task types; the
# held-out relations get columns of their own.

# %%
print(world.describe())
for task in [next(t for t in world.heldout_tasks if t.kind == kind) for kind in ("qa", "verify", "read", "choice")]:
    ex = task.examples[0]
    print(f"\n{task.name} ({task.split}, {len(task.examples)} examples, random {task.random_baseline:.0%})")
    for t in task.templates:
        print("   template:", t)
    print(f"   example:  {ex.text!r}  choices {[tok.decode(c) for c in ex.choices]}  answer {tok.decode(ex.target)!r}")

# %% [markdown]
# A model answers a question by **rank classification**: for each choice `c` it scores
# `log p(c | prompt)`, the sum of the log-probabilities of the choice's tokens given the
# prompt (no length normalisation, as in the study), and the highest score wins. Nothing
# is generated, so a model that never saw the question format can still be scored.
#
# How "given the prompt" is computed depends on the architecture, and
# `make_prompt_batch` lays it out exactly as each architecture was trained to read
# context: CD reads it causally, ND reads it bidirectionally (`prefix_len` covers BOS and
# the prompt), ED puts it in the encoder. One row per choice; the targets mark the
# choice's tokens, everything else is `-100` (no score).

# %%
ex = world.task("qa_pet").examples[0]
batch = {arch: make_prompt_batch(arch, [ex.prompt] * 2, list(ex.choices[:2]), tok, add_eos=False)
         for arch in ("cd", "nd", "ed")}
print("prompt:", ex.text, "| first two choices:", [tok.decode(c) for c in ex.choices[:2]])
for arch in ("cd", "nd"):
    b = batch[arch]
    print(f"{arch}: tokens  {tok.decode(b.tokens[0])}\n    prefix_len {b.prefix_len.tolist()}, "
          f"targets {[tok.decode([t]) if t >= 0 else '.' for t in b.targets[0]]}")
b = batch["ed"]
print(f"ed: src {tok.decode(b.src[0])}\n    tgt_in {[tok.decode(r) for r in b.tgt_in]}, "
      f"targets {[tok.decode(r) for r in b.targets]}")

# %% [markdown]
# The functions of `minillm.study.evaluate` build on each other: `score_completions` scores
# (prompt, completion) pairs, `rank_classify` picks a choice per example, `accuracy`
# compares with the answers, and `summarise` averages per task over templates and then
# over tasks. Here they are on an *untrained* CD model: its answers are guesses, which is
# exactly what we should see.

# %%
model_cfg = TrainConfig(arch="cd", preset="smoke").resolved().model_config(tok)
fresh = mm.build_model("cd", model_cfg, seed=0)
scores = score_completions(fresh, "cd", [ex.prompt] * len(ex.choices), list(ex.choices), tok)
print("log p(choice | prompt):", dict(zip(world.task("qa_pet").choice_texts, scores.round(3))))
print("picked:", rank_classify(fresh, "cd", [ex], tok)[0], " answer:", ex.answer)

per_task = {}
for task in world.heldout_tasks:
    per_task[task.name] = {k: accuracy(fresh, "cd", group, tok) for k, group in enumerate(task.by_template())}
summary = summarise(per_task)
for name, t in summary["tasks"].items():
    print(f"  {name:20s} mean {t['mean']:.2f} (templates {[round(v, 2) for v in t['templates'].values()]})")
chance = np.mean([t.random_baseline for t in world.heldout_tasks])
constant = summarise({t.name: {k: constant_baseline(g) for k, g in enumerate(t.by_template())}
                      for t in world.heldout_tasks})["mean"]
print(f"held-out accuracy {summary['mean']:.3f}; random choice {chance:.3f}; best constant answer {constant:.3f}")

# %% [markdown]
# Two things to notice. First, the random baseline is not 25% or 50% but their mixture:
# the held-out tasks mix 4-way questions (`qa`, `read` on the smoke world's four values)
# with two-way ones (`verify`, `choice`). An accuracy is only meaningful next to its
# baseline. Second, an untrained model is not a fair coin: it tends to prefer one choice
# everywhere, so on a small task it can land well above or below chance by luck. That is
# why the study prints a second floor beside random choice, computed from the same items:
# the **best constant answer** (`constant_baseline`, the majority class), which a model
# that ignores the prompt and always gives the same answer reaches. The world balances
# what it can (each value is held by about equally many people, verify has as many yes
# as no), but a `read` task's fresh facts are drawn at random, and on the few items a
# small evaluation scores (the smoke study: 4 per template) the majority class of any
# task can be well above random. With 8 people and a few templates, a difference of 10
# points between two models can be noise.
#
# ## 7.4 The statement probe: did the model learn the facts at all?
#
# A held-out question like "which animal does tonen keep ?" can only be answered by a
# model that (a) knows tonen's pet from pretraining and (b) has learned to map the
# question format onto that knowledge. Zero-shot accuracy mixes the two (the `read` tasks
# alone need only (b): their answer is in the prompt). The **statement probe** measures
# (a) alone: it asks for the fact in the form of a pretraining document, a row of tonen's
# other facts ending in "the pet of tonen is a", and rank-classifies the value.
#
# The prototype behind the study found this was the bottleneck: transfer appeared only
# once the probe was near 100%, and models that had not learned the facts stayed at
# chance whatever their architecture. So every accuracy in the study's table
# stands beside a probe: a low accuracy with a low probe means "never learned the facts";
# a low accuracy with a high probe means "learned them, but did not transfer".
#
# An MLM-trained model never predicts the next word of a statement; it fills in
# sentinels. So the study also probes in that format, with the value hidden behind
# `<extra_id_0>` and scored as the sentinel's target, and reports for each model the probe
# in its own objective's format.

# %%
for probes in (world.probes, world.mlm_probes):
    p = probes["pet"].examples[0]
    print(f"{p.text!r}\n   choices {[tok.decode(c) for c in p.choices]}  answer {tok.decode(p.target)!r}")
probe_fresh = np.mean([accuracy(fresh, "cd", world.probes[r].examples, tok) for r in world.heldout_relations])
print(f"untrained CD, probe on the held-out relations: {probe_fresh:.2f} "
      f"(random {world.probes['pet'].random_baseline:.2f})")

# %% [markdown]
# ## 7.5 Multitask finetuning
#
# After pretraining, every model is finetuned T0-style: on a mixture of prompted tasks
# (the two training types, `qa` and `verify`, in all their templates, an equal share per
# task) over the *training* relations only, with the loss on the answer only
# (`make_prompt_batch` with `add_eos=True`: the answer then EOS), a constant learning
# rate and dropout 0.1. Then it is evaluated on the held-out tasks again. Finetuning
# teaches the *format* (read a question, answer with a value); the question is whether
# that skill carries over to relations it never saw asked about, and to task types it
# never saw at all.

# %%
pairs = world.finetuning_examples(seed=0)
print(f"{len(pairs)} finetuning examples; a few:")
for prompt, answer in pairs[:4]:
    print(f"   {tok.decode(prompt)!r} -> {tok.decode(answer)!r}")
b = make_prompt_batch("nd", [pairs[0][0]], [pairs[0][1]], tok)
print("as ND trains on it: targets", [tok.decode([t]) if t >= 0 else "." for t in b.targets[0]])
words = {w for prompt, answer in pairs for w in tok.decode(np.concatenate([prompt, answer])).split()}
leaks = words & (set(world.heldout_relations) | {v for r in world.heldout_relations for v in world.values[r]})
print("held-out relation names or values in the finetuning data:", leaks or "none")
assert not leaks

# %% [markdown]
# ## 7.6 Running a study in-process
#
# `minillm.study` turns all of this into *units*: one pretraining unit per pair, one
# adaptation unit for each of LM-A and NC-A (tutorial 8), and one finetuning unit per
# pretrained or adapted model, each repeated per seed. A unit starts from its source's
# weights and writes its checkpoint, log and `result.json` into its own directory, so a
# study can be interrupted and resumed, run in parallel, or spread over machines.
#
# A `StudyConfig` defines a study; `PRESETS` holds three. `smoke` is what the test suite
# runs: it exercises every unit in seconds but is far too small to learn anything. So at
# full size this tutorial runs a custom config: the smoke world and model, 40 times the
# pretraining budget, and more examples per template in evaluation. In fast mode it runs
# the smoke preset itself.

# %%
print("presets:", {name: (c.pretrain_tokens, c.adapt_tokens, c.finetune_tokens) for name, c in S.PRESETS.items()},
      "(pretraining, adaptation, finetuning tokens)")
if FAST:
    cfg = S.PRESETS["smoke"]
else:
    cfg = dataclasses.replace(S.PRESETS["smoke"], pretrain_tokens=240_000,
                              lr={f"{a}-{o}": 5e-3 for a, o in PAPER_PAIRS},   # every pair at the same rate
                              adapt_tokens=120_000, finetune_tokens=24_000, eval_every=25, eval_examples=16)
print(cfg)
for u in S.units(cfg):
    print(f"   {u.name:24s} stage {u.stage:9s} from {u.source or '(scratch)'}")

# %% [markdown]
# `run_study(cfg, out, jobs, only, progress, log)` runs every unit that is not finished
# yet; `jobs=2` would run independent units in two processes, `only=NAME` a single
# unit. At full size this takes a few minutes.

# %%
out = os.path.join(work, "study")
start = time.perf_counter()
S.run_study(cfg, out, jobs=1, progress=False, log=print)
print(f"study done in {time.perf_counter() - start:.0f} s")

# %% [markdown]
# `collect` gathers the finished units into rows (with mean and spread over seeds),
# `format_table` prints them, `conclusions` checks the paper's three conclusions against
# the numbers, and `report` puts it all together as Markdown (what `minillm study`
# prints and writes to `report.md`).

# %%
results = S.collect(cfg, out)
print(S.report(results))

# %% [markdown]
# ## 7.7 Reading the table honestly
#
# Read it in this order.
#
# 1. **The floors.** The last two rows of the table are computed from the same items as
#    each column: the accuracy of random choice, and that of the best constant answer.
#    The probe's random floor is 25% (four values per relation). Anything within a few
#    points of the higher floor is no evidence that a model read the prompt.
# 2. **The probe column.** Which models learned the held-out facts? Only their
#    accuracies on the tasks that need those facts can show transfer. In fast mode no
#    model learns anything and every row is noise around the floors. At full size your
#    run prints which models got there. With about a fifth of its tokens carrying a
#    loss, an MLM model sees each fact's value as a target far less often (tutorial 5;
#    `minillm study --events` counts it), so a budget that teaches one pair every fact
#    may not be enough for another.
# 3. **The "train tasks" column** is accuracy on the *training* tasks after finetuning.
#    A model that cannot even fit the tasks it was finetuned on has nothing to transfer.
# 4. **Zero-shot, then finetuned.** The paper found CD:FLM best with no finetuning, and
#    ED:MLM then ND:MLM best after it. The report's conclusions say whether your run
#    agrees, but read the caveats: a model that never learned the facts never really took
#    part in the comparison; with one seed there are no error bars; and each held-out
#    task here has 8 items per template. A finding at this scale is "which models learn
#    the facts and the formats within the budget", not "which architecture generalises
#    best".
# 5. **The speed-ups** of the adaptations: tutorial 8.
#
# The cell below does step 2 for you, and counts how many examples stand behind each
# held-out accuracy.

# %%
probe_base = results["probe_baseline"]
learned = [r["row"] for r in results["rows"] if r["probe"]["mean"] >= probe_base + 0.5 * (1 - probe_base)]
print(f"learned the held-out facts (probe at least half way from {probe_base:.0%} to 100%):", learned or "none")
n_scored = sum(min(cfg.eval_examples, len(g)) for t in world.heldout_tasks for g in t.by_template())
print(f"held-out examples scored per model: {n_scored}; the standard error of an accuracy near 50% over "
      f"{n_scored} examples is about {100 * np.sqrt(0.25 / n_scored):.0f} points (and more, since examples "
      f"about the same person are not independent)")

# %% [markdown]
# The probe column shows each model in its own objective's format. Each unit's
# `result.json` (in `results["units"]`) holds both probes, and the difference can be
# large: an adapted model such as NC-A (CD:FLM continued with MLM) may still pick the
# right value as the next word far more often than as a sentinel's target, or the other
# way round; the table below prints both for your run. Knowing a fact in one format does
# not mean producing it in another, which is why the study probes each model in its own
# format.

# %%
print(f"{'unit':22s} {'next-word probe':>15s} {'MLM probe':>10s}")
for name, r in results["units"].items():
    if r["stage"] != "finetune":
        print(f"{name:22s} {r['probe_next']:15.2f} {r['probe_mlm']:10.2f}")

# %% [markdown]
# To look behind a row, load the unit's checkpoint: every unit directory holds one, and
# `load_checkpoint(path).build_model()` rebuilds the model. Here is the pretrained CD:FLM
# model on the probe and on a few held-out questions:

# %%
def trained(name):
    """The model a finished unit of our study saved."""
    unit = next(u for u in S.units(cfg) if u.name == name)
    return load_checkpoint(os.path.join(unit_dir(out, unit.name), "checkpoint.npz")).build_model()


cd_flm = trained("pretrain/cd-flm/s0")
for r in world.heldout_relations:
    print(f"  probe {r:10s} {accuracy(cd_flm, 'cd', world.probes[r].examples, tok):.2f}")
qa = world.task("qa_pet")
picked = rank_classify(cd_flm, "cd", qa.examples[:6], tok)
for e, k in zip(qa.examples[:6], picked):
    print(f"  {e.text!r:50s} picked {qa.choice_texts[k]!r:10s} answer {qa.choice_texts[e.answer]!r}")

# %%
if plt is not None:
    rows = results["rows"]
    fig, ax = plt.subplots(figsize=(8, 3))
    x = np.arange(len(rows))
    for off, key, label in ((-0.25, "probe", "probe"), (0, "zero_shot", "zero-shot"), (0.25, "finetuned", "finetuned")):
        ax.bar(x + off, [100 * r[key]["mean"] for r in rows], 0.25, label=label)
    ax.axhline(100 * results["baselines"]["heldout_type"]["random"], color="k", ls="--", lw=1,
               label="random (held-out types)")
    ax.axhline(100 * results["baselines"]["heldout_type"]["constant"], color="k", ls="-.", lw=1,
               label="best constant (held-out types)")
    ax.axhline(100 * results["probe_baseline"], color="gray", ls=":", lw=1, label="random (probe)")
    ax.set_xticks(x, [r["row"].split(":")[0] if r["key"] in ("lm-a", "nc-a") else r["row"] for r in rows],
                  rotation=30, fontsize=8)
    ax.set_ylabel("%")
    ax.legend(fontsize=7)
    ax.set_title("The study's table as bars")
    finish(fig, "07_study.png")

# %% [markdown]
# ## 7.8 Running the real thing
#
# From a shell (each unit's progress goes to stderr; the table to stdout, and to
# `results.json`, `results.csv`, `report.md` and, with matplotlib, `results.png` in the
# study directory):
#
#     minillm study                         # the default preset: the prototype's world and budget
#     minillm study --seeds 3               # error bars; two units at a time by default (--jobs)
#     minillm study --preset smoke          # the test suite's study, in seconds
#     minillm study --list-units            # every unit, in dependency order, with its command
#     minillm study --unit pretrain/cd-flm/s0      # one unit (its source must be finished)
#     minillm study --report                # only the table of what has finished so far
#     minillm study --events                # per pair: how often a batch makes a fact's value a target
#
# Rerunning the same command skips finished units and resumes interrupted ones, so it is
# safe to stop a study with Ctrl-C. The default preset trains each pair on 2.5 million
# tokens, far more than this tutorial; `--seeds 3` is what gives the error bars the
# conclusions need (a claimed winner within one standard deviation of this run's winner
# is reported as TIED, not as reproduced or refuted).
#
# ## Exercises
#
# The bodies below hold reference answers so that the test suite can check them; to
# practise, replace a body with your own and run the file again.
#
# 1. **Rank classification by hand.** Write `my_rank_classify(model, arch, example)`
#    returning the index of the choice with the highest `log p(choice | prompt)`, using
#    `score_completions` only. Checked against `rank_classify` on CD, ND and ED models.
# 2. **Aggregate like the study.** Write `heldout_mean(per_task)` for a dict
#    `{task: {template: accuracy}}`: the mean over tasks of each task's mean over its
#    templates. Checked against `summarise` on tasks with different numbers of templates.
# 3. **The random baseline of a suite.** Write `suite_baseline(tasks)`: the accuracy of
#    random choice on a list of `Task`s, aggregated the way the study aggregates
#    accuracies. Checked against the study's random floors (`results["baselines"]`, one
#    per group of tasks) and on the default world.

# %%
def my_rank_classify(model, arch, example):
    scores = score_completions(model, arch, [example.prompt] * len(example.choices), list(example.choices), tok)
    return int(np.argmax(scores))


def heldout_mean(per_task):
    return float(np.mean([np.mean(list(templates.values())) for templates in per_task.values()]))


def suite_baseline(tasks):
    return float(np.mean([np.mean([1 / len(e.choices) for e in t.examples]) for t in tasks]))


# %%
def check_my_rank_classify(fn):
    models = {"cd": cd_flm, "nd": trained("pretrain/nd-plm/s0"), "ed": trained("pretrain/ed-plm/s0")}
    examples = world.task("qa_pet").examples[:8] + world.task("verify_city").examples[:8] + world.probes["job"].examples
    for arch, model in models.items():
        expected = rank_classify(model, arch, examples, tok)
        got = [fn(model, arch, e) for e in examples]
        assert list(got) == list(expected), f"{arch}: expected {list(expected)}, got {got}"


def check_heldout_mean(fn):
    r = np.random.default_rng(0)
    for trial in range(50):
        per = {f"task{t}": {k: float(r.random()) for k in range(int(r.integers(1, 5)))} for t in range(int(r.integers(1, 6)))}
        assert abs(fn(per) - summarise(per)["mean"]) < 1e-12, f"trial {trial}: expected {summarise(per)['mean']}"


def check_suite_baseline(fn):
    for group, floors in results["baselines"].items():
        tasks = [t for t in world.tasks if t.split == group]
        assert abs(fn(tasks) - floors["random"]) < 1e-12, f"smoke world, {group}: expected {floors['random']}"
    big = World("default", seed=0)
    expected = np.mean([t.random_baseline for t in big.heldout_tasks])
    assert abs(fn(big.heldout_tasks) - expected) < 1e-12, f"default world: expected {expected}"


def check_exercises():
    check_my_rank_classify(my_rank_classify)
    check_heldout_mean(heldout_mean)
    check_suite_baseline(suite_baseline)
    print("all three exercises check out")


check_exercises()


# %% [markdown]
# The checks reject plausible wrong answers:

# %%
def length_normalised(model, arch, example):      # divides by the number of choice tokens
    scores = score_completions(model, arch, [example.prompt] * len(example.choices), list(example.choices), tok)
    return int(np.argmax(scores / np.array([len(c) for c in example.choices])))


wrong_answers = [
    (check_my_rank_classify, lambda model, arch, example: int(np.argmin(score_completions(
        model, arch, [example.prompt] * len(example.choices), list(example.choices), tok)))),   # argmin
    (check_heldout_mean, lambda per: float(np.mean([a for t in per.values() for a in t.values()]))),  # flat mean
    (check_suite_baseline, lambda tasks: float(np.mean([1 / len(e.choices) for t in tasks for e in t.examples]))),
]
assert_all_rejected(wrong_answers)

# %% [markdown]
# `length_normalised` is not in that list, because it passes: on these tasks every choice
# is one token long, so dividing by the length changes no ranking. It would matter for
# answers of different lengths, where the unnormalised sum tends to favour short ones.

# %%
assert not rejected(check_my_rank_classify, length_normalised)
print("length normalisation changes nothing when every choice is one token long")

# %% [markdown]
#
# The study of this tutorial went to a temporary folder; we remove it (set
# `MINILLM_TUTORIAL_KEEP=1` to keep it and look at the units, logs and checkpoints).

# %%
if os.environ.get("MINILLM_TUTORIAL_KEEP") == "1":
    print("study kept in", out)
else:
    import shutil
    shutil.rmtree(work, ignore_errors=True)
