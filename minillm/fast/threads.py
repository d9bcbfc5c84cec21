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
    count of 1 makes every kernel serial.
The user can still choose the layer with NUMBA_THREADING_LAYER.

Measured on the build machine (2 threads, `benchmarks/kernels.py --policy`: a step of 4
products, GELU, LayerNorm and a causal softmax; 2026-11-28, quiet machine):

    layer       products by OpenBLAS   products by gemm      (three runs)
    workqueue   6.1-6.4 ms/step        3.8-5.2 ms/step
    omp         21.1-22.3 ms/step      3.2-3.4 ms/step

OpenMP with BLAS products is the fight described above; OpenMP with gemm is the fastest.
(An earlier policy, workqueue with BLAS products, was the best choice while the hand GEMM
was slower than OpenBLAS.)

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
import ctypes
import glob
import os
import sys

import numba
import numpy as np
from llvmlite import binding
from numba import types
from numba.core import event
from numba.experimental.function_type import _get_wrapper_address
from numba.extending import typeof_impl

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "default"
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]


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


def _openblas_setter():
    """OpenBLAS's set_num_threads from the library NumPy loaded, or None if not found."""
    libdir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in glob.glob(os.path.join(libdir, "*openblas*")):
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                     "openblas_set_num_threads"):
            if hasattr(lib, name):
                return getattr(lib, name)
    return None


_blas_set = _openblas_setter()


def _default_threads():
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return int(os.environ.get("MINILLM_NUM_THREADS", n))


def set_num_threads(n):
    """Use n threads in both Numba kernels and OpenBLAS (clamped to 1..NUMBA_NUM_THREADS)."""
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    if _blas_set is not None:
        _blas_set(ctypes.c_int(n))
    return n


def num_threads():
    """The number of threads kernels run with now."""
    return numba.get_num_threads()


set_num_threads(_default_threads())
