"""An embedding table's gradient: the rows of g added into the rows of dW their ids name.

dW[v] = sum of g[t] over the tokens t with ids[t] == v. Tokens repeat, so the rows cannot be
written in parallel by token; instead each thread owns a block of columns and walks every
token, adding its slice of g[t] into dW[ids[t]]: no two threads write the same value, g is
read once, and the sums run in token order (as np.add.at's do). The NumPy twin
(reference.py) sorts the ids and sums each group with np.add.reduceat, which on the small
training benchmark took ~7 ms a step against ~1 ms here (2 threads).
"""
import numpy as np
from numba import prange

from . import checks
from .threads import jit

COLUMNS = 64   # columns per parallel task


@jit(parallel=True)
def _scatter_rows(ids, g, out):
    T, D = g.shape
    for c in prange((D + COLUMNS - 1) // COLUMNS):
        j0, j1 = c * COLUMNS, min(D, c * COLUMNS + COLUMNS)
        for t in range(T):
            o, gt = out[ids[t]], g[t]
            for j in range(j0, j1):
                o[j] += gt[j]


def embedding_backward(ids, g, num_embeddings):
    """Fast `reference.embedding_backward` (minillm/engine/reference.py): dW (num_embeddings, D)
    for integer ids of any shape in [0, num_embeddings) and g (*ids.shape, D)."""
    ids = np.asarray(ids)
    (g,) = checks.floats("embedding_backward", g=g)
    checks.at_least_1d("embedding_backward", "g", g)
    num_embeddings = checks.integer("embedding_backward", "num_embeddings", num_embeddings, low=0)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"embedding_backward: ids must be integers, got dtype {ids.dtype}")
    if g.shape[:-1] != ids.shape:
        raise ValueError(f"embedding_backward: g must have shape {ids.shape} + (D,), got {g.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= num_embeddings):   # the kernel would write out of bounds
        raise IndexError(f"embedding_backward: ids must lie in [0, {num_embeddings}), "
                         f"got {ids.min()}..{ids.max()}")
    out = np.zeros((num_embeddings, g.shape[-1]), g.dtype)
    if ids.size:
        _scatter_rows(ids.reshape(-1).astype(np.intp, copy=False), checks.rows2d(g), out)
    return out
