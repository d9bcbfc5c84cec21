"""A plain tiled GEMM, C = A @ B for 2-D float32/float64: the one to read before gemm_kernel.py.

Definition: `matmul` in minillm/engine/reference.py (np.matmul). The engine never calls this
kernel; it is the baseline the tuned GEMM (gemm_kernel.py) is measured against, and the gain
that justifies the tuned one's length (README.md here; `benchmarks/kernels.py`).

It is tutorial 02's register tile, run on all threads. B is transposed once, so that rows of
A and rows of B^T both run along k. Each 2 x 4 block of C is then 8 dot products that share
their loads: each step of k loads 2 values of A and 4 of B^T and does 8 multiply-adds into 8
accumulators, which LLVM keeps in registers and vectorises along k (fast-math `reassoc` lets
it split each sum into SIMD lanes). Pairs of rows of C run in parallel (`prange`). A last odd
row or column repeats the one before it (and writes the same value twice): no edge loops.

What the tuned GEMM adds: outer products instead of dot products (no horizontal sums at the
end of each tile), a 6 x 64 tile written as LLVM vector code, B packed into panels, K walked
in slices that stay in cache, and threads that split the columns too when rows run short.
"""
import numpy as np
from numba import prange

from . import checks
from .threads import jit


@jit(parallel=True)
def _tiles(a, bt, c):
    """c = a @ bt^T for a (M, K), bt (N, K), by 2 x 4 tiles."""
    M, K = a.shape
    N = bt.shape[0]
    zero = a.dtype.type(0)
    for p in prange((M + 1) // 2):
        i0 = 2 * p
        i1 = min(i0 + 1, M - 1)
        for j0 in range(0, N, 4):
            j1, j2, j3 = min(j0 + 1, N - 1), min(j0 + 2, N - 1), min(j0 + 3, N - 1)
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = zero
            for k in range(K):
                x0, x1 = a[i0, k], a[i1, k]
                y0, y1, y2, y3 = bt[j0, k], bt[j1, k], bt[j2, k], bt[j3, k]
                s00 += x0 * y0
                s01 += x0 * y1
                s02 += x0 * y2
                s03 += x0 * y3
                s10 += x1 * y0
                s11 += x1 * y1
                s12 += x1 * y2
                s13 += x1 * y3
            c[i0, j0], c[i0, j1], c[i0, j2], c[i0, j3] = s00, s01, s02, s03
            c[i1, j0], c[i1, j1], c[i1, j2], c[i1, j3] = s10, s11, s12, s13


def gemm_plain(a, b):
    """Fast `reference.matmul` (minillm/engine/reference.py) for 2-D a (M, K) and b (K, N), the
    plain way; float32/float64, mixed inputs promoted."""
    a, b = checks.floats("gemm_plain", a=a, b=b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"gemm_plain: need a (M, K) and b (K, N), got a {a.shape}, b {b.shape}")
    c = np.empty((a.shape[0], b.shape[1]), a.dtype)
    if c.size:
        _tiles(np.ascontiguousarray(a), np.ascontiguousarray(b.T), c)
    return c
