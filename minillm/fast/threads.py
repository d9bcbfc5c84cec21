"""One thread policy for the whole engine, and Numba's on-disk cache with a safe fallback.

Why a policy at all: each library keeps its own thread pool, and OpenMP-style pools
spin-wait after finishing work so that the next call starts fast. On a 2-core machine two
spinning pools steal the cores from each other: Numba's OpenMP layer beside 2 OpenBLAS
threads made a training step 2.3x slower.

The policy:
  * Every large matrix product runs in minillm's own GEMM (`gemm_kernel.py`, Numba), so a
    training step keeps one pool busy, Numba's; OpenBLAS sees only products too small for
    it to wake its threads (below `gemm_kernel.GEMM_MIN_WORK`).
  * Numba uses the OpenMP layer (`omp`, GNU libgomp), falling back to `workqueue` where
    libgomp is missing. A parallel region costs ~1 us to start with OpenMP against ~18 us
    with workqueue, whose idle workers sleep and must be woken for every kernel.
  * Numba and OpenBLAS get the same count, N = MINILLM_NUM_THREADS (default: the cores
    this process may run on). `set_num_threads(n)` changes both at run time; a thread
    count of 1 makes every kernel serial. `adapt()` lowers it while other processes
    crowd the cores (below).
The user can still choose the layer with NUMBA_THREADING_LAYER.

Measured on the build machine (2 threads, `benchmarks/kernels.py --policy`: a step of 4
products, GELU, LayerNorm and a causal softmax; 2026-11-28, quiet machine):

    layer       products by OpenBLAS   products by gemm      (three runs)
    workqueue   6.1-6.4 ms/step        3.8-5.2 ms/step
    omp         21.1-22.3 ms/step      3.2-3.4 ms/step

OpenMP with BLAS products is the fight described above; OpenMP with gemm is the fastest.
(An earlier policy, workqueue with BLAS products, was the best choice while the hand GEMM
was slower than OpenBLAS.)

Sharing the cores with other processes (issue 25). libgomp's workers spin at each barrier
(GOMP_SPINCOUNT, 300000 rounds by default) and a training step has ~180 parallel regions.
When another busy process takes a core, a spinning worker holds one core while the thread
it waits for is descheduled: two minillm trainings at once got 0.31x (tiny) and 0.64x
(small) of the throughput of one. Spinning can only be tuned when libgomp loads
(OMP_WAIT_POLICY, GOMP_SPINCOUNT); the thread count can change at any time. So:
  * libgomp keeps its default spinning, the fastest alone (minillm sets neither variable;
    the user's are read by libgomp as usual);
  * `adapt()` (`sharing.py`, Numba-free), called once per training step, drops to one
    thread once our threads have waited for a core for 0.5 s in a row (a core used by
    someone else), and goes back to N after a core has been idle for 1 s (doubling that
    wait after each return that found the cores crowded again). At one thread no worker
    waits at a barrier, and two processes run a core each (the 1-thread step takes ~1.85x
    the 2-thread one, so two at once make ~1.08x the throughput of one).
    MINILLM_NUM_THREADS (which `minillm study --jobs` sets for its workers) fixes the
    count and turns this off; MINILLM_ADAPT_THREADS=0|1 forces it off or on.
Measured with `benchmarks/contention.py` (2 cores, 2026-12-04, 2 threads per process; ratio
= throughput of the scenario / throughput of the same policy alone; adapt: whole 6 s or 12 s
window including the first crowded steps, then its second half):

    policy              alone ms        two at once      beside a busy loop
                        tiny   small    tiny   small     tiny   small
    before (spin)       77.5   618      0.31x  0.64x     0.17x  0.35x
    adapt (chosen)      73.8   633      0.90x  1.02x     0.51x  0.51x
      second half                       1.11x  1.07x     0.58x  0.54x
    passive             97.9   615      1.39x  1.07x     0.70x  0.53x
    GOMP_SPINCOUNT=1e4  81.5   620      0.89x  1.00x     0.45x  0.51x
    GOMP_SPINCOUNT=3e4  78.9   625      0.59x  0.90x     0.30x  0.50x
    workqueue           122    784      1.60x  1.29x     0.80x  0.67x
    adapt + spin 1e4    78.2   602      1.13x  1.08x     (vs adapt 72.0 / 600 ms alone)
    PyTorch 2.13 eager  87.7   731      0.41x  0.37x     0.18x  0.32x

Alone, adapt and the old default ran back to back, 3 windows each: 78.9 vs 79.9 ms (tiny),
600 vs 628 ms (small), 1.07x and 1.08x PyTorch's speed. Passive waiting and the workqueue
layer share well but cost about 25% and 55% alone on tiny; spin counts trade one for the
other (1e4 still loses 11-16% of the throughput two at once on tiny, and 5-9% alone). With
MINILLM_KERNELS=numpy (2 OpenBLAS threads) two processes at once fell to 0.06x, and 1.31x
with `adapt()`. Limits: the idle cores come from /proc/stat, so a CPU quota (cgroup
cpu.max) that is smaller than the cores is not seen; without /proc `adapt()` does nothing.

Vector width: on CPUs with AVX-512, Numba is told to vectorise loops with 512-bit registers
(`_prefer_512_bit_vectors` below; LLVM's default tuning stops at 256 bits).

Caching: compiling every kernel takes seconds; `cache=True` stores the machine code next to
the source (or in the user cache dir) so later imports load it in milliseconds. When no
writable location exists, Numba raises at decoration time, so `jit` below retries without a
cache: importing minillm never fails because of a read-only install.

Cold start: nothing compiles at import. Each kernel compiles on its first call, for the
dtype it is called with (float64 copies only once float64 is used), and the first real
compile of each dtype prints one line on stderr (`_ColdStart`); loading from the cache
prints nothing.
"""
import os
import sys

