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
# # 9. Why decoder-only? The low-rank argument, tested numerically
#
# Almost every large language model today is a causal decoder. The study of Wang et al.
# (2022) gives one empirical reason: a causal decoder trained with full language
# modelling is the best zero-shot model straight out of pretraining. There is also a
# *theoretical* argument, popularised by Su Jianlin (kexue.fm, 2023), about the rank of
# the attention matrix:
#
# - Bidirectional attention is `A = softmax(Q Kᵀ / sqrt(d))` with `Q`, `K` of shape
#   `n x d`. Before the softmax the logits have rank at most `d`, and usually `n >> d`
#   (a head of width 64 reading thousands of tokens). So `A` *may* end up close to a
#   low-rank matrix, which limits what one head can express.
# - Causal attention is lower triangular, and its diagonal is strictly positive (every
#   position sees itself). A triangular matrix's determinant is the product of its
#   diagonal, so `det A > 0`: causal attention is **always full rank**.
#
# Claims like this deserve numbers. This tutorial checks the exact parts exactly, then
# measures how close to low rank the matrices really get, and finds that the answer
# depends on the scale of the logits. We use `minillm.study.rank`, which holds the three rank
# measures and a synthetic experiment with a control.

# %%
import math

import numpy as np

from minillm.study import rank as R

from _setup import FAST, finish, plt, assert_all_rejected  # fast mode (MINILLM_TUTORIAL_FAST), optional matplotlib


rng = np.random.default_rng(0)
n, d = (24, 4) if FAST else (64, 8)

# %% [markdown]
# ## 9.1 Three ways to count rank
#
# Mathematically a matrix has rank `r` if exactly `r` of its singular values are
# non-zero. In floating point nothing is exactly zero, so we need softer counts:
#
# - **numerical rank**: singular values above `rtol x` the largest (here `rtol = 1e-6`);
#   a hard count, sensitive to the threshold;
# - **entropy rank**: normalise the singular values into a distribution `p` and take
#   `exp(entropy(p))`; equals `r` when `r` values are equal and the rest zero, and
#   degrades smoothly;
# - **stable rank**: `||A||_F² / ||A||_2²`, how many directions carry the energy;
#   never above the rank, and not fooled by many tiny singular values.
#
# A quick calibration on matrices whose rank we know:

# %%
low = rng.standard_normal((n, 3)) @ rng.standard_normal((3, n))
noisy = low + 1e-3 * rng.standard_normal((n, n))
for name, M in [("identity", np.eye(n)), ("rank 3", low), ("rank 3 + 1e-3 noise", noisy),
                ("ones", np.ones((n, n)))]:
    r = R.ranks(M)
    print(f"{name:20s} numerical {r['numerical']:3d}   entropy {r['entropy']:6.2f}   stable {r['stable']:6.2f}")

# %% [markdown]
# The noisy rank-3 matrix is full rank, mathematically and (at this threshold)
# numerically, yet its entropy and stable ranks still say "about 3". Keep that in
# mind: "full rank" and "expressive" are not the same thing.
#
# ## 9.2 The exact facts
#
# **Logits.** `Q Kᵀ` has rank at most `d`:

# %%
Q, K = rng.standard_normal((n, d)), rng.standard_normal((n, d))
logits = Q @ K.T / math.sqrt(d)
print(f"n = {n}, d = {d}: numerical rank of the logits = {R.numerical_rank(logits)}")
assert R.numerical_rank(logits) == d

# %% [markdown]
# **Zero logits** (every score equal) are the extreme case. Bidirectional attention
# becomes the uniform matrix `11ᵀ / n`, rank 1; causal attention becomes
# `A[i, j] = 1 / (i + 1)` for `j <= i`, full rank with determinant `1 / n!`.

