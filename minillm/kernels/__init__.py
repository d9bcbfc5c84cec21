"""The kernels behind the engine's hot ops, and the switch between their two backends.

Every kernel exists twice: a plain-NumPy twin in `reference.py` (the definition) and a fast
one. The engine calls the names below, which dispatch to the backend in force:

    MINILLM_KERNELS=numpy|numba     (environment, read at import; default numba)
    with minillm.kernels.use("numpy"): ...

The Numba backend (`fast.py`) is imported on first use, so `MINILLM_KERNELS=numpy` never
loads Numba. Threads: MINILLM_NUM_THREADS or `set_num_threads(n)` sets both Numba's and
OpenBLAS's thread count (policy in `threads.py`). `gemm(a, b)` (also `matmul.gemm`) is the
hand-written GEMM; `matmul` uses it for every product of at least 2^18 multiply-adds and
OpenBLAS below (measured in `gemm_kernel.py`); `linear(x, w, b)` is a linear layer's forward, with
the bias added inside the GEMM, and `weight_gradients(x, g)` its weight and bias gradients
from one GEMM.
Importing this package also sets the allocator policy of `memory.py` (freed arrays stay in
the process, so a training step's arrays do not page-fault afresh every step).
"""
import os
from contextlib import contextmanager

from . import memory, reference  # noqa: F401  (memory: the allocator policy, applied on import)

BACKENDS = ("numpy", "numba")
_backend = os.environ.get("MINILLM_KERNELS", "numba").strip().lower() or "numba"
if _backend not in BACKENDS:
    raise ValueError(f"MINILLM_KERNELS must be one of {BACKENDS}, got {_backend!r}")


_fast_module = None


def _fast():
    """The Numba backend, imported on first use (which compiles, or loads cached, kernels);
    kept in a global: an import statement per op call costs ~1 us."""
    global _fast_module
    if _fast_module is None:
        from . import fast
        _fast_module = fast
    return _fast_module


def set_num_threads(n):
    """Threads for Numba kernels and OpenBLAS alike; returns the count in force."""
    from . import threads
    return threads.set_num_threads(n)


def num_threads():
    from . import threads
    return threads.num_threads()


def gemm(a, b):
    """The hand-written Numba GEMM (the readable reference of `matmul`), with np.matmul semantics."""
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
def softmax(x, mask=None, causal=False): return _impl().softmax(x, mask, causal)
def softmax_backward(y, dy, out=None): return _impl().softmax_backward(y, dy, out)
def log_softmax(x, mask=None, causal=False): return _impl().log_softmax(x, mask, causal)
def log_softmax_backward(y, dy, mask=None, causal=False): return _impl().log_softmax_backward(y, dy, mask, causal)
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


def add_bias(y, b): return _impl().add_bias(y, b)
def sum_rows(g): return _impl().sum_rows(g)
def embedding_backward(ids, g, num_embeddings): return _impl().embedding_backward(ids, g, num_embeddings)


def adamw_update(p, g, m, v, lr, betas, eps, weight_decay, t):
    return _impl().adamw_update(p, g, m, v, lr, betas, eps, weight_decay, t)


matmul.gemm = gemm
