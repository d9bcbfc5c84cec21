"""Test-wide settings: one hypothesis profile with no deadline (Numba compiles on first call)
and a fixed example budget that keeps the suite fast."""
import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "minillm",
    deadline=None,
    max_examples=int(os.environ.get("MINILLM_HYPOTHESIS_EXAMPLES", "40")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.load_profile("minillm")
