"""Tests for envs: registry, CartPole task distribution, observation modes, dynamics."""

import chex
import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnax.environments.classic_control.cartpole import EnvState

import envs
from envs.tasks import DEFAULT_TEST_RANGES, VARIED_FIELDS

# ------------------------------------------------------------------------------ registry


def test_make_default_is_cartpole_with_gymnax_defaults():
    env, params = envs.make()
    ref_env, ref_params = gymnax.make("CartPole-v1")
    assert env.name == "CartPole-v1"
    assert params == ref_params
    assert env is envs.make("CartPole-v1")[0]  # cached: one object per name (jit hashes by id)


@pytest.mark.parametrize("name", envs.ENV_NAMES)
def test_make_every_classic_control_env(name):
    env, params = envs.make(name)
    assert env.name == name
    obs, state = env.reset(jax.random.PRNGKey(0), params)
    assert obs.shape == (envs.obs_dim(name, "full"),)


def test_make_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        envs.make("CartPole-v0")
    for name in envs.ENV_NAMES:
        assert name in str(err.value)


# ------------------------------------------------------------------------------ tasks


def _sample(split, n=2000, seed=0, **kw):
    return envs.CartPoleTasks(**kw).sample(jax.random.PRNGKey(seed), n, split=split)


@pytest.mark.parametrize("split", ["train", "test"])
def test_sampled_tasks_shapes_and_derived_fields(split):
    tasks = _sample(split)
    for leaf in jax.tree_util.tree_leaves(tasks):
        assert leaf.shape == (2000,)
    assert tasks.max_steps_in_episode.dtype == jnp.int32
    assert tasks.force_mag.dtype == jnp.float32
    np.testing.assert_allclose(tasks.total_mass, tasks.masscart + tasks.masspole, rtol=1e-6)
    np.testing.assert_allclose(tasks.polemass_length, tasks.masspole * tasks.length, rtol=1e-6)
    # fields that are not varied keep gymnax's defaults
    default = gymnax.make("CartPole-v1")[1]
    for name in ("tau", "theta_threshold_radians", "x_threshold"):
        np.testing.assert_allclose(getattr(tasks, name), getattr(default, name), rtol=1e-6)
    assert np.all(np.asarray(tasks.max_steps_in_episode) == 500)


@pytest.mark.parametrize("split", ["train", "test"])
def test_sampled_fields_cover_their_documented_ranges(split):
    dist = envs.CartPoleTasks()
    tasks = _sample(split)
    ranges = dist.ranges(split)
    for name in VARIED_FIELDS:
        lo, hi = ranges[name]
        values = np.abs(np.asarray(getattr(tasks, name)))  # force_mag range is of magnitudes
        assert values.min() >= lo - 1e-6 and values.max() <= hi + 1e-6, name
        # uniform sampling: 2000 draws come within 3% of both ends
        assert values.min() < lo + 0.03 * (hi - lo) and values.max() > hi - 0.03 * (hi - lo), name


def test_test_split_reaches_outside_train_ranges():
    dist = envs.CartPoleTasks()
    train, test = dist.ranges("train"), dist.ranges("test")
    tasks = _sample("test")
    outside = []
    for name in VARIED_FIELDS:
        values = np.abs(np.asarray(getattr(tasks, name)))
        if np.any(values > train[name][1]) or np.any(values < train[name][0]):
            outside.append(name)
    assert set(outside) == set(DEFAULT_TEST_RANGES) and len(outside) >= 1
    for name in VARIED_FIELDS:
        if name not in DEFAULT_TEST_RANGES:
            assert test[name] == train[name]


@pytest.mark.parametrize("frac,n", [(0.5, 64), (0.25, 10), (0.0, 7), (1.0, 5)])
def test_inverted_fraction_is_exact_and_magnitudes_stay_in_range(frac, n):
    tasks = envs.CartPoleTasks(inverted_fraction=frac).sample(jax.random.PRNGKey(3), n)
    inverted = np.asarray(envs.is_inverted(tasks))
    assert inverted.sum() == round(frac * n)
    np.testing.assert_array_equal(np.asarray(envs.force_sign(tasks)), np.where(inverted, -1.0, 1.0))
    assert np.all(np.abs(np.asarray(tasks.force_mag)) >= 6.0)