import numba
from llvmlite import binding
from numba import types
from numba.core import event
from numba.experimental.function_type import _get_wrapper_address
from numba.extending import typeof_impl

from . import sharing
from .sharing import adapt  # noqa: F401  (the run-time half of the policy, Numba-free)


def threading_layer(env=os.environ):
    """Numba's (THREADING_LAYER, THREADING_LAYER_PRIORITY): OpenMP first, or None when the
    user chose a layer with NUMBA_THREADING_LAYER."""
    if "NUMBA_THREADING_LAYER" in env:
        return None
    return "default", ["omp", "workqueue", "tbb"]


if threading_layer() is not None:
    numba.config.THREADING_LAYER, numba.config.THREADING_LAYER_PRIORITY = threading_layer()


def _prefer_512_bit_vectors():
    """On a CPU with AVX-512, let LLVM vectorise loops with 512-bit registers.

    LLVM's tuning for most AVX-512 CPUs (`prefer-256-bit`) keeps auto-vectorised loops at
    256 bits, to avoid the clock drop wide instructions once caused. Our loops are compute
    bound (GELU's exp, softmax rows) and the GEMM's tile uses 512-bit registers anyway, so
    the drop is paid already. Measured on the build machine (2026-11-29): GELU 3.4 -> 2.3 ms
    on 4M float32 values (1 thread), and a training step 4-7% faster (tiny and small, 1 and
    2 threads, benchmarks/train_step.py). Like the threading layer above, this is Numba's
    process-wide setting: it takes effect if no Numba code has been compiled yet in this
    process, and it only changes the tuning of code compiled later, never its results. Set
    NUMBA_CPU_FEATURES to choose the features yourself."""
    if "NUMBA_CPU_FEATURES" in os.environ:
        return
    features = binding.get_host_cpu_features().flatten()
    if "+avx512f" in features.split(","):
        numba.config.CPU_FEATURES = features + ",-prefer-256-bit"


_prefer_512_bit_vectors()


