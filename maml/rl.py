"""MAML for reinforcement learning on gymnax tasks (`envs.EnvTasks`: CartPole, Acrobot, Pendulum).

One meta-update, entirely inside one ``jax.jit`` (sampling included)::

    for each task (vmap):
        theta_0 = theta
        for k in 0 .. K-1 (lax.scan):                         # inner loop
            support_k ~ pi_{theta_k}   (envs.rollout: E envs x T steps)
            theta_{k+1} = theta_k + alpha * grad J_LVC(theta_k; support_k)
        query ~ pi_{theta_K}
    outer loss = PPO-clipped surrogate of the query data at theta_K(theta)
                 + value losses - entropy bonus,   minimised by Adam over (theta, alpha)

``alpha`` is ``state.inner_lr``, per-parameter step sizes; Adam updates it only with
``learn_inner_lr`` (Meta-SGD), otherwise it stays at ``inner_lr``.

Estimator (why). The meta-objective is ``J(theta_K(theta))`` where the support data of step
``k`` is *sampled from* ``pi_{theta_k}``: the sampling distribution itself depends on the
pre-update params. Autodiff through the naive inner policy-gradient loss
``-sum_t log pi(a_t|s_t) A_t`` gets the Hessian of ``J`` wrong: it yields only
``E[grad^2 log pi * A]`` and misses the term ``E[grad log pi grad log pi^T A]`` that comes from
the dependence of the samples on ``theta_k`` (Foerster et al. 2018, DiCE; Rothfuss et al. 2019,
ProMP). We use ProMP's low-variance curvature (LVC) surrogate for the inner step:

    J_LVC(theta_k) = mean_t  exp(log pi_{theta_k}(a_t|s_t) - log pi_old(a_t|s_t)) * A_t

where ``log pi_old`` is the log-prob under the params that sampled the data (a constant).
At the sampling point the ratio is 1, so its gradient is the usual policy gradient and its
Hessian is ``E[sum_t (grad^2 log pi_t + grad log pi_t grad log pi_t^T) A_t]``: the per-step
DiCE Hessian, which includes the sampling-distribution term, and drops DiCE's cross-time
products (unbiased only up to those terms, but with far lower variance than full DiCE;
ProMP shows it trains better). Each inner step samples fresh support data with the current
adapted params, as in Finn et al. (2017), so every step's surrogate is evaluated at the
params that sampled it. ``first_order=True`` stops the gradient of the inner gradients:
``d theta_K / d theta = I``, which drops every second-order term (including the
sampling-distribution term); the learned step sizes still get their first-order gradient.

Outer objective (ProMP). Data are collected once per meta-update (no gradient), then
``num_outer_epochs`` Adam steps are taken on the outer loss; each step *recomputes* the
adapted params from the stored support data (ratios against the stored sampling
log-probs keep the inner gradients importance-corrected) and uses the PPO clipped ratio
``pi_{theta_K}/pi_old`` on the query data. With one epoch (the default) every ratio is 1 and
the update is the plain (LVC) MAML policy gradient.

Advantages are GAE(gamma, lambda), normalised per batch, with one of two baselines
(``MAMLRLConfig.baseline``). ``"value"``: the policy's value head (values under the params that
sampled the data; truncated episodes are bootstrapped with the value of their last state),
trained in the outer loss on every support batch (at ``theta_k``) and on the query batch (at
``theta_K``). ``"linear"``: a linear feature baseline fitted to each batch's own returns
(``maml.baseline``, the original MAML-RL's choice), right for any policy and task by
construction, where the value head has to generalise across adaptation steps and tasks.

Policies follow the ``ssm_jax`` policy contract (``SSMPolicy``, ``MLPPolicy``): rollouts use
``method="step"``; the losses recompute log-probs and values with the sequence ``apply`` and
the rollout's ``resets``.
"""

from __future__ import annotations

import dataclasses

from typing import Optional

import chex
import flax.struct
import jax
import jax.numpy as jnp
import optax

import envs
from maml import baseline, core, onpolicy
from maml.config import BASELINES, MAMLRLConfig
from ssm_jax import sharding
from ssm_jax.validation import check_int, check_params, check_prefix_keys


