"""Continuous actions: the Gaussian head against scipy, and MAML-RL and PPO on Pendulum tasks
(`envs.EnvTasks("Pendulum-v1")`, inverted torque included) with finite gradients."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import envs
from adapt.rl import evaluate_with_adaptation, policy_gradient_loss
from envs.context import ContextWrapper
from maml import PPO, PPOConfig
from maml.rl import MAMLRL, MAMLRLConfig
from ssm_jax import Gaussian, MLPPolicy, SSMPolicy


def test_gaussian_log_prob_and_entropy_match_scipy_per_dimension():
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    mean = jax.random.normal(k[0], (5, 3))
    log_std = jax.random.uniform(k[1], (5, 3), minval=-1.5, maxval=0.5)
    actions = mean + 2.0 * jax.random.normal(k[2], (5, 3))
    dist = Gaussian(mean, log_std)
    m, s, a = (np.asarray(x, np.float64) for x in (mean, jnp.exp(log_std), actions))
    np.testing.assert_allclose(dist.log_prob(actions), stats.norm.logpdf(a, m, s).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(dist.entropy(), stats.norm.entropy(m, s).sum(-1), rtol=1e-5)
    np.testing.assert_array_equal(dist.mode(), mean)


def _pendulum():
    return envs.make("Pendulum-v1")[0], envs.EnvTasks("Pendulum-v1")


@pytest.mark.parametrize("policy, first_order", [
    (MLPPolicy(obs_dim=3, action_dim=1, hidden_dim=8, discrete=False), False),
    pytest.param(SSMPolicy(obs_dim=3, action_dim=1, state_dim=4, hidden_dim=8, discrete=False),
                 True, marks=pytest.mark.slow),
], ids=["mlp-second-order", "ssm-first-order"])
def test_maml_rl_on_pendulum_tasks_has_finite_nonzero_gradients(policy, first_order):
    env, dist = _pendulum()
    algo = MAMLRL(policy, MAMLRLConfig(support_envs=2, support_steps=16, query_envs=2,
                                       query_steps=12, num_inner_steps=1,
                                       first_order=first_order), env=env)
    state = algo.init(jax.random.key(0))
    tasks = dist.sample(jax.random.key(1), 2)
    assert np.asarray(envs.is_inverted(tasks)).sum() == 1
    c = algo.config
    _, support, query = jax.jit(jax.vmap(
        lambda t, k: algo.collect_task(state.params, state.inner_lr, t, k, c.num_inner_steps,
                                       (c.support_envs, c.support_steps), (c.query_envs, c.query_steps))
    ))(tasks, jax.random.split(jax.random.key(2), 2))
    assert support.actions.shape == (2, 1, 2, 16, 1)  # (task, inner step, env, time, A)
    assert support.actions.dtype == jnp.float32
    grads = jax.jit(jax.grad(lambda p: algo.outer_loss(p, state.inner_lr, (support, query))[0]))(state.params)
    chex.assert_tree_all_finite(grads)
    assert float(jnp.max(jnp.abs(grads["params"]["heads"]["log_std"]))) > 0
    assert float(jnp.max(jnp.abs(grads["params"]["heads"]["actor"]["kernel"]))) > 0
    if isinstance(policy, SSMPolicy):  # the whole jitted meta-step too (slow: another compile)
        new_state, metrics = algo.meta_update(state, tasks, jax.random.key(3))
        chex.assert_tree_all_finite(new_state.params)
        chex.assert_tree_all_finite({k: v for k, v in metrics.items() if "return" not in k})


@pytest.mark.slow
def test_ppo_on_pendulum_tasks_updates_every_head_with_finite_values():
    env, dist = _pendulum()
    policy = SSMPolicy(obs_dim=3, action_dim=1, state_dim=4, hidden_dim=8, discrete=False)
    ppo = PPO(policy, PPOConfig(num_tasks=2, num_envs=2, num_steps=24, num_minibatches=2,
                                update_epochs=2), env=env, task_dist=dist)
    state = ppo.init(jax.random.key(0))
    new, metrics = ppo.update(state, jax.random.key(1))
    chex.assert_tree_all_finite((new.params, metrics))
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), state.params, new.params)
    assert moved["params"]["heads"]["log_std"] > 0 and moved["params"]["heads"]["actor"]["kernel"] > 0
    assert float(metrics["episode_return"]) < 0  # Pendulum pays a cost every step


@pytest.mark.slow
def test_in_context_and_test_time_adaptation_run_on_pendulum_tasks():
    """RL^2's context wrapper appends the continuous action itself; `adapt` adapts a Gaussian
    policy between rounds with finite returns, not rolled back."""
    env, dist = _pendulum()
    tasks = dist.sample(jax.random.key(0), 2, "test")
    policy = SSMPolicy(obs_dim=3 + 1 + 2, action_dim=1, state_dim=4, hidden_dim=8, discrete=False)
    params = policy.init(jax.random.key(1), jnp.zeros((1, 1, 6)))
    traj = envs.rollout_tasks(jax.random.key(2), policy, params, tasks, env=ContextWrapper(env),
                              num_envs=2, num_steps=30, carry_across_episodes=True)
    np.testing.assert_array_equal(traj.obs[:, :, 1:, 3], traj.actions[:, :, :-1, 0])  # a_{t-1}
    np.testing.assert_allclose(traj.obs[:, :, 1:, 4], traj.rewards[:, :, :-1], rtol=1e-6)

    mlp = MLPPolicy(obs_dim=3, action_dim=1, hidden_dim=8, discrete=False)
    mp = mlp.init(jax.random.key(3), jnp.zeros((1, 1, 3)))
    final, returns, infos = evaluate_with_adaptation(
        jax.random.key(4), mlp, mp, jax.tree.map(lambda x: x[1], tasks),
        objective=functools.partial(policy_gradient_loss, policy=mlp), optimizer=optax.sgd(0.01),
        num_rounds=2, steps_per_round=50, num_envs=2, env=env)
    chex.assert_tree_all_finite((final, returns))
    assert not np.any(infos.rolled_back)
    assert float(jnp.max(jnp.abs(final["params"]["heads"]["log_std"] - mp["params"]["heads"]["log_std"]))) > 0
