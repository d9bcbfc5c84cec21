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
# # 5. The three pretraining objectives
#
# A pretraining *objective* says what a model is asked to predict from what. The study
# compares three:
#
# - **FLM**, full language modelling: predict every next token, from all the tokens
#   before it.
# - **PLM**, prefix language modelling: cut the text at a random point; the first part is
#   given (the *context*), the model predicts the rest (the *output*).
# - **MLM** in T5's form, *span corruption*: hide about 15% of the tokens in short runs,
#   replace each run by a *sentinel* token, and ask the model to produce every sentinel
#   followed by the tokens it hid.
#
# This tutorial runs all three on real text, shows exactly what each architecture
# (CD, ND, ED) is fed, and then does the bookkeeping that matters for a fair comparison:
# how many tokens a model *sees* versus how many carry a loss.

# %%

import numpy as np

from minillm.data import objectives as O
from minillm.data.batches import make_batch, make_prompt_batch, pack_sequences
from minillm.data.world import World

from _setup import FAST, finish, plt, assert_all_rejected  # fast mode (MINILLM_TUTORIAL_FAST), optional matplotlib


# %% [markdown]
# ## 5.1 Text, tokens, special ids
#
# We use minillm's built-in synthetic world (`minillm.data.world`, the one the study runs on):
# made-up people, one token each, with attributes (colour, city, job, pet, ...), stated
# in plain sentences. Its pretraining text is made of *documents*, each about one person:
# that person's facts in random order and templates, as many whole sentences as fit a
# length (`world.documents(epoch, length)`; here short ones, of at most 16 words). Its
# `WordTokenizer` gives every word an id; before the words come
# the special tokens, always at the same ids: `<pad>` 0, `<bos>` 1, `<eos>` 2, `<sep>` 3,
# then the sentinels `<extra_id_0>`, `<extra_id_1>`, ... that span corruption uses.

# %%
world = World("default", seed=0)
tok = world.tokenizer
corpus = world.documents(epoch=0, length=16)[:12]
sequences = [tok.encode(s) for s in corpus]
print(world.describe())
print(f"vocabulary of {tok.vocab_size} ids ({tok.n_special} special, {tok.vocab_size - tok.n_special} words)")
print("special ids: pad", tok.pad_id, "bos", tok.bos_id, "eos", tok.eos_id,
      "sentinels", tok.sentinel_ids[:3], "...")
for text in corpus[:4]:
    print(f"  {text!r:45s} -> {tok.encode(text).tolist()}")
assert tok.decode(sequences[0]) == corpus[0]


def show(tokens, targets, prefix_len=None, title=""):
    """Print what a decoder reads at each position and what it must predict there.

    Long runs of context positions (no loss) are shortened to their first and last two."""
    print(title)
    n = int((np.asarray(tokens) != tok.pad_id).sum())
    no_loss = int((np.asarray(targets[:n]) < 0).sum())
    for i, (a, b) in enumerate(zip(tokens[:n], targets[:n])):
        if no_loss > 6 and 2 <= i < no_loss - 2:
            if i == 2:
                print(f"  ... ({no_loss - 4} more context positions, no loss)")
            continue
        region = " bidir" if prefix_len is not None and i < prefix_len else ""
        print(f"  {i:2d}  reads {tok.id_to_token(a):>13}  ->  "
              f"{tok.id_to_token(b) if b >= 0 else '(no loss)':<13}{region}")


# %% [markdown]
# ## 5.2 FLM: predict every next token
#
# A decoder is fed the sequence shifted right by one, with `<bos>` in front, and at each
# position it predicts the token that comes next. The last prediction is `<eos>`: the
# model learns where a text ends. Every position carries a loss.

# %%
b = make_batch("cd", "flm", [sequences[0]], tok)
show(b.tokens[0], b.targets[0], title="CD:FLM, one sequence")
print(f"tokens seen {b.tokens_seen}, loss tokens {b.loss_tokens}")

# %% [markdown]
# Short documents waste positions on padding, so FLM training *packs* several documents,
# each followed by `<eos>`, into one row of `max_len` positions. A document is never cut
# in two here, so a row may end with a little padding:

# %%
rows = pack_sequences(sequences, max_len=32, eos_id=tok.eos_id)
for r in rows:
    print(f"  [{len(r):2d} tokens] {tok.decode(r)}")
packed = make_batch("cd", "flm", sequences, tok, max_len=32, pack=True)
print(f"{len(sequences)} documents -> {packed.size} rows of width {packed.tokens.shape[1]}; "
      f"tokens seen {packed.tokens_seen}, loss tokens {packed.loss_tokens}")

