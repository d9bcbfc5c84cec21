"""The three architectures: no leakage through any mask, padding, CD == ND(P=0), gradient
checks, state dicts, parameter and FLOP counts, probes, bad input, and fitting a toy task."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minillm
from minillm import functional as F, kernels, nn
from minillm.model.models import DecoderOnly, EncoderDecoder
from minillm.engine.tensor import Tensor, no_grad

from test_nn import check_param_grads

BACKENDS = ["numpy", "numba"]
V = 13


def config(**kw):
    base = dict(vocab_size=V, d_model=8, n_heads=2, n_layers=2, d_ff=16, max_len=10, dtype="float64")
    base.update(kw)
    return minillm.ModelConfig(**base)


def roughen(model, seed=0, std=0.3):
    """Push the weights away from the near-zero init so that every dependence is large."""
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data = p.data + rng.standard_normal(p.shape) * std
    return model


MODELS = {arch: roughen(minillm.build_model(arch, config(), seed=1)) for arch in ("cd", "nd", "ed")}
PADDED = {arch: roughen(minillm.build_model(arch, config(pad_id=0), seed=2)) for arch in ("cd", "nd", "ed")}


def logits(model, *args):
    with no_grad():
        return model(*args).data


def dependence(f, tokens, rng):
    """dep[i, k] = True when output i changes if input token k is replaced by another id.
    Every output must either not move at all (<1e-12) or move clearly (>1e-8)."""
    base = f(tokens)[0]
    dep = np.zeros((base.shape[0], tokens.shape[1]), bool)
    for k in range(tokens.shape[1]):
        t2 = tokens.copy()
        t2[0, k] = (t2[0, k] + rng.integers(1, V)) % V
        diff = np.abs(f(t2)[0] - base).max(axis=-1)
        assert ((diff < 1e-12) | (diff > 1e-8)).all(), diff
        dep[:, k] = diff > 1e-8
    return dep


seqs = st.integers(1, 8).flatmap(lambda T: st.lists(st.integers(0, V - 1), min_size=T, max_size=T))


# ---- no leakage ----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@given(toks=seqs, seed=st.integers(0, 99))
def test_cd_output_depends_exactly_on_the_past(backend, toks, seed):
    tokens = np.array([toks])
    T = len(toks)
    with kernels.use(backend):
        dep = dependence(lambda t: logits(MODELS["cd"], t), tokens, np.random.default_rng(seed))
    expected = np.array([[k <= i for k in range(T)] for i in range(T)])
    np.testing.assert_array_equal(dep, expected)


@pytest.mark.parametrize("backend", BACKENDS)
@given(toks=seqs, data=st.data())
def test_nd_output_depends_on_past_and_whole_prefix(backend, toks, data):
    tokens = np.array([toks])
    T = len(toks)
    P = data.draw(st.integers(0, T))
    with kernels.use(backend):
        dep = dependence(lambda t: logits(MODELS["nd"], t, P), tokens,
                         np.random.default_rng(data.draw(st.integers(0, 99))))
    expected = np.array([[k <= i or (i < P and k < P) for k in range(T)] for i in range(T)])
    np.testing.assert_array_equal(dep, expected)


@pytest.mark.parametrize("backend", BACKENDS)
@given(src=seqs, tgt=seqs, seed=st.integers(0, 99))
def test_ed_decoder_sees_all_source_and_past_target(backend, src, tgt, seed):
    src, tgt = np.array([src]), np.array([tgt])
    S, T = src.shape[1], tgt.shape[1]
    rng = np.random.default_rng(seed)
    m = MODELS["ed"]
    with kernels.use(backend):
        dep_src = dependence(lambda s: logits(m, s, tgt), src, rng)
        dep_tgt = dependence(lambda t: logits(m, src, t), tgt, rng)
        assert dep_src.shape == (T, S) and dep_src.all()
        np.testing.assert_array_equal(dep_tgt, np.tril(np.ones((T, T), bool)))
        # The encoder never sees the target: its attention is the same whatever the target.
        other = (tgt + 1) % V
        a, b = m.attention_probes(src, tgt), m.attention_probes(src, other)
        for name in a:
            if name.startswith("encoder"):
                np.testing.assert_array_equal(a[name], b[name])
        np.testing.assert_array_equal(m.encode(src).data, m.encode(src).data)


# ---- padding -----------------------------------------------------------------------------------

def padded_batch(draw, T_max, min_len=1):
    lens = draw(st.lists(st.integers(min_len, T_max), min_size=1, max_size=3))
    width = max(lens) + draw(st.integers(0, 2))
    rows = [draw(st.lists(st.integers(1, V - 1), min_size=n, max_size=n)) for n in lens]
    batch = np.zeros((len(lens), width), dtype=np.int64)  # pad id 0
    for b, r in enumerate(rows):
        batch[b, :len(r)] = r
    return lens, rows, batch


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["cd", "nd"])
@given(data=st.data())
def test_padding_never_changes_decoder_outputs(backend, arch, data):
    lens, rows, batch = padded_batch(data.draw, 7)
    P = np.array([data.draw(st.integers(0, n)) for n in lens]) if arch == "nd" else None
    m = PADDED[arch]
    with kernels.use(backend):
        out = logits(m, batch, P)
        assert np.isfinite(out).all()
        for b, r in enumerate(rows):
            alone = logits(m, np.array([r]), None if P is None else int(P[b]))
            np.testing.assert_allclose(out[b, :len(r)], alone[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_padding_never_changes_ed_outputs(backend, data):
    s_lens, s_rows, src = padded_batch(data.draw, 7)
    t_lens, t_rows, tgt = padded_batch(lambda s: data.draw(s), 7)
    n = min(len(s_rows), len(t_rows))
    src, tgt, s_rows, t_rows = src[:n], tgt[:n], s_rows[:n], t_rows[:n]
    m = PADDED["ed"]
    with kernels.use(backend):
        out = logits(m, src, tgt)
        for b in range(n):
            alone = logits(m, np.array([s_rows[b]]), np.array([t_rows[b]]))
            np.testing.assert_allclose(out[b, :len(t_rows[b])], alone[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["cd", "nd", "ed"])
@given(data=st.data())
def test_pads_anywhere_are_invisible(backend, arch, data):
    """Pads at any position (leading, inside, trailing): changing what a pad *is* (its
    embedding row) changes no non-pad output. Column pad_id is excluded: the output layer
    is tied, so the pad's own logit reads that row."""
    def draw_row(T):
        row = data.draw(st.lists(st.integers(0, 3), min_size=T, max_size=T))  # 0 = pad, often
        return [t if t == 0 else data.draw(st.integers(1, V - 1)) for t in row]

    B, T = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 7))
    tokens = np.array([draw_row(T) for _ in range(B)])
    m = PADDED[arch]
    if arch == "ed":
        S = data.draw(st.integers(1, 7))
        src = np.array([draw_row(S) for _ in range(B)])
        args = (src, tokens)
    else:
        args = (tokens, np.array([data.draw(st.integers(0, T)) for _ in range(B)]) if arch == "nd" else None)
    keep = tokens != 0
    E = m.tok_emb.weight
    with kernels.use(backend):
        before = logits(m, *args)
        saved = E.data.copy()
        try:
            E.data[0] = np.random.default_rng(0).standard_normal(E.shape[1])
            after = logits(m, *args)
        finally:
            E.data = saved
    assert np.isfinite(after).all()
    np.testing.assert_allclose(after[keep][:, 1:], before[keep][:, 1:], rtol=1e-10, atol=1e-12)
    if keep.any():  # the perturbation took effect: the tied pad logit moved
        assert not np.allclose(after[keep][:, 0], before[keep][:, 0])


