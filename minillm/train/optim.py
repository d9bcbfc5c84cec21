"""Optimisers, learning-rate schedules and gradient clipping.

    SGD(params, lr, momentum=0.0, weight_decay=0.0)           PyTorch's SGD (no dampening)
    AdamW(params, lr, betas, eps, weight_decay=0.01)          PyTorch's AdamW update
    clip_grad_norm(params, max_norm) -> norm before clipping
    Schedule(kind, peak, warmup, total, min_lr)               learning rate: step -> lr

**Which parameters decay.** `params` may be a Module, an iterable of Parameters, or an
iterable of ``(name, Parameter)`` pairs (what ``model.named_parameters()`` gives). With
``decay="auto"`` (the default) weight decay applies only to matrices that multiply
activations: parameters with ``ndim >= 2`` whose name does not contain ``"emb"``. Biases
and LayerNorm weights (1-D) and embeddings (token and position tables, including the tied
output layer) are not decayed, as in GPT-2/nanoGPT practice. Without names only the
``ndim`` rule can apply, so pass a Module or named pairs to spare the embeddings.
``decay="all"`` decays every parameter (exactly ``torch.optim.AdamW``'s behaviour).

**In place.** Optimiser state (momentum, Adam moments) is allocated once in the
constructor; ``step()`` updates it and the parameters in place. AdamW's update is one fused kernel (`kernels.adamw_update`, one pass per
parameter on all threads; the NumPy twin with ``MINILLM_KERNELS=numpy``).

**Gradient accumulation.** Gradients add up in ``.grad`` across ``backward()`` calls
(PyTorch semantics), so accumulating is: scale each micro-batch's loss by its share of
the whole batch, call ``backward()`` on each, then ``step()`` once and ``zero_grad()``.
The trainer does exactly that (weighting micro-batches by their loss tokens, so the sum
equals the loss of one big batch).

**Schedules** are pure functions of the step number (0-based: the learning rate used for
the step about to be taken), so resuming needs only the step.
"""
import math
from dataclasses import dataclass

import numpy as np

from ..engine import kernels as K

__all__ = ["Optimizer", "SGD", "AdamW", "clip_grad_norm", "grad_norm", "Schedule"]


def _named(params):
    """Turn a Module, Parameters, or (name, Parameter) pairs into a list of (name, Parameter)."""
    if hasattr(params, "named_parameters"):
        return list(params.named_parameters())
    items = list(params)
    if all(isinstance(it, tuple) and len(it) == 2 for it in items):
        return [(str(n), p) for n, p in items]
    return [(None, p) for p in items]


