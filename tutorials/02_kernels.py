# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. Kernels: from a triple loop to (almost) OpenBLAS, and a fused softmax
#
# Nearly all the time of training a Transformer goes into a handful of *kernels*: matrix
# products, softmax, layer norm, GELU, cross-entropy. minillm computes them with NumPy
# and with hand-written [Numba](https://numba.pydata.org) loops (`minillm/fast/`),
# each tested equal to its plain-NumPy definition (`minillm/engine/reference.py`).
#
# This tutorial measures, on *your* machine, how far a matrix product travels from a
# Python triple loop to OpenBLAS, what each step buys and why, and then why a *fused*
# softmax (one pass over each row) can beat NumPy's chain of whole-array operations.
# Every timing is printed, not asserted: machines differ, and the numbers are the lesson.
# Every result is asserted equal to NumPy's.

# %%
import os
import time

import numba
import numpy as np

import minillm as mm
from minillm import functional as F
from minillm import kernels
from minillm.fast.gemm_kernel import gemm as minillm_gemm   # the tuned GEMM of minillm/fast/gemm_kernel.py
from minillm.fast.gemm_plain import gemm_plain               # section 2.5's tile on all threads

from _setup import FAST, finish, plt, assert_all_rejected  # fast mode (MINILLM_TUTORIAL_FAST), optional matplotlib


def best_time(fn, *args, repeats=3, min_time=0.05):
    """Fastest of `repeats` timings; each timing repeats the call until min_time has passed."""
    best = float("inf")
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            fn(*args)
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        best = min(best, elapsed / calls)
    return best


