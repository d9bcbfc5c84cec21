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
# # 10. Property-based testing your own model
#
# An example-based test checks one input you thought of. A *property-based* test states
# something that must hold for **every** input of some kind ("softmax rows sum to 1",
# "no output depends on a future token") and lets a library search for a counterexample.
# When it finds one it *shrinks* it: it simplifies the failing input step by step while
# the test still fails, and reports the smallest one it reached. A shrunk counterexample
# usually names the bug.
#
# Models are a good fit: their correctness is mostly properties (invariances,
# masks, gradients), and their bugs hide in corners (huge logits, empty rows, a prefix of
# length 0 or T) that nobody writes examples for. We use
# [hypothesis](https://hypothesis.readthedocs.io) with the strategies and gradient checker
# in `minillm.testing`. In a real project each property below is a `test_...` function
# collected by pytest; here we call them directly.

# %%
import warnings

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings, strategies as st
from hypothesis.errors import HypothesisException
from hypothesis.extra import numpy as hnp

import minillm as mm
from minillm import functional as F
from minillm import masks
from minillm.testing import arrays, broadcastable_pair, gradcheck, shapes

from _setup import FAST, assert_all_rejected  # fast mode (MINILLM_TUTORIAL_FAST), optional matplotlib
EXAMPLES = 15 if FAST else 100   # examples per property


SHRINK = True   # the exercise checks turn shrinking off: they only need to know *whether* a property fails


def prop(**kwargs):
    """Our settings for every property: reproducible (derandomize), no per-example deadline."""
    phases = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if SHRINK else [])
    return settings(max_examples=kwargs.pop("max_examples", EXAMPLES), deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow], database=None, phases=phases, **kwargs)


def falsified(property_fn):
    """Run a property; return None if it holds, else the shrunk counterexample hypothesis reports."""
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            property_fn()
    except HypothesisException:
        raise                  # a broken strategy or setting is our bug, not a counterexample
    except Exception as err:   # hypothesis re-raises the test's own error, with the example attached
        notes = [n for n in getattr(err, "__notes__", []) if "Falsifying" in n or "=" in n]
        return " ".join(notes) or f"{type(err).__name__}: {err}"
    return None


# %% [markdown]
# ## 10.1 Strategies: descriptions of inputs
#
# A *strategy* describes a set of inputs and how to draw from it. `minillm.testing`
# provides the ones a tensor library needs:
#
# - `arrays(shape, dtype, low, high)`: finite float arrays with entries in `[low, high]`;
# - `shapes(min_dims, max_dims, ...)`: array shapes;
# - `broadcastable_pair()`: two arrays whose shapes broadcast together (ranks may differ).
#
# Strategies compose: `shapes().flatmap(lambda s: arrays(s))` first draws a shape, then an
# array of that shape. Let's look at what `broadcastable_pair` produces:

# %%
seen = []


@prop(max_examples=8)
@given(broadcastable_pair())
def collect(pair):
    seen.append((pair[0].shape, pair[1].shape))


collect()
for sa, sb in seen:
    print(f"  {str(sa):>12} with {str(sb):<12} -> {np.broadcast_shapes(sa, sb)}")

# %% [markdown]
# ## 10.2 Gradients, for every shape
#
# Tutorial 1 checked gradients at a few points. As a property, "the gradient of `a * b`
# is right" covers every pair of broadcastable shapes, including the awkward ones
# (scalars, size-1 axes, rank differences), which is exactly where broadcasting
# gradients go wrong.

# %%
@prop()
@given(broadcastable_pair())
def prop_mul_gradient(pair):
    a, b = pair
    assert gradcheck(lambda x, y: x * y, a, b)


@prop()
@given(broadcastable_pair(low=0.5, high=3.0))
def prop_div_gradient(pair):
    a, b = pair
    assert gradcheck(lambda x, y: (x / y).tanh(), a, b)


for p in (prop_mul_gradient, prop_div_gradient):
    result = falsified(p)
    print(f"{p.__name__}: {'holds' if result is None else 'FAILS ' + result}")
    assert result is None

# %% [markdown]
# Note the domain in the second property: `b` is drawn from `[0.5, 3]`, away from the
# pole of `1/b`. Choosing the domain is part of stating a property.
#
# ## 10.3 Shrinking: what a failure looks like
#
# Here is a property that is *false*: "log-sum-exp computed the textbook way,
# `log(sum(exp(x)))`, is finite". For small inputs it holds; hypothesis searches,
# finds an input where `exp` overflows, and shrinks it.

