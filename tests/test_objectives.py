"""Tests for minillm.objectives: T5's span mask and span corruption, and the PLM split.

Expected counts are recomputed here from T5's algorithm as T5's code states it (Python's
``round`` is half-to-even on float64, like ``np.round``), not taken from minillm's code.
"""
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minillm.data.objectives import (
    apply_noise_mask,
    corrupted_lengths,
    plm_split,
    random_spans_noise_mask,
    span_corruption,
)


def t5_counts(n, density, mean):
    n = max(n, 2)
    noise = min(max(round(n * density), 1), n - 1)
    spans = max(round(noise / mean), 1)
    return noise, min(spans, n - noise)  # spans capped at kept tokens (HF PR #22938)


def runs(mask):
    """List of (is_noise, length) runs."""
    return [(k, len(list(g))) for k, g in itertools.groupby(mask.tolist())]


densities = st.floats(0.01, 0.99)
means = st.floats(1.0, 12.0)


@given(n=st.integers(2, 400), density=densities, mean=means, seed=st.integers(0, 2**32 - 1))
def test_mask_counts_runs_and_ends(n, density, mean, seed):
    mask = random_spans_noise_mask(n, density, mean, rng=seed)
    noise, spans = t5_counts(n, density, mean)
    assert mask.dtype == bool and mask.shape == (n,)
    assert mask.sum() == noise
    r = runs(mask)
    assert [k for k, _ in r] == [False, True] * spans  # starts kept, ends noise, S noise runs
    assert all(length >= 1 for _, length in r)
    again = random_spans_noise_mask(n, density, mean, rng=np.random.default_rng(seed))
    assert np.array_equal(mask, again)


def test_rounding_is_half_to_even():
    # 10 * 0.25 = 2.5 -> 2 noise tokens (half-up would give 3); 14 * 0.25 = 3.5 -> 4
    assert random_spans_noise_mask(10, 0.25, 1.0, rng=0).sum() == 2
    assert random_spans_noise_mask(14, 0.25, 1.0, rng=0).sum() == 4
    # 40 * 0.25 = 10 noise tokens, 10 / 4 = 2.5 -> 2 spans; 24 * 0.25 = 6, 6 / 4 = 1.5 -> 2
    assert sum(k for k, _ in runs(random_spans_noise_mask(40, 0.25, 4.0, rng=0))) == 2
    assert sum(k for k, _ in runs(random_spans_noise_mask(24, 0.25, 4.0, rng=0))) == 2


def test_more_spans_than_kept_tokens_is_guarded():
    # 10 tokens at density 0.8, mean 1: N = 8, round(8 / 1) = 8 spans but only 2 kept tokens
    mask = random_spans_noise_mask(10, 0.8, 1.0, rng=3)
    assert mask.sum() == 8
    assert [k for k, _ in runs(mask)] == [False, True, False, True]


def test_tiny_lengths_follow_t5():
    assert random_spans_noise_mask(0, rng=0).shape == (0,)
    assert not random_spans_noise_mask(1, rng=0).any()
    assert random_spans_noise_mask(2, rng=0).tolist() == [False, True]


def test_density_and_mean_span_over_many_draws():
    rng = np.random.default_rng(123)
    noise_total = length_total = spans_total = 0
    for _ in range(400):
        n = int(rng.integers(50, 400))
        mask = random_spans_noise_mask(n, rng=rng)
        noise_total += mask.sum()
        length_total += n
        spans_total += sum(k for k, _ in runs(mask))
    assert abs(noise_total / length_total - 0.15) < 0.005
    assert abs(noise_total / spans_total - 3.0) < 0.15


@pytest.mark.parametrize("n,density,mean", [(8, 0.5, 2.0), (12, 0.5, 2.0)])
def test_masks_are_uniform_over_all_valid_patterns(n, density, mean):
    """Exact enumeration: every mask with N noise tokens in S runs that starts kept and ends
    with noise is a pair of random compositions, so all are equally likely."""
    noise, spans = t5_counts(n, density, mean)
    valid = [
        m for m in itertools.product([False, True], repeat=n)
        if sum(m) == noise and [k for k, _ in runs(np.array(m))] == [False, True] * spans
    ]
    # the number of pairs of compositions: C(N-1, S-1) * C(n-N-1, S-1)
    assert len(valid) == math.comb(noise - 1, spans - 1) * math.comb(n - noise - 1, spans - 1)
    index = {m: i for i, m in enumerate(valid)}
    draws = 100 * len(valid)
    counts = np.zeros(len(valid))
    rng = np.random.default_rng(7)
    for _ in range(draws):
        counts[index[tuple(random_spans_noise_mask(n, density, mean, rng=rng).tolist())]] += 1
    expected = draws / len(valid)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    dof = len(valid) - 1
    # mean dof, sd sqrt(2 dof): 5 sd above the mean never happens for a uniform draw
    assert chi2 < dof + 5 * math.sqrt(2 * dof), (chi2, dof)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_bad_density(bad):
    with pytest.raises(ValueError, match="noise_density"):
        random_spans_noise_mask(20, bad)
    with pytest.raises(ValueError, match="noise_density"):
        span_corruption(np.arange(20), range(10), noise_density=bad)


