"""Tests for envs.rollout: exactness vs a hand-stepped gymnax loop, resets, carries, vmap, jit."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs.rollout import _rollout
from ssm_jax import Categorical, MLPPolicy, PolicyOutput, SSMPolicy


class UniformPolicy(nn.Module):
    """A parameter-free policy that ignores its observations (the ssm_jax contract)."""

    action_dim: int = 2

    @nn.compact
    def __call__(self, obs_seq, resets=None, carry=None):
        shape = obs_seq.shape[:-1]
        return PolicyOutput(Categorical(jnp.zeros(shape + (self.action_dim,))), jnp.zeros(shape)), carry

    def step(self, obs, carry, reset=None):
        b = obs.shape[0]
        return PolicyOutput(Categorical(jnp.zeros((b, self.action_dim))), jnp.zeros((b,))), carry

    def initialize_carry(self, batch_size):
        return jnp.zeros((batch_size, 0))


def _init(policy, obs_dim=4, seed=0):
    return policy.init(jax.random.PRNGKey(seed), jnp.zeros((1, 2, obs_dim)))


def _task(max_steps=500, inverted=False):
    return envs.make_cartpole_params(length=0.4, masspole=0.12, masscart=0.9, gravity=9.0,
                                     force_mag=-8.0 if inverted else 8.0,
                                     max_steps_in_episode=max_steps)


SSM = SSMPolicy(obs_dim=4, action_dim=2, state_dim=8, hidden_dim=16)
SSM_PARAMS = _init(SSM)
# Most tests share these shapes (and float32-array tasks), so they reuse one compilation.
E, T = 4, 50
ENV_STEP = jax.jit(envs.make()[0].step)
SSM_STEP = jax.jit(lambda p, o, c, r: SSM.apply(p, o, c, r, method="step"))
SSM_SEQ = jax.jit(lambda p, o, r: SSM.apply(p, o, resets=r))  # sequence mode, one compile
ONLY_FIRST = jnp.zeros((E, T), bool).at[:, 0].set(True)  # resets of one long "episode"


def _run(seed=11, max_steps=15, inverted=False, **kw):
    return envs.rollout(jax.random.PRNGKey(seed), SSM, SSM_PARAMS, _task(max_steps, inverted),
                        num_envs=E, num_steps=T, **kw)


def _reference_loop(key, policy, params, task, num_envs, num_steps, carry_across=False):
    """gymnax stepped by hand, one env and one step at a time, replicating the key schedule."""
    env, _ = envs.make()
    key_reset, key_steps = jax.random.split(key)
    reset_keys = jax.random.split(key_reset, num_envs)
    step_keys = jax.random.split(key_steps, num_steps)
    step = ENV_STEP
    assert policy is SSM
    apply_step = SSM_STEP
    states, obs = [], []
    for i in range(num_envs):
        o, s = env.reset(reset_keys[i], task)
        states.append(s)
        obs.append(o)
    carry = policy.initialize_carry(num_envs)
    reset = np.ones(num_envs, bool)
    running = np.zeros(num_envs)
    out = {k: [] for k in ("obs", "actions", "rewards", "terminated", "truncated", "log_probs",
                           "values", "resets", "episode_returns")}
    for t in range(num_steps):
        key_policy, key_env = jax.random.split(step_keys[t])
        env_keys = jax.random.split(key_env, num_envs)
        obs_t = jnp.stack(obs)
        pol_reset = np.zeros(num_envs, bool) if carry_across else reset
        pout, carry = apply_step(params, obs_t, carry, jnp.asarray(pol_reset))
        action = pout.dist.sample(key_policy)
        rewards, terms, truncs, ep = [], [], [], []
        for i in range(num_envs):
            o, s, r, term, trunc, _ = step(env_keys[i], states[i], action[i], task)
            states[i], obs[i] = s, o
            running[i] += float(r)
            done = bool(term) or bool(trunc)
            ep.append(running[i] if done else 0.0)
            if done:
                running[i] = 0.0
            rewards.append(float(r))
            terms.append(bool(term))
            truncs.append(bool(trunc))
        out["obs"].append(np.asarray(obs_t))
        out["actions"].append(np.asarray(action))
        out["rewards"].append(rewards)
        out["terminated"].append(terms)
        out["truncated"].append(truncs)
        out["log_probs"].append(np.asarray(pout.dist.log_prob(action)))
        out["values"].append(np.asarray(pout.value))
        out["resets"].append(reset.copy())
        out["episode_returns"].append(ep)
        reset = np.logical_or(terms, truncs)
    return {k: np.swapaxes(np.asarray(v), 0, 1) for k, v in out.items()}, np.stack(obs)


@pytest.mark.parametrize("inverted", [False, True])
def test_rollout_equals_gymnax_stepped_by_hand(inverted):
    # short time limit so the rollout has both terminations and truncations, many auto-resets
    traj = _run(seed=11, max_steps=15, inverted=inverted)
    ref, ref_last_obs = _reference_loop(jax.random.PRNGKey(11), SSM, SSM_PARAMS,
                                        _task(15, inverted), E, T)
    assert traj.terminated.any() and traj.truncated.any()
    np.testing.assert_array_equal(traj.actions, ref["actions"])
    np.testing.assert_allclose(traj.obs, ref["obs"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(traj.rewards, ref["rewards"])
    np.testing.assert_array_equal(traj.terminated, ref["terminated"])
    np.testing.assert_array_equal(traj.truncated, ref["truncated"])
    np.testing.assert_array_equal(traj.dones, ref["terminated"] | ref["truncated"])
    np.testing.assert_array_equal(traj.resets, ref["resets"])
    np.testing.assert_array_equal(traj.episode_returns, ref["episode_returns"])  # exact
    np.testing.assert_allclose(traj.log_probs, ref["log_probs"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(traj.values, ref["values"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(traj.last_obs, ref_last_obs, rtol=1e-6, atol=1e-7)


def test_episode_returns_are_episode_lengths_and_account_for_every_reward():
    traj = _run(seed=4, max_steps=15)
    dones = np.asarray(traj.dones)
    for i in range(E):
        ends = np.flatnonzero(dones[i])
        starts = np.concatenate([[0], ends[:-1] + 1])
        # CartPole pays 1 per step: a completed episode's return is its length
        np.testing.assert_array_equal(traj.episode_returns[i, ends], ends - starts + 1)
        assert np.all(np.asarray(traj.episode_returns[i])[~dones[i]] == 0)
        # completed returns + the unfinished tail = all rewards
        tail = T - (ends[-1] + 1 if len(ends) else 0)
        assert float(traj.episode_returns[i].sum()) + tail == float(traj.rewards[i].sum())
    np.testing.assert_array_equal(traj.truncated, np.asarray(traj.episode_returns) == 15)
    total, count = envs.episode_returns_per_row(traj)
    assert int(envs.num_episodes(traj)) == int(count.sum()) == dones.sum()
    np.testing.assert_allclose(envs.mean_episode_return(traj), total.sum() / count.sum(), rtol=1e-6)


def test_resets_flags_and_shapes():
    traj = _run(seed=0, max_steps=500)
    chex.assert_shape([traj.obs], (E, T, 4))
    chex.assert_shape([traj.actions, traj.rewards, traj.dones, traj.terminated, traj.truncated,
                       traj.log_probs, traj.values, traj.resets, traj.episode_returns], (E, T))
    chex.assert_shape([traj.last_obs], (E, 4))
    chex.assert_shape([traj.last_reset, traj.last_value], (E,))
    chex.assert_trees_all_equal_shapes(traj.final_carry, SSM.initialize_carry(E))
    chex.assert_tree_all_finite((traj.obs, traj.log_probs, traj.values, traj.last_value))
    assert traj.actions.dtype == jnp.int32 and traj.rewards.dtype == jnp.float32
    assert bool(traj.resets[:, 0].all())
    np.testing.assert_array_equal(traj.resets[:, 1:], traj.dones[:, :-1])
    np.testing.assert_array_equal(traj.last_reset, traj.dones[:, -1])


def test_no_completed_episode_gives_nan_mean():
    traj = _run(seed=0)
    traj = traj.replace(dones=jnp.zeros_like(traj.dones))
    assert int(envs.num_episodes(traj)) == 0
    assert np.isnan(envs.mean_episode_return(traj))


@pytest.mark.parametrize("carry_across", [False, True])
def test_sequence_apply_on_stored_obs_recomputes_log_probs_and_values(carry_across):
    """What MAML-RL does: the policy's sequence mode over traj.obs gives the rollout's outputs."""
    traj = _run(seed=2, max_steps=10, carry_across_episodes=carry_across)
    resets = ONLY_FIRST if carry_across else traj.resets
    out, carry = SSM_SEQ(SSM_PARAMS, traj.obs, resets)
    np.testing.assert_allclose(out.dist.log_prob(traj.actions), traj.log_probs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.value, traj.values, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(carry, traj.final_carry, rtol=1e-5, atol=1e-5)
    # last_value continues the recurrence from final_carry on last_obs
    reset = jnp.zeros(E, bool) if carry_across else traj.last_reset
    last, _ = SSM.apply(SSM_PARAMS, traj.last_obs, traj.final_carry, reset, method="step")
    np.testing.assert_allclose(last.value, traj.last_value, rtol=1e-5, atol=1e-6)


def test_carry_across_episodes_changes_outputs_after_the_first_reset_only():
    a = _run(seed=2, max_steps=10, carry_across_episodes=False)
    b = _run(seed=2, max_steps=10, carry_across_episodes=True)
    first_reset = int(np.argmax(np.asarray(a.resets[0, 1:]))) + 1
    np.testing.assert_allclose(a.values[0, :first_reset], b.values[0, :first_reset], rtol=1e-6)
    assert not np.allclose(a.values[0, first_reset], b.values[0, first_reset])


def test_deterministic_acts_with_the_mode():
    traj = _run(seed=0, deterministic=True)
    out, _ = SSM_SEQ(SSM_PARAMS, traj.obs, traj.resets)
    np.testing.assert_array_equal(traj.actions, out.dist.mode())


def test_partial_mode_drops_velocities_of_the_same_trajectory():
    policy = UniformPolicy()  # ignores obs, so both modes take the same actions
    params = _init(policy)
    key = jax.random.PRNGKey(9)
    kw = dict(num_envs=E, num_steps=T)
    full = envs.rollout(key, policy, params, _task(12), obs_mode="full", **kw)
    part = envs.rollout(key, policy, params, _task(12), obs_mode="partial", **kw)
    np.testing.assert_array_equal(part.actions, full.actions)
    # the velocities dropped; the two programs may round the physics apart in the last bits
    np.testing.assert_allclose(part.obs, full.obs[..., jnp.array([0, 2])], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(part.last_obs, full.last_obs[..., jnp.array([0, 2])], rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(part.episode_returns, full.episode_returns)


def test_rollout_tasks_equals_rollout_per_task():
    tasks = envs.CartPoleTasks(max_steps_in_episode=15).sample(jax.random.PRNGKey(1), 3)
    key = jax.random.PRNGKey(5)
    batch = envs.rollout_tasks(key, SSM, SSM_PARAMS, tasks, num_envs=E, num_steps=T)
    chex.assert_shape(batch.obs, (3, E, T, 4))
    keys = jax.random.split(key, 3)
    for i in range(3):
        task = jax.tree_util.tree_map(lambda x: x[i], tasks)
        one = envs.rollout(keys[i], SSM, SSM_PARAMS, task, num_envs=E, num_steps=T)
        chex.assert_trees_all_close(jax.tree_util.tree_map(lambda x: x[i], batch), one,
                                    rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_rollout_tasks_with_per_task_params():
    tasks = envs.CartPoleTasks(max_steps_in_episode=15).sample(jax.random.PRNGKey(1), 3)
    key = jax.random.PRNGKey(5)
    stacked = jax.tree_util.tree_map(lambda p: jnp.stack([p, 2 * p, -p]), SSM_PARAMS)
    per_task = envs.rollout_tasks(key, SSM, stacked, tasks, params_per_task=True,
                                  num_envs=E, num_steps=T)
    keys = jax.random.split(key, 3)
    for i in range(3):
        task = jax.tree_util.tree_map(lambda x: x[i], tasks)
        p_i = jax.tree_util.tree_map(lambda p: p[i], stacked)
        one = envs.rollout(keys[i], SSM, p_i, task, num_envs=E, num_steps=T)
        chex.assert_trees_all_close(jax.tree_util.tree_map(lambda x: x[i], per_task), one,
                                    rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="leading task axis of size 3"):
        envs.rollout_tasks(key, SSM, SSM_PARAMS, tasks, params_per_task=True, num_envs=E,
                           num_steps=T)


def test_mlp_policy_rollout_matches_its_sequence_apply():
    policy = MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=16)
    params = _init(policy)
    traj = envs.rollout(jax.random.PRNGKey(3), policy, params, _task(), num_envs=3, num_steps=20)
    out, _ = policy.apply(params, traj.obs)
    np.testing.assert_allclose(out.dist.log_prob(traj.actions), traj.log_probs, rtol=1e-5, atol=1e-6)
    chex.assert_shape(traj.final_carry, (3, 0))


def test_no_retracing_across_calls_with_the_same_shapes():
    kw = dict(num_envs=E, num_steps=T)
    tasks = envs.CartPoleTasks().sample(jax.random.PRNGKey(0), 3)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(key, params, task):
        return envs.rollout(key, SSM, params, task, **kw)

    before = _rollout._cache_size()
    for i in range(3):
        params = jax.tree_util.tree_map(lambda p: p * (1.0 + i), SSM_PARAMS)
        task = jax.tree_util.tree_map(lambda x: x[i], tasks)
        run(jax.random.PRNGKey(i), params, task)
        envs.rollout(jax.random.PRNGKey(i), SSM, params, task, **kw)  # the jitted entry point
    assert _rollout._cache_size() - before <= 1
    chex.clear_trace_counter()


@pytest.mark.slow
def test_rollout_under_grad_with_traced_params():
    """MAML-RL calls rollout inside jax.grad: the score-function gradient of the stored
    log-probs equals the gradient of the log-probs recomputed from the stored observations."""
    key = jax.random.PRNGKey(6)
    kw = dict(num_envs=3, num_steps=12)
    task = _task(max_steps=8)

    def from_rollout(params):
        return jnp.sum(envs.rollout(key, SSM, params, task, **kw).log_probs)

    traj = envs.rollout(key, SSM, SSM_PARAMS, task, **kw)

    def recomputed(params):
        out, _ = SSM.apply(params, traj.obs, resets=traj.resets)
        return jnp.sum(out.dist.log_prob(traj.actions))

    g1 = jax.jit(jax.grad(from_rollout))(SSM_PARAMS)
    g2 = jax.grad(recomputed)(SSM_PARAMS)
    chex.assert_tree_all_finite(g1)
    chex.assert_trees_all_close(g1, g2, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_other_gymnax_envs_roll_out():
    env, params = envs.make("Acrobot-v1")
    policy = MLPPolicy(obs_dim=6, action_dim=3, hidden_dim=8)
    traj = envs.rollout(jax.random.PRNGKey(0), policy, _init(policy, 6), params, env=env,
                        num_envs=2, num_steps=5)
    chex.assert_shape(traj.obs, (2, 5, 6))
    assert set(np.unique(traj.actions)) <= {0, 1, 2}
    np.testing.assert_array_equal(traj.rewards, -1.0)  # Acrobot pays -1 per step until the goal


@pytest.mark.slow
def test_continuous_actions_in_pendulum_match_a_hand_step():
    env, params = envs.make("Pendulum-v1")
    policy = MLPPolicy(obs_dim=3, action_dim=1, hidden_dim=8, discrete=False)
    key = jax.random.PRNGKey(1)
    traj = envs.rollout(key, policy, _init(policy, 3), params, env=env, num_envs=2, num_steps=3)
    chex.assert_shape(traj.actions, (2, 3, 1))
    key_reset, key_steps = jax.random.split(key)
    reset_keys = jax.random.split(key_reset, 2)
    env_keys = jax.random.split(jax.random.split(jax.random.split(key_steps, 3)[0])[1], 2)
    for i in range(2):
        obs, state = env.reset(reset_keys[i], params)
        np.testing.assert_allclose(traj.obs[i, 0], obs, rtol=1e-6)
        obs, _, reward, *_ = env.step(env_keys[i], state, traj.actions[i, 0], params)
        np.testing.assert_allclose(traj.rewards[i, 0], reward, rtol=1e-5)
        np.testing.assert_allclose(traj.obs[i, 1], obs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(num_envs=0), "num_envs"),
        (dict(num_steps=2.5), "num_steps"),
        (dict(obs_mode="pixels"), "obs_mode"),
        (dict(obs_mode="partial"), "obs_dim"),  # policy built for 4 observations
        (dict(env="CartPole-v1"), "env"),
        (dict(task=envs.CartPoleTasks().sample(jax.random.PRNGKey(0), 2)), "rollout_tasks"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, needle):
    args = dict(num_envs=2, num_steps=4, task=None)
    args.update(kwargs)
    task = args.pop("task")
    with pytest.raises(ValueError, match=needle):
        envs.rollout(jax.random.PRNGKey(0), SSM, SSM_PARAMS, task, **args)


def test_rollout_tasks_rejects_a_single_task():
    with pytest.raises(ValueError, match="leading task axis"):
        envs.rollout_tasks(jax.random.PRNGKey(0), SSM, SSM_PARAMS, _task(), num_envs=2, num_steps=4)


# ------------------------------------------------------------------ ContextWrapper (RL^2 observations)


def test_context_observations_are_previous_action_reward_and_done():
    base, _ = envs.make()
    wrapped = envs.ContextWrapper(base)
    assert envs.obs_dim(wrapped) == 8 and envs.obs_dim(envs.ContextWrapper(base, "partial")) == 6
    assert wrapped == envs.ContextWrapper(base) and hash(wrapped) == hash(envs.ContextWrapper(base))
    policy = UniformPolicy()  # ignores its observations: both rollouts take the same actions
    params = _init(policy)
    key = jax.random.PRNGKey(3)
    kw = dict(num_envs=E, num_steps=T)  # the plain rollout reuses the partial-mode test's compile
    plain = envs.rollout(key, policy, params, _task(max_steps=12), env=base, **kw)
    ctx = envs.rollout(key, policy, params, _task(max_steps=12), env=wrapped, **kw)
    assert bool(plain.dones.any())
    np.testing.assert_array_equal(ctx.actions, plain.actions)
    np.testing.assert_array_equal(ctx.obs[..., :4], plain.obs)
    np.testing.assert_array_equal(ctx.rewards, plain.rewards)
    np.testing.assert_array_equal(ctx.episode_returns, plain.episode_returns)
    # the context of step t is what happened at step t - 1 (all zero at t = 0)
    np.testing.assert_array_equal(ctx.obs[:, 0, 4:], 0.0)
    np.testing.assert_array_equal(ctx.obs[:, 1:, 4:6], jax.nn.one_hot(plain.actions[:, :-1], 2))
    np.testing.assert_array_equal(ctx.obs[:, 1:, 6], plain.rewards[:, :-1])
    np.testing.assert_array_equal(ctx.obs[:, 1:, 7], plain.dones[:, :-1].astype(jnp.float32))
    np.testing.assert_array_equal(ctx.last_obs[:, 7], plain.dones[:, -1].astype(jnp.float32))


def test_context_wrapper_rejects_bad_arguments():
    with pytest.raises(ValueError, match="gymnax Environment"):
        envs.ContextWrapper("CartPole-v1")
    with pytest.raises(ValueError, match="obs_mode"):
        envs.ContextWrapper(envs.make()[0], obs_mode="pixels")


def test_numpy_integer_sizes_and_cached_policy_check(monkeypatch):
    import sys

    rollout_module = sys.modules["envs.rollout"]  # (envs.rollout is the re-exported function)

    policy = MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=7)  # a size no other test uses
    params = _init(policy)
    key = jax.random.PRNGKey(0)
    ref = envs.rollout(key, policy, params, num_envs=2, num_steps=6)
    got = envs.rollout(key, policy, params, num_envs=np.int32(2), num_steps=np.int64(6))
    chex.assert_trees_all_equal(got, ref)
    with pytest.raises(ValueError, match="num_steps"):
        envs.rollout(key, policy, params, num_envs=2, num_steps=6.0)
    # the policy check already passed for (policy, env, "full"): later calls skip it
    calls = []
    real = rollout_module._check_policy_uncached
    monkeypatch.setattr(rollout_module, "_check_policy_uncached", lambda *a: calls.append(a) or real(*a))
    envs.rollout(key, policy, params, num_envs=2, num_steps=6)
    assert calls == []
    # another obs_mode is a new combination: still checked (and rejected: obs_dim 4 != 2)
    with pytest.raises(ValueError, match="obs_dim"):
        envs.rollout(key, policy, params, num_envs=2, num_steps=6, obs_mode="partial")
    assert len(calls) == 1


# ------------------------------------------------------------------ one action-space check
def test_a_policy_with_the_wrong_action_space_is_refused_wherever_it_meets_the_env():
    """MLPPolicy(action_dim=3) on CartPole (Discrete(2)): a rollout would apply action 2 as a
    push to the left. One check (envs.check_policy) refuses it, naming the policy's action_dim
    and the env's action space, before anything is traced (the params are empty: applying the
    policy would fail differently; nothing is added to the rollout's jit cache): in rollout,
    rollout_tasks, MAMLRL, PPO and adapt.evaluate_with_adaptation."""
    import optax

    import adapt
    from maml import MAMLRL, PPO

    three = MLPPolicy(obs_dim=4, action_dim=3, hidden_dim=8)
    params = {"params": {}}
    task = _task()
    message = r"policy.action_dim is 3 \(discrete=True\) but CartPole-v1's action space is Discrete\(2\)"
    calls = {
        "rollout": lambda: envs.rollout(jax.random.PRNGKey(0), three, params, task, num_envs=2, num_steps=3),
        "rollout_tasks": lambda: envs.rollout_tasks(
            jax.random.PRNGKey(0), three, params, jax.tree.map(lambda x: jnp.stack([x, x]), task),
            num_envs=2, num_steps=3),
        "MAMLRL": lambda: MAMLRL(three),
        "PPO": lambda: PPO(three),
        "evaluate_with_adaptation": lambda: adapt.evaluate_with_adaptation(
            jax.random.PRNGKey(0), three, params, task, objective=lambda p, b: 0.0,
            optimizer=optax.sgd(0.1), num_rounds=1, steps_per_round=3, num_envs=2),
    }
    compiled = _rollout._cache_size()
    for name, call in calls.items():
        with pytest.raises(ValueError, match=message):
            call()
    assert _rollout._cache_size() == compiled
    # the same check refuses a continuous policy on a discrete space, and the reverse
    with pytest.raises(ValueError, match=r"action_dim is 2 \(discrete=False\).*discrete=True and action_dim=2"):
        envs.check_policy(MLPPolicy(obs_dim=4, action_dim=2, discrete=False))
    pendulum = envs.make("Pendulum-v1")[0]
    with pytest.raises(ValueError, match=r"Box\(shape=\(1,\)\).*discrete=False and action_dim=1"):
        envs.check_policy(MLPPolicy(obs_dim=3, action_dim=1), pendulum)
    envs.check_policy(MLPPolicy(obs_dim=3, action_dim=1, discrete=False), pendulum)  # fits
    envs.check_policy(MLPPolicy(obs_dim=4, action_dim=2))


def test_eager_rollout_refuses_non_finite_params_and_tasks():
    bad_params = jax.tree.map(lambda x: x, SSM_PARAMS)
    bad_params["params"]["heads"]["actor"]["bias"] = bad_params["params"]["heads"]["actor"]["bias"].at[0].set(jnp.nan)
    with pytest.raises(ValueError, match=r"params must be finite, but params\['params'\]\['heads'\]\['actor'\]\['bias'\] holds NaN"):
        envs.rollout(jax.random.PRNGKey(0), SSM, bad_params, _task(), num_envs=2, num_steps=3)
    with pytest.raises(ValueError, match=r"task must be finite, but task.gravity holds an infinity"):
        envs.rollout(jax.random.PRNGKey(0), SSM, SSM_PARAMS, _task().replace(gravity=jnp.inf),
                     num_envs=2, num_steps=3)
