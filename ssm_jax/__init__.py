"""State space model layers and policies in Flax, sharing one sequence/step contract."""

from ssm_jax.checkpoint import load, save
from ssm_jax.diagonal import DiagonalSSM
from ssm_jax.distributions import Categorical, Gaussian
from ssm_jax.policy import CORES, MLPPolicy, PolicyOutput, SSMPolicy
from ssm_jax.scan import linear_recurrence, reset_carry, sequential_scan
from ssm_jax.selective import SelectiveSSM
from ssm_jax.ssm import SSM

__all__ = [
    "SSM",
    "DiagonalSSM",
    "SelectiveSSM",
    "SSMPolicy",
    "MLPPolicy",
    "PolicyOutput",
    "Categorical",
    "Gaussian",
    "CORES",
    "save",
    "load",
    "linear_recurrence",
    "reset_carry",
    "sequential_scan",
]
