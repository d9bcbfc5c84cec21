"""Optimisers against hand-computed updates and the PyTorch formulas written out; schedules;
clipping; gradient accumulation; state dicts."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minillm import optim
from minillm.model.nn import Parameter


def param(values):
    return Parameter(np.array(values, dtype=np.float64))


# ---- SGD ---------------------------------------------------------------------------------

def test_sgd_plain_step_by_hand():
    p = param([1.0, -2.0])
    opt = optim.SGD([p], lr=0.1)
    p.grad = np.array([0.5, 1.0])
    opt.step()
    np.testing.assert_allclose(p.data, [0.95, -2.1])


def test_sgd_momentum_by_hand():
    p = param([[1.0]])  # 2-D so weight decay applies under decay="auto"
    opt = optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.5)
    p.grad = np.array([[2.0]])
    opt.step()
    # g = 2 + 0.5*1 = 2.5; buf = 2.5; p = 1 - 0.25 = 0.75
    np.testing.assert_allclose(p.data, [[0.75]])
    p.grad = np.array([[1.0]])
    opt.step()
    # g = 1 + 0.5*0.75 = 1.375; buf = 0.9*2.5 + 1.375 = 3.625; p = 0.75 - 0.3625
    np.testing.assert_allclose(p.data, [[0.3875]])


def test_step_skips_parameters_without_grad():
    a, b = param([1.0]), param([2.0])
    opt = optim.AdamW([a, b], lr=0.1)
    a.grad = np.array([1.0])
    opt.step()
    assert b.data[0] == 2.0 and a.data[0] != 1.0


# ---- AdamW ---------------------------------------------------------------------------------

def adamw_reference(p0, grads, lr, b1, b2, eps, wd):
    """torch.optim.AdamW's algorithm (amsgrad=False) in float64, element by element."""
    p, m, v = np.array(p0, dtype=np.float64), np.zeros(len(p0)), np.zeros(len(p0))
    for t, g in enumerate(grads, start=1):
        p = p * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t)
        denom = np.sqrt(v) / math.sqrt(1 - b2 ** t) + eps
        p = p - lr * m_hat / denom
    return p


def test_adamw_first_step_by_hand():
    # At t = 1, m_hat = g and sqrt(v_hat) = |g|: the step is lr * g / (|g| + eps).
    p = Parameter(np.array([[1.0, 1.0]]))
    opt = optim.AdamW([p], lr=0.1, eps=0.0, weight_decay=0.1)
    p.grad = np.array([[3.0, -0.5]])
    opt.step()
    decayed = 1.0 * (1 - 0.1 * 0.1)
    np.testing.assert_allclose(p.data, [[decayed - 0.1, decayed + 0.1]])


@given(st.lists(st.floats(-5, 5), min_size=3, max_size=3), st.integers(1, 6),
       st.sampled_from([0.0, 0.1]), st.integers(0, 2 ** 31))
def test_adamw_matches_pytorch_formula(p0, steps, wd, seed):
    rng = np.random.default_rng(seed)
    grads = [rng.normal(size=3) for _ in range(steps)]
    p = Parameter(np.array([p0], dtype=np.float64))  # (1, 3): a matrix, so it decays
    opt = optim.AdamW([p], lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=wd)
    for g in grads:
        p.grad = g[None].copy()
        opt.step()
    np.testing.assert_allclose(p.data[0], adamw_reference(p0, grads, 0.01, 0.8, 0.95, 1e-6, wd),
                               rtol=1e-12, atol=1e-12)


def test_adamw_float32_close_to_float64_reference():
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=5)
    grads = [rng.normal(size=5) for _ in range(10)]
    p = Parameter(p0[None].astype(np.float32))
    opt = optim.AdamW([p], lr=1e-2, weight_decay=0.05)
    for g in grads:
        p.grad = g[None].astype(np.float32)
        opt.step()
    assert p.data.dtype == np.float32
    np.testing.assert_allclose(p.data[0], adamw_reference(p0, grads, 1e-2, 0.9, 0.999, 1e-8, 0.05), rtol=1e-5)


def test_decay_rule_by_name_and_ndim():
    named = [("blocks.0.ff.fc1.weight", Parameter(np.ones((2, 2)))),
             ("blocks.0.ff.fc1.bias", Parameter(np.ones(2))),
             ("blocks.0.ln1.weight", Parameter(np.ones(2))),
             ("tok_emb.weight", Parameter(np.ones((3, 2))))]
    opt = optim.AdamW(named, lr=0.0, weight_decay=0.5)
    assert opt.decay_mask == [True, False, False, False]
    assert optim.AdamW(named, lr=0.0, decay="all").decay_mask == [True] * 4
    # lr = 0 moves nothing even with decay; with lr > 0 only the matrix shrinks under zero grads
    opt = optim.AdamW(named, lr=0.1, weight_decay=0.5)
    for _, p in named:
        p.grad = np.zeros(p.shape)
    opt.step()
    assert np.allclose(named[0][1].data, 0.95)
    assert all(np.all(p.data == 1.0) for _, p in named[1:])


def test_decay_rule_on_a_real_model():
    import minillm as mm
    from minillm.model.models import ModelConfig, build_model
    model = build_model("cd", ModelConfig(20, 8, 2, 1, 16, 8), seed=0)
    opt = optim.AdamW(model, lr=1e-3)
    decayed = {n for n, d in zip(opt.names, opt.decay_mask) if d}
    assert decayed and all(n.endswith("weight") and "emb" not in n and "ln" not in n for n in decayed)
    assert "tok_emb.weight" not in decayed and "pos_emb.weight" not in decayed


