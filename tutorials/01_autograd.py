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
# # 1. Autograd from scratch
#
# Training a network means nudging every parameter in the direction that lowers the
# loss, so we need the derivative of one number (the loss) with respect to every
# parameter. *Reverse-mode automatic differentiation* gets all of them for about the
# cost of one extra pass over the computation. This tutorial builds it twice:
#
# 1. a scalar engine of about thirty lines, written here, so that nothing is hidden;
# 2. minillm's `Tensor`, which does the same on whole arrays, and the one new idea arrays
#    bring: *broadcasting* gradients;
# 3. gradient checking: how to know that a backward pass is right.
#
# Run it as a script (`python tutorials/01_autograd.py`) or open it as a notebook (see
# `tutorials/README.md`). `MINILLM_TUTORIAL_FAST=1` shrinks the sizes.

# %%

import numpy as np

import minillm as mm
from minillm import functional as F
from minillm.testing import gradcheck

from _setup import FAST, finish, plt, assert_all_rejected  # fast mode (MINILLM_TUTORIAL_FAST), optional matplotlib


# %% [markdown]
# ## 1.1 The chain rule, one node at a time
#
# Write a computation as a graph: each node is a number made from its *parents* by one
# small operation (`+`, `*`, `tanh`, ...). If `L` is the final number and `v` a node,
# call `dL/dv` the *gradient* of `v`. The chain rule says that a parent `p` of `v`
# receives `dL/dv * dv/dp` from `v`, and that a node used in several places adds up
# what it receives from each of them.
#
# So the backward pass is: set `dL/dL = 1`, then visit the nodes from the last to the
# first, and let each node hand its gradient to its parents, multiplied by its *local
# derivative*. "From the last to the first" must mean: a node is visited only after
# every node that uses it, or it would pass on a gradient that is still incomplete.
# That order is a *topological order* of the graph, reversed.
#
# Here is the whole engine. Each operation creates a `Value` and stores a small
# function, `_back`, that knows the local derivatives.

# %%
import math


class Value:
    """A scalar that remembers how it was made, so that gradients can flow back."""

    def __init__(self, data, parents=(), back=None):
        self.data, self.grad = float(data), 0.0
        self._parents, self._back = parents, back

    def __add__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        return Value(self.data + other.data, (self, other), lambda g: (g, g))

    def __mul__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        return Value(self.data * other.data, (self, other), lambda g: (g * other.data, g * self.data))

    def tanh(self):
        t = math.tanh(self.data)
        return Value(t, (self,), lambda g: (g * (1 - t * t),))

    def exp(self):
        e = math.exp(self.data)
        return Value(e, (self,), lambda g: (g * e,))

    __radd__, __rmul__ = __add__, __mul__

    def backward(self):
        order, seen, stack = [], set(), [(self, False)]
        while stack:                      # iterative depth-first search: no recursion limit
            node, done = stack.pop()
            if done:
                order.append(node)        # appended after all of its parents
            elif id(node) not in seen:
                seen.add(id(node))
                stack += [(node, True)] + [(p, False) for p in node._parents]
        self.grad = 1.0
        for node in reversed(order):      # every user of a node comes before the node
            if node._back is not None:
                for parent, g in zip(node._parents, node._back(node.grad)):
                    parent.grad += g      # += : a value used twice gets both contributions


# %% [markdown]
# A single "neuron": `y = tanh(w1*x1 + w2*x2 + b)`. After `backward()`, every input holds
# `dy/d(input)`. We check one of them against a *finite difference*, the slope of a
# tiny secant: `(f(w1 + h) - f(w1 - h)) / 2h`.

# %%
def neuron(x1, x2, w1, w2, b):
    return (w1 * x1 + w2 * x2 + b).tanh()


inputs = dict(x1=Value(2.0), x2=Value(-1.0), w1=Value(-0.5), w2=Value(0.8), b=Value(0.3))
y = neuron(**inputs)
y.backward()
print(f"y = {y.data:.6f}")
for name, v in inputs.items():
    print(f"  dy/d{name:2s} = {v.grad:+.6f}")

