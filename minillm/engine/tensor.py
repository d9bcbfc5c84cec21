"""The autograd engine: a `Tensor` that records how it was made and sends gradients back.

Every op builds its output with `Tensor._op(data, parents, vjp)`, where `vjp(g)` maps the
gradient of the output to one gradient per parent (the vector-Jacobian product). Each
op's `vjp` is written next to its forward. The engine does the rest, in one place:

- broadcasting: a parent's gradient is summed back to the parent's shape (`unbroadcast`);
- ordering: `backward` sorts the graph iteratively (no recursion limit on depth) and visits
  each node once, after every node that uses it;
- accumulation: a tensor used twice receives the sum of both contributions (a third one and
  later are added to that sum in place: it is the engine's own array); gradients land in
  `.grad` of leaf tensors that require grad and add to what is already there (PyTorch's
  semantics); intermediate gradients are dropped as soon as they are used.

Dtypes: float arrays keep their dtype; Python scalars are weakly typed (they take the
tensor's dtype, so `float32 * 2.0` stays float32); Python floats and lists given to the
constructor become float32; integer tensors hold token ids and cannot require grad.
"""
from contextlib import contextmanager

import numpy as np

from . import kernels as K

_grad_enabled = True


@contextmanager
def no_grad():
    """Inside this block ops build no graph (outputs do not require grad)."""
    global _grad_enabled
    old, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = old


def is_grad_enabled():
    return _grad_enabled


def unbroadcast(grad, shape):
    """Sum `grad` over the axes broadcasting added or stretched, so that it has `shape`."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad


def _broadcast_shape(op, *shapes):
    try:
        return np.broadcast_shapes(*shapes)
    except ValueError:
        raise ValueError(f"{op}: shapes {' and '.join(map(str, shapes))} cannot be broadcast together") from None


def _drop_promoted(x, row, col):
    """Undo matmul's 1-D promotion: drop the row axis (1-D left operand) and/or the column axis (1-D right)."""
    x = x[..., 0, :] if row else x
    return x[..., 0] if col else x