def test_leading_pad_gives_no_nan():
    # A query whose only allowed key is a pad sees nothing at all: zeros, never NaN.
    tokens = np.array([[0, 3, 4], [5, 0, 0]])
    for arch in ("cd", "nd"):
        assert np.isfinite(logits(PADDED[arch], tokens)).all()
    assert np.isfinite(logits(PADDED["ed"], tokens, tokens)).all()


# ---- CD and ND are one model ---------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@given(st.lists(st.lists(st.integers(0, V - 1), min_size=6, max_size=6), min_size=1, max_size=3))
def test_nd_with_empty_prefix_is_cd_exactly(backend, rows):
    tokens = np.array(rows)
    cd = minillm.build_model("cd", config(), seed=5)
    nd = minillm.build_model("nd", config(), seed=5)
    with kernels.use(backend):
        ref = logits(cd, tokens)
        for P in (0, None, np.zeros(len(rows), dtype=np.int64)):
            np.testing.assert_array_equal(logits(nd, tokens, P), ref)
        np.testing.assert_array_equal(logits(cd, tokens, np.zeros(len(rows), dtype=int)), ref)
        # and a real prefix changes something
        assert not np.array_equal(logits(nd, tokens, 4), ref)


def test_switching_arch_changes_no_parameter():
    m = minillm.build_model("cd", config(), seed=3)
    before = m.state_dict()
    tokens = np.array([[1, 2, 3, 4, 5]])
    cd_out = logits(m, tokens)
    m.arch = "nd"
    assert all(np.array_equal(v, before[k]) for k, v in m.state_dict().items())
    nd = minillm.build_model("nd", config(), seed=3)
    np.testing.assert_array_equal(logits(m, tokens, 3), logits(nd, tokens, 3))
    m.arch = "cd"
    np.testing.assert_array_equal(logits(m, tokens), cd_out)
    with pytest.raises(ValueError, match="arch.*'ed'"):
        m.arch = "ed"


