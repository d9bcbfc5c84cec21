"""The fast path: Numba kernels behind the engine's hot ops. Not on the reading path.

Each kernel computes exactly what its definition in `minillm/engine/reference.py` computes
(tests compare them) and says so in its docstring; `ops.py` gathers them under the
reference's names, and `minillm.engine.kernels` dispatches to it. See README.md here for
what each kernel speeds up, by how much, and why. `MINILLM_KERNELS=numpy` turns this
package off.

This file imports nothing, so that `memory.py` (the allocator policy, plain ctypes) can be
applied without loading Numba.
"""
