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
# # 8. Adaptation: same weights, new mask and objective
#
# Tutorial 7 ended with an awkward result from the paper: the model that is best without
# finetuning (CD:FLM) is not the one that is best after it (ED:MLM, then ND:MLM). Must
# you pay for two pretraining runs to get both kinds of model? Wang et al. tried a
# shortcut. CD and ND are the *same* network with a different mask, so a model pretrained
# as one can be turned into the other and trained on a little longer:
#
# - **LM-A** (language-modelling adaptation): take ND:MLM, switch to the causal mask,
#   continue with FLM. In the paper it reached CD:FLM's quality with 1.6x less compute
#   than training CD:FLM from scratch.
# - **NC-A** (non-causal MLM adaptation): take CD:FLM, switch to the prefix mask,
#   continue with MLM. In the paper it reached ND:MLM's quality 3.3x faster than ND:MLM
#   from scratch, which gives both a generative model and a finetuning-ready one for
#   about 1.3 times the cost of one.
#
# This tutorial checks the premise ("same weights") on a real model, runs both
# adaptations with the `Trainer`, and measures the speed-up the way `minillm study` does.

# %%
import json
import os
import tempfile

import numpy as np

import minillm as mm
from minillm.data.batches import make_batch
from minillm.train.checkpoint import load_checkpoint
from minillm.study import tokens_to_reach
from minillm.train.trainer import TrainConfig, Trainer, load_corpus
from minillm.data.world import World

from _setup import FAST, finish, plt, assert_all_rejected  # fast mode (MINILLM_TUTORIAL_FAST), optional matplotlib


work = tempfile.mkdtemp(prefix="minillm-tutorial-08-")   # runs, logs and checkpoints go here
world = World("smoke", seed=0)
tok = world.tokenizer
model_cfg = TrainConfig(preset="smoke").resolved().model_config(tok)

# %% [markdown]
# ## 8.1 Switching the mask changes no parameter
#
# In minillm, CD and ND are one class, `DecoderOnly`, and its `arch` attribute only picks
# the mask. Let's take a model, snapshot its parameters, switch it, and compare.

# %%
model = mm.build_model("cd", model_cfg, seed=0)
before = model.state_dict()                   # name -> a copy of each parameter
model.arch = "nd"
after = model.state_dict()
print(f"{len(before)} parameter arrays, {model.num_parameters():,} numbers")
print("same names:", before.keys() == after.keys(),
      "| every array identical:", all(np.array_equal(before[k], after[k]) for k in before))
built_nd = mm.build_model("nd", model_cfg, seed=0).state_dict()
print("and build_model('nd', seed=0) draws exactly the weights of build_model('cd', seed=0):",
      all(np.array_equal(before[k], built_nd[k]) for k in before))
assert all(np.array_equal(before[k], after[k]) for k in before)

# %% [markdown]
# The encoder-decoder has no such switch: its encoder, its decoder and its
# cross-attention are separate parameters, which is why both adaptations stay within
# decoder-only models.
#
# With the mask switched, an ND given an empty prefix (`prefix_len=0`) must compute
# exactly what CD computes: the prefix mask with no prefix *is* the causal mask. A
# non-empty prefix changes the outputs:

# %%
batch = make_batch("cd", "flm", [tok.encode(d) for d in world.documents(0)[:24]], tok,
                   max_len=model_cfg.max_len, pack=True)
with mm.no_grad():
    model.arch = "cd"
    cd_logits = model(batch.tokens).numpy()
    model.arch = "nd"
    nd0_logits = model(batch.tokens, prefix_len=0).numpy()
    nd8_logits = model(batch.tokens, prefix_len=8).numpy()
print(f"max |CD - ND(prefix 0)| = {np.abs(cd_logits - nd0_logits).max():.1e}")
per_position = np.abs(cd_logits - nd8_logits).max(axis=(0, 2))
print("max |CD - ND(prefix 8)| per position:", " ".join(f"{d:.0e}" for d in per_position[:12]), "...")
assert np.array_equal(cd_logits, nd0_logits)

