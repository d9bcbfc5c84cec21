"""Argument checks run in Python before any compiled code, so a user sees a clear error that
names the function, the argument and the shapes, never a Numba typing error.

The dtype rule for every kernel: float32 and float64 only; mixed inputs are promoted with
NumPy's `np.result_type` (float32 with float64 gives float64), as NumPy itself would. Two
kinds of argument take another's dtype instead: what is added into an array updated in
place (`add_bias`'s b, AdamW's gradient), as NumPy's `+=` casts it, and arrays a backward
pass gets back from its forward (cross-entropy's lse, attention's dropout multipliers).
Those may hold any real numbers (float, int, bool); complex or object arrays are an error,
never silently cast.
"""
import math
import numbers

import numpy as np

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def floats(fn, **arrays):
    """Promote the named arrays to their common float dtype; TypeError for anything else."""
    values = list(arrays.values())
    dt = getattr(values[0], "dtype", None)
    if dt in FLOATS and all(type(v) is np.ndarray and v.dtype == dt for v in values):
        return values      # the common case, kept cheap: this runs before every kernel call
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for name, a in arrays.items():
        if a.dtype not in FLOATS:
            raise TypeError(f"{fn}: {name} must be float32 or float64, got {a.dtype}")
    dt = np.result_type(*arrays.values())
    return [a.astype(dt, copy=False) for a in arrays.values()]


def real(fn, name, a, dtype):
    """a as an array of `dtype` (see the rule above); TypeError unless it holds real numbers."""
    a = np.asarray(a)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{fn}: {name} must hold real numbers, got dtype {a.dtype}")
    return a.astype(dtype, copy=False)


def number(fn, name, value, low=0.0):
    """value as a float: a finite real scalar (Python or NumPy) >= low."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fn}: {name} must be a real number, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value >= low):
        raise ValueError(f"{fn}: {name} must be a finite number >= {low}, got {value}")
    return float(value)


def integer(fn, name, value, low=-2**63, high=2**63 - 1):
    """value as an int: a Python or NumPy integer (not a bool) in [low, high]."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{fn}: {name} must be an integer, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{fn}: {name} must lie in [{low}, {high}], got {value}")
    return int(value)


def same_shape(fn, **arrays):
    shapes = {k: np.shape(v) for k, v in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"{fn}: shapes must match, got " + ", ".join(f"{k} {s}" for k, s in shapes.items()))


def at_least_1d(fn, name, a):
    if np.ndim(a) < 1:
        raise ValueError(f"{fn}: {name} must have at least 1 dimension, got shape {np.shape(a)}")


def mask_rows(fn, mask, shape):
    """A bool mask broadcastable to `shape`, as (rows, idx): `rows` (Rm, N) stores each distinct
    mask row once and row r of x (flattened to (R, N)) uses rows[idx[r]]. No (R, N) mask is built."""
    if mask is None:
        return None, None
    m = np.asarray(mask)
    if m.dtype != np.bool_:
        raise TypeError(f"{fn}: mask must be a bool array, got {m.dtype}")
    try:
        np.broadcast_shapes(m.shape, shape)
        if m.ndim > len(shape) or np.broadcast_shapes(m.shape, shape) != tuple(shape):
            raise ValueError
    except ValueError:
        raise ValueError(f"{fn}: mask of shape {m.shape} does not broadcast to x of shape {tuple(shape)}") from None
    m = m.reshape((1,) * (len(shape) - m.ndim) + m.shape)
    lead = m.shape[:-1]
    rows = np.ascontiguousarray(np.broadcast_to(m, lead + (shape[-1],))).reshape(int(np.prod(lead)), shape[-1])
    idx = np.broadcast_to(np.arange(rows.shape[0]).reshape(lead), tuple(shape[:-1])).ravel()
    return rows, idx


def rows2d(a):
    """a as a C-contiguous (rows, last axis) array (a copy only if a is not contiguous)."""
    return np.ascontiguousarray(a).reshape(int(np.prod(a.shape[:-1])), a.shape[-1])


def writable(fn, name, a, shape=None, dtype=None):
    """An array a kernel writes in place must be a writeable, C-contiguous float32/float64
    ndarray (of `shape` and `dtype` when given); returns it."""
    ok = (isinstance(a, np.ndarray) and a.flags.c_contiguous and a.flags.writeable and a.dtype in FLOATS
          and (shape is None or a.shape == tuple(shape)) and (dtype is None or a.dtype == dtype))
    if not ok:
        want = " ".join(x for x in ("of shape " + str(tuple(shape)) if shape is not None else "",
                                    "and dtype " + str(np.dtype(dtype)) if dtype is not None else "") if x)
        got = f"{type(a).__name__} {getattr(a, 'shape', '')} {getattr(a, 'dtype', '')}".strip()
        raise ValueError(f"{fn}: {name} must be a writeable C-contiguous float32/float64 array {want}, got {got}")
    return a

