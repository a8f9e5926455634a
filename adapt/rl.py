"""Test-time adaptation of a policy from its own experience, inside jitted RL evaluation.

Losses are pure functions of ``(params, traj)`` where ``traj`` is an
``envs.Trajectory`` (or any object with the same attributes) of ONE task:
``E`` rows (parallel environments) by ``T`` time steps, ``D`` = obs_dim:

  traj.obs         (E, T, D)   observation seen at step t
  traj.actions     (E, T) int (discrete) or (E, T, A) float (continuous)
  traj.rewards     (E, T)
  traj.dones       (E, T) bool  the episode ended at step t
  traj.truncated   (E, T) bool  optional: it ended by the time limit (bootstrapped)
  traj.resets      (E, T) bool  obs[:, t] starts an episode (policy carry reset)
  traj.last_obs    (E, D)       observation after the last step
  traj.last_value  (E,)         value of last_obs (bootstrap)

So they plug into ``adapt.core.adapt_steps`` as the ``objective`` with the
trajectory as the ``batch``, and ``evaluate_with_adaptation`` runs the whole
loop "act for a round of steps, adapt on that experience, act again" as one
``lax.scan`` that jits and vmaps over tasks.

Two losses:
  * ``policy_gradient_loss``: REINFORCE with reward-to-go and the policy's own
    value head as a baseline (actor-critic, on-policy: the trajectory must come
    from the params being adapted, which is the case between rounds).
  * ``next_observation_loss``: self-supervised, mean squared error of a
    sequence model predicting ``obs[t+1]`` (or its change) from ``obs[t]`` and
    the action, skipping the steps where an episode ended (the following
    observation belongs to the next episode). It adapts whatever params the
    predictor reads; to move the policy, let the predictor share params with it
    (e.g. adapt a pytree ``{'policy': ..., 'model': ...}`` and map it to the
    policy's params with ``policy_params_fn``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from adapt import buffer as rb
from adapt.core import adapt_steps, tree_all_finite, tree_select
from adapt.losses import hybrid_objective, predictions_of
from maml import baseline as baseline_fit
from maml import onpolicy
from maml.onpolicy import discounted_returns  # re-exported as adapt.discounted_returns
from ssm_jax.validation import check_float, check_int, check_prefix_keys

PyTree = Any


BASELINES = ("value", "linear", "none")


def policy_gradient_loss(params: PyTree, traj, *, policy, gamma: float = 0.99,
                         baseline: str = "value", normalize_advantages: bool = True,
                         value_coef: float = 0.5, entropy_coef: float = 0.0,
                         bootstrap: bool = True, resets: Optional[chex.Array] = None) -> chex.Array:
    """Actor-critic policy-gradient loss (scalar) of ``policy`` on its own trajectory.

    The policy's sequence call recomputes the action distribution and values
    from ``traj.obs`` (carry reset where ``resets``, default ``traj.resets``;
    for rollouts that kept the carry across episodes pass
    ``maml.onpolicy.policy_resets(traj.resets, True)``). Advantages ``A = G - b``,
    standardised over the batch (``maml.onpolicy.normalize_advantages``) if
    ``normalize_advantages``, with ``baseline``:

      * ``"value"``: ``b`` is the value head (without gradient); ``G`` from
        ``discounted_returns``, bootstrapped with ``traj.last_value`` at the
        window end and, at time-limit truncations (``traj.truncated``, if the
        trajectory has it), with the value head's estimate of the last state,
        if ``bootstrap``, as in ``maml.rl``;
      * ``"linear"``: ``b`` is a linear feature baseline fitted to this
        trajectory's own returns (``maml.baseline``; ``G`` cut at every episode
        end and at the window end, no bootstrap), right for any task without a
        trained value head;
      * ``"none"``: ``b = 0`` (``G`` as for ``"value"``).

    Loss ``-mean(log pi(a|.) A) + value_coef mean((V - G)^2) - entropy_coef mean(H)``,
    with ``G`` the returns of the chosen baseline: under ``"linear"`` a value term would fit
    the head to cut (not bootstrapped) returns, so pass ``value_coef=0`` there unless that is
    what is wanted (test-time adaptation passes 0 for every baseline).
    """
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    resets = traj.resets if resets is None else resets
    out, _ = policy.apply(params, traj.obs, resets=resets)
    log_probs = out.dist.log_prob(traj.actions)
    values = out.value
    boot = jax.lax.stop_gradient(traj.last_value) if bootstrap else jnp.zeros_like(traj.last_value)
    truncated = getattr(traj, "truncated", None) if bootstrap else None
    trunc_values = None if truncated is None else jax.lax.stop_gradient(values)
    if baseline == "linear":
        returns = discounted_returns(traj.rewards, traj.dones, jnp.zeros_like(traj.last_value), gamma)
        b = baseline_fit.fit_linear_baseline(baseline_fit.features(traj.obs, traj.resets), returns)
    else:
        returns = discounted_returns(traj.rewards, traj.dones, boot, gamma, truncated, trunc_values)
        b = values if baseline == "value" else 0.0
    returns = jax.lax.stop_gradient(returns)
    adv = returns - jax.lax.stop_gradient(b)
    if normalize_advantages:
        adv = onpolicy.normalize_advantages(adv)
    loss = -jnp.mean(log_probs * adv)
    if value_coef:
        loss = loss + value_coef * jnp.mean(jnp.square(values - returns))
    if entropy_coef:
        loss = loss - entropy_coef * jnp.mean(out.dist.entropy())
    return loss


def next_observation_inputs(traj, num_actions: Optional[int]):
    """Predictor inputs ``(E, T, D + A)``, targets ``(E, T, D)`` (the next
    observation) and the valid mask ``(E, T)`` (False where the episode ended).

    ``num_actions``: discrete actions are one-hot encoded with this many
    classes; None means continuous actions ``(E, T, A)`` used as they are.
    """
    obs = traj.obs
    if num_actions is None:
        actions = traj.actions.astype(obs.dtype)
    else:
        actions = jax.nn.one_hot(traj.actions, num_actions, dtype=obs.dtype)
    inputs = jnp.concatenate([obs, actions], axis=-1)
    next_obs = jnp.concatenate([obs[:, 1:], traj.last_obs[:, None]], axis=1)
    return inputs, next_obs, ~traj.dones


def next_observation_loss(params: PyTree, traj, *, predict_fn: Callable, num_actions: Optional[int],
                          predict_delta: bool = True,
                          resets: Optional[chex.Array] = None) -> chex.Array:
    """Self-supervised next-observation prediction loss (scalar).

    ``predict_fn(params, inputs, resets)`` maps inputs ``(E, T, D + A)`` (see
    ``next_observation_inputs``) to predictions ``(E, T, D)`` (or a tuple
    ``(predictions, carry)``, like an ``ssm_jax.SSM`` with ``input_dim = D + A``
    and ``output_dim = D``). The target is ``obs[t+1] - obs[t]`` if
    ``predict_delta`` else ``obs[t+1]``; the loss is the mean squared error over
    the valid steps (0 if none is valid).
    """
    inputs, next_obs, valid = next_observation_inputs(traj, num_actions)
    target = next_obs - traj.obs if predict_delta else next_obs
    preds = predictions_of(predict_fn(params, inputs, traj.resets if resets is None else resets))
    chex.assert_equal_shape([preds, target])
    sq = jnp.sum(jnp.square(preds - jax.lax.stop_gradient(target)), axis=-1)
    count = jnp.sum(valid)
    return jnp.sum(jnp.where(valid, sq, 0.0)) / (jnp.maximum(count, 1) * target.shape[-1])


def evaluate_with_adaptation(
    key: chex.PRNGKey,
    policy,
    params: PyTree,
    task,
    *,
    objective: Callable[[PyTree, Any], chex.Array],
    optimizer: optax.GradientTransformation,
    num_rounds: int,
    steps_per_round: int,
    num_envs: int,
    adapt_steps_per_round: int = 1,
    policy_params_fn: Callable[[PyTree], PyTree] = lambda p: p,
    divergence_threshold: float = math.inf,
    monotone: bool = False,
    replay_capacity: int = 0,
    replay_ratio: float = 0.5,
    rollout_fn: Optional[Callable] = None,
    num_active_rounds=None,
    measure: Optional[Callable] = None,
    **rollout_kwargs,
):
    """Evaluate ``policy`` on ONE task while it adapts between rounds.

    Round ``r``: roll out ``num_envs`` environments for ``steps_per_round``
    steps with ``policy_params_fn(params_r)`` (``envs.rollout``; every round
    starts fresh episodes), record the mean over envs of the return of each
    env's FIRST episode of the round (``envs.first_episode_return``), then take
    up to ``adapt_steps_per_round`` guarded steps (``adapt_steps``) of
    ``objective(params, traj)`` on that round's trajectory. With
    ``replay_capacity > 0`` (hybrid) the trajectory rows of earlier rounds are
    kept in a ring buffer and ``num_envs`` of them are replayed with weight
    ``replay_ratio`` (use an off-policy-safe objective such as
    ``next_observation_loss`` then: replayed rows come from older params).

    The reported return is always finite and counts every env once (no bias
    toward short episodes). An episode still running at the end of the round
    counts its partial return (a lower bound): use ``steps_per_round`` >= the
    task's episode limit (``task.max_steps_in_episode``, 500 for CartPole-v1)
    for exact episode returns.

    Everything is one ``lax.scan`` over rounds: call it inside ``jit``, and
    ``vmap`` it over tasks/keys. ``policy``, ``objective``, ``optimizer``,
    ``policy_params_fn``, the counts and ``rollout_kwargs`` (e.g. ``env``,
    ``obs_mode``, ``deterministic``) are static.

    ``num_active_rounds`` (None, or an int or int32 scalar in
    ``[0, num_rounds]``, which may be traced): only the first
    ``num_active_rounds`` rounds count. The later ones run but are discarded
    (a select, so they cost as much): their returns are NaN, their infos zero,
    and they leave the params, optimiser state and replay buffer unchanged. A
    program compiled for ``num_rounds`` then serves every count up to it with
    the results of a ``num_rounds=num_active_rounds`` call (the round keys are
    ``split(key, num_rounds)``, whose first keys do not depend on the count
    with ``jax_threefry_partitionable``, JAX's default: ValueError without
    it). A concrete count outside ``[0, num_rounds]`` is a ValueError.

    ``measure`` (a Python callable; None: the mean first-episode return above)
    maps a round's trajectory (``envs.Trajectory`` ``(num_envs,
    steps_per_round)``) to what the round reports: a pytree of floating-point
    arrays (a skipped round's are NaN), stacked over rounds.

    Returns ``(final_params, returns, infos)``: ``returns`` ``(num_rounds,)``
    is each round's mean first-episode return (see above; ``measure``'s
    pytree with a leading ``(num_rounds,)`` axis if given), measured BEFORE
    that round's adaptation; ``infos`` is an ``AdaptInfo`` with a leading
    ``(num_rounds,)`` axis.
    """
    import envs  # local import: `adapt` does not need `envs` unless this is used

    rollout_fn = envs.rollout if rollout_fn is None else rollout_fn
    num_rounds = check_int("num_rounds", num_rounds)
    steps_per_round = check_int("steps_per_round", steps_per_round)
    num_envs = check_int("num_envs", num_envs)
    replay_ratio = check_float("replay_ratio", replay_ratio, minimum=0.0, maximum=1.0, strict_max=True)

    def run(p, k):
        return rollout_fn(k, policy, policy_params_fn(p), task, num_envs=num_envs,
                          num_steps=steps_per_round, **rollout_kwargs)

    if num_active_rounds is not None:
        check_prefix_keys("num_active_rounds")
        if isinstance(num_active_rounds, (int, np.integer)):
            num_active_rounds = check_int("num_active_rounds", num_active_rounds, minimum=0)
            if num_active_rounds > num_rounds:
                raise ValueError(f"num_active_rounds must be <= num_rounds ({num_rounds}), got {num_active_rounds}")
    use_replay = replay_capacity > 0 and replay_ratio > 0.0
    if use_replay:
        example = jax.eval_shape(run, params, key)
        buffer = rb.buffer_init(jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), example),
                                replay_capacity)
        step_objective = hybrid_objective(objective, replay_ratio)
    else:
        buffer = None
        step_objective = objective

    if measure is None:
        def measure(traj):
            return jnp.mean(envs.first_episode_return(traj))

    def one_round(carry, k):
        p, opt_state, buf = carry
        k_roll, k_replay = jax.random.split(k)
        traj = run(p, k_roll)
        ret = measure(traj)
        if use_replay:
            replay, valid = rb.buffer_sample(buf, k_replay, num_envs)
            batch = (traj, replay, valid)
        else:
            batch = traj
        p, opt_state, info = adapt_steps(p, opt_state, batch, objective=step_objective,
                                         optimizer=optimizer, num_steps=adapt_steps_per_round,
                                         divergence_threshold=divergence_threshold, monotone=monotone)
        if use_replay:
            buf = tree_select(tree_all_finite(traj), rb.buffer_add(buf, traj), buf)
        return (p, opt_state, buf), (ret, info)

    keys = jax.random.split(key, num_rounds)
    init = (params, optimizer.init(params), buffer)
    if num_active_rounds is None:
        (params, _, _), (returns, infos) = jax.lax.scan(one_round, init, keys)
        return params, returns, infos

    def counted_round(carry, xs):
        r, k = xs
        active = r < num_active_rounds
        new, (ret, info) = one_round(carry, k)
        skipped = (jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), ret), jax.tree.map(jnp.zeros_like, info))
        return tree_select(active, new, carry), tree_select(active, (ret, info), skipped)

    (params, _, _), (returns, infos) = jax.lax.scan(counted_round, init, (jnp.arange(num_rounds), keys))
    return params, returns, infos