# %% [markdown]
# ## 5.3 PLM: a given context, a predicted continuation
#
# PLM draws a split point `s` uniformly from `1 .. L-1` (so both parts are non-empty),
# gives `x[:s]` as context and asks for `x[s:]`. The architectures differ only in how
# they read the context:
#
# - **ND** reads it bidirectionally: `prefix_len = 1 + s` (BOS plus the context; see
#   tutorial 3 for why the `1 +`).
# - **CD** reads it causally: same tokens, same targets, `prefix_len = 0`.
# - **ED** feeds the context to the encoder and the continuation to the decoder.
#
# In all three the loss is on the continuation (plus EOS) only. (The study's runs on the
# world pass `split_ids=world.value_ids` to `make_batch`, so that the split falls just
# before a fact's value, where a question's answer would go; without it, as here, the
# split is uniform.)

# %%
x = np.concatenate([sequences[0], sequences[1]])    # two documents, so that the split has room
for arch in ("nd", "cd"):
    b = make_batch(arch, "plm", [x], tok, rng=1)
    show(b.tokens[0], b.targets[0], int(b.prefix_len[0]),
         title=f"{arch.upper()}:PLM  prefix_len = {int(b.prefix_len[0])}")
b = make_batch("ed", "plm", [x], tok, rng=1)
print("ED:PLM  encoder reads:", tok.decode(b.src[0]))
show(b.tgt_in[0], b.targets[0], title="        decoder:")

# %% [markdown]
# Over many draws the split is uniform, so on average about half of a sequence is
# context and half carries the loss:

# %%
n_draws = 2_000 if FAST else 20_000
rng = np.random.default_rng(0)
L = 20
splits = np.array([O.plm_split(L, rng) for _ in range(n_draws)])
print(f"L = {L}: split points range {splits.min()}..{splits.max()}, mean {splits.mean():.2f} "
      f"(uniform on 1..{L - 1} has mean {L / 2})")
counts = np.bincount(splits, minlength=L)[1:]
print("histogram of s:", counts.tolist())
assert splits.min() == 1 and splits.max() == L - 1

# %% [markdown]
# ## 5.4 MLM: T5 span corruption
#
# T5 decides *how much* to hide deterministically and *where* at random. For `n` tokens
# at noise density 0.15 and mean span length 3:
#
# 1. `N = round(0.15 n)` noise tokens (at least 1, at most `n - 1`), in
#    `S = round(N / 3)` spans (at least 1). Rounding is half to even, like `np.round`.
# 2. Split the `N` noise tokens into `S` non-empty runs, and the `n - N` kept tokens into
#    `S` non-empty runs, both uniformly at random.
# 3. Interleave: kept run, noise run, kept run, noise run, ... So the mask always starts
#    with a kept token and ends with noise.
#
# Here are a few masks for a 40-token sequence (`#` hidden, `.` kept):

# %%
n = 40
N, S = O.noise_counts(n)
print(f"n = {n}: N = {N} noise tokens in S = {S} spans")
for seed in range(5):
    m = O.random_spans_noise_mask(n, rng=seed)
    runs = int((m & ~np.concatenate(([False], m[:-1]))).sum())
    print("  " + "".join("#" if v else "." for v in m), f" {int(m.sum())} hidden in {runs} runs")
    assert m.sum() == N and runs == S and not m[0] and m[-1]

# %% [markdown]
# Then each noise run is replaced in the *inputs* by the next sentinel, and the
# *targets* list every sentinel followed by what it hid. Sentinels appear in the same
# order in both, which is what lets the model (and us) line them up. A single short
# sentence would get just one span, so we corrupt one of the world's pretraining
# documents at its full length: whole sentences up to 63 words.

# %%
def pretraining_sequences(epoch):  # the documents of an epoch, each at most 63 words (world.config.seq_len)
    return [tok.encode(d) for d in world.documents(epoch)]


x = pretraining_sequences(epoch=0)[0]
inputs, targets = O.span_corruption(x, tok.sentinel_ids, rng=1)
print("original:", tok.decode(x))
print("inputs:  ", tok.decode(inputs))
print("targets: ", tok.decode(targets))
print(f"len(x) = {len(x)}, len(inputs) = {len(inputs)}, len(targets) = {len(targets)}, "
      f"counts N, S = {O.noise_counts(len(x))}")

# %% [markdown]
# The lengths are fixed by `N` and `S`: `len(inputs) = n - N + S` and
# `len(targets) = N + S`. T5 used this to choose how long a raw text must be so that its
# corrupted inputs (plus EOS) fill exactly 512 positions:

# %%
def raw_length_for_inputs(inputs_length):
    """The longest raw length whose corrupted inputs plus EOS fit `inputs_length` (T5's
    `random_spans_helper`); returns it with the input and target lengths, both with EOS."""
    raw = 2
    while O.corrupted_lengths(raw + 1)[0] + 1 <= inputs_length:
        raw += 1
    n_in, n_out = O.corrupted_lengths(raw)
    return raw, n_in + 1, n_out + 1


raw, n_in, n_out = raw_length_for_inputs(512)
print(f"raw length {raw} -> inputs {n_in} and targets {n_out} (both with EOS)")
assert (raw, n_in, n_out) == (568, 512, 114)

# %% [markdown]
# How each architecture trains on it: **ED** reads `inputs + EOS` in the encoder and
# predicts `targets + EOS` with the decoder. **CD** and **ND** read one sequence,
# `inputs ⊕ targets`, with the loss on the targets part only; ND makes the inputs part
# bidirectional.

# %%
b = make_batch("nd", "mlm", [x], tok, rng=1)
show(b.tokens[0], b.targets[0], int(b.prefix_len[0]), title="ND:MLM")
b = make_batch("ed", "mlm", [x], tok, rng=1)
print("ED:MLM  encoder reads:", tok.decode(b.src[0]))
show(b.tgt_in[0], b.targets[0], title="        decoder:")

# %% [markdown]
# ## 5.5 Bookkeeping: tokens seen versus tokens with a loss
#
# Every batch reports two counts:
#
# - `tokens_seen`: non-pad tokens fed to the model (for ED, encoder plus decoder);
#   this is what compute is proportional to, and what the paper matched across models;
# - `loss_tokens`: positions with a target, i.e. the predictions the model learns from.
#
# Their ratio is very different across objectives. Here are the counts over the world's
# pretraining documents (whole sentences up to 63 words), one or more epochs:

# %%
epochs = 1 if FAST else 5
pairs = [("cd", "flm"), ("cd", "plm"), ("nd", "plm"), ("ed", "plm"), ("cd", "mlm"), ("nd", "mlm"), ("ed", "mlm")]
table = {}
for arch, objective in pairs:
    seen = loss = 0
    for epoch in range(epochs):
        seqs = pretraining_sequences(epoch)[: 40 if FAST else None]
        rng = np.random.default_rng(epoch)
        for start in range(0, len(seqs), 32):                     # batches of 32 sequences
            batch = make_batch(arch, objective, seqs[start:start + 32], tok, rng)
            seen += batch.tokens_seen
            loss += batch.loss_tokens
    table[arch, objective] = (seen, loss)
print(f"{'pair':8s} {'seen':>8s} {'loss':>8s} {'loss/seen':>9s}")
for (arch, objective), (seen, loss) in table.items():
    print(f"{arch}:{objective:4s} {seen:8d} {loss:8d} {loss / seen:9.2f}")

# %% [markdown]
# FLM learns from every token it sees. PLM learns from a bit over half of them. MLM is
# the extreme: with 15% of the text hidden, the targets are `N + S + 1` tokens out of
# `n + 2S + 1` seen (exercise 4), about a fifth. Note also that MLM *sees* more tokens
# than FLM for the same text: the sentinels appear twice. At a matched budget of tokens
# *seen*, an MLM model gets about five times fewer training signals than an FLM model,
# which is one reason why MLM models can learn fewer facts at toy budgets.

# %%
if plt is not None:
    fig, ax = plt.subplots(figsize=(6, 3))
    names = [f"{a}:{o}" for a, o in table]
    ax.bar(names, [s for s, _ in table.values()], label="tokens seen", color="lightgray")
    ax.bar(names, [lo for _, lo in table.values()], label="loss tokens", color="tab:blue")
    ax.set_ylabel("tokens")
    ax.set_title("What each pair sees vs learns from")
    ax.legend()
    finish(fig, "05_tokens_seen_vs_loss.png")