# --------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------
# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
@flax.struct.dataclass
class Batch:
    """Stored rollout data of one (task, segment); ``E`` envs, ``T`` steps, ``D`` obs dim.

    obs (E, T, D); actions (E, T) or (E, T, A); resets (E, T) bool (the ``resets`` to pass
    to the policy's sequence apply); old_log_probs (E, T) under the sampling params;
    advantages (E, T) (normalised if configured); returns (E, T) value targets (scaled
    rewards); episode_return (): mean return per episode segment of the window (see
    ``onpolicy.segment_return``); completed_return (): mean return of completed episodes (NaN if none).
    """

    obs: chex.Array
    actions: chex.Array
    resets: chex.Array
    old_log_probs: chex.Array
    advantages: chex.Array
    returns: chex.Array
    episode_return: chex.Array
    completed_return: chex.Array


# --------------------------------------------------------------------------
# the algorithm
# --------------------------------------------------------------------------
class MAMLRL:
    """MAML-RL (LVC inner surrogate, ProMP-style outer step) for ``ssm_jax`` policies.

    Args:
      policy: an ``ssm_jax`` policy module (``SSMPolicy``, ``MLPPolicy``) with ``obs_dim``; it
        must fit ``env`` (``envs.check_policy``: observation size in ``config.obs_mode``, action
        space).
      config: a ``MAMLRLConfig`` (default: ``MAMLRLConfig()``).
      env: a gymnax environment (default CartPole-v1 via ``envs.make``).
      adapt_filter: which params the inner loop adapts (``core.build_mask``), e.g.
        ``["heads"]`` to adapt only the actor/critic heads.
      mesh: None (one device) or a ``jax.sharding.Mesh`` with a ``"batch"`` axis
        (``ssm_jax.sharding.make_mesh``): ``meta_update`` and ``adapt_and_evaluate`` split the
        task axis (tasks, their keys, the collected data) over its devices and keep the state
        replicated; the outer gradient is reduced across devices inside the jitted step. Keys
        are split per task as without a mesh, so results equal the single-device ones up to
        float reassociation. The number of tasks must be divisible by the mesh's devices.

    Pure, jitted API (``N`` tasks, an ``EnvParams`` batch with a leading task axis):
      ``state = algo.init(key)`` or ``algo.init_from_params(params)``;
      ``state, metrics = algo.meta_update(state, tasks, key)``;
      ``out = algo.adapt_and_evaluate(state, tasks, key, num_inner_steps, num_envs, num_steps)``:
      adapted params and returns after 0..K inner steps per task.
    The inner step sizes are ``state.inner_lr`` (a params-shaped tree, initialised to
    ``config.inner_lr``; meta-learned iff ``config.learn_inner_lr``, otherwise constant).
    """

    def __init__(self, policy, config: Optional[MAMLRLConfig] = None, env=None, adapt_filter=None,
                 mesh=None):
        self.config = MAMLRLConfig() if config is None else config
        if not isinstance(self.config, MAMLRLConfig):
            raise ValueError(f"config must be a MAMLRLConfig, got {type(self.config).__name__}.")
        for attr in ("apply", "init", "initialize_carry", "obs_dim"):
            if not hasattr(policy, attr):
                raise ValueError(f"policy must follow the ssm_jax policy contract; it has no {attr!r}.")
        self.policy = policy
        self.env = envs.make("CartPole-v1")[0] if env is None else env
        # contract, obs_dim in obs_mode and action space: checked here, before anything compiles
        envs.check_policy(policy, self.env, self.config.obs_mode)
        self.obs_dim = envs.obs_dim(self.env, self.config.obs_mode)
        self.adapt_filter = adapt_filter
        self.mesh = sharding.check_mesh("mesh", mesh)
        c = self.config
        outer_lr = c.outer_lr
        if c.outer_lr_decay_steps is not None:
            outer_lr = optax.linear_schedule(c.outer_lr, 0.0, c.outer_lr_decay_steps)
        self.optimizer = core.make_optimizer(outer_lr, c.grad_clip)
        # The inner-loop mask of adapt_filter, built on demand and cached by tree structure (so a
        # state restored from a checkpoint, never passed through init here, still honours it).
        self._mask_for = core.MaskCache(adapt_filter)
        # meta_update: the jitted step itself on one device (mesh None), else a thin wrapper
        # that checks and places the inputs on the mesh first (_meta_update_on_mesh)
        self._meta_update_jit = jax.jit(self._meta_update)
        self.meta_update = self._meta_update_jit if self.mesh is None else self._meta_update_on_mesh
        self._adapt_and_evaluate_jit = jax.jit(
            self._adapt_and_evaluate,
            static_argnames=("num_inner_steps", "num_envs", "num_steps", "deterministic"))
        self._adapt_and_evaluate_upto_jit = jax.jit(
            self._adapt_and_evaluate_upto,
            static_argnames=("max_inner_steps", "num_envs", "num_steps", "deterministic"))

    def _meta_update_on_mesh(self, state: core.MetaState, tasks, key):
        """``meta_update`` with a mesh: one jitted meta-update (``_meta_update``), returning
        ``(state, metrics)``. The number of tasks must be divisible by its devices (``ValueError``
        naming ``num_tasks``, before compiling); concrete inputs are placed first (tasks split
        over the mesh, state and key replicated) and the returned state and metrics are
        replicated. Traceable: inside an outer ``jit``/``vmap`` (the benchmark's training) the
        layout is set by sharding constraints alone.
        """
        if self.mesh is not None:
            sharding.check_divisible("num_tasks", self._check_tasks(tasks), self.mesh)
            if sharding.is_concrete((state, tasks, key)):
                tasks = sharding.shard_batch(tasks, self.mesh, name="num_tasks")
                state, key = sharding.replicate((state, key), self.mesh)
        return self._meta_update_jit(state, tasks, key)

    def adapt_and_evaluate(self, state: core.MetaState, tasks, key, num_inner_steps: int,
                           num_envs: int, num_steps: int = 500, deterministic: bool = False,
                           max_inner_steps: Optional[int] = None):
        """Jitted ``_adapt_and_evaluate`` (see there) after validating the static counts:
        ``num_inner_steps`` an int >= 0, ``num_envs`` and ``num_steps`` ints >= 1.

        ``max_inner_steps`` (an int >= ``num_inner_steps``): compile one program for up to that
        many steps in which ``num_inner_steps`` is data (``_adapt_and_evaluate_upto``), so every
        step count up to it reuses the program; the returns have ``max_inner_steps + 1`` columns,
        NaN after column ``num_inner_steps``. The adapted params and the returns up to that
        column are the ``num_inner_steps`` program's (same keys and data; the two programs may
        round apart in the last bits).
        """
        num_inner_steps = check_int("num_inner_steps", num_inner_steps, minimum=0)
        num_envs = check_int("num_envs", num_envs, minimum=1)
        num_steps = check_int("num_steps", num_steps, minimum=1)
        if self.mesh is not None:
            sharding.check_divisible("num_tasks", self._check_tasks(tasks), self.mesh)
        if max_inner_steps is not None:
            max_inner_steps = check_int("max_inner_steps", max_inner_steps, minimum=num_inner_steps)
            check_prefix_keys("max_inner_steps")
            return self._adapt_and_evaluate_upto_jit(state, tasks, key, jnp.int32(num_inner_steps),
                                                     max_inner_steps=max_inner_steps, num_envs=num_envs,
                                                     num_steps=num_steps, deterministic=bool(deterministic))
        return self._adapt_and_evaluate_jit(state, tasks, key, num_inner_steps=num_inner_steps,
                                            num_envs=num_envs, num_steps=num_steps,
                                            deterministic=bool(deterministic))

    # ------------------------------------------------------------ state
    def init(self, key) -> core.MetaState:
        """Fresh policy params (``policy.init``) wrapped in a MetaState."""
        params = self.policy.init(key, jnp.zeros((1, 1, self.obs_dim), jnp.float32))
        return self.init_from_params(params)

    def init_from_params(self, params) -> core.MetaState:
        """``params`` wrapped in a MetaState; its ``inner_lr`` is the params-shaped tree of
        ``config.inner_lr``."""
        check_params("params", params)
        self._mask_for(params)
        c = self.config
        return core.init_state(params, core.init_inner_lr(params, c.inner_lr), self.optimizer,
                               learn_inner_lr=c.learn_inner_lr)

    def env_steps_per_update(self, num_tasks: int) -> int:
        c = self.config
        return num_tasks * (c.num_inner_steps * c.support_envs * c.support_steps + c.query_envs * c.query_steps)

    # ------------------------------------------------------------ pieces
    def rollout(self, params, key, task, num_envs, num_steps, deterministic=False):
        """The ``envs.Trajectory`` ``(num_envs, num_steps)`` of ``params`` (gradient stopped) on
        one task, in the configured environment, observation mode and carry rule."""
        c = self.config
        return envs.rollout(key, self.policy, jax.lax.stop_gradient(params), task, num_envs=num_envs,
                            num_steps=num_steps, obs_mode=c.obs_mode,
                            carry_across_episodes=c.carry_across_episodes, env=self.env,
                            deterministic=deterministic)

    def collect(self, params, key, task, num_envs, num_steps, deterministic=False) -> Batch:
        """Roll out ``params`` on one task (``rollout``) and turn it into a (gradient-free) Batch."""
        return self.batch_of(self.rollout(params, key, task, num_envs, num_steps, deterministic))

    def batch_of(self, traj, mask: Optional[chex.Array] = None) -> Batch:
        """The (gradient-free) Batch of a trajectory ``traj`` (``envs.Trajectory``, ``(E, T)``)
        of ONE task: the advantages of the configured estimator (``baseline``, GAE, scaled
        rewards, normalisation) and the resets the policy's sequence apply needs.

        ``mask`` ``(E, T)`` bool: only the True steps are data (e.g. an episode still running,
        its steps so far at the END of the window and padding before them): the linear baseline
        is fitted to them, the advantages are normalised over them and are 0 elsewhere (give
        ``inner_objective`` the same mask). Returns are cut (``"linear"``) or bootstrapped
        with ``traj.last_value`` (``"value"``) after the window's last step, as for a full
        window. None: every step counts (``collect``).
        """
        c = self.config
        traj = jax.lax.stop_gradient(traj)
        rewards = traj.rewards * c.reward_scale
        if mask is not None:
            rewards = jnp.where(mask, rewards, 0.0)
        if c.baseline == "linear":
            # episodes end at truncations too, and the window's end is not bootstrapped: the
            # baseline is fitted to exactly these cut returns (see maml.baseline)
            ends = traj.terminated | traj.truncated
            values = baseline.linear_baseline(traj.obs, rewards, ends, traj.resets, c.gamma, mask=mask)
            adv, returns = onpolicy.gae(rewards, values, ends, jnp.zeros_like(ends),
                                        jnp.zeros_like(traj.last_value), c.gamma, c.gae_lambda)
        else:
            adv, returns = onpolicy.gae(rewards, traj.values, traj.terminated, traj.truncated,
                                        traj.last_value, c.gamma, c.gae_lambda)
        if c.normalize_advantages:
            adv = onpolicy.normalize_advantages(adv, mask=mask)
        if mask is not None:
            adv = jnp.where(mask, adv, 0.0)
        return Batch(obs=traj.obs, actions=traj.actions,
                     resets=onpolicy.policy_resets(traj.resets, c.carry_across_episodes),
                     old_log_probs=traj.log_probs, advantages=adv, returns=returns,
                     episode_return=onpolicy.segment_return(traj),
                     completed_return=envs.mean_episode_return(traj))

    def _outputs(self, params, batch: Batch):
        out, _ = self.policy.apply(params, batch.obs, resets=batch.resets)
        return out.dist.log_prob(batch.actions), out.value, out.dist.entropy()

    def inner_objective(self, params, batch: Batch, mask: Optional[chex.Array] = None):
        """``(-J_LVC, value_loss)``: the inner loss (minimised) and, as aux, the value loss.

        ``mask`` (the batch's ``(E, T)`` bool, see ``batch_of``): both are means over its True
        steps only; None: over every step.
        """
        log_probs, values, _ = self._outputs(params, batch)
        ratio = jnp.exp(log_probs - batch.old_log_probs)
        if mask is None:
            return -jnp.mean(ratio * batch.advantages), jnp.mean(jnp.square(values - batch.returns))
        count = jnp.maximum(jnp.sum(mask), 1)
        mean = lambda x: jnp.sum(jnp.where(mask, x, 0.0)) / count  # noqa: E731
        return -mean(ratio * batch.advantages), mean(jnp.square(values - batch.returns))

    def inner_step(self, params, inner_lr, batch: Batch, first_order: Optional[bool] = None):
        """One LVC policy-gradient step ``core.inner_sgd_step`` on the gradient of the inner
        loss (``inner_lr``: params-shaped step sizes, e.g. ``state.inner_lr``; only the leaves
        ``adapt_filter`` selects move). Returns ``(new_params, (inner_loss, value_loss))``."""
        first_order = self.config.first_order if first_order is None else first_order
        (loss, vloss), grads = jax.value_and_grad(self.inner_objective, has_aux=True)(params, batch)
        if first_order:
            grads = jax.lax.stop_gradient(grads)
        return core.inner_sgd_step(params, grads, inner_lr, self._mask_for(params)), (loss, vloss)

    def collect_task(self, params, inner_lr, task, key, num_inner_steps, support_size, query_size,
                     deterministic=False):
        """Run the inner loop on one task, collecting fresh data at every step.

        ``support_size``/``query_size`` are ``(num_envs, num_steps)`` pairs. Returns
        ``(adapted_params, support, query)``: ``support`` stacks the ``num_inner_steps``
        support Batches (sampled with theta_0 .. theta_{K-1}) on a leading axis, ``query`` is
        the Batch sampled with the adapted theta_K. No gradient flows (the data are constants).
        """
        params = jax.lax.stop_gradient(params)
        inner_lr = jax.lax.stop_gradient(inner_lr)
        keys = jax.random.split(key, num_inner_steps + 1)

        def step(theta, k):
            batch = self.collect(theta, k, task, *support_size, deterministic)
            theta, _ = self.inner_step(theta, inner_lr, batch, first_order=True)
            return theta, batch

        theta, support = jax.lax.scan(step, params, keys[:-1])
        query = self.collect(theta, keys[-1], task, *query_size, deterministic)
        return theta, support, query

    def task_outer_loss(self, params, inner_lr, support: Batch, query: Batch):
        """Outer loss of one task from stored data (support stacked on a leading K axis)."""
        c = self.config

        def step(theta, batch):
            theta, (_, vloss) = self.inner_step(theta, inner_lr, batch)
            return theta, vloss

        if c.remat_inner:
            step = jax.checkpoint(step)
        theta, support_vlosses = jax.lax.scan(step, params, support)
        log_probs, values, entropy = self._outputs(theta, query)
        ratio = jnp.exp(log_probs - query.old_log_probs)
        clipped = jnp.clip(ratio, 1.0 - c.clip_eps, 1.0 + c.clip_eps)
        pg = -jnp.mean(jnp.minimum(ratio * query.advantages, clipped * query.advantages))
        vloss = jnp.mean(jnp.square(values - query.returns))
        if c.num_inner_steps > 0:
            vloss = 0.5 * (vloss + jnp.mean(support_vlosses))
        ent = jnp.mean(entropy)
        value_coef = c.value_coef if c.baseline == "value" else 0.0  # the head is unused then
        loss = pg + value_coef * vloss - c.entropy_coef * ent
        return loss, {"policy_loss": pg, "value_loss": vloss, "entropy": ent}

    def outer_loss(self, params, inner_lr, data):
        """Mean over tasks of ``task_outer_loss``; ``data`` = (support, query), task-leading."""
        support, query = data
        losses, metrics = jax.vmap(self.task_outer_loss, in_axes=(None, None, 0, 0))(
            params, inner_lr, support, query)
        return jnp.mean(losses), jax.tree.map(jnp.mean, metrics)

    # ------------------------------------------------------------ meta-update
    def _check_tasks(self, tasks):
        leaves = jax.tree.leaves(tasks)
        if not leaves or jnp.ndim(leaves[0]) < 1:
            raise ValueError("tasks must be an EnvParams batch with a leading task axis "
                             "(e.g. envs.CartPoleTasks().sample(key, num_tasks)).")
        if jnp.shape(leaves[0])[0] < 1:
            raise ValueError("tasks must hold at least one task, got a task axis of size 0")
        return jnp.shape(leaves[0])[0]

    def _meta_update(self, state: core.MetaState, tasks, key):
        c = self.config
        n = self._check_tasks(tasks)
        mesh = self.mesh
        tasks, keys = sharding.constrain((tasks, jax.random.split(key, n)), mesh)  # one key per task
        _, support, query = jax.vmap(
            lambda t, k: self.collect_task(state.params, state.inner_lr, t, k, c.num_inner_steps,
                                           (c.support_envs, c.support_steps), (c.query_envs, c.query_steps))
        )(tasks, keys)
        support, query = sharding.constrain((support, query), mesh)

        def epoch(st, _):
            return core.meta_update(st, (support, query), loss=self.outer_loss, optimizer=self.optimizer,
                                    learn_inner_lr=c.learn_inner_lr)

        step = state.step
        state, metrics = jax.lax.scan(epoch, state, None, length=c.num_outer_epochs)
        state = state.replace(step=step + 1)  # one meta-update, however many Adam steps it took
        metrics = jax.tree.map(lambda m: m[0], metrics)  # the first epoch is on-policy
        returns = jnp.concatenate([support.episode_return, query.episode_return[:, None]], 1)
        metrics.update(pre_return=jnp.mean(returns[:, 0]), post_return=jnp.mean(returns[:, -1]),
                       return_by_step=jnp.mean(returns, axis=0))
        if c.learn_inner_lr:
            flat = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(state.inner_lr)])
            metrics["inner_lr_mean"] = jnp.mean(flat)
        return sharding.constrain_replicated((state, metrics), mesh)

    # ------------------------------------------------------------ evaluation
    def _adapt_and_evaluate(self, state: core.MetaState, tasks, key, num_inner_steps: int,
                            num_envs: int, num_steps: int = 500, deterministic: bool = False):
        """Adapt to each task and measure the return after 0..num_inner_steps inner steps.

        Each inner step samples ``num_envs x num_steps`` support steps with the current params;
        the rollout of the params after ``k`` steps is both the measurement for ``k`` and the
        support data of step ``k+1`` (so use ``deterministic=False``: the inner policy
        gradient needs sampled actions; evaluate the returned params separately, e.g. with
        ``envs.rollout_tasks(..., params_per_task=True, deterministic=True)``, if you want
        greedy returns).

        Returns a dict: ``params`` the adapted params (leading task axis ``N``);
        ``segment_return`` ``(N, num_inner_steps + 1)`` (finite lower bound, see
        ``segment_return``); ``completed_return`` ``(N, num_inner_steps + 1)`` (completed
        episodes only, NaN if none). With ``num_steps`` >= the episode limit (500 for
        CartPole-v1) every env completes at least one episode.
        """
        n = self._check_tasks(tasks)
        size = (num_envs, num_steps)
        tasks, keys = sharding.constrain((tasks, jax.random.split(key, n)), self.mesh)
        adapted, support, query = jax.vmap(
            lambda t, k: self.collect_task(state.params, state.inner_lr, t, k, num_inner_steps, size, size,
                                           deterministic))(tasks, keys)
        cat = lambda a, b: jnp.concatenate([a, b[:, None]], 1)
        return {"params": adapted,
                "segment_return": cat(support.episode_return, query.episode_return),
                "completed_return": cat(support.completed_return, query.completed_return)}

    def _adapt_and_evaluate_upto(self, state: core.MetaState, tasks, key, num_inner_steps,
                                 max_inner_steps: int, num_envs: int, num_steps: int = 500,
                                 deterministic: bool = False):
        """``_adapt_and_evaluate`` with ``num_inner_steps`` as data (an int32 scalar in
        ``[0, max_inner_steps]``): one ``lax.scan`` over ``max_inner_steps + 1`` slots; slot ``i``
        rolls out ``theta_i`` with key ``i`` of the task's ``split(k, max_inner_steps + 1)`` (the
        key ``collect_task`` gives it: with ``jax_threefry_partitionable``, JAX's default and
        checked by ``adapt_and_evaluate``, ``split``'s first keys do not depend on the count) and takes
        the inner step, which is kept for ``i < num_inner_steps`` only (a select, not a
        ``lax.cond``: the slot is then the same computation as ``collect_task``'s step, so the
        results are the ``num_inner_steps`` program's, up to the last bits in which two
        separately compiled programs may round apart). Every slot runs, so the program costs ``max_inner_steps`` steps whatever ``num_inner_steps`` is.
        Returns the dict
        of ``_adapt_and_evaluate`` with ``(N, max_inner_steps + 1)`` returns, NaN after column
        ``num_inner_steps``, and the params after ``num_inner_steps`` steps.
        """
        n = self._check_tasks(tasks)
        size = (num_envs, num_steps)
        params = jax.lax.stop_gradient(state.params)
        inner_lr = jax.lax.stop_gradient(state.inner_lr)
        tasks, keys = sharding.constrain((tasks, jax.random.split(key, n)), self.mesh)
        nan = jnp.full((), jnp.nan, jnp.float32)

        def one_task(task, k):
            def slot(theta, xs):
                i, k_i = xs
                batch = self.collect(theta, k_i, task, *size, deterministic)
                stepped, _ = self.inner_step(theta, inner_lr, batch, first_order=True)
                theta = jax.tree.map(lambda a, b: jnp.where(i < num_inner_steps, a, b), stepped, theta)
                kept = lambda r: jnp.where(i <= num_inner_steps, r, nan)  # noqa: E731
                return theta, (kept(batch.episode_return), kept(batch.completed_return))

            slots = (jnp.arange(max_inner_steps + 1), jax.random.split(k, max_inner_steps + 1))
            return jax.lax.scan(slot, params, slots)

        adapted, (segment, completed) = jax.vmap(one_task)(tasks, keys)
        return {"params": adapted, "segment_return": segment, "completed_return": completed}