def test_step_allocates_no_new_state():
    p = Parameter(np.zeros((4, 4), dtype=np.float32))
    opt = optim.AdamW([p], lr=0.1)
    ids = [id(a) for b in opt.state.values() for a in b] + [id(p.data)]
    for _ in range(3):
        p.grad = np.ones((4, 4), dtype=np.float32)
        opt.step()
    assert [id(a) for b in opt.state.values() for a in b] + [id(p.data)] == ids


def test_bad_hyperparameters_refused():
    with pytest.raises(ValueError):
        optim.AdamW([param([1.0])], lr=-1)
    with pytest.raises(ValueError):
        optim.AdamW([param([1.0])], lr=1, betas=(1.0, 0.9))
    with pytest.raises(ValueError):
        optim.SGD([], lr=0.1)


# ---- state dicts -----------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda ps: optim.AdamW(ps, lr=0.05, weight_decay=0.1),
                                  lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9)])
def test_state_dict_round_trip_continues_identically(make):
    rng = np.random.default_rng(1)
    grads = [rng.normal(size=(2, 3)) for _ in range(6)]
    a = Parameter(np.ones((2, 3)))
    opt_a = make([a])
    for g in grads[:3]:
        a.grad = g.copy()
        opt_a.step()
    b = Parameter(a.data.copy())
    opt_b = make([b])
    opt_b.load_state_dict(opt_a.state_dict())
    for g in grads[3:]:
        a.grad, b.grad = g.copy(), g.copy()
        opt_a.step()
        opt_b.step()
    np.testing.assert_array_equal(a.data, b.data)


def test_load_state_dict_mismatch_changes_nothing():
    a = Parameter(np.ones((2, 3)))
    opt = optim.AdamW([a], lr=0.1)
    a.grad = np.ones((2, 3))
    opt.step()
    before = opt.state_dict()
    other = optim.AdamW([Parameter(np.ones((3, 2)))], lr=0.5)
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="SGD"):
        opt.load_state_dict(optim.SGD([Parameter(np.ones((2, 3)))], lr=0.1).state_dict())
    after = opt.state_dict()
    assert after["t"] == before["t"] and after["hyper"] == before["hyper"]
    for x, y in zip(before["buffers"]["exp_avg"], after["buffers"]["exp_avg"]):
        np.testing.assert_array_equal(x, y)


# ---- clipping ----------------------------------------------------------------------------------

def test_clip_grad_norm_by_hand():
    a, b = param([3.0]), param([4.0, 0.0])
    a.grad, b.grad = np.array([3.0]), np.array([4.0, 0.0])  # global norm 5
    norm = optim.clip_grad_norm([a, b], max_norm=1.0)
    assert norm == pytest.approx(5.0)
    np.testing.assert_allclose(a.grad, [0.6], rtol=1e-5)
    np.testing.assert_allclose(b.grad, [0.8, 0.0], rtol=1e-5)
    assert optim.grad_norm([a, b]) == pytest.approx(1.0, rel=1e-5)


def test_clip_grad_norm_leaves_small_gradients():
    a = param([0.3, 0.4])
    a.grad = np.array([0.3, 0.4])
    assert optim.clip_grad_norm([a], max_norm=1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(a.grad, [0.3, 0.4])


def test_clip_grad_norm_ignores_missing_and_reports_nonfinite():
    a, b = param([1.0]), param([1.0])
    a.grad = np.array([np.inf])
    assert math.isinf(optim.clip_grad_norm([a, b], 1.0))
    with pytest.raises(ValueError):
        optim.clip_grad_norm([a], 0.0)


# ---- gradient accumulation -------------------------------------------------------------------

def test_accumulated_gradients_equal_one_big_batch():
    from minillm.engine.tensor import Tensor
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(8, 3)), rng.normal(size=8)
    w0 = rng.normal(size=3)

    def loss(w, xs, ys):
        r = Tensor(xs) @ w - Tensor(ys)
        return (r * r).mean()

    w_big = Parameter(w0.copy())
    opt = optim.AdamW([w_big], lr=0.1)
    loss(w_big, x, y).backward()
    opt.step()

    w_acc = Parameter(w0.copy())
    opt = optim.AdamW([w_acc], lr=0.1)
    for part in (slice(0, 2), slice(2, 8)):  # unequal micro-batches, weighted by size
        (loss(w_acc, x[part], y[part]) * (len(x[part]) / 8)).backward()
    opt.step()
    np.testing.assert_allclose(w_acc.data, w_big.data, rtol=1e-12)


# ---- schedules ---------------------------------------------------------------------------------

def test_warmup_then_constant():
    s = optim.Schedule("constant", 1.0, warmup=4)
    assert [s(i) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert optim.Schedule("constant", 0.3)(0) == 0.3


def test_warmup_cosine_values():
    s = optim.Schedule("cosine", 2.0, warmup=2, total=12, min_lr=0.2)
    assert s(0) == pytest.approx(1.0) and s(1) == pytest.approx(2.0)
    assert s(2) == pytest.approx(2.0)            # start of the cosine
    assert s(7) == pytest.approx(1.1)            # halfway: (2 + 0.2) / 2
    assert s(12) == pytest.approx(0.2) and s(100) == pytest.approx(0.2)
    values = [s(i) for i in range(2, 13)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_warmup_inverse_sqrt_values():
    s = optim.Schedule("inverse_sqrt", 1.0, warmup=4)
    assert s(3) == pytest.approx(1.0)
    assert s(15) == pytest.approx(0.5)           # sqrt(4 / 16)
    assert s(63) == pytest.approx(0.25)


def test_schedule_errors():
    with pytest.raises(ValueError, match="linear"):
        optim.Schedule("linear", 1.0)
    with pytest.raises(ValueError, match="total=5"):
        optim.Schedule("cosine", 1.0, warmup=10, total=5)