class Optimizer:
    """What every optimiser shares: the parameter list, zero_grad, step counting, state dicts.

    Subclasses list their per-parameter buffers in ``_buffers`` and their settings in
    ``_hyper``, and implement ``_update(p, g, i)``.
    """

    _buffers = ()
    _hyper = ()

    def __init__(self, params, decay="auto"):
        if decay not in ("auto", "all"):
            raise ValueError(f"decay must be 'auto' or 'all', got {decay!r}")
        named = _named(params)
        if not named:
            raise ValueError("optimizer got an empty parameter list")
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        for n, p in named:
            if not getattr(p, "requires_grad", False):
                raise ValueError(f"parameter {n or '?'} does not require grad")
        # decay="auto": matrices decay; biases, LayerNorm weights and embeddings (names holding "emb") do not
        self.decay_mask = [decay == "all" or (p.data.ndim >= 2 and "emb" not in (n or "")) for n, p in named]
        self.t = 0  # number of steps taken
        self.state = {b: [np.zeros_like(p.data) for p in self.params] for b in self._buffers}

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        """Update every parameter that has a gradient; parameters without one stay put."""
        self.t += 1
        for i, p in enumerate(self.params):
            if p.grad is not None:
                self._update(p, p.grad, i)

    # ---- state dicts ---------------------------------------------------------------------
    def state_dict(self):
        """``{"type", "t", "hyper": {...}, "names": [...], "buffers": {name: [arrays]}}``;
        arrays are copies."""
        return {"type": type(self).__name__, "t": self.t,
                "hyper": {h: getattr(self, h) for h in self._hyper},
                "names": list(self.names),
                "buffers": {b: [a.copy() for a in arrs] for b, arrs in self.state.items()}}

    def load_state_dict(self, sd):
        """Restore a state dict from an optimiser of the same type over the same parameters.
        Everything is checked before anything changes; a mismatch raises ``ValueError``."""
        self.check_state_dict(sd)
        for b in self._buffers:
            for dst, src in zip(self.state[b], sd["buffers"][b]):
                dst[...] = src
        for h in self._hyper:
            v = sd["hyper"][h]
            setattr(self, h, tuple(v) if isinstance(v, list) else v)
        self.t = int(sd["t"])
        return self

    def check_state_dict(self, sd):
        """Raise ``ValueError`` unless ``sd`` could be loaded into this optimiser."""
        if sd.get("type") != type(self).__name__:
            raise ValueError(f"optimizer state is for {sd.get('type')!r}, this is {type(self).__name__}")
        if list(sd.get("names", [])) != list(self.names):
            raise ValueError("optimizer state is for a different parameter list "
                             f"({len(sd.get('names', []))} parameters saved, {len(self.names)} here)")
        buffers = sd.get("buffers", {})
        if set(buffers) != set(self._buffers):
            raise ValueError(f"optimizer state has buffers {sorted(buffers)}, expected {sorted(self._buffers)}")
        for b in self._buffers:
            if len(buffers[b]) != len(self.params):
                raise ValueError(f"optimizer buffer {b!r} has {len(buffers[b])} entries, expected {len(self.params)}")
            for i, (a, p) in enumerate(zip(buffers[b], self.params)):
                if np.shape(a) != p.data.shape:
                    raise ValueError(f"optimizer buffer {b!r} of parameter {self.names[i] or i} has shape "
                                     f"{np.shape(a)}, expected {p.data.shape}")
        missing = [h for h in self._hyper if h not in sd.get("hyper", {})]
        if missing:
            raise ValueError(f"optimizer state lacks settings {missing}")


class SGD(Optimizer):
    """Stochastic gradient descent as PyTorch's ``torch.optim.SGD`` (dampening 0, no Nesterov):

        g = grad + weight_decay * p          (L2 decay, added to the gradient)
        buf = g on the first step, else momentum * buf + g
        p  -= lr * buf                       (p -= lr * g when momentum is 0)
    """

    _buffers = ("momentum_buffer",)
    _hyper = ("lr", "momentum", "weight_decay")

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, decay="auto"):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        super().__init__(params, decay)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay

    def _update(self, p, g, i):
        if self.weight_decay and self.decay_mask[i]:
            g = g + self.weight_decay * p.data
        if self.momentum:
            buf = self.state["momentum_buffer"][i]
            if self.t > 1:
                buf *= self.momentum
                g = np.add(buf, g, out=buf)
            else:
                np.copyto(buf, g)
        p.data -= self.lr * g


class AdamW(Optimizer):
    """Adam with decoupled weight decay, the update of PyTorch's ``torch.optim.AdamW``
    (``amsgrad=False``), at step t = 1, 2, ...:

        p    -= lr * weight_decay * p                       (decoupled decay, decaying params only)
        m     = beta1 * m + (1 - beta1) * g
        v     = beta2 * v + (1 - beta2) * g^2
        denom = sqrt(v) / sqrt(1 - beta2^t) + eps
        p    -= lr / (1 - beta1^t) * m / denom
    """

    _buffers = ("exp_avg", "exp_avg_sq")
    _hyper = ("lr", "betas", "eps", "weight_decay")

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, decay="auto"):
        b1, b2 = betas
        if lr < 0 or eps < 0 or weight_decay < 0 or not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"AdamW: need lr, eps, weight_decay >= 0 and betas in [0, 1), "
                             f"got lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}")
        super().__init__(params, decay)
        self.lr, self.betas, self.eps, self.weight_decay = lr, (b1, b2), eps, weight_decay

    def _update(self, p, g, i):
        K.adamw_update(p.data, g, self.state["exp_avg"][i], self.state["exp_avg_sq"][i], self.lr, self.betas,
                       self.eps, self.weight_decay if self.decay_mask[i] else 0.0, self.t)


