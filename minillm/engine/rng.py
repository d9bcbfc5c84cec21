"""Seeds and random Generators: everything random in minillm draws from a `np.random.Generator`."""
import numpy as np


def as_rng(rng=None):
    """`rng` itself if it is a Generator, else a new Generator seeded with it (an int, a
    sequence of ints, anything else `np.random.default_rng` takes, or None for fresh
    OS entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    try:
        return np.random.default_rng(rng)   # also a SeedSequence, a BitGenerator, an array of ints
    except (TypeError, ValueError):
        raise TypeError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__} {rng!r}") from None