@pytest.mark.parametrize("bad", [0.0, 0.99, -3.0, float("nan")])
def test_bad_mean_span(bad):
    with pytest.raises(ValueError, match="mean_span_length"):
        random_spans_noise_mask(20, 0.15, bad)
    with pytest.raises(ValueError, match="mean_span_length"):
        span_corruption(np.arange(20), range(10), mean_span_length=bad)


def reconstruct(inputs, targets, sentinels):
    """Fill each sentinel in inputs with the tokens that follow it in targets."""
    sentinel_set = set(sentinels)
    fills, current = {}, None
    for t in targets.tolist():
        if t in sentinel_set:
            current = t
            fills[current] = []
        else:
            fills[current].append(t)
    out = []
    for t in inputs.tolist():
        out.extend(fills[t] if t in sentinel_set else [t])
    return out


SENTINELS = list(range(1000, 1100))


@given(n=st.integers(2, 300), density=densities, mean=means, seed=st.integers(0, 2**32 - 1))
def test_span_corruption_lengths_sentinels_and_reconstruction(n, density, mean, seed):
    tokens = np.random.default_rng(seed).integers(10, 500, size=n)
    noise, spans = t5_counts(n, density, mean)
    if spans > len(SENTINELS):
        with pytest.raises(ValueError, match="sentinel"):
            span_corruption(tokens, SENTINELS, density, mean, rng=seed)
        return
    inputs, targets = span_corruption(tokens, SENTINELS, density, mean, rng=seed)
    assert len(inputs) == n - noise + spans
    assert len(targets) == noise + spans
    assert (len(inputs), len(targets)) == corrupted_lengths(n, density, mean)
    in_sent = [t for t in inputs.tolist() if t in SENTINELS]
    out_sent = [t for t in targets.tolist() if t in SENTINELS]
    assert in_sent == out_sent == SENTINELS[:spans]  # distinct, in order, aligned
    assert targets[0] == SENTINELS[0]
    assert inputs[-1] == SENTINELS[spans - 1]  # the mask ends with noise
    assert reconstruct(inputs, targets, SENTINELS) == tokens.tolist()


def test_span_corruption_is_deterministic_for_int_and_generator_seeds():
    x = np.arange(100, 160)
    a = span_corruption(x, SENTINELS, rng=5)
    b = span_corruption(x, SENTINELS, rng=np.random.default_rng(5))
    assert all(np.array_equal(p, q) for p, q in zip(a, b))


def test_apply_noise_mask_by_hand():
    inputs, targets = apply_noise_mask([5, 6, 7, 8, 9], [False, True, True, False, True], [90, 91])
    assert inputs.tolist() == [5, 90, 8, 91]
    assert targets.tolist() == [90, 6, 7, 91, 9]


def test_too_short_and_out_of_sentinels():
    with pytest.raises(ValueError, match="too short"):
        span_corruption([7], SENTINELS)
    with pytest.raises(ValueError, match="too short"):
        span_corruption([], SENTINELS)
    # 100 tokens: 15 noise tokens in 5 spans, more than 2 sentinels
    with pytest.raises(ValueError, match="5 noise spans.*2 sentinels"):
        span_corruption(np.arange(100), [1, 2], rng=0)


@given(n=st.integers(2, 200), seed=st.integers(0, 2**32 - 1))
def test_plm_split_range_and_determinism(n, seed):
    s = plm_split(n, seed)
    assert 1 <= s <= n - 1 and s == plm_split(n, np.random.default_rng(seed))


def test_plm_split_is_uniform_and_needs_two_tokens():
    rng = np.random.default_rng(0)
    draws = [plm_split(6, rng) for _ in range(5000)]
    counts = np.bincount(draws, minlength=7)
    assert counts[0] == 0 and counts[6] == 0
    assert np.all(np.abs(counts[1:6] - 1000) < 150)
    with pytest.raises(ValueError, match="length 1"):
        plm_split(1)