# %% [markdown]
# ND with an empty prefix equals CD bit for bit. With a prefix of 8 every position
# changes, even those after the prefix, whose own mask row is the same: in the second
# layer they read the prefix positions, whose first-layer outputs changed (exercise 1).
#
# ## 8.2 The four runs
#
# To measure an adaptation we need its source model and the from-scratch model it is
# compared with. For both adaptations these are CD:FLM and ND:MLM, each the other's
# source:
#
# | adaptation | source | continues as | compared with (from scratch) |
# |---|---|---|---|
# | LM-A | ND:MLM | CD:FLM | CD:FLM |
# | NC-A | CD:FLM | ND:MLM | ND:MLM |
#
# The adapted runs get half the pretraining budget, as in the study's smoke preset (its
# default preset gives them 40%). Every run uses the same model size, seed, learning
# rate and validation batches of its objective, so the curves are comparable. (Fast
# mode makes every budget tiny: the curves then show the machinery, not the effect.)

# %%
PRETRAIN = 4_000 if FAST else 240_000
ADAPT = PRETRAIN // 2
LR = 5e-3
EVAL_EVERY = 4 if FAST else 25          # steps between validation losses: the curves' resolution


def run(name, arch, objective, tokens, model=None):
    """Train arch:objective for `tokens` tokens seen (from `model`'s weights if given); return the Trainer."""
    cfg = TrainConfig(arch=arch, objective=objective, preset="smoke", seed=0, tokens=tokens, lr=LR,
                      eval_every=EVAL_EVERY, log_every=EVAL_EVERY)
    corpus = load_corpus(cfg.resolved())   # the smoke world's documents, as long as this pair's rows hold
    trainer = Trainer(cfg, corpus, out_dir=os.path.join(work, name), progress=False, model=model)
    final = trainer.fit()
    print(f"{name:18s} {trainer.tokens_seen:8,d} tokens seen, {trainer.step:4d} steps, final val loss "
          f"{final['val_loss']:.3f}")
    return trainer