# %%
@prop()
@given(shapes(min_dims=1, max_dims=1, max_side=5).flatmap(lambda s: arrays(s, low=-1000, high=1000)))
def prop_naive_logsumexp_is_finite(x):
    assert np.isfinite(np.log(np.exp(x).sum()))


report = falsified(prop_naive_logsumexp_is_finite)
print("counterexample:", report)
assert report is not None

# %% [markdown]
# The shrunk input is a single entry a little above 709.78, which is `log` of the
# largest float64: the counterexample *is* the explanation. The fix is to subtract the
# maximum first (exercise 3 asks you to do that on `Tensor`s, with its gradient).
#
# ## 10.4 Properties of the masked softmax
#
# Three properties pin `F.softmax(x, mask=m)` down almost completely: masked entries are
# exactly 0; a row with at least one kept entry sums to 1; a row with nothing kept is all
# zeros (never NaN). Plus an invariance: adding a constant to a row changes nothing.
# We draw the mask with its own strategy, `st.data()` letting the test draw inside.

# %%
def masked_rows(max_side=6, low=-50.0, high=50.0):
    return shapes(min_dims=2, max_dims=2, max_side=max_side).flatmap(
        lambda s: st.tuples(arrays(s, low=low, high=high), hnp.arrays(np.bool_, s)))


@prop()
@given(masked_rows(), st.floats(-100, 100))
def prop_masked_softmax(xm, shift):
    x, m = xm
    y = F.softmax(mm.Tensor(x), mask=m).numpy()
    assert np.isfinite(y).all()
    assert (y[~m] == 0).all()
    kept = m.any(axis=1)
    assert np.allclose(y[kept].sum(axis=1), 1.0)
    assert (y[~kept] == 0).all()
    y_shifted = F.softmax(mm.Tensor(x + shift), mask=m).numpy()
    assert np.allclose(y, y_shifted, atol=1e-9)


assert falsified(prop_masked_softmax) is None
print("masked softmax: all four properties hold")

# %% [markdown]
# ## 10.5 No leakage, stated as a property
#
# The strongest property of an attention mask is about information flow: *if the mask
# says query `i` may not see key `j`, then changing the input at `j` must not change the
# output at `i`*. We state it for one attention head written with minillm's ops, for
# every length `T`, every prefix length `P`, every position `j` and random weights:

# %%
def attention(x, mask, w):
    """One head: softmax(x Wq (x Wk)ᵀ / sqrt(d), mask) x Wv."""
    Wq, Wk, Wv = w
    s = (x @ Wq) @ (x @ Wk).T / np.sqrt(Wq.shape[0])
    return F.softmax(s, mask=mask) @ (x @ Wv)


def changed_rows(fn, x, j, rng):
    """Which output rows change when input row j is replaced by a random one."""
    x2 = x.copy()
    x2[j] = rng.standard_normal(x.shape[1])
    return np.abs(fn(x2) - fn(x)).max(axis=1) > 1e-12


@prop()
@given(st.integers(1, 10).flatmap(lambda T: st.tuples(st.just(T), st.integers(0, T), st.integers(0, T - 1))),
       st.integers(0, 2 ** 32 - 1))
def prop_attention_respects_prefix_mask(tpj, seed):
    T, P, j = tpj
    rng = np.random.default_rng(seed)
    w = [mm.Tensor(rng.standard_normal((4, 4))) for _ in range(3)]
    M = masks.prefix(T, P)
    x = rng.standard_normal((T, 4))
    changed = changed_rows(lambda v: attention(mm.Tensor(v), M, w).numpy(), x, j, rng)
    assert not (changed & ~M[:, j]).any(), f"rows {np.flatnonzero(changed & ~M[:, j])} saw key {j}"


assert falsified(prop_attention_respects_prefix_mask) is None
print("one attention head respects the prefix mask for every T <= 10, P, j")

# %% [markdown]
# ## 10.6 No leakage in a whole model
#
# The same property for a complete model: build a tiny non-causal decoder (ND) with
# `mm.build_model`, change one *token*, and check that no logit moved where the mask
# forbids it. Three details make the test trustworthy:
#
# - **float64**, so that "unchanged" can mean *exactly* unchanged;
# - **every position**: for one drawn sequence and prefix length we change each token in
#   turn, so the test measures the whole dependency matrix instead of hoping that
#   hypothesis picks the one position where a bug shows;
# - **roughened weights**: the GPT-2 initialisation is small (std 0.02), so real
#   dependencies can be tiny. Adding noise to every weight makes every allowed
#   dependency large, and the test checks both directions: forbidden pairs do not move,
#   the changed position itself does (so the test is not vacuous);
# - every prefix length from 0 to T, including both ends, which hypothesis tries early.

