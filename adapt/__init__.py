"""Test-time adaptation: safe online, meta-learned and hybrid (replay) weight updates."""

from adapt.adapter import STRATEGIES, Adapter
from adapt.buffer import (
    ReplayBuffer,
    buffer_add,
    buffer_contents,
    buffer_init,
    buffer_init_like,
    buffer_sample,
)
from adapt.config import OPTIMIZERS, AdaptationConfig, make_optimizer
from adapt.core import AdaptInfo, adapt_step, adapt_steps, tree_all_finite, tree_select
from adapt.losses import hybrid_objective, make_apply_fn, mse_loss, predictions_of, supervised_objective
from adapt.rl import (
    discounted_returns,
    evaluate_with_adaptation,
    next_observation_inputs,
    next_observation_loss,
    policy_gradient_loss,
)

__all__ = [
    "AdaptInfo",
    "AdaptationConfig",
    "Adapter",
    "OPTIMIZERS",
    "ReplayBuffer",
    "STRATEGIES",
    "adapt_step",
    "adapt_steps",
    "buffer_add",
    "buffer_contents",
    "buffer_init",
    "buffer_init_like",
    "buffer_sample",
    "discounted_returns",
    "evaluate_with_adaptation",
    "hybrid_objective",
    "make_apply_fn",
    "make_optimizer",
    "mse_loss",
    "next_observation_inputs",
    "next_observation_loss",
    "policy_gradient_loss",
    "predictions_of",
    "supervised_objective",
    "tree_all_finite",
    "tree_select",
]
