"""Weights adapted DURING an episode: every ``chunk_steps`` steps, from that episode's data so far.

``evaluate_within_episode`` runs ONE task in ``num_envs`` parallel environments for a window of
``num_steps`` steps. Each environment's episode has its own copy of the weights, starting from
``params``: after every chunk of ``chunk_steps`` steps in which that env's FIRST episode is still
running, up to ``adapt_steps_per_chunk`` guarded steps (``adapt.core.adapt_steps``: a step whose
loss, gradient or params are not finite, or whose loss exceeds ``divergence_threshold``, is
rolled back) are taken on the steps of the episode so far, and the episode goes on with the new
weights and the recurrent carry it has (memory and weights both persist within the episode).
Nothing is carried to the next episode; the measurement is each env's first episode (its
return, or its partial return if it runs to the window's end).

Everything is one ``lax.scan`` over the chunks (each a ``lax.scan`` over its steps) carrying
the environments' states, the policy carry, the weights and optimiser states and a
``(num_envs, num_steps)`` record of the window, so it jits and vmaps over tasks; shapes are
static, so the data so far are a fixed-size window with a mask:

  The episode so far, after ``n`` steps, is an ``envs.Trajectory`` of ONE row ``(1, T)``,
  ``T = num_steps``, RIGHT-aligned: its steps ``0 .. n - 1`` sit at ``T - n .. T - 1`` and the
  ``T - n`` steps before them are padding (zero observations, actions and rewards). ``resets``
  is True at ``T - n`` only (a fresh carry at the episode's first step), ``dones``,
  ``terminated``, ``truncated`` and ``episode_returns`` are all False / 0 (the episode is
  running), ``log_probs`` and ``values`` are those the policy acted with (under the weights of
  the time), ``last_obs`` / ``last_value`` / ``final_carry`` are the observation after the last
  step, its value under the current weights and the carry. The mask ``valid`` ``(1, T)`` is True
  on the ``n`` data steps. Right-aligned, the window's last step is the episode's latest one, so
  a loss that cuts or bootstraps returns at the window's end does so at the current step.

``make_batch(traj, valid) -> batch`` turns it into what ``objective(params, batch)`` reads
(computed once per update, e.g. advantages; default: the pair ``(traj, valid)``).

Key schedule (that of ``envs.rollout``, so a window whose updates are all rolled back, or with
``chunk_steps == num_steps``, is exactly ``envs.rollout``'s with the same key)::

    key_reset, key_steps = jax.random.split(key)
    obs_0, state_0 = vmap(env.reset)(jax.random.split(key_reset, num_envs), task)
    step_keys = jax.random.split(key_steps, num_steps)
    step t: key_policy, key_env = jax.random.split(step_keys[t])
            actions = (the action distribution of every env under its own weights).sample(key_policy)
            vmap(env.step)(jax.random.split(key_env, num_envs), states, actions, task)
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import chex
import flax.struct
import jax
import jax.numpy as jnp
import optax

from adapt.core import AdaptInfo, adapt_steps
from ssm_jax.validation import check_bool, check_float, check_int

PyTree = Any


@flax.struct.dataclass
class WithinEpisodeResult:
    """What ``evaluate_within_episode`` measured (``E`` envs, ``T`` steps, ``C`` chunks).

    returns: ``(E,)`` each env's first-episode return (``envs.first_episode_return``).
    traj: the window's ``envs.Trajectory`` ``(E, T)`` (log-probs and values under the weights
      each step acted with; ``last_value`` under the final weights).
    attempted: ``(C - 1, E)`` bool, an update was tried after chunk ``c`` (the env's first
      episode was still running; none after the last chunk).
    infos: ``adapt.AdaptInfo`` with leading ``(C - 1, E)`` axes (zeros where not attempted).
    params: every env's weights at the window's end (leading ``E`` axis).
    """

    returns: chex.Array
    traj: Any
    attempted: chex.Array
    infos: AdaptInfo
    params: PyTree


def _default_batch(traj, valid):
    return traj, valid


def _rows(mask, new, old):
    """Per-row ``where`` for pytrees whose leaves lead with the rows of ``mask`` ``(E,)``."""
    return jax.tree.map(lambda a, b: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b),
                        new, old)


def evaluate_within_episode(
    key: chex.PRNGKey,
    policy,
    params: PyTree,
    task,
    *,
    objective: Callable[[PyTree, Any], chex.Array],
    optimizer: optax.GradientTransformation,
    num_envs: int,
    num_steps: int,
    chunk_steps: int,
    make_batch: Optional[Callable] = None,
    adapt_steps_per_chunk: int = 1,
    divergence_threshold: float = math.inf,
    monotone: bool = False,
    env=None,
    obs_mode: str = "full",
) -> WithinEpisodeResult:
    """Evaluate ``policy`` on ONE task, each env's episode adapting its weights as it runs.

    See the module docstring for the rule, the episode-so-far layout and the key schedule.
    ``policy`` (the ``ssm_jax`` policy contract, categorical or Gaussian actions), ``objective``,
    ``optimizer``, ``make_batch``, the counts, ``env`` and ``obs_mode`` are static; call it
    inside ``jit`` and ``vmap`` it over tasks and keys. ``chunk_steps`` must divide
    ``num_steps`` (ValueError otherwise, before anything is traced); updates happen after
    chunks ``0 .. num_steps / chunk_steps - 2``.
    """
    import envs  # noqa: PLC0415 - `adapt` needs `envs` only for RL evaluation
    from envs.observation import check_obs_mode, observe  # noqa: PLC0415
    from envs.rollout import Trajectory, recorded_info  # noqa: PLC0415

    num_envs = check_int("num_envs", num_envs)
    num_steps = check_int("num_steps", num_steps)
    chunk_steps = check_int("chunk_steps", chunk_steps)
    if num_steps % chunk_steps:
        raise ValueError(f"chunk_steps must divide num_steps ({num_steps}), got {chunk_steps}")
    adapt_steps_per_chunk = check_int("adapt_steps_per_chunk", adapt_steps_per_chunk, 0)
    divergence_threshold = check_float("divergence_threshold", divergence_threshold, allow_inf=True)
    monotone = check_bool("monotone", monotone)
    env = envs.make("CartPole-v1")[0] if env is None else env
    check_obs_mode(obs_mode, env)
    make_batch = _default_batch if make_batch is None else make_batch
    E, T, K = num_envs, num_steps, chunk_steps
    num_chunks = T // K

    def act(weights, obs, carry, reset):
        """Every env's step under its own weights: ``(out, carry)`` with leading ``E``."""
        def one(p, o, c, r):
            out, c = policy.apply(p, o[None], jax.tree.map(lambda x: x[None], c), r[None], method="step")
            return jax.tree.map(lambda x: x[0], (out, c))
        return jax.vmap(one)(weights, obs, carry, reset)

    vstep = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    key_reset, key_steps = jax.random.split(key)
    full_obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key_reset, E), task)
    obs = observe(full_obs, obs_mode, env).astype(jnp.float32)
    weights = jax.tree.map(lambda x: jnp.broadcast_to(x, (E,) + jnp.shape(x)), params)
    opt_states = jax.vmap(optimizer.init)(weights)

    def step(weights, state, key_t):
        env_state, obs, reset, carry, running = state
        key_policy, key_env = jax.random.split(key_t)
        out, carry = act(weights, obs, carry, reset)
        action = jax.lax.stop_gradient(out.dist.sample(key_policy))
        full_next, env_state, reward, terminated, truncated, info = vstep(
            jax.random.split(key_env, E), env_state, action, task)
        reward = reward.astype(jnp.float32)
        terminated, truncated = terminated.astype(bool), truncated.astype(bool)
        done = terminated | truncated
        running = running + reward
        record = {"obs": obs, "actions": action, "rewards": reward, "dones": done,
                  "terminated": terminated, "truncated": truncated,
                  "log_probs": out.dist.log_prob(action).astype(jnp.float32),
                  "values": out.value.astype(jnp.float32), "resets": reset,
                  "episode_returns": jnp.where(done, running, 0.0), "info": recorded_info(info)}
        running = jnp.where(done, 0.0, running)
        next_obs = observe(full_next, obs_mode, env).astype(jnp.float32)
        return (env_state, next_obs, done, carry, running), record

    zeros = jnp.zeros((E,), jnp.float32)
    example = jax.eval_shape(lambda: step(weights, (env_state, obs, jnp.ones((E,), bool),
                                                    policy.initialize_carry(E), zeros), key)[1])
    window = jax.tree.map(lambda s: jnp.zeros((E, T) + s.shape[1:], s.dtype), example)
    t_index = jnp.arange(T)

    def episode_so_far(window, n, obs, reset, carry, weights):
        """The right-aligned ``(E, T)`` episodes so far after ``n`` steps and their mask."""
        shift = T - n
        valid = jnp.broadcast_to(t_index >= shift, (E, T))
        view = jax.tree.map(lambda x: jnp.roll(x, shift, axis=1), window)
        never = jnp.zeros((E, T), bool)
        last_out, _ = act(weights, obs, carry, reset)
        traj = Trajectory(
            obs=view["obs"], actions=view["actions"], rewards=jnp.where(valid, view["rewards"], 0.0),
            dones=never, terminated=never, truncated=never, log_probs=view["log_probs"],
            values=view["values"], resets=jnp.broadcast_to(t_index == shift, (E, T)),
            episode_returns=jnp.zeros((E, T), jnp.float32), last_obs=obs, last_reset=reset,
            last_value=last_out.value.astype(jnp.float32), final_carry=carry)
        return traj, valid

    def update_one(p, s, traj, valid):
        one_row = jax.tree.map(lambda x: x[None], (traj, valid))
        batch = make_batch(*one_row)
        return adapt_steps(p, s, batch, objective=objective, optimizer=optimizer,
                           num_steps=adapt_steps_per_chunk, divergence_threshold=divergence_threshold,
                           monotone=monotone)

    def chunk(carry, xs):
        c, keys = xs
        env_state, obs, reset, pcarry, running, weights, opt_states, window, alive = carry
        (env_state, obs, reset, pcarry, running), records = jax.lax.scan(
            lambda st, k: step(weights, st, k), (env_state, obs, reset, pcarry, running), keys)
        records = jax.tree.map(lambda y: jnp.swapaxes(y, 0, 1), records)  # (E, K, ...)
        window = jax.tree.map(lambda w, y: jax.lax.dynamic_update_slice_in_dim(w, y, c * K, axis=1),
                              window, records)
        alive = alive & ~jnp.any(records["dones"], axis=1)
        traj, valid = episode_so_far(window, (c + 1) * K, obs, reset, pcarry, weights)
        new_weights, new_opt, info = jax.vmap(update_one)(weights, opt_states, traj, valid)
        attempt = alive & (c < num_chunks - 1)
        weights = _rows(attempt, new_weights, weights)
        opt_states = _rows(attempt, new_opt, opt_states)
        info = jax.tree.map(lambda x: jnp.where(attempt, x, jnp.zeros_like(x)), info)
        return (env_state, obs, reset, pcarry, running, weights, opt_states, window, alive), (attempt, info)

    init = (env_state, obs, jnp.ones((E,), bool), policy.initialize_carry(E), zeros, weights,
            opt_states, window, jnp.ones((E,), bool))
    step_keys = jax.random.split(key_steps, T).reshape((num_chunks, K))
    (_, last_obs, last_reset, pcarry, _, weights, _, window, _), (attempted, infos) = jax.lax.scan(
        chunk, init, (jnp.arange(num_chunks), step_keys))
    last_out, _ = act(weights, last_obs, pcarry, last_reset)
    traj = Trajectory(**window, last_obs=last_obs, last_reset=last_reset,
                      last_value=last_out.value.astype(jnp.float32), final_carry=pcarry)
    return WithinEpisodeResult(
        returns=envs.first_episode_return(traj), traj=traj, attempted=attempted[:-1],
        infos=jax.tree.map(lambda x: x[:-1], infos), params=weights)
