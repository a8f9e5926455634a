"""A per-batch linear feature baseline for policy-gradient advantages (Duan et al., 2016).

The original MAML-RL (Finn et al., 2017) and ProMP compute the advantages of every inner step
from a linear baseline fitted, by ridge regression, to the returns of the very batch being used:
a learned value head has to predict the values of a pre-update policy and of every adapted one,
on tasks it has never seen (the held-out test split reaches outside the train ranges), while a
baseline fitted to the batch is right for whatever policy and task produced it.

Shapes: ``E`` envs, ``T`` steps, ``D`` observation size; inputs are one rollout window of one
task (``envs.Trajectory`` fields). Episodes end at terminations and time-limit truncations
alike (the benchmark's return is capped at the time limit, so a truncated episode has no
future to value), and the window's own end cuts returns too; the time features (steps into the
episode, steps left in the window) let the fit follow both. The fitted targets are
``maml.onpolicy.discounted_returns`` cut at the window end with a zero bootstrap.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from maml.onpolicy import discounted_returns

#: Time features are in units of this many steps (as in the reference implementation).
TIME_SCALE = 100.0


def features(obs: jax.Array, resets: jax.Array) -> jax.Array:
    """``(E, T, 2 D + 7)`` regression features: obs, obs^2, steps into the episode and steps left
    in the window (each to the powers 1, 2, 3, in units of ``TIME_SCALE``), and a constant.

    ``resets`` ``(E, T)`` is True where ``obs[:, t]`` starts an episode (``Trajectory.resets``).
    """
    e, t = resets.shape

    def count(c, r):
        c = jnp.where(r, 0.0, c + 1.0)
        return c, c

    _, into = jax.lax.scan(count, jnp.zeros(e), resets.T)
    into = into.T / TIME_SCALE
    left = jnp.broadcast_to((t - 1 - jnp.arange(t, dtype=jnp.float32)) / TIME_SCALE, (e, t))
    obs = jnp.clip(obs, -10.0, 10.0)
    powers = [x[..., None] ** k for x in (into, left) for k in (1, 2, 3)]
    return jnp.concatenate([obs, obs * obs, *powers, jnp.ones((e, t, 1), obs.dtype)], axis=-1)


def fit_linear_baseline(x: jax.Array, targets: jax.Array, reg: float = 1e-5,
                        mask: jax.Array | None = None) -> jax.Array:
    """Ridge-regression fit of ``targets`` ``(...)`` on features ``x`` ``(..., F)``; returns the
    fitted values ``(...)``. Columns are standardised first; ``reg`` is the ridge weight on the
    standardised normal equations (scale-free, so one value serves any batch). The coefficients
    are a constant to differentiation (``solve_each``).

    ``mask`` (bool, shaped like ``targets``): fit to the rows where it is True only (their
    column means and deviations, their normal equations); the other rows get the fitted
    function's values too. None: every row counts.
    """
    f = x.shape[-1]
    x = x.reshape(-1, f)
    y = targets.reshape(-1)
    if mask is None:
        mean = jnp.mean(x, axis=0)
        std = jnp.std(x, axis=0)
        n = x.shape[0]
    else:
        w = mask.reshape(-1, 1).astype(x.dtype)
        n = jnp.maximum(jnp.sum(w), 1.0)
        mean = jnp.sum(w * x, axis=0) / n
        std = jnp.sqrt(jnp.sum(w * jnp.square(x - mean), axis=0) / n)
    constant = std < 1e-6
    z = jnp.where(constant, 1.0, (x - mean) / jnp.where(constant, 1.0, std))
    zw = z if mask is None else z * w
    gram = zw.T @ z / n + reg * jnp.eye(f, dtype=z.dtype)
    coef = solve_each(jax.lax.stop_gradient(gram), jax.lax.stop_gradient(zw.T @ y / n))
    return (z @ coef).reshape(targets.shape)


@jax.custom_batching.custom_vmap
def solve_each(a: jax.Array, b: jax.Array) -> jax.Array:
    """``jnp.linalg.solve(a, b)`` for one ``(F, F)`` system ``a`` and ``(F,)`` right-hand side;
    under ``jax.vmap`` a ``lax.map`` over the batch: one LAPACK call per system, with the
    same values as the batched call (LAPACK factors each matrix of a batch on its own).

    Why: jaxlib 0.10's CPU LAPACK kernels split a batch into chunks on XLA's intra-op thread
    pool and block the calling pool thread until they finish; when as many batched calls run
    at once as the pool has threads (2 on a 2-core CPU), no thread is left to run the chunks
    and the program hangs for ever (seen in long benchmark evaluations; a batch of one runs
    inline). Not differentiable: the callers treat the fitted baseline as a constant (its
    inputs pass through ``stop_gradient``)."""
    return jnp.linalg.solve(a, b)


@solve_each.def_vmap
def _solve_each_vmap(axis_size: int, in_batched, a, b):
    a_batched, b_batched = in_batched
    a = a if a_batched else jnp.broadcast_to(a, (axis_size,) + a.shape)
    b = b if b_batched else jnp.broadcast_to(b, (axis_size,) + b.shape)
    return jax.lax.map(lambda ab: solve_each(*ab), (a, b)), True


def linear_baseline(obs, rewards, dones, resets, gamma: float, reg: float = 1e-5,
                    mask: jax.Array | None = None) -> jax.Array:
    """Baseline values ``(E, T)`` of one window: a linear fit to its own discounted returns
    (``mask`` ``(E, T)``: to the returns of its True steps only, see ``fit_linear_baseline``)."""
    targets = discounted_returns(rewards, dones, jnp.zeros(rewards.shape[:1], jnp.float32), gamma)
    return fit_linear_baseline(features(obs, resets), jax.lax.stop_gradient(targets), reg, mask)