def test_inverted_positions_are_random():
    a = envs.is_inverted(_sample("train", n=32, seed=1))
    b = envs.is_inverted(_sample("train", n=32, seed=2))
    assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_sampling_is_a_pure_function_of_the_key_and_jits():
    dist = envs.CartPoleTasks()
    key = jax.random.PRNGKey(7)
    a = dist.sample(key, 16)
    b = jax.jit(lambda k: dist.sample(k, 16))(key)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    c = dist.sample(jax.random.PRNGKey(8), 16)
    assert not np.allclose(a.length, c.length)
    test = dist.sample(key, 16, split="test")
    assert not np.allclose(a.gravity, test.gravity)  # independent key streams per split


def test_tasks_are_vmappable():
    tasks = _sample("train", n=5)
    env, _ = envs.make()
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    obs, state = jax.vmap(env.reset)(keys, tasks)
    obs2, *_ = jax.vmap(env.step, in_axes=(0, 0, None, 0))(keys, state, 1, tasks)
    assert obs2.shape == (5, 4)
    # one-by-one reference for task 3
    ref, *_ = env.step(keys[3], jax.tree_util.tree_map(lambda x: x[3], state), 1,
                       jax.tree_util.tree_map(lambda x: x[3], tasks))
    np.testing.assert_allclose(obs2[3], ref, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"length": (0.75, 0.25)}, "length"),
        ({"masspole": (-0.1, 0.2)}, "masspole"),
        ({"masscart": (0.0, 1.0)}, "masscart"),
        ({"gravity": (9.8,)}, "gravity"),
        ({"force_mag": (-10.0, 10.0)}, "force_mag"),
        ({"length": (0.1, float("nan"))}, "length"),
        ({"inverted_fraction": 1.5}, "inverted_fraction"),
        ({"test_ranges": {"tau": (0.01, 0.02)}}, "tau"),
        ({"test_ranges": {"length": (1.0, 0.5)}}, "length"),
        ({"max_steps_in_episode": 0}, "max_steps_in_episode"),
    ],
)
def test_invalid_task_distribution_is_rejected_on_construction(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        envs.CartPoleTasks(**kwargs)


def test_sample_rejects_bad_split_and_num_tasks():
    dist = envs.CartPoleTasks()
    with pytest.raises(ValueError, match="split"):
        dist.sample(jax.random.PRNGKey(0), 4, split="validation")
    with pytest.raises(ValueError, match="num_tasks"):
        dist.sample(jax.random.PRNGKey(0), 0)


# ------------------------------------------------------------------------------ force direction


def _random_states(key, n):
    v = jax.random.uniform(key, (n, 4), minval=-0.2, maxval=0.2)
    return EnvState(x=v[:, 0], x_dot=v[:, 1], theta=v[:, 2], theta_dot=v[:, 3],
                    time=jnp.zeros((n,), jnp.int32))


def test_inverted_task_mirrors_the_effect_of_the_same_action():
    env, _ = envs.make()
    normal = envs.make_cartpole_params(length=0.6, masspole=0.15, masscart=1.2, gravity=10.5,
                                       force_mag=9.0)
    inverted = normal.replace(force_mag=-normal.force_mag)
    step = jax.vmap(env.step_env, in_axes=(None, 0, None, None))
    key = jax.random.PRNGKey(0)
    states = _random_states(jax.random.PRNGKey(1), 64)
    for action in (0, 1):
        obs_inv, *_ = step(key, states, action, inverted)
        obs_other, *_ = step(key, states, 1 - action, normal)
        # same action in the inverted task == the other action in the normal task
        np.testing.assert_allclose(obs_inv, obs_other, rtol=1e-6, atol=1e-7)
    # from rest at the top, the same action accelerates the cart in opposite directions
    rest = EnvState(x=jnp.zeros(1), x_dot=jnp.zeros(1), theta=jnp.zeros(1),
                    theta_dot=jnp.zeros(1), time=jnp.zeros(1, jnp.int32))
    for action in (0, 1):
        n_obs, *_ = step(key, rest, action, normal)
        i_obs, *_ = step(key, rest, action, inverted)
        assert n_obs[0, 1] != 0
        np.testing.assert_allclose(i_obs[0, 1], -n_obs[0, 1], rtol=1e-6)  # x_dot
        np.testing.assert_allclose(i_obs[0, 3], -n_obs[0, 3], rtol=1e-6)  # theta_dot
    assert n_obs[0, 1] > 0  # action 1 pushes right in the normal task


# ------------------------------------------------------------------------------ gymnasium reference


@pytest.mark.parametrize("use_task", [False, True])
def test_dynamics_match_gymnasium_cartpole(use_task):
    gymnasium = pytest.importorskip("gymnasium")
    ref = gymnasium.make("CartPole-v1").unwrapped
    ref.reset(seed=0)
    env, params = envs.make()
    if use_task:  # an inverted, sampled task: set the same physics on gymnasium's env
        tasks = envs.CartPoleTasks(inverted_fraction=1.0).sample(jax.random.PRNGKey(5), 1)
        params = jax.tree_util.tree_map(lambda x: x[0], tasks)
        for name in ("gravity", "masscart", "masspole", "total_mass", "length",
                     "polemass_length", "force_mag"):
            setattr(ref, name, float(getattr(params, name)))
    step = jax.jit(env.step_env)
    rng = np.random.default_rng(0)
    states = np.asarray(jax.random.uniform(jax.random.PRNGKey(2), (40, 4), minval=-0.2, maxval=0.2))
    for s in states:
        action = int(rng.integers(2))
        ref.state = s.astype(np.float64)
        ref.steps_beyond_terminated = None
        ref_obs, ref_reward, ref_term, _, _ = ref.step(action)
        state = EnvState(x=s[0], x_dot=s[1], theta=s[2], theta_dot=s[3], time=0)
        obs, _, reward, term, _ = step(jax.random.PRNGKey(0), state, action, params)
        np.testing.assert_allclose(obs, ref_obs, rtol=1e-5, atol=1e-6)
        assert bool(term) == ref_term
        assert float(reward) == ref_reward


# ------------------------------------------------------------------------------ observation modes


def test_partial_observation_hides_exactly_the_velocities():
    state = EnvState(x=jnp.float32(0.1), x_dot=jnp.float32(0.2), theta=jnp.float32(0.3),
                     theta_dot=jnp.float32(0.4), time=0)
    env, _ = envs.make()
    full = env.get_obs(state)
    np.testing.assert_array_equal(envs.observe(full, "full", env), full)
    np.testing.assert_array_equal(envs.observe(full, "partial", env), jnp.array([0.1, 0.3]))
    batch = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 4))
    np.testing.assert_array_equal(envs.observe(batch, "partial", "CartPole-v1"), batch[..., [0, 2]])
    assert envs.obs_dim("CartPole-v1", "full") == 4
    assert envs.obs_dim(env, "partial") == 2


