"""minillm: a from-scratch LLM library on NumPy and Numba, small enough to read end to end.

The ladder, bottom to top: tensor (autograd) -> functional (ops) -> kernels (fast paths)
-> masks, nn, models (CD, ND, ED) -> tokenizer, objectives, batches, world (data)
-> optim, trainer, checkpoint, generate (training) -> evaluate, study, rank (the study).
"""
from .tensor import Tensor, no_grad, is_grad_enabled
from . import kernels, functional
from . import masks, nn, models
from .models import ModelConfig, build_model
from . import tokenizer, objectives, batches, world
from . import optim, checkpoint, trainer, generate, evaluate, rank

__version__ = "0.1.0"
