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
# # 4. Encoder and decoder blocks; CD, ND, ED; proving there is no leakage
#
# Tutorial 3 showed one attention head under three masks. A Transformer stacks *blocks*
# of attention and feed-forward layers, and the three architectures of the study are
# three ways of wiring the same blocks:
#
# | arch | what it is | masks |
# |---|---|---|
# | **CD** | causal decoder (GPT) | causal in every layer |
# | **ND** | non-causal (prefix) decoder | prefix: bidirectional over the input, causal after |
# | **ED** | encoder-decoder (T5) | encoder bidirectional; decoder causal, plus cross-attention to every encoder output |
#
# This tutorial opens up a block, builds the three models with `mm.build_model`, compares
# their parameters and compute, looks at the attention they produce, and then *proves*
# (by measurement, over many inputs) that no position can see what its mask forbids.

# %%

import numpy as np

import minillm as mm
from minillm import functional as F
from minillm import masks, nn

from _setup import FAST, finish, plt, assert_all_rejected  # fast mode (MINILLM_TUTORIAL_FAST), optional matplotlib


rng = np.random.default_rng(0)

# %% [markdown]
# ## 4.1 One block, opened up
#
# minillm's blocks are *pre-LayerNorm* (as in GPT-2 and T5): every sub-layer reads a
# normalised copy of the residual stream `x` and *adds* its result back,
#
#     x = x + Attention(LayerNorm(x), mask)
#     x = x + FeedForward(LayerNorm(x))          FeedForward = Linear -> GELU -> Linear
#
# The stream itself is never normalised inside the stack, so gradients reach the first
# layer through a chain of identities; one final LayerNorm sits before the output layer.
# An `EncoderBlock` is exactly that; the mask you pass decides whether it behaves as an
# encoder layer (all True) or a GPT layer (causal). A `DecoderBlock` with `cross=True`
# has a third sub-layer between the two, attention whose keys and values come from the
# encoder's output (`memory`).

# %%
d_model, n_heads, d_ff = 16, 4, 64
block = nn.EncoderBlock(d_model, n_heads, d_ff, rng=0, dtype=np.float64)
for name, p in block.named_parameters():
    print(f"  {name:22s} {str(p.shape):10s} {p.size:6d}")
print(f"  {'total':22s} {'':10s} {block.num_parameters():6d}")
x = mm.Tensor(rng.standard_normal((2, 5, d_model)))
y = block(x, mask=masks.causal(5))
print("input", x.shape, "-> output", y.shape)

# %% [markdown]
# Per block: the four attention projections (`q`, `k`, `v`, `out`) are `4 d² + 4 d`
# parameters, the feed-forward layer `2 d d_ff + d_ff + d`, and two LayerNorms `4 d`.
# Exercise 3 asks you to recompute a block's output from these parameters with
# `minillm.functional` alone.
#
# ## 4.2 Three architectures
#
# `mm.build_model(arch, config, seed)` builds any of the three. CD and ND are *one class*
# with the same parameters; only the mask differs. ED has two stacks of `n_layers` each,
# and its decoder blocks carry cross-attention. All three tie the output layer to the
# token embedding (logits = `h @ E.T`).

# %%
config = mm.ModelConfig(vocab_size=64, d_model=32, n_heads=4, n_layers=2, d_ff=128, max_len=32)
models = {arch: mm.build_model(arch, config, seed=0) for arch in ("cd", "nd", "ed")}
for arch, m in models.items():
    print(f"{arch}: {type(m).__name__}, {m.num_parameters():,} parameters, "
          f"{m.flops_per_token():,.0f} forward FLOPs/token at length {config.max_len}")

# %% [markdown]
# The paper compared models at matched *compute*, not matched parameters. The table
# below counts forward FLOPs per token for a sequence of `T` tokens: a decoder-only model
# reads all `T` in one stack; an ED reads `T/2` in the encoder and `T/2` in the decoder,
# so with `L + L` layers it does roughly the work of a decoder-only model with `L`
# layers, plus cross-attention, while holding about twice the parameters.

# %%
T = config.max_len
print(f"{'model':32s} {'parameters':>10s} {'FLOPs/token':>12s}")
for L in (2, 4):
    c = mm.ModelConfig(**{**config.__dict__, "n_layers": L})
    dec = mm.build_model("cd", c)
    print(f"{'CD/ND, ' + str(L) + ' layers':32s} {dec.num_parameters():10,d} {dec.flops_per_token(T):12,.0f}")
    if L == 2:
        ed = mm.build_model("ed", c)
        print(f"{'ED, 2 + 2 layers (T/2 + T/2)':32s} {ed.num_parameters():10,d} "
              f"{ed.flops_per_token(T // 2, T // 2):12,.0f}")

