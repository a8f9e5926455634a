"""State space model layers and policies in Flax, sharing one sequence/step contract.

Names are imported on first use (``ssm_jax.lazy``): ``import ssm_jax`` alone imports no JAX.
"""

from ssm_jax.lazy import lazy_exports

#: The policy cores' names (the keys of ``ssm_jax.policy.CORES``), importable without JAX.
CORE_NAMES = ("diagonal", "selective", "ssm")

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "checkpoint": ("load", "save"),
    "diagonal": ("DiagonalSSM",),
    "distributions": ("Categorical", "Gaussian"),
    "policy": ("CORES", "MLPPolicy", "PolicyOutput", "SSMPolicy"),
    "scan": ("linear_recurrence", "matrix_recurrence", "reset_carry", "sequential_scan"),
    "selective": ("SelectiveSSM",),
    "ssm": ("SSM",),
})
__all__ = __all__ + ["CORE_NAMES"]