# Fast-math flags: `reassoc` lets LLVM split a sum or max into SIMD lanes, `nnan` lets it
# vectorise max(); not `ninf`, because masked softmax rows use -inf as "nothing kept".
FASTMATH = {"nnan", "nsz", "reassoc", "contract", "arcp"}
# Code whose order of operations matters gets no `reassoc` (vexp's range reduction; log-softmax's
# (x - max) - log(sum), which reassociated is x - (max + log(sum)) and loses log(sum) next to
# a large max) ...
EXACT = FASTMATH - {"reassoc"}
# ... and 1/sqrt(x) that must be exact, no `arcp`: with it LLVM computes an approximate
# reciprocal square root plus a Newton step, 1 ULP off and nan at x = 0 or inf (LayerNorm's rstd).
NO_ARCP = FASTMATH - {"arcp"}
# error_model="numpy": x / 0 gives inf or nan, as in NumPy. Numba's default ("python") raises
# ZeroDivisionError, which puts a branch before every division and keeps the loop scalar
# (AdamW's update ran 4.6x slower that way).
OPTIONS = dict(fastmath=FASTMATH, error_model="numpy", nogil=True)


class _ColdStart(event.Listener):
    """Says on stderr, once per process and dtype, that minillm's kernels are compiling.
    Numba fires "numba:compile" only when a function really compiles, after its disk cache
    missed. The time is the cold start measured in benchmarks/README.md (every kernel of one
    dtype: 17 s on the build machine, 25-36 s on slower ones)."""

    def __init__(self):
        self.told = set()

    def on_start(self, ev):
        module = getattr(getattr(ev.data.get("dispatcher"), "py_func", None), "__module__", None) or ""
        if not module.startswith(__package__ + "."):
            return   # Numba's own helpers, or the user's jit functions (some have no module at all)
        dtype = next((str(getattr(a, "dtype", a)) for a in ev.data["args"]
                      if isinstance(getattr(a, "dtype", a), types.Float)), None)
        if dtype is not None and dtype not in self.told:
            self.told.add(dtype)
            print(f"minillm: compiling Numba kernels for {dtype} as they are first used (about 15-40 s "
                  "in all, once: later runs load them from Numba's cache)", file=sys.stderr, flush=True)

    def on_end(self, ev):
        pass


event.register("numba:compile", _ColdStart())


def jit(parallel=False, fastmath=FASTMATH):
    """`numba.njit` with our OPTIONS (fast-math flags replaceable), an on-disk cache when a
    writable location exists, and optional parallel loops."""
    options = dict(OPTIONS, fastmath=fastmath, parallel=parallel)

    def wrap(fn):
        try:
            return numba.njit(cache=True, **options)(fn)
        except (RuntimeError, OSError, PermissionError):  # no writable cache location
            return numba.njit(cache=False, **options)(fn)
    return wrap


def specialise(fn, signature):
    """Compile `fn` (a `jit` dispatcher) for `signature` if it has no such copy yet (the disk
    cache serves it when it can), then stop it compiling others: a call whose argument
    types convert to a compiled signature (any array layout to an "A" array, a writable
    array to a read-only one) runs that copy. Arrays of a new layout thus cost nothing,
    where each would otherwise compile another copy."""
    if signature.args not in fn.overloads:
        fn.disable_compile(False)
        try:
            fn.compile(signature)
        finally:
            fn.disable_compile(bool(fn.overloads))   # after a failed compile: the error, not an assertion
    return fn


class Pointer:
    """The compiled code of `fn` (a `jit` dispatcher) for one signature, as a function
    pointer that compiled code can take as an argument and call (Numba's first-class
    functions). A kernel that calls `fn` this way calls the one compiled copy, where calling
    `fn` directly links a copy of it into the kernel for LLVM to optimise again (seconds of
    compile per kernel, and more per call site). Passing `fn` itself would also work, but
    Numba then looks up its address on every call (~50 us); this object looks it up once."""

    def __init__(self, fn, signature):
        specialise(fn, signature)
        self.signature = signature
        self.address = _get_wrapper_address(fn, signature)
        self.type = types.FunctionType(signature)

    def __wrapper_address__(self):   # Numba's protocol for first-class functions
        return self.address


@typeof_impl.register(Pointer)
def _typeof_pointer(value, context):
    return value.type


def set_num_threads(n):
    """Use n threads in both Numba kernels and OpenBLAS (clamped to 1..NUMBA_NUM_THREADS)."""
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    if sharing.blas_set is not None:
        sharing.blas_set(n)
    return n


def num_threads():
    """The number of threads kernels run with now."""
    return numba.get_num_threads()


set_num_threads(sharing.default_threads())
