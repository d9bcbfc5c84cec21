"""Every public name the project promises (its interface list) is importable and callable as written."""
import importlib
import subprocess
import sys

import numpy as np
import pytest

import minillm as mm
from minillm import functional as F


def test_tensor_and_autograd_names():
    x = mm.Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    for attr in ("data", "grad", "shape", "ndim", "dtype", "requires_grad"):
        getattr(x, attr)
    y = ((x * 2.0 + 1 - x / 3) ** 2 @ np.ones((3, 1))).exp().log().tanh().sigmoid().relu().sqrt()
    z = (-y).sum() + y.mean(axis=0, keepdims=True).sum() + y.max() + x.reshape(3, 2).transpose(1, 0).T[0].sum()
    z.backward()
    assert x.grad.shape == x.shape and z.item() == z.numpy().item() and not z.detach().requires_grad
    with mm.no_grad():
        assert not (x * 2).requires_grad
    with pytest.raises(TypeError):
        mm.Tensor(np.arange(3), requires_grad=True)


def test_functional_names():
    x = mm.Tensor(np.random.default_rng(0).standard_normal((2, 4, 8)).astype(np.float32), requires_grad=True)
    w, b = mm.Tensor(np.ones(8, np.float32)), mm.Tensor(np.zeros(8, np.float32))
    h = F.layer_norm(F.gelu(x), w, b, eps=1e-5)
    h = F.dropout(F.softmax(h, axis=-1, mask=None) + F.log_softmax(h, axis=-1), 0.1, training=True, rng=0)
    h = F.concat([h, F.where(np.ones((2, 4, 8), bool), h, 0.0)], axis=0)
    h = F.linear(h, mm.Tensor(np.ones((8, 8), np.float32)), None)
    y, p = F.attention(h, h, h, n_heads=2, mask=mm.masks.causal(4))
    e = F.embedding(np.array([[1, 2]]), mm.Tensor(np.ones((3, 8), np.float32)))
    loss = F.cross_entropy(y, np.zeros((4, 4), np.int64), ignore_index=-100) + e.sum()
    loss.backward()
    assert x.grad.shape == x.shape and p.shape == (4, 2, 4, 4)


def test_masks_models_objectives_optim_kernels_names():
    m = mm.masks
    assert m.prefix(4, 0).tolist() == m.causal(4).tolist() and m.prefix(4, 4).all() and m.bidirectional(2).all()
    assert m.combine(m.causal(3), m.key_padding(np.array([[5, 5, 0]]), 0)).shape == (1, 3, 3)
    cfg = mm.ModelConfig(vocab_size=20, d_model=8, n_heads=2, n_layers=1, d_ff=16, max_len=8, dropout=0.0,
                         pad_id=0, dtype=np.float32)
    for arch in ("cd", "nd", "ed"):
        model = mm.build_model(arch, cfg, seed=0)
        tokens = np.ones((1, 4), np.int64)
        out = model(tokens, tokens) if arch == "ed" else model(tokens, prefix_len=2 if arch == "nd" else None)
        assert out.shape == (1, 4, 20)
        model.load_state_dict(model.state_dict())
        model.train().eval().zero_grad()
        assert model.num_parameters() == sum(p.size for p in model.parameters()) == \
            sum(p.size for _, p in model.named_parameters())
    mask = mm.objectives.random_spans_noise_mask(20, 0.15, 3.0, rng=0)
    inputs, targets = mm.objectives.span_corruption(np.arange(20), list(range(100, 110)), rng=0)
    assert mask.shape == (20,) and len(inputs) and len(targets)
    p = mm.nn.Parameter(np.ones(3, np.float32))
    p.grad = np.ones(3, np.float32)
    for opt in (mm.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.0),
                mm.optim.AdamW([p], lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)):
        opt.step()
        opt.load_state_dict(opt.state_dict())
    assert mm.optim.clip_grad_norm([p], 1.0) == pytest.approx(np.sqrt(3))
    with mm.kernels.use("numpy"):
        assert mm.kernels.backend() == "numpy"
    assert mm.kernels.num_threads() >= 1 and mm.kernels.set_num_threads(mm.kernels.num_threads()) >= 1
    np.testing.assert_allclose(mm.kernels.gemm(np.eye(3), np.ones((3, 2))), np.ones((3, 2)))
    for name in ("rank_classify", "accuracy", "score_completions"):
        assert callable(getattr(mm.evaluate, name))
    for name in ("gradcheck", "arrays", "shapes", "broadcastable_shapes", "broadcastable_pair"):
        assert callable(getattr(mm.testing, name))


@pytest.mark.parametrize("name", ["functional", "masks", "nn", "models", "generate", "tokenizer", "objectives",
                                  "batches", "world", "optim", "checkpoint", "trainer", "evaluate", "rank",
                                  "kernels", "testing"])
def test_flat_module_names_still_import(name):
    """`from minillm.masks import causal` worked before the layered layout and still does."""
    assert importlib.import_module(f"minillm.{name}") is getattr(mm, name)


def test_cli_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "minillm", "--help"], capture_output=True, text=True).stdout
    for cmd in ("train", "generate", "eval", "describe", "study", "rank"):
        assert cmd in out
    out = subprocess.run([sys.executable, "-m", "minillm", "study", "--help"], capture_output=True, text=True).stdout
    for flag in ("--preset", "--seeds", "--jobs", "--out", "--unit", "--list-units", "--report"):
        assert flag in out
