"""PPO over a task distribution, jitted end to end: a pure ``update(state, key)`` per iteration.

One iteration (everything inside one ``jit``, a pure function of ``(state, key)``)::

    tasks  ~ task_dist.sample(k_tasks, num_tasks, "train")          (N tasks)
    traj   = envs.rollout_tasks(k_roll, policy, params, tasks, ...)  (N x E envs x T steps)
    advantages, targets = onpolicy.gae(reward_scale * rewards, values, ...)
    update_epochs passes, each over num_minibatches minibatches of whole (task, env) rows:
        one Adam step on the clipped PPO loss (advantages normalised per minibatch)

Minibatches hold whole rows, so a recurrent policy is recomputed over full sequences from its
initial carry. Every window starts from a fresh reset and a zero carry, so the sequence
``apply`` with ``onpolicy.policy_resets(traj.resets, carry_across_episodes)`` reproduces exactly
the log-probs and values the rollout acted with: the probability ratio of the first minibatch
step is 1.

Two uses over a task distribution:
  * non-adaptive training (domain randomisation): a memoryless policy (``MLPPolicy``) on fresh
    tasks every iteration; it never knows which task it is in and learns one behaviour that
    does well on average.
  * RL^2 (in-context adaptation): a recurrent policy (``SSMPolicy``) on
    ``envs.context.ContextWrapper`` observations (previous action, reward and done appended)
    with ``carry_across_episodes=True``, so its state persists over the several episodes of a
    task in a window and it learns to infer the task from its own experience.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax

import envs
from maml import onpolicy
from maml.config import PPOConfig
from ssm_jax import sharding
from ssm_jax.validation import check_params


@flax.struct.dataclass
class PPOState:
    """params: policy params; opt_state: optax state; step: iterations done (int32 scalar)."""

    params: Any
    opt_state: Any
    step: jax.Array


class PPO:
    """PPO of an ``ssm_jax`` policy over ``task_dist``'s train split, in ``env``.

    Args:
      policy: an ``ssm_jax`` policy module (``MLPPolicy``, ``SSMPolicy``) whose ``obs_dim`` is
        the environment's full observation size and whose action head fits its action space
        (``envs.check_policy``, checked here, before anything compiles).
      config: a ``PPOConfig`` (default ``PPOConfig()``).
      env: a gymnax environment (default CartPole-v1), e.g. an ``envs.context.ContextWrapper``.
      task_dist: the task distribution (default ``envs.CartPoleTasks()``; an ``envs.EnvTasks``
        of ``env``'s name, e.g. ``envs.EnvTasks("Pendulum-v1")``, or an ``envs.Suite``),
        anything with ``sample(key, num_tasks, split)`` returning tasks of ``env``; iterations
        sample its ``"train"`` split.
      mesh: None (one device) or a ``jax.sharding.Mesh`` with a ``"batch"`` axis
        (``ssm_jax.sharding.make_mesh``): each iteration's rollout is split over its devices
        along the task axis (``config.num_tasks`` must be divisible by them, checked here) and
        so are the flattened (task, env) rows; the state stays replicated and the gradients
        are reduced across devices inside the jitted step. Keys are split per task and env
        exactly as without a mesh, so the numbers are the single-device ones up to float
        reassociation.

    Pure API: ``state = ppo.init(key)``; ``state, metrics = ppo.update(state, key)`` (one
    iteration; jit/vmap/scan it); ``ppo.env_steps_per_update`` env steps per iteration.
    """

    def __init__(self, policy, config: Optional[PPOConfig] = None, env=None,
                 task_dist: Optional[envs.CartPoleTasks | envs.EnvTasks] = None, mesh=None):
        self.config = PPOConfig() if config is None else config
        if not isinstance(self.config, PPOConfig):
            raise ValueError(f"config must be a PPOConfig, got {type(self.config).__name__}")
        self.policy = policy
        self.env = envs.make("CartPole-v1")[0] if env is None else env
        envs.check_policy(policy, self.env, "full")  # contract, obs_dim and action space
        if not hasattr(policy, "init"):
            raise ValueError(f"policy must be a flax policy module with init; {type(policy).__name__} has no 'init'")
        self.task_dist = envs.CartPoleTasks() if task_dist is None else task_dist
        if not callable(getattr(self.task_dist, "sample", None)):
            raise ValueError(f"task_dist must be a task distribution with sample(key, n, split) "
                             f"(e.g. envs.CartPoleTasks()), got {type(self.task_dist).__name__}")
        self.obs_dim = envs.obs_dim(self.env, "full")
        self.mesh = sharding.check_mesh("mesh", mesh)
        sharding.check_divisible("num_tasks", self.config.num_tasks, self.mesh)
        c = self.config
        lr = c.lr
        if c.anneal_lr:
            lr = optax.linear_schedule(c.lr, 0.0, c.total_iterations * c.update_epochs * c.num_minibatches)
        self.optimizer = optax.chain(optax.clip_by_global_norm(c.grad_clip), optax.adam(lr, eps=1e-5))

    @property
    def env_steps_per_update(self) -> int:
        """Environment steps of one ``update``: ``num_tasks * num_envs * num_steps``."""
        c = self.config
        return c.num_tasks * c.num_envs * c.num_steps

    def init(self, key) -> PPOState:
        """Fresh policy params (``policy.init``) and optimiser state, ``step`` 0."""
        params = self.policy.init(key, jnp.zeros((1, 1, self.obs_dim), jnp.float32))
        return self.init_from_params(params)

    def init_from_params(self, params) -> PPOState:
        """A ``PPOState`` around given policy params (fresh optimiser state, ``step`` 0)."""
        check_params("params", params)
        return PPOState(params=params, opt_state=self.optimizer.init(params),
                        step=jnp.zeros((), jnp.int32))

    def _loss(self, params, batch):
        """Clipped PPO loss of one minibatch and its parts ``(policy_loss, value_loss, entropy,
        approx_kl)``.

        ``batch = (obs (B, T, D), actions (B, T), resets (B, T) bool, old_log_probs (B, T),
        advantages (B, T), value_targets (B, T))``: ``resets`` as the policy's sequence apply
        needs them (``onpolicy.policy_resets``); advantages are normalised here, over the
        minibatch. ``approx_kl`` is the estimator ``mean((r - 1) - log r)`` of
        ``KL(pi_old || pi)``, with ``r`` the probability ratio.
        """
        c = self.config
        obs, actions, resets, old_logp, adv, targets = batch
        out, _ = self.policy.apply(params, obs, resets=resets)
        logp = out.dist.log_prob(actions)
        ratio = jnp.exp(logp - old_logp)
        adv = onpolicy.normalize_advantages(adv)
        pg = -jnp.mean(jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - c.clip_eps, 1 + c.clip_eps) * adv))
        vloss = jnp.mean(jnp.square(out.value - targets))
        ent = jnp.mean(out.dist.entropy())
        kl = jnp.mean((ratio - 1.0) - (logp - old_logp))
        return pg + c.value_coef * vloss - c.entropy_coef * ent, (pg, vloss, ent, kl)

    def update(self, state: PPOState, key):
        """One PPO iteration; returns ``(state, metrics)``, metrics all scalars.

        ``episode_return``: the mean return of the episodes completed in the iteration's
        rollout (``onpolicy.segment_return`` of the window if none completed); ``policy_loss``,
        ``value_loss``, ``entropy``, ``approx_kl``: means over every minibatch step.
        """
        c = self.config
        k_tasks, k_roll, k_perm = jax.random.split(key, 3)
        tasks = self.task_dist.sample(k_tasks, c.num_tasks, "train")
        traj = envs.rollout_tasks(k_roll, self.policy, state.params, tasks, num_envs=c.num_envs,
                                  num_steps=c.num_steps, env=self.env,
                                  carry_across_episodes=c.carry_across_episodes, mesh=self.mesh)
        rows = c.num_tasks * c.num_envs
        flat = jax.tree.map(lambda x: x.reshape((rows,) + x.shape[2:]),
                            (traj.obs, traj.actions, traj.resets, traj.log_probs, traj.values,
                             traj.rewards, traj.terminated, traj.truncated, traj.last_value))
        obs, actions, resets, logp, values, rewards, term, trunc, last_value = flat
        adv, targets = onpolicy.gae(rewards * c.reward_scale, values, term, trunc, last_value,
                                    c.gamma, c.gae_lambda)
        data = (obs, actions, onpolicy.policy_resets(resets, c.carry_across_episodes), logp, adv, targets)
        data = sharding.constrain(data, self.mesh)  # (task, env) rows over the mesh's devices

        def minibatch_step(carry, idx):
            params, opt_state = carry
            batch = jax.tree.map(lambda x: x[idx], data)
            (_, aux), grads = jax.value_and_grad(self._loss, has_aux=True)(params, batch)
            updates, opt_state = self.optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), aux

        def epoch(carry, k):
            perm = jax.random.permutation(k, rows).reshape(c.num_minibatches, -1)
            return jax.lax.scan(minibatch_step, carry, perm)

        (params, opt_state), aux = jax.lax.scan(
            epoch, (state.params, state.opt_state), jax.random.split(k_perm, c.update_epochs))
        pg, vloss, ent, kl = jax.tree.map(jnp.mean, aux)
        completed = envs.mean_episode_return(traj)
        episode_return = jnp.where(jnp.isnan(completed), onpolicy.segment_return(traj), completed)
        metrics = {"episode_return": episode_return,
                   "policy_loss": pg, "value_loss": vloss, "entropy": ent, "approx_kl": kl}
        return sharding.constrain_replicated(
            (PPOState(params=params, opt_state=opt_state, step=state.step + 1), metrics), self.mesh)
