"""Modules: discovery, state dicts, modes, initialisation, attention against a by-hand
reference, probes, and gradient checks of whole blocks in float64."""
import math
import re

import numpy as np
import pytest
from hypothesis import given, strategies as st

import minillm
from minillm import masks, nn
from minillm.engine.tensor import Tensor, no_grad
from minillm.testing import gradcheck

BACKENDS = ["numpy", "numba"]


def check_param_grads(module, loss_fn, seed=0, eps=1e-6, rtol=1e-5, atol=1e-7):
    """Central differences along a random direction, one parameter at a time, in float64.
    (atol covers round-off for gradients that are exactly zero, e.g. the key bias.)"""
    rng = np.random.default_rng(seed)
    module.zero_grad()
    loss_fn().backward()
    checked = 0
    for name, p in module.named_parameters():
        assert p.dtype == np.float64
        g = np.zeros(p.shape) if p.grad is None else p.grad
        v = rng.standard_normal(p.shape)
        orig = p.data.copy()
        p.data = orig + eps * v
        up = loss_fn().item()
        p.data = orig - eps * v
        down = loss_fn().item()
        p.data = orig
        numeric, exact = (up - down) / (2 * eps), float((g * v).sum())
        assert abs(numeric - exact) <= atol + rtol * max(abs(numeric), abs(exact)), \
            f"{name}: backward {exact:.10g} vs finite differences {numeric:.10g}"
        checked += 1
    return checked


# ---- Module mechanics ----------------------------------------------------------------------

class Toy(nn.Module):
    def __init__(self):
        rng = np.random.default_rng(0)
        self.scale = nn.Parameter(np.ones(3, dtype=np.float32))
        self.first = nn.Linear(3, 4, rng=rng)
        self.layers = [nn.Linear(4, 4, rng=rng), nn.LayerNorm(4)]
        self.shared = self.first  # the same module twice: its parameters count once
        self.note = "not a parameter"
        self.drop = nn.Dropout(0.5, rng=1)

    def forward(self, x):
        h = self.first(x * self.scale)
        for layer in self.layers:
            h = layer(h)
        return self.drop(h)


def test_parameter_discovery_and_count():
    m = Toy()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["scale", "first.weight", "first.bias", "layers.0.weight", "layers.0.bias",
                     "layers.1.weight", "layers.1.bias"]
    assert m.num_parameters() == 3 + (3 * 4 + 4) + (4 * 4 + 4) + (4 + 4)
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in m.parameters())
    assert [n for n, _ in m.named_modules()] == ["", "first", "layers.0", "layers.1", "shared", "drop"]
    assert nn.Linear(5, 2, bias=False).num_parameters() == 10


def test_train_eval_zero_grad_and_dropout_modes():
    m = Toy()
    x = Tensor(np.random.default_rng(1).standard_normal((200, 3)).astype(np.float32))
    assert m.training and m.drop.training
    m.eval()
    assert not any(mod.training for _, mod in m.named_modules())
    a, b = m(x).data, m(x).data
    np.testing.assert_array_equal(a, b)  # eval: dropout is the identity
    m.train()
    assert all(mod.training for _, mod in m.named_modules())
    y = m(x).data
    zero = (y == 0) & (a != 0)
    assert 0.4 < zero.mean() < 0.6  # p = 0.5
    np.testing.assert_allclose(y[~zero], 2 * a[~zero], rtol=1e-5, atol=1e-6)
    m(x).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_state_dict_round_trip_is_exact_and_a_copy():
    a, b = Toy(), Toy()
    for p in b.parameters():
        p.data = p.data + 1
    sd = a.state_dict()
    b.load_state_dict(sd)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    sd["scale"][:] = 99  # the dict holds copies: editing it changes neither model
    assert not (a.scale.data == 99).any() and not (b.scale.data == 99).any()


@pytest.mark.parametrize("edit", ["missing", "extra", "shape"])
def test_load_state_dict_mismatch_raises_and_changes_nothing(edit):
    m = Toy()
    before = m.state_dict()
    sd = {k: v + 1 for k, v in before.items()}
    if edit == "missing":
        del sd["layers.1.bias"]
    elif edit == "extra":
        sd["ghost.weight"] = np.zeros(2, dtype=np.float32)
    else:
        sd["layers.0.weight"] = np.zeros((4, 5), dtype=np.float32)
    with pytest.raises((KeyError, ValueError), match="ghost|layers"):
        m.load_state_dict(sd)
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_dropout_rejects_bad_p():
    with pytest.raises(ValueError, match="p"):
        nn.Dropout(1.0)


