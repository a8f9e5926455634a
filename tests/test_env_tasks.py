"""Tests for the general task distribution `envs.EnvTasks` (CartPole, Acrobot, Pendulum):
the registry against gymnax, CartPole's exact numbers, validation, derived fields, inversion,
held-out splits, and the dynamics of sampled tasks against gymnasium's own implementation."""

import dataclasses
import subprocess
import sys

import chex
import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs.tasks import DEFAULT_TEST_RANGES, TASK_ENVS, VARIED_FIELDS, intervals, span
from ssm_jax import MLPPolicy

NEW_ENVS = ("Acrobot-v1", "Pendulum-v1")


def _one(tasks, i):
    return jax.tree.map(lambda x: x[i], tasks)


# ------------------------------------------------------------------------------ registry


@pytest.mark.parametrize("name", envs.TASK_ENV_NAMES)
def test_task_env_fields_are_gymnax_envparams_fields(name):
    spec = envs.get_task_env(name)
    default = gymnax.make(name)[1]
    assert spec.fields == tuple(f.name for f in dataclasses.fields(default))
    assert set(spec.rangeable) <= set(spec.fields) and set(spec.derived) <= set(spec.fields)
    assert not set(spec.rangeable) & set(spec.derived)
    assert set(spec.default_ranges) <= set(spec.rangeable)
    assert spec.max_steps_in_episode == default.max_steps_in_episode
    for field in spec.rangeable:  # a range may vary scalar float fields only
        assert isinstance(getattr(default, field), float), field


def test_unsupported_env_is_refused_with_the_list():
    for bad in ("MountainCar-v0", "Acrobot-v0"):
        with pytest.raises(ValueError, match=r"env_name .*must be one of \['CartPole-v1', "
                                             r"'Acrobot-v1', 'Pendulum-v1'\]"):
            envs.EnvTasks(bad)


