"""maml.ppo: a library algorithm (importable without ``benchmarks``); at the sampling params the
clipped loss is the plain policy gradient (ratio 1, approximate KL 0), away from them it is the
hand-computed clipped surrogate; one ``update`` takes ``update_epochs x num_minibatches`` Adam
steps on minibatches of whole (task, env) rows, the first one on-policy; config validation."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs.context import ContextWrapper
from maml import PPO, PPOConfig, PPOState, onpolicy
from ssm_jax import MLPPolicy, SSMPolicy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(num_tasks=2, num_envs=2, num_steps=24, num_minibatches=2, update_epochs=3,
             total_iterations=5)


def test_ppo_imports_without_benchmarks():
    code = ("import sys\n"
            "from maml import PPO, PPOConfig, PPOState\n"
            "from maml.ppo import PPO as P\n"
            "assert P is PPO\n"
            "loaded = sorted(m for m in sys.modules if m == 'benchmarks' or m.startswith('benchmarks.'))\n"
            "assert not loaded, loaded\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr


_BATCH_FNS = {}


def _batch_fn(ppo):
    """``_batch_at_sampling_params`` jitted once per (policy, rollout and GAE settings), so tests
    with PPO objects that differ only in their loss weights share the compilation."""
    c = ppo.config
    spec = (ppo.policy, ppo.env, ppo.task_dist, c.num_tasks, c.num_envs, c.num_steps, c.carry_across_episodes, c.gamma,
            c.gae_lambda, c.reward_scale)
    if spec not in _BATCH_FNS:
        _BATCH_FNS[spec] = jax.jit(lambda params, key: _batch_at_sampling_params(ppo, params, key),
                                   static_argnums=1)
    return _BATCH_FNS[spec]


def _batch_at_sampling_params(ppo, params, key):
    """The minibatch layout of ``PPO._loss`` built from a rollout with ``params`` itself."""
    c = ppo.config
    tasks = ppo.task_dist.sample(jax.random.key(key), c.num_tasks, "train")
    traj = envs.rollout_tasks(jax.random.key(key + 1), ppo.policy, params, tasks,
                              num_envs=c.num_envs, num_steps=c.num_steps, env=ppo.env,
                              carry_across_episodes=c.carry_across_episodes)
    rows = c.num_tasks * c.num_envs
    flat = lambda x: x.reshape((rows,) + x.shape[2:])
    adv, targets = onpolicy.gae(flat(traj.rewards) * c.reward_scale, flat(traj.values),
                                flat(traj.terminated), flat(traj.truncated), flat(traj.last_value),
                                c.gamma, c.gae_lambda)
    resets = onpolicy.policy_resets(flat(traj.resets), c.carry_across_episodes)
    return (flat(traj.obs), flat(traj.actions), resets, flat(traj.log_probs), adv, targets), traj


@pytest.mark.parametrize("policy, carry_across", [
    (MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=8), False),
    (SSMPolicy(obs_dim=4, action_dim=2, state_dim=4, hidden_dim=8), True),  # RL^2's setting
])
def test_loss_at_the_sampling_params_is_the_plain_policy_gradient(policy, carry_across):
    ppo = PPO(policy, PPOConfig(**SMALL, value_coef=0.0, entropy_coef=0.0,
                                carry_across_episodes=carry_across))
    params = ppo.init(jax.random.key(0)).params
    batch, traj = _batch_fn(ppo)(params, 1)
    obs, actions, resets, old_logp, adv, targets = batch
    assert int(jnp.sum(traj.dones)) > 0

    a = np.asarray(adv, np.float64)
    adv_n = (a - a.mean()) / (a.std() + 1e-8)
    adv_n32 = jnp.asarray(adv_n, jnp.float32)

    def reinforce(p):
        out, _ = policy.apply(p, obs, resets=resets)
        return -jnp.mean(out.dist.log_prob(actions) * adv_n32)

    @jax.jit
    def losses_and_grads(p):
        (loss, parts), g_ppo = jax.value_and_grad(ppo._loss, has_aux=True)(p, batch)
        return loss, parts, g_ppo, jax.grad(reinforce)(p)

    loss, (pg, vloss, ent, kl), g_ppo, g_ref = losses_and_grads(params)
    # the sequence apply reproduces the rollout's log-probs: ratio 1, no KL, and the clipped
    # surrogate is -mean(normalised advantages) (0 up to rounding)
    assert float(kl) == 0.0
    np.testing.assert_allclose(float(pg), -adv_n.mean(), atol=1e-6)
    np.testing.assert_allclose(float(loss), float(pg), rtol=0, atol=0)  # both coefficients 0
    values = np.asarray(traj.values).reshape(a.shape)
    np.testing.assert_allclose(float(vloss), np.mean((values - np.asarray(targets)) ** 2), rtol=1e-5)
    # and its gradient is the policy gradient -mean(grad log pi(a|s) * A_normalised)
    for x, y in zip(jax.tree.leaves(g_ppo), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kw, match", [
    (dict(update_epochs=0), "update_epochs must be a positive int"),
    (dict(num_minibatches=3), "num_minibatches .* must divide"),
    (dict(anneal_lr=1), "anneal_lr must be a bool"),
    (dict(carry_across_episodes="yes"), "carry_across_episodes must be a bool"),
    (dict(lr=0.0), "lr must be > 0"),
    (dict(gamma=1.5), "gamma must be <= 1"),
])
def test_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        PPOConfig(**kw)


def test_clipped_loss_against_a_hand_computation_away_from_the_sampling_params():
    """At params that did not sample the data (ratios away from 1, some clipped): the loss and
    its parts from numpy on the policy's own log-probs, values and entropies."""
    policy = MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=8)
    ppo = PPO(policy, PPOConfig(**SMALL, value_coef=0.5, entropy_coef=0.01, clip_eps=0.1))
    params = ppo.init(jax.random.key(0)).params
    batch, _ = _batch_fn(ppo)(params, 1)
    moved = jax.tree.map(lambda p, k: p + 0.3 * jax.random.normal(k, p.shape),
                         params, _leaf_keys(params, jax.random.key(5)))
    loss, (pg, vloss, ent, kl) = jax.jit(ppo._loss)(moved, batch)

    obs, actions, resets, old_logp, adv, targets = batch
    out, _ = policy.apply(moved, obs, resets=resets)
    logp = np.asarray(out.dist.log_prob(actions), np.float64)
    ratio = np.exp(logp - np.asarray(old_logp, np.float64))
    a = np.asarray(adv, np.float64)
    a = (a - a.mean()) / (a.std() + 1e-8)
    unclipped, clipped = ratio * a, np.clip(ratio, 0.9, 1.1) * a
    assert np.mean(clipped < unclipped) > 0.05          # the clip is active on part of the batch
    pg_ref = -np.mean(np.minimum(unclipped, clipped))
    v_ref = np.mean((np.asarray(out.value, np.float64) - np.asarray(targets, np.float64)) ** 2)
    ent_ref = np.mean(np.asarray(out.dist.entropy(), np.float64))
    kl_ref = np.mean((ratio - 1.0) - np.log(ratio))
    np.testing.assert_allclose([pg, vloss, ent, kl], [pg_ref, v_ref, ent_ref, kl_ref], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(loss, pg_ref + 0.5 * v_ref - 0.01 * ent_ref, rtol=1e-4, atol=1e-6)
    assert kl_ref > 1e-3 and not np.isclose(pg_ref, -np.mean(ratio * a))


def _leaf_keys(tree, key):
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(treedef, list(jax.random.split(key, len(leaves))))


@pytest.mark.parametrize("carry_across", [False, True], ids=["mlp", "rl2"])
def test_update_takes_epochs_x_minibatches_steps_on_whole_rows_the_first_on_policy(carry_across):
    """One update is update_epochs x num_minibatches Adam steps. Every minibatch of an update (recorded from inside the jitted update) holds whole
    (task, env) rows: each epoch's minibatches partition the rows, and each row's log-probs,
    recomputed from its observations by the sampling params, are the ones it was sampled with
    (so a row is never cut in time nor mixed with another's). The first minibatch step is at
    the sampling params: approx_kl exactly 0. With carry_across (RL^2: an SSM on context
    observations, carry kept across episodes) the rows start from a zero carry only at t = 0."""
    base = envs.make("CartPole-v1")[0]
    if carry_across:
        env = ContextWrapper(base)
        policy = SSMPolicy(obs_dim=8, action_dim=2, state_dim=4, hidden_dim=8)
    else:
        env, policy = base, MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=8)
    ppo = PPO(policy, PPOConfig(**SMALL, carry_across_episodes=carry_across), env=env)
    state = ppo.init(jax.random.key(0))
    seen = []
    loss = ppo._loss

    def recording_loss(params, batch):
        value, aux = loss(params, batch)
        jax.debug.callback(lambda b, a: seen.append((jax.tree.map(np.asarray, b), np.asarray(a[3]))),
                           batch, aux, ordered=True)
        return value, aux

    ppo._loss = recording_loss
    new, metrics = jax.jit(ppo.update)(state, jax.random.key(1))
    jax.effects_barrier()
    c = ppo.config
    # one iteration: update_epochs x num_minibatches Adam steps, scalar finite metrics
    assert isinstance(new, PPOState) and int(new.step) == 1
    assert set(metrics) == {"episode_return", "policy_loss", "value_loss", "entropy", "approx_kl"}
    assert all(m.shape == () and bool(jnp.isfinite(m)) for m in metrics.values())
    counts = [int(x) for x in jax.tree.leaves(new.opt_state) if jnp.ndim(x) == 0 and x.dtype == jnp.int32]
    assert counts and all(n == 3 * 2 for n in counts)
    assert ppo.env_steps_per_update == 2 * 2 * 24
    rows = c.num_tasks * c.num_envs
    assert len(seen) == c.update_epochs * c.num_minibatches
    assert seen[0][1] == 0.0 and float(metrics["approx_kl"]) > 0.0  # later steps are off-policy

    recompute = jax.jit(lambda obs, resets, actions: policy.apply(state.params, obs, resets=resets)[0]
                        .dist.log_prob(actions))
    for epoch in range(c.update_epochs):
        epoch_rows = []
        for batch, _ in seen[epoch * c.num_minibatches:(epoch + 1) * c.num_minibatches]:
            obs, actions, resets, old_logp, _, _ = batch
            assert obs.shape == (rows // c.num_minibatches, c.num_steps, policy.obs_dim)
            np.testing.assert_array_equal(resets[:, 0], True)
            if carry_across:
                assert not resets[:, 1:].any()
            np.testing.assert_allclose(recompute(obs, resets, actions), old_logp, rtol=1e-5, atol=1e-5)
            epoch_rows += [row.tobytes() for row in obs]
        assert len(set(epoch_rows)) == rows  # every row exactly once per epoch
