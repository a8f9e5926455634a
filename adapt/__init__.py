"""Test-time adaptation: safe online, meta-learned and hybrid (replay) weight updates, between
episodes or within one (``within_episode``).

Names are imported on first use (``ssm_jax.lazy``), so ``maml.core`` can share the
non-finite guard of ``adapt.core`` without importing the adapters.
"""

from ssm_jax.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "adapter": ("STRATEGIES", "Adapter"),
    "buffer": ("ReplayBuffer", "buffer_add", "buffer_contents", "buffer_init", "buffer_init_like",
               "buffer_sample"),
    "config": ("OPTIMIZERS", "AdaptationConfig", "make_optimizer"),
    "core": ("AdaptInfo", "adapt_step", "adapt_steps", "finite_step", "tree_all_finite", "tree_select"),
    "losses": ("hybrid_objective", "make_apply_fn", "mse_loss", "predictions_of", "supervised_objective"),
    "rl": ("discounted_returns", "evaluate_with_adaptation", "next_observation_inputs",
           "next_observation_loss", "policy_gradient_loss"),
    "within_episode": ("WithinEpisodeResult", "evaluate_within_episode"),
})
