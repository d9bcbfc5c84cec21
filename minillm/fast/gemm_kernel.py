"""A hand-written GEMM, C = A @ B for float32/float64, 2-D or batched: pack, then tile.

How a fast GEMM is built (read from the inside out):

1. The register tile `_tile` computes an MR x NR block of C (6 x 64 in float32 with AVX-512,
   6 x 16 with AVX2) as a sum of K outer products: at each step k it loads NV vectors of B's
   row k, broadcasts each of A's MR entries of column k, and issues MR * NV fused
   multiply-adds into MR * NV vector accumulators that stay in registers for the whole loop.
   That is 24 FMAs per 10 loads, so the FMA units, not memory, set the pace; with the 4 B
   vectors and a broadcast, 29 of the 32 vector registers are in use.
   Numba cannot say "keep these 24 vectors in registers": written as Python loops over an
   accumulator array, the accumulators live in memory (~10 GFLOP/s here); written as scalar
   variables, LLVM vectorises along k instead and spills (~13 GFLOP/s); and its default tuning
   for this CPU family keeps auto-vectorised loops at 256-bit vectors. So `_tile` is a Numba
   intrinsic that writes those few LLVM vector instructions itself (`_tile_code`). Its loop
   is unrolled 4 steps of k, and A's entries are addressed as base registers plus constants.
   Measured on the products of the small benchmark model's layers, one thread, against MKL
   (PyTorch's matmul, same process): 0.82x with an 8 x 32 tile walking one pointer down A's
   rows, 0.88-0.92x with the unrolled, base-plus-constant 8 x 32 tile, 0.93-0.96x with
   6 x 64 (tried too: 12 x 32 0.91x, 5 x 64 0.90x, 8 x 48 0.85x, 7 x 64 0.81x, 4 x 64 0.82x).
   A B of at most 32 columns (attention's per-head products with 32-wide heads) would
   waste half of a 64-wide tile, so it gets the narrow tile, 6 x 32 (`_tile_narrow`).
2. Packing (`_pack`) copies B into panels of NR columns laid out k-major, so the tile reads
   each row of a panel with vector loads whatever B's strides (a transposed view costs
   nothing extra); the last panel is padded with zeros so every tile is a full tile. A is
   read in place when its rows are contiguous (the tile broadcasts single entries, so any
   row stride will do; `_tile`); otherwise it is packed into panels of MR rows too
   (`_tile_panel`), unless its columns are contiguous, as in a weight gradient x^T @ dy, and
   x's rows are under 2 KiB apart: then MR rows of A are a panel already, with x's row
   stride (weight gradients of the tiny model's 128-wide layers: 0.81-0.86x -> 0.89-0.95x of
   MKL). Packing costs O(MK + KN) against the product's O(MNK). A B of at most B_IN_PLACE
   whole panels with contiguous rows (attention's per-head P v, dS k, ...) is read in place:
   there packing would be a large share of a small product. Unless it is not 64-byte aligned
   and C has PACK_FROM_ROWS rows or more: a vector load that straddles two cache lines costs
   two, and NumPy's arrays often start 16 or 48 bytes past a line (1024 x 128 @ 128 x 128:
   237 us read in place, 203 us packed). For the same reason the packed panels are aligned
   (`_aligned`): Numba's own np.empty promises 32 bytes, and often starts half a line past
   one (K = 16, N = 512: 192 -> 145 us).
3. `_work` walks K in slices of KC: it packs the slice of a B block once (KC x NR values per
   panel: a panel stays in L1 or L2 while the tile sweeps the rows of A, which stay in L2) and
   multiplies every row block of its tasks by it, adding each tile into C (the first slice
   writes C, the others add to it). Tasks are blocks of C, split evenly over the threads
   (`_work_parallel`; blocks of rows, and of columns too when rows alone leave a thread
   idle). Broadcast batch dimensions are not copied: `ia[p]`, `ib[p]` name the A and B
   matrices of output p. A long, thin product (a weight gradient x^T dy, K = tokens in the
   batch) is split along K instead, and the threads' partial products are added.
4. `_work` is compiled once per dtype, on first use, for arrays of any layout (`compiled`),
   not once per combination of layouts it meets: each copy takes seconds to compile. Kernels
   that call it (`_work_parallel`, attention.py) get it as a function pointer (`compiled`), so
   they do not each compile a copy of it either.

Measured against np.matmul (OpenBLAS) in `benchmarks/kernels.py`; the figures and the
dispatch rule they justify are in `matmul` below. attention.py calls `_work`, one head at a
time.
"""
import functools
import math

