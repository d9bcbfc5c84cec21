"""Mask algebra: the three masks, their ordering, per-example prefixes and padding."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minillm import masks

lengths = st.integers(0, 24)


@st.composite
def length_and_prefix(draw):
    T = draw(lengths)
    return T, draw(st.integers(0, T))


def brute_prefix(T, P):
    """The rule written out cell by cell, independent of the vectorised code."""
    M = np.zeros((T, T), dtype=bool)
    for i in range(T):
        for j in range(T):
            M[i, j] = j <= i or (i < P and j < P)
    return M


def subset(a, b):
    return bool(np.all(~a | b))


@given(length_and_prefix())
def test_prefix_matches_its_definition(tp):
    T, P = tp
    M = masks.prefix(T, P)
    assert M.shape == (T, T) and M.dtype == bool
    np.testing.assert_array_equal(M, brute_prefix(T, P))
    # Counting: the lower triangle plus the strict upper triangle of the P x P block.
    assert M.sum() == T * (T + 1) // 2 + P * (P - 1) // 2


@given(lengths)
def test_causal_and_bidirectional_by_hand(T):
    C, B = masks.causal(T), masks.bidirectional(T)
    assert C.shape == B.shape == (T, T) and C.dtype == B.dtype == bool
    assert B.all()
    for i in range(T):
        assert C[i, : i + 1].all() and not C[i, i + 1:].any()


@given(length_and_prefix())
def test_causal_within_prefix_within_bidirectional(tp):
    T, P = tp
    assert subset(masks.causal(T), masks.prefix(T, P))
    assert subset(masks.prefix(T, P), masks.bidirectional(T))


@given(length_and_prefix())
def test_prefix_grows_with_P(tp):
    T, P = tp
    if P < T:
        small, big = masks.prefix(T, P), masks.prefix(T, P + 1)
        assert subset(small, big) and big.sum() == small.sum() + P  # the new column above row P
    # P = 1 adds nothing: position 0 already sees only itself.
    if T >= 1:
        np.testing.assert_array_equal(masks.prefix(T, 1), masks.causal(T))


@given(lengths)
def test_prefix_ends_are_causal_and_bidirectional(T):
    np.testing.assert_array_equal(masks.prefix(T, 0), masks.causal(T))
    np.testing.assert_array_equal(masks.prefix(T, T), masks.bidirectional(T))


def test_bos_convention_example():
    # BOS + 3 prefix tokens -> P = 4: the position reading the last prefix token (3) sees the
    # whole prefix region, and earlier prefix positions see it too; position 4 is causal.
    M = masks.prefix(6, 4)
    assert M[0, 3] and M[3, :4].all() and not M[3, 4]
    assert M[4, :5].all() and not M[4, 5]
    assert not M[1, 4]


@given(st.integers(0, 12).flatmap(
    lambda T: st.tuples(st.just(T), st.lists(st.integers(0, T), min_size=1, max_size=5))))
def test_per_example_prefix(tp):
    T, Ps = tp
    M = masks.prefix(T, np.array(Ps))
    assert M.shape == (len(Ps), T, T) and M.dtype == bool
    for b, P in enumerate(Ps):
        np.testing.assert_array_equal(M[b], brute_prefix(T, P))


@given(st.integers(1, 10).flatmap(lambda T: st.tuples(
    st.just(T), st.integers(0, T),
    st.lists(st.lists(st.integers(0, 3), min_size=T, max_size=T), min_size=1, max_size=4))))
def test_padding_combines_by_and(args):
    T, P, toks = args
    tokens = np.array(toks)
    pad = 0
    kp = masks.key_padding(tokens, pad)
    assert kp.shape == (len(toks), 1, T)
    for base in (masks.causal(T), masks.prefix(T, P), masks.bidirectional(T)):
        M = masks.combine(base, kp)
        assert M.shape == (len(toks), T, T)
        for b in range(len(toks)):
            for i in range(T):
                for j in range(T):
                    assert M[b, i, j] == (base[i, j] and toks[b][j] != pad)
    # per-example prefix AND padding
    Ps = np.full(len(toks), P)
    np.testing.assert_array_equal(masks.combine(masks.prefix(T, Ps), kp),
                                  masks.combine(masks.prefix(T, P), kp))
    assert masks.combine(None, None) is None
    np.testing.assert_array_equal(masks.combine(None, masks.causal(T)), masks.causal(T))


@pytest.mark.parametrize("T,P", [(4, 5), (4, -1), (0, 1)])
def test_prefix_out_of_range_is_named(T, P):
    with pytest.raises(ValueError, match=rf"prefix_len.*{P}"):
        masks.prefix(T, P)


@pytest.mark.parametrize("P", [1.5, np.array([[1, 2]]), np.array([0.5, 1.0]), True, "2"])
def test_prefix_wrong_type_or_shape(P):
    with pytest.raises(ValueError, match="prefix_len"):
        masks.prefix(4, P)


def test_zero_dim_prefix_is_an_int():
    np.testing.assert_array_equal(masks.prefix(5, np.array(2)), masks.prefix(5, 2))
    np.testing.assert_array_equal(masks.prefix(5, np.int32(2)), masks.prefix(5, 2))


def test_prefix_array_out_of_range_names_value():
    with pytest.raises(ValueError, match="7"):
        masks.prefix(4, np.array([1, 7]))


@pytest.mark.parametrize("T", [-1, 2.0, None])
def test_bad_length(T):
    with pytest.raises(ValueError, match="T"):
        masks.causal(T)
