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
# # 6. Training a tiny model end to end; checkpoints; generation
#
# Everything so far was parts. Here we train a causal decoder on minillm's built-in
# synthetic world: first with a training loop written out in a dozen lines, so that
# nothing is hidden, then with the library's `Trainer`, which adds what a real run
# needs (a token budget, a learning-rate schedule, logs, checkpoints, exact resume).
# Finally we ask the model about the world: greedy generation, and a *statement probe*
# that scores the facts it was taught.

# %%
import json
import os
import tempfile

import numpy as np

import minillm as mm
from minillm import functional as F
from minillm import optim
from minillm.data.batches import make_batch
from minillm.study.evaluate import accuracy
from minillm.model.generate import generate
from minillm.train.trainer import TrainConfig, Trainer, load_corpus
from minillm.data.world import World

from _setup import FAST, finish, plt, assert_all_rejected  # fast mode (MINILLM_TUTORIAL_FAST), optional matplotlib


work = tempfile.mkdtemp(prefix="minillm-tutorial-06-")   # runs, logs and checkpoints go here

# %% [markdown]
# ## 6.1 The world
#
# The world is made-up people (one token each) with attributes: colour, city, job, pet,
# food, sport, instrument, language. Its pretraining text is made of documents, each
# about one person: that person's facts in random order and varied templates, restated
# while they fit the length of a row; each epoch draws fresh orders and templates. Some
# documents are about *fresh* people, whose facts are drawn anew for that document, and
# some are filler that teaches the words of the question formats. We use the small `smoke`
# world: 8 people, 4 possible values per attribute, documents of at most 31 words.

# %%
world = World("smoke", seed=0)
tok = world.tokenizer
print(world.describe())
for d in world.documents(epoch=0)[:6]:
    print("  ", d)

# %% [markdown]
# ## 6.2 A training loop, written out
#
# One step of training is always the same five moves: build a batch, run the model,
# compute the loss, backpropagate, update. With FLM on a decoder the batch is packed
# documents (tutorial 5); the loss is the cross-entropy of the next token, averaged over
# the positions that carry a loss; AdamW updates the weights; clipping the gradient norm
# keeps an unlucky batch from throwing the weights far away.

# %%
config = mm.ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_heads=2, n_layers=2, d_ff=64, max_len=32,
                        pad_id=tok.pad_id)
