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
# # 3. Attention and the three masks
#
# The three architectures of the study (causal decoder CD, non-causal decoder ND,
# encoder-decoder ED) are built from the same attention layer. What tells them apart is
# a boolean matrix, the *mask*, that says which positions may look at which. This
# tutorial draws the three masks, computes the attention they produce, proves the
# invariants that relate them, and then pins down the one convention that trips people
# up: where the bidirectional region of a prefix decoder ends once a BOS token is
# shifted in.
#
# Convention everywhere in minillm: `M[i, j] = True` means *query* position `i` may
# attend to *key* position `j`.

# %%

import numpy as np

import minillm as mm
from minillm import functional as F
from minillm import masks
from minillm.data.batches import make_batch
from minillm.data.tokenizer import WordTokenizer

from _setup import FAST, finish, plt, assert_all_rejected  # fast mode (MINILLM_TUTORIAL_FAST), optional matplotlib


rng = np.random.default_rng(0)

# %% [markdown]
# ## 3.1 The three masks, as pictures
#
# | mask | rule | used by |
# |---|---|---|
# | bidirectional | every `j` | the encoder of ED |
# | causal | `j <= i` | CD; the decoder of ED |
# | prefix(P) | `j <= i` or (`i < P` and `j < P`) | ND (prefix LM) |
#
# Rows are queries (the position doing the looking), columns are keys. `#` is "may
# attend", `.` is "may not".

# %%
T, P = 8, 3


def draw(mask, title):
    lines = [title, "     keys j: " + " ".join(str(j) for j in range(mask.shape[1]))]
    for i, row in enumerate(mask):
        lines.append(f"  query {i}:  " + " ".join("#" if m else "." for m in row))
    return lines


pictures = [draw(masks.bidirectional(T), "bidirectional"),
            draw(masks.causal(T), "causal"),
            draw(masks.prefix(T, P), f"prefix, P = {P}")]
for line in zip(*pictures):
    print("   ".join(f"{part:<30}" for part in line))

# %% [markdown]
# The prefix mask is a causal mask with a bidirectional square `P x P` in its top-left
# corner: the first `P` positions (the *prefix*, the part of the text that is given)
# see each other in full; every later position sees only its past, as in a causal
# decoder. So an ND reads its input like an encoder and writes its output like a decoder,
# with one stack of weights.
#
# `masks.prefix` also takes one prefix length per example, giving a `(B, T, T)` mask:

# %%
per_example = masks.prefix(5, np.array([0, 2, 5]))
print("shape:", per_example.shape)
for b, Pb in enumerate([0, 2, 5]):
    print(f"P = {Pb}:", ["".join("#" if m else "." for m in row) for row in per_example[b]])

# %% [markdown]
# ## 3.2 The attention a mask produces
#
# Attention turns queries `Q` and keys `K` (one row per position) into *scores*
# `S = Q Kᵀ / sqrt(d)` and takes a softmax along each row, over the allowed keys only:
#
#     A[i, j] = exp(S[i, j]) / sum over allowed k of exp(S[i, k])   if M[i, j], else 0.
#
# Row `i` of `A` is a probability distribution over the keys query `i` may see, and the
# output at `i` is the matching average of the values, `(A V)[i]`. In minillm that is
# `F.softmax(scores, mask=M)`: the mask is applied inside the softmax, so masked entries
# are exactly 0 and the kept ones sum to exactly 1.

# %%
d = 4
Q = mm.Tensor(rng.standard_normal((T, d)))
K = mm.Tensor(rng.standard_normal((T, d)))
scores = Q @ K.T / np.sqrt(d)
attention = {name: F.softmax(scores, mask=m).numpy()
             for name, m in [("bidirectional", masks.bidirectional(T)), ("causal", masks.causal(T)),
                             (f"prefix P={P}", masks.prefix(T, P))]}
np.set_printoptions(precision=2, suppress=True, linewidth=100)
for name, A in attention.items():
    print(f"{name}:\n{A}")
    assert np.allclose(A.sum(axis=1), 1.0)
print("causal probabilities above the diagonal are exactly zero:",
      bool((attention["causal"][~masks.causal(T)] == 0).all()))

