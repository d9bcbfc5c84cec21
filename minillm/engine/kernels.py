"""The switch between the engine's two backends: `mm.kernels`.

Every hot op of the engine (matrix products, softmax, GELU, LayerNorm, cross-entropy,
attention, AdamW, ...) is called through the names below, which dispatch to

  * `reference.py`, the plain-NumPy definition of each op (read this one), or
  * `minillm.fast`, the Numba kernels: the same functions, signatures and results, tested
    equal to the definitions. Nothing on the reading path needs it.

    MINILLM_KERNELS=numpy|numba     (environment, read at import; default numba)
    with minillm.kernels.use("numpy"): ...

`minillm.fast` is imported on first use, so `MINILLM_KERNELS=numpy` never loads Numba.
Threads: MINILLM_NUM_THREADS or `set_num_threads(n)` sets both Numba's and OpenBLAS's
thread count (the policy is in `minillm/fast/threads.py`). `gemm(a, b)` is the tuned Numba
GEMM itself, whatever the backend.
Importing this module also applies the allocator policy of `minillm/fast/memory.py`
(freed arrays stay in the process, so a training step does not page-fault afresh).
"""
import os
from contextlib import contextmanager
from functools import cache

from ..fast import memory  # noqa: F401  (the allocator policy, applied on import)
from . import reference

BACKENDS = ("numpy", "numba")
_backend = os.environ.get("MINILLM_KERNELS", "numba").strip().lower() or "numba"
if _backend not in BACKENDS:
    raise ValueError(f"MINILLM_KERNELS must be one of {BACKENDS}, got {_backend!r}")


@cache   # the module, imported once: an import statement per op call costs ~1 us
def _fast():
    """The Numba backend, imported on first use (which compiles, or loads cached, kernels)."""
    from ..fast import ops
    return ops


def set_num_threads(n):
    """Threads for Numba kernels and OpenBLAS alike; returns the count in force."""
    from ..fast import threads
    return threads.set_num_threads(n)


def num_threads():
    from ..fast import threads
    return threads.num_threads()


def adapt_threads():
    """Call once per training step: while other processes crowd the cores, use fewer threads,
    and take them back when cores are free again (`minillm/fast/sharing.py`, Numba-free)."""
    from ..fast.sharing import adapt
    return adapt()


def gemm(a, b):
    """The tuned Numba GEMM (`minillm/fast/gemm_kernel.py`), with np.matmul semantics, on either backend."""
    return _fast().gemm(a, b)


def backend():
    """The name of the backend the engine's ops use now."""
    return _backend


@contextmanager
def use(name):
    """Run a block with the given backend ("numpy" or "numba"), then restore the previous one."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"kernels.use: backend must be one of {BACKENDS}, got {name!r}")
    old, _backend = _backend, name
    try:
        yield
    finally:
        _backend = old


def _impl():
    return reference if _backend == "numpy" else _fast()


def matmul(a, b): return _impl().matmul(a, b)
def linear(x, w, b=None): return _impl().linear(x, w, b)
def weight_gradients(x, g): return _impl().weight_gradients(x, g)
def softmax(x, mask=None): return _impl().softmax(x, mask)
def softmax_backward(y, dy): return _impl().softmax_backward(y, dy)
def log_softmax(x, mask=None): return _impl().log_softmax(x, mask)
def log_softmax_backward(y, dy, mask=None): return _impl().log_softmax_backward(y, dy, mask)
def gelu(x): return _impl().gelu(x)
def gelu_backward(x, dy): return _impl().gelu_backward(x, dy)
def layer_norm(x, w, b, eps): return _impl().layer_norm(x, w, b, eps)
def layer_norm_backward(dy, x, w, mean, rstd): return _impl().layer_norm_backward(dy, x, w, mean, rstd)
def cross_entropy(logits, targets, ignore_index): return _impl().cross_entropy(logits, targets, ignore_index)
def cross_entropy_backward(logits, targets, lse, ignore_index, scale):
    return _impl().cross_entropy_backward(logits, targets, lse, ignore_index, scale)

def attention_forward(q, k, v, n_heads, mask=None, keep=None):
    return _impl().attention_forward(q, k, v, n_heads, mask, keep)


def attention_backward(q, k, v, n_heads, p, gy, keep=None):
    return _impl().attention_backward(q, k, v, n_heads, p, gy, keep)


def sum_rows(g): return _impl().sum_rows(g)
def embedding_backward(ids, g, num_embeddings): return _impl().embedding_backward(ids, g, num_embeddings)


def adamw_update(p, g, m, v, lr, betas, eps, weight_decay, t):
    return _impl().adamw_update(p, g, m, v, lr, betas, eps, weight_decay, t)


matmul.gemm = gemm