rng = np.random.default_rng(0)
print("cores this process may use:", len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
print("minillm kernel backend:", kernels.backend(), "| threads:", kernels.num_threads())

# %% [markdown]
# ## 2.1 Counting the work
#
# `C = A @ B` with `A` of shape `(M, K)` and `B` of shape `(K, N)` computes `M * N` dot
# products of length `K`: `M N K` multiplies and as many adds, so **`2 M N K`
# floating-point operations** (FLOPs). Speed is FLOPs per second; a modern core can do
# tens of GFLOP/s (10⁹ FLOP/s) per core, if the data arrives fast enough.
#
# We run everything on **one thread** first, so that the comparison is about the code,
# not about how many cores it uses. `kernels.set_num_threads` sets the thread count for
# Numba and OpenBLAS together.

# %%
kernels.set_num_threads(1)
n_py = 32 if FAST else 96         # pure Python is slow: keep it small
n = 128 if FAST else 384
A32 = rng.standard_normal((n, n)).astype(np.float32)
B32 = rng.standard_normal((n, n)).astype(np.float32)
reference = A32.astype(np.float64) @ B32.astype(np.float64)
results = {}   # name -> (size, GFLOP/s)


def record(name, size, seconds):
    gflops = 2 * size ** 3 / seconds / 1e9
    results[name] = (size, gflops)
    print(f"{name:38s} n = {size:4d}: {seconds * 1e3:9.3f} ms  {gflops:8.2f} GFLOP/s")


# %% [markdown]
# ## 2.2 Level 0: three loops in Python
#
# The definition, written out. Each of the `n³` steps is several Python bytecodes, each
# handling a boxed Python float: we are measuring the interpreter.

# %%
def matmul_python(a, b):
    M, K = len(a), len(a[0])
    N = len(b[0])
    c = [[0.0] * N for _ in range(M)]
    for i in range(M):
        for j in range(N):
            s = 0.0
            for k in range(K):
                s += a[i][k] * b[k][j]
            c[i][j] = s
    return c


a_list, b_list = A32[:n_py, :n_py].tolist(), B32[:n_py, :n_py].tolist()
out = np.array(matmul_python(a_list, b_list))
assert np.allclose(out, A32[:n_py, :n_py].astype(np.float64) @ B32[:n_py, :n_py].astype(np.float64))
record("pure Python, i-j-k", n_py, best_time(matmul_python, a_list, b_list, repeats=1, min_time=0))

# %% [markdown]
# ## 2.3 Level 1: the same loops, compiled
#
# `numba.njit` compiles a Python function with NumPy arrays into machine code through
# LLVM. The first call compiles (we time it separately); later calls run at native speed.
# Same loops, same order:

# %%
@numba.njit(fastmath=True)
def matmul_ijk(a, b, c):
    M, K = a.shape
    N = b.shape[1]
    for i in range(M):
        for j in range(N):
            s = a.dtype.type(0)
            for k in range(K):
                s += a[i, k] * b[k, j]   # b[k, j] walks down a column: a stride of N floats
            c[i, j] = s


C = np.empty_like(A32)
start = time.perf_counter()
matmul_ijk(A32, B32, C)
print(f"compiling matmul_ijk took {time.perf_counter() - start:.2f} s")
assert np.allclose(C, reference, rtol=1e-3, atol=1e-3)
record("Numba, i-j-k", n, best_time(matmul_ijk, A32, B32, C))

# %% [markdown]
# A huge jump from Python, but far from what the core can do. The inner loop reads
# `b[k, j]` down a *column*: consecutive `k` are `N` floats apart in memory, so every read
# touches a new cache line, and the loop cannot use SIMD instructions (which load 8 or 16
# *neighbouring* floats at once).
#
# ## 2.4 Level 2: reorder the loops
#
# Swap the two inner loops (i-k-j). Now the innermost loop runs along a *row* of `B` and a
# row of `C`, both contiguous: `c[i, :] += a[i, k] * b[k, :]`. LLVM vectorises it. Same
# arithmetic, same result up to rounding, different order of memory accesses.

# %%
@numba.njit(fastmath=True)
def matmul_ikj(a, b, c):
    M, K = a.shape
    N = b.shape[1]
    c[:] = 0
    for i in range(M):
        for k in range(K):
            aik = a[i, k]
            for j in range(N):
                c[i, j] += aik * b[k, j]   # contiguous in j: SIMD loads and stores


matmul_ikj(A32, B32, C)
assert np.allclose(C, reference, rtol=1e-3, atol=1e-3)
record("Numba, i-k-j (contiguous inner loop)", n, best_time(matmul_ikj, A32, B32, C))

# %% [markdown]
# ## 2.5 Level 3: a register tile
#
# The i-k-j loop still loads and stores a row of `C` for every single `k`: two memory
# operations per multiply-add. The fix is to keep a small block of `C` in *registers*
# while running over all of `k`. With `B` transposed (`bt = B.T`, so that rows of `A` and
# rows of `bt` both run along `k`), a 2 x 4 tile of `C` is 8 dot products that share their
# loads: each step of `k` loads 2 values of `A` and 4 of `bt` and does 8 multiply-adds into
# 8 accumulators that never touch memory. LLVM vectorises the `k` loop of all 8 at once.

# %%
@numba.njit(fastmath=True)
def matmul_tiled(a, bt, c):
    M, K = a.shape
    N = bt.shape[0]
    zero = a.dtype.type(0)
    for i in range(0, M - M % 2, 2):
        for j in range(0, N - N % 4, 4):
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = zero
            for k in range(K):
                x0, x1 = a[i, k], a[i + 1, k]
                y0, y1, y2, y3 = bt[j, k], bt[j + 1, k], bt[j + 2, k], bt[j + 3, k]
                s00 += x0 * y0
                s01 += x0 * y1
                s02 += x0 * y2
                s03 += x0 * y3
                s10 += x1 * y0
                s11 += x1 * y1
                s12 += x1 * y2
                s13 += x1 * y3
            c[i, j], c[i, j + 1], c[i, j + 2], c[i, j + 3] = s00, s01, s02, s03
            c[i + 1, j], c[i + 1, j + 1], c[i + 1, j + 2], c[i + 1, j + 3] = s10, s11, s12, s13
    for i in range(M):                       # leftover rows and columns, one dot product each
        for j in range(N):
            if i >= M - M % 2 or j >= N - N % 4:
                s = zero
                for k in range(K):
                    s += a[i, k] * bt[j, k]
                c[i, j] = s


Bt32 = np.ascontiguousarray(B32.T)
matmul_tiled(A32, Bt32, C)
assert np.allclose(C, reference, rtol=1e-3, atol=1e-3)
record("Numba, 2x4 register tile", n, best_time(matmul_tiled, A32, Bt32, C))

# %% [markdown]
# minillm keeps this kernel, with its edge loops folded away and rows split over threads,
# as `gemm_plain` in `minillm/fast/gemm_plain.py`: the plain GEMM to read before the tuned
# one, and the baseline the tuned one must beat to earn its length.

# %%
assert np.allclose(gemm_plain(A32, B32), reference, rtol=1e-3, atol=1e-3)
record("minillm gemm_plain (the same tile)", n, best_time(gemm_plain, A32, B32))

# %% [markdown]
# ## 2.6 The library's GEMM, and OpenBLAS
#
# minillm's GEMM (`gemm` in `minillm/fast/gemm_kernel.py`) takes the last step that the tiles
# above could not: it turns the dot products around into **outer products**. It copies
# ("packs") `B` into panels of 64 columns laid out k by k (with AVX-512; 16 with AVX2),
# and at each `k` it loads one row of the panel (4 vectors of 16 floats), broadcasts 6
# entries of `A`'s column `k`, and does 24 fused multiply-adds into 24 vector accumulators
# (a 6 x 64 tile of `C`) that stay in registers for the whole `K` loop. No horizontal sums at the end, and both
# operands stream contiguously. Numba cannot promise to keep 24 vectors in registers, so
# that one tile is written as LLVM vector instructions (a Numba *intrinsic*, ~60 lines);
# the rest (packing, cache blocking, threads) is ordinary Numba. OpenBLAS, which
# `np.matmul` calls, is built the same way, with its tile written in assembly.
#
# Once the tile keeps the FMA units busy, the instructions *around* the FMAs start to
# count: the tile's loop does 4 steps of `k` per trip, and it addresses A's entries as base
# registers plus constants. That alone took the products of a transformer layer from 0.82x
# to 0.88-0.92x of MKL's speed. The tile's shape came next: 8 x 32 loads 10 values per 16
# FMAs, 6 x 64 loads 10 per 24, and uses 29 of AVX-512's 32 vector registers; it took the
# same products to 0.93-0.96x (7 x 64, one row more, ran at 0.81x).
# The tile also starts each block of `C` at the layer's bias when there is one
# (`kernels.linear`), which saves a whole pass over the output. In the backward, a row of
# ones appended to `x^T` makes the weight-gradient product `x^T dy` return the bias
# gradient too, the column sums of `dy`: the row lands in the zero padding of the last
# tile, so it is free (`kernels.weight_gradients`).
#
# Where the data sits matters as well. A 64-byte vector load that straddles two cache lines
# costs two loads, and Numba's `np.empty` promises only 32-byte alignment (it often starts
# arrays half a line past one): with the packed panels moved onto a line boundary,
# `(1024, 16) @ (16, 512)` went from 192 to 145 microseconds. NumPy's arrays often start
# 16 or 48 bytes past a line too, so a small `B` that the tile would read in place is
# packed instead when `A` has many rows.

# %%
G = minillm_gemm(A32, B32)          # first call compiles, or loads the compiled code from cache
assert np.allclose(G, reference, rtol=1e-3, atol=1e-3)
record("minillm gemm (6x64 outer-product tile)", n, best_time(minillm_gemm, A32, B32))
record("NumPy @ (OpenBLAS)", n, best_time(np.matmul, A32, B32))

# %% [markdown]
# On the build machine (one thread) `gemm` ran 2.7-2.9x faster than `gemm_plain` and
# reached 0.94-1.05x of OpenBLAS's speed on 256-1024 square and transformer-shaped
# products (0.88x at 128 square), so minillm sends
# every product of at least 2^18 multiply-adds to it (`kernels.matmul`; smaller ones go to
# OpenBLAS, whose fixed cost per call is lower). Now both with every core:

# %%
cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
kernels.set_num_threads(cores)
record(f"minillm gemm, {kernels.num_threads()} threads", n, best_time(minillm_gemm, A32, B32))
record(f"NumPy @ (OpenBLAS), {kernels.num_threads()} threads", n, best_time(np.matmul, A32, B32))
kernels.set_num_threads(1)

# %% [markdown]
# More threads help only if the cores are free. On a machine shared with other work (a
# laptop with a browser open, a CI runner) two threads can even be *slower* than one:
# each thread pool spins waiting for cores that are busy elsewhere, and two pools that
# spin (Numba's and OpenBLAS's) take the cores from each other. That is why minillm has
# one thread policy (`minillm/fast/threads.py`): its own GEMM does every large
# product, so a training step keeps only Numba's threads busy.

# %%
if plt is not None:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = list(results)
    ax.barh(names[::-1], [results[k][1] for k in names[::-1]], color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("GFLOP/s (log scale)")
    ax.set_title("Matrix product, float32, on this machine")
    fig.tight_layout()
    finish(fig, "02_gemm_ladder.png")

# %% [markdown]
# ## 2.7 A fused softmax
#
# A masked softmax in NumPy is a chain of whole-array operations: `where` (apply the
# mask), `max`, subtract, `exp`, `sum`, divide, and a final `where`. Each reads and writes
# the whole array. For attention probabilities of shape `(batch, heads, T, T)` that is
# many megabytes per operation, streamed through memory again and again, for very few
# FLOPs per byte: softmax is **memory-bound**.
#
# A *fused* kernel does all of it per row while the row (a few hundred floats) sits in the
# L1 cache: one pass for the maximum, one for `exp` and the sum, one to scale. The array
# is read about once and written once.

# %%
def softmax_numpy(x, mask):
    z = np.where(mask, x, -np.inf)
    m = z.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    e = np.exp(z - m)
    s = e.sum(axis=-1, keepdims=True)
    return np.where(s > 0, e / np.where(s > 0, s, 1), 0)


@numba.njit(fastmath={"nsz", "arcp", "contract", "reassoc"})
def softmax_fused(x, mask, out):
    R, N = x.shape
    for r in range(R):
        m = -np.inf
        for j in range(N):                   # pass 1: the maximum over kept entries
            if mask[r, j] and x[r, j] > m:
                m = x[r, j]
        if m == -np.inf:                     # nothing kept: a row of zeros, never NaN
            out[r, :] = 0
            continue
        s = 0.0
        for j in range(N):                   # pass 2: exponentiate and sum
            e = np.exp(x[r, j] - m) if mask[r, j] else 0.0
            out[r, j] = e
            s += e
        inv = 1.0 / s
        for j in range(N):                   # pass 3: normalise
            out[r, j] *= inv


shape = (2, 2, 64, 64) if FAST else (8, 4, 128, 128)
x = rng.standard_normal(shape).astype(np.float32)
causal_T = mm.masks.causal(shape[-1])        # (T, T): True where a query may see a key
mask = np.broadcast_to(causal_T, shape)      # the same mask seen at the scores' shape
x2, mask2 = x.reshape(-1, shape[-1]), np.ascontiguousarray(mask).reshape(-1, shape[-1])
out = np.empty_like(x2)
softmax_fused(x2, mask2, out)
expected = softmax_numpy(x, mask)
assert np.allclose(out.reshape(shape), expected, atol=1e-6)
with kernels.use("numba"):
    assert np.allclose(kernels.softmax(x, mask), expected, atol=1e-6)

timings = {
    "NumPy chain": best_time(softmax_numpy, x, mask),
    "our fused loop (np.exp, 1 thread)": best_time(softmax_fused, x2, mask2, out),
}
with kernels.use("numpy"):
    timings["minillm, numpy backend"] = best_time(kernels.softmax, x, mask)
with kernels.use("numba"):
    timings["minillm, numba backend, 1 thread"] = best_time(kernels.softmax, x, mask)
    timings["minillm, numba, 1 thread, the (T, T) mask"] = best_time(kernels.softmax, x, causal_T)
    kernels.set_num_threads(cores)
    timings[f"minillm, numba backend, {cores} threads"] = best_time(kernels.softmax, x, mask)
    kernels.set_num_threads(1)
mb = x.nbytes / 2 ** 20
print(f"masked softmax of {shape} float32 ({mb:.1f} MiB):")
for name, t in timings.items():
    print(f"  {name:42s} {t * 1e3:8.3f} ms   {timings['NumPy chain'] / t:5.2f}x NumPy   "
          f"{2 * x.nbytes / t / 1e9:6.2f} GB/s (read + write once)")

# %% [markdown]
# Three things make minillm's fused kernel (`minillm/fast/softmax_fused.py`) faster than
# our straightforward one:
#
# - **A vectorisable `exp`.** Inside a Numba loop `np.exp` becomes one call to the C
#   library per element, which blocks SIMD. `minillm/fast/vmath.py` writes `exp` as
#   plain arithmetic (range reduction, a polynomial, and building `2^n` from its bits),
#   which LLVM turns into 8 or 16 lanes per instruction.
# - **No branches in the loop body.** `e if keep else 0` as a *select*, not an `if` around
#   the work, keeps each loop straight-line code that vectorises.
# - **The mask is never expanded.** Given the `(T, T)` causal mask itself, the kernel reads
#   its `T` rows for every `(batch, head)` block, where a mask of the scores' full shape is
#   `batch x heads` times more bytes to copy and stream (compare the two 1-thread numba
#   rows of the table).
#
# Whether fusing pays off depends on your machine's memory bandwidth and core count;
# the table above is your answer.
#
# ## Exercises
#
# The bodies below hold reference answers so that the test suite can check them; to
# practise, replace a body with your own and run the file again.
#
# 1. **FLOPs of a batched product.** Write `matmul_flops(a_shape, b_shape)`: the FLOPs of
#    `np.matmul` on arrays of these shapes (both at least 2-D; batch dimensions
#    broadcast), counting a multiply-add as 2.
# 2. **A fused, masked log-softmax.** Write `log_softmax_rows(x, mask)` as a Numba kernel
#    (or a Python function that calls one) for 2-D float64 `x` and bool `mask`: over kept
#    entries `x - max - log(sum(exp(x - max)))`, 0 at masked entries and in rows with
#    nothing kept. Checked against `F.log_softmax(..., mask=...)`.
# 3. **GELU, fused.** Write `gelu_kernel(x)` in Numba for a 1-D array: the tanh
#    approximation `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x³)))`, as `F.gelu` computes.

# %%
def matmul_flops(a_shape, b_shape):
    batch = np.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2]))
    M, K, N = a_shape[-2], a_shape[-1], b_shape[-1]
    return 2 * int(np.prod(batch, dtype=np.int64)) * M * N * K


