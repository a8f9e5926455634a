"""envs.context.ContextWrapper: the observation is the inner one plus exactly [one_hot(a), r, done]."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs.context import ContextWrapper
from ssm_jax import SSMPolicy


@pytest.fixture(scope="module")
def base():
    return envs.make("CartPole-v1")[0]


def test_shapes_and_spaces(base):
    full, partial = ContextWrapper(base), ContextWrapper(base, obs_mode="partial")
    assert envs.obs_dim(full) == 4 + 2 + 2
    assert envs.obs_dim(partial) == 2 + 2 + 2
    obs, _ = full.reset(jax.random.key(0), base.default_params)
    assert obs.shape == (8,) and obs.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(obs[4:]), np.zeros(4))  # no previous step yet
    assert full.num_actions == 2 and full.name == "CartPole-v1+context"


def test_step_appends_previous_action_reward_done_against_hand_stepped_gymnax(base):
    """Step the wrapper and the raw env with the same keys: obs = [inner, one_hot(a), r, done]."""
    task = envs.make_cartpole_params(length=0.5, masspole=0.1, masscart=1.0, gravity=9.8,
                                     force_mag=-10.0, max_steps_in_episode=30)
    for obs_mode in ("full", "partial"):
        wrapped = ContextWrapper(base, obs_mode=obs_mode)
        key = jax.random.key(1)
        k0, key = jax.random.split(key)
        obs_w, st_w = wrapped.reset(k0, task)
        obs_b, st_b = base.reset(k0, task)
        np.testing.assert_allclose(obs_w[:-4], envs.observe(obs_b, obs_mode, base))
        saw_done = False
        for t in range(45):  # crosses at least one episode end (time limit 30 or a fall)
            key, k = jax.random.split(key)
            action = jnp.int32(t % 3 == 0)
            obs_w, st_w, r_w, term_w, trunc_w, _ = wrapped.step(k, st_w, action, task)
            obs_b, st_b, r_b, term_b, trunc_b, _ = base.step(k, st_b, action, task)
            done = bool(term_b | trunc_b)
            saw_done |= done
            expected = np.concatenate([np.asarray(envs.observe(obs_b, obs_mode, base)),
                                       np.eye(2)[int(action)], [float(r_b)], [float(done)]])
            np.testing.assert_allclose(np.asarray(obs_w), expected, rtol=1e-6, atol=1e-6)
            assert float(r_w) == float(r_b) and bool(term_w) == bool(term_b)
            assert bool(trunc_w) == bool(trunc_b)
        assert saw_done


def test_rollout_with_wrapper_and_carry_across_episodes(base):
    """envs.rollout accepts the wrapper; the context columns of traj.obs[t+1] are step t's; with
    a recurrent policy (an SSM, whose carry is not empty) the carry really crosses episodes: the
    log-probs are the sequence apply's with a fresh carry at t = 0 only, and after the first
    episode end they differ from those of a carry reset at every episode start."""
    env = ContextWrapper(base)
    policy = SSMPolicy(obs_dim=8, action_dim=2, state_dim=4, hidden_dim=8)
    params = policy.init(jax.random.key(0), jnp.zeros((1, 1, 8)))
    assert jax.tree.leaves(policy.initialize_carry(1))  # a real carry
    task = envs.CartPoleTasks().sample(jax.random.key(2), 1)
    task = jax.tree.map(lambda x: x[0], task)
    traj = envs.rollout(jax.random.key(3), policy, params, task, num_envs=3, num_steps=60,
                        env=env, carry_across_episodes=True)
    obs, actions = np.asarray(traj.obs), np.asarray(traj.actions)
    np.testing.assert_array_equal(obs[:, 1:, 4:6], np.eye(2)[actions[:, :-1]])
    np.testing.assert_array_equal(obs[:, 1:, 6], np.asarray(traj.rewards)[:, :-1])
    np.testing.assert_array_equal(obs[:, 1:, 7], np.asarray(traj.dones)[:, :-1].astype(np.float32))
    np.testing.assert_array_equal(obs[:, 0, 4:], 0.0)

    def log_probs(resets):
        out, _ = policy.apply(params, traj.obs, resets=resets)
        return np.asarray(out.dist.log_prob(traj.actions))

    first_only = np.zeros(traj.resets.shape, bool)
    first_only[:, 0] = True
    kept = log_probs(jnp.asarray(first_only))
    np.testing.assert_allclose(kept, np.asarray(traj.log_probs), rtol=1e-5, atol=1e-5)
    reset = log_probs(traj.resets)
    ends = np.asarray(traj.dones)
    assert ends[:, :-1].any()
    first_end = np.argmax(ends, axis=1)
    for e in range(3):
        if ends[e, :-1].any():
            np.testing.assert_allclose(kept[e, :first_end[e] + 1], reset[e, :first_end[e] + 1], rtol=1e-5, atol=1e-5)
            assert np.abs(kept[e, first_end[e] + 1:] - reset[e, first_end[e] + 1:]).max() > 1e-4


def test_partial_obs_mode_on_wrapper_is_rejected_and_equal_wrappers_hash_equal(base):
    env = ContextWrapper(base)
    with pytest.raises(ValueError, match="partial"):
        envs.observe(jnp.zeros(8), "partial", env)
    assert env == ContextWrapper(base) and hash(env) == hash(ContextWrapper(base))
    assert env != ContextWrapper(base, obs_mode="partial")
    with pytest.raises(ValueError, match="gymnax Environment"):
        ContextWrapper("CartPole-v1")


def test_observation_wrappers_share_identity_rules(base):
    """`envs.wrapper.ObservationWrapper`, the base of ContextWrapper and GoalVisible: equal
    when the class, the inner environment object and the options match; delegation of the
    action space, params and actions to the inner environment."""
    suite_env = envs.make_suite_env("full")
    goal = envs.GoalVisible(suite_env)
    assert goal == envs.GoalVisible(suite_env) and hash(goal) == hash(envs.GoalVisible(suite_env))
    assert goal != ContextWrapper(suite_env)  # same inner env, another wrapper class
    assert ContextWrapper(suite_env) != ContextWrapper(base)  # same class, another inner env
    for w in (goal, ContextWrapper(base)):
        assert w.num_actions == w.inner.num_actions == 2
        assert w.action_space().n == w.inner.action_space().n
        assert w.default_params is w.inner.default_params or w.default_params == w.inner.default_params
    with pytest.raises(ValueError, match="SuiteCartPole"):
        envs.GoalVisible(base)