# %%
V = 11
config = mm.ModelConfig(vocab_size=V, d_model=16, n_heads=2, n_layers=2, d_ff=32, max_len=8, dtype="float64")
model = mm.build_model("nd", config, seed=0)
noise = np.random.default_rng(1)
for p in model.parameters():
    p.data = p.data + 0.3 * noise.standard_normal(p.shape)


def nd_logits(tokens, P):
    with mm.no_grad():
        return model(tokens, prefix_len=P).numpy()


token_seqs = st.integers(1, config.max_len).flatmap(
    lambda T: st.lists(st.integers(0, V - 1), min_size=T, max_size=T))


def moved_by_each_token(logits_fn, tokens, P, shift):
    """moved[i, j] = how far the logits at position i move when token j is changed."""
    base = logits_fn(tokens, P)[0]
    T = tokens.shape[1]
    moved = np.zeros((T, T))
    for j in range(T):
        other = tokens.copy()
        other[0, j] = (other[0, j] + shift) % V
        moved[:, j] = np.abs(logits_fn(other, P)[0] - base).max(axis=-1)
    return moved


@prop(max_examples=EXAMPLES // 2)
@given(token_seqs, st.data())
def prop_nd_has_no_leakage(toks, data):
    tokens = np.array([toks])
    T = len(toks)
    P = data.draw(st.integers(0, T), label="prefix_len")
    moved = moved_by_each_token(nd_logits, tokens, P, data.draw(st.integers(1, V - 1), label="shift"))
    allowed = masks.prefix(T, P)
    assert (moved[~allowed] == 0).all(), f"forbidden (query, key) pairs moved: {np.argwhere(~allowed & (moved > 0))}"
    assert (np.diag(moved) > 1e-6).all(), "changing a token did not even change its own position"


assert falsified(prop_nd_has_no_leakage) is None
print("the ND model has no leakage, for every length, prefix length and position tried")

# %% [markdown]
# One more property ties the architectures together: a CD and an ND built from the same
# seed have the same weights, and an ND with an empty prefix computes *exactly* what the
# CD computes (`prefix(T, 0) == causal(T)`; tutorial 3). Adaptation (tutorial 8) relies
# on it.

# %%
cd = mm.build_model("cd", config, seed=0)
nd = mm.build_model("nd", config, seed=0)


@prop(max_examples=EXAMPLES // 2)
@given(token_seqs)
def prop_nd_with_empty_prefix_is_cd(toks):
    tokens = np.array([toks])
    with mm.no_grad():
        assert (nd(tokens, prefix_len=0).numpy() == cd(tokens).numpy()).all()


assert falsified(prop_nd_with_empty_prefix_is_cd) is None
print("ND with prefix_len=0 equals CD, bit for bit")

# %% [markdown]
# ## Exercises
#
# Here you write *properties*. A property is only useful if it fails on buggy code, so
# each check runs your property twice: against the real implementation (it must hold)
# and against deliberately broken versions, *mutants* (it must fail on each). The bodies
# below hold reference answers so that the test suite can check them.
#
# 1. **Softmax properties.** Write `softmax_property(softmax_fn)` returning a hypothesis
#    property (a `@given` function of no arguments) about `softmax_fn(x, mask)`, which
#    takes and returns NumPy arrays. The mutants: no max-subtraction (overflows); masked
#    entries zeroed *after* normalising; NaN instead of zeros for empty rows.
# 2. **No peeking.** Write `no_leak_property(model_fn)` about
#    `model_fn(tokens, prefix_len) -> logits`, for a model that claims to use
#    `masks.prefix(T, prefix_len)`. Mutants: a model that uses `prefix_len + 1` (the
#    classic off-by-one), and one that is fully bidirectional.
# 3. **A stable log-sum-exp with a gradient.** Write `logsumexp(t, axis)` with minillm
#    `Tensor` operations (so that it has a gradient) that is finite for entries up to
#    `1e4` in size. Checked with a property against a float64 reference and with
#    `gradcheck`.

# %%
def softmax_property(softmax_fn):
    @prop()
    @given(masked_rows(low=-1000.0, high=1000.0))
    def holds(xm):
        x, m = xm
        y = softmax_fn(x, m)
        assert np.isfinite(y).all()
        assert (y[~m] == 0).all()
        kept = m.any(axis=1)
        assert np.allclose(y[kept].sum(axis=1), 1.0)
        assert (y[~kept] == 0).all()
    return holds


def no_leak_property(model_fn):
    @prop(max_examples=EXAMPLES // 2)
    @given(token_seqs, st.data())
    def holds(toks, data):
        tokens = np.array([toks])
        T = len(toks)
        P = data.draw(st.integers(0, T))
        moved = moved_by_each_token(model_fn, tokens, P, shift=1)
        assert (moved[~masks.prefix(T, P)] == 0).all()
    return holds


def logsumexp(t, axis=-1):
    m = t.data.max(axis=axis, keepdims=True)       # a constant: the gradient does not flow through it
    return (t - m).exp().sum(axis=axis, keepdims=True).log() + m


# %%
def real_softmax(x, m):
    return F.softmax(mm.Tensor(x), mask=m).numpy()


def mutant_no_max(x, m):
    e = np.exp(x) * m
    s = e.sum(axis=1, keepdims=True)
    return np.divide(e, s, out=np.zeros_like(e), where=s > 0)


def mutant_mask_after(x, m):
    return real_softmax(x, np.ones_like(m)) * m


def mutant_nan_rows(x, m):
    e = np.exp(x - x.max(axis=1, keepdims=True)) * m
    return e / e.sum(axis=1, keepdims=True)


def check_softmax_property(make):
    assert falsified(make(real_softmax)) is None, "your property fails on the real softmax"
    for mutant in (mutant_no_max, mutant_mask_after, mutant_nan_rows):
        assert falsified(make(mutant)) is not None, f"your property does not catch {mutant.__name__}"


def check_no_leak_property(make):
    def off_by_one(tokens, P):
        return nd_logits(tokens, min(P + 1, tokens.shape[1]))

    def fully_bidirectional(tokens, P):
        return nd_logits(tokens, tokens.shape[1])

    assert falsified(make(nd_logits)) is None, "your property fails on the real model"
    for mutant in (off_by_one, fully_bidirectional):
        assert falsified(make(mutant)) is not None, f"your property does not catch {mutant.__name__}"


def check_logsumexp(fn):
    @prop()
    @given(shapes(min_dims=1, max_dims=3, max_side=4).flatmap(lambda s: arrays(s, low=-1e4, high=1e4)))
    def matches_reference(x):
        out = fn(mm.Tensor(x), axis=-1).numpy()
        m = x.max(axis=-1, keepdims=True)
        ref = np.log(np.exp(x - m).sum(axis=-1, keepdims=True)) + m
        assert out.shape == ref.shape and np.allclose(out, ref, rtol=1e-12, atol=1e-9)

    assert falsified(matches_reference) is None, "logsumexp disagrees with the reference (or overflows)"
    x = np.random.default_rng(0).standard_normal((3, 5)) * 3
    assert gradcheck(lambda t: fn(t, axis=-1), x)
    assert gradcheck(lambda t: fn(t, axis=0), x)


def check_exercises():
    global SHRINK
    SHRINK = False
    check_softmax_property(softmax_property)
    check_no_leak_property(no_leak_property)
    check_logsumexp(logsumexp)
    print("all three exercises check out")


check_exercises()


# %% [markdown]
# The checks reject plausible wrong answers: a property too weak to catch a mutant, and
# the textbook log-sum-exp.

# %%
def weak_softmax_property(softmax_fn):   # checks only that masked entries are zero
    @prop()
    @given(masked_rows())
    def holds(xm):
        x, m = xm
        assert (softmax_fn(x, m)[~m] == 0).all()
    return holds


def weak_no_leak_property(model_fn):     # only ever tries the empty prefix
    @prop(max_examples=EXAMPLES // 2)
    @given(token_seqs)
    def holds(toks):
        tokens = np.array([toks])
        moved = moved_by_each_token(model_fn, tokens, 0, shift=1)
        assert (moved[~masks.causal(len(toks))] == 0).all()
    return holds


wrong_answers = [
    (check_softmax_property, weak_softmax_property),
    (check_no_leak_property, weak_no_leak_property),
    (check_logsumexp, lambda t, axis=-1: t.exp().sum(axis=axis, keepdims=True).log()),
]
assert_all_rejected(wrong_answers)