# %% [markdown]
# ## 4.3 The attention each model produces
#
# Every attention layer can report its probabilities: `model.attention_probes(...)` runs
# the model without a graph and returns `{layer name: (B, H, T_q, T_k) array}`. The zeros
# are where the masks are.

# %%
T = 8
tokens = rng.integers(4, config.vocab_size, (1, T))
P = 3
probes = {
    "cd": models["cd"].attention_probes(tokens),
    "nd": models["nd"].attention_probes(tokens, prefix_len=P),
    "ed": models["ed"].attention_probes(tokens[:, :5], tokens[:, 5:]),
}
for arch, layers in probes.items():
    for name, p in layers.items():
        print(f"{arch}: {name:28s} shape {p.shape}")


def pattern(p):
    return "\n".join("      " + " ".join("#" if v > 0 else "." for v in row) for row in p)


print("ND, first layer, head 0 (P = 3):\n" + pattern(probes["nd"]["blocks.0.self_attn"][0, 0]))
print("ED, decoder cross-attention, head 0 (3 target positions x 5 source positions):\n"
      + pattern(probes["ed"]["decoder.0.cross_attn"][0, 0]))
assert ((probes["nd"]["blocks.0.self_attn"][0] > 0) == masks.prefix(T, P)).all()
assert ((probes["cd"]["blocks.1.self_attn"][0] > 0) == masks.causal(T)).all()

# %%
if plt is not None:
    show = [("CD self-attention", probes["cd"]["blocks.0.self_attn"][0, 0]),
            (f"ND self-attention (P={P})", probes["nd"]["blocks.0.self_attn"][0, 0]),
            ("ED encoder", probes["ed"]["encoder.0.attn"][0, 0]),
            ("ED decoder self", probes["ed"]["decoder.0.self_attn"][0, 0]),
            ("ED decoder cross", probes["ed"]["decoder.0.cross_attn"][0, 0])]
    fig, axes = plt.subplots(1, len(show), figsize=(14, 3))
    for ax, (title, p) in zip(axes, show):
        ax.imshow(p, cmap="viridis", vmin=0)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
    fig.tight_layout()
    finish(fig, "04_attention_by_architecture.png")

# %% [markdown]
# At initialisation the attention is nearly uniform over the allowed keys (the weights
# are small, so all scores are close to 0). Training makes it selective; tutorial 9
# measures how selective, in terms of rank.
#
# ## 4.4 Proving there is no leakage
#
# The masks of tutorial 3 are only as good as their use inside the model: a wrong mask
# passed to one layer, a padding mask applied to queries instead of keys, a position
# embedding sliced wrongly... any of these lets a position see a token it must predict,
# and a model that can peek trains to a suspiciously low loss and generates garbage.
#
# The test is the dependency matrix, measured: change one input token and see which
# output positions move. For a trustworthy measurement we use float64 (so "did not move"
# can mean *exactly*), and we roughen the weights, because at initialisation some real
# dependencies are tiny.

# %%
test_config = mm.ModelConfig(vocab_size=13, d_model=16, n_heads=2, n_layers=2, d_ff=32, max_len=10,
                             dtype="float64")
noise = np.random.default_rng(1)
test_models = {}
for arch in ("cd", "nd", "ed"):
    m = mm.build_model(arch, test_config, seed=0)
    for p in m.parameters():
        p.data = p.data + 0.3 * noise.standard_normal(p.shape)
    test_models[arch] = m


def moved(fn, tokens):
    """moved[i, j]: does output position i change when token j is changed?"""
    with mm.no_grad():
        base = fn(tokens)
        out = np.zeros((base.shape[1], tokens.shape[1]), dtype=bool)
        for j in range(tokens.shape[1]):
            other = tokens.copy()
            other[0, j] = (other[0, j] + 1) % test_config.vocab_size
            diff = np.abs(fn(other) - base)[0].max(axis=-1)
            assert ((diff == 0) | (diff > 1e-9)).all(), "a dependency too small to tell apart from none"
            out[:, j] = diff > 0
    return out


toks = rng.integers(0, test_config.vocab_size, (1, 7))
cd_dep = moved(lambda t: test_models["cd"](t).numpy(), toks)
nd_dep = moved(lambda t: test_models["nd"](t, prefix_len=4).numpy(), toks)
print("CD: output i depends on token j\n" + pattern(cd_dep))
print("ND, prefix_len = 4:\n" + pattern(nd_dep))
assert (cd_dep == masks.causal(7)).all() and (nd_dep == masks.prefix(7, 4)).all()

