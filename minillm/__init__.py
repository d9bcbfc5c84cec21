"""minillm: a from-scratch LLM library on NumPy and Numba, small enough to read end to end."""
from .tensor import Tensor, no_grad, is_grad_enabled
from . import kernels, functional
from . import masks, nn, models
from .models import ModelConfig, build_model

__version__ = "0.1.0"
from . import optim
from . import checkpoint
from . import trainer
from . import generate