h = 1e-6
plain = {k: Value(v.data) for k, v in inputs.items()}
w1 = inputs["w1"].data
slope = (neuron(**{**plain, "w1": Value(w1 + h)}).data - neuron(**{**plain, "w1": Value(w1 - h)}).data) / (2 * h)
print(f"finite difference for w1: {slope:+.6f}")
assert abs(slope - inputs["w1"].grad) < 1e-6

# %% [markdown]
# Two details of `backward` matter more than they look.
#
# **Accumulation.** In `x * x` the same `Value` is both parents. Its gradient must be
# `2x`: one `x` from each use. Writing `parent.grad = g` instead of `+=` would keep only
# one of them, a classic bug.
#
# **No recursion.** A recursive depth-first search is shorter to write, but Python
# stops at about a thousand nested calls, and a deep network (or a long loop written in
# the engine) makes far deeper graphs. The explicit stack above has no such limit.

# %%
x = Value(3.0)
sq = x * x
sq.backward()
print(f"d(x*x)/dx at x=3: {x.grad}  (expected 6)")
assert x.grad == 6.0

depth = 2_000 if FAST else 20_000
x = Value(0.5)
z = x
for _ in range(depth):
    z = z * 1.0001 + 0.0
z.backward()
print(f"a chain of {2 * depth} operations: dz/dx = {x.grad:.6f}, expected {1.0001 ** depth:.6f}")
assert abs(x.grad - 1.0001 ** depth) < 1e-9 * 1.0001 ** depth

# %% [markdown]
# ## 1.2 From scalars to arrays: minillm's `Tensor`
#
# A scalar engine spends all its time in Python bookkeeping: one graph node per
# multiply. minillm's `Tensor` keeps the same design (each op stores a function that
# maps the output's gradient to its parents' gradients) but a node holds a whole NumPy
# array, so one node does millions of multiplies. The functions stored per op are
# *vector-Jacobian products*: given `g = dL/d(output)`, an array shaped like the output,
# return `dL/d(parent)` for each parent, shaped like that parent.
#
# The same neuron, written once with `Value` and once with `Tensor`, gives the same
# gradients:

# %%
xs = np.array([2.0, -1.0])
ws = np.array([-0.5, 0.8])
x_t = mm.Tensor(xs, requires_grad=True)
w_t = mm.Tensor(ws, requires_grad=True)
b_t = mm.Tensor(np.array(0.3), requires_grad=True)
y_t = ((w_t * x_t).sum() + b_t).tanh()
y_t.backward()
print("Tensor:", y_t.item(), "dy/dw =", w_t.grad, "dy/db =", b_t.grad)
print("Value: ", y.data,
      "dy/dw =", [inputs["w1"].grad, inputs["w2"].grad], "dy/db =", inputs["b"].grad)
assert np.allclose(w_t.grad, [inputs["w1"].grad, inputs["w2"].grad])
assert np.allclose(x_t.grad, [inputs["x1"].grad, inputs["x2"].grad])

# %% [markdown]
# Note the dtypes: arrays keep theirs (we passed float64), while Python floats and lists
# become float32, the dtype models train in. Gradient checks below use float64.
#
# For a matrix product `C = A @ B` the vector-Jacobian products are
# `dL/dA = G @ Bᵀ` and `dL/dB = Aᵀ @ G`, with `G = dL/dC`. Check them by hand: choose a
# loss `L = sum(C * W)` for a fixed random `W`, so that `G = W` exactly.

# %%
rng = np.random.default_rng(0)
A = mm.Tensor(rng.standard_normal((4, 3)), requires_grad=True)
B = mm.Tensor(rng.standard_normal((3, 5)), requires_grad=True)
W = rng.standard_normal((4, 5))
L = ((A @ B) * W).sum()
L.backward()
print("dL/dA matches G @ B.T:", np.allclose(A.grad, W @ B.data.T))
print("dL/dB matches A.T @ G:", np.allclose(B.grad, A.data.T @ W))
assert np.allclose(A.grad, W @ B.data.T) and np.allclose(B.grad, A.data.T @ W)

