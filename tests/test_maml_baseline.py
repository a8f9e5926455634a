"""maml.baseline: returns-to-go against a Python loop, the ridge fit against an exact linear
target and numpy's least squares, and MAMLRL(baseline="linear") end to end."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from maml import baseline, onpolicy
from maml.rl import MAMLRL, MAMLRLConfig
from ssm_jax import MLPPolicy


def test_window_cut_returns_match_a_python_loop():
    rng = np.random.default_rng(0)
    rewards = rng.uniform(size=(3, 17)).astype(np.float32)
    dones = rng.uniform(size=(3, 17)) < 0.2
    got = np.asarray(onpolicy.discounted_returns(jnp.asarray(rewards), jnp.asarray(dones), jnp.zeros(3), 0.9))
    ref = np.zeros_like(rewards)
    for e in range(3):
        g = 0.0
        for t in reversed(range(17)):
            g = rewards[e, t] + 0.9 * g * (1.0 - dones[e, t])
            ref[e, t] = g
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_features_count_steps_into_the_episode_and_left_in_the_window():
    resets = jnp.zeros((1, 6), bool).at[0, 0].set(True).at[0, 4].set(True)
    x = baseline.features(jnp.ones((1, 6, 2)), resets)
    chex.assert_shape(x, (1, 6, 2 * 2 + 7))
    np.testing.assert_allclose(x[0, :, 4] * baseline.TIME_SCALE, [0, 1, 2, 3, 0, 1], atol=1e-4)
    np.testing.assert_allclose(x[0, :, 7] * baseline.TIME_SCALE, [5, 4, 3, 2, 1, 0], atol=1e-4)


def test_ridge_fit_recovers_a_linear_target_and_matches_least_squares():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(size=(2, 50, 5)) * [1, 10, 0.1, 3, 1], np.ones((2, 50, 1))], -1)
    w = rng.normal(size=6)
    y = x @ w
    fit = baseline.fit_linear_baseline(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), reg=1e-8)
    np.testing.assert_allclose(fit, y, atol=1e-3 * np.abs(y).max())
    noisy = y + rng.normal(size=y.shape)
    lstsq = x.reshape(-1, 6) @ np.linalg.lstsq(x.reshape(-1, 6), noisy.reshape(-1), rcond=None)[0]
    fit = baseline.fit_linear_baseline(jnp.asarray(x, jnp.float32), jnp.asarray(noisy, jnp.float32), reg=1e-8)
    np.testing.assert_allclose(np.asarray(fit).reshape(-1), lstsq, atol=1e-3 * np.abs(lstsq).max())


def test_linear_baseline_mamlrl_explains_returns_and_updates():
    policy = MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=8)
    config = MAMLRLConfig(baseline="linear", num_inner_steps=1, support_envs=4, support_steps=60,
                          query_envs=4, query_steps=60, normalize_advantages=False, gae_lambda=1.0)
    algo = MAMLRL(policy, config)
    state = algo.init(jax.random.key(0))
    task = jax.tree.map(lambda x: x[0], envs.CartPoleTasks().sample(jax.random.key(1), 1))
    batch = algo.collect(state.params, jax.random.key(2), task, 4, 60)
    # with lambda = 1: advantages = returns-to-go minus the fitted baseline, which explains most
    # of their variance
    traj = envs.rollout(jax.random.key(2), policy, state.params, task, num_envs=4, num_steps=60)
    ends = traj.terminated | traj.truncated
    rtg = onpolicy.discounted_returns(traj.rewards * config.reward_scale, ends, jnp.zeros(4), config.gamma)
    np.testing.assert_allclose(batch.returns, rtg, rtol=1e-4, atol=1e-5)
    assert float(jnp.var(batch.advantages)) < 0.5 * float(jnp.var(rtg))
    state, metrics = algo.meta_update(state, envs.CartPoleTasks().sample(jax.random.key(3), 2), jax.random.key(4))
    chex.assert_tree_all_finite(metrics)
    with pytest.raises(ValueError, match="baseline must be one of"):
        MAMLRLConfig(baseline="mean")


def test_solve_each_under_vmap_is_one_lapack_call_per_system_with_the_batched_values():
    """`solve_each` under two vmaps gives the batched `jnp.linalg.solve` bit for bit, and its
    program factors one matrix per LAPACK call (a batched call can hang jaxlib 0.10's CPU
    thread pool, see its docstring); unbatched arguments broadcast; a gradient through the fit
    treats the coefficients as constants."""
    keys = jax.random.split(jax.random.key(0), 2)
    x = jax.random.normal(keys[0], (3, 5, 64, 15))
    a = jnp.einsum("stnf,stng->stfg", x, x) / 64 + 1e-5 * jnp.eye(15)
    b = jax.random.normal(keys[1], (3, 5, 15))
    batched = jax.jit(jax.vmap(jax.vmap(jnp.linalg.solve)))
    each = jax.jit(jax.vmap(jax.vmap(baseline.solve_each)))
    np.testing.assert_array_equal(np.asarray(each(a, b)), np.asarray(batched(a, b)))
    hlo = each.lower(a, b).as_text()
    lapack = [line for line in hlo.splitlines() if "lapack" in line and "custom_call" in line]
    assert lapack and all("tensor<15x15xf32>" in line and "tensor<3x5x15x15xf32>" not in line
                          for line in lapack), lapack
    # one matrix, five right-hand sides: each solved as its own system (bit for bit a loop of
    # unbatched solves); jnp.linalg.solve's shared-matrix path solves them together, so it
    # rounds apart on some CPUs (seen on an AVX2 EPYC)
    shared = jax.jit(jax.vmap(baseline.solve_each, in_axes=(None, 0)))(a[0, 0], b[0])
    one_by_one = [jax.jit(jnp.linalg.solve)(a[0, 0], b[0, i]) for i in range(b.shape[1])]
    np.testing.assert_array_equal(np.asarray(shared), np.stack(one_by_one))
    np.testing.assert_allclose(shared, jax.vmap(jnp.linalg.solve, in_axes=(None, 0))(a[0, 0], b[0]),
                               rtol=1e-4, atol=1e-5)

    feats = x[0, 0]
    target = feats @ jnp.arange(15.0)

    def fitted_sum(scale):
        return jnp.sum(baseline.fit_linear_baseline(feats * scale, target))

    grad = jax.grad(fitted_sum)(1.0)
    assert np.isfinite(float(grad))