def test_unknown_derived_and_non_scalar_fields_are_refused():
    with pytest.raises(ValueError, match=r"'link_len' is not an EnvParams field of Acrobot-v1; "
                                         r"the fields a range may vary are \['link_length_1'"):
        envs.EnvTasks("Acrobot-v1", ranges={"link_len": (1, 2)}, test_ranges={})
    with pytest.raises(ValueError, match=r"'link_com_pos_2' is derived \(link_com_pos_2 = "
                                         r"0.5 \* link_length_2\)"):
        envs.EnvTasks("Acrobot-v1", test_ranges={"link_com_pos_2": (0.1, 1.0)})
    with pytest.raises(ValueError, match="'available_torque' is not a varied scalar field"):
        envs.EnvTasks("Acrobot-v1", ranges={"available_torque": (1, 2)}, test_ranges={})
    with pytest.raises(ValueError, match="'total_mass' is derived"):
        envs.make_task_params("CartPole-v1", total_mass=3.0)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(env_name="Pendulum-v1", ranges={"m": (1.0, 2.0)}), "test_ranges must be given"),
    (dict(env_name="Pendulum-v1", ranges={"m": (1.0, 2.0)}, test_ranges={"m": (1.2, 1.8)}),
     "test_ranges must reach outside the train ranges"),
    (dict(env_name="Pendulum-v1", ranges={"m": (1.0, 2.0)}, test_ranges={"l": (1.0, 3.0)}),
     r"test_ranges\['l'\] has no train range"),
    (dict(env_name="Pendulum-v1", ranges={"m": (0.0, 2.0)}, test_ranges={"m": (1.0, 3.0)}),
     r"ranges\['m'\] min must be > 0"),
    (dict(env_name="Pendulum-v1", ranges={}, test_ranges={}), "must vary at least one field"),
    (dict(env_name="Acrobot-v1", inverted_fraction=1.5), "inverted_fraction"),
    (dict(env_name="Acrobot-v1", max_steps_in_episode=0), "max_steps_in_episode"),
])
def test_bad_distributions_are_refused_on_construction(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        envs.EnvTasks(**kwargs)


def test_nonnegative_fields_accept_zero():
    tasks = envs.EnvTasks("Acrobot-v1", ranges={"link_mass_1": (0.5, 1.0),
                                                "torque_noise_max": (0.0, 0.2)},
                          test_ranges={"torque_noise_max": (0.0, 0.4)})
    assert tasks.ranges["torque_noise_max"] == (0.0, 0.2)
    with pytest.raises(ValueError, match=r"torque_noise_max'\] must be >= 0"):
        envs.EnvTasks("Acrobot-v1", ranges={"torque_noise_max": (-0.1, 0.2)},
                      test_ranges={"torque_noise_max": (0.0, 0.4)})


def test_constructing_a_distribution_imports_no_jax():
    code = ("import sys, envs; t = envs.EnvTasks('Acrobot-v1'); "
            "envs.EnvTasks('Pendulum-v1', ranges={'g': (5, 9)}, test_ranges={'g': ((2, 5), (9, 12))}); "
            "hash(t); envs.TASK_ENVS['Pendulum-v1'].derived; "
            "assert 'jax' not in sys.modules and 'gymnax' not in sys.modules, 'imported jax'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------ CartPole exactness


def test_cartpole_tasks_is_the_cartpole_instance_with_its_exact_numbers():
    """`CartPoleTasks().sample` equals the pre-generalisation algorithm written out here, and
    `EnvTasks("CartPole-v1")`'s."""
    key, n = jax.random.PRNGKey(3), 64
    dist = envs.CartPoleTasks()
    for split, split_id in (("train", 0), ("test", 1)):
        got = dist.sample(key, n, split)
        chex.assert_trees_all_equal(got, envs.EnvTasks("CartPole-v1").sample(key, n, split))
        keys = jax.random.split(jax.random.fold_in(key, split_id), len(VARIED_FIELDS) + 1)
        ranges = {**dist.ranges("train"), **(DEFAULT_TEST_RANGES if split == "test" else {})}
        v = {name: jax.random.uniform(k, (n,), minval=ranges[name][0], maxval=ranges[name][1])
             for k, name in zip(keys[:-1], VARIED_FIELDS)}
        signs = jax.random.permutation(keys[-1], jnp.where(jnp.arange(n) < n // 2, -1.0, 1.0))
        default = gymnax.make("CartPole-v1")[1]
        want = default.replace(
            gravity=v["gravity"], masscart=v["masscart"], masspole=v["masspole"],
            total_mass=v["masscart"] + v["masspole"], length=v["length"],
            polemass_length=v["masspole"] * v["length"], force_mag=signs * v["force_mag"],
            tau=jnp.full(n, default.tau, jnp.float32),
            theta_threshold_radians=jnp.full(n, default.theta_threshold_radians, jnp.float32),
            x_threshold=jnp.full(n, default.x_threshold, jnp.float32),
            max_steps_in_episode=jnp.full(n, 500, jnp.int32))
        chex.assert_trees_all_equal(got, want)
    assert dist.env_tasks() == envs.EnvTasks("CartPole-v1") and dist.env_name == "CartPole-v1"
    assert hash(envs.EnvTasks("Acrobot-v1")) == hash(envs.EnvTasks("Acrobot-v1"))


# ------------------------------------------------------------------------------ sampling


@pytest.mark.parametrize("name", NEW_ENVS)
@pytest.mark.parametrize("split", ["train", "test"])
def test_sampled_tasks_ranges_defaults_derived_fields_and_inversions(name, split):
    dist, n = envs.EnvTasks(name), 1000
    tasks = dist.sample(jax.random.PRNGKey(0), n, split)
    default = gymnax.make(name)[1]
    spec = dist.task_env
    sign_field = {"Acrobot-v1": None, "Pendulum-v1": "m"}[name]
    for field in spec.fields:
        leaf = np.asarray(getattr(tasks, field))
        assert leaf.shape == (n,) + np.shape(getattr(default, field)), field
        assert leaf.dtype == (np.int32 if field == "max_steps_in_episode" else np.float32)
        if field in dist.split_ranges(split):
            lo, hi = span(dist.split_ranges(split)[field])
            value = np.abs(leaf) if field == sign_field else leaf
            assert lo <= value.min() and value.max() <= hi, field
            assert value.max() - value.min() > 0.8 * (hi - lo), field  # the whole range is drawn
        elif field not in spec.derived and field != "available_torque":
            np.testing.assert_allclose(leaf, np.broadcast_to(getattr(default, field), leaf.shape),
                                       rtol=1e-6, err_msg=field)
    inverted = np.asarray(envs.is_inverted(tasks))
    assert inverted.sum() == n // 2 and 0 < inverted[: n // 2].sum() < n // 2  # exact, shuffled
    if name == "Acrobot-v1":
        np.testing.assert_allclose(tasks.link_com_pos_1, 0.5 * tasks.link_length_1, rtol=1e-6)
        np.testing.assert_allclose(tasks.link_com_pos_2, 0.5 * tasks.link_length_2, rtol=1e-6)
        sign = np.where(inverted, -1.0, 1.0)[:, None]
        np.testing.assert_array_equal(tasks.available_torque, sign * np.array([-1.0, 0.0, 1.0]))
    else:
        np.testing.assert_array_equal(np.asarray(tasks.m) < 0, inverted)
    np.testing.assert_array_equal(envs.force_sign(tasks), np.where(inverted, -1.0, 1.0))


@pytest.mark.parametrize("name", NEW_ENVS)
def test_test_split_is_held_out(name):
    dist = envs.EnvTasks(name)
    key = jax.random.PRNGKey(1)
    train, test = dist.sample(key, 2000, "train"), dist.sample(key, 2000, "test")
    beyond = 0
    for field, value in dist.test_ranges.items():
        t_lo, t_hi = span(dist.ranges[field])
        train_v, test_v = (np.abs(np.asarray(getattr(x, field))) for x in (train, test))
        assert t_lo <= train_v.min() and train_v.max() <= t_hi  # train never leaves its range
        beyond += int(np.sum((test_v < t_lo) | (test_v > t_hi)))
        assert not np.array_equal(train_v, test_v)  # independent key streams
    assert beyond > 100  # a large share of test tasks lie outside the train ranges


def test_union_test_ranges_and_custom_fields():
    dist = envs.EnvTasks("Pendulum-v1", ranges={"g": (5.0, 9.0), "max_speed": (6.0, 10.0)},
                         test_ranges={"g": ((2.0, 5.0), (9.0, 12.0))}, inverted_fraction=0.0,
                         max_steps_in_episode=100)
    tasks = dist.sample(jax.random.PRNGKey(2), 2000, "test")
    g = np.asarray(tasks.g)
    assert np.all(((g >= 2) & (g <= 5)) | ((g >= 9) & (g <= 12)))
    assert abs(np.mean(g < 5) - 3 / 6) < 0.05  # each interval in proportion to its length
    assert np.all(np.asarray(tasks.max_steps_in_episode) == 100) and not np.any(envs.is_inverted(tasks))
    np.testing.assert_array_equal(tasks.m, 1.0)  # not varied: gymnax's default
    assert [tuple(p) for p in intervals(dist.test_ranges["g"])] == [(2.0, 5.0), (9.0, 12.0)]


# ------------------------------------------------------------------------------ dynamics


def _acrobot_reference(gymnasium, task):
    """gymnasium's Acrobot with the task's physics set by hand from its *physical* fields
    (uniform links: centre of mass at half length), never inverted."""
    ref = gymnasium.make("Acrobot-v1").unwrapped
    ref.reset(seed=0)
    ref.LINK_LENGTH_1, ref.LINK_LENGTH_2 = float(task.link_length_1), float(task.link_length_2)
    ref.LINK_MASS_1, ref.LINK_MASS_2 = float(task.link_mass_1), float(task.link_mass_2)
    ref.LINK_COM_POS_1 = 0.5 * float(task.link_length_1)
    ref.LINK_COM_POS_2 = 0.5 * float(task.link_length_2)
    return ref


def test_acrobot_tasks_step_like_gymnasium_and_inverted_ones_mirror_the_torque():
    gymnasium = pytest.importorskip("gymnasium")
    from gymnax.environments.classic_control.acrobot import EnvState

    env = envs.make("Acrobot-v1")[0]
    tasks = envs.EnvTasks("Acrobot-v1").sample(jax.random.PRNGKey(4), 4, "test")
    inverted = np.asarray(envs.is_inverted(tasks))
    assert inverted.any() and not inverted.all()
    step = jax.jit(env.step_env)
    rng = np.random.default_rng(0)
    states = rng.uniform(-1.0, 1.0, (10, 4)) * np.array([np.pi, np.pi, 3.0, 6.0])
    for i in range(4):
        task = _one(tasks, i)
        ref = _acrobot_reference(gymnasium, task)
        for s in states:
            action = int(rng.integers(3))
            ref.state = s.copy()
            ref_obs, ref_reward, ref_term, _, _ = ref.step(2 - action if inverted[i] else action)
            state = EnvState(joint_angle1=jnp.float32(s[0]), joint_angle2=jnp.float32(s[1]),
                             velocity_1=jnp.float32(s[2]), velocity_2=jnp.float32(s[3]), time=0)
            obs, _, reward, term, _ = step(jax.random.PRNGKey(0), state, action, task)
            np.testing.assert_allclose(obs, ref_obs, rtol=1e-4, atol=1e-4)
            assert bool(term) == ref_term and float(reward) == ref_reward


def test_pendulum_tasks_step_like_gymnasium_and_inverted_ones_mirror_the_torque():
    gymnasium = pytest.importorskip("gymnasium")
    from gymnax.environments.classic_control.pendulum import EnvState

    env = envs.make("Pendulum-v1")[0]
    tasks = envs.EnvTasks("Pendulum-v1").sample(jax.random.PRNGKey(5), 4, "test")
    inverted = np.asarray(envs.is_inverted(tasks))
    assert inverted.any() and not inverted.all()
    step = jax.jit(env.step_env)
    rng = np.random.default_rng(1)
    ref = gymnasium.make("Pendulum-v1").unwrapped
    ref.reset(seed=0)
    for i in range(4):
        task = _one(tasks, i)
        ref.m, ref.l, ref.g = abs(float(task.m)), float(task.l), float(task.g)
        ref.max_torque = float(task.max_torque)
        for _ in range(10):
            s = rng.uniform(-1.0, 1.0, 2) * np.array([np.pi, 6.0])
            u = rng.uniform(-3.0, 3.0, 1).astype(np.float32)  # beyond max_torque too: clipped
            ref.state = s.copy()
            ref_obs, ref_reward, *_ = ref.step(-u if inverted[i] else u)
            state = EnvState(theta=jnp.float32(s[0]), theta_dot=jnp.float32(s[1]),
                             last_u=jnp.float32(0.0), time=0)
            obs, _, reward, _, _ = step(jax.random.PRNGKey(0), state, jnp.asarray(u), task)
            np.testing.assert_allclose(obs, ref_obs, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(reward, ref_reward, rtol=1e-4, atol=1e-4)


def test_make_task_params_broadcasts_and_inverts():
    p = envs.make_task_params("Acrobot-v1", (3,), signs=jnp.array([1.0, -1.0, 1.0]),
                              link_length_2=jnp.array([0.8, 1.0, 1.2]), link_mass_1=2.0)
    np.testing.assert_allclose(p.link_com_pos_2, [0.4, 0.5, 0.6], rtol=1e-6)
    np.testing.assert_allclose(p.link_mass_1, [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(envs.is_inverted(p), [False, True, False])
    one = envs.make_task_params("Pendulum-v1", signs=-1.0, m=2.0)
    assert one.m.shape == () and float(one.m) == -2.0 and bool(envs.is_inverted(one))


# ------------------------------------------------------------------------------ rollouts


def test_a_policy_must_fit_acrobots_three_actions():
    acro = envs.EnvTasks("Acrobot-v1").sample(jax.random.PRNGKey(6), 3, "test")
    with pytest.raises(ValueError, match=r"Discrete\(3\).*action_dim=3"):  # before compiling
        envs.rollout_tasks(jax.random.PRNGKey(8), MLPPolicy(obs_dim=6, action_dim=2), {}, acro,
                           env=envs.make("Acrobot-v1")[0], num_envs=2, num_steps=20)


def test_tasks_of_another_environment_are_refused_by_name():
    cartpole = envs.CartPoleTasks().sample(jax.random.PRNGKey(0), 2)
    policy = MLPPolicy(obs_dim=3, action_dim=1, discrete=False)
    with pytest.raises(ValueError, match=r"task must be Pendulum-v1's EnvParams .*fields "
                                         r"\['max_steps_in_episode', 'max_speed'.*got EnvParams "
                                         r"with fields \['max_steps_in_episode', 'gravity'.*"
                                         r"envs.EnvTasks\('Pendulum-v1'\)"):
        envs.rollout_tasks(jax.random.PRNGKey(1), policy, {}, cartpole,
                           env=envs.make("Pendulum-v1")[0], num_envs=2, num_steps=4)


@pytest.mark.slow
def test_acrobot_and_pendulum_task_batches_roll_out():
    acro = envs.EnvTasks("Acrobot-v1").sample(jax.random.PRNGKey(6), 3, "test")
    policy = MLPPolicy(obs_dim=6, action_dim=3, hidden_dim=8)
    params = policy.init(jax.random.PRNGKey(7), jnp.zeros((1, 1, 6)))
    env = envs.make("Acrobot-v1")[0]
    traj = envs.rollout_tasks(jax.random.PRNGKey(8), policy, params, acro, env=env,
                              num_envs=2, num_steps=20)
    assert traj.obs.shape == (3, 2, 20, 6) and traj.actions.dtype == jnp.int32
    assert set(np.unique(traj.actions)) <= {0, 1, 2}

    pend = envs.EnvTasks("Pendulum-v1").sample(jax.random.PRNGKey(9), 3, "test")
    policy = MLPPolicy(obs_dim=3, action_dim=1, hidden_dim=8, discrete=False)
    params = policy.init(jax.random.PRNGKey(10), jnp.zeros((1, 1, 3)))
    traj = envs.rollout_tasks(jax.random.PRNGKey(11), policy, params, pend,
                              env=envs.make("Pendulum-v1")[0], num_envs=2, num_steps=20)
    assert traj.actions.shape == (3, 2, 20, 1) and traj.actions.dtype == jnp.float32
    assert np.all(np.asarray(traj.rewards) <= 0) and np.all(np.isfinite(traj.log_probs))
