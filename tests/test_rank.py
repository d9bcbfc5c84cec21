"""Exact analytic checks of the rank measures behind "why decoder-only?": a causal attention
matrix is full rank, a prefix one adds the rank of its prefix block, linear attention has rank <= d."""
import numpy as np
from hypothesis import given, strategies as st

from minillm.study import rank


@given(n=st.integers(2, 40))
def test_zero_logits_bidirectional_is_rank_one_and_causal_is_full_rank(n):
    Z = np.zeros((n, n))
    A = rank.softmax_attention(Z, "bidirectional")
    np.testing.assert_allclose(A, np.full((n, n), 1 / n))
    assert rank.numerical_rank(A) == 1
    C = rank.softmax_attention(Z, "causal")
    i, j = np.indices((n, n))
    np.testing.assert_allclose(C, np.where(j <= i, 1 / (i + 1), 0))
    assert rank.numerical_rank(C, rtol=1e-12) == n
    sign, logdet = np.linalg.slogdet(C)
    assert sign > 0
    np.testing.assert_allclose(logdet, np.log(np.diag(C)).sum())


@given(n=st.integers(2, 24), d=st.integers(1, 6), data=st.data())
def test_prefix_rank_formula(n, d, data):
    P = data.draw(st.integers(0, n))
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    # moderate logits keep the triangular part well conditioned, so numerical rank is exact rank
    logits = 0.3 * rng.standard_normal((n, d)) @ rng.standard_normal((d, n)) / np.sqrt(d)
    A = rank.softmax_attention(logits, "prefix", P)
    r_pp = rank.numerical_rank(A[:P, :P], rtol=1e-9) if P else 0
    assert rank.numerical_rank(A, rtol=1e-9) == r_pp + (n - P)


@given(n=st.integers(3, 30), d=st.integers(1, 4))
def test_linear_attention_rank_is_at_most_d(n, d):
    rng = np.random.default_rng(n * 7 + d)
    A = rank.linear_attention(rng.standard_normal((n, d)), rng.standard_normal((n, d)))
    np.testing.assert_allclose(A.sum(1), 1)
    assert rank.numerical_rank(A, rtol=1e-9) <= d


def test_rank_measures_on_known_matrices():
    I = np.eye(5)
    assert rank.numerical_rank(I) == 5 and np.allclose(list(rank.ranks(I).values()), [5, 5, 5])
    D = np.diag([1.0, 1e-9, 0, 0])
    assert rank.numerical_rank(D) == 1 and np.isclose(rank.ranks(D)["stable"], 1)
    assert np.isclose(rank.ranks(np.diag([1.0, 1.0, 0]))["entropy"], 2)   # two equal directions (and a zero)


def test_synthetic_table_shows_scale_dependence():
    rows = rank.synthetic(n=32, d=4, scales=(0.001, 3.0), seeds=2)
    get = lambda s, k: next(r for r in rows if r["scale"] == s and r["kind"] == k)  # noqa: E731
    # Tiny logits: bidirectional softmax attention is almost the rank-1 average; causal stays full rank.
    assert get(0.001, "bidirectional")["stable"] < 1.01
    assert get(0.001, "causal")["numerical"] == 32
    assert get(3.0, "linear (control)")["numerical"] <= 4
    assert "kind" in rank.format_table(rows, ["scale", "kind", "numerical", "entropy", "stable"])