@given(st.lists(st.integers(0, 6), min_size=1, max_size=4), st.integers(0, 99))
def test_per_example_prefix_equals_one_at_a_time(Ps, seed):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, V, (len(Ps), 6))
    m = MODELS["nd"]
    out = logits(m, tokens, np.array(Ps))
    for b, P in enumerate(Ps):
        np.testing.assert_allclose(out[b], logits(m, tokens[b:b + 1], P)[0], rtol=1e-10, atol=1e-12)


# ---- gradients ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["cd", "nd", "ed"])
def test_architecture_loss_gradients(backend, arch):
    cfg = config(vocab_size=9, d_model=8, n_layers=2, d_ff=12, max_len=6, pad_id=0)
    m = roughen(minillm.build_model(arch, cfg, seed=11), seed=4, std=0.2)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 9, (2, 5))
    tokens[1, 3:] = 0  # padding
    targets = rng.integers(1, 9, (2, 5))
    targets[1, 3:] = -100
    targets[0, 0] = -100
    if arch == "ed":
        src = rng.integers(1, 9, (2, 4))
        src[0, 2:] = 0
        loss = lambda: F.cross_entropy(m(src, tokens), targets)  # noqa: E731
    else:
        P = np.array([3, 1]) if arch == "nd" else None
        loss = lambda: F.cross_entropy(m(tokens, P), targets)  # noqa: E731
    with kernels.use(backend):
        n = check_param_grads(m, loss)
    assert n == len(m.parameters())


# ---- state dicts -------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["cd", "nd", "ed"])
def test_state_dict_round_trip(arch):
    cfg = config(dtype="float32")
    a, b = minillm.build_model(arch, cfg, seed=0), minillm.build_model(arch, cfg, seed=1)
    src = np.array([[1, 2, 3, 4]])
    args = (src, src) if arch == "ed" else (src,)
    assert not np.array_equal(logits(a, *args), logits(b, *args))
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(logits(a, *args), logits(b, *args))


