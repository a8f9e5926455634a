"""Functional MAML (supervised and reinforcement learning) in JAX.

Names are imported on first use (``ssm_jax.lazy``): ``import maml`` and the configs
(``maml.config``) import no JAX.
"""

from ssm_jax.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "config": ("MAMLConfig", "MAMLRLConfig", "PPOConfig"),
    "core": ("MetaState", "build_mask", "init_inner_lr", "init_state", "inner_loop",
             "inner_sgd_step", "make_apply_fn", "make_optimizer", "meta_loss", "meta_update",
             "mse_loss", "predictions_of", "scale_by_inner_lr"),
    "meta_maml": ("MetaMAML",),
    "onpolicy": ("gae",),
    "ppo": ("PPO", "PPOState"),
    "rl": ("MAMLRL",),
    "sinusoid": ("sample_sinusoid_tasks",),
})