# %% [markdown]
# Notice the first row of the causal matrix: query 0 may see only key 0, so `A[0, 0] = 1`
# whatever the scores are. Early positions of a causal decoder have little to look at;
# in a prefix decoder, all positions of the prefix see the whole prefix.

# %%
if plt is not None:
    fig, axes = plt.subplots(2, 3, figsize=(9, 6))
    mask_list = [masks.bidirectional(T), masks.causal(T), masks.prefix(T, P)]
    for col, ((name, A), M) in enumerate(zip(attention.items(), mask_list)):
        axes[0, col].imshow(M, cmap="Greys", vmin=0, vmax=1)
        axes[0, col].set_title(f"mask: {name}")
        axes[1, col].imshow(A, cmap="viridis", vmin=0, vmax=1)
        axes[1, col].set_title("attention probabilities")
        for ax in axes[:, col]:
            ax.set_xlabel("key j")
            ax.set_ylabel("query i")
    fig.tight_layout()
    finish(fig, "03_masks_and_attention.png")

# %% [markdown]
# ## 3.3 The invariants
#
# Read as sets of allowed pairs `(i, j)`, the three masks are nested:
#
#     causal  ⊆  prefix(P)  ⊆  bidirectional,
#
# `prefix(P)` grows with `P`, `prefix(0)` *is* `causal` and `prefix(T)` *is*
# `bidirectional`. These facts are what make the study's adaptation experiments work
# (tutorial 8): an ND with an empty prefix computes exactly what a CD computes, so the
# same weights can switch masks. For boolean arrays, "`A ⊆ B`" is `(~A | B).all()`.
# The test below is exhaustive for every `T` up to a size and every `P`.

# %%
def subset(a, b):
    return bool((~a | b).all())


max_T = 12 if FAST else 40
checked = 0
for T_ in range(max_T + 1):
    c, full = masks.causal(T_), masks.bidirectional(T_)
    assert (masks.prefix(T_, 0) == c).all() and (masks.prefix(T_, T_) == full).all()
    previous = c
    for P_ in range(T_ + 1):
        m = masks.prefix(T_, P_)
        assert subset(c, m) and subset(m, full) and subset(previous, m)
        assert (m == m.T)[:P_, :P_].all()                   # the prefix block is symmetric
        assert (m == c)[P_:].all()                           # rows after the prefix are causal
        previous = m
        checked += 1
print(f"invariants hold for all {checked} (T, P) pairs with T <= {max_T}")

# %% [markdown]
# ## 3.4 What a mask guarantees: no information flows where it says False
#
# A mask is a promise about *information flow*: the output at position `i` must not
# depend on the input at any position `j` with `M[i, j] = False`. Autograd lets us
# measure dependence directly: `out[i]` depends on `x[j]` exactly when the gradient of
# `out[i]` with respect to `x[j]` is non-zero (for generic random weights). So we can
# build the *dependency matrix* of an attention layer, one backward pass per query, and
# compare it with the mask.

# %%
d_model = 6
Wq, Wk, Wv = (mm.Tensor(rng.standard_normal((d_model, d_model)) / np.sqrt(d_model)) for _ in range(3))


def attend(x, mask):
    """One head of self-attention: softmax(x Wq (x Wk)ᵀ / sqrt(d), mask) x Wv."""
    s = (x @ Wq) @ (x @ Wk).T / np.sqrt(d_model)
    return F.softmax(s, mask=mask) @ (x @ Wv)


def dependency(fn, n):
    """D[i, j] = True if output row i depends on input row j, measured with autograd."""
    x = mm.Tensor(rng.standard_normal((n, d_model)), requires_grad=True)
    D = np.zeros((n, n), dtype=bool)
    for i in range(n):
        x.grad = None
        fn(x)[i].sum().backward()
        D[i] = np.abs(x.grad).sum(axis=1) > 0
    return D


for name, M in [("causal", masks.causal(T)), ("prefix", masks.prefix(T, P)),
                ("bidirectional", masks.bidirectional(T))]:
    D = dependency(lambda x: attend(x, M), T)
    print(f"{name:14s} dependency matrix == mask: {bool((D == M).all())}")
    assert (D == M).all()