@pytest.mark.parametrize("name,dim", [("Acrobot-v1", 4), ("MountainCar-v0", 1), ("Pendulum-v1", 2)])
def test_partial_obs_dims_of_other_envs(name, dim):
    assert envs.obs_dim(name, "partial") == dim
    env, params = envs.make(name)
    obs, _ = env.reset(jax.random.PRNGKey(0), params)
    assert envs.observe(obs, "partial", env).shape == (dim,)


def test_unknown_obs_mode_is_rejected():
    with pytest.raises(ValueError, match="obs_mode"):
        envs.obs_dim("CartPole-v1", "pixels")
    with pytest.raises(ValueError, match="obs_mode"):
        envs.observe(jnp.zeros(4), "noisy", "CartPole-v1")


def test_test_split_must_reach_outside_custom_train_ranges():
    # wider train ranges swallow every default test range: the test split would not be held out
    wide = dict(length=(0.25, 1.5), masspole=(0.05, 0.5), masscart=(0.5, 3.0))
    with pytest.raises(ValueError, match="test_ranges"):
        envs.CartPoleTasks(**wide)
    with pytest.raises(ValueError, match="test_ranges"):
        envs.CartPoleTasks(test_ranges={})
    with pytest.raises(ValueError, match="test_ranges"):
        envs.CartPoleTasks(test_ranges={"length": (0.3, 0.7)})
    # one axis reaching outside (here below the train min) is enough
    dist = envs.CartPoleTasks(**wide, test_ranges={"length": (0.1, 1.5)})
    lengths = np.asarray(dist.sample(jax.random.PRNGKey(0), 256, split="test").length)
    assert lengths.min() < 0.25


def test_numpy_integer_counts_are_accepted():
    dist = envs.CartPoleTasks()
    tasks = dist.sample(jax.random.PRNGKey(0), np.int64(3))
    assert tasks.length.shape == (3,)
    chex.assert_trees_all_equal(tasks, dist.sample(jax.random.PRNGKey(0), 3))
    with pytest.raises(ValueError, match="num_tasks"):
        dist.sample(jax.random.PRNGKey(0), 2.0)