# %%
zero = np.zeros((n, n))
A_bi = R.softmax_attention(zero, "bidirectional")
A_causal = R.softmax_attention(zero, "causal")
i, j = np.indices((n, n))
assert np.allclose(A_bi, np.ones((n, n)) / n)
assert np.allclose(A_causal, np.where(j <= i, 1.0 / (i + 1), 0.0))
sign, logdet = np.linalg.slogdet(A_causal)
print(f"zero logits: rank(bidirectional) = {R.numerical_rank(A_bi)}, rank(causal) = {R.numerical_rank(A_causal)}")
print(f"log det(causal) = {logdet:.4f} = -log({n}!) = {-math.lgamma(n + 1):.4f}")
assert R.numerical_rank(A_bi) == 1 and R.numerical_rank(A_causal) == n
assert sign > 0 and abs(logdet + math.lgamma(n + 1)) < 1e-8

# %% [markdown]
# **The determinant of causal attention** is the product of its diagonal for *any*
# logits, because the matrix is triangular: `log det A = sum_i log A[i, i]`. Each
# `A[i, i] > 0` because `exp` is positive. The theorem needs only those two premises
# (exact zeros above the diagonal, a positive diagonal), which we can check exactly; and
# we compare the formula with NumPy's general-purpose `slogdet` (an LU factorisation with
# row pivoting, which knows nothing about triangles):

# %%
for scale in (0.1, 1.0, 3.0):
    A = R.softmax_attention(scale * logits, "causal")
    assert (np.triu(A, 1) == 0).all() and (np.diag(A) > 0).all()   # the premises, exactly
    sign, logdet = np.linalg.slogdet(A)
    diag_sum = np.log(np.diag(A)).sum()
    print(f"scale {scale:3}: sum of log diagonal = {diag_sum:9.3f}, LU slogdet = {logdet:9.3f}, "
          f"smallest diagonal entry {np.diag(A).min():.1e}")
    if scale <= 1.0:
        assert sign > 0 and abs(logdet - diag_sum) < 1e-4 * abs(diag_sum)

# %% [markdown]
# At small scales the two agree. At scale 3 the general LU can be far off: the diagonal
# spans many orders of magnitude, pivoting reorders rows, and the tiny pivots are swamped
# by rounding. The sum of the log diagonal is still right (it is a theorem, not a
# computation that can lose digits). Causal attention is *always invertible*, but at
# large logit scales it is *nearly singular*: a first hint of section 9.3.
#
# **The prefix mask** sits in between. Order positions as "prefix, then the rest": the
# matrix is block lower triangular,
#
#     A = [[A_PP,  0],
#          [ X  ,  L]]
#
# where `A_PP` is the bidirectional attention *within* the prefix and `L` is lower
# triangular with a positive diagonal. So `rank(A) = rank(A_PP) + (n - P)`: the part after
# the prefix is always full rank, and any rank deficit lives in the prefix block.
#
# As before, the premises can be checked exactly (a zero upper-right block, a triangular
# `L` with a positive diagonal). The formula itself we compare with hard rank counts:

# %%
P = n // 2
print(f"n = {n}, P = {P}")
for scale in (0.0, 0.01, 0.1, 1.0):
    A = R.softmax_attention(scale * logits, "prefix", prefix=P)
    L_block = A[P:, P:]
    assert (A[:P, P:] == 0).all() and (np.triu(L_block, 1) == 0).all() and (np.diag(L_block) > 0).all()
    lhs, rhs = R.numerical_rank(A), R.numerical_rank(A[:P, :P]) + (n - P)
    print(f"scale {scale:4}: rank(A) = {lhs:3d}, rank(A_PP) + (n - P) = {rhs:3d}"
          + ("" if lhs == rhs else "   <- the hard count disagrees"))
    if scale <= 0.01:
        assert lhs == rhs
assert R.numerical_rank(R.softmax_attention(zero, "prefix", prefix=P)) == 1 + n - P

# %% [markdown]
# At zero logits the formula gives exactly `1 + n - P`. Where a hard count disagrees
# with the formula, the formula is not wrong: `numerical_rank` measures each matrix
# against *its own* largest singular value, and at larger scales the triangular block
# has singular values near the `1e-6` cut-off. Hard counts are fragile; that is why we
# also look at entropy and stable rank.