class Tensor:
    __array_priority__ = 1000  # make `ndarray + Tensor` call Tensor.__radd__

    def __init__(self, data, requires_grad=False):
        if isinstance(data, Tensor):
            data = data.data
        if not isinstance(data, (np.ndarray, np.generic)):
            data = np.asarray(data, dtype=np.float32)
        self.data = np.asarray(data)
        self.grad = None
        self._parents = ()
        self._vjp = None
        self.requires_grad_(requires_grad)

    def requires_grad_(self, flag=True):
        if flag and self.data.dtype.kind != "f":
            raise TypeError(f"Tensor: only float tensors can require grad, this one is {self.data.dtype}")
        self.requires_grad = bool(flag)
        return self

    # ---- the graph -------------------------------------------------------------------
    @staticmethod
    def _op(data, parents, vjp):
        """Make an op's output; it records `parents` and `vjp` only if a gradient may flow."""
        out = Tensor(data)
        if _grad_enabled and any(p.requires_grad for p in parents):
            out.requires_grad = True
            out._parents, out._vjp = parents, vjp
        return out

    def backward(self, grad=None):
        """Send d(self)/d(leaf) * grad to every leaf that requires grad, adding to its `.grad`."""
        if not self.requires_grad:
            raise RuntimeError("backward: this tensor does not require grad (no leaf that requires grad made it)")
        if grad is None:
            if self.data.size != 1:
                raise ValueError(f"backward: grad may be omitted only for a one-element tensor, this one has shape {self.shape}")
            grad = np.ones_like(self.data)
        else:
            grad = np.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward: grad has shape {grad.shape}, expected {self.shape}")
        grads = {id(self): grad}
        summed = set()   # nodes whose gradient is a sum made here: no one else holds it
        for node in reversed(self._topological_order()):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node._vjp is None:  # a leaf: its .grad must not share memory with anything else
                g = g.astype(node.dtype, copy=False)
                mine = id(node) in summed
                node.grad = (g if mine else g.copy()) if node.grad is None else node.grad + g
                continue
            for parent, pg in zip(node._parents, node._vjp(g)):
                if pg is None or not parent.requires_grad:
                    continue
                pg = unbroadcast(np.asarray(pg), parent.shape)
                key = id(parent)
                if key not in grads:
                    grads[key] = pg      # may be an op's own array, or shared with another parent
                elif key in summed and np.result_type(grads[key], pg) == grads[key].dtype:
                    grads[key] += pg     # a sum this loop made (the branch below): added to in place
                else:
                    grads[key] = grads[key] + pg
                    summed.add(key)

    def _topological_order(self):
        """Nodes that require grad, each after all of its parents; an explicit stack, no recursion."""
        order, seen, stack = [], set(), [(self, False)]
        while stack:
            node, parents_done = stack.pop()
            if parents_done:
                order.append(node)
                continue
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.append((node, True))
            stack.extend((p, False) for p in node._parents if p.requires_grad and id(p) not in seen)
        return order

    # ---- plumbing --------------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    dtype = property(lambda self: self.data.dtype)
    size = property(lambda self: self.data.size)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({np.array2string(self.data, precision=4, threshold=20)}, dtype={self.dtype}{grad})"

    def numpy(self):
        return self.data

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item: only one-element tensors can be converted, this one has shape {self.shape}")
        return self.data.item()

    def detach(self):
        return Tensor(self.data)

    def _lift(self, other):
        """Turn an operand into a Tensor; Python scalars take this tensor's dtype (weak typing)."""
        if isinstance(other, Tensor):
            return other
        weak = isinstance(other, (bool, int, float)) and self.dtype.kind == "f"
        return Tensor(np.asarray(other, dtype=self.dtype if weak else None))

    # ---- elementwise arithmetic (broadcasting; unbroadcast happens in backward) --------
    def _binary(self, other, name, fwd, vjp):
        other = self._lift(other)
        _broadcast_shape(name, self.shape, other.shape)
        a, b = self.data, other.data
        return Tensor._op(fwd(a, b), (self, other), lambda g: vjp(g, a, b))

    def __add__(self, o):
        return self._binary(o, "add", np.add, lambda g, a, b: (g, g))

    def __sub__(self, o):
        return self._binary(o, "sub", np.subtract, lambda g, a, b: (g, -g))

    def __mul__(self, o):
        return self._binary(o, "mul", np.multiply, lambda g, a, b: (g * b, g * a))

    def __truediv__(self, o):
        return self._binary(o, "div", np.divide, lambda g, a, b: (g / b, -g * a / (b * b)))

    def __pow__(self, o):
        if isinstance(o, (int, float)) and not isinstance(o, bool):
            a = self.data
            return Tensor._op(a ** o, (self,), lambda g: (g * o * a ** (o - 1),))
        return self._binary(o, "pow", np.power,
                            lambda g, a, b: (g * b * a ** (b - 1), g * a ** b * np.log(np.where(a > 0, a, 1))))

    __radd__ = __add__   # a + b == b + a, to the bit: no reflected version needed
    __rmul__ = __mul__

    def __rsub__(self, o):
        return self._lift(o) - self

    def __rtruediv__(self, o):
        return self._lift(o) / self

    def __rpow__(self, o):
        return self._lift(o) ** self

    def __neg__(self):
        return Tensor._op(-self.data, (self,), lambda g: (-g,))

    def __matmul__(self, other):
        other = self._lift(other)
        a, b = self.data, other.data
        if a.ndim == 0 or b.ndim == 0 or a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not line up (inner dimensions differ or a scalar)")
        _broadcast_shape("matmul (batch dimensions)", a.shape[:-2], b.shape[:-2])
        # As np.matmul: a 1-D left operand is a row matrix, a 1-D right one a column; that axis is dropped after.
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b

        def vjp(g):
            g2 = g.reshape(np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]) + (a2.shape[-2], b2.shape[-1]))
            ga = K.matmul(g2, np.swapaxes(b2, -1, -2))
            if b2.ndim == 2 and g2.ndim > 2:  # a shared weight: one big product instead of a batch summed later
                gb = K.matmul(a2.reshape(-1, a2.shape[-1]).T, g2.reshape(-1, g2.shape[-1]))
            else:
                gb = K.matmul(np.swapaxes(a2, -1, -2), g2)
            return _drop_promoted(ga, a.ndim == 1, False), _drop_promoted(gb, False, b.ndim == 1)

        return Tensor._op(_drop_promoted(K.matmul(a2, b2), a.ndim == 1, b.ndim == 1), (self, other), vjp)

    def __rmatmul__(self, other):
        return self._lift(other) @ self

    # ---- elementwise functions -----------------------------------------------------
    def exp(self):
        y = np.exp(self.data)
        return Tensor._op(y, (self,), lambda g: (g * y,))

    def log(self):
        x = self.data
        return Tensor._op(np.log(x), (self,), lambda g: (g / x,))

    def tanh(self):
        y = np.tanh(self.data)
        return Tensor._op(y, (self,), lambda g: (g * (1 - y * y),))

    def sigmoid(self):
        x = self.data
        # exp of a non-positive number never overflows: use the form that keeps it so.
        e = np.exp(-np.abs(x))
        y = np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)
        return Tensor._op(y, (self,), lambda g: (g * y * (1 - y),))

    def relu(self):
        x = self.data
        return Tensor._op(np.maximum(x, 0), (self,), lambda g: (g * (x > 0),))

    def sqrt(self):
        y = np.sqrt(self.data)
        return Tensor._op(y, (self,), lambda g: (g / (2 * y),))

    # ---- reductions ------------------------------------------------------------------
    def _axes(self, axis):
        """`axis` (None, an int or a tuple) as a sorted tuple of non-negative axes."""
        if axis is None:
            return tuple(range(self.ndim))
        axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
        if any(not -self.ndim <= a < self.ndim for a in axes) or len(set(a % self.ndim for a in axes)) != len(axes):
            raise ValueError(f"axis {axis} is out of range or repeated for a tensor of shape {self.shape}")
        return tuple(sorted(a % self.ndim for a in axes))

    # Both reductions keep the reduced axes (as size 1) and squeeze them unless `keepdims`: the
    # gradient, reshaped to the kept shape, then broadcasts against the input.
    def sum(self, axis=None, keepdims=False):
        axes, shape = self._axes(axis), self.shape
        kept = self.data.sum(axis=axes, keepdims=True)
        return Tensor._op(kept if keepdims else kept.squeeze(axes), (self,),
                          lambda g: (np.broadcast_to(g.reshape(kept.shape), shape),))

    def mean(self, axis=None, keepdims=False):
        axes = self._axes(axis)
        n = int(np.prod([self.shape[i] for i in axes]))
        return self.sum(axis=axes, keepdims=keepdims) * (1.0 / max(n, 1))

    def max(self, axis=None, keepdims=False):
        """Maximum over `axis`. Ties split the gradient equally between the tied entries."""
        axes, x = self._axes(axis), self.data
        if x.size == 0:
            raise ValueError(f"max: cannot reduce an empty tensor of shape {x.shape}")
        m = x.max(axis=axes, keepdims=True)

        def vjp(g):
            hit = (x == m)
            return (g.reshape(m.shape) * hit / hit.sum(axis=axes, keepdims=True),)

        return Tensor._op(m if keepdims else m.squeeze(axes), (self,), vjp)

    # ---- shape -----------------------------------------------------------------------
    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        old = self.shape
        try:
            out = self.data.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape {old} ({self.size} elements) into {tuple(shape)}") from None
        return Tensor._op(out, (self,), lambda g: (g.reshape(old),))

    def transpose(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        axes = tuple(axes) if axes else tuple(reversed(range(self.ndim)))
        if sorted(a % max(self.ndim, 1) for a in axes) != list(range(self.ndim)):
            raise ValueError(f"transpose: axes {axes} are not a permutation of the {self.ndim} axes of {self.shape}")
        inverse = tuple(np.argsort([a % self.ndim for a in axes]))
        return Tensor._op(self.data.transpose(axes), (self,), lambda g: (g.transpose(inverse),))

    T = property(lambda self: self.transpose())

    def __getitem__(self, index):
        """Basic slices and integer arrays; repeated indices accumulate their gradients."""
        plain = lambda i: i.data if isinstance(i, Tensor) else i  # noqa: E731
        index = tuple(map(plain, index)) if isinstance(index, tuple) else plain(index)
        try:
            out = self.data[index]
        except IndexError as e:
            raise IndexError(f"getitem: index out of range for shape {self.shape}: {e}") from None
        shape, dtype = self.shape, self.dtype

        def vjp(g):
            full = np.zeros(shape, dtype=dtype)
            np.add.at(full, index, g)
            return (full,)

        return Tensor._op(out, (self,), vjp)

