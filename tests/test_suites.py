"""Evaluation suites (`envs.suites`, `envs.suite_env`): the task side of every suite.

Each property is checked against a reference computed another way: gymnax's own CartPole
stepped by hand with the physics the suite says applies, the goal reward's formula on the
reference state, the full observation sliced by hand, the train ranges read from the config.
Everything runs under `jit` and `vmap` over tasks.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnax.environments.classic_control.cartpole import CartPole, EnvParams, EnvState

import envs
from envs.suite_env import NO_SWITCH, PHYSICS_FIELDS
from envs.suites import EXTREME_TASKS, SUITES, Suite
from envs.tasks import VARIED_FIELDS, intervals

N = 2000  # tasks per split in the distribution checks (one jitted draw each)


@functools.lru_cache(maxsize=None)
def _draws(name, split):
    """N tasks of a suite's split drawn with key 0 under jit (one compilation per suite and
    split, shared by the tests)."""
    suite = SUITES[name]
    return jax.jit(lambda k: suite.sample(k, N, split))(jax.random.key(0))


def _draw(name, split, n=N):
    return jax.tree.map(lambda x: x[:n], _draws(name, split))


def _physics(tasks) -> EnvParams:
    """The plain CartPole `EnvParams` part of a task batch (what gymnax's CartPole reads)."""
    return EnvParams(**{f: getattr(tasks, f) for f in EnvParams.__dataclass_fields__})


def _inside(values, value):
    return np.any([(values >= lo - 1e-6) & (values <= hi + 1e-6) for lo, hi in intervals(value)], axis=0)


# ------------------------------------------------------------------------------ the registry


def test_standard_suite_is_exactly_todays_env_and_tasks():
    suite = SUITES["standard"]
    assert suite.env() is envs.make("CartPole-v1")[0] and not suite.wrapped
    assert suite.tasks == envs.CartPoleTasks() and suite.episode_limit == 500
    for split in ("train", "test"):
        key = jax.random.key(3)
        got, want = suite.sample(key, 64, split), envs.CartPoleTasks().sample(key, 64, split)
        assert type(got) is type(want) is EnvParams
        chex.assert_trees_all_equal(got, want)


def test_a_suite_environment_asked_for_again_does_not_retrace():
    """gymnax's jitted step takes the environment as a static argument: a new task and the
    environment asked for again reuse the compiled step."""
    step = envs.SuiteCartPole.step  # jax.jit(..., static_argnames="self")
    for name in ("partial", "goal"):
        first, second = (jax.tree.map(lambda x: x[i], _draw(name, "test", n=2)) for i in (0, 1))
        _, state = SUITES[name].env().reset(jax.random.key(0), first)
        SUITES[name].env().step(jax.random.key(1), state, 1, first)
        compiled = step._cache_size()
        SUITES[name].env().step(jax.random.key(2), state, 0, second)
        assert step._cache_size() == compiled, name


def test_registry_and_environments_are_cached_objects():
    assert envs.SUITE_NAMES == ("standard", "partial", "extreme", "switching", "goal")
    assert envs.get_suite("goal") is SUITES["goal"]
    with pytest.raises(ValueError, match=r"suite must be one of \['standard'"):
        envs.get_suite("hard")
    for suite in SUITES.values():
        assert suite.env() is suite.env()  # jit hashes the env by identity: no retrace
        assert envs.ContextWrapper(suite.env()) == envs.ContextWrapper(suite.env())
        assert suite.to_dict()["name"] == suite.name
    # one wrapper per observation mode, shared by the suites whose change is data
    assert SUITES["switching"].env() is SUITES["goal"].env() is envs.make_suite_env("full")
    assert SUITES["partial"].env() is envs.make_suite_env("partial")
    assert SUITES["extreme"].env() is envs.make("CartPole-v1")[0]


@pytest.mark.parametrize("kwargs, needle", [
    ({"name": ""}, "name must be a non-empty identifier"),
    ({"tasks": {"length": (0.2, 0.3)}}, "tasks must be an envs.CartPoleTasks"),
    ({"obs_mode": "pixels"}, "obs_mode must be one of"),
    ({"switch_steps": (0, 10)}, "switch_steps low must be"),
    ({"switch_steps": (50, 10)}, "switch_steps high must be"),
    ({"switch_steps": (100, 500)}, "must be < the episode limit 500"),
    ({"goal_x": (-1.0, 1.0)}, "goal_x and goal_x_test must both be given"),
    ({"goal_x": (-1.0, 1.0), "goal_x_test": (-0.5, 0.5)}, "goal_x_test must reach outside"),
    ({"goal_x": (-1.0, 1.0), "goal_x_test": (-2.5, 2.0)}, "strictly inside the track"),
    ({"goal_x": ((-1.0, 0.0), (0.5, 1.0)), "goal_x_test": (-1.5, 1.5)}, "goal_x must be one"),
])
def test_bad_suites_are_refused_on_construction(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        Suite(**{"name": "mine", "description": "x", **kwargs})


@pytest.mark.parametrize("test_range, needle", [
    (((1.0, 5.0), (4.0, 20.0)), "disjoint intervals in increasing order"),
    (((15.0, 20.0), (1.0, 5.0)), "disjoint intervals in increasing order"),
    (((1.0, 1.0), (15.0, 20.0)), "must have min < max"),
    (((6.0, 8.0), (9.0, 14.0)), "test_ranges must reach outside"),  # a union inside: not held out
    ((), "tuple of \\(min, max\\) pairs"),
])
def test_bad_test_unions_are_refused(test_range, needle):
    with pytest.raises(ValueError, match=needle):
        envs.CartPoleTasks(test_ranges={"force_mag": test_range})


# ------------------------------------------------------------------------------ held-out splits


def test_extreme_splits_are_packer_et_al_and_held_out():
    train, test = _draw("extreme", "train"), _draw("extreme", "test")
    for field, tr, te in (("force_mag", (5, 15), ((1, 5), (15, 20))),
                          ("length", (0.25, 0.75), ((0.05, 0.25), (0.75, 1.0))),
                          ("masspole", (0.05, 0.5), ((0.01, 0.05), (0.5, 1.0)))):
        assert EXTREME_TASKS.ranges("train")[field] == tr and EXTREME_TASKS.ranges("test")[field] == te
        a, b = np.abs(np.asarray(getattr(train, field))), np.abs(np.asarray(getattr(test, field)))
        assert np.all(_inside(a, tr)) and np.all(_inside(b, te)), field
        assert not np.any((b > tr[0] + 1e-6) & (b < tr[1] - 1e-6)), field  # never inside the train range
        # uniform over the union by length: each side's share of 2000 draws
        (lo0, hi0), (lo1, hi1) = te
        share = (hi0 - lo0) / ((hi0 - lo0) + (hi1 - lo1))
        assert abs(np.mean(b <= tr[0]) - share) < 0.04, field
        assert b.min() < lo0 + 0.03 * (hi0 - lo0) and b.max() > hi1 - 0.03 * (hi1 - lo1), field
    for split in (train, test):
        np.testing.assert_array_equal(np.asarray(split.masscart), 1.0)
        np.testing.assert_allclose(np.asarray(split.gravity), 9.8, rtol=1e-6)
        assert np.asarray(envs.is_inverted(split)).sum() == N // 2
        np.testing.assert_allclose(split.polemass_length, split.masspole * split.length, rtol=1e-6)


@pytest.mark.parametrize("name", ["partial", "switching", "goal"])
def test_wrapped_suites_start_from_standards_physics(name):
    """Their physics (before any switch) is exactly the standard suite's draw for the key."""
    for split in ("train", "test"):
        got = _draw(name, split)
        chex.assert_trees_all_equal(_physics(got), _draw("standard", split))
        assert type(got) is envs.SuiteParams


def test_switching_second_physics_is_a_flipped_draw_of_the_same_split():
    dist = SUITES["switching"].tasks
    for split in ("train", "test"):
        tasks = _draw("switching", split)
        after = tasks.after
        np.testing.assert_array_equal(np.sign(after.force_mag), -np.sign(tasks.force_mag))
        for field in VARIED_FIELDS:
            values = np.abs(np.asarray(getattr(after, field)))
            assert np.all(_inside(values, dist.ranges(split)[field])), (split, field)
            assert not np.allclose(values, np.abs(np.asarray(getattr(tasks, field)))), field  # redrawn
        np.testing.assert_allclose(after.total_mass, after.masscart + after.masspole, rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(tasks.switch_low), 100)
        np.testing.assert_array_equal(np.asarray(tasks.switch_high), 400)
    for name in ("partial", "goal"):  # no switch: the second physics never applies
        tasks = _draw(name, "train", n=8)
        np.testing.assert_array_equal(np.asarray(tasks.switch_low), NO_SWITCH)


def test_goal_targets_are_held_out_and_hidden():
    train, test = np.asarray(_draw("goal", "train").goal_x), np.asarray(_draw("goal", "test").goal_x)
    assert np.all(np.abs(train) <= 1.0) and train.min() < -0.97 and train.max() > 0.97
    assert np.all(np.abs(test) <= 1.5) and test.min() < -1.45 and test.max() > 1.45
    assert np.mean(np.abs(test) > 1.0) > 0.25  # a third of the test range lies beyond training
    assert np.all(np.asarray(_draw("goal", "test", n=8).goal_reward))
    # x* is not in the observation: two tasks that differ only in x* observe the same thing
    env = SUITES["goal"].env()
    tasks = _draw("goal", "test", n=2)
    same = tasks.replace(**{f: jnp.broadcast_to(getattr(tasks, f)[:1], (2,)) for f in EnvParams.__dataclass_fields__})
    assert float(same.goal_x[0]) != float(same.goal_x[1])
    obs0, state = jax.jit(jax.vmap(env.reset, in_axes=(None, 0)))(jax.random.key(0), same)
    obs1, *_ = jax.jit(jax.vmap(env.step, in_axes=(None, 0, None, 0)))(jax.random.key(1), state, 1, same)
    np.testing.assert_array_equal(obs0[0], obs0[1])
    np.testing.assert_array_equal(obs1[0], obs1[1])


# ------------------------------------------------------------------------------ switching


T_SWITCH = 420  # steps stepped by hand: past the latest switch step (400)


@jax.jit
def _switching_by_hand(key, tasks):
    """Per task: reset the suite env, then step it T_SWITCH times with fixed actions; at every
    step also step gymnax CartPole by hand from the same state with the task's first physics
    and with its second physics. vmapped over tasks."""
    env, ref = SUITES["switching"].env(), CartPole()
    actions = jax.random.bernoulli(jax.random.fold_in(key, 1), 0.5, (T_SWITCH,)).astype(jnp.int32)

    def one(task, k):
        _, state = env.reset_env(k, task)
        before, after = _physics(task), task.after

        def body(state, a):
            k_step = jax.random.key(0)
            _, nxt, *_ = env.step_env(k_step, state, a, task)
            _, by_before, *_ = ref.step_env(k_step, state, a, before)
            _, by_after, *_ = ref.step_env(k_step, state, a, after)
            pick = lambda s: jnp.stack([s.x, s.x_dot, s.theta, s.theta_dot])  # noqa: E731
            return nxt, (pick(nxt), pick(by_before), pick(by_after), state.time)

        _, out = jax.lax.scan(body, state, actions)
        return state.switch_step, out

    return jax.vmap(one)(tasks, jax.random.split(key, jax.tree.leaves(tasks)[0].shape[0]))


def test_switching_happens_at_the_drawn_step_and_only_then():
    tasks = _draw("switching", "test", n=16)
    switch, (suite, by_before, by_after, time) = _switching_by_hand(jax.random.key(4), tasks)
    switch, time = np.asarray(switch), np.asarray(time)
    assert np.all((switch >= 100) & (switch <= 400)) and len(set(switch.tolist())) > 8
    chex.assert_trees_all_equal(time[0], np.arange(T_SWITCH))  # step_env: no reset on the way
    for i, s in enumerate(switch):
        # the first s steps follow the task's physics exactly, every later step the second one
        np.testing.assert_array_equal(suite[i, :s], by_before[i, :s])
        np.testing.assert_array_equal(suite[i, s:], by_after[i, s:])
        # and the two differ at every step (so the switch is at s, not earlier or later)
        assert np.all(np.any(by_before[i] != by_after[i], axis=-1))


def test_switch_steps_are_drawn_per_episode_uniformly():
    env = SUITES["switching"].env()
    task = jax.tree.map(lambda x: x[0], _draw("switching", "train", n=1))
    _, states = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(jax.random.split(jax.random.key(0), 4000), task)
    steps = np.asarray(states.switch_step)
    assert steps.min() == 100 and steps.max() == 400  # both ends reached with 4000 draws
    assert abs(steps.mean() - 250) < 5 and abs(np.mean(steps < 175) - 75 / 301) < 0.03
    # an auto-reset draws the next episode's switch step afresh
    k = jax.random.key(1)
    _, s0 = env.reset(k, task)
    done_state = s0.replace(theta=jnp.float32(1.0))  # the pole has fallen: this step ends the episode
    _, s1, _, terminated, _, _ = env.step(jax.random.key(2), done_state, 0, task)
    assert bool(terminated) and int(s1.time) == 0 and 100 <= int(s1.switch_step) <= 400


def _around_switch_loop(rewards, dones, since, window, episode):
    """Reference for `envs.rewards_around_switch`: each row walked step by step, its episode
    counted, the rewards of episode `episode` binned by steps since its switch."""
    out = np.zeros(rewards.shape[:-1] + (2 * window,))
    for row in np.ndindex(rewards.shape[:-1]):
        index = 0
        for t in range(rewards.shape[-1]):
            d = int(since[row + (t,)])
            if index == episode and -window <= d < window:
                out[row + (window + d,)] += rewards[row + (t,)]
            index += int(dones[row + (t,)])
    return out


def test_rollouts_record_steps_since_the_switch_and_rewards_align_on_it():
    """A switching rollout's info["since_switch"] counts from -s (s the episode's drawn switch
    step) at each episode's first step, one per step; `rewards_around_switch` equals a Python
    loop over the steps for the first and second episode (random rewards, under jit and vmap over
    tasks); `final_goal_distance` reads the distance at each episode's last step; a rollout of
    an environment without these infos is refused."""
    from ssm_jax import MLPPolicy

    env = SUITES["switching"].env()
    policy = MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=8)
    params = policy.init(jax.random.key(0), jnp.zeros((1, 1, 4)))
    traj = jax.jit(lambda k, t: envs.rollout_tasks(k, policy, params, t, num_envs=3, num_steps=300, env=env))(
        jax.random.key(1), _draw("switching", "test", n=4))
    since, dones = np.asarray(traj.info["since_switch"]), np.asarray(traj.dones)
    starts = np.asarray(traj.resets)
    assert since.shape == dones.shape == (4, 3, 300) and dones.sum() > 12  # several episodes per row
    assert np.all((-since[starts] >= 100) & (-since[starts] <= 400))
    np.testing.assert_array_equal(since[..., 1:][~starts[..., 1:]], since[..., :-1][~starts[..., 1:]] + 1)

    rewards = np.asarray(jax.random.uniform(jax.random.key(2), dones.shape))
    random_traj = traj.replace(rewards=jnp.asarray(rewards))
    for window, episode in ((100, 0), (7, 1)):
        got = jax.jit(lambda t, w=window, e=episode: envs.rewards_around_switch(t, w, e))(random_traj)
        np.testing.assert_allclose(np.asarray(got), _around_switch_loop(rewards, dones, since, window, episode),
                                   rtol=1e-5, atol=1e-6)
    # every step of episode 0 within 100 steps of its switch lands in a bin (none is lost or doubled)
    near = (np.cumsum(dones, -1) - dones == 0) & (np.abs(since + 0.5) < 100)
    np.testing.assert_allclose(np.asarray(envs.rewards_around_switch(random_traj, 100)).sum(-1),
                               np.where(near, rewards, 0).sum(-1), rtol=1e-5)

    # the final goal distance is the info's at the last step of the episode (its done step)
    distance = np.asarray(traj.info["goal_distance"])
    for episode in (0, 1):
        want = np.full(dones.shape[:-1], np.nan)
        for row in np.ndindex(dones.shape[:-1]):
            ends, T = np.flatnonzero(dones[row]), dones.shape[-1]
            started = episode == 0 or (len(ends) >= episode and ends[episode - 1] < T - 1)
            if started:  # its done step, or the window's last step while it runs
                want[row] = distance[row + (ends[episode] if len(ends) > episode else T - 1,)]
        got = np.asarray(jax.jit(lambda t, e=episode: envs.final_goal_distance(t, e))(traj))
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.all(np.isfinite(got))

    plain = envs.rollout(jax.random.key(3), policy, params, num_envs=2, num_steps=10)
    assert plain.info == {}
    with pytest.raises(ValueError, match="no since_switch"):
        envs.rewards_around_switch(plain, 5)
    with pytest.raises(ValueError, match="no goal_distance"):
        envs.final_goal_distance(plain)


# ------------------------------------------------------------------------------ goal reward


def test_goal_reward_matches_its_formula_under_jit_and_vmap():
    env, ref = SUITES["goal"].env(), CartPole()
    tasks = _draw("goal", "test", n=256)
    v = jax.random.uniform(jax.random.key(6), (256, 4), minval=-2.5, maxval=2.5) * jnp.array([1.0, 1.0, 0.1, 1.0])
    state = envs.SuiteState(x=v[:, 0], x_dot=v[:, 1], theta=v[:, 2], theta_dot=v[:, 3],
                            time=jnp.zeros(256, jnp.int32), switch_step=jnp.full(256, NO_SWITCH, jnp.int32))
    actions = jnp.arange(256) % 2
    step = jax.jit(jax.vmap(env.step_env, in_axes=(None, 0, 0, 0)))
    ref_step = jax.jit(jax.vmap(ref.step_env, in_axes=(None, 0, 0, 0)))
    _, nxt, reward, _, info = step(jax.random.key(0), state, actions, tasks)
    _, ref_next, ref_reward, _, _ = ref_step(jax.random.key(0), state, actions, _physics(tasks))
    x_new, goal = np.asarray(ref_next.x, np.float64), np.asarray(tasks.goal_x, np.float64)
    np.testing.assert_allclose(np.asarray(info["goal_distance"]), np.abs(x_new - goal), rtol=1e-6, atol=1e-6)
    prev_terminal = (np.abs(np.asarray(v[:, 0])) > 2.4) | (np.abs(np.asarray(v[:, 2])) > 12 * 2 * np.pi / 360)
    want = np.maximum(0.0, 1.0 - np.abs(x_new - goal) / 2.4) * (1.0 - prev_terminal)
    np.testing.assert_allclose(np.asarray(reward), want, rtol=1e-5, atol=1e-6)
    assert prev_terminal.any() and (~prev_terminal).any() and (want == 0).any() and (want > 0.5).any()
    np.testing.assert_array_equal(np.asarray(nxt.x), np.asarray(ref_next.x))  # the physics is gymnax's
    # without the goal the reward is gymnax's survival reward
    plain = tasks.replace(goal_reward=jnp.zeros(256, bool))
    _, _, survival, _, _ = step(jax.random.key(0), state, actions, plain)
    np.testing.assert_array_equal(np.asarray(survival), np.asarray(ref_reward))


def test_returns_of_wrapped_suites_stay_in_range_through_rollout_tasks():
    """envs.rollout_tasks runs the wrapped environments unchanged (vmapped over tasks,
    auto-reset); episode returns lie in [0, 500]. (switching shares goal's
    environment object; every suite runs end to end in the benchmark's tests.)"""
    from ssm_jax import MLPPolicy

    for name in ("partial", "goal"):
        env = SUITES[name].env()
        policy = MLPPolicy(obs_dim=envs.obs_dim(env), action_dim=2, hidden_dim=8)
        params = policy.init(jax.random.key(0), jnp.zeros((1, 1, envs.obs_dim(env))))
        traj = envs.rollout_tasks(jax.random.key(1), policy, params, _draw(name, "test", n=4),
                                  num_envs=2, num_steps=200, env=env)

        done_returns = np.asarray(traj.episode_returns)[np.asarray(traj.dones)]
        assert done_returns.size and np.all((done_returns >= 0) & (done_returns <= 500)), name
        rewards = np.asarray(traj.rewards)
        assert np.all((rewards >= 0) & (rewards <= 1)), name
        assert (rewards < 1).any() == (name == "goal"), name


def test_the_oracles_view_is_the_goal_suites_env_with_the_goal_appended():
    """envs.GoalVisible: reset and one step of the goal suite's environment (same keys: same
    states, rewards, dones), each observation followed by the task's x*, under jit and vmap over
    tasks; a rollout through it (auto-resets included) carries x* in every observation; equal
    wrappers hash equal; it wraps only a SuiteCartPole."""
    from ssm_jax import MLPPolicy

    inner = SUITES["goal"].env()
    env = envs.GoalVisible(inner)
    assert env == envs.GoalVisible(inner) and hash(env) == hash(envs.GoalVisible(inner))
    assert envs.obs_dim(env) == 5 and env.num_actions == 2
    tasks = _draw("goal", "test", n=8)
    keys = jax.random.split(jax.random.key(3), 8)

    def both(k, task):
        (obs, state), (ref_obs, ref_state) = env.reset(k, task), inner.reset(k, task)
        steps = [env.step(k, state, 1, task), inner.step(k, ref_state, 1, task)]
        return obs, ref_obs, steps

    obs, ref_obs, (step, ref_step) = jax.jit(jax.vmap(both))(keys, tasks)
    goal = np.asarray(tasks.goal_x)[:, None]
    np.testing.assert_array_equal(np.asarray(obs), np.concatenate([np.asarray(ref_obs), goal], -1))
    np.testing.assert_array_equal(np.asarray(step[0]), np.concatenate([np.asarray(ref_step[0]), goal], -1))
    chex.assert_trees_all_equal(step[1:], ref_step[1:])
    policy = MLPPolicy(obs_dim=5, action_dim=2, hidden_dim=8)
    params = policy.init(jax.random.key(0), jnp.zeros((1, 1, 5)))
    traj = envs.rollout_tasks(jax.random.key(1), policy, params, tasks, num_envs=2, num_steps=60, env=env)
    np.testing.assert_array_equal(np.asarray(traj.obs)[..., 4], np.broadcast_to(goal[:, :, None], (8, 2, 60)))
    assert np.all((np.asarray(traj.rewards) >= 0) & (np.asarray(traj.rewards) <= 1))
    with pytest.raises(ValueError, match="env must be a SuiteCartPole"):
        envs.GoalVisible(CartPole())


def test_the_oracle_told_the_direction_sees_the_force_sign_in_force_at_each_step():
    """envs.GoalVisible(direction=True): the observation is the x*-only wrapper's followed by
    -1 / +1, the sign of the force the NEXT step applies. With a task whose force flips at a
    drawn switch step (built by hand: normal before, inverted after), stepped by hand under jit
    and vmap over episodes, each observation's sign is -1 exactly when the step taken from it
    runs on the `after` physics (its info's `since_switch >= 0`, auto-resets included); a task
    inverted from the start without a switch shows -1 from the reset on. The inner observations
    are untouched. Wrappers with and without the direction differ (no shared jit caches); a
    non-bool is refused."""
    from envs.suite_env import make_suite_params

    inner = SUITES["goal"].env()
    told, plain = envs.GoalVisible(inner, direction=True), envs.GoalVisible(inner)
    assert told != plain and told == envs.GoalVisible(inner, direction=True)
    assert envs.obs_dim(told) == 6 and told.name.endswith("+goal+direction")
    physics = envs.make_cartpole_params(length=0.5, masspole=0.1, masscart=1.0, gravity=9.8, force_mag=10.0)
    after = envs.make_cartpole_params(length=0.4, masspole=0.1, masscart=1.0, gravity=9.8, force_mag=-12.0)
    switching = make_suite_params(physics, after=after, switch_steps=(5, 9), goal_x=0.3)
    switching = switching.replace(max_steps_in_episode=jnp.asarray(20, jnp.int32))
    inverted = make_suite_params(after, goal_x=-0.2)
    n, steps = 16, 31

    def episode(key, task):
        obs, state = told.reset(key, task)
        ref_obs, ref_state = plain.reset(key, task)

        def step(carry, k):
            obs, state, ref_state = carry
            out = told.step(k, state, jnp.int32(1), task)
            ref = plain.step(k, ref_state, jnp.int32(1), task)
            return (out[0], out[1], ref[1]), (obs, out[0], ref[0], out[5]["since_switch"])

        _, (before, o, r, since) = jax.lax.scan(step, (obs, state, ref_state), jax.random.split(key, steps))
        return obs, ref_obs, before, o, r, since

    run = jax.jit(jax.vmap(episode, in_axes=(0, None)))
    keys = jax.random.split(jax.random.key(0), n)
    obs, ref_obs, before, o, r, since = (np.asarray(x) for x in run(keys, switching))
    np.testing.assert_array_equal(obs[:, :5], ref_obs)
    np.testing.assert_array_equal(o[..., :5], r)
    np.testing.assert_array_equal(before[..., 5], np.where(since >= 0, -1.0, 1.0))
    assert (since >= 0).any() and (since < 0).any() and (np.diff(since, axis=1) < -1).any()  # flips, resets
    obs, _, _, o, _, since = (np.asarray(x) for x in run(keys, inverted))
    np.testing.assert_array_equal(obs[:, 5], -1.0)
    np.testing.assert_array_equal(o[..., 5], -1.0)
    assert np.all(since < 0)  # never switches
    with pytest.raises(ValueError, match="direction must be a bool"):
        envs.GoalVisible(inner, direction=1)


# ------------------------------------------------------------------------------ partial


def test_partial_hides_the_velocities_under_jit_and_vmap():
    partial, full = SUITES["partial"].env(), envs.make_suite_env("full")
    assert envs.obs_dim(partial) == 2 and partial.observation_space().shape == (2,)
    assert envs.ContextWrapper(partial).observation_space().shape == (2 + 2 + 2,)
    tasks = _draw("partial", "test", n=8)
    keys = jax.random.split(jax.random.key(0), 8)

    @jax.jit
    def both(env_is_partial):
        out = []
        for env in (partial, full):
            obs, state = jax.vmap(env.reset)(keys, tasks)
            nxt, *_ = jax.vmap(env.step, in_axes=(0, 0, None, 0))(keys, state, 1, tasks)
            out.append((obs, nxt))
        return out

    (p0, p1), (f0, f1) = both(True)
    chex.assert_shape([p0, p1], (8, 2))
    # [x, theta]: the velocities dropped; two envs' computations may differ in the last bits
    np.testing.assert_allclose(p0, f0[:, [0, 2]], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(p1, f1[:, [0, 2]], rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="obs_mode='partial' is defined for"):
        envs.observe(p0, "partial", partial)  # no second slicing of an already partial observation


# ------------------------------------------------------------------------------ import cost


def test_suites_and_the_suite_flag_import_no_jax(fresh_python):
    """The registry and `--suite` checks (a bad name is exit 2 naming the flag) run without
    JAX, flax or gymnax, so they answer before anything is compiled."""
    code = ("import contextlib, io, sys, envs\nfrom envs.suites import SUITES\n"
            "print(SUITES['extreme'].to_dict()['tasks']['test']['force_mag'], envs.SUITE_NAMES[0])\n"
            "from benchmarks.cli import parse_args\nerr = io.StringIO()\n"
            "with contextlib.redirect_stderr(err):\n"
            "    try:\n        parse_args(['--suite', 'hard'])\n    except SystemExit as e:\n        print(e.code)\n"
            "print(err.getvalue().strip().splitlines()[-1])\n"
            "print(parse_args(['--suite', 'goal', '--quick'])[0].suite)\n"
            "print(sorted(m for m in ('jax', 'gymnax', 'flax') if m in sys.modules))")
    assert fresh_python(code) == [
        "[[1.0, 5.0], [15.0, 20.0]] standard", "2",
        "python -m benchmarks.cartpole: error: --suite must be one of ['standard', 'partial', "
        "'extreme', 'switching', 'goal', 'all'], got 'hard'", "goal", "[]"]