# %% [markdown]
# Gradients *accumulate* in `.grad`, exactly as in PyTorch: a second `backward()` adds
# to what is there. This is what lets you sum gradients over several micro-batches; it
# also means a training loop must clear them (`model.zero_grad()`, or set `.grad = None`)
# before each step. Inside `with mm.no_grad():` no graph is built at all, which is what
# evaluation wants.

# %%
p = mm.Tensor(np.array([1.0, 2.0]), requires_grad=True)
(p * p).sum().backward()
first = p.grad.copy()
(p * p).sum().backward()
print("after one backward:", first, " after two:", p.grad)
assert np.allclose(p.grad, 2 * first)
with mm.no_grad():
    q = p * 3.0
print("built under no_grad, requires_grad =", q.requires_grad)

# %% [markdown]
# ## 1.3 Broadcasting gradients: why the engine sums
#
# NumPy lets `x + b` work for `x` of shape `(3, 4)` and a bias `b` of shape `(4,)`: it
# acts as if `b` were copied into each of the 3 rows. So each `b[j]` influences three
# outputs, and by the accumulation rule its gradient is the *sum* of the three output
# gradients in column `j`. The gradient of `x + b` with respect to `b` arrives shaped
# `(3, 4)`, like the output, and must be summed back to `(4,)`.
#
# The general rule ("unbroadcast"), for a parent of shape `s` and a gradient of shape `S`:
#
# 1. sum over the leading axes that broadcasting *added* (`len(S) - len(s)` of them);
# 2. sum, keeping the axis, over every axis where `s` has size 1 but `S` does not
#    (the axes broadcasting *stretched*).
#
# minillm does this once, in the engine, for every op, so no op has to think about it.

# %%
x = mm.Tensor(rng.standard_normal((3, 4)), requires_grad=True)
b = mm.Tensor(rng.standard_normal(4), requires_grad=True)
G = rng.standard_normal((3, 4))
((x + b) * G).sum().backward()
print("b.grad:            ", b.grad)
print("G summed over rows:", G.sum(axis=0))
assert b.grad.shape == (4,) and np.allclose(b.grad, G.sum(axis=0))

# Both rules at once: (2, 3, 4) * (3, 1) adds one axis and stretches another.
big = mm.Tensor(rng.standard_normal((2, 3, 4)), requires_grad=True)
col = mm.Tensor(rng.standard_normal((3, 1)), requires_grad=True)
G = rng.standard_normal((2, 3, 4))
((big * col) * G).sum().backward()
expected = (G * big.data).sum(axis=0).sum(axis=1, keepdims=True)
print("col.grad shape:", col.grad.shape, " matches the rule:", np.allclose(col.grad, expected))
assert col.grad.shape == (3, 1) and np.allclose(col.grad, expected)

# %% [markdown]
# ## 1.4 Gradient checking
#
# A wrong backward pass does not crash: the model just trains worse, or not at all. So
# every op's gradient must be checked against an independent computation, and the
# independent one is always the same: finite differences. For a scalar function `f` of an
# array `x`, and any direction `v`,
#
#     (f(x + h v) - f(x - h v)) / 2h  ≈  sum(grad f(x) * v)
#
# with an error of order `h²` (the *truncation* error). Shrinking `h` does not help
# forever: `f(x + hv) - f(x - hv)` subtracts two nearly equal numbers, which loses digits
# (the *round-off* error, of order `ε/h` for a machine precision `ε`). The best `h` is
# where the two balance. The table shows it for `f(x) = sum(tanh(x)³)`:

# %%
def f_np(x):
    return (np.tanh(x) ** 3).sum()


def f_grad(x):
    t = np.tanh(x)
    return 3 * t * t * (1 - t * t)


x0 = rng.standard_normal(5)
v = rng.standard_normal(5)
exact = (f_grad(x0) * v).sum()
steps = [10.0 ** -k for k in range(1, 12)]
errors = {}
for dtype in (np.float32, np.float64):
    xd, vd = x0.astype(dtype), v.astype(dtype)
    errors[dtype.__name__] = [abs(float((f_np(xd + dtype(h) * vd) - f_np(xd - dtype(h) * vd)) / dtype(2 * h)) - exact)
                              for h in steps]