import numba
import numpy as np
from llvmlite import binding, ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import checks
from .bias import add_bias
from .threads import Pointer, jit, specialise


def _vector_bytes():
    """64 (AVX-512) or 32 bytes per register, from the features Numba compiles for."""
    features = numba.config.CPU_FEATURES or binding.get_host_cpu_features().flatten()
    return 64 if "+avx512f" in features else 32


VECTOR_BYTES = _vector_bytes()
MR = 6          # rows of A per register tile
# vectors of B per register tile: NR = NV * lanes columns (64 float32 with AVX-512). 6 x 4
# accumulators need 24 of AVX-512's 32 vector registers; AVX2 has 16, so it gets 6 x 2
NV = 4 if VECTOR_BYTES == 64 else 2
NV_NARROW = NV // 2   # ... for B of at most half as many columns (attention's per-head products)
PANEL_BYTES, NARROW_BYTES = NV * VECTOR_BYTES, NV_NARROW * VECTOR_BYTES   # a panel row: NR * itemsize
KC = 256        # depth of one pass over K
B_IN_PLACE = 2  # B with at most this many panels of contiguous rows is read in place ...
PACK_FROM_ROWS = 256   # ... unless it is not 64-byte aligned and C has this many rows: then packing pays
UNROLL = 4      # steps of k per trip of the tile's loop: fewer loop and address instructions per FMA
ROWS = 96       # rows of A per task, at most: 16 panels, ~100 KiB of packed A in L2 at K = 256
GEMM_MIN_WORK = 1 << 18   # multiply-adds from which `matmul` uses gemm: below, OpenBLAS runs on one thread
PARALLEL_WORK = 1 << 20   # multiply-adds per thread below which a thread is not worth waking


def panel_width(dtype, n=None):
    """NR: the columns of one B panel for this dtype, and for a B of n columns: the narrow
    tile's when n fits in it (a wide tile would waste half its work or more)."""
    size = np.dtype(dtype).itemsize
    return NARROW_BYTES // size if n is not None and n <= NARROW_BYTES // size else PANEL_BYTES // size


def _make_tile(panel, nv):
    """The register tile as a Numba intrinsic, for A in rows (panel=False) or in a panel,
    with nv vectors of B per row."""
    @intrinsic
    def tile(typingctx, a, bp, c, add, bias):
        return types.none(a, bp, c, add, bias), functools.partial(_tile_code, panel, nv)
    return tile


