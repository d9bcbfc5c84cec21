"""Layer 1, the engine: a Tensor with reverse-mode autograd and the ops of a Transformer.

    tensor.py      Tensor, backward, no_grad: the autograd engine and its elementwise ops
    functional.py  softmax, GELU, LayerNorm, linear, attention, cross-entropy, ... (`F`)
    reference.py   the plain-NumPy arithmetic those ops run: the definition of every kernel
    kernels.py     the switch between reference.py and the Numba kernels of `minillm.fast`

May import: NumPy, and `minillm.fast` (only from kernels.py, only when the Numba backend
is used). Nothing else in minillm.
"""