print(f"{'h':>8} {'error float32':>15} {'error float64':>15}")
for h, e32, e64 in zip(steps, errors["float32"], errors["float64"]):
    print(f"{h:8.0e} {e32:15.2e} {e64:15.2e}")
best32 = steps[int(np.argmin(errors["float32"]))]
best64 = steps[int(np.argmin(errors["float64"]))]
print(f"best h: float32 {best32:.0e}, float64 {best64:.0e}")

if plt is not None:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, errs in errors.items():
        ax.loglog(steps, np.maximum(errs, 1e-17), "o-", label=name)
    ax.set_xlabel("step h")
    ax.set_ylabel("|finite difference - exact|")
    ax.set_title("Truncation (right) vs round-off (left)")
    ax.legend()
    finish(fig, "01_finite_difference_error.png")

# %% [markdown]
# In float32 (about 7 digits) the best you can get is around `1e-4` relative error, too
# coarse to catch a subtle bug; in float64 (about 16 digits) it is around `1e-10`. That
# is why `minillm.testing.gradcheck` converts every float input to float64, and why
# every op in minillm works in float64 as well as float32.
#
# `gradcheck(fn, *inputs)` compares the engine's gradient with central differences,
# entry by entry for small inputs, and along a few random directions for any size. It
# returns `True` or raises an `AssertionError` that says which input and which entry
# disagree. Non-float inputs (token ids, masks) are passed through untouched.

# %%
a = rng.standard_normal((3, 4))
w = rng.standard_normal((4, 2))
targets = np.array([0, 1, 1])
print("matmul + cross-entropy:", gradcheck(lambda a, w: F.cross_entropy(a @ w, targets), a, w))
print("layer norm:            ", gradcheck(lambda x, g, b: F.layer_norm(x, g, b),
                                            a, rng.standard_normal(4), rng.standard_normal(4)))
print("masked softmax:        ", gradcheck(lambda x: F.softmax(x, mask=np.tril(np.ones((3, 4), bool))), a))

# %% [markdown]
# And here is what it looks like when a gradient is wrong. `detach()` returns a tensor
# that gradients do not flow through. Using it by mistake (a common slip when
# "optimising" code) silently drops a term of the chain rule: here `x * x.detach()`
# has the value `x²` but the gradient `x` instead of `2x`.

# %%
x = rng.standard_normal(3)
try:
    gradcheck(lambda t: (t * t.detach()).sum(), x)
    raise RuntimeError("gradcheck should have caught the detach bug")
except AssertionError as err:
    print("gradcheck caught it:\n ", err)

# %% [markdown]
# Two cautions when you check your own code:
#
# - **Kinks.** `relu` and `max` have no derivative where the input is exactly 0 or two
#   entries tie; finite differences straddling the kink give the average of the two
#   slopes. Check at points away from kinks (the hypothesis strategies in
#   `minillm.testing` make that easy: see tutorial 10).
# - **Domains.** `log` and `sqrt` need positive inputs, and finite differences near 0
#   blow up. Shift the inputs, e.g. check `log` on `[0.5, 3]`.

# %% [markdown]
# ## Exercises
#
# Each exercise is a function below. The bodies hold reference answers so that the
# course's test suite can check them; to practise, replace a body with your own
# answer and run the file again: `check_exercises()` at the end tells you whether it is
# right. Every check is a real assertion, and the last cell shows that it rejects wrong
# answers.
#
# 1. **Sigmoid for `Value`.** Write `value_sigmoid(v)` returning a new `Value` equal to
#    `1 / (1 + exp(-v))` with a correct `_back`. The check compares value and gradient
#    with `minillm.Tensor.sigmoid` at many points.
# 2. **Unbroadcast.** Write `my_unbroadcast(grad, shape)`, which sums a gradient back to
#    the shape of a broadcast operand (section 1.3). The check compares it with the
#    gradients minillm's engine produces for many shape pairs.
# 3. **Cross-entropy by hand.** For logits `z` of shape `(N, V)` and integer targets
#    `y`, the gradient of `F.cross_entropy(z, y)` (the mean over rows) is
#    `(softmax(z) - onehot(y)) / N`. Write `cross_entropy_grad(z, y)` in plain NumPy.
# 4. **Spot the bug.** `candidates` holds three functions that should all compute
#    `sum(x³)` with a correct gradient. Set `buggy_index` to the index of the one whose
#    gradient is wrong (use `gradcheck`, don't guess).

