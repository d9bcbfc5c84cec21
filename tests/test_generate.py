"""Generation: the key/value cache gives what full forward passes give, and saves work."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minillm.model.generate import generate, sample_next
from minillm.model.models import ModelConfig, build_model

BOS, EOS = 1, 2
CFG = ModelConfig(vocab_size=23, d_model=16, n_heads=2, n_layers=2, d_ff=32, max_len=20, dtype="float64",
                  pad_id=0)  # with a pad id every attention also applies a key-padding mask


def model(arch, seed=0):
    m = build_model(arch, CFG, seed=seed)
    # larger weights than the 0.02 init, so that logits are far from uniform and greedy
    # choices are not decided by rounding
    rng = np.random.default_rng(seed)
    for p in m.parameters():
        if p.ndim == 2:
            p.data = p.data * 20 + rng.normal(0, 0.2, p.shape)
    return m


@settings(max_examples=8)
@given(arch=st.sampled_from(["cd", "nd", "ed"]), seed=st.integers(0, 1000),
       prompt_len=st.integers(1, 6), temperature=st.sampled_from([0.0, 1.0]))
def test_cache_equals_full_forward(arch, seed, prompt_len, temperature):
    m = model(arch, seed)
    prompt = np.random.default_rng(seed).integers(4, 23, size=prompt_len)
    kw = dict(bos_id=BOS, eos_id=None, temperature=temperature, top_k=5)
    a, la = generate(m, prompt, 10, rng=seed, use_cache=True, return_logits=True, **kw)
    b, lb = generate(m, prompt, 10, rng=seed, use_cache=False, return_logits=True, **kw)
    np.testing.assert_array_equal(a, b)
    assert len(a) == 10
    for x, y in zip(la, lb):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("arch", ["cd", "nd", "ed"])
def test_cache_applies_the_key_padding_mask(arch):
    """A pad id in the prompt is masked as a key by the cached steps too, as in the full forward."""
    m = model(arch, 5)
    prompt = np.array([4, CFG.pad_id, 9, CFG.pad_id, 7])
    a, la = generate(m, prompt, 8, bos_id=BOS, use_cache=True, return_logits=True)
    b, lb = generate(m, prompt, 8, bos_id=BOS, use_cache=False, return_logits=True)
    np.testing.assert_array_equal(a, b)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-9)


def test_nd_prompt_is_a_bidirectional_prefix():
    """The first ND prediction must depend on the whole prompt read bidirectionally: it equals
    the full model's logits with prefix_len = 1 + len(prompt), not the causal ones."""
    m = model("nd", 1)
    prompt = np.array([5, 9, 7, 11])
    _, (first, *_) = generate(m, prompt, 1, bos_id=BOS, return_logits=True)
    fed = np.concatenate([[BOS], prompt])[None]
    m.eval()
    np.testing.assert_allclose(first, m(fed, 5).data[0, -1], rtol=1e-9)
    assert not np.allclose(first, m(fed, 0).data[0, -1])


def test_cache_processes_each_position_once():
    m = model("cd", 2)
    counted = []
    ln1 = m.blocks[0].ln1
    original = ln1.forward

    def counting(x):
        counted.append(x.shape[1])
        return original(x)

    ln1.forward = counting
    generate(m, [4, 5, 6], 8, bos_id=BOS, use_cache=True)
    cached = sum(counted)
    counted.clear()
    generate(m, [4, 5, 6], 8, bos_id=BOS, use_cache=False)
    assert cached == 4 + 7                      # prompt (with BOS) once, then one per new token
    assert sum(counted) == sum(range(4, 12))    # the full forward re-reads everything


def test_stops_at_eos_and_max_len():
    m = model("cd", 3)
    eos = generate(m, [4, 5], 1, bos_id=BOS)[0]  # whatever it says first, call that EOS
    assert len(generate(m, [4, 5], 10, bos_id=BOS, eos_id=int(eos))) == 0
    out = generate(m, [4, 5], 100, bos_id=BOS)
    assert len(out) == CFG.max_len - 3 + 1       # positions fill up to max_len
    with pytest.raises(ValueError, match="max_len"):
        generate(m, np.arange(4, 4 + CFG.max_len), 1, bos_id=BOS)


def test_sample_next():
    logits = np.array([0.0, 5.0, 1.0, 4.9])
    assert sample_next(logits) == 1
    draws = {sample_next(logits, 1.0, top_k=2, rng=np.random.default_rng(i)) for i in range(50)}
    assert draws == {1, 3}
    assert sample_next(logits, 1.0, top_k=1, rng=0) == 1
    a = [sample_next(logits, 2.0, rng=np.random.default_rng(7)) for _ in range(3)]
    assert len(set(a)) == 1  # the same seed draws the same token
    with pytest.raises(ValueError):
        sample_next(logits, -1.0)


def test_a_refused_cached_call_leaves_the_cache_as_it_was():
    """A call the model refuses (here a prefix for a causal decoder) must not half-update the
    cache: the next call continues as if the refused one never happened."""
    from minillm.model.nn import KVCache
    model = build_model("cd", ModelConfig(vocab_size=16, d_model=8, n_heads=2, n_layers=1, d_ff=16, max_len=8))
    ids = np.array([[1, 5, 6, 7]])
    cache = KVCache()
    model(ids[:, :3], cache=cache)
    with pytest.raises(ValueError, match="prefix_len"):
        model(ids[:, 3:], prefix_len=2, cache=cache)
    np.testing.assert_allclose(model(ids[:, 3:], cache=cache).data[0, -1], model(ids).data[0, -1], rtol=1e-5, atol=1e-6)