def _tile_code(panel, nv, context, builder, sig, args):
    """LLVM code for c[:, :] = a @ bp (add=False) or c[:, :] += a @ bp (add=True), plus bias
    (NR values, added to every row) when add is False and bias is not empty; with bp
    (K, NR) and c (MR, NR) with contiguous rows (bp: a packed panel, or B read in place), and
    a either (MR, K) with contiguous rows, or (panel=True) a^T, (K, MR) with contiguous rows:
    a packed panel, or MR columns of a weight gradient's x read in place. Row strides may be
    anything."""
    A, B, C = (context.make_array(t)(context, builder, v) for t, v in zip(sig.args[:3], args[:3]))
    fty = context.get_value_type(sig.args[0].dtype)
    size = context.get_abi_sizeof(fty)
    lanes = VECTOR_BYTES // size
    vty = ir.VectorType(fty, lanes)
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3),
                                         f"llvm.fma.v{lanes}f{8 * size}")
    intp = context.get_value_type(types.intp)

    def const(x):
        return ir.Constant(intp, x)

    def strides(array):   # in elements
        return [builder.sdiv(s, const(size)) for s in cgutils.unpack_tuple(builder, array.strides)]

    def vector(row, col):   # row[col:col + lanes] as a vector pointer
        return builder.bitcast(builder.gep(row, [col]), vty.as_pointer())

    (a0, _), (b0, _), (c0, _) = strides(A), strides(B), strides(C)
    if panel:   # a[r, k] at data + k * a0 + r: one pointer, constant offsets per step of k
        def a_at(r, k):
            return builder.gep(A.data, [builder.add(builder.mul(k, a0), const(r))])
    else:
        # one pointer per row of a, each passed through an empty asm statement so that LLVM
        # cannot see they are a stride apart: it then keeps MR base registers and addresses
        # a[r, k] as base_r + k (plus a constant in the unrolled steps), instead of walking
        # one pointer down the rows with MR adds per step of k
        ptr = A.data.type
        a_row = [builder.asm(ir.FunctionType(ptr, [ptr]), "", "=r,0",
                             [builder.gep(A.data, [builder.mul(const(r), a0)])], side_effect=False)
                 for r in range(MR)]

        def a_at(r, k):
            return builder.gep(a_row[r], [k])
    c_row = [builder.gep(C.data, [builder.mul(const(r), c0)]) for r in range(MR)]

    # accumulators: stack slots that LLVM promotes to registers (mem2reg), starting at c, at
    # the bias or at 0 (branches, not selects: c and bias are not read unless used)
    acc = [[cgutils.alloca_once_value(builder, ir.Constant(vty, None)) for v in range(nv)] for r in range(MR)]
    bias = context.make_array(sig.args[4])(context, builder, args[4])
    add = context.cast(builder, args[3], sig.args[3], types.boolean)
    with builder.if_else(add) as (then, otherwise):
        with then:
            for r in range(MR):
                for v in range(nv):
                    builder.store(builder.load(vector(c_row[r], const(v * lanes)), align=size), acc[r][v])
        with otherwise:
            # C is written, not read: ask for its lines now (prefetch for writing), so that
            # they arrive while the loop runs instead of stalling the stores at its end
            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            prefetch = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0i8")
            for r in range(MR):
                for v in range(nv):   # one vector per 64-byte line with AVX-512 (two with AVX2: harmless)
                    builder.call(prefetch, [builder.bitcast(vector(c_row[r], const(v * lanes)), i8p),
                                            ir.Constant(i32, 1), ir.Constant(i32, 3), ir.Constant(i32, 1)])
            with builder.if_then(builder.icmp_signed(">", cgutils.unpack_tuple(builder, bias.shape)[0], const(0))):
                for v in range(nv):
                    b = builder.load(vector(bias.data, const(v * lanes)), align=size)
                    for r in range(MR):
                        builder.store(b, acc[r][v])

    def step(k):   # acc += outer product of a[:, k] and bp[k]: NV loads, MR broadcasts, MR * NV FMAs
        b_k = builder.mul(k, b0)
        b = [builder.load(vector(B.data, builder.add(b_k, const(v * lanes))), align=size) for v in range(nv)]
        for r in range(MR):
            x = builder.insert_element(ir.Constant(vty, ir.Undefined), builder.load(a_at(r, k)),
                                       ir.Constant(ir.IntType(32), 0))
            x = builder.shuffle_vector(x, ir.Constant(vty, ir.Undefined),          # broadcast a[r, k]
                                       ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))
            for v in range(nv):
                builder.store(builder.call(fma, [x, b[v], builder.load(acc[r][v])]), acc[r][v])

    K = cgutils.unpack_tuple(builder, B.shape)[0]
    whole = builder.sdiv(K, const(UNROLL))   # K in steps of UNROLL, then the rest one at a time
    with cgutils.for_range(builder, whole) as loop:
        for u in range(UNROLL):
            step(builder.add(builder.mul(loop.index, const(UNROLL)), const(u)))
    with cgutils.for_range_slice(builder, builder.mul(whole, const(UNROLL)), K, const(1)) as (k, _):
        step(k)
    for r in range(MR):
        for v in range(nv):
            builder.store(builder.load(acc[r][v]), vector(c_row[r], const(v * lanes)), align=size)
    return context.get_dummy_value()