# %% [markdown]
# What about a stack of layers? Layer 2 at position `i` reads layer-1 outputs at the
# positions `j` it may see, and each of those read inputs at the positions *they* may
# see. So after `L` layers the dependency is the mask "composed with itself" `L` times,
# `(M^L > 0)` in boolean matrix arithmetic. For causal and prefix masks composing changes
# nothing (if `i` sees `j` and `j` sees `k`, then `i` already sees `k`): that is why one
# property test on one layer is a proof for the whole model. Exercise 2 looks at a mask
# for which this is *not* true.

# %%
two_layers = dependency(lambda x: attend(attend(x, masks.prefix(T, P)), masks.prefix(T, P)), T)
print("two prefix layers, dependency == prefix mask:", bool((two_layers == masks.prefix(T, P)).all()))
assert (two_layers == masks.prefix(T, P)).all()

# %% [markdown]
# ## 3.5 Padding, and the row with nothing to see
#
# Batches hold sequences of different lengths, padded on the right with a PAD id. No
# query should attend to a pad, so the architecture mask is ANDed with a *key padding*
# mask: `masks.key_padding(tokens, pad_id)` has shape `(B, 1, T)` and broadcasts over
# the queries; `masks.combine` does the AND.
#
# In a left-padded batch, or with a mask of your own, a query row can end up with no key
# at all. A naive softmax then computes `exp(-inf) / 0 = NaN`, and one NaN poisons the
# whole batch through the next matrix product. minillm's softmax returns a row of zeros
# instead (and a zero gradient).

# %%
pad = 0
tokens = np.array([[5, 6, 7, 8], [5, 6, pad, pad], [pad, pad, 7, 8]])
M = masks.combine(masks.causal(4), masks.key_padding(tokens, pad))
print("combined mask, shape", M.shape)
print(M.astype(int))
scores = rng.standard_normal(M.shape)
probs = F.softmax(mm.Tensor(scores), mask=M).numpy()
naive = np.exp(np.where(M, scores, -np.inf))
with np.errstate(invalid="ignore"):
    naive = naive / naive.sum(axis=-1, keepdims=True)
print("left-padded example, minillm:\n", probs[2])
print("left-padded example, naive softmax:\n", naive[2])
assert np.isfinite(probs).all() and not np.isfinite(naive).all()

# %% [markdown]
# ## 3.6 The BOS/prefix convention (the classic off-by-one)
#
# A decoder is fed its sequence shifted right by one: position 0 reads BOS and predicts
# the first token, position `i` reads token `i-1` and predicts token `i`. For prefix LM
# we cut a sequence into a *context* `c` (given) and an *output* `o` (to predict). Which
# positions belong to the bidirectional region, i.e. what is `P`?
#
# minillm's convention (documented in `minillm/data/batches.py`): `P` counts positions *of the
# sequence the model is fed*, so `P = 1 + len(c)`: BOS plus the whole context. The last
# position of the region reads the last context token and predicts `o[0]`; it sees BOS
# and the context, and nothing it has to predict. Let's look at a real batch.

# %%
text = "the cat sat on the mat because it was warm"
tok = WordTokenizer(sorted(set(text.split())), n_sentinels=8)
x = tok.encode(text)
batch = make_batch("nd", "plm", [x], tok, rng=6)
fed, tgt, Pb = batch.tokens[0], batch.targets[0], int(batch.prefix_len[0])
print(f"prefix_len P = {Pb} (BOS + {Pb - 1} context tokens)")
print(f"{'pos':>3}  {'reads':>8}  {'predicts':>8}  region  loss")
for i, (a, b) in enumerate(zip(fed, tgt)):
    print(f"{i:3d}  {tok.id_to_token(a):>8}  {tok.id_to_token(b) if b >= 0 else '-':>8}  "
          f"{'  yes ' if i < Pb else '   .  '}  {'yes' if b >= 0 else ' . '}")


# %% [markdown]
# The rule to test is **no peeking**: a position that carries a loss predicts the token
# fed at the *next* position, so it must not see any key after itself. Positions inside
# the region do see later keys, but only the last one of them carries a loss, and the
# keys it sees end at itself. Here is that check as a function, applied to the batch,
# and then to the two off-by-one mistakes.

