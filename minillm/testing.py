"""Tools for testing models you can read: a gradient checker and hypothesis strategies.

    from minillm.testing import gradcheck, arrays, broadcastable_pair
    gradcheck(lambda a, b: (a * b).tanh(), x, y)      # raises AssertionError with details

`gradcheck` compares the engine's gradients with central finite differences in float64, two
ways: entry by entry (for inputs up to `max_entries` entries) and along random directions
(a random projection covers every entry at the cost of two evaluations).

The strategies need `hypothesis` (a test dependency, not a runtime one).
"""
import numpy as np

from .engine.tensor import Tensor


def gradcheck(fn, *inputs, eps=1e-6, atol=1e-6, rtol=1e-4, max_entries=64, n_directions=3, seed=0):
    """Check d fn(*inputs) / d inputs against central differences; return True or raise AssertionError.

    Float inputs (Tensors or arrays) are converted to float64 leaves that require grad; other
    inputs (integer ids, masks, Python values) are passed through unchanged. `fn` may return a
    tensor of any shape: it is reduced to a scalar with fixed random weights.
    Each leaf's `.grad` must have the leaf's shape and dtype (float64); a gradient that would
    only broadcast against its input, e.g. (4, 3) for a (1, 3) input, fails, naming the input.
    """
    rng = np.random.default_rng(seed)
    leaves = [Tensor(np.array(x.data if isinstance(x, Tensor) else x, dtype=np.float64), requires_grad=True)
              if _is_float(x) else x for x in inputs]
    out = fn(*leaves)
    weights = rng.standard_normal(out.shape)

    def loss(arrays):
        args = [Tensor(a) if _is_float(x) else x for a, x in zip(arrays, inputs)]
        return float((fn(*args).data * weights).sum())

    (out * Tensor(weights)).sum().backward()
    values = [leaf.data.copy() if isinstance(leaf, Tensor) and leaf.requires_grad else leaf for leaf in leaves]
    for k, leaf in enumerate(leaves):
        if not (isinstance(leaf, Tensor) and leaf.requires_grad):
            continue
        analytic = np.zeros(leaf.shape) if leaf.grad is None else leaf.grad
        if np.shape(analytic) != leaf.shape or np.asarray(analytic).dtype != leaf.dtype:
            raise AssertionError(f"gradcheck: input {k} (shape {leaf.shape}, {leaf.dtype}) got a gradient of shape "
                                 f"{np.shape(analytic)}, {np.asarray(analytic).dtype}")
        checks = [(f"entry {idx}", np.eye(1, leaf.size, i).reshape(leaf.shape))
                  for i, idx in enumerate(np.ndindex(leaf.shape)) if leaf.size <= max_entries]
        checks += [(f"random direction {d}", rng.standard_normal(leaf.shape)) for d in range(n_directions)]
        for what, v in checks:
            plus, minus = list(values), list(values)
            plus[k], minus[k] = values[k] + eps * v, values[k] - eps * v
            numeric = (loss(plus) - loss(minus)) / (2 * eps)
            exact = float((analytic * v).sum())
            if not abs(numeric - exact) <= atol + rtol * max(abs(numeric), abs(exact)):
                raise AssertionError(f"gradcheck: input {k} (shape {leaf.shape}), {what}: "
                                     f"backward gives {exact:.8g}, finite differences give {numeric:.8g}")
    return True


def _is_float(x):
    data = x.data if isinstance(x, Tensor) else x
    return isinstance(data, (np.ndarray, np.generic, float)) and np.asarray(data).dtype.kind == "f"


# ---- hypothesis strategies ---------------------------------------------------------------
try:
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    st = hnp = None


def _need_hypothesis():
    if st is None:
        raise ImportError("minillm.testing strategies need hypothesis: pip install hypothesis")


def arrays(shape, dtype=np.float64, low=-3.0, high=3.0):
    """Finite float arrays with entries in [low, high]: well-conditioned inputs for gradient checks.

    Shift the domain for ops that need it, e.g. `arrays(s, low=0.5, high=3)` for log and sqrt.
    """
    _need_hypothesis()
    width = 32 if np.dtype(dtype) == np.float32 else 64
    if width == 32:  # bounds must be float32 numbers themselves; step inwards if rounding stepped out
        low = float(np.nextafter(np.float32(low), np.float32(np.inf)) if np.float32(low) < low else np.float32(low))
        high = float(np.nextafter(np.float32(high), np.float32(-np.inf)) if np.float32(high) > high else np.float32(high))
    return hnp.arrays(dtype, shape, elements=st.floats(low, high, width=width, allow_nan=False, allow_infinity=False))


def shapes(min_dims=0, max_dims=3, min_side=1, max_side=4):
    _need_hypothesis()
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=4):
    """Tuples of `num_shapes` shapes that broadcast together (ranks may differ)."""
    _need_hypothesis()
    return hnp.mutually_broadcastable_shapes(num_shapes=num_shapes, min_dims=min_dims, max_dims=max_dims,
                                             max_side=max_side).map(lambda r: r.input_shapes)


def broadcastable_pair(dtype=np.float64, low=-3.0, high=3.0, max_dims=3):
    """Two arrays whose shapes broadcast together: a pair of shapes, then an array of each."""
    return broadcastable_shapes(2, max_dims=max_dims).flatmap(
        lambda s: st.tuples(arrays(s[0], dtype, low, high), arrays(s[1], dtype, low, high)))