# %% [markdown]
# ## Exercises
#
# The bodies below hold reference answers so that the test suite can check them; to
# practise, replace a body with your own and run the file again.
#
# 1. **Undo span corruption.** Write `uncorrupt(inputs, targets, sentinels)` that
#    rebuilds the original sequence. Checked on many random corruptions.
# 2. **Predict the lengths.** Write `mlm_lengths(n)` returning
#    `(len(inputs), len(targets))` (no EOS) for density 0.15 and mean span 3, from the
#    formulas in 5.4 alone (mind the rounding: `round(0.15 * 10)` is 2, not 1 or 1.5).
# 3. **Expected PLM loss tokens.** For a decoder-only PLM batch of one sequence of
#    length `L`, write `expected_plm_loss_tokens(L)`: the average of `loss_tokens` over
#    the random split (EOS included). Checked exactly, by going over every split.
# 4. **Tokens seen for MLM.** Write `mlm_tokens_seen(arch, n)` for one sequence of `n`
#    tokens under MLM, for `arch` in `"cd"`, `"nd"`, `"ed"`, in terms of `N` and `S`.

# %%
def uncorrupt(inputs, targets, sentinels):
    sentinels = list(sentinels)
    hidden, current = {}, None
    for t in targets.tolist():
        if t in sentinels:
            current = t
            hidden[current] = []
        else:
            hidden[current].append(t)
    out = []
    for t in inputs.tolist():
        out += hidden[t] if t in hidden else [t]
    return np.array(out, dtype=np.int64)


def mlm_lengths(n):
    N = min(max(int(np.round(n * 0.15)), 1), n - 1)
    S = max(int(np.round(N / 3.0)), 1)
    return n - N + S, N + S


def expected_plm_loss_tokens(L):
    return L / 2 + 1          # L - s + 1 with s uniform on 1..L-1, whose mean is L/2


def mlm_tokens_seen(arch, n):
    N, S = O.noise_counts(n)
    n_in, n_out = n - N + S, N + S
    if arch == "ed":
        return (n_in + 1) + (n_out + 1)   # encoder: inputs + EOS; decoder: BOS + targets
    return 1 + n_in + n_out              # BOS + inputs + targets (the final EOS is only a target)


# %%
def check_uncorrupt(fn):
    r = np.random.default_rng(1)
    for trial in range(200):
        n = int(r.integers(2, 60))
        x = r.integers(100, 200, n)
        inp, tgt = O.span_corruption(x, range(4, 40), rng=trial)
        got = np.asarray(fn(inp, tgt, range(4, 40)))
        assert got.shape == x.shape and (got == x).all(), f"trial {trial}: rebuilt {got} from {x}"


def check_mlm_lengths(fn):
    for n in range(2, 300):
        inp, tgt = O.span_corruption(np.arange(n) + 100, range(4, 200), rng=n)
        assert tuple(fn(n)) == (len(inp), len(tgt)), f"n = {n}: expected {(len(inp), len(tgt))}, got {fn(n)}"


def check_expected_plm_loss_tokens(fn):
    # make_prompt_batch lays out a prompt/completion pair exactly as PLM lays out a split,
    # so going over every prompt length is going over every split point.
    for L in range(2, 30):
        x = np.arange(L) + 100
        counts = [make_prompt_batch("cd", [x[:s]], [x[s:]], tok).loss_tokens for s in range(1, L)]
        assert abs(fn(L) - np.mean(counts)) < 1e-9, f"L = {L}: expected {np.mean(counts)}, got {fn(L)}"


def check_mlm_tokens_seen(fn):
    for arch in ("cd", "nd", "ed"):
        for n in range(2, 120):
            b = make_batch(arch, "mlm", [np.arange(n) + 100], tok, rng=n)
            assert fn(arch, n) == b.tokens_seen, f"{arch}, n = {n}: expected {b.tokens_seen}, got {fn(arch, n)}"


def check_exercises():
    check_uncorrupt(uncorrupt)
    check_mlm_lengths(mlm_lengths)
    check_expected_plm_loss_tokens(expected_plm_loss_tokens)
    check_mlm_tokens_seen(mlm_tokens_seen)
    print("all four exercises check out")


check_exercises()


# %% [markdown]
# The checks reject plausible wrong answers:

# %%
def half_up_lengths(n):
    N = min(max(int(n * 0.15 + 0.5), 1), n - 1)
    S = max(int(N / 3.0 + 0.5), 1)
    return n - N + S, N + S


wrong_answers = [
    (check_uncorrupt, lambda i, t, s: np.array([v for v in i.tolist() if v not in list(s)])),
    (check_mlm_lengths, half_up_lengths),                       # rounds 4.5 up to 5
    (check_expected_plm_loss_tokens, lambda L: L / 2),          # forgets EOS
    (check_mlm_tokens_seen, lambda arch, n: mlm_tokens_seen("cd", n)),   # ED has one more
]
assert_all_rejected(wrong_answers, errors=(AssertionError, KeyError, IndexError))