# %%
def peeks(mask, targets, ignore_index=-100):
    """Loss positions i that may attend to some key j > i (they could read their own answer)."""
    T_ = len(targets)
    later = np.triu(np.ones((T_, T_), dtype=bool), k=1)
    bad = (mask & later).any(axis=1) & (targets != ignore_index)
    return np.flatnonzero(bad).tolist()


T_fed = len(fed)
print("minillm's P       :", Pb, "-> peeking positions", peeks(masks.prefix(T_fed, Pb), tgt))
print("P one too large   :", Pb + 1, "-> peeking positions", peeks(masks.prefix(T_fed, Pb + 1), tgt))
print("P one too small   :", Pb - 1, "-> peeking positions", peeks(masks.prefix(T_fed, Pb - 1), tgt),
      "(safe, but the last context token is read causally: the model loses some context)")
assert peeks(masks.prefix(T_fed, Pb), tgt) == [] and peeks(masks.prefix(T_fed, Pb + 1), tgt) != []

# %% [markdown]
# The same holds for every batch the library builds, for both objectives that use a
# prefix, over many random splits:

# %%
n_trials = 30 if FAST else 300
long_text = " ".join(["the cat sat on the mat because it was warm and the dog did not mind"] * 2)
tok2 = WordTokenizer(sorted(set(long_text.split())), n_sentinels=16)
seq = tok2.encode(long_text)
for objective in ("plm", "mlm"):
    for trial in range(n_trials):
        length = int(rng.integers(4, len(seq)))
        b = make_batch("nd", objective, [seq[:length]], tok2, rng=trial)
        m = masks.prefix(b.tokens.shape[1], int(b.prefix_len[0]))
        assert peeks(m, b.targets[0]) == [], (objective, trial)
        assert (b.targets[0][: int(b.prefix_len[0]) - 1] == -100).all()   # no loss before P - 1
print(f"no peeking in {2 * n_trials} ND batches (PLM and MLM)")

# %% [markdown]
# ## 3.7 What a mask saves: work
#
# A causal mask throws away almost half of the scores, so a kernel that computed them all
# and then zeroed them would waste almost half its products. minillm's attention kernel
# (`minillm/fast/attention.py`) skips them in blocks. Query rows go in blocks of 48, and
# a block computes only the columns up to the last key any of its rows keeps. In the
# backward it reads that limit off P, which is exactly 0 wherever the mask said False. The
# results match the plain NumPy twin, which computes everything; they are not bit for bit
# equal, because sums over fewer columns round in a different order. At T = 256 a causal
# head needs about 62% of the products; the share tends to 1/2 as T grows. On the build
# machine the forward below took 5.0-5.5 ms without a mask and 3.8-4.3 ms with the causal
# mask (the softmax and the other work per row are saved less than the products).

# %%
import time

from minillm import kernels
from minillm.engine import reference

T_long, heads = 256, 4
q, k, v = (rng.standard_normal((8, T_long, 64 * heads)).astype(np.float32) for _ in range(3))
threads = kernels.num_threads()
kernels.set_num_threads(1)   # one thread: timings that other programs on the machine disturb less
for name, m in (("no mask", None), ("causal", masks.causal(T_long))):
    y, p = kernels.attention_forward(q, k, v, heads, m)
    y_ref, p_ref = reference.attention_forward(q, k, v, heads, m)
    assert np.allclose(p, p_ref, atol=1e-6) and np.allclose(y, y_ref, atol=1e-4)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        kernels.attention_forward(q, k, v, heads, m)
        times.append(time.perf_counter() - start)
    print(f"{name:8s} forward, 8 x {heads} heads of T = {T_long}, 1 thread: {np.median(times) * 1e3:.2f} ms")
kernels.set_num_threads(threads)
assert np.all(np.triu(p[0, 0], 1) == 0)   # causal: nothing above the diagonal