model = mm.build_model("cd", config, seed=0)
opt = optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
sequences = [tok.encode(d) for d in world.documents(epoch=0)]
rng = np.random.default_rng(0)
steps = 15 if FAST else 60
losses = []
for step in range(steps):
    picked = [sequences[i] for i in rng.choice(len(sequences), 24, replace=False)]
    batch = make_batch("cd", "flm", picked, tok, max_len=config.max_len, pack=True)
    logits = model(batch.tokens)                            # (B, T, V)
    loss = F.cross_entropy(logits, batch.targets)           # mean over loss positions
    opt.zero_grad()
    loss.backward()
    optim.clip_grad_norm(model.parameters(), 1.0)
    opt.step()
    losses.append(loss.item())
    if step % (steps // 5) == 0 or step == steps - 1:
        print(f"step {step:3d}  loss {loss.item():.3f}")
print(f"a uniform guess over {tok.vocab_size} tokens has loss log(V) = {np.log(tok.vocab_size):.3f}")
assert losses[-1] < losses[0] - 0.5

# %% [markdown]
# ## 6.3 The `Trainer`: budgets, schedules, logs, checkpoints
#
# A run is described by a `TrainConfig`. Its budget is **tokens seen** (what compute is
# proportional to, and what the study matched across models), and the learning rate
# follows a warm-up then a cosine decay *as a function of tokens seen*, so a budget means
# the same for every architecture. `out_dir` receives `config.json`, `log.jsonl` (one
# JSON object per logged step) and `checkpoint.npz`.

# %%
budget = 8_000 if FAST else 150_000
cfg = TrainConfig(arch="cd", objective="flm", preset="smoke", seed=0,
                  d_model=32 if FAST else 64, n_layers=2, n_heads=2, d_ff=64 if FAST else 256,
                  tokens=budget, lr=3e-3, log_every=5, eval_every=0)
corpus = load_corpus(cfg.resolved())
run_dir = os.path.join(work, "cd-flm")
trainer = Trainer(cfg, corpus, out_dir=run_dir, progress=False)
final = trainer.fit()
print(f"trained {trainer.step} steps, {trainer.tokens_seen:,} tokens seen")
print("final evaluation:", {k: round(v, 3) if isinstance(v, float) else v for k, v in final.items()})
print("files:", sorted(os.listdir(run_dir)))
log = [json.loads(line) for line in open(os.path.join(run_dir, "log.jsonl"))]
train_log = [r for r in log if "loss" in r]
print(f"logged loss: first {train_log[0]['loss']:.3f}, last {train_log[-1]['loss']:.3f}; "
      f"speed {np.median([r['tokens_per_s'] for r in train_log[1:]]):,.0f} tokens/s")

# %%
if plt is not None:
    fig, ax1 = plt.subplots(figsize=(6, 3))
    ax1.plot([r["tokens"] for r in train_log], [r["loss"] for r in train_log], label="training loss")
    ax1.set_xlabel("tokens seen")
    ax1.set_ylabel("loss")
    ax2 = ax1.twinx()
    ax2.plot([r["tokens"] for r in train_log], [r["lr"] for r in train_log], color="tab:orange", label="lr")
    ax2.set_ylabel("learning rate")
    ax1.set_title("CD:FLM on the smoke world")
    finish(fig, "06_loss_curve.png")

# %% [markdown]
# ### Exact resume
#
# A checkpoint holds the weights, the optimiser's state (AdamW's moment estimates), the
# step, the tokens seen, and the random generators' states; and batch `i` of a run is a
# pure function of `(seed, i)`. So stopping and resuming gives *exactly* the weights of a
# run that never stopped. Let's check that, bit for bit, on a short run.

# %%
short = TrainConfig(arch="cd", objective="flm", preset="smoke", seed=1, tokens=3_000, log_every=5,
                    eval_every=0, checkpoint_every=1000)
straight = Trainer(short, corpus, out_dir=os.path.join(work, "straight"), progress=False)
straight.fit()
half = Trainer(short, corpus, out_dir=os.path.join(work, "stopped"), progress=False)
half.fit(max_steps=straight.step // 2)          # stop half way; fit() saves a checkpoint
print(f"stopped at step {half.step}; resuming from {os.path.join('stopped', 'checkpoint.npz')}")
resumed = Trainer.resume(os.path.join(work, "stopped"), corpus=corpus, progress=False)
resumed.fit()
same = all((a == b).all() for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()))
print(f"straight run: {straight.step} steps; stopped + resumed: {resumed.step} steps; identical weights: {same}")
assert same and straight.step == resumed.step

# %% [markdown]
# ## 6.4 Asking the model: generation and a statement probe
#
# `generate` continues a prompt token by token (greedy by default), feeding it the way
# the model was trained: `[BOS] + prompt` for a decoder. It keeps a key/value cache so
# that each new token costs one position, not a whole forward pass.

# %%
trained = trainer.model
for text in ["the pet of", world.probes["pet"].examples[0].text, world.probes["city"].examples[1].text]:
    new = generate(trained, tok.encode(text), max_new_tokens=8, bos_id=tok.bos_id, eos_id=tok.eos_id)
    print(f"  {text!r:38s} -> {tok.decode(new)!r}")

# %% [markdown]
# Free generation is hard to score. The *statement probe* asks a sharper question: after
# a row of X's other facts ending in "the pet of X is a" (the format of a pretraining
# document, with the pet itself never stated), which of the 4 possible pets does the
# model find most likely? That is rank classification (`minillm.study.evaluate`): score
# `log p(choice | prompt)` for every choice and pick the best. Random guessing gets 25%.
# A model that learned the facts scores near 100%; tutorial 7 shows why this probe is the
# first thing to check before reading any zero-shot result.

# %%
print(f"{'relation':12s} {'probe accuracy':>15s}   (random {world.probes['pet'].random_baseline:.0%})")
probe_acc = {}
for relation, task in world.probes.items():
    probe_acc[relation] = accuracy(trained, "cd", task.examples, tok)
    print(f"{relation:12s} {probe_acc[relation]:15.0%}")
print(f"mean {np.mean(list(probe_acc.values())):.0%}")

# %% [markdown]
# With the full-size budget the model should know most facts; in fast mode it has seen
# too little text and stays near chance. Try doubling `budget` and watch the probe climb.
#
# ## Exercises
#
# The bodies below hold reference answers so that the test suite can check them; to
# practise, replace a body with your own and run the file again.
#
# 1. **The loss of knowing nothing.** A freshly initialised model predicts nearly
#    uniform distributions. Write `initial_loss(vocab_size)`: the cross-entropy of a
#    uniform prediction. Checked against a fresh model on real batches (within 2%).
# 2. **Tokens per step.** Write `steps_for_budget(tokens, rows, tokens_per_row)`: how many
#    optimiser steps a budget of `tokens` tokens seen takes with full rows (round up).
# 3. **Score a completion yourself.** Write `completion_logprob(model, prompt, completion)`
#    for a CD model: `sum log p(completion | [BOS] + prompt)` computed with one forward pass
#    and `F.log_softmax`. Checked against `minillm.study.evaluate.score_completions`.

# %%
def initial_loss(vocab_size):
    return float(np.log(vocab_size))


def steps_for_budget(tokens, rows, tokens_per_row):
    per_step = rows * tokens_per_row
    return -(-tokens // per_step)


def completion_logprob(model, prompt, completion):
    fed = np.concatenate([[tok.bos_id], prompt, completion[:-1]])[None]
    with mm.no_grad():
        logp = F.log_softmax(model(fed)).numpy()[0]
    start = len(prompt)                      # position that reads the last prompt token
    return float(sum(logp[start + k, c] for k, c in enumerate(completion)))


# %%
def check_initial_loss(fn):
    for seed in (0, 1):
        fresh = mm.build_model("cd", config, seed=seed)
        b = make_batch("cd", "flm", sequences[:16], tok, max_len=config.max_len, pack=True)
        with mm.no_grad():
            real = F.cross_entropy(fresh(b.tokens), b.targets).item()
        assert abs(fn(tok.vocab_size) - real) < 0.02 * real, f"expected about {real:.3f}, got {fn(tok.vocab_size)}"


def check_steps_for_budget(fn):
    for tokens, rows, per_row in [(1000, 4, 25), (1001, 4, 25), (65536, 32, 64), (1, 8, 8)]:
        expected = 0
        while expected * rows * per_row < tokens:
            expected += 1
        assert fn(tokens, rows, per_row) == expected, f"{(tokens, rows, per_row)}: expected {expected}"


def check_completion_logprob(fn):
    from minillm.study.evaluate import score_completions
    for ex in world.probes["colour"].examples[:4]:
        prompt, completion = np.array(ex.prompt), np.array(ex.choices[0])
        ref = score_completions(trained, "cd", [prompt], [completion], tok)[0]
        assert abs(fn(trained, prompt, completion) - ref) < 1e-4, f"expected {ref:.5f}"
    prompt, completion = tok.encode("the pet of"), tok.encode("sonis is a")   # a longer completion
    ref = score_completions(trained, "cd", [prompt], [completion], tok)[0]
    assert abs(fn(trained, prompt, completion) - ref) < 1e-4, f"expected {ref:.5f} for a 3-token completion"


def check_exercises():
    check_initial_loss(initial_loss)
    check_steps_for_budget(steps_for_budget)
    check_completion_logprob(completion_logprob)
    print("all three exercises check out")


check_exercises()


# %% [markdown]
# The checks reject plausible wrong answers:

# %%
def off_by_one_logprob(model, prompt, completion):   # reads the prediction one position late
    fed = np.concatenate([[tok.bos_id], prompt, completion])[None]
    with mm.no_grad():
        logp = F.log_softmax(model(fed)).numpy()[0]
    return float(sum(logp[len(prompt) + 1 + k, c] for k, c in enumerate(completion)))


wrong_answers = [
    (check_initial_loss, lambda V: float(np.log2(V))),            # bits instead of nats
    (check_steps_for_budget, lambda t, r, p: t // (r * p)),        # rounds down
    (check_completion_logprob, off_by_one_logprob),
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
