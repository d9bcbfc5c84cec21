"""Seeds and random Generators: everything random in minillm draws from a `np.random.Generator`."""
import numpy as np


def as_rng(rng=None):
    """`rng` itself if it is a Generator, else a new Generator seeded with it (an int, a
    sequence of ints, or None for fresh OS entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)) or (
            isinstance(rng, (list, tuple)) and all(isinstance(r, (int, np.integer)) for r in rng)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")