# %% [markdown]
# ## Exercises
#
# The bodies below hold reference answers so that the test suite can check them; to
# practise, replace a body with your own and run the file again.
#
# 1. **Build the prefix mask yourself.** Write `my_prefix(T, P)` with NumPy only (no
#    `minillm.masks`). Checked against `masks.prefix` for every `T <= 10` and `P <= T`.
# 2. **Masks that are not closed under composition.** A *local* mask lets query `i` see
#    keys `i - w + 1 .. i` (a window of `w`). Write `reach(mask, layers)`: the boolean
#    matrix of which inputs can influence which outputs after `layers` attention layers
#    with that mask. Checked against dependencies measured with autograd.
# 3. **Count the pairs.** Write `n_allowed(T, P)`: how many `True` entries `prefix(T, P)`
#    has, as a closed formula (no building the mask).
# 4. **The largest safe prefix.** For a PLM example whose context has `n` tokens (decoder
#    fed `[BOS] + c + o[:-1]`), write `largest_safe_prefix_len(n)`: the largest `P` with
#    no peeking. Checked for safety and for maximality.

# %%
def my_prefix(T, P):
    i, j = np.indices((T, T))
    return (j <= i) | ((i < P) & (j < P))


def reach(mask, layers):
    R = np.eye(len(mask), dtype=bool)
    for _ in range(layers):
        R = (mask.astype(int) @ R.astype(int)) > 0
    return R


def n_allowed(T, P):
    return T * (T + 1) // 2 + P * (P - 1) // 2


def largest_safe_prefix_len(n):
    return 1 + n


# %%
def local_mask(T, w):
    i, j = np.indices((T, T))
    return (j <= i) & (j > i - w)


def check_my_prefix(fn):
    for T_ in range(11):
        for P_ in range(T_ + 1):
            mine = np.asarray(fn(T_, P_))
            assert mine.dtype == bool and mine.shape == (T_, T_), f"T={T_}, P={P_}: need a ({T_}, {T_}) bool array"
            assert (mine == masks.prefix(T_, P_)).all(), f"wrong mask for T={T_}, P={P_}"


def check_reach(fn):
    for T_, w, layers in [(7, 2, 1), (7, 2, 3), (9, 3, 2), (6, 1, 4)]:
        M = local_mask(T_, w)

        def stack(x):
            for _ in range(layers):
                x = attend(x, M)
            return x

        measured = dependency(stack, T_)
        mine = np.asarray(fn(M, layers))
        assert (mine == measured).all(), f"reach is wrong for T={T_}, window {w}, {layers} layers"


def check_n_allowed(fn):
    for T_ in range(15):
        for P_ in range(T_ + 1):
            assert fn(T_, P_) == int(masks.prefix(T_, P_).sum()), f"wrong count for T={T_}, P={P_}"


def check_largest_safe_prefix_len(fn):
    for n in range(1, 9):
        c = np.arange(10, 10 + n)                      # context tokens
        o = np.arange(50, 55)                           # output tokens, EOS omitted for brevity
        fed_len = 1 + n + len(o) - 1
        targets = np.concatenate([np.full(n, -100), o])
        Pn = fn(n)
        assert peeks(masks.prefix(fed_len, Pn), targets) == [], f"P={Pn} lets a loss position peek (n={n})"
        assert peeks(masks.prefix(fed_len, Pn + 1), targets) != [], f"P={Pn} is safe but not the largest (n={n})"


def check_exercises():
    check_my_prefix(my_prefix)
    check_reach(reach)
    check_n_allowed(n_allowed)
    check_largest_safe_prefix_len(largest_safe_prefix_len)
    print("all four exercises check out")


check_exercises()


# %% [markdown]
# The checks reject plausible wrong answers:

# %%
wrong_answers = [
    (check_my_prefix, lambda T_, P_: my_prefix(T_, P_ + 1) if P_ < T_ else my_prefix(T_, P_)),  # BOS counted twice
    (check_reach, lambda M, L: M),                     # forgets that layers compose
    (check_n_allowed, lambda T_, P_: T_ * (T_ + 1) // 2 + P_ * P_),
    (check_largest_safe_prefix_len, lambda n: n),       # forgets BOS: safe, but not the largest
]
assert_all_rejected(wrong_answers)
