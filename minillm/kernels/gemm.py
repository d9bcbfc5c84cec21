"""A hand-written, cache-blocked GEMM: C = A @ B for float32/float64, 2-D or batched.

How it is organised (read from the inside out):

1. The micro-kernel `_tile` computes a 4x4 block of C as 16 dot products over k. B is
   first transposed (`bt`, shape (N, K)), so all 8 operand rows run along k contiguously.
   LLVM vectorises the k loop: each step loads 4 A vectors and 4 B vectors and issues 16
   fused multiply-adds into 16 vector accumulators that never leave registers. That ratio
   (8 loads per 16 FMAs) is what makes it compute-bound instead of load-bound; a plain
   `C[i, j] += A[i, k] * B[k, j]` loop stores C on every step and runs ~5x slower.
2. `_panel` sweeps the tiles of a block of rows over a block of NB columns of B. NB is
   chosen so that NB rows of `bt` (NB * K * itemsize bytes, ~1 MiB) stay in the 4 MiB L2
   cache while the 4 rows of A in use stay in L1.
3. `_gemm` runs the (batch, row-block) pairs in parallel with `prange`; broadcast batch
   dimensions are not copied: `ia[p]`, `ib[p]` name the A and B matrices of output p.
Edges (M or N not a multiple of 4) fall back to single dot products.

Measured on the 2-core build machine (benchmarks/kernels.py, 1 thread): 0.26-0.34x
OpenBLAS at 128 square, ~0.4x at 256, 0.5-0.65x at 512, ~0.43x at 1024 and at
(2048,256)@(256,1024), 0.16-0.2x on attention shapes with K = 32. OpenBLAS packs A and B into register-tile-ordered panels and runs
hand-scheduled AVX-512 outer products (~180 GFLOP/s per core here); the dot-product form
pays a horizontal sum per accumulator at the end of each tile, and LLVM here prefers 256-bit
vectors. So `matmul` below sends every shape to BLAS, and this kernel stays the readable
reference, tested equal to np.matmul.
"""
import numpy as np
from numba import prange

from . import checks
from .threads import jit

ROWS = 64   # rows of A per parallel task


@jit()
def _tile(a, bt, c, i, j, K):
    a0, a1, a2, a3 = a[i], a[i + 1], a[i + 2], a[i + 3]
    b0, b1, b2, b3 = bt[j], bt[j + 1], bt[j + 2], bt[j + 3]
    zero = c.dtype.type(0)   # accumulate in c's dtype (a bare 0 would be an int, then float64)
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = zero
    s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = zero
    for k in range(K):
        x0, x1, x2, x3 = a0[k], a1[k], a2[k], a3[k]
        y0, y1, y2, y3 = b0[k], b1[k], b2[k], b3[k]
        s00 += x0 * y0; s01 += x0 * y1; s02 += x0 * y2; s03 += x0 * y3   # noqa: E702
        s10 += x1 * y0; s11 += x1 * y1; s12 += x1 * y2; s13 += x1 * y3   # noqa: E702
        s20 += x2 * y0; s21 += x2 * y1; s22 += x2 * y2; s23 += x2 * y3   # noqa: E702
        s30 += x3 * y0; s31 += x3 * y1; s32 += x3 * y2; s33 += x3 * y3   # noqa: E702
    c[i, j], c[i, j + 1], c[i, j + 2], c[i, j + 3] = s00, s01, s02, s03
    c[i + 1, j], c[i + 1, j + 1], c[i + 1, j + 2], c[i + 1, j + 3] = s10, s11, s12, s13
    c[i + 2, j], c[i + 2, j + 1], c[i + 2, j + 2], c[i + 2, j + 3] = s20, s21, s22, s23
    c[i + 3, j], c[i + 3, j + 1], c[i + 3, j + 2], c[i + 3, j + 3] = s30, s31, s32, s33


@jit()
def _dot(a, bt, c, i, j, K):
    s = c.dtype.type(0)
    for k in range(K):
        s += a[i, k] * bt[j, k]
    c[i, j] = s


