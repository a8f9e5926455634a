"""On-policy RL maths shared by MAML-RL (``maml.rl``), PPO and RL^2 (``maml.ppo``) and test-time
adaptation (``adapt.rl``): returns-to-go, GAE, advantage normalisation, segment returns and the
resets that make a policy's sequence call reproduce its rollout.

Shapes: one rollout window of ``E`` rows (parallel environments, or tasks x environments
flattened) by ``T`` time steps; arrays are ``(E, T)`` unless stated. Every function is pure and
jit/vmap/grad friendly.

Episode ends come in two kinds, as ``envs.Trajectory`` records them: a *termination*
(``terminated``) is a true end, its next value is 0; a *truncation* (``truncated``, the time
limit) is not, so it is bootstrapped with the value of the episode's last state (the true next
state is lost to the auto-reset). The window's own end is bootstrapped with the value of the
observation after the last step (``last_value``), or with 0 to cut returns there.
"""

from __future__ import annotations

from typing import Optional

import chex
import jax
import jax.numpy as jnp

#: The epsilon added to the standard deviation by ``normalize_advantages``.
ADV_EPS = 1e-8


def discounted_returns(rewards: chex.Array, dones: chex.Array, bootstrap: chex.Array,
                       gamma: float, truncated: Optional[chex.Array] = None,
                       truncation_values: Optional[chex.Array] = None) -> chex.Array:
    """Reward-to-go within episodes, ``(E, T)`` float32.

    ``G[:, t] = rewards[:, t] + gamma * next[:, t]`` with ``next = G[:, t + 1]``
    (``G[:, T] = bootstrap``, ``(E,)``, e.g. the value of ``last_obs``; zeros to cut the
    returns at the window end), 0 after a done step, except after a time-limit truncation
    (``truncated`` ``(E, T)`` bool, given with ``truncation_values`` ``(E, T)``) where it is
    ``truncation_values[:, t]``: the episode did not really end, so it is bootstrapped with the
    value estimate available (the value of the last state), as ``gae`` does. Without
    ``truncated`` every done step ends the sum. ``ValueError`` if only one of ``truncated`` and
    ``truncation_values`` is given; shape mismatches fail ``chex`` assertions.
    """
    chex.assert_rank(rewards, 2)
    chex.assert_equal_shape([rewards, dones])
    chex.assert_shape(bootstrap, rewards.shape[:1])
    if (truncated is None) != (truncation_values is None):
        raise ValueError("discounted_returns: give both truncated and truncation_values, or neither.")
    if truncated is None:
        truncated = jnp.zeros(rewards.shape, bool)
        truncation_values = jnp.zeros(rewards.shape, jnp.float32)
    chex.assert_equal_shape([rewards, truncated, truncation_values])

    def back(g_next, xs):
        r, d, tr, v = xs
        g = r + gamma * jnp.where(tr, v, jnp.where(d, 0.0, g_next))
        return g, g

    _, g = jax.lax.scan(back, bootstrap.astype(jnp.float32),
                        (rewards.T.astype(jnp.float32), dones.T, truncated.T,
                         truncation_values.T.astype(jnp.float32)), reverse=True)
    return g.T


def gae(rewards, values, terminated, truncated, last_value, gamma, lam):
    """Generalised advantage estimates and value targets ``(advantages, advantages + values)``,
    both ``(E, T)``.

    ``rewards``, ``values`` ``(E, T)`` (values under the params that sampled the data);
    ``terminated``, ``truncated`` ``(E, T)`` bool; ``last_value`` ``(E,)``. The next value of
    step ``t`` is 0 after a termination, ``values[:, t]`` (the same, last state) after a
    truncation, ``last_value`` after the window's last step and ``values[:, t + 1]`` otherwise;
    ``delta_t = r_t + gamma * next_t - v_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``,
    with the trace cut at every episode end. With ``lam = 1`` the targets are the
    ``discounted_returns`` bootstrapped the same way.
    """
    next_values = jnp.concatenate([values[:, 1:], last_value[:, None]], axis=1)
    next_values = jnp.where(terminated, 0.0, jnp.where(truncated, values, next_values))
    deltas = rewards + gamma * next_values - values
    cont = (~(terminated | truncated)).astype(values.dtype)

    def body(acc, x):
        d, c = x
        acc = d + gamma * lam * c * acc
        return acc, acc

    _, adv = jax.lax.scan(body, jnp.zeros_like(last_value), (deltas.T, cont.T), reverse=True)
    adv = adv.T
    return adv, adv + values


def normalize_advantages(adv: chex.Array, eps: float = ADV_EPS,
                         mask: Optional[chex.Array] = None) -> chex.Array:
    """``(adv - mean(adv)) / (std(adv) + eps)`` over all elements of ``adv`` (any shape, the
    shape is kept): mean 0 and standard deviation ``std / (std + eps)`` (1 up to ``eps``); a
    constant input maps to zeros. ``mask`` (bool, ``adv``'s shape): the mean and deviation are
    those of the True elements (every element is shifted and scaled by them)."""
    if mask is None:
        return (adv - jnp.mean(adv)) / (jnp.std(adv) + eps)
    return (adv - jnp.mean(adv, where=mask)) / (jnp.std(adv, where=mask) + eps)


def segment_return(traj) -> chex.Array:
    """Total reward over the number of episode segments in the window, a scalar.

    ``traj`` has ``rewards`` and ``resets`` of the same shape (``envs.Trajectory``, any leading
    axes); ``resets`` is True where a step starts an episode, so each row's first step counts
    one segment. A finite lower bound on the mean episode return: the unfinished last episode
    of each row counts as one. An empty window (no resets) gives the total reward.
    """
    return jnp.sum(traj.rewards) / jnp.maximum(jnp.sum(traj.resets), 1)


def policy_resets(resets: chex.Array, carry_across_episodes: bool) -> chex.Array:
    """The ``resets`` ``(E, T)`` to pass to a policy's sequence ``apply`` so that it reproduces
    the log-probs and values of the rollout that recorded ``resets``.

    A rollout that reset the carry at every episode start (``carry_across_episodes=False``)
    is reproduced by its own ``resets``; one that kept the carry across episodes (RL^2) only
    started from a fresh carry at ``t = 0``, so True at ``t = 0`` and False elsewhere.
    """
    if carry_across_episodes:
        return jnp.zeros_like(resets).at[:, 0].set(True)
    return resets