# ---- initialisation --------------------------------------------------------------------------

def test_gpt2_initialisation_statistics():
    cfg = minillm.ModelConfig(vocab_size=512, d_model=128, n_heads=4, n_layers=4, d_ff=512, max_len=256)
    m = minillm.build_model("cd", cfg, seed=3)
    sd = m.state_dict()
    resid = 0.02 / math.sqrt(2 * 4)

    def std_ok(name, expected):
        assert abs(sd[name].std() / expected - 1) < 0.1, (name, sd[name].std(), expected)
        assert abs(sd[name].mean()) < expected / 5

    std_ok("tok_emb.weight", 0.02)
    # not N(0, 1): at that scale the positions drowned the 0.02-scale token embeddings, and a
    # prototype learned nothing at any world size
    std_ok("pos_emb.weight", 0.02)
    for i in range(4):
        for w in ("q", "k", "v"):
            std_ok(f"blocks.{i}.self_attn.{w}.weight", 0.02)
        std_ok(f"blocks.{i}.ff.fc1.weight", 0.02)
        std_ok(f"blocks.{i}.self_attn.out.weight", resid)
        std_ok(f"blocks.{i}.ff.fc2.weight", resid)
    for name, v in sd.items():
        if name.endswith("bias"):
            assert not v.any(), name
        if ".ln" in name and name.endswith("weight") or name.startswith("ln_f.weight"):
            assert (v == 1).all(), name
    assert all(v.dtype == np.float32 for v in sd.values())


def test_seeded_construction():
    cfg = minillm.ModelConfig(vocab_size=20, d_model=8, n_heads=2, n_layers=2, d_ff=16, max_len=8)
    a, b, c = (minillm.build_model("ed", cfg, seed=s).state_dict() for s in (0, 0, 1))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not any(np.array_equal(a[k], c[k]) for k in a if k.endswith("weight") and "ln" not in k)


# ---- attention -------------------------------------------------------------------------------

def reference_attention(att, x, mem, mask):
    """Per example, per head, with explicit loops and -inf masking; empty rows give zeros."""
    W = {n: (getattr(att, n).weight.data, getattr(att, n).bias.data) for n in "qkv"}
    Wo, bo = att.out.weight.data, att.out.bias.data
    B, T, D = x.shape
    S = mem.shape[1]
    H = att.n_heads
    dh = D // H
    out = np.zeros((B, T, D))
    probs = np.zeros((B, H, T, S))
    for b in range(B):
        q = x[b] @ W["q"][0] + W["q"][1]
        k = mem[b] @ W["k"][0] + W["k"][1]
        v = mem[b] @ W["v"][0] + W["v"][1]
        heads = []
        for h in range(H):
            cols = slice(h * dh, (h + 1) * dh)
            s = q[:, cols] @ k[:, cols].T / math.sqrt(dh)
            m = np.ones((T, S), bool) if mask is None else np.broadcast_to(mask if mask.ndim == 2 else mask[b], (T, S))
            p = np.zeros((T, S))
            for i in range(T):
                if m[i].any():
                    e = np.exp(s[i][m[i]] - s[i][m[i]].max())
                    p[i][m[i]] = e / e.sum()
            probs[b, h] = p
            heads.append(p @ v[:, cols])
        out[b] = np.concatenate(heads, axis=1) @ Wo + bo
    return out, probs


@pytest.mark.parametrize("backend", BACKENDS)
@given(st.data())
def test_attention_matches_reference(backend, data):
    B, T, S = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    H = data.draw(st.sampled_from([1, 2, 4]))
    D = 4 * H
    cross = data.draw(st.booleans())
    if not cross:
        S = T
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    att = nn.MultiHeadAttention(D, H, rng=rng, dtype=np.float64)
    for p in att.parameters():  # non-zero biases and O(1) weights make the check sharper
        p.data = rng.standard_normal(p.shape) * 0.5
    x = rng.standard_normal((B, T, D))
    mem = rng.standard_normal((B, S, D)) if cross else x
    kind = data.draw(st.sampled_from(["none", "2d", "3d", "keys"]))
    mask = {"none": None,
            "2d": rng.random((T, S)) < 0.6,
            "3d": rng.random((B, T, S)) < 0.6,
            "keys": rng.random((B, 1, S)) < 0.6}[kind]
    expected, expected_probs = reference_attention(att, x, mem, mask)
    with minillm.kernels.use(backend), nn.record_attention() as rec:
        y = att(Tensor(x), memory=Tensor(mem) if cross else None, mask=mask)
    np.testing.assert_allclose(y.data, expected, rtol=1e-9, atol=1e-12)
    assert len(rec) == 1 and rec[0][0] is att
    np.testing.assert_allclose(rec[0][1], expected_probs, rtol=1e-9, atol=1e-12)
    assert not np.isnan(y.data).any()