# %% [markdown]
# ## 9.3 How low is "low rank"? It depends on the logit scale
#
# The exact facts say causal is full rank, and bidirectional *can* be rank 1. But the
# softmax is not linear: `exp` of a rank-`d` matrix is generally full rank (exercise 4
# builds one from `d = 1`). What happens between the extremes is a measurement.
#
# `R.synthetic` draws `Q, K ~ N(0, 1)`, forms logits `scale * Q Kᵀ / sqrt(d)`, and
# measures the three ranks of bidirectional, causal and prefix attention, averaged over
# seeds. The control is bidirectional *linear* attention (`phi(Q) phi(K)ᵀ` with rows
# normalised, `phi = elu + 1`), whose rank is at most `d` exactly, because there is no
# nonlinearity between the product and the output.

# %%
scales = (0.01, 0.1, 0.3, 1.0, 3.0, 10.0)
rows = R.synthetic(n=n, d=d, scales=scales, seeds=2 if FAST else 5)
print(f"n = {n}, d = {d}, prefix = n/2")
print(R.format_table(rows, ["scale", "kind", "numerical", "entropy", "stable"]))
by = {(r["scale"], r["kind"]): r for r in rows}
assert all(by[s, "linear (control)"]["numerical"] <= d for s in scales)
assert by[0.01, "bidirectional"]["entropy"] < 1.5 and by[0.01, "causal"]["entropy"] > 5

# %% [markdown]
# How to read it:
#
# - **Tiny logits** (scale 0.01): the bidirectional matrix is almost `11ᵀ/n`. Its
#   entropy and stable ranks are about 1; its numerical rank is higher only because the
#   tiny deviations from uniform clear the `1e-6` threshold. The causal matrix stays
#   genuinely high rank: the argument's picture.
# - **Unit-scale logits**: the bidirectional matrix is about as high rank as the causal
#   one by every measure (compare the entropy and stable ranks at scale 1). A softmax
#   head at a sensible temperature is *not* stuck near rank `d`: the control, stuck at
#   exactly `d`, shows what real low rank looks like.
# - **Large logits**: rows become nearly one-hot. The causal matrix's *numerical* rank
#   drops below `n`: it is still invertible in exact arithmetic, but its smallest
#   singular values sink below the threshold. At scale 10 all softmax kinds lose rank
#   together, because many queries pick the same favourite key.
#
# The condition number (largest over smallest singular value) shows both failure modes:
# bidirectional attention is ill-conditioned at *small* scales (nearly rank 1), causal
# attention at *large* ones (nearly singular triangle).

# %%
print(f"{'scale':>6} {'cond(causal)':>14} {'cond(bidirectional)':>20}")
for scale in (0.1, 1.0, 3.0, 10.0):
    conds = [np.linalg.cond(R.softmax_attention(scale * logits, kind)) for kind in ("causal", "bidirectional")]
    print(f"{scale:6} {conds[0]:14.3g} {conds[1]:20.3g}")

# %% [markdown]
# So the argument is right about what it proves (causal attention can never collapse in
# rank) and silent about what matters in practice (how far from collapse a *trained*
# bidirectional head actually is). Trained models set their own logit scales, so the
# honest test is to measure the attention of trained models, layer by layer, with the
# same three measures: `R.attention_ranks` takes the probabilities a model records
# (`model.attention_probes(...)`, see tutorial 4) and returns exactly this table per
# layer and head.

# %%
if plt is not None:
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), sharey=True)
    for ax, scale in zip(axes, (0.01, 1.0, 10.0)):
        Ls = scale * logits
        for kind in ("bidirectional", "causal", "prefix"):
            ax.semilogy(R.singular_values(R.softmax_attention(Ls, kind, prefix=P)), label=kind)
        ax.semilogy(R.singular_values(R.linear_attention(math.sqrt(scale) * Q, math.sqrt(scale) * K)),
                    "k--", label="linear (control)")
        ax.axhline(1e-6, color="gray", lw=0.5)
        ax.set_title(f"logit scale {scale}")
        ax.set_xlabel("index")
    axes[0].set_ylabel("singular value")
    axes[0].set_ylim(1e-18, 1e2)
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    finish(fig, "09_singular_values.png")

