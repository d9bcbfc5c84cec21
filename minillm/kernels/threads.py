"""One thread policy for the whole engine, and Numba's on-disk cache with a safe fallback.

Why a policy at all: a training step alternates OpenBLAS calls (when `kernels.matmul`
hands a shape to BLAS) with parallel Numba kernels. Each library keeps its own thread
pool, and both spin-wait after finishing work so the next call starts fast. On a 2-core
machine Numba's default layer (OpenMP, spinning) beside 2 spinning OpenBLAS threads made a
training step 2.3x slower: the pools steal the cores from each other.

The policy (`benchmarks/kernels.py --policy` times a step of BLAS products interleaved
with parallel kernels under each layer; see the figures at the end of this docstring):
  * Numba uses the `workqueue` threading layer: its idle workers sleep instead of spin, so
    they never steal a core from OpenBLAS, and it needs no TBB/OpenMP runtime.
  * Both pools get the same size, N = MINILLM_NUM_THREADS (default: the cores this process
    may run on). `set_num_threads(n)` changes both at run time; a thread count of 1 makes
    every kernel serial.
The user can still override the layer with NUMBA_THREADING_LAYER.

Measured on a quiet moment of the build machine (2 threads, `benchmarks/kernels.py
--policy`, 2026-11-28): workqueue 4.85 ms/step against OpenMP 16.0 ms/step, 3.3x in favour
of the sleeping layer. (Earlier readings on a machine shared with other jobs, load 7-11,
ranged from 71 to 1436 ms/step for either layer: load swamps the difference.)

Caching: compiling every kernel takes seconds; `cache=True` stores the machine code next to
the source (or in the user cache dir) so later imports load it in milliseconds. When no
writable location exists, Numba raises at decoration time, so `jit` below retries without a
cache: importing minillm never fails because of a read-only install.
"""
import ctypes
import glob
import os

import numba
import numpy as np

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"


# Fast-math flags: `reassoc` lets LLVM split a sum or max into SIMD lanes, `nnan` lets it
# vectorise max(); not `ninf`, because masked softmax rows use -inf as "nothing kept".
FASTMATH = {"nnan", "nsz", "reassoc", "contract", "arcp"}


def jit(parallel=False):
    """`numba.njit` with our flags: FASTMATH, an on-disk cache when a writable location
    exists, and optional parallel loops."""
    def wrap(fn):
        try:
            return numba.njit(fastmath=FASTMATH, parallel=parallel, cache=True, nogil=True)(fn)
        except (RuntimeError, OSError, PermissionError):  # no writable cache location
            return numba.njit(fastmath=FASTMATH, parallel=parallel, cache=False, nogil=True)(fn)
    return wrap


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