# ---- gradient clipping -------------------------------------------------------------------

def grad_norm(params):
    """The global L2 norm of all gradients, treating missing gradients as zero. Each
    parameter's sum of squares is a dot product in the gradient's dtype (no copy); the sum
    over parameters is in float64."""
    total = 0.0
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported as an infinite norm
        for _, p in _named(params):
            if p.grad is not None:
                g = p.grad.reshape(-1)
                total += float(np.dot(g, g))
    return math.sqrt(total)


def clip_grad_norm(params, max_norm):
    """Scale all gradients in place so that their global L2 norm is at most ``max_norm``
    (PyTorch's rule: multiply by ``max_norm / (norm + 1e-6)`` when that is below 1).
    Returns the norm measured before clipping. A non-finite norm leaves gradients as they
    are (the caller decides what to do; the trainer stops)."""
    if not max_norm > 0:
        raise ValueError(f"clip_grad_norm: max_norm must be > 0, got {max_norm}")
    params = [p for _, p in _named(params)]
    norm = grad_norm(params)
    coef = max_norm / (norm + 1e-6)
    if math.isfinite(norm) and coef < 1.0:
        for p in params:
            if p.grad is not None:
                p.grad *= p.grad.dtype.type(coef)
    return norm


# ---- learning-rate schedules ---------------------------------------------------------------

@dataclass
class Schedule:
    """A learning rate as a function of the 0-based step: ``schedule(step) -> lr``.

    ``kind`` is "constant", "cosine" or "inverse_sqrt"; every kind starts with a linear
    warm-up over ``warmup`` steps, ``lr = peak * (step + 1) / warmup`` (so the first step
    already moves, and step ``warmup - 1`` reaches the peak). After it:

        constant       peak
        cosine         min_lr + (peak - min_lr) * (1 + cos(pi * progress)) / 2,
                       progress = (step - warmup) / (total - warmup), clipped to [0, 1]
        inverse_sqrt   peak * sqrt(warmup / (step + 1))  (equals peak at step = warmup - 1)
    """

    KINDS = ("constant", "cosine", "inverse_sqrt")
    kind: str
    peak: float
    warmup: int = 0
    total: int = None
    min_lr: float = 0.0

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(f"schedule kind must be one of {self.KINDS}, got {self.kind!r}")
        if not self.peak >= 0 or self.warmup < 0 or self.min_lr < 0:
            raise ValueError(f"schedule: need peak >= 0, warmup >= 0, min_lr >= 0; "
                             f"got {self.peak}, {self.warmup}, {self.min_lr}")
        if self.kind == "cosine" and (self.total is None or self.total < self.warmup):
            raise ValueError(f"cosine schedule needs total >= warmup, got total={self.total}, warmup={self.warmup}")
        self.peak, self.warmup, self.min_lr = float(self.peak), int(self.warmup), float(self.min_lr)
        self.total = None if self.total is None else int(self.total)

    def __call__(self, step):
        step = int(step)
        if step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        if self.kind == "constant":
            return self.peak
        if self.kind == "inverse_sqrt":
            return self.peak * math.sqrt(max(self.warmup, 1) / (step + 1))
        progress = min(max((step - self.warmup) / max(self.total - self.warmup, 1), 0.0), 1.0)
        return self.min_lr + (self.peak - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
