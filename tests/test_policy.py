"""Actor-critic policies: the shared contract, and the distributions they emit."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_jax import Categorical, Gaussian, MLPPolicy, SSMPolicy

OBS, ACT, BATCH, TIME = 4, 3, 5, 12

POLICIES = [
    lambda discrete: SSMPolicy(obs_dim=OBS, action_dim=ACT, core="ssm", state_dim=8, hidden_dim=16, discrete=discrete),
    lambda discrete: SSMPolicy(obs_dim=OBS, action_dim=ACT, core="diagonal", state_dim=8, hidden_dim=16, discrete=discrete),
    lambda discrete: SSMPolicy(
        obs_dim=OBS, action_dim=ACT, core="selective", state_dim=4, hidden_dim=16, discrete=discrete, parallel=True
    ),
    lambda discrete: SSMPolicy(obs_dim=OBS, action_dim=ACT, core="ssm", state_dim=8, hidden_dim=16,
                               discrete=discrete, num_layers=2),
    lambda discrete: SSMPolicy(obs_dim=OBS, action_dim=ACT, core="selective", state_dim=4, hidden_dim=16,
                               discrete=discrete, num_layers=3),
    lambda discrete: MLPPolicy(obs_dim=OBS, action_dim=ACT, hidden_dim=16, discrete=discrete),
]
IDS = ["ssm", "diagonal", "selective-par", "ssm-2-layers", "selective-3-layers", "mlp"]


def _obs(seed=0):
    kx, kr = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.normal(kx, (BATCH, TIME, OBS)), jax.random.bernoulli(kr, 0.2, (BATCH, TIME))


@pytest.mark.parametrize("make", POLICIES, ids=IDS)
@pytest.mark.parametrize("discrete", [True, False], ids=["discrete", "continuous"])
def test_sequence_and_step_agree_with_shapes(make, discrete):
    policy = make(discrete)
    obs, resets = _obs()
    params = policy.init(jax.random.PRNGKey(1), obs)
    out, carry = jax.jit(policy.apply)(params, obs, resets)
    chex.assert_shape(out.value, (BATCH, TIME))
    if discrete:
        assert isinstance(out.dist, Categorical)
        chex.assert_shape(out.dist.logits, (BATCH, TIME, ACT))
    else:
        assert isinstance(out.dist, Gaussian)
        chex.assert_shape((out.dist.mean, out.dist.log_std), (BATCH, TIME, ACT))
    step = jax.jit(lambda p, o, c, r: policy.apply(p, o, c, r, method="step"))
    c = policy.initialize_carry(BATCH)
    outs = []
    for t in range(TIME):
        o, c = step(params, obs[:, t], c, resets[:, t])
        outs.append(o)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs, axis=1), *outs)
    chex.assert_trees_all_close(stacked, out, atol=2e-5, rtol=2e-5)
    chex.assert_trees_all_close(c, carry, atol=2e-5, rtol=2e-5)
    key = jax.random.PRNGKey(2)
    actions = o.dist.sample(key)
    chex.assert_shape(actions, (BATCH,) if discrete else (BATCH, ACT))
    chex.assert_shape((o.dist.log_prob(actions), o.dist.entropy()), (BATCH,))
    chex.assert_tree_all_finite(o)


def test_categorical_matches_softmax():
    logits = jax.random.normal(jax.random.PRNGKey(3), (6, ACT))
    dist = Categorical(logits)
    probs = np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum(-1, keepdims=True)
    actions = jnp.array([0, 1, 2, 2, 1, 0])
    np.testing.assert_allclose(dist.log_prob(actions), np.log(probs[np.arange(6), actions]), rtol=1e-5)
    np.testing.assert_allclose(dist.entropy(), -(probs * np.log(probs)).sum(-1), rtol=1e-5)
    # Empirical frequencies of many samples match the probabilities.
    samples = jax.vmap(dist.sample)(jax.random.split(jax.random.PRNGKey(4), 20_000))
    freq = np.stack([(np.asarray(samples) == a).mean(0) for a in range(ACT)], -1)
    np.testing.assert_allclose(freq, probs, atol=0.02)


def test_gaussian_matches_closed_form():
    mean = jax.random.normal(jax.random.PRNGKey(5), (6, ACT))
    log_std = jnp.full((6, ACT), -0.3)
    dist = Gaussian(mean, log_std)
    a = mean + 0.7
    std = np.exp(-0.3)
    ref = (-0.5 * (0.7 / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)) * ACT
    np.testing.assert_allclose(dist.log_prob(a), np.full(6, ref), rtol=1e-5)
    samples = jax.vmap(dist.sample)(jax.random.split(jax.random.PRNGKey(6), 20_000))
    np.testing.assert_allclose(samples.mean(0), mean, atol=0.03)
    np.testing.assert_allclose(samples.std(0), np.full((6, ACT), std), rtol=0.03)


def test_policy_gradient_flows_into_every_parameter():
    policy = SSMPolicy(obs_dim=OBS, action_dim=ACT, state_dim=8, hidden_dim=16)
    obs, resets = _obs(7)
    params = policy.init(jax.random.PRNGKey(8), obs)
    actions = jax.random.randint(jax.random.PRNGKey(9), (BATCH, TIME), 0, ACT)

    def loss(p):
        out, _ = policy.apply(p, obs, resets)
        return -jnp.mean(out.dist.log_prob(actions)) + jnp.mean(out.value**2)

    grads = jax.grad(loss)(params)
    chex.assert_tree_all_finite(grads)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert float(jnp.max(jnp.abs(g))) > 0.0, jax.tree_util.keystr(path)


def test_bad_policy_configs_raise():
    with pytest.raises(ValueError, match="core must be one of"):
        SSMPolicy(obs_dim=OBS, action_dim=ACT, core="lstm")
    with pytest.raises(ValueError, match="action_dim must be a positive int"):
        SSMPolicy(obs_dim=OBS, action_dim=0)
    with pytest.raises(ValueError, match="parallel=True needs a diagonal core"):
        SSMPolicy(obs_dim=OBS, action_dim=ACT, core="ssm", parallel=True)
    policy = MLPPolicy(obs_dim=OBS, action_dim=ACT)
    params = policy.init(jax.random.PRNGKey(0), jnp.zeros((1, 1, OBS)))
    with pytest.raises(ValueError, match=r"obs_seq must have shape \(batch, time, input_dim=4\)"):
        policy.apply(params, jnp.zeros((1, 1, OBS + 1)))


def test_errors_use_policy_argument_names_and_actions_are_range_checked():
    policy = SSMPolicy(obs_dim=OBS, action_dim=ACT, state_dim=8, hidden_dim=16)
    params = policy.init(jax.random.PRNGKey(0), jnp.zeros((1, 1, OBS)))
    with pytest.raises(ValueError, match=r"obs_seq must have shape \(batch, time, input_dim=4\)"):
        policy.apply(params, jnp.zeros((1, 1, OBS + 1)))
    with pytest.raises(ValueError, match=r"obs must have shape \(batch, input_dim=4\)"):
        policy.apply(params, jnp.zeros((1, OBS + 1)), policy.initialize_carry(1), method="step")
    dist = Categorical(jnp.zeros((2, ACT)))
    with pytest.raises(ValueError, match=r"actions must be integers in \[0, 3\)"):
        dist.log_prob(jnp.array([0, ACT]))
    with pytest.raises(ValueError, match=r"actions must be integers in \[0, 3\)"):
        dist.log_prob(jnp.array([-1, 0]))


def test_stacked_layers_chain_cores_and_keep_single_layer_params():
    """Layer 0 is named "core" either way; layer i > 0 reads tanh of layer i - 1's features
    (checked by running the cores by hand); the carry is one entry per layer."""
    obs, resets = _obs(10)
    one = SSMPolicy(obs_dim=OBS, action_dim=ACT, state_dim=8, hidden_dim=16)
    two = SSMPolicy(obs_dim=OBS, action_dim=ACT, state_dim=8, hidden_dim=16, num_layers=2)
    p1, p2 = one.init(jax.random.PRNGKey(0), obs), two.init(jax.random.PRNGKey(0), obs)
    assert set(p1["params"]) == {"core", "heads"}
    assert set(p2["params"]) == {"core", "core_1", "heads"}
    chex.assert_trees_all_equal_shapes(p1["params"]["core"], p2["params"]["core"])
    out, carry = two.apply(p2, obs, resets)
    assert isinstance(carry, tuple) and len(carry) == 2
    chex.assert_shape(carry, (BATCH, 8))

    core0 = two._make_core(0, parent=None)
    core1 = two._make_core(1, parent=None)
    f0, c0 = core0.apply({"params": p2["params"]["core"]}, obs, resets)
    f1, c1 = core1.apply({"params": p2["params"]["core_1"]}, jnp.tanh(f0), resets)
    logits = jnp.tanh(f1) @ p2["params"]["heads"]["actor"]["kernel"] + p2["params"]["heads"]["actor"]["bias"]
    chex.assert_trees_all_close(out.dist.logits, logits, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(carry, (c0, c1), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="num_layers must be a positive int"):
        SSMPolicy(obs_dim=OBS, action_dim=ACT, num_layers=0)
