"""minillm: a from-scratch LLM library on NumPy and Numba, small enough to read end to end.

The layers, bottom to top; each may import only the layers below it:

    engine/   Tensor and autograd, the ops (F), their NumPy definitions, the backend switch
    model/    masks, modules, the CD, ND and ED models, generation
    data/     tokenizers, the three objectives, batches, the synthetic world
    train/    optimisers, checkpoints, the training loop
    study/    the architecture x objective study, rank classification, attention ranks
    cli/      the `minillm` command;  testing.py  gradcheck and hypothesis strategies

`fast/` holds the Numba kernels behind the engine's hot ops, off the reading path.
README.md ("Read the code") gives the reading order.
"""
import sys

from . import engine
from .engine.tensor import Tensor, no_grad, is_grad_enabled
from .engine import kernels, functional
from .model import masks, nn, models, generate
from .model.models import ModelConfig, build_model
from .data import tokenizer, objectives, batches, world
from .train import optim, checkpoint, trainer
from .study import evaluate, rank
from . import testing

# The flat module names of the first release (`minillm.masks`, `minillm.optim`, ...) stay
# importable: `from minillm.masks import causal` finds the module in its new place.
for _m in (engine.tensor, kernels, functional, masks, nn, models, generate, tokenizer, objectives, batches, world,
           optim, checkpoint, trainer, evaluate, rank):
    sys.modules.setdefault(f"{__name__}.{_m.__name__.rsplit('.', 1)[1]}", _m)

__version__ = "0.1.0"
