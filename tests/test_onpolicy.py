"""maml.onpolicy: GAE and returns-to-go against references written as explicit forward sums
(not the backward recursion the module uses), their lambda = 1 / lambda = 0 identities,
advantage normalisation, segment returns counted by hand, and the policy-reset contract (the
sequence apply reproduces a rollout's log-probs)."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from maml import onpolicy
from ssm_jax import SSMPolicy

E, T = 3, 12
# Hand-placed episode ends: row 0 terminates at t=3 and is truncated at t=8; row 1 is
# truncated at the window's last step; row 2 terminates at the last step and at t=5.
TERMINATED = np.zeros((E, T), bool)
TRUNCATED = np.zeros((E, T), bool)
TERMINATED[0, 3] = TRUNCATED[0, 8] = TRUNCATED[1, T - 1] = TERMINATED[2, 5] = TERMINATED[2, T - 1] = True


def _data(seed=0):
    rng = np.random.default_rng(seed)
    rewards = rng.uniform(size=(E, T)).astype(np.float32)
    values = rng.normal(size=(E, T)).astype(np.float32)
    last_value = rng.normal(size=E).astype(np.float32)
    return rewards, values, last_value


def _forward_sum_returns(rewards, ends, bootstrap, gamma, truncated=None, trunc_values=None):
    """G_t = sum_{k=0}^{n-1} gamma^k r_{t+k} + gamma^n * tail, n the steps to the episode's
    end (inclusive) or to the window end; tail 0 at a termination, the truncation value at a
    truncation, ``bootstrap`` at the window end."""
    truncated = np.zeros(rewards.shape, bool) if truncated is None else truncated
    g = np.zeros(rewards.shape, np.float64)
    for e in range(rewards.shape[0]):
        for t in range(rewards.shape[1]):
            total, disc, u = 0.0, 1.0, t
            while True:
                total += disc * rewards[e, u]
                disc *= gamma
                if truncated[e, u]:
                    total += disc * trunc_values[e, u]
                    break
                if ends[e, u]:
                    break
                if u == rewards.shape[1] - 1:
                    total += disc * bootstrap[e]
                    break
                u += 1
            g[e, t] = total
    return g


def _forward_sum_gae(rewards, values, terminated, truncated, last_value, gamma, lam):
    """A_t = sum_k (gamma lam)^k delta_{t+k} over the rest of the episode within the window,
    delta_t = r_t + gamma * next_t - v_t with next_t as in the contract."""
    n_e, n_t = rewards.shape
    nxt = np.zeros((n_e, n_t))
    for e in range(n_e):
        for t in range(n_t):
            if terminated[e, t]:
                nxt[e, t] = 0.0
            elif truncated[e, t]:
                nxt[e, t] = values[e, t]
            else:
                nxt[e, t] = values[e, t + 1] if t + 1 < n_t else last_value[e]
    delta = rewards + gamma * nxt - values
    adv = np.zeros((n_e, n_t))
    for e in range(n_e):
        for t in range(n_t):
            u, w = t, 1.0
            while True:
                adv[e, t] += w * delta[e, u]
                if terminated[e, u] or truncated[e, u] or u == n_t - 1:
                    break
                w *= gamma * lam
                u += 1
    return adv


GAE = jax.jit(onpolicy.gae, static_argnums=(5, 6))
RETURNS = jax.jit(onpolicy.discounted_returns, static_argnums=3)


@pytest.mark.parametrize("gamma, lam", [(0.9, 0.8), (0.99, 0.95)])
def test_gae_matches_a_forward_sum_with_terminations_truncations_and_the_window_end(gamma, lam):
    rewards, values, last_value = _data()
    adv, targets = GAE(rewards, values, TERMINATED, TRUNCATED, last_value, gamma, lam)
    ref = _forward_sum_gae(rewards, values, TERMINATED, TRUNCATED, last_value, gamma, lam)
    np.testing.assert_allclose(adv, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(targets, ref + values, rtol=1e-5, atol=1e-5)
    # the three kinds of end, checked by hand at their last steps
    np.testing.assert_allclose(adv[0, 3], rewards[0, 3] - values[0, 3], rtol=1e-6)                   # termination
    np.testing.assert_allclose(adv[1, -1], rewards[1, -1] + gamma * values[1, -1] - values[1, -1], rtol=1e-5)  # truncation
    np.testing.assert_allclose(adv[0, -1], rewards[0, -1] + gamma * last_value[0] - values[0, -1], rtol=1e-5)  # window end


def test_gae_with_lambda_one_is_the_bootstrapped_returns_minus_the_values():
    rewards, values, last_value = _data(1)
    gamma = 0.95
    adv, targets = GAE(rewards, values, TERMINATED, TRUNCATED, last_value, gamma, 1.0)
    returns = RETURNS(rewards, TERMINATED | TRUNCATED, last_value, gamma, TRUNCATED, values)
    np.testing.assert_allclose(targets, returns, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(adv, returns - values, rtol=1e-5, atol=1e-5)
    # a zero bootstrap and no truncation flags: returns cut at every end and at the window end
    ends = TERMINATED | TRUNCATED
    zeros = np.zeros(E, np.float32)
    adv_cut, _ = GAE(rewards, values, ends, np.zeros_like(ends), zeros, gamma, 1.0)
    np.testing.assert_allclose(adv_cut, RETURNS(rewards, ends, zeros, gamma) - values, rtol=1e-5, atol=1e-5)


def test_gae_with_lambda_zero_is_the_one_step_td_error():
    rewards, values, last_value = _data(2)
    gamma = 0.9
    adv, _ = GAE(rewards, values, TERMINATED, TRUNCATED, last_value, gamma, 0.0)
    nxt = np.concatenate([values[:, 1:], last_value[:, None]], axis=1)
    nxt = np.where(TERMINATED, 0.0, np.where(TRUNCATED, values, nxt))
    np.testing.assert_allclose(adv, rewards + gamma * nxt - values, rtol=1e-5, atol=1e-6)


def test_discounted_returns_match_a_forward_sum_with_and_without_truncation_bootstrap():
    rewards, values, last_value = _data(3)
    ends = TERMINATED | TRUNCATED
    got = RETURNS(rewards, ends, last_value, 0.9)
    np.testing.assert_allclose(got, _forward_sum_returns(rewards, ends, last_value, 0.9), rtol=1e-5, atol=1e-5)
    got = RETURNS(rewards, ends, last_value, 0.9, TRUNCATED, values)
    ref = _forward_sum_returns(rewards, ends, last_value, 0.9, TRUNCATED, values)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # a truncation only changes the returns of its own episode
    assert not np.allclose(got[0, 4:9], _forward_sum_returns(rewards, ends, last_value, 0.9)[0, 4:9])
    np.testing.assert_allclose(got[0, :4], _forward_sum_returns(rewards, ends, last_value, 0.9)[0, :4], rtol=1e-5)
    with pytest.raises(ValueError, match="give both truncated and truncation_values"):
        onpolicy.discounted_returns(rewards, ends, last_value, 0.9, TRUNCATED)


def test_normalize_advantages_has_mean_zero_and_unit_std_and_keeps_the_shape():
    x = jax.random.normal(jax.random.key(0), (3, 5, 7)) * 4.0 + 2.0
    y = jax.jit(onpolicy.normalize_advantages)(x)
    assert y.shape == x.shape
    np.testing.assert_allclose(float(jnp.mean(y)), 0.0, atol=1e-6)
    np.testing.assert_allclose(float(jnp.std(y)), 1.0, rtol=1e-5)
    # the ordering of the elements is kept (a positive affine map)
    np.testing.assert_array_equal(np.argsort(np.asarray(y).ravel()), np.argsort(np.asarray(x).ravel()))


def test_normalize_advantages_eps_bounds_the_scale():
    # a constant input has std 0: eps keeps the result finite and it is all zeros
    const = jnp.full((4, 8), 2.5, jnp.float32)
    y = onpolicy.normalize_advantages(const)
    assert bool(jnp.all(y == 0.0))
    # eps is added to the std: with eps = std the standard deviation of the output is 1/2
    x = jnp.asarray(np.random.default_rng(0).normal(size=(64,)), jnp.float32)
    np.testing.assert_allclose(float(jnp.std(onpolicy.normalize_advantages(x, eps=float(jnp.std(x))))), 0.5,
                               rtol=1e-5)
    assert onpolicy.ADV_EPS == 1e-8


def test_segment_return_counts_segments_by_hand():
    rewards = np.array([[1.0, 1.0, 1.0, 2.0, 2.0, 2.0],
                        [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]], np.float32)
    resets = np.array([[True, False, False, True, False, False],   # two episode segments
                       [True, False, False, False, False, False]])  # one
    traj = types.SimpleNamespace(rewards=rewards, resets=resets)
    # (3 + 6 + 3) total reward over 3 segments
    assert float(onpolicy.segment_return(traj)) == pytest.approx(4.0)
    # any leading axes (tasks x envs) are summed over alike
    batched = types.SimpleNamespace(rewards=np.stack([rewards, rewards]), resets=np.stack([resets, resets]))
    assert float(onpolicy.segment_return(batched)) == pytest.approx(4.0)


def test_policy_resets_in_both_modes():
    resets = jnp.asarray([[True, False, True, False], [True, True, False, False]])
    same = onpolicy.policy_resets(resets, False)
    np.testing.assert_array_equal(same, resets)
    first = onpolicy.policy_resets(resets, True)
    assert first.dtype == resets.dtype and first.shape == resets.shape
    np.testing.assert_array_equal(first, [[True, False, False, False], [True, False, False, False]])


@pytest.mark.parametrize("carry_across", [False, True])
def test_policy_resets_make_the_sequence_apply_reproduce_the_rollout(carry_across):
    """The contract: with these resets the sequence call gives the log-probs the rollout
    recorded step by step; the other mode's resets do not (episodes end inside the window)."""
    policy = SSMPolicy(obs_dim=4, action_dim=2, state_dim=4, hidden_dim=8)
    params = policy.init(jax.random.key(0), jnp.zeros((1, 1, 4)))
    task = envs.make("CartPole-v1")[0].default_params.replace(max_steps_in_episode=7)
    traj = envs.rollout(jax.random.key(1), policy, params, task, num_envs=2, num_steps=30,
                        carry_across_episodes=carry_across)
    assert int(jnp.sum(traj.dones)) > 0

    def log_probs(resets):
        out, _ = policy.apply(params, traj.obs, resets=resets)
        return out.dist.log_prob(traj.actions)

    right = log_probs(onpolicy.policy_resets(traj.resets, carry_across))
    wrong = log_probs(onpolicy.policy_resets(traj.resets, not carry_across))
    np.testing.assert_allclose(right, traj.log_probs, rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(wrong - traj.log_probs))) > 1e-4
