"""adapt.evaluate_within_episode (weights updated during an episode, every K steps, from its data
so far) against a Python loop that steps every env by hand; the window equals envs.rollout's
when every update is rolled back; the masked episode-so-far batch of the MAML inner loss
(test_time_within_episode's rule) equals the plain batch of the same steps without padding.

`within_episode_loop` is the reference test_evaluation.py also runs on the benchmark's rule.
"""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import adapt
import envs
from envs.rollout import Trajectory
from maml import MAMLRL, MAMLRLConfig
from ssm_jax import SSMPolicy

POLICY = SSMPolicy(obs_dim=4, action_dim=2, state_dim=4, hidden_dim=8)
ENV = envs.make("CartPole-v1")[0]


@functools.lru_cache(maxsize=None)
def _jitted(policy, env):
    step = jax.jit(lambda p, o, c, r: policy.apply(p, o, c, r, method="step"))
    reset = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))
    env_step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    return step, reset, env_step


@functools.lru_cache(maxsize=None)
def _guarded_step_fns(objective, make_batch):
    grad = jax.jit(jax.value_and_grad(objective))
    batch = jax.jit(make_batch)
    return grad, batch


def within_episode_loop(key, policy, params, task, *, objective, make_batch, lrs, num_envs, num_steps,
                        chunk_steps, env, threshold=math.inf, stop_early=False):
    """The rule of `adapt.evaluate_within_episode`, by hand: every env stepped one step at a time
    (its own weights, batch of one), actions sampled together with the documented keys; after
    each chunk (but the last) each env whose first episode is still running builds its episode so
    far (right-aligned in a `(1, T)` window of zero padding, a valid mask), takes `p - lr * grad`
    and keeps it iff the loss, gradient and new params are finite and the new loss (and its
    gradient) are finite and <= `threshold`. `lrs`: params-shaped step sizes. Returns (first
    episode returns (E,), actions (E, t) of the steps run, accepted and rolled-back updates per
    env (E,), final weights per env); `stop_early`: stop once every first episode has ended.
    """
    step, reset_fn, env_step = _jitted(policy, env)
    grad, to_batch = _guarded_step_fns(objective, make_batch)
    E, T, K = num_envs, num_steps, chunk_steps
    key_reset, key_steps = jax.random.split(key)
    obs, state = reset_fn(jax.random.split(key_reset, E), task)
    step_keys = jax.random.split(key_steps, T)
    weights = [params] * E
    carries = [policy.initialize_carry(1)] * E
    resets = [True] * E
    rec = {k: [[] for _ in range(E)] for k in ("obs", "actions", "rewards", "log_probs", "values", "dones")}
    accepted, rejected = [0] * E, [0] * E
    first_return, running = [None] * E, [0.0] * E
    for t in range(T):
        k_policy, k_env = jax.random.split(step_keys[t])
        outs = []
        for e in range(E):
            out, carries[e] = step(weights[e], obs[e][None], carries[e], jnp.array([resets[e]]))
            outs.append(out)
        logits = jnp.concatenate([o.dist.logits for o in outs])
        actions = jax.random.categorical(k_policy, logits).astype(jnp.int32)
        logp = jax.nn.log_softmax(logits)[jnp.arange(E), actions]
        next_obs, state, reward, term, trunc, _ = env_step(jax.random.split(k_env, E), state, actions, task)
        done = np.asarray(term | trunc)
        for e in range(E):
            for name, value in (("obs", obs[e]), ("actions", actions[e]), ("rewards", reward[e]),
                                ("log_probs", logp[e]), ("values", outs[e].value[0]), ("dones", done[e])):
                rec[name][e].append(np.asarray(value))
            running[e] += float(reward[e])
            if done[e] and first_return[e] is None:
                first_return[e] = running[e]
            resets[e] = bool(done[e])
        obs = next_obs
        if stop_early and all(r is not None for r in first_return):
            break
        if (t + 1) % K or t + 1 == T:
            continue
        n = t + 1
        for e in range(E):
            if first_return[e] is not None:
                continue
            last_out, _ = step(weights[e], obs[e][None], carries[e], jnp.array([False]))
            pad = lambda xs, dtype: np.concatenate(  # noqa: E731
                [np.zeros((T - n,) + np.shape(xs[0]), dtype), np.asarray(xs, dtype)])[None]
            never = np.zeros((1, T), bool)
            episode = Trajectory(
                obs=pad(rec["obs"][e], np.float32), actions=pad(rec["actions"][e], np.int32),
                rewards=pad(rec["rewards"][e], np.float32), dones=never, terminated=never, truncated=never,
                log_probs=pad(rec["log_probs"][e], np.float32), values=pad(rec["values"][e], np.float32),
                resets=(np.arange(T) == T - n)[None], episode_returns=np.zeros((1, T), np.float32),
                last_obs=obs[e][None], last_reset=np.zeros((1,), bool), last_value=last_out.value,
                final_carry=carries[e])
            batch = to_batch(episode, (np.arange(T) >= T - n)[None])
            loss, g = grad(weights[e], batch)
            new = jax.tree.map(lambda p, lr, gr: p - lr * gr, weights[e], lrs, g)
            new_loss, new_g = grad(new, batch)
            finite = all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((loss, g, new, new_loss, new_g)))
            if finite and float(new_loss) <= threshold:
                weights[e], accepted[e] = new, accepted[e] + 1
            else:
                rejected[e] += 1
    returns = np.array([r if r is not None else running[e] for e, r in enumerate(first_return)])
    actions = np.stack([np.stack(a) for a in rec["actions"]])
    return returns, actions, np.array(accepted), np.array(rejected), weights