# %% [markdown]
# ## 9.4 Trained models
#
# Trained heads choose their own logit scales, so the synthetic table cannot tell us
# where a real model sits. Here we train two small models on the built-in world for a
# short budget, a causal decoder (CD:FLM) and an encoder-decoder (ED:PLM, whose encoder
# is bidirectional), feed both the same text, record their attention with
# `model.attention_probes(...)`, and measure every head with `R.attention_ranks`. The
# sequences are longer than a head is wide (`n > d_head`), so the argument applies.
# This is a measurement at toy scale, not a verdict: read it, rerun it with other
# budgets, seeds and sizes, and see whether the picture holds.

# %%
import tempfile

from minillm.train.trainer import TrainConfig, Trainer, load_corpus

budget = 4_000 if FAST else 60_000
trained = {}
for arch, objective in (("cd", "flm"), ("ed", "plm")):
    cfg = TrainConfig(arch=arch, objective=objective, preset="smoke", seed=0, tokens=budget,
                      d_model=32, n_heads=2, n_layers=2, d_ff=64, lr=3e-3, eval_every=0)
    with tempfile.TemporaryDirectory() as out:
        run = Trainer(cfg, load_corpus(cfg.resolved()), out_dir=out, progress=False)
        run.fit()
    trained[arch] = run
    print(f"{arch}:{objective}: {run.step} steps, {run.tokens_seen:,} tokens seen")

# %% [markdown]
# The probe text: validation documents joined into one stream and cut into rows of `n`
# tokens. The CD reads each row causally; the ED's encoder reads the same row
# bidirectionally (its decoder gets just BOS; we only look at the encoder).

# %%
import minillm as mm