_tile, _tile_panel = _make_tile(False, NV), _make_tile(True, NV)
_tile_narrow, _tile_panel_narrow = _make_tile(False, NV_NARROW), _make_tile(True, NV_NARROW)


@jit()
def _copy(x, out):
    """out[:, :] = x: loops, not a slice assignment, which Numba compiles as a broadcasting
    helper (~1 s of compile)."""
    for i in range(x.shape[0]):
        for k in range(x.shape[1]):
            out[i, k] = x[i, k]


@jit()
def _aligned(shape, dtype):
    """np.empty(shape, dtype) starting on a 64-byte boundary. Numba's np.empty promises only
    32-byte alignment (measured: 32 bytes past a line at 16 KiB and 256 KiB, on one at 64 KiB),
    and from a panel 32 bytes off every 64-byte vector load straddles two cache lines."""
    n = 1
    for s in shape:
        n *= s
    buf = np.empty(n + 64, dtype)
    skip = (-buf.ctypes.data) % 64 // buf.itemsize
    return buf[skip:skip + n].reshape(shape)


@jit()
def _pack(x, out, W):
    """out[g, k, w] = x[g * W + w, k] for x (R, K), out (G, K, W); zero past row R.
    Callers pass W as a constant (MR or NR), so LLVM unrolls the w loop. When x's columns
    are memory rows (B = a contiguous matrix, seen transposed as bt), the loop over k is
    outermost, so they are read from start to end. When x's rows are (B = W^T, the dx of a
    linear layer), each row is read one 64-byte line at a time: going down a column instead
    would touch W rows a K-row stride apart, which with K a power of two all fall in a few
    sets of the L1 cache and evict each other at every k (a 128 x 256 slice of W: 31 -> 21 us)."""
    R, K = x.shape
    full = min(out.shape[0], R // W)   # panels with no row past R
    if x.strides[1] == x.itemsize:
        line = 64 // x.itemsize
        for g in range(full):
            for k0 in range(0, K, line):
                for w in range(W):
                    for k in range(k0, min(K, k0 + line)):
                        out[g, k, w] = x[g * W + w, k]
    else:
        for k in range(K):
            for g in range(full):
                for w in range(W):
                    out[g, k, w] = x[g * W + w, k]
    for g in range(full, out.shape[0]):
        for k in range(K):
            for w in range(W):
                out[g, k, w] = x[g * W + w, k] if g * W + w < R else 0


def signature(dtype):
    """_work's types for one dtype: A, B, C and the batch indices of any layout (A and B
    read-only), so one compiled copy serves transposed views, contiguous and read-only
    arrays and, in attention.py, one head's columns of a (B, T, D) array alike; each copy
    takes seconds to compile. The bias: N values padded to whole panels, or empty."""
    dt = numba.from_dtype(np.dtype(dtype))
    any3, index = types.Array(dt, 3, "A", readonly=True), types.Array(types.intp, 1, "A", readonly=True)
    bias = types.Array(dt, 1, "C", readonly=True)
    return types.none(any3, any3, types.Array(dt, 3, "A"), index, index, bias, *(types.intp,) * 4)


_compiled = {}


def compiled(dtype):
    """The GEMM for `dtype`, `_work`, as a function pointer (`threads.Pointer`), compiled (or
    loaded from the cache) on first use, one copy for every layout; attention.py calls it
    before compiling its kernels."""
    work = _compiled.get(dtype)
    if work is None:
        work = Pointer(_work, signature(dtype))
        specialise(_work_parallel, types.none(work.type, *work.signature.args))
        _compiled[dtype] = _compiled[np.dtype(dtype)] = work
    return work


@jit()
def _work(a, bt, c, ia, ib, bias, rows, cols, t0, t1):
    """Tasks t0..t1 of C = A @ B (+ bias, unless bias is empty), for a (Pa, M, K) and bt
    (Pb, N, K) with any strides; the tile adds the bias as it starts C.

    Task t is a block of C: output matrix p, `rows` rows (a multiple of MR) by `cols`
    columns (a multiple of NR); the tasks of one column block are adjacent. For each run of
    such tasks and each slice of KC values of k, the B block's slice is packed once
    (cols * KC values: it stays in L2) and every row block of the run is multiplied by it.
    A takes one of three paths: with contiguous rows it is read in place, MR rows at a time
    (the last M % MR rows from a zero-padded copy); with contiguous columns and a row stride
    under 2 KiB (x^T of a weight gradient) MR of its rows are read in place as a panel (the
    last partial panel is packed); any other A is packed into panels of MR rows, laid out
    k-major, as B is. A small B with contiguous rows is read in place (`b_in_place`).

    C may have one row more than A: A's missing row is then taken as all ones, so C's last
    row gets B's column sums (a bias gradient, beside the weight gradient x^T @ dy). It
    rides in the zero-padded rows of A's last tile, for free unless A's rows fill it."""
    P, M, N = c.shape
    MA, K = a.shape[1], a.shape[2]   # M = MA, or MA + 1 with the row of ones
    e0 = MA - MA % MR                # the edge tile: A's last rows (zero-padded), the ones, or both
    narrow = N <= NARROW_BYTES // c.itemsize   # the narrow tile: as `panel_width`
    nr = NARROW_BYTES // c.itemsize if narrow else PANEL_BYTES // c.itemsize
    in_place = a.strides[2] == a.itemsize
    # A with contiguous columns (x^T in a weight gradient x^T @ dy): MR of its rows are already
    # a panel, k-major with x's row stride; only a last partial panel is packed (padded). Not
    # from a stride of 2 KiB up: the panel's K rows then fall in a few sets of the L1 cache,
    # and packing is faster (weight gradients with 512 or 1024 inputs, measured)
    panels_in_place = not in_place and a.strides[1] == a.itemsize and a.strides[2] < 2048
    # B read in place, not packed: when it has at most B_IN_PLACE whole panels with contiguous
    # rows (the per-head products of attention: P v, dS k, ...), packing would cost a large
    # part of the product, and so few rows stay in L1 anyway; but from PACK_FROM_ROWS rows of
    # C up, only if every row starts on a 64-byte line (else each vector load reads two)
    on_lines = bt.ctypes.data % 64 == 0 and bt.strides[0] % 64 == 0 and bt.strides[2] % 64 == 0
    b_in_place = (bt.strides[1] == bt.itemsize and N % nr == 0 and N <= B_IN_PLACE * nr
                  and (M < PACK_FROM_ROWS or on_lines))
    row_blocks, col_blocks = (M + rows - 1) // rows, (N + cols - 1) // cols
    bp = _aligned((cols // nr, KC, nr), c.dtype)
    ap = np.empty((0 if in_place else 1 if panels_in_place else rows // MR, KC, MR), c.dtype)
    edge = np.zeros((MR, KC), c.dtype)
    ct = np.empty((MR, nr), c.dtype)
    t = t0
    while t < t1:
        run = min(t1, (t // row_blocks + 1) * row_blocks)   # tasks t..run share p and the column block
        p, cb = t // (row_blocks * col_blocks), t // row_blocks % col_blocks
        c0 = cb * cols
        nb = (min(N, c0 + cols) - c0 + nr - 1) // nr
        for k0 in range(0, K, KC):
            k1 = min(K, k0 + KC)
            if b_in_place:
                pass
            elif narrow:   # nr as a constant in each call, so that `_pack` unrolls its inner loop
                _pack(bt[ib[p], c0:c0 + cols, k0:k1], bp[:nb, :k1 - k0], NARROW_BYTES // c.itemsize)
            else:
                _pack(bt[ib[p], c0:c0 + cols, k0:k1], bp[:nb, :k1 - k0], PANEL_BYTES // c.itemsize)
            a_p, c_p, kk = a[ia[p], :, k0:k1], c[p], k1 - k0     # views made once, not per tile
            for rb in range(t % row_blocks, t % row_blocks + run - t):
                r0, r1 = rb * rows, min(M, rb * rows + rows)
                if panels_in_place:
                    if r1 == M and e0 < M:
                        _pack(a_p[e0:], ap[:1, :kk], MR)
                        if M > MA:
                            ap[0, :kk, MA - e0] = 1
                elif not in_place:
                    _pack(a_p[r0:r1], ap[:(r1 - r0 + MR - 1) // MR, :kk], MR)
                    if r1 == M > MA:
                        ap[(MA - r0) // MR, :kk, (MA - r0) % MR] = 1
                elif r1 == M and e0 < M:
                    _copy(a_p[e0:], edge[:MA - e0, :kk])
                    if M > MA:
                        edge[MA - e0, :kk] = 1
                for j in range(nb):
                    j0 = c0 + j * nr
                    b_j = bt[ib[p], j0:j0 + nr, k0:k1].T if b_in_place else bp[j, :kk]
                    for i0 in range(r0, r1, MR):
                        whole = i0 + MR <= M and j0 + nr <= N   # a whole tile goes straight into C
                        ci, add = c_p[i0:i0 + MR, j0:j0 + nr] if whole else ct, whole and k0 > 0
                        bias_j = bias[j0:j0 + nr] if k0 == 0 else bias[:0]   # the bias starts C, once
                        if not in_place:
                            if panels_in_place and i0 + MR <= MA:
                                a_i = a_p[i0:i0 + MR].T
                            else:
                                a_i = ap[0 if panels_in_place else (i0 - r0) // MR, :kk]
                            if narrow:
                                _tile_panel_narrow(a_i, b_j, ci, add, bias_j)
                            else:
                                _tile_panel(a_i, b_j, ci, add, bias_j)
                        else:
                            a_i = a_p[i0:i0 + MR] if i0 + MR <= MA else edge[:, :kk]
                            if narrow:
                                _tile_narrow(a_i, b_j, ci, add, bias_j)
                            else:
                                _tile(a_i, b_j, ci, add, bias_j)
                        if not whole:                           # an edge goes via ct
                            for r in range(min(MR, M - i0)):
                                for q in range(min(nr, N - j0)):
                                    c_p[i0 + r, j0 + q] = ct[r, q] + (c_p[i0 + r, j0 + q] if k0 > 0 else 0)
        t = run


@jit(parallel=True)
def _work_parallel(work, a, bt, c, ia, ib, bias, rows, cols, tasks, threads):
    """`work` (`_work`) with the tasks split evenly over `threads` threads."""
    for s in prange(threads):
        work(a, bt, c, ia, ib, bias, rows, cols, s * tasks // threads, (s + 1) * tasks // threads)


def _blocks(P, M, N, nr, threads):
    """Rows and columns per task: row blocks of up to ROWS rows, all columns, unless that
    leaves fewer than two tasks per thread; then columns are split too. Blocks are evened
    out (128 rows make two blocks of 64, not 96 + 32) so threads finish together."""
    def even(n, unit, blocks):   # the size of `blocks` near-equal blocks covering n, in whole units
        return -(-(-(-n // unit)) // blocks) * unit
    row_blocks = -(-M // ROWS)
    want = 2 * threads if threads > 1 else 1
    col_blocks = max(1, min(-(-N // nr), -(-want // (P * row_blocks))))
    return even(M, MR, row_blocks), even(N, nr, col_blocks)


def _check(fn, a, b):
    a, b = checks.floats(fn, a=a, b=b)
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"{fn}: a and b need at least 2 dimensions (no 1-D promotion), "
                         f"got a {a.shape}, b {b.shape}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"{fn}: a's last dimension must equal b's second-to-last, got a {a.shape}, b {b.shape}")
    if a.shape[:-2] == b.shape[:-2]:
        return a, b, a.shape[:-2]
    try:
        batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ValueError(f"{fn}: batch dimensions do not broadcast, got a {a.shape}, b {b.shape}") from None
    return a, b, batch


def _batch_index(shape, batch):
    """For each output matrix, the index of its operand matrix (broadcasting without copies)."""
    n = math.prod(shape)
    if shape == batch:
        return np.arange(n)
    return np.broadcast_to(np.arange(n).reshape(shape), batch).ravel()


def gemm(a, b):
    """Fast `reference.matmul` (minillm/engine/reference.py), always by this file's kernel: a @ b
    with np.matmul's batch broadcasting (both at least 2-D)."""
    return _gemm(*_check("gemm", a, b))


def _gemm(a, b, batch, bias=None, sums=False):
    """a @ b (+ bias, a (N,) array of a's dtype, or None), by the Numba kernel; with sums,
    one more row: b's column sums (as if a had a last row of ones; `weight_gradients`)."""
    MA, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    M = MA + sums
    c = np.empty(batch + (M, N), a.dtype)
    if c.size == 0:
        return c
    if K == 0:
        c[...] = 0 if bias is None else bias
        return c
    work, nr = compiled(a.dtype), panel_width(a.dtype, N)
    padded = np.zeros(0 if bias is None else -(-N // nr) * nr, a.dtype)   # whole panels: no tile reads past it
    if bias is not None:
        padded[:N] = bias
    a3 = a.reshape((-1, MA, K))
    bt3 = np.swapaxes(b, -1, -2).reshape((-1, N, K))
    ia, ib = _batch_index(a.shape[:-2], batch), _batch_index(b.shape[:-2], batch)
    P, c3 = len(ia), c.reshape(-1, M, N)
    threads = max(1, min(numba.get_num_threads(), M * N * K * P // PARALLEL_WORK))
    if threads > 1 and P == 1 and K % threads == 0 and K >= 4 * max(M, N):
        # A long, thin product (a weight gradient x^T @ dy: K = batch x tokens): split K, one
        # part per thread, and add the partial products. Split by rows or columns instead,
        # every thread would pack all of one operand, and packing is most of the cost here.
        S = threads
        a3 = a3.reshape(MA, S, K // S).transpose(1, 0, 2)     # views: part s is k in [s K/S, (s+1) K/S)
        bt3 = bt3.reshape(N, S, K // S).transpose(1, 0, 2)
        parts = np.empty((S, M, N), a.dtype)
        ia = ib = np.arange(S)
        rows, cols = _blocks(S, M, N, nr, threads)
        _work_parallel(work, a3, bt3, parts, ia, ib, padded[:0], rows, cols, S * -(-M // rows) * -(-N // cols),
                       threads)
        np.sum(parts, axis=0, out=c)
        return c if bias is None else np.add(c, bias, out=c)
    rows, cols = _blocks(P, M, N, nr, threads)
    tasks = P * -(-M // rows) * -(-N // cols)
    if threads > 1 and tasks > 1:
        _work_parallel(work, a3, bt3, c3, ia, ib, padded, rows, cols, tasks, min(threads, tasks))
    else:
        _work(a3, bt3, c3, ia, ib, padded, rows, cols, 0, tasks)
    return c


def matmul(a, b):
    """Fast `reference.matmul` (minillm/engine/reference.py): a @ b, checked like `gemm`: by `gemm`
    from GEMM_MIN_WORK multiply-adds up, by np.matmul (OpenBLAS) below, where its lower
    fixed cost wins (~2 us against ~8-20 us at 128 x 128 x 32).

    Measured on the build machine (benchmarks/kernels.py, float32, 2026-11-29, 6 x 64 tile),
    `gemm` reached 0.94-0.99x of OpenBLAS's throughput on one thread at 256-1024 square and
    0.97-1.05x on (2048, 256) @ (256, 1024) and the other shapes of a transformer layer
    (164-179 GFLOP/s), 0.88x at 128 square and 0.69-0.95x on batched attention shapes; on two
    threads 0.93-1.27x, and 1.58-1.78x on attention shapes (OpenBLAS runs a batch of small
    products one at a time). Against MKL (PyTorch's matmul, one thread, same process), the
    forward and backward products of the small benchmark model's layers ran at 0.93-0.96x,
    the tiny model's at 0.97-0.98x (with the C prefetch).
    Using one engine for every large product also keeps OpenBLAS's threads, which spin for a
    while after each call, from competing with Numba's for the cores (threads.py): the tiny
    training step at 2 threads went from 108 ms (OpenBLAS products) to 89 ms (gemm), before
    any other change (benchmarks/train_step.py).

    (..., K) @ (K, N) with a contiguous `a` is one (rows, K) @ (K, N) product, not a batch.
    """
    a, b, batch = _check("matmul", a, b)
    if b.ndim == 2 and a.ndim > 2 and a.flags.c_contiguous:
        return matmul(a.reshape(-1, a.shape[-1]), b).reshape(a.shape[:-1] + b.shape[-1:])
    if math.prod(batch) * a.shape[-2] * a.shape[-1] * b.shape[-1] >= GEMM_MIN_WORK:
        return _gemm(a, b, batch)
    if b.ndim > 2 and not b.flags.c_contiguous:   # np.matmul's batched loop is ~2x slower on views
        b = np.ascontiguousarray(b)
    return np.matmul(a, b)


def weight_gradients(x, g):
    """Fast `reference.weight_gradients` (minillm/engine/reference.py): (x^T @ g, g summed over
    rows) for x (R, K), g (R, N): a linear layer's weight and bias gradients in one product.
    The sums come from a row of ones appended to x^T, which falls in the zero padding of its
    last register tile (free unless K is a multiple of MR), where a separate `sum_rows`
    reads all of g again (~2-3% of the tiny training step). Both are summed in the GEMM's
    accumulators, in x's dtype: for float32 the bias gradient's worst relative error
    measured 2.6e-7 at R = 2048 and 6e-7 at 65,536 (`sum_rows`, with float64 partial sums:
    6e-8; NumPy's g.sum(0): 1.6e-6 and 1.2e-5), the same rounding as the weight gradient
    beside it."""
    x, g = checks.floats("weight_gradients", x=x, g=g)
    if x.ndim != 2 or g.ndim != 2 or x.shape[0] != g.shape[0]:
        raise ValueError(f"weight_gradients: need x (R, K) and g (R, N), got x {x.shape}, g {g.shape}")
    if x.size * g.shape[1] < GEMM_MIN_WORK:   # as `matmul`: OpenBLAS for small products
        return np.matmul(x.T, g), g.sum(axis=0)
    c = _gemm(x.T, g, (), sums=True)
    return c[:-1], c[-1]


def linear(x, w, b=None):
    """Fast `reference.linear` (minillm/engine/reference.py): x @ w + b for x (R, K), w (K, N),
    b (N,) or None. With gemm (from GEMM_MIN_WORK multiply-adds up) the register tile starts
    each block of the output at the bias, so the output is written once, instead of written
    and then read and written again by a separate bias add; below that, np.matmul and
    `bias.add_bias`."""
    if b is None:
        x, w = checks.floats("linear", x=x, w=w)
    else:
        x, w, b = checks.floats("linear", x=x, w=w, b=b)
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0]:
        raise ValueError(f"linear: need x (R, K) and w (K, N), got x {x.shape}, w {w.shape}")
    if b is not None and b.shape != (w.shape[1],):
        raise ValueError(f"linear: b must have shape ({w.shape[1]},), got {b.shape}")
    if x.shape[0] * x.shape[1] * w.shape[1] >= GEMM_MIN_WORK:
        return _gemm(x, w, (), b)
    y = np.matmul(x, w)
    return y if b is None else add_bias(y, b)