def curve(trainer):
    """(tokens seen, validation loss) at every evaluation of a run, read from its log.jsonl."""
    with open(trainer.path("log.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    return [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r]


cd_flm = run("cd-flm-scratch", "cd", "flm", PRETRAIN)
nd_mlm = run("nd-mlm-scratch", "nd", "mlm", PRETRAIN)

# %% [markdown]
# ## 8.3 Adapting a model
#
# `Trainer(cfg, corpus, out_dir, model=...)` trains a model you hand it instead of
# building a fresh one; the optimiser starts afresh, with the schedule of the new budget.
# Two things to get right:
#
# 1. **Work on a copy.** The trainer updates the model in place, and the source models
#    are also our from-scratch baselines. We rebuild each one from its checkpoint
#    (`load_checkpoint(path).build_model()`), as the study does from a source unit.
# 2. **Switch the mask.** The config says which batches to build (`arch`, `objective`),
#    the model's `arch` which mask to use. Forget the switch and NC-A fails at once: a
#    causal decoder refuses a batch with a prefix.

# %%
def copy_of(trainer):
    return load_checkpoint(trainer.path("checkpoint.npz")).build_model()


forgot = copy_of(cd_flm)                                # still arch "cd"
try:
    run("nc-a-no-switch", "nd", "mlm", ADAPT, model=forgot)
except ValueError as e:
    print("ValueError:", str(e)[:110], "...")

source = copy_of(cd_flm)
source.arch = "nd"                                      # CD:FLM -> prefix mask, then MLM
nc_a = run("nc-a", "nd", "mlm", ADAPT, model=source)
source = copy_of(nd_mlm)
source.arch = "cd"                                      # ND:MLM -> causal mask, then FLM
lm_a = run("lm-a", "cd", "flm", ADAPT, model=source)

# %% [markdown]
# ## 8.4 Comparing curves and computing the speed-up
#
# An adapted run is evaluated on the same validation batches as the from-scratch run of
# its new pair (same arch, objective and seed), so their losses can be compared directly.
# The study's speed-up asks: *how many from-scratch tokens was each adaptation token
# worth?* The adapted run spent `A` tokens and ended at validation loss `L`; the
# from-scratch run needed `N` tokens to first reach `L`. `tokens_to_reach(curve, L)`
# finds that first crossing, interpolating linearly between evaluations, or returns None
# if the curve never gets there. The speed-up is `N / A`: above 1, adapting was cheaper
# than starting over. If the from-scratch run never reaches `L` within its budget `B`,
# all we know is that `N > B`, and `B / A` is a lower bound (the study prints it as
# `>=`).

# %%
comparisons = {"LM-A vs CD:FLM": (lm_a, cd_flm), "NC-A vs ND:MLM": (nc_a, nd_mlm)}
speedups = {}
for name, (adapted, scratch) in comparisons.items():
    a, s = curve(adapted), curve(scratch)
    spent, target = a[-1]
    need = tokens_to_reach(s, target)
    bound = need is None
    speedups[name] = (s[-1][0] if bound else need) / spent
    print(f"{name}: adapted for {spent:,} tokens to loss {target:.3f}; from scratch "
          + (f"never got there in {s[-1][0]:,} tokens (ended at {s[-1][1]:.3f}) -> speed-up >= {speedups[name]:.1f}x"
             if bound else f"needed {need:,.0f} tokens -> speed-up {speedups[name]:.1f}x"))
    scratch_at = dict(s)
    shared = [t for t, _ in a if t in scratch_at][:4]
    print("   loss at the same tokens, scratch vs adapted:",
          ", ".join(f"{t:,}: {scratch_at[t]:.2f} vs {dict(a)[t]:.2f}" for t in shared))

# %%
if plt is not None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, (name, (adapted, scratch)) in zip(axes, comparisons.items()):
        for trainer, label in ((scratch, "from scratch"), (adapted, "adapted")):
            t, loss = zip(*curve(trainer))
            ax.plot(t, loss, label=label)
        ax.axhline(curve(scratch)[-1][1], color="gray", ls=":", lw=1, label="final loss from scratch")
        ax.set(xlabel="tokens seen in this run", ylabel="validation loss", title=name)
        ax.legend(fontsize=7)
    finish(fig, "08_adaptation_curves.png")

# %% [markdown]
# How to read these numbers:
#
# - An adapted model starts far below a fresh one: the weights already model the
#   language, and only the way they are used has changed. At the same number of tokens
#   the adapted run is ahead of the from-scratch one throughout the early part of the
#   curves.
# - The speed-up counts **adaptation tokens only**, as the study does: the source model
#   is treated as already paid for (you wanted it anyway). Exercise 3 does the
#   arithmetic of NC-A's bargain, "two models for little more than the price of one".
# - The measurement has a ceiling. With the adapted run at `A` = B/2 tokens, a
#   from-scratch run that never catches up gives only "at least B/A = 2x". To see a
#   larger speed-up, give the from-scratch run a longer budget.
# - At full size (one seed, this world; the same runs as the LM-A and NC-A units of
#   tutorial 7's study) your run prints both speed-ups above; compare them with the
#   paper's 1.6x (LM-A) and 3.3x (NC-A). Treat them as a demonstration of the
#   measurement on one tiny world, not as a replication; for numbers with error bars,
#   run `minillm study --seeds 3`.
#
# ## Exercises
#
# The bodies below hold reference answers so that the test suite can check them; to
# practise, replace a body with your own and run the file again.
#
# 1. **Which outputs change?** A decoder with `n_layers` layers reads `T` positions.
#    Switched from CD to ND with prefix length `P` (BOS included, `0 <= P <= T`), which
#    positions' outputs change? Write `changed_positions(T, P, n_layers)` returning a
#    boolean array of length `T`. Checked on real models with 1 and 2 layers.
# 2. **The speed-up by hand.** Write `speedup(scratch, adapted)` for two curves of
#    `(tokens, loss)` pairs, returning `(ratio, is_lower_bound)`: the tokens at which
#    `scratch` first reaches the last loss of `adapted` (interpolating linearly between
#    points; the last tokens of `scratch` if it never does, which makes the ratio a lower
#    bound) divided by the last tokens of `adapted`. Do not use `tokens_to_reach`.
# 3. **Two models for the price of ...?** You want a CD:FLM model and an ND:MLM model.
#    From scratch each costs `budget` tokens. With NC-A, the second is adapted from the
#    first in `adapt` tokens. Write `nc_a_cost_ratio(budget, adapt)`: the cost of both
#    models with NC-A, as a multiple of the cost of one from-scratch model.

# %%
def changed_positions(T, P, n_layers):
    positions = np.arange(T)
    if P <= 1:                   # the mask rows are all the causal ones
        return np.zeros(T, dtype=bool)
    if n_layers == 1:            # only rows that gained keys: i < P - 1
        return positions < P - 1
    return np.ones(T, dtype=bool)  # later layers read the changed prefix positions


def speedup(scratch, adapted):
    spent, target = adapted[-1]
    prev = None
    for t, loss in scratch:
        if loss <= target:
            if prev is None or prev[1] == loss:
                return t / spent, False
            (t0, l0) = prev
            return (t0 + (t - t0) * (l0 - target) / (l0 - loss)) / spent, False
        prev = (t, loss)
    return scratch[-1][0] / spent, True


def nc_a_cost_ratio(budget, adapt):
    return (budget + adapt) / budget


# %%
def check_changed_positions(fn):
    tokens = batch.tokens[:4]
    rng = np.random.default_rng(0)
    for n_layers in (1, 2):
        cfg = mm.ModelConfig(vocab_size=tok.vocab_size, d_model=16, n_heads=2, n_layers=n_layers, d_ff=32,
                             max_len=model_cfg.max_len, pad_id=tok.pad_id)
        m = mm.build_model("cd", cfg, seed=n_layers)
        with mm.no_grad():
            base = m(tokens).numpy()
            m.arch = "nd"
            for P in [0, 1, 2, 3, 8, int(rng.integers(4, tokens.shape[1])), tokens.shape[1]]:
                diff = np.abs(m(tokens, prefix_len=P).numpy() - base).max(axis=(0, 2))
                expected = diff > 1e-6
                got = np.asarray(fn(tokens.shape[1], P, n_layers), dtype=bool)
                assert got.shape == expected.shape and (got == expected).all(), \
                    f"n_layers {n_layers}, P {P}: changed positions are {np.flatnonzero(expected).tolist()}"
            m.arch = "cd"


def check_speedup(fn):
    real = [(curve(a), curve(s)) for a, s in comparisons.values()]
    r = np.random.default_rng(1)
    made_up = []
    for trial in range(100):
        n = int(r.integers(2, 12))
        steps = np.sort(r.choice(np.arange(1, 50), size=n, replace=False)) * 100
        made_up.append(([(int(t), float(v)) for t, v in zip(steps, np.sort(r.random(n))[::-1] + 1)],
                        [(int(t), float(v)) for t, v in zip(steps // 2, np.sort(r.random(n))[::-1] * 2 + 0.5)]))
    bounds = 0
    for adapted, scratch in real + made_up:
        need = tokens_to_reach(scratch, adapted[-1][1])
        expected = ((scratch[-1][0] if need is None else need) / adapted[-1][0], need is None)
        got = fn(scratch, adapted)
        assert got[1] == expected[1] and abs(got[0] - expected[0]) < 1e-9 * expected[0], \
            f"expected {expected}, got {got}"
        bounds += expected[1]
    assert 0 < bounds < len(real + made_up)      # both cases were checked


def check_nc_a_cost_ratio(fn):
    assert abs(fn(1000, 300) - 1.3) < 1e-12, "budget 1000, adapt 300: both models cost 1300 = 1.3 models"
    assert abs(fn(240_000, 120_000) - 1.5) < 1e-12
    assert abs(fn(10, 10) - 2.0) < 1e-12, "adapting as long as pretraining saves nothing"


def check_exercises():
    check_changed_positions(changed_positions)
    check_speedup(speedup)
    check_nc_a_cost_ratio(nc_a_cost_ratio)
    print("all three exercises check out")


check_exercises()
print("with NC-A at the paper's 3.3x (adaptation = 1/3.3 of a budget), both models cost "
      f"{nc_a_cost_ratio(1.0, 1 / 3.3):.2f} budgets instead of 2")


# %% [markdown]
# The checks reject plausible wrong answers:

# %%
def no_interpolation(scratch, adapted):        # takes the first evaluation at or below the target
    for t, loss in scratch:
        if loss <= adapted[-1][1]:
            return t / adapted[-1][0], False
    return scratch[-1][0] / adapted[-1][0], True


def the_other_way_round(scratch, adapted):     # adaptation tokens to reach the from-scratch final loss
    need = tokens_to_reach(adapted, scratch[-1][1])
    return (None, True) if need is None else (scratch[-1][0] / need, False)


wrong_answers = [
    (check_changed_positions, lambda T, P, n_layers: np.arange(T) < P),              # P - 1 keeps its row
    (check_changed_positions, lambda T, P, n_layers: np.arange(T) < max(P - 1, 0)),  # forgets deeper layers
    (check_speedup, no_interpolation),
    (check_speedup, the_other_way_round),
    (check_nc_a_cost_ratio, lambda budget, adapt: (2 * budget) / (budget + adapt)),   # the saving, not the cost
]
assert_all_rejected(wrong_answers)

# %% [markdown]
# The runs of this tutorial went to a temporary folder; we remove it (set
# `MINILLM_TUTORIAL_KEEP=1` to keep it and look at the logs and checkpoints).

# %%
if os.environ.get("MINILLM_TUTORIAL_KEEP") == "1":
    print("runs kept in", work)
else:
    import shutil
    shutil.rmtree(work, ignore_errors=True)