# %%
def value_sigmoid(v):
    s = 1.0 / (1.0 + math.exp(-v.data))
    return Value(s, (v,), lambda g: (g * s * (1.0 - s),))


def my_unbroadcast(grad, shape):
    grad = grad.sum(axis=tuple(range(grad.ndim - len(shape))))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(axis=stretched, keepdims=True) if stretched else grad


def cross_entropy_grad(z, y):
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return p / len(y)


candidates = [
    lambda t: (t * t * t).sum(),
    lambda t: (t ** 3).sum(),
    lambda t: (t * (t * t).detach()).sum(),
]
buggy_index = 2


# %%
def check_value_sigmoid(fn):
    for x in np.linspace(-6, 6, 25):
        v = Value(x)
        out = fn(v)
        (out * 2.0).backward()  # an upstream gradient of 2 must be multiplied through
        t = mm.Tensor(np.array(x), requires_grad=True)
        ref = t.sigmoid()
        (ref * 2.0).backward()
        assert abs(out.data - ref.item()) < 1e-9, f"sigmoid({x}) = {out.data}, expected {ref.item()}"
        assert abs(v.grad - float(t.grad)) < 1e-9, f"gradient at {x} is {v.grad}, expected {float(t.grad)}"


def check_unbroadcast(fn):
    cases = [((3, 4), (4,)), ((3, 4), (1, 4)), ((3, 4), (3, 1)), ((2, 3, 4), (3, 1)),
             ((2, 3, 4), ()), ((2, 1, 4), (5, 1)), ((5,), (1,)), ((2, 3), (2, 3))]
    for sa, sb in cases:
        a = mm.Tensor(rng.standard_normal(sa), requires_grad=True)
        b = mm.Tensor(rng.standard_normal(sb), requires_grad=True)
        out = a + b
        G = rng.standard_normal(out.shape)
        (out * G).sum().backward()
        for t, s in ((a, sa), (b, sb)):
            mine = np.asarray(fn(G, s))
            assert mine.shape == s, f"unbroadcast to {s} gave shape {mine.shape}"
            assert np.allclose(mine, t.grad), f"unbroadcast of a {G.shape} gradient to {s} is wrong"


def check_cross_entropy_grad(fn):
    for N, V in ((1, 2), (4, 7), (16, 30)):
        z = rng.standard_normal((N, V)) * 3
        y = rng.integers(0, V, N)
        zt = mm.Tensor(z, requires_grad=True)
        F.cross_entropy(zt, y).backward()
        assert np.allclose(fn(z, y), zt.grad, atol=1e-10), f"wrong gradient for N={N}, V={V}"


def check_buggy_index(index):
    x = rng.standard_normal(4)
    verdicts = []
    for fn in candidates:
        try:
            verdicts.append(gradcheck(fn, x))
        except AssertionError:
            verdicts.append(False)
    assert verdicts.count(False) == 1, "exactly one candidate should fail gradcheck"
    assert index == verdicts.index(False), f"candidate {index} passes gradcheck; look again"


def check_exercises():
    check_value_sigmoid(value_sigmoid)
    check_unbroadcast(my_unbroadcast)
    check_cross_entropy_grad(cross_entropy_grad)
    check_buggy_index(buggy_index)
    print("all four exercises check out")


check_exercises()


# %% [markdown]
# The checks are not rubber stamps: each of these plausible wrong answers is rejected.

# %%
wrong_answers = [
    (check_value_sigmoid, lambda v: Value(1 / (1 + math.exp(-v.data)), (v,), lambda g: (g,))),
    (check_unbroadcast, lambda g, s: g.sum(axis=tuple(range(g.ndim - len(s))))),   # forgets rule 2
    (check_cross_entropy_grad, lambda z, y: cross_entropy_grad(z, y) * len(y)),     # forgets the mean
    (check_buggy_index, 0),
]
assert_all_rejected(wrong_answers)