def test_state_dict_mismatch_changes_nothing():
    ed = minillm.build_model("ed", config(), seed=0)
    before = ed.state_dict()
    for wrong in (minillm.build_model("cd", config(), seed=1).state_dict(),
                  minillm.build_model("ed", config(vocab_size=V + 1), seed=1).state_dict()):
        with pytest.raises((KeyError, ValueError)):
            ed.load_state_dict(wrong)
        assert all(np.array_equal(v, before[k]) for k, v in ed.state_dict().items())


# ---- sizes ------------------------------------------------------------------------------------------

def test_parameter_counts_from_first_principles():
    Vs, d, L, f, M = 50, 16, 3, 40, 12
    cfg = minillm.ModelConfig(Vs, d, 4, L, f, M)
    attn = 4 * (d * d + d)                    # q, k, v, out with biases
    block = attn + (d * f + f) + (f * d + d) + 2 * 2 * d  # + feed-forward + two LayerNorms
    cross = attn + 2 * d                       # cross-attention and its LayerNorm
    cd_expected = Vs * d + M * d + L * block + 2 * d
    ed_expected = Vs * d + 2 * M * d + L * block + 2 * d + L * (block + cross) + 2 * d
    cd, ed = minillm.build_model("cd", cfg), minillm.build_model("ed", cfg)
    assert cd.num_parameters() == cd_expected
    assert minillm.build_model("nd", cfg).num_parameters() == cd_expected
    assert ed.num_parameters() == ed_expected
    # The paper's point: L+L layers of ED ~ twice the non-embedding parameters of L layers of CD.
    ratio = (ed_expected - Vs * d - 2 * M * d) / (cd_expected - Vs * d - M * d)
    assert 2.0 < ratio < 2.5


def count_matmul_flops(monkeypatch, fn):
    """Multiply-add FLOPs of every product a forward pass does: kernels.matmul,
    kernels.linear, and the two products per head inside kernels.attention_forward (q k^T
    and P v)."""
    total = [0]
    real, real_linear, real_attention = kernels.matmul, kernels.linear, kernels.attention_forward

    def counting(a, b):
        out = real(a, b)
        total[0] += 2 * out.size * a.shape[-1]
        return out

    def counting_linear(x, w, b=None):
        out = real_linear(x, w, b)
        total[0] += 2 * out.size * x.shape[-1]
        return out

    def counting_attention(q, k, v, n_heads, mask=None, keep=None):
        y, p = real_attention(q, k, v, n_heads, mask, keep)
        total[0] += 2 * 2 * p.size * (q.shape[-1] // n_heads)
        return y, p

    monkeypatch.setattr(kernels, "matmul", counting)
    monkeypatch.setattr(kernels, "linear", counting_linear)
    monkeypatch.setattr(kernels, "attention_forward", counting_attention)
    with no_grad():
        fn()
    monkeypatch.setattr(kernels, "matmul", real)
    monkeypatch.setattr(kernels, "linear", real_linear)
    monkeypatch.setattr(kernels, "attention_forward", real_attention)
    return total[0]


@pytest.mark.parametrize("arch", ["cd", "nd", "ed"])
def test_flops_match_the_matmuls_actually_done(monkeypatch, arch):
    cfg = minillm.ModelConfig(17, 12, 3, 2, 20, 9)
    m = minillm.build_model(arch, cfg)
    rng = np.random.default_rng(0)
    if arch == "ed":
        src, tgt = rng.integers(0, 17, (1, 7)), rng.integers(0, 17, (1, 5))
        assert count_matmul_flops(monkeypatch, lambda: m(src, tgt)) == m.forward_flops(7, 5)
        assert m.flops_per_token(7, 5) == m.forward_flops(7, 5) / 12
    else:
        tokens = rng.integers(0, 17, (1, 6))
        assert count_matmul_flops(monkeypatch, lambda: m(tokens, 2 if arch == "nd" else None)) == m.forward_flops(6)
        assert m.flops_per_token(6) == m.forward_flops(6) / 6
    assert f"{m.num_parameters():,} parameters" in repr(m)
    with pytest.raises(TypeError, match="at most"):
        m.forward_flops(3, 3, 3)


def test_ed_compute_is_close_to_decoder_only():
    # Same tokens seen (source + target = decoder-only length): ED L+L costs about CD L,
    # plus cross-attention.
    cfg = minillm.ModelConfig(256, 128, 4, 4, 512, 128)
    cd, ed = minillm.build_model("cd", cfg), minillm.build_model("ed", cfg)
    r = ed.flops_per_token(64, 64) / cd.flops_per_token(128)
    assert 1.0 < r < 1.4


# ---- probes -------------------------------------------------------------------------------------

def test_attention_probes():
    m = minillm.build_model("nd", config(dropout=0.1), seed=0)
    m.train()
    tokens = np.array([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]])
    probes = m.attention_probes(tokens, np.array([3, 0]))
    assert m.training  # mode restored
    assert list(probes) == ["blocks.0.self_attn", "blocks.1.self_attn"]
    for p in probes.values():
        assert p.shape == (2, 2, 5, 5)
        np.testing.assert_allclose(p.sum(-1), 1, rtol=1e-12)
        # example 0, P = 3: the first three positions see each other and nothing later
        assert (p[0, :, :3, :3] > 0).all() and (p[0, :, :3, 3:] == 0).all()
        for i in range(3, 5):
            assert (p[0, :, i, :i + 1] > 0).all() and (p[0, :, i, i + 1:] == 0).all()
        assert (np.triu(p[1], 1) == 0).all()  # P = 0: causal
    ed = minillm.build_model("ed", config(pad_id=0), seed=0)
    probes = ed.attention_probes(np.array([[3, 4, 0]]), np.array([[1, 2]]))
    assert list(probes) == ["encoder.0.attn", "encoder.1.attn", "decoder.0.self_attn", "decoder.0.cross_attn",
                            "decoder.1.self_attn", "decoder.1.cross_attn"]
    assert probes["decoder.0.cross_attn"].shape == (1, 2, 2, 3)
    assert (probes["decoder.0.cross_attn"][..., 2] == 0).all()  # never attends to the pad