def _objective(params, batch):
    """A loss reading everything the episode so far holds: log-probs under `params` from the
    sequence apply with the window's resets, the logged log-probs, rewards, observations and
    the valid mask."""
    traj, valid = batch
    out, _ = POLICY.apply(params, traj.obs, resets=traj.resets)
    ratio = jnp.exp(out.dist.log_prob(traj.actions) - traj.log_probs)
    signal = traj.rewards - 4.0 * traj.obs[..., 2] + 0.1 * traj.last_value[:, None]
    return -jnp.sum(jnp.where(valid, ratio * signal, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def _pair(traj, valid):
    return traj, valid


def _run(key, params, task, objective, chunk_steps, lr=2.0, threshold=math.inf, num_steps=60):
    return jax.jit(lambda k, p: adapt.evaluate_within_episode(
        k, POLICY, p, task, objective=objective, optimizer=optax.sgd(lr), num_envs=3, num_steps=num_steps,
        chunk_steps=chunk_steps, divergence_threshold=threshold, env=ENV))(key, params)


@pytest.fixture(scope="module")
def setup():
    params = POLICY.init(jax.random.key(1), jnp.zeros((1, 1, 4)))
    task = envs.make_cartpole_params(length=0.5, masspole=0.1, masscart=1.0, gravity=9.8, force_mag=10.0)
    return params, task


def test_updates_within_the_episode_equal_a_python_loop(setup):
    params, task = setup
    key = jax.random.key(7)
    result = _run(key, params, task, _objective, chunk_steps=12)
    lrs = jax.tree.map(lambda p: jnp.full_like(p, 2.0), params)
    returns, actions, accepted, rejected, weights = within_episode_loop(
        key, POLICY, params, task, objective=_objective, make_batch=_pair, lrs=lrs, num_envs=3,
        num_steps=60, chunk_steps=12, env=ENV)
    np.testing.assert_array_equal(np.asarray(result.traj.actions), actions)
    np.testing.assert_allclose(np.asarray(result.returns), returns)
    np.testing.assert_array_equal(np.asarray(jnp.sum(result.infos.steps, axis=0)), accepted)
    np.testing.assert_array_equal(np.asarray(jnp.sum(result.infos.rollbacks, axis=0)), rejected)
    assert accepted.max() >= 2, "some episode adapts several times"
    for e in range(3):
        chex.assert_trees_all_close(jax.tree.map(lambda x: x[e], result.params), weights[e], rtol=1e-4, atol=1e-5)
    # an update happened only while the env's first episode ran, and changed what it did next
    first_end = [int(np.argmax(d)) if d.any() else 60 for d in np.asarray(result.traj.dones)]
    attempted = np.asarray(result.attempted)  # (C - 1, E)
    for e in range(3):
        np.testing.assert_array_equal(attempted[:, e], 12 * np.arange(1, 5) <= first_end[e])
    plain = envs.rollout(key, POLICY, params, task, num_envs=3, num_steps=60, env=ENV)
    assert not np.array_equal(np.asarray(plain.actions), actions)


@pytest.mark.parametrize("why", ["non-finite loss", "loss above the divergence threshold"])
def test_rolled_back_updates_leave_the_window_of_a_plain_rollout(setup, why):
    """Every update rejected: the weights never move and the window (actions, rewards, the
    log-probs acted with) is envs.rollout's with the same key, as with K = the window."""
    params, task = setup
    key = jax.random.key(3)
    if why == "non-finite loss":
        result = _run(key, params, task, lambda p, b: _objective(p, b) * jnp.nan, chunk_steps=12)
    else:
        result = _run(key, params, task, lambda p, b: _objective(p, b) + 1e3, chunk_steps=12, threshold=100.0)
    plain = envs.rollout(key, POLICY, params, task, num_envs=3, num_steps=60, env=ENV)
    no_update = _run(key, params, task, _objective, chunk_steps=60)
    for r in (result, no_update):
        np.testing.assert_array_equal(np.asarray(r.traj.actions), np.asarray(plain.actions))
        np.testing.assert_array_equal(np.asarray(r.traj.rewards), np.asarray(plain.rewards))
        np.testing.assert_allclose(np.asarray(r.traj.log_probs), np.asarray(plain.log_probs), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(r.returns), np.asarray(envs.first_episode_return(plain)))
        for e in range(3):
            chex.assert_trees_all_equal(jax.tree.map(lambda x: x[e], r.params), params)
    attempted = np.asarray(result.attempted)
    assert attempted.any() and no_update.attempted.shape == (0, 3)
    np.testing.assert_array_equal(np.asarray(result.infos.rollbacks), attempted.astype(np.int32))
    assert not np.asarray(result.infos.steps).any()


def test_bad_chunk_is_refused_before_tracing(setup):
    params, task = setup
    with pytest.raises(ValueError, match=r"chunk_steps must divide num_steps \(60\), got 7"):
        adapt.evaluate_within_episode(jax.random.key(0), POLICY, params, task, objective=_objective,
                                      optimizer=optax.sgd(0.1), num_envs=2, num_steps=60, chunk_steps=7, env=ENV)
    with pytest.raises(ValueError, match="chunk_steps must be a positive int"):
        adapt.evaluate_within_episode(jax.random.key(0), POLICY, params, task, objective=_objective,
                                      optimizer=optax.sgd(0.1), num_envs=2, num_steps=60, chunk_steps=0, env=ENV)


# ------------------------------------------------------------------ the benchmark's rule


@pytest.mark.parametrize("baseline", ["linear", "value"])
def test_masked_episode_so_far_equals_the_plain_batch_of_its_steps(baseline):
    """The MAML inner loss on an episode so far right-aligned in a padded window with its mask
    (`MAMLRL.batch_of(..., mask)`, `inner_objective(..., mask)`) equals the loss on the same
    steps as a plain `(1, n)` trajectory, with its gradient, away from the sampling params (so
    the importance ratio is not 1), and does not depend on what the padding holds.

    Within one episode the linear baseline's time features are collinear (steps into the
    episode + steps left in the window = n - 1), so its ridge fit is solved near a singular
    system and float32 rounding moves the fit between any two orderings of the same sums (by
    ~1% of an advantage on some CPUs, up to ~15% on an AVX2 EPYC): against the plain batch the
    linear case checks the returns exactly and the advantages, loss and gradient up to that
    noise (a fit that saw the padding would not correlate); the padding check is exact.
    """
    algo = MAMLRL(POLICY, MAMLRLConfig(baseline=baseline, gae_lambda=0.9 if baseline == "value" else 1.0))
    params = POLICY.init(jax.random.key(4), jnp.zeros((1, 1, 4)))
    # a long pole in low gravity falls slowly: 40 steps (more than the baseline's 15 features)
    task = envs.make_cartpole_params(length=1.0, masspole=0.1, masscart=1.0, gravity=4.0, force_mag=10.0)
    n, T = 40, 64
    plain = envs.rollout(jax.random.key(0), POLICY, params, task, num_envs=1, num_steps=n, env=ENV)
    assert not np.asarray(plain.dones).any()
    fields = ("obs", "actions", "rewards", "dones", "terminated", "truncated", "log_probs", "values", "resets",
              "episode_returns")

    def padded_with(fill):
        pad = lambda x: jnp.concatenate([fill(x), x], axis=1)  # noqa: E731
        return plain.replace(**{f: pad(getattr(plain, f)) for f in fields})

    zeros = padded_with(lambda x: jnp.zeros((1, T - n) + x.shape[2:], x.dtype))
    junk = padded_with(lambda x: jnp.full((1, T - n) + x.shape[2:], 1 if x.dtype == jnp.int32 else 0.3, x.dtype)
                       if x.dtype != jnp.bool_ else jnp.zeros((1, T - n), bool))
    junk = junk.replace(rewards=junk.rewards.at[:, :T - n].set(7.0))
    valid = (jnp.arange(T) >= T - n)[None]
    assert bool(zeros.resets[0, T - n]) and int(jnp.sum(zeros.resets)) == 1
    masked, whole, other = algo.batch_of(zeros, mask=valid), algo.batch_of(plain), algo.batch_of(junk, mask=valid)
    tol = dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(masked.returns[:, T - n:], whole.returns, **tol)
    if baseline == "linear":
        assert np.corrcoef(masked.advantages[0, T - n:], whole.advantages[0])[0, 1] > 0.98
        np.testing.assert_allclose(masked.advantages[:, T - n:], whole.advantages, atol=0.3)
    else:
        np.testing.assert_allclose(masked.advantages[:, T - n:], whole.advantages, **tol)
    np.testing.assert_allclose(masked.advantages, other.advantages, rtol=1e-6, atol=1e-6)
    assert not np.asarray(masked.advantages[:, :T - n]).any()
    moved = jax.tree.map(lambda p: p + 0.05 * jnp.sign(p), params)
    loss_grad = jax.value_and_grad(lambda p, b, m: algo.inner_objective(p, b, mask=m)[0])
    loss_m, grad_m = loss_grad(moved, masked, valid)
    loss_o, grad_o = loss_grad(moved, other, valid)
    loss_w, grad_w = jax.value_and_grad(lambda p: algo.inner_objective(p, whole)[0])(moved)
    assert abs(float(loss_w)) > 1e-3
    if baseline == "linear":
        np.testing.assert_allclose(loss_m, loss_w, rtol=0.25)
        g_m, g_w = ravel_pytree(grad_m)[0], ravel_pytree(grad_w)[0]  # the whole gradient, one vector
        assert float(jnp.linalg.norm(g_m - g_w)) <= 0.25 * float(jnp.linalg.norm(g_w))
    else:
        np.testing.assert_allclose(loss_m, loss_w, **tol)
        chex.assert_trees_all_close(grad_m, grad_w, **tol)
    np.testing.assert_allclose(loss_m, loss_o, rtol=1e-6)
    chex.assert_trees_all_close(grad_m, grad_o, rtol=1e-5, atol=1e-7)


def test_a_run_rolls_out_the_within_episode_method_as_its_evaluation_does():
    """`benchmarks.runs`: test_time_within_episode adapts during the episode (no updates before
    it), and `rollout_episode` is the first episode of its evaluation window in one env, weight
    updates included (`evaluation.within_episode_window`)."""
    from benchmarks import runs
    from benchmarks.config import BenchmarkConfig
    from benchmarks.methods import METHODS_BY_NAME
    from benchmarks.trainers import build_trainer

    config = BenchmarkConfig.quick_preset().with_values({
        "policy.hidden_dim": 8, "policy.state_dim": 4, "evaluation.within_episode_chunk": 10, "maml.rl.inner_lr": 2.0,
        "methods": ("test_time_within_episode",), "num_seeds": 1})
    trainer = build_trainer("maml_ssm", config)
    states = jax.vmap(trainer.init)(jax.random.split(jax.random.key(2), 1))
    p = runs.MethodPolicy(METHODS_BY_NAME["test_time_within_episode"], trainer, states, config)
    assert p.adaptation == "within_episode" and p.default_adapt_steps == 0
    task = runs.make_task(length=1.0, gravity=4.0)
    params, before = p.adapt(0, task, jax.random.key(0))
    assert before.shape == (0,)
    chex.assert_trees_all_equal(params, p.params(0))
    with pytest.raises(ValueError, match="it adapts them during the episode"):
        p.adapt(0, task, jax.random.key(0), num_steps=1)
    with pytest.raises(ValueError, match="deterministic must be False"):
        runs.rollout_episode(p, 0, task, jax.random.key(1), deterministic=True)
    episode = runs.rollout_episode(p, 0, task, jax.random.key(1))
    k_roll = jax.random.split(jax.random.key(1))[1]
    window = runs._within_episode_traj(k_roll, trainer.algo, p.state(0), task, 10)  # its (1, 500) window
    ends = np.flatnonzero(np.asarray(window.dones[0]))
    assert episode.length == (int(ends[0]) + 1 if ends.size else 500) > 10
    np.testing.assert_array_equal(episode.actions, np.asarray(window.actions[0, :episode.length]))
    np.testing.assert_array_equal(episode.states, np.asarray(window.obs[0, :episode.length], np.float64))
    assert episode.total == float(np.sum(window.rewards[0, :episode.length]))
    # the weights moved during the episode: the same keys without updates act otherwise
    plain = envs.rollout(k_roll, p.policy, p.params(0), task, num_envs=1, num_steps=500, env=p.env)
    assert not np.array_equal(np.asarray(plain.actions[0, :episode.length]), episode.actions)
    np.testing.assert_array_equal(np.asarray(plain.actions[0, :10]), episode.actions[:10])
