"""RL adaptation helpers: returns and losses against Python-loop references and the
rollout's own step-by-step log-probs; the jitted adapt-between-rounds evaluation
against plain rollouts, and a side-by-side check that adapting actually helps."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import envs
from adapt import make_optimizer, rl
from ssm_jax import SSM, MLPPolicy, SSMPolicy

ENV, _ = envs.make("CartPole-v1")


def _traj(policy, params, key=0, num_envs=3, num_steps=40, task=None):
    return envs.rollout(jax.random.PRNGKey(key), policy, params, task, num_envs=num_envs,
                        num_steps=num_steps, env=ENV)


def _returns_loop(rewards, dones, bootstrap, gamma, truncated=None, values=None):
    rewards, dones, bootstrap = map(np.asarray, (rewards, dones, bootstrap))
    truncated = np.zeros(rewards.shape, bool) if truncated is None else np.asarray(truncated)
    g = np.zeros(rewards.shape, np.float64)
    for e in range(rewards.shape[0]):
        nxt = float(bootstrap[e])
        for t in reversed(range(rewards.shape[1])):
            if truncated[e, t]:
                nxt = rewards[e, t] + gamma * float(values[e, t])
            else:
                nxt = rewards[e, t] + (0.0 if dones[e, t] else gamma * nxt)
            g[e, t] = nxt
    return g


def test_discounted_returns_match_a_python_loop():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(4, 30)).astype(np.float32)
    dones = rng.uniform(size=(4, 30)) < 0.15
    bootstrap = rng.normal(size=4).astype(np.float32)
    got = jax.jit(rl.discounted_returns, static_argnums=3)(rewards, dones, bootstrap, 0.9)
    np.testing.assert_allclose(got, _returns_loop(rewards, dones, bootstrap, 0.9), rtol=1e-5, atol=1e-5)
    truncated = dones & (rng.uniform(size=(4, 30)) < 0.5)
    values = rng.normal(size=(4, 30)).astype(np.float32)
    got = jax.jit(rl.discounted_returns, static_argnums=3)(rewards, dones, bootstrap, 0.9, truncated, values)
    np.testing.assert_allclose(got, _returns_loop(rewards, dones, bootstrap, 0.9, truncated, values),
                               rtol=1e-5, atol=1e-5)


def test_policy_gradient_loss_bootstraps_time_limit_truncations():
    """A 10-step time limit: truncated episodes are bootstrapped with the value of their
    last state (as maml.onpolicy.gae does), not treated as true endings."""
    policy = MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=16)
    params = jax.jit(policy.init)(jax.random.PRNGKey(0), jnp.zeros((1, 1, 4)))
    task = ENV.default_params.replace(max_steps_in_episode=10)
    traj = _traj(policy, params, key=1, num_envs=3, num_steps=40, task=task)
    assert bool(jnp.any(traj.truncated))
    g = _returns_loop(traj.rewards, traj.dones, traj.last_value, 0.95, traj.truncated, traj.values)
    loss = rl.policy_gradient_loss(params, traj, policy=policy, gamma=0.95, baseline="none",
                                   normalize_advantages=False, value_coef=0.0)
    np.testing.assert_allclose(loss, -np.mean(np.asarray(traj.log_probs) * g), rtol=1e-4)


def _pg_setup():
    policy = SSMPolicy(obs_dim=4, action_dim=2, core="ssm", state_dim=4, hidden_dim=16)
    params = jax.jit(policy.init)(jax.random.PRNGKey(0), jnp.zeros((1, 1, 4)))
    traj = _traj(policy, params, num_steps=60)
    assert int(traj.dones.sum()) > 0  # episodes end inside the window, so resets matter
    g = _returns_loop(traj.rewards, traj.dones, traj.last_value, 0.95, traj.truncated, traj.values)
    loss = functools.partial(rl.policy_gradient_loss, policy=policy, gamma=0.95, baseline="none",
                             normalize_advantages=False, value_coef=0.0)
    return policy, params, traj, g, loss


def _linear_baseline_reference(obs, resets, targets, reg=1e-5):
    """maml.baseline's documented fit written out in numpy float64: features obs, obs^2, steps
    into the episode and steps left in the window (each to the powers 1, 2, 3, in units of 100
    steps) and a constant; columns standardised (constant ones set to 1); ridge weight ``reg``
    on the standardised normal equations. Returns the fitted values (E, T)."""
    obs = np.clip(np.asarray(obs, np.float64), -10.0, 10.0)
    e, t, _ = obs.shape
    into = np.zeros((e, t))
    for row in range(e):
        count = 0.0
        for step in range(t):
            count = 0.0 if resets[row, step] else count + 1.0
            into[row, step] = count
    left = np.broadcast_to(t - 1.0 - np.arange(t), (e, t))
    powers = [(x / 100.0)[..., None] ** k for x in (into, left) for k in (1, 2, 3)]
    x = np.concatenate([obs, obs ** 2, *powers, np.ones((e, t, 1))], axis=-1).reshape(e * t, -1)
    std = x.std(axis=0)
    constant = std < 1e-6
    z = np.where(constant, 1.0, (x - x.mean(axis=0)) / np.where(constant, 1.0, std))
    y = np.asarray(targets, np.float64).reshape(-1)
    w = np.linalg.solve(z.T @ z / len(z) + reg * np.eye(z.shape[1]), z.T @ y / len(z))
    return (z @ w).reshape(e, t)


def test_policy_gradient_loss_with_a_linear_baseline_matches_its_formula():
    """baseline="linear": advantages are the episode-cut returns-to-go minus a ridge fit of them
    on features of the same trajectory (no value head involved); the reference builds both by
    hand (a Python loop and numpy), not from maml.baseline."""
    policy, params, traj, _, _ = _pg_setup()
    g = _returns_loop(traj.rewards, traj.dones, np.zeros(traj.rewards.shape[0]), 0.95)
    b = _linear_baseline_reference(traj.obs, np.asarray(traj.resets), g)
    loss = rl.policy_gradient_loss(params, traj, policy=policy, gamma=0.95, baseline="linear",
                                   normalize_advantages=False, value_coef=0.0)
    np.testing.assert_allclose(loss, -np.mean(np.asarray(traj.log_probs) * (g - b)), rtol=1e-4, atol=1e-6)
    assert np.var(g - b) < 0.5 * np.var(g)
    with pytest.raises(ValueError, match="baseline must be one of"):
        rl.policy_gradient_loss(params, traj, policy=policy, baseline="critic")


def test_policy_gradient_loss_matches_the_rollout_log_probs():
    """The loss recomputes log-probs with the policy's sequence call (carry reset
    at episode starts); the rollout recorded them step by step. With no baseline
    and no normalisation the loss is -mean(log_prob * G)."""
    policy, params, traj, g, loss = _pg_setup()
    np.testing.assert_allclose(loss(params, traj), -np.mean(np.asarray(traj.log_probs) * g), rtol=1e-4)
    # the full loss: standardised advantages against the value head, plus the value term
    full = rl.policy_gradient_loss(params, traj, policy=policy, gamma=0.95, value_coef=0.5)
    adv = g - np.asarray(traj.values)
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    ref = -np.mean(np.asarray(traj.log_probs) * adv) + 0.5 * np.mean((np.asarray(traj.values) - g) ** 2)
    np.testing.assert_allclose(full, ref, rtol=1e-4)


@pytest.mark.slow
def test_policy_gradient_equals_the_score_function_gradient_through_the_rollout():
    """Its gradient equals the score-function gradient through the rollout's own
    step-by-step log-probs (actions are fixed samples)."""
    policy, params, traj, g, loss = _pg_setup()

    def via_rollout(p):
        return -jnp.mean(_traj(policy, p, num_steps=60).log_probs * g)

    chex.assert_trees_all_close(jax.grad(loss)(params, traj), jax.grad(via_rollout)(params),
                                rtol=1e-3, atol=1e-6)


def test_next_observation_loss_matches_a_python_loop():
    policy = MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=8)
    traj = _traj(policy, jax.jit(policy.init)(jax.random.PRNGKey(1), jnp.zeros((1, 1, 4))), num_steps=50)
    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    predict = lambda p, x, resets: (x @ p, None)  # a tuple output, like an ssm_jax module
    got = rl.next_observation_loss(w, traj, predict_fn=predict, num_actions=2)
    obs, acts, dones = (np.asarray(a) for a in (traj.obs, traj.actions, traj.dones))
    total, count = 0.0, 0
    for e in range(obs.shape[0]):
        for t in range(obs.shape[1]):
            if dones[e, t]:
                continue  # the next observation is the start of a new episode
            nxt = obs[e, t + 1] if t + 1 < obs.shape[1] else np.asarray(traj.last_obs[e])
            x = np.concatenate([obs[e, t], np.eye(2)[acts[e, t]]])
            total += np.sum((x @ np.asarray(w) - (nxt - obs[e, t])) ** 2)
            count += 4
    assert dones.sum() > 0
    np.testing.assert_allclose(got, total / count, rtol=1e-4)


def test_rolled_back_rounds_equal_plain_rollouts():
    """A huge learning rate: every round's step is rolled back, so the params
    never change and each round's return equals a plain rollout with that round's key."""
    policy = MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=16)
    params = jax.jit(policy.init)(jax.random.PRNGKey(2), jnp.zeros((1, 1, 4)))
    task = envs.CartPoleTasks().sample(jax.random.PRNGKey(3), 1, split="test")
    task = jax.tree.map(lambda x: x[0], task)
    objective = functools.partial(rl.policy_gradient_loss, policy=policy)
    key = jax.random.PRNGKey(4)
    final, returns, infos = jax.jit(lambda k: rl.evaluate_with_adaptation(
        k, policy, params, task, objective=objective, optimizer=optax.sgd(1e38), num_rounds=3,
        steps_per_round=100, num_envs=4, env=ENV))(key)
    chex.assert_shape(returns, (3,))
    assert bool(jnp.all(infos.rolled_back)) and int(infos.steps.sum()) == 0
    chex.assert_trees_all_equal(final, params)
    for r, k in enumerate(jax.random.split(key, 3)):
        k_roll, _ = jax.random.split(k)
        traj = envs.rollout(k_roll, policy, params, task, num_envs=4, num_steps=100, env=ENV)
        np.testing.assert_allclose(returns[r], np.mean(_first_episode_loop(traj)), rtol=1e-6)


def _first_episode_loop(traj):
    """Per-env return of the first episode by summing rewards up to the first done."""
    rewards, dones = np.asarray(traj.rewards), np.asarray(traj.dones)
    out = []
    for e in range(rewards.shape[0]):
        total = 0.0
        for t in range(rewards.shape[1]):
            total += float(rewards[e, t])
            if dones[e, t]:
                break
        out.append(total)
    return np.array(out)


def test_first_episode_return_matches_loop_and_is_finite_when_no_episode_ends():
    policy = MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=16)
    params = jax.jit(policy.init)(jax.random.PRNGKey(0), jnp.zeros((1, 1, 4)))
    traj = _traj(policy, params, key=5, num_envs=6, num_steps=25)  # some rows finish twice, some never
    assert bool(jnp.any(traj.dones)) and not bool(jnp.all(jnp.any(traj.dones, axis=1)))
    np.testing.assert_allclose(envs.first_episode_return(traj), _first_episode_loop(traj), rtol=1e-6)
    # a window shorter than any CartPole episode (>= 8 steps): no episode completes, the old
    # completed-episode mean was NaN; the reported return is the partial return (= steps)
    task = jax.tree.map(lambda x: x[0], envs.CartPoleTasks().sample(jax.random.PRNGKey(3), 1))
    _, returns, _ = jax.jit(lambda k: rl.evaluate_with_adaptation(
        k, policy, params, task, objective=functools.partial(rl.policy_gradient_loss, policy=policy),
        optimizer=optax.sgd(1e-3), num_rounds=2, steps_per_round=5, num_envs=3, env=ENV))(
        jax.random.PRNGKey(1))
    np.testing.assert_allclose(returns, [5.0, 5.0])


@pytest.mark.slow
def test_policy_gradient_adaptation_raises_the_return_side_by_side():
    policy = MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=32)
    params = jax.jit(policy.init)(jax.random.PRNGKey(1), jnp.zeros((1, 1, 4)))
    tasks = envs.CartPoleTasks().sample(jax.random.PRNGKey(0), 2, split="test")
    objective = functools.partial(rl.policy_gradient_loss, policy=policy, gamma=0.99)

    @jax.jit
    def evaluate(lr_scale, keys):
        # lr_scale multiplies the adam update: 0 = the same loop without adaptation
        opt = optax.chain(make_optimizer("adam", 0.01), optax.scale(lr_scale))
        return jax.vmap(lambda k, t: rl.evaluate_with_adaptation(
            k, policy, params, t, objective=objective, optimizer=opt, num_rounds=12,
            steps_per_round=500, num_envs=32, env=ENV))(keys, tasks)

    keys = jax.random.split(jax.random.PRNGKey(2), 2)
    _, adapted, infos = evaluate(1.0, keys)
    _, frozen, _ = evaluate(0.0, keys)
    assert int(infos.steps.sum()) == 24
    np.testing.assert_allclose(adapted[:, 0], frozen[:, 0], rtol=1e-6)  # same start
    late_adapted, late_frozen = float(adapted[:, -3:].mean()), float(frozen[:, -3:].mean())
    assert late_adapted > 1.25 * late_frozen, (adapted, frozen)


@pytest.mark.parametrize("replay", [0, 8], ids=["online", "hybrid"])
def test_num_active_rounds_gives_the_shorter_call_from_one_program(replay):
    """A program of `num_rounds` rounds with a traced `num_active_rounds` k equals the call with
    `num_rounds=k` (params, returns and infos first, up to the last bits in which two programs
    may round apart), NaN returns and zero infos after them; compiled once for every k."""
    policy = MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=16)
    params = jax.jit(policy.init)(jax.random.PRNGKey(1), jnp.zeros((1, 1, 4)))
    task = envs.CartPoleTasks().sample(jax.random.PRNGKey(0), 1, split="test")
    task = jax.tree.map(lambda x: x[0], task)
    run = functools.partial(
        rl.evaluate_with_adaptation, policy=policy, task=task, optimizer=optax.sgd(0.05),
        objective=functools.partial(rl.policy_gradient_loss, policy=policy, gamma=0.99),
        steps_per_round=60, num_envs=3, env=ENV, replay_capacity=replay, replay_ratio=0.5)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def upto(key, k):
        return run(key, params=params, num_rounds=4, num_active_rounds=k)

    for k in (0, 1, 3, 4):
        own = jax.jit(lambda key: run(key, params=params, num_rounds=k))(jax.random.PRNGKey(2)) if k else (
            params, jnp.zeros((0,)), None)
        final, returns, infos = upto(jax.random.PRNGKey(2), jnp.int32(k))
        chex.assert_trees_all_close(final, own[0], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(returns[:k], own[1], rtol=1e-6)
        assert np.all(np.isnan(np.asarray(returns[k:])))
        if k:
            chex.assert_trees_all_close(jax.tree.map(lambda x: x[:k], infos), own[2], rtol=1e-5, atol=1e-7)
        assert all(np.all(np.asarray(x[k:]) == 0) for x in jax.tree.leaves(infos))
    for bad, needle in ((5, "num_active_rounds must be <= num_rounds"), (-1, "num_active_rounds must be")):
        with pytest.raises(ValueError, match=needle):
            run(jax.random.PRNGKey(2), params=params, num_rounds=4, num_active_rounds=bad)
    with jax.threefry_partitionable(False), pytest.raises(ValueError, match="jax_threefry_partitionable"):
        run(jax.random.PRNGKey(2), params=params, num_rounds=4, num_active_rounds=1)


def test_hybrid_self_supervised_adaptation_jits_without_retracing():
    """Adapting a joint {policy, model} pytree with the next-observation loss of an
    SSM predictor and replay of earlier rounds: runs under jit, losses fall, no retrace."""
    policy = MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=16)
    model = SSM(state_dim=4, input_dim=6, output_dim=4, hidden_dim=8)
    params = {"policy": jax.jit(policy.init)(jax.random.PRNGKey(0), jnp.zeros((1, 1, 4))),
              "model": jax.jit(model.init)(jax.random.PRNGKey(1), jnp.zeros((1, 1, 6)))}
    objective = functools.partial(
        rl.next_observation_loss, num_actions=2,
        predict_fn=lambda p, x, resets: model.apply(p["model"], x, resets=resets))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def evaluate(params, key):
        return rl.evaluate_with_adaptation(
            key, policy, params, None, objective=objective, optimizer=make_optimizer("adam", 3e-3),
            num_rounds=4, steps_per_round=40, num_envs=4, adapt_steps_per_round=5,
            policy_params_fn=lambda p: p["policy"], replay_capacity=32, replay_ratio=0.5, env=ENV)

    final, returns, infos = evaluate(params, jax.random.PRNGKey(2))
    final, returns, infos = evaluate(final, jax.random.PRNGKey(3))
    chex.assert_tree_all_finite(final)
    chex.assert_shape(infos.loss_before, (4,))
    assert bool(jnp.all(infos.steps == 5))
    assert float(infos.loss_after[-1]) < float(infos.loss_after[0])
    assert bool(jnp.all(infos.loss_after < infos.loss_before))
    chex.assert_trees_all_equal(final["policy"], params["policy"])  # the predictor does not move the policy
