"""Checks that a mutation run showed missing (issue #24): gradcheck's own shape and dtype
check, the checkpoint's CRC, tokens_to_reach off the midpoint, AdamW's bias correction and
the causal softmax and attention, each against a formula written out here."""
import numpy as np
import pytest

import minillm as mm
from minillm import functional as F
from minillm.study import tokens_to_reach
from minillm.testing import gradcheck
from minillm.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def mul_whose_backward_writes(x_grad):
    """x * y whose backward writes x_grad(g * y) straight into x.grad, as a broken op could."""
    def fn(x, y):
        def vjp(g):
            x.grad = x_grad(g * y.data)
            return None, g * x.data
        return mm.Tensor._op(x.data * y.data, (x, y), vjp)
    return fn


@pytest.mark.parametrize("x_grad, error", [
    (lambda gx: gx.sum(0, keepdims=True), None),
    (lambda gx: gx, r"input 0 \(shape \(1, 3\), float64\) got a gradient of shape \(4, 3\), float64"),
    (lambda gx: gx.sum(0, keepdims=True).astype(np.float32), r"input 0 .* \(1, 3\), float32"),
], ids=["right", "unsummed", "float32"])
def test_gradcheck_refuses_a_gradient_of_another_shape_or_dtype(x_grad, error):
    # the (4, 3) gradient is right once summed over axis 0, so comparing it with a (1, 3)
    # direction by broadcasting would pass; float32 values are within gradcheck's tolerance
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((1, 3)), rng.standard_normal((4, 3))
    if error is None:
        assert gradcheck(mul_whose_backward_writes(x_grad), x, y) is True
    else:
        with pytest.raises(AssertionError, match=error):
            gradcheck(mul_whose_backward_writes(x_grad), x, y)


def test_checkpoint_with_an_array_rewritten_behind_its_metadata_is_refused(tmp_path):
    # a valid npz (zipfile's own CRCs agree) whose __meta__ lists the old array: only the
    # checkpoint's CRC can tell
    model = mm.build_model("cd", mm.ModelConfig(vocab_size=8, d_model=4, n_heads=1, n_layers=1, d_ff=8, max_len=4))
    save_checkpoint(tmp_path / "ck.npz", model)
    with np.load(tmp_path / "ck.npz") as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(tmp_path / "same.npz", **arrays)
    assert load_checkpoint(tmp_path / "same.npz").model_state.keys() == model.state_dict().keys()
    key = sorted(k for k in arrays if k.startswith("model/"))[0]
    arrays[key] = arrays[key] + np.ones((), arrays[key].dtype)  # same shape and dtype
    np.savez(tmp_path / "edited.npz", **arrays)
    with pytest.raises(CheckpointError, match=f"array {key} is corrupt"):
        load_checkpoint(tmp_path / "edited.npz")


def test_tokens_to_reach_interpolates_off_the_midpoint():
    # linear between the bracketing points: a quarter of the way from 5.0 to 3.0 is 4.5
    curve = [[100, 5.0], [200, 3.0], [400, 2.0]]
    assert tokens_to_reach(curve, 4.5) == pytest.approx(125.0)
    assert tokens_to_reach(curve, 2.25) == pytest.approx(350.0)
    assert tokens_to_reach(curve, 3.0) == 200.0


@pytest.mark.parametrize("backend", mm.kernels.BACKENDS)
def test_adamw_follows_pytorch_update_written_out(backend):
    lr, b1, b2, eps, wd = 0.1, 0.8, 0.9, 1e-3, 0.05
    rng = np.random.default_rng(0)
    want = {"w": rng.standard_normal((3, 4)), "b": rng.standard_normal(4)}
    params = {n: mm.nn.Parameter(a.copy()) for n, a in want.items()}
    opt = mm.optim.AdamW(list(params.items()), lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    m = {n: np.zeros_like(a) for n, a in want.items()}
    v = {n: np.zeros_like(a) for n, a in want.items()}
    with mm.kernels.use(backend):
        for t in range(1, 5):
            for n, p in params.items():
                g = rng.standard_normal(p.shape)
                p.grad = g.copy()
                decay = wd if n == "w" else 0.0  # decay="auto": matrices decay, 1-D parameters do not
                m[n] = b1 * m[n] + (1 - b1) * g
                v[n] = b2 * v[n] + (1 - b2) * g * g
                m_hat, v_hat = m[n] / (1 - b1 ** t), v[n] / (1 - b2 ** t)
                want[n] = want[n] * (1 - lr * decay) - lr * m_hat / (np.sqrt(v_hat) + eps)
            opt.step()
            for n, p in params.items():
                np.testing.assert_allclose(p.data, want[n], rtol=1e-12, atol=1e-12, err_msg=f"{n}, step {t}")


@pytest.mark.parametrize("backend", mm.kernels.BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T", [1, 2, 7])
def test_causal_softmax_written_out(backend, dtype, T):
    x = (np.random.default_rng(T).standard_normal((2, 3, T, T)) * 3).astype(dtype)
    keep = np.tril(np.ones((T, T), bool))
    e = np.where(keep, np.exp(x - np.where(keep, x, -np.inf).max(-1, keepdims=True)), 0)
    with mm.kernels.use(backend):
        y = F.softmax(mm.Tensor(x), mask=mm.masks.causal(T)).data
    assert y.dtype == dtype and np.all(y[..., ~keep] == 0)
    np.testing.assert_allclose(y, e / e.sum(-1, keepdims=True), rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("backend", mm.kernels.BACKENDS)
def test_causal_attention_written_out(backend):
    B, T, H, d = 2, 5, 2, 3
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((B, T, H * d)) for _ in range(3))
    want = np.zeros((B, T, H * d))
    for b in range(B):
        for h in range(H):
            cols = slice(h * d, (h + 1) * d)
            for i in range(T):
                s = [q[b, i, cols] @ k[b, j, cols] / np.sqrt(d) for j in range(i + 1)]  # keys j <= i only
                p = np.exp(np.array(s) - max(s))
                want[b, i, cols] = (p / p.sum()) @ v[b, :i + 1, cols]
    with mm.kernels.use(backend):
        y, _ = F.attention(q, k, v, H, mask=mm.masks.causal(T))
    np.testing.assert_allclose(y.data, want, rtol=1e-12, atol=1e-12)