n_probe = 24
stream = np.concatenate(trained["cd"].corpus.val)
rows_of_text = stream[: (len(stream) // n_probe) * n_probe].reshape(-1, n_probe)[:8]
bos = np.full((len(rows_of_text), 1), trained["ed"].corpus.tokenizer.bos_id)


def layer_means(rows):
    """Average the per-head rank rows of R.attention_ranks over heads, per layer."""
    out = {}
    for r in rows:
        out.setdefault(r["layer"], []).append(r)
    return [{"layer": k, **{m: float(np.mean([r[m] for r in v])) for m in ("numerical", "entropy", "stable")}}
            for k, v in out.items()]


table = []
for label, model_of in (("trained", lambda a: trained[a].model),
                        ("at init", lambda a: mm.build_model(a, trained[a].model.config, seed=0))):
    cd_probes = model_of("cd").attention_probes(rows_of_text)
    ed_probes = model_of("ed").attention_probes(rows_of_text, bos)
    encoder = {k: v for k, v in ed_probes.items() if k.startswith("encoder")}
    for r in layer_means(R.attention_ranks(cd_probes)):
        table.append({"model": f"CD ({label})", "mask": "causal", **r})
    for r in layer_means(R.attention_ranks(encoder)):
        table.append({"model": f"ED encoder ({label})", "mask": "bidirectional", **r})
print(f"n = {n_probe}, d_head = {trained['cd'].model.config.d_model // trained['cd'].model.config.n_heads}, "
      f"averaged over heads and {len(rows_of_text)} rows")
print(R.format_table(table, ["model", "layer", "mask", "numerical", "entropy", "stable"]))
assert all(0 < r["entropy"] <= n_probe + 1e-9 and 1 <= r["numerical"] <= n_probe for r in table)

# %% [markdown]
# At initialisation all logits are tiny, so every bidirectional head is close to the
# uniform `11ᵀ/n`: entropy rank near 1, exactly the zero-logit picture of 9.2, while the
# causal heads are full rank by construction. The "trained" rows show how far training
# moved each kind of head from that picture (run the full-size version too, and
# compare): if the trained encoder heads keep an entropy rank near 1 while the causal
# heads stay high, the bidirectional heads *are* nearly rank 1. But note what this can
# and cannot say. Two small models, one seed, one budget; the ED may also learn the
# world's facts at another pace than the CD at toy budgets, so its attention may simply
# not have sharpened yet. Whether the rank gap *causes* the difference in
# quality needs the same measurement across sizes, seeds and budgets, and on the
# trained models of the full study.

# %% [markdown]
# ## Exercises
#
# The bodies below hold reference answers so that the test suite can check them; to
# practise, replace a body with your own and run the file again.
#
# 1. **A determinant in closed form.** Write `causal_logdet_zero(n)`: `log det` of causal
#    attention with all-zero logits, without building the matrix.
# 2. **Prefix rank at zero logits.** Write `prefix_rank_zero(n, P)`: the rank of prefix
#    attention with all-zero logits, for `0 <= P <= n`.
# 3. **Softmax forgets row shifts.** Write `rank_one_logits(n)`: an `n x n` logit matrix
#    that is *not* constant, yet whose bidirectional softmax attention has rank exactly 1.
# 4. **The nonlinearity lifts rank.** Write `full_rank_from_d1(n)` returning `(Q, K)` of
#    shape `(n, 1)` each (so the logits have rank 1) whose bidirectional softmax
#    attention has full numerical rank `n`.

# %%
def causal_logdet_zero(n):
    return -sum(math.log(i + 1) for i in range(n))        # diagonal entries 1/(i+1)


def prefix_rank_zero(n, P):
    return (n - P) + (1 if P > 0 else 0)                  # A_PP = 11ᵀ/P has rank 1


def rank_one_logits(n):
    a, b = np.arange(n)[:, None], np.arange(n)[None, :]
    return 0.3 * a + 0.5 * b   # a row shift a_i cancels in the softmax; every row becomes softmax(b)


def full_rank_from_d1(n):
    x = np.linspace(0.0, 1.0, n)[:, None]
    return x * 2.0, x * 2.0                            # exp(4 x_i x_j): a Vandermonde matrix in exp(4 x_i)


# %%
def check_causal_logdet_zero(fn):
    for m in (1, 2, 5, 17, 60):
        _, ref = np.linalg.slogdet(R.softmax_attention(np.zeros((m, m)), "causal"))
        assert abs(fn(m) - ref) < 1e-8, f"n = {m}: expected {ref:.6f}, got {fn(m)}"


def check_prefix_rank_zero(fn):
    for m in (1, 4, 9):
        for p in range(m + 1):
            ref = R.numerical_rank(R.softmax_attention(np.zeros((m, m)), "prefix", prefix=p))
            assert fn(m, p) == ref, f"n = {m}, P = {p}: rank is {ref}, got {fn(m, p)}"


def check_rank_one_logits(fn):
    for m in (4, 10, 30):
        Lg = np.asarray(fn(m), dtype=float)
        assert Lg.shape == (m, m), f"need an ({m}, {m}) matrix"
        assert np.ptp(Lg) > 1e-3, "the logits must not be constant"
        A = R.softmax_attention(Lg, "bidirectional")
        assert R.numerical_rank(A) == 1, f"rank of the attention is {R.numerical_rank(A)}, not 1"


def check_full_rank_from_d1(fn):
    for m in (4, 6):
        Qm, Km = (np.asarray(t, dtype=float) for t in fn(m))
        assert Qm.shape == (m, 1) and Km.shape == (m, 1), "Q and K must have shape (n, 1)"
        A = R.softmax_attention(Qm @ Km.T, "bidirectional")
        assert R.numerical_rank(A) == m, f"rank is {R.numerical_rank(A)}, not {m}"


def check_exercises():
    check_causal_logdet_zero(causal_logdet_zero)
    check_prefix_rank_zero(prefix_rank_zero)
    check_rank_one_logits(rank_one_logits)
    check_full_rank_from_d1(full_rank_from_d1)
    print("all four exercises check out")


check_exercises()


# %% [markdown]
# The checks reject plausible wrong answers:

# %%
wrong_answers = [
    (check_causal_logdet_zero, lambda m: -m * math.log(m)),             # as if every diagonal were 1/n
    (check_prefix_rank_zero, lambda m, p: m - p),                         # forgets the prefix block
    (check_rank_one_logits, lambda m: np.outer(np.arange(m), np.arange(m)) * 0.5),  # rank-1 logits, not attention
    (check_full_rank_from_d1, lambda m: (np.ones((m, 1)), np.linspace(0, 1, m)[:, None])),  # all rows equal
]
assert_all_rejected(wrong_answers)
