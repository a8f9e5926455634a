"""Frozen, validated hyper-parameters: ``MAMLConfig`` (supervised MAML), ``MAMLRLConfig``
(``maml.MAMLRL``) and ``PPOConfig`` (``maml.PPO``).

Each is a plain immutable record: every field is checked on construction and a bad value raises
``ValueError`` naming the field and what was expected, before anything is traced or compiled.
This module imports no JAX, so a command line can validate them before importing it.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from envs.observation import OBS_MODES
from ssm_jax.validation import check_bool, check_choice, check_float, check_int


@dataclasses.dataclass(frozen=True)
class MAMLConfig:
    """Hyper-parameters of MAML / Meta-SGD.

    Attributes:
      inner_lr: step size of the inner (task-adaptation) gradient steps, >= 0.
        With ``learn_inner_lr`` it is the initial value of every per-parameter
        step size.
      outer_lr: Adam step size of the meta-parameters, > 0.
      num_inner_steps: number of inner gradient steps, >= 0 (0 means "no
        adaptation": the meta-loss is then the plain query loss).
      first_order: drop the second-order term (stop_gradient on the inner
        gradients, FOMAML).
      grad_clip: if given (> 0), clip the meta-gradient to this global norm.
      learn_inner_lr: Meta-SGD: per-parameter inner step sizes (same shapes as
        the params) are meta-learned with the params.
      remat_inner: wrap each inner step in ``jax.checkpoint`` (saves memory on
        long sequences at the price of recomputing the inner forward pass).
    """

    inner_lr: float = 0.01
    outer_lr: float = 0.001
    num_inner_steps: int = 1
    first_order: bool = False
    grad_clip: Optional[float] = None
    learn_inner_lr: bool = False
    remat_inner: bool = False

    def __post_init__(self):
        object.__setattr__(self, "inner_lr", check_float("inner_lr", self.inner_lr, minimum=0.0))
        object.__setattr__(self, "outer_lr", check_float("outer_lr", self.outer_lr, minimum=0.0, strict_min=True))
        object.__setattr__(
            self, "num_inner_steps", check_int("num_inner_steps", self.num_inner_steps, minimum=0)
        )
        for name in ("first_order", "learn_inner_lr", "remat_inner"):
            object.__setattr__(self, name, check_bool(name, getattr(self, name)))
        if self.grad_clip is not None:
            object.__setattr__(
                self, "grad_clip", check_float("grad_clip", self.grad_clip, minimum=0.0, strict_min=True)
            )


BASELINES = ("value", "linear")


@dataclasses.dataclass(frozen=True)
class MAMLRLConfig:
    """Hyper-parameters of MAML-RL (validated on construction).

    Attributes:
      inner_lr: inner step size (initial value of every per-parameter step size if
        ``learn_inner_lr``), >= 0.
      outer_lr: Adam step size, > 0.
      outer_lr_decay_steps: if set, the outer step size decays linearly from ``outer_lr`` to 0
        over this many Adam steps (meta-updates x ``num_outer_epochs``), so the final
        meta-parameters settle instead of jittering at full step size (None: constant).
      num_inner_steps: inner policy-gradient steps K (each on fresh support data), >= 0.
      first_order: drop the second-order terms (see module docstring).
      learn_inner_lr: Meta-SGD per-parameter inner step sizes, meta-learned.
      grad_clip: global-norm clip of the meta-gradient (None: no clipping).
      support_envs, support_steps: parallel envs E and time steps T of each support rollout.
      query_envs, query_steps: the same for the query rollout.
      gamma, gae_lambda: discount and GAE lambda, in [0, 1].
      reward_scale: rewards are multiplied by this before computing advantages/values (> 0).
      normalize_advantages: standardise advantages per (task, batch).
      value_coef: weight of the value losses in the outer loss, >= 0.
      entropy_coef: weight of the entropy bonus (query data) in the outer loss, >= 0.
      clip_eps: PPO clip range of the outer ratio (only matters with several epochs), > 0.
      num_outer_epochs: Adam steps per collected batch of data, >= 1.
      baseline: where the advantages' baseline comes from: ``"value"``, the policy's value
        head (trained in the outer loss), or ``"linear"``, a linear feature baseline fitted to
        each batch's own returns (``maml.baseline``, as in the original MAML-RL; the value head
        is then not trained).
      obs_mode: "full" or "partial" observations (see ``envs.observation``).
      carry_across_episodes: keep the recurrent carry across episodes within a rollout.
      remat_inner: ``jax.checkpoint`` each recomputed inner step in the outer loss.
    """

    inner_lr: float = 0.1
    outer_lr: float = 1e-3
    outer_lr_decay_steps: Optional[int] = None
    num_inner_steps: int = 1
    first_order: bool = False
    learn_inner_lr: bool = True
    grad_clip: Optional[float] = 1.0
    support_envs: int = 8
    support_steps: int = 100
    query_envs: int = 8
    query_steps: int = 100
    gamma: float = 0.99
    gae_lambda: float = 0.95
    reward_scale: float = 0.1
    normalize_advantages: bool = True
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    clip_eps: float = 0.2
    num_outer_epochs: int = 1
    baseline: str = "value"
    obs_mode: str = "full"
    carry_across_episodes: bool = False
    remat_inner: bool = False

    def __post_init__(self):
        def f(name, strict=False, maximum=None):
            value = check_float(name, getattr(self, name), minimum=0.0, strict_min=strict, maximum=maximum)
            object.__setattr__(self, name, value)

        i = lambda name, minimum: object.__setattr__(self, name, check_int(name, getattr(self, name), minimum=minimum))
        f("inner_lr")
        f("outer_lr", strict=True)
        i("num_inner_steps", 0)
        if self.outer_lr_decay_steps is not None:
            i("outer_lr_decay_steps", 1)
        for name in ("support_envs", "support_steps", "query_envs", "query_steps", "num_outer_epochs"):
            i(name, 1)
        for name in ("gamma", "gae_lambda"):
            f(name, maximum=1.0)
        f("reward_scale", strict=True)
        f("value_coef")
        f("entropy_coef")
        f("clip_eps", strict=True)
        if self.grad_clip is not None:
            f("grad_clip", strict=True)
        for name in ("first_order", "learn_inner_lr", "normalize_advantages", "carry_across_episodes",
                     "remat_inner"):
            object.__setattr__(self, name, check_bool(name, getattr(self, name)))
        check_choice("baseline", self.baseline, BASELINES)
        check_choice("obs_mode", self.obs_mode, OBS_MODES)


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO hyper-parameters (validated on construction; ``ValueError`` names the bad field).

    Attributes:
      num_tasks: train tasks sampled per iteration (N), >= 1.
      num_envs: parallel environments per task (E), >= 1; ``num_tasks * num_envs`` must be
        divisible by ``num_minibatches``.
      num_steps: rollout window length T in steps (each window starts from a fresh reset), >= 1.
      update_epochs: passes over each iteration's data, >= 1.
      num_minibatches: minibatches (of whole rows) per pass, >= 1.
      lr: Adam step size, > 0; anneal_lr: decay it linearly to 0 over ``total_iterations``.
      total_iterations: the schedule length in iterations (only used with anneal_lr), >= 1.
      gamma, gae_lambda: discount and GAE lambda, in [0, 1].
      clip_eps: PPO ratio clip, > 0; value_coef, entropy_coef: loss weights, >= 0.
      grad_clip: global-norm clip of each gradient, > 0.
      reward_scale: rewards are multiplied by this for the value targets and advantages, > 0.
      carry_across_episodes: keep the recurrent carry across episodes in a window (RL^2).
    """

    num_tasks: int = 8
    num_envs: int = 4
    num_steps: int = 500
    update_epochs: int = 4
    num_minibatches: int = 4
    lr: float = 1e-3
    anneal_lr: bool = True
    total_iterations: int = 100
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    value_coef: float = 0.5
    entropy_coef: float = 0.01
    grad_clip: float = 0.5
    reward_scale: float = 0.1
    carry_across_episodes: bool = False

    def __post_init__(self):
        def set_(name, value):
            object.__setattr__(self, name, value)

        for name in ("num_tasks", "num_envs", "num_steps", "update_epochs", "num_minibatches",
                     "total_iterations"):
            set_(name, check_int(name, getattr(self, name)))
        if (self.num_tasks * self.num_envs) % self.num_minibatches:
            raise ValueError(
                f"num_minibatches ({self.num_minibatches}) must divide num_tasks * num_envs "
                f"({self.num_tasks * self.num_envs})")
        set_("lr", check_float("lr", self.lr, minimum=0.0, strict_min=True))
        for name in ("gamma", "gae_lambda"):
            set_(name, check_float(name, getattr(self, name), minimum=0.0, maximum=1.0))
        for name in ("clip_eps", "grad_clip", "reward_scale"):
            set_(name, check_float(name, getattr(self, name), minimum=0.0, strict_min=True))
        for name in ("value_coef", "entropy_coef"):
            set_(name, check_float(name, getattr(self, name), minimum=0.0))
        for name in ("anneal_lr", "carry_across_episodes"):
            set_(name, check_bool(name, getattr(self, name)))