def test_dropout_is_seeded_and_off_in_eval():
    cfg = config(dropout=0.3)
    tokens = np.array([[1, 2, 3, 4]])
    a, b = minillm.build_model("cd", cfg, seed=0), minillm.build_model("cd", cfg, seed=0)
    np.testing.assert_array_equal(logits(a, tokens), logits(b, tokens))  # same seed: same masks
    assert not np.array_equal(logits(a, tokens), logits(a, tokens))      # new masks each call
    a.eval()
    np.testing.assert_array_equal(logits(a, tokens), logits(a, tokens))


def test_float32_default_and_float64():
    cfg = minillm.ModelConfig(V, 8, 2, 1, 16, 6)
    m = minillm.build_model("cd", cfg)
    assert logits(m, np.array([[1, 2]])).dtype == np.float32
    m64 = minillm.build_model("cd", minillm.ModelConfig(V, 8, 2, 1, 16, 6, dtype="float64"))
    assert all(p.dtype == np.float64 for p in m64.parameters())
    assert logits(m64, np.array([[1, 2]])).dtype == np.float64


# ---- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,match", [
    (dict(d_model=10, n_heads=4), r"d_model \(10\).*n_heads \(4\)"),
    (dict(n_layers=0), "n_layers.*0"),
    (dict(vocab_size=2.5), "vocab_size.*2.5"),
    (dict(dropout=1.0), "dropout.*1.0"),
    (dict(pad_id=V), f"pad_id.*{V}"),
    (dict(dtype="float16"), "dtype.*float16"),
])
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        config(**kw)


@pytest.mark.parametrize("arch", ["cd", "nd"])
def test_decoder_bad_tokens(arch):
    m = MODELS[arch]
    with pytest.raises(ValueError, match=f"tokens.*{V}"):
        m(np.array([[1, V]]))
    with pytest.raises(ValueError, match="tokens.*-1"):
        m(np.array([[-1, 2]]))
    with pytest.raises(ValueError, match="tokens.*length 11.*max_len=10"):
        m(np.ones((1, 11), dtype=int))
    with pytest.raises(ValueError, match="tokens.*float"):
        m(np.ones((1, 3)))
    with pytest.raises(ValueError, match=r"tokens.*\(3,\)"):
        m(np.ones(3, dtype=int))