@numba.njit
def _log_softmax_kernel(x, mask, out):
    R, N = x.shape
    for r in range(R):
        m = -np.inf
        for j in range(N):
            if mask[r, j] and x[r, j] > m:
                m = x[r, j]
        out[r, :] = 0.0
        if m == -np.inf:
            continue
        s = 0.0
        for j in range(N):
            if mask[r, j]:
                s += np.exp(x[r, j] - m)
        shift = m + np.log(s)
        for j in range(N):
            if mask[r, j]:
                out[r, j] = x[r, j] - shift


def log_softmax_rows(x, mask):
    out = np.empty_like(x)
    _log_softmax_kernel(x, mask, out)
    return out


@numba.njit
def gelu_kernel(x):
    out = np.empty_like(x)
    c = np.sqrt(2.0 / np.pi)
    for i in range(x.size):
        v = x[i]
        out[i] = 0.5 * v * (1.0 + np.tanh(c * (v + 0.044715 * v * v * v)))
    return out


# %%
def check_matmul_flops(fn):
    def counted(a_shape, b_shape):     # count the multiply-adds of the definition, one by one
        batch = np.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2]))
        count = 0
        for _ in np.ndindex(*batch):
            for _ in range(a_shape[-2] * b_shape[-1]):
                count += a_shape[-1]
        return 2 * count
    cases = [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (5, 4, 2)), ((7, 1, 1), (1, 9)),
             ((4, 2, 6, 3), (4, 2, 3, 6))]
    for sa, sb in cases:
        assert fn(sa, sb) == counted(sa, sb), f"{sa} @ {sb}: expected {counted(sa, sb)}, got {fn(sa, sb)}"


