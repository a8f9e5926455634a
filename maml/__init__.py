"""Functional MAML (supervised and reinforcement learning) in JAX."""

from maml.config import MAMLConfig
from maml.core import (
    MetaState,
    build_mask,
    init_inner_lr,
    init_state,
    inner_loop,
    inner_sgd_step,
    make_apply_fn,
    make_optimizer,
    meta_loss,
    meta_update,
    mse_loss,
    predictions_of,
    scale_by_inner_lr,
)
from maml.meta_maml import MetaMAML
from maml.onpolicy import gae
from maml.ppo import PPO, PPOConfig, PPOState
from maml.rl import MAMLRL, MAMLRLConfig
from maml.sinusoid import sample_sinusoid_tasks

__all__ = [
    "MAMLConfig",
    "MAMLRL",
    "MAMLRLConfig",
    "MetaMAML",
    "MetaState",
    "PPO",
    "PPOConfig",
    "PPOState",
    "build_mask",
    "gae",
    "init_inner_lr",
    "init_state",
    "inner_loop",
    "inner_sgd_step",
    "make_apply_fn",
    "make_optimizer",
    "meta_loss",
    "meta_update",
    "mse_loss",
    "predictions_of",
    "sample_sinusoid_tasks",
    "scale_by_inner_lr",
]