def test_prefix_len_errors():
    nd, cd = MODELS["nd"], MODELS["cd"]
    tokens = np.ones((2, 4), dtype=int)
    with pytest.raises(ValueError, match=r"prefix_len.*\[0, T=4\].*5"):
        nd(tokens, 5)
    with pytest.raises(ValueError, match="prefix_len.*-1"):
        nd(tokens, -1)
    with pytest.raises(ValueError, match=r"prefix_len.*\(2,\).*\(3,\)"):
        nd(tokens, np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="prefix_len"):
        nd(tokens, np.array([[1, 2]]))
    with pytest.raises(ValueError, match="prefix_len.*causal.*'cd'"):
        cd(tokens, 2)
    with pytest.raises(ValueError, match="prefix_len.*'cd'"):
        cd(tokens, np.array([0, 1]))


def test_ed_bad_inputs():
    ed = MODELS["ed"]
    ok = np.array([[1, 2, 3]])
    with pytest.raises(ValueError, match=f"src.*{V}"):
        ed(np.array([[V]]), ok)
    with pytest.raises(ValueError, match=f"tgt.*{V + 3}"):
        ed(ok, np.array([[V + 3]]))
    with pytest.raises(ValueError, match="tgt.*length 11"):
        ed(ok, np.ones((1, 11), dtype=int))
    with pytest.raises(ValueError, match="batch size 2.*1"):
        ed(ok, np.ones((2, 3), dtype=int))


def test_build_model_bad_arch():
    with pytest.raises(ValueError, match="arch.*'gpt'"):
        minillm.build_model("gpt", config())
    with pytest.raises(TypeError, match="ModelConfig"):
        minillm.build_model("cd", dict(vocab_size=3))


# ---- learning ---------------------------------------------------------------------------------

def adam(params, lr):
    state = [(np.zeros_like(p.data), np.zeros_like(p.data)) for p in params]
    t = [0]

    def step():
        t[0] += 1
        for p, (m, v) in zip(params, state):
            m *= 0.9
            m += 0.1 * p.grad
            v *= 0.999
            v += 0.001 * p.grad ** 2
            p.data -= lr * (m / (1 - 0.9 ** t[0])) / (np.sqrt(v / (1 - 0.999 ** t[0])) + 1e-8)
    return step


@pytest.mark.parametrize("arch", ["cd", "nd", "ed"])
def test_tiny_model_learns_to_reverse(arch):
    """Reverse 5 symbols out of 6: chance is ln 6 = 1.79 nats per output token."""
    n, L, B = 6, 5, 32
    SEP, BOS = n, n + 1
    cfg = minillm.ModelConfig(n + 2, 32, 2, 2, 64, 2 * L + 1)
    m = minillm.build_model(arch, cfg, seed=0)
    step = adam(m.parameters(), 3e-3)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(200):
        x = rng.integers(0, n, (B, L))
        y = x[:, ::-1]
        if arch == "ed":
            loss = F.cross_entropy(m(x, np.concatenate([np.full((B, 1), BOS), y[:, :-1]], 1)), y)
        else:
            # tokens: x SEP y[:-1]; targets on the reversed part only
            tokens = np.concatenate([x, np.full((B, 1), SEP), y[:, :-1]], 1)
            targets = np.concatenate([np.full((B, L), -100), y], 1)
            loss = F.cross_entropy(m(tokens, L + 1 if arch == "nd" else None), targets)
        m.zero_grad()
        loss.backward()
        step()
        losses.append(loss.item())
    assert losses[0] > 1.5
    assert np.mean(losses[-10:]) < 0.2, losses[-10:]