def check_log_softmax_rows(fn):
    r = np.random.default_rng(1)
    for R_, N_ in ((1, 1), (5, 7), (40, 33)):
        xx = r.standard_normal((R_, N_)) * 30
        mm_ = r.random((R_, N_)) < 0.6
        mm_[0] = False                                  # one row with nothing kept
        ref = F.log_softmax(mm.Tensor(xx), mask=mm_).numpy()
        got = np.asarray(fn(xx, mm_))
        assert np.isfinite(got).all(), "NaN or inf in the output"
        assert np.allclose(got, ref, atol=1e-10), f"wrong values for shape {(R_, N_)}"


def check_gelu_kernel(fn):
    xx = np.linspace(-8, 8, 1001)
    assert np.allclose(fn(xx), F.gelu(mm.Tensor(xx)).numpy(), atol=1e-12), "does not match F.gelu"


def check_exercises():
    check_matmul_flops(matmul_flops)
    check_log_softmax_rows(log_softmax_rows)
    check_gelu_kernel(gelu_kernel)
    print("all three exercises check out")


check_exercises()


# %% [markdown]
# The checks reject plausible wrong answers:

# %%
wrong_answers = [
    (check_matmul_flops, lambda sa, sb: 2 * sa[-2] * sa[-1] * sb[-1]),         # forgets the batch
    (check_log_softmax_rows, lambda xx, m: np.where(m, xx - np.log(np.exp(xx).sum(1, keepdims=True)), 0)),
    (check_gelu_kernel, lambda xx: xx / (1 + np.exp(-1.702 * xx))),            # the sigmoid approximation
]
with np.errstate(all="ignore"):
    assert_all_rejected(wrong_answers)
