"""The Numba backend: the same functions, signatures and results as `engine/reference.py`.

Each kernel lives in a file with one job (README.md here: what each speeds up, measured):
  gemm_plain.py     a plain tiled GEMM to read first (a baseline; not gathered here)
  gemm_kernel.py    the tuned GEMM: matrix products, and a linear layer's forward with its bias
  softmax_fused.py  masked softmax and log-softmax
  fused.py          GELU, LayerNorm, cross-entropy
  attention.py      multi-head attention fused per head
  bias.py           a bias added to rows, and its gradient
  embedding.py      an embedding table's gradient
  adamw.py          the optimiser update
  vmath.py          a vectorisable exp
  threads.py        thread policy, compile cache, the cold-start message
  memory.py         allocator policy (applied by engine/kernels.py, without Numba)
  checks.py         argument checks and the dtype rule: float32/float64, mixed inputs
                    promoted with np.result_type
"""
from .adamw import adamw_update
from .attention import attention_backward, attention_forward
from .bias import add_bias, sum_rows
from .embedding import embedding_backward
from .fused import cross_entropy, cross_entropy_backward, gelu, gelu_backward, layer_norm, layer_norm_backward
from .gemm_kernel import gemm, linear, matmul, weight_gradients
from .softmax_fused import log_softmax, log_softmax_backward, softmax, softmax_backward

__all__ = ["matmul", "gemm", "linear", "weight_gradients", "softmax", "softmax_backward", "log_softmax",
           "log_softmax_backward", "gelu", "gelu_backward", "layer_norm", "layer_norm_backward", "cross_entropy",
           "cross_entropy_backward", "adamw_update", "attention_forward", "attention_backward", "add_bias",
           "sum_rows", "embedding_backward"]