# %% [markdown]
# Each matrix equals its mask *exactly*: nothing forbidden leaks, and nothing allowed is
# lost. One example proves little, so here is the same check over many random lengths,
# prefix lengths and token sequences, for all three architectures (tutorial 10 shows how
# to hand this search to hypothesis). For ED we change source and target tokens
# separately: every decoder position may read the whole source, and the target only up to
# itself.

# %%
trials = 6 if FAST else 40
for trial in range(trials):
    T_ = int(rng.integers(1, test_config.max_len + 1))
    P_ = int(rng.integers(0, T_ + 1))
    t = rng.integers(0, test_config.vocab_size, (1, T_))
    assert (moved(lambda v: test_models["cd"](v).numpy(), t) == masks.causal(T_)).all()
    assert (moved(lambda v: test_models["nd"](v, prefix_len=P_).numpy(), t) == masks.prefix(T_, P_)).all()
    S_ = int(rng.integers(1, test_config.max_len + 1))
    src = rng.integers(0, test_config.vocab_size, (1, S_))
    assert moved(lambda v: test_models["ed"](v, t).numpy(), src).all()
    assert (moved(lambda v: test_models["ed"](src, v).numpy(), t) == masks.causal(T_)).all()
print(f"no leakage and no lost dependency in {trials} random trials per architecture")

# %% [markdown]
# ## 4.5 CD and ND are the same weights
#
# Because CD and ND are one class, switching is a change of mask, not of weights:
# `model.arch = "nd"`. And since `prefix(T, 0) == causal(T)`, an ND with an empty prefix
# computes *exactly* what the CD computes. The adaptation experiments (tutorial 8) rely
# on both facts.

# %%
cd = mm.build_model("cd", test_config, seed=3)
nd = mm.build_model("nd", test_config, seed=3)
same_weights = all((a.data == b.data).all() for a, b in zip(cd.parameters(), nd.parameters()))
t = rng.integers(0, test_config.vocab_size, (2, 9))
with mm.no_grad():
    equal = (cd(t).numpy() == nd(t, prefix_len=0).numpy()).all()
    cd.arch = "nd"   # the same object, now a prefix decoder
    switched = (cd(t, prefix_len=5).numpy() == nd(t, prefix_len=5).numpy()).all()
    cd.arch = "cd"
print(f"same weights: {same_weights}; ND(P=0) == CD bit for bit: {equal}; switched CD == ND: {switched}")
assert same_weights and equal and switched

# %% [markdown]
# ## Exercises
#
# The bodies below hold reference answers so that the test suite can check them; to
# practise, replace a body with your own and run the file again.
#
# 1. **Count the parameters.** Write `n_params(arch, c)` for a `ModelConfig` `c`, in
#    closed form (no model building). Remember the tied output layer; ED shares one token
#    embedding but has two position embeddings and two final LayerNorms.
# 2. **ED's dependency pattern.** Write `ed_dependency(S, T)` returning two bool arrays:
#    which decoder outputs depend on which source tokens `(T, S)`, and on which target
#    tokens `(T, T)`. Checked by measurement.
# 3. **A block from its parameters.** Write `my_encoder_block(block, x, mask)` that
#    computes `block(x, mask=mask)` using only `F.layer_norm`, `F.softmax`, `F.gelu`,
#    Tensor arithmetic and the block's parameters (`block.ln1.weight`,
#    `block.attn.q.weight`, ...). Heads: split `d_model` into `n_heads` slices of
#    `d_model // n_heads`, scale scores by `1/sqrt(d_head)`.

# %%
def n_params(arch, c):
    d, f, L = c.d_model, c.d_ff, c.n_layers
    attention = 4 * d * d + 4 * d
    feed_forward = 2 * d * f + f + d
    layer_norm = 2 * d
    block = attention + feed_forward + 2 * layer_norm
    if arch in ("cd", "nd"):
        return c.vocab_size * d + c.max_len * d + L * block + layer_norm
    decoder_block = block + attention + layer_norm           # plus cross-attention and its LayerNorm
    return c.vocab_size * d + 2 * c.max_len * d + L * (block + decoder_block) + 2 * layer_norm


def ed_dependency(S, T):
    return np.ones((T, S), dtype=bool), masks.causal(T)