def test_fully_masked_query_gives_zeros_not_nan():
    rng = np.random.default_rng(0)
    att = nn.MultiHeadAttention(8, 2, rng=rng)
    x = Tensor(rng.standard_normal((1, 3, 8)).astype(np.float32), requires_grad=True)
    mask = np.array([[True, False, False], [False, False, False], [True, True, True]])
    with nn.record_attention() as rec:
        y = att(x, mask=mask)
    np.testing.assert_array_equal(rec[0][1][0, :, 1], 0)
    np.testing.assert_array_equal(y.data[0, 1], att.out.bias.data)  # nothing attended: only the bias
    y.sum().backward()
    assert np.isfinite(x.grad).all()


def test_probes_are_off_by_default():
    with nn.record_attention() as rec:
        pass
    att = nn.MultiHeadAttention(4, 2, rng=0)
    att(Tensor(np.zeros((1, 2, 4), np.float32)))
    assert rec == []  # recorded nothing after the block closed


# a (B, T, S) mask is reported with the head axis the module inserts: (B, 1, T, S)
@pytest.mark.parametrize("shape,shown", [((3, 4), (3, 4)), ((4,), (4,)), ((3, 3, 3), (3, 1, 3, 3)),
                                         ((2, 3, 4), (2, 1, 3, 4)), ((1, 2, 3), (1, 1, 2, 3))])
def test_attention_rejects_mask_of_wrong_shape(shape, shown):
    att = nn.MultiHeadAttention(4, 2, rng=0)
    x = Tensor(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"attention.*mask.*" + re.escape(str(shown))):
        att(x, mask=np.ones(shape, bool))


def test_attention_rejects_non_bool_mask():
    att = nn.MultiHeadAttention(4, 2, rng=0)
    with pytest.raises(TypeError, match="mask.*bool.*int"):
        att(Tensor(np.zeros((1, 3, 4), np.float32)), mask=np.ones((3, 3), dtype=int))


def test_d_model_not_divisible_by_heads():
    with pytest.raises(ValueError, match=r"d_model \(10\).*n_heads \(4\)"):
        nn.MultiHeadAttention(10, 4)


# ---- whole blocks: gradient checks in float64 ------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["encoder", "decoder", "decoder+cross"])
def test_block_gradients(backend, kind):
    rng = np.random.default_rng(7)
    D, H, F_, B, T, S = 8, 2, 12, 2, 4, 3
    if kind == "encoder":
        block = nn.EncoderBlock(D, H, F_, n_layers=2, rng=rng, dtype=np.float64)
    else:
        block = nn.DecoderBlock(D, H, F_, n_layers=2, cross=kind.endswith("cross"), rng=rng, dtype=np.float64)
    for p in block.parameters():  # away from the init's near-zero regime
        p.data = p.data + rng.standard_normal(p.shape) * 0.3
    x = rng.standard_normal((B, T, D))
    mem = rng.standard_normal((B, S, D))
    self_mask = masks.causal(T) if kind != "encoder" else masks.combine(
        masks.bidirectional(T), np.array([[[True, True, True, False]], [[True, True, False, False]]]))
    mem_mask = np.array([[[True, True, False]], [[True, True, True]]])
    w = rng.standard_normal((B, T, D))

    def run(xt, mt=None):
        if kind == "encoder":
            return block(xt, mask=self_mask)
        if kind == "decoder":
            return block(xt, mask=self_mask)
        return block(xt, mask=self_mask, memory=mt, memory_mask=mem_mask)

    with minillm.kernels.use(backend):
        if kind == "decoder+cross":
            gradcheck(run, x, mem)
        else:
            gradcheck(run, x)
        n = check_param_grads(block, lambda: (run(Tensor(x), Tensor(mem)) * Tensor(w)).sum())
    assert n == len(block.parameters())