@jit()
def _panel(a, bt, c, i0, i1, j0, j1):
    """C[i0:i1, j0:j1] from rows of a and bt; 4x4 tiles inside, single dot products on edges."""
    K = a.shape[1]
    i4, j4 = i0 + (i1 - i0) // 4 * 4, j0 + (j1 - j0) // 4 * 4
    for i in range(i0, i4, 4):
        for j in range(j0, j4, 4):
            _tile(a, bt, c, i, j, K)
        for j in range(j4, j1):
            for ii in range(i, i + 4):
                _dot(a, bt, c, ii, j, K)
    for i in range(i4, i1):
        for j in range(j0, j1):
            _dot(a, bt, c, i, j, K)


@jit(parallel=True)
def _gemm(a, bt, c, ia, ib, NB):
    P, M, N = c.shape
    blocks = (M + ROWS - 1) // ROWS
    for t in prange(P * blocks):
        p, blk = t // blocks, t % blocks
        i0, i1 = blk * ROWS, min(M, blk * ROWS + ROWS)
        for j0 in range(0, N, NB):
            _panel(a[ia[p]], bt[ib[p]], c[p], i0, i1, j0, min(N, j0 + NB))


def _check(fn, a, b):
    a, b = checks.floats(fn, a=a, b=b)
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"{fn}: a and b need at least 2 dimensions (no 1-D promotion), "
                         f"got a {a.shape}, b {b.shape}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"{fn}: a's last dimension must equal b's second-to-last, got a {a.shape}, b {b.shape}")
    try:
        batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ValueError(f"{fn}: batch dimensions do not broadcast, got a {a.shape}, b {b.shape}") from None
    return a, b, batch


def gemm(a, b):
    """a @ b with np.matmul's batch broadcasting (both at least 2-D), always by the Numba kernel."""
    a, b, batch = _check("gemm", a, b)
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    c = np.empty(batch + (M, N), a.dtype)
    if c.size == 0:
        return c
    if K == 0:
        c[...] = 0
        return c
    a3 = np.ascontiguousarray(a).reshape(-1, M, K)
    bt3 = np.ascontiguousarray(np.swapaxes(b, -1, -2)).reshape(-1, N, K)
    ia = np.broadcast_to(np.arange(a3.shape[0]).reshape(a.shape[:-2]), batch).ravel()
    ib = np.broadcast_to(np.arange(bt3.shape[0]).reshape(b.shape[:-2]), batch).ravel()
    nb = max(16, (1 << 20) // (K * a.itemsize) // 4 * 4)   # ~1 MiB of bt per column block
    _gemm(a3, bt3, c.reshape(-1, M, N), ia, ib, nb)
    return c


def matmul(a, b):
    """a @ b, checked like `gemm`, computed by np.matmul (OpenBLAS).

    Measured on the build machine (benchmarks/kernels.py), `gemm` reached 0.26-0.65x of
    OpenBLAS on one thread for 128-1024 square and (2048,256)@(256,1024), and 0.12-0.37x on
    batched attention shapes (K = 16..128; with K = 32 the per-tile horizontal sums dominate).
    No shape was faster, so every shape goes to BLAS; `gemm` stays the readable, tested
    reference. Re-run the benchmark before changing this rule.

    Two shapes are rearranged first, because np.matmul handles them slowly (measured on
    transformer shapes, 1 thread):
      * (..., K) @ (K, N), e.g. activations (B, T, d) times a weight: np.matmul runs B
        small GEMMs; viewing a as (B*T, K) makes it one big one (1.1-2x faster in a step).
      * a batched right operand that is not C-contiguous (k^T in q @ k^T as a transposed
        view): np.matmul's batched loop takes a path ~2x slower than on a contiguous copy,
        and the copy costs ~10% of the product.
    """
    a, b, _ = _check("matmul", a, b)
    if b.ndim == 2 and a.ndim > 2:
        return np.matmul(a.reshape(-1, a.shape[-1]), b).reshape(a.shape[:-1] + b.shape[-1:])
    if b.ndim > 2 and not b.flags.c_contiguous:
        b = np.ascontiguousarray(b)
    return np.matmul(a, b)