def my_encoder_block(block, x, mask):
    B, T_, D = x.shape
    a = block.attn
    H = a.n_heads
    dh = D // H

    def heads(t):                                      # (B, T, D) -> (B, H, T, dh)
        return t.reshape(B, T_, H, dh).transpose(0, 2, 1, 3)

    h = F.layer_norm(x, block.ln1.weight, block.ln1.bias)
    q = heads(h @ a.q.weight + a.q.bias)
    k = heads(h @ a.k.weight + a.k.bias)
    v = heads(h @ a.v.weight + a.v.bias)
    att = F.softmax(q @ k.transpose(0, 1, 3, 2) * (1.0 / np.sqrt(dh)), mask=mask)
    y = (att @ v).transpose(0, 2, 1, 3).reshape(B, T_, D)
    x = x + (y @ a.out.weight + a.out.bias)
    h = F.layer_norm(x, block.ln2.weight, block.ln2.bias)
    ff = F.gelu(h @ block.ff.fc1.weight + block.ff.fc1.bias) @ block.ff.fc2.weight + block.ff.fc2.bias
    return x + ff


# %%
def check_n_params(fn):
    for vocab, d, h, L, f, T_ in [(64, 32, 4, 2, 128, 32), (13, 16, 2, 1, 32, 10), (300, 48, 6, 3, 100, 7)]:
        c = mm.ModelConfig(vocab_size=vocab, d_model=d, n_heads=h, n_layers=L, d_ff=f, max_len=T_)
        for arch in ("cd", "nd", "ed"):
            real = mm.build_model(arch, c).num_parameters()
            assert fn(arch, c) == real, f"{arch} with {c}: expected {real}, got {fn(arch, c)}"


def check_ed_dependency(fn):
    for S_, T_ in [(1, 1), (4, 6), (7, 3)]:
        src = rng.integers(0, test_config.vocab_size, (1, S_))
        tgt = rng.integers(0, test_config.vocab_size, (1, T_))
        on_src, on_tgt = fn(S_, T_)
        assert (np.asarray(on_src) == moved(lambda v: test_models["ed"](v, tgt).numpy(), src)).all(), \
            f"wrong dependency on the source for S={S_}, T={T_}"
        assert (np.asarray(on_tgt) == moved(lambda v: test_models["ed"](src, v).numpy(), tgt)).all(), \
            f"wrong dependency on the target for S={S_}, T={T_}"


def check_my_encoder_block(fn):
    blk = nn.EncoderBlock(24, 3, 40, rng=5, dtype=np.float64)
    r = np.random.default_rng(2)
    for p in blk.parameters():
        p.data = p.data + 0.2 * r.standard_normal(p.shape)
    for T_, mask in [(6, masks.causal(6)), (5, masks.prefix(5, 2)), (4, masks.bidirectional(4))]:
        xx = mm.Tensor(r.standard_normal((2, T_, 24)))
        with mm.no_grad():
            assert np.allclose(fn(blk, xx, mask).numpy(), blk(xx, mask=mask).numpy(), atol=1e-10), \
                f"output differs for T={T_}"


def check_exercises():
    check_n_params(n_params)
    check_ed_dependency(ed_dependency)
    check_my_encoder_block(my_encoder_block)
    print("all three exercises check out")


check_exercises()


# %% [markdown]
# The checks reject plausible wrong answers:

# %%
def post_ln_block(block, x, mask):       # the original Transformer's order: LayerNorm after the residual
    a = block.attn
    B, T_, D = x.shape
    H, dh = a.n_heads, D // a.n_heads
    heads = lambda t: t.reshape(B, T_, H, dh).transpose(0, 2, 1, 3)   # noqa: E731
    q, k, v = (heads(x @ lin.weight + lin.bias) for lin in (a.q, a.k, a.v))
    att = F.softmax(q @ k.transpose(0, 1, 3, 2) * (1.0 / np.sqrt(dh)), mask=mask)
    x = F.layer_norm(x + (att @ v).transpose(0, 2, 1, 3).reshape(B, T_, D) @ a.out.weight + a.out.bias,
                     block.ln1.weight, block.ln1.bias)
    ff = F.gelu(x @ block.ff.fc1.weight + block.ff.fc1.bias) @ block.ff.fc2.weight + block.ff.fc2.bias
    return F.layer_norm(x + ff, block.ln2.weight, block.ln2.bias)


wrong_answers = [
    (check_n_params, lambda arch, c: n_params(arch, c) + (c.vocab_size * c.d_model)),  # an untied output layer
    (check_ed_dependency, lambda S_, T_: (np.ones((T_, S_), bool), np.ones((T_, T_), bool))),
    (check_my_encoder_block, post_ln_block),
]
assert_all_rejected(wrong_answers, errors=(AssertionError, ValueError))
