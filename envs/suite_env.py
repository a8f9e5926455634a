"""`SuiteCartPole`: gymnax CartPole whose task params carry a within-episode switch and a goal.

The evaluation suites (`envs.suites`) change CartPole in three ways besides the physics
distribution; all of them are *data* in the task params or a static observation mode, so one
environment object serves every task and every suite with the same observation mode, and
`envs.rollout` / `rollout_tasks`, `maml.PPO`, `maml.MAMLRL`, `adapt` and
`envs.ContextWrapper` use it unchanged (gymnax's `reset(key, params)` / `step(key, state,
action, params)` interface, auto-reset included).

Task params (`SuiteParams`): a CartPole `EnvParams` (the physics an episode starts with; a
negative `force_mag` inverts the force direction as in `envs.tasks`) plus

* `after`: an `EnvParams` whose physics fields (gravity, masses, length, force) replace the
  task's from the switch step on;
* `switch_low`, `switch_high` (int32): each episode draws its switch step `s` uniformly from
  `[switch_low, switch_high]` at reset (kept in `SuiteState.switch_step`). The first `s` steps
  of the episode (state time `0 .. s - 1` before the step) use the task's physics, every later
  step the `after` physics. `NO_SWITCH` (both bounds) means the episode never switches.
  Every step's info holds `since_switch` (int32), `time - s` of the state the step started
  from: negative before the switch, 0 at the first step with the `after` physics
  (`rewards_around_switch` aligns a trajectory's rewards on it);
* `goal_x` (float32) and `goal_reward` (bool): with `goal_reward`, the reward of a step is
  `max(0, 1 - |x' - goal_x| / x_threshold)` where `x'` is the cart position after the step,
  times gymnax's `1 - prev_terminal` (so every reward lies in [0, 1] and a 500-step return in
  [0, 500]); without it, gymnax's survival reward. `goal_x` is not in the observation. Every
  step's info holds `goal_distance`, `|x' - goal_x|` (`final_goal_distance` reads it).

Observation mode (static, one cached environment per mode, `make_suite_env`): `"full"`
`[x, x_dot, theta, theta_dot]` or `"partial"` `[x, theta]` (`envs.observation`). Roll it out
with `obs_mode="full"` (the default), which passes the environment's observation through.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import spaces
from gymnax.environments.classic_control.cartpole import CartPole, EnvParams, EnvState

from envs.observation import PARTIAL_OBS_INDICES, check_obs_mode, observe
from envs.rollout import episode_index
from envs.tasks import force_sign
from ssm_jax.validation import check_bool, check_int
from envs.wrapper import ObservationWrapper

#: The switch bounds of an episode that never switches (beyond any episode limit).
NO_SWITCH = 2**30
#: The `EnvParams` fields the switch replaces (the physics; tau and thresholds stay).
PHYSICS_FIELDS = ("gravity", "masscart", "masspole", "total_mass", "length", "polemass_length",
                  "force_mag")
BASE_NAME = "CartPole-v1"


@struct.dataclass
class SuiteParams(EnvParams):
    """CartPole `EnvParams` plus the switch and the goal (see the module docstring)."""

    after: EnvParams = struct.field(default_factory=EnvParams)
    switch_low: int = NO_SWITCH
    switch_high: int = NO_SWITCH
    goal_x: float = 0.0
    goal_reward: bool = False


@struct.dataclass
class SuiteState(EnvState):
    """CartPole `EnvState` plus the episode's switch step (drawn at reset)."""

    switch_step: int


class SuiteCartPole(CartPole):
    """gymnax CartPole-v1 with `SuiteParams` tasks and an observation mode.

    Args:
      obs_mode: `"full"` or `"partial"` (velocities dropped), applied to every observation.

    Use `make_suite_env(obs_mode)`: it caches one object per mode, so jitted functions that take
    the environment as a static argument (hashed by identity) do not recompile.
    """

    def __init__(self, obs_mode: str = "full"):
        super().__init__()
        check_obs_mode(obs_mode, BASE_NAME)
        self.obs_mode = obs_mode
        if obs_mode == "partial":
            self.obs_shape = (len(PARTIAL_OBS_INDICES[BASE_NAME]),)

    @property
    def name(self) -> str:
        return f"{BASE_NAME}+suite" + ("" if self.obs_mode == "full" else f"+{self.obs_mode}")

    @property
    def default_params(self) -> SuiteParams:
        return SuiteParams()

    def get_obs(self, state, params=None, key=None) -> jax.Array:
        return observe(super().get_obs(state, params, key), self.obs_mode, BASE_NAME)

    def observation_space(self, params=None) -> spaces.Box:
        full = super().observation_space(self.default_params if params is None else params)
        if self.obs_mode == "full":
            return full
        idx = jnp.asarray(PARTIAL_OBS_INDICES[BASE_NAME])
        return spaces.Box(full.low[idx], full.high[idx], self.obs_shape, jnp.float32)

    def reset_env(self, key, params: SuiteParams):
        """Gymnax's reset from the first half of `key`; the switch step from the second."""
        key_state, key_switch = jax.random.split(key)
        obs, state = super().reset_env(key_state, params)
        switch = jax.random.randint(key_switch, (), params.switch_low, params.switch_high + 1)
        return obs, _with_switch(state, switch)

    def step_env(self, key, state: SuiteState, action, params: SuiteParams):
        """Gymnax's CartPole step with the physics of `params` before the episode's switch step
        and of `params.after` from it on; the goal reward where `params.goal_reward`."""
        obs, inner, reward, done, info = super().step_env(key, state, action, physics_at(state, params))
        distance = jnp.abs(inner.x - params.goal_x).astype(jnp.float32)
        info = {**info, "since_switch": (state.time - state.switch_step).astype(jnp.int32),
                "goal_distance": distance}
        shaped = jnp.maximum(0.0, 1.0 - distance / params.x_threshold)
        reward = jnp.where(params.goal_reward, reward * shaped, reward).astype(jnp.float32)
        return obs, _with_switch(inner, state.switch_step), reward, done, info


def physics_at(state: SuiteState, params: SuiteParams) -> SuiteParams:
    """`params` with the physics the step taken from `state` runs on: the task's own before
    the episode's switch step (`state.time < state.switch_step`), `params.after`'s from it on."""
    switched = state.time >= state.switch_step
    return params.replace(**{f: jnp.where(switched, getattr(params.after, f), getattr(params, f))
                             for f in PHYSICS_FIELDS})


def _with_switch(state: EnvState, switch_step) -> SuiteState:
    return SuiteState(x=state.x, x_dot=state.x_dot, theta=state.theta, theta_dot=state.theta_dot,
                      time=state.time, switch_step=jnp.asarray(switch_step, jnp.int32))


def rewards_around_switch(traj, window: int, episode=0) -> jax.Array:
    """Each row's rewards of its episode number `episode` aligned on that episode's switch step.

    `traj`: an `envs.Trajectory` of a `SuiteCartPole` (its `info["since_switch"]`), leaves with
    leading axes `(..., T)`; `episode`: the episode's index in the window (0: the first; an int
    or an int array broadcasting against the rows). Returns `(..., 2 * window)` float32: entry
    `window + d` is the reward of the step `d` steps after the switch (`d` in
    `[-window, window)`, `d = 0` the first step with the new physics), and 0 where that
    episode had ended before (or the window ended before) that step. With the survival reward,
    entry `window + d` averaged over rows is the fraction of episodes still running `d` steps
    from the switch. Jittable; ValueError if `traj` has no `since_switch`.
    """
    if "since_switch" not in traj.info:
        raise ValueError("rewards_around_switch: traj.info has no since_switch; roll out a SuiteCartPole "
                         "(envs.make_suite_env) whose tasks switch")
    window = check_int("window", window, 1)
    dones = traj.dones
    index = episode_index(dones)
    offset = traj.info["since_switch"] + window
    keep = (index == jnp.asarray(episode)[..., None]) & (offset >= 0) & (offset < 2 * window)
    bins = jnp.where(keep, offset, 2 * window).reshape((-1, dones.shape[-1]))
    rewards = traj.rewards.reshape(bins.shape).astype(jnp.float32)
    per_row = jax.vmap(lambda r, b: jax.ops.segment_sum(r, b, num_segments=2 * window + 1))(rewards, bins)
    return per_row[:, :-1].reshape(dones.shape[:-1] + (2 * window,))


def final_goal_distance(traj, episode=0) -> jax.Array:
    """Each row's `|x - goal_x|` after the last step of its episode number `episode` (its done
    step, or the window's last step if it is still running), `traj.rewards.shape[:-1]` float32;
    NaN where the row has no such episode. `traj`: an `envs.Trajectory` of a `SuiteCartPole`
    (its `info["goal_distance"]`); `episode` as in `rewards_around_switch`. Jittable;
    ValueError if `traj` has no `goal_distance`."""
    if "goal_distance" not in traj.info:
        raise ValueError("final_goal_distance: traj.info has no goal_distance; roll out a SuiteCartPole "
                         "(envs.make_suite_env)")
    dones = traj.dones
    index = episode_index(dones)
    mine = index == jnp.asarray(episode)[..., None]
    last = dones.shape[-1] - 1 - jnp.argmax(jnp.flip(mine, axis=-1), axis=-1)
    distance = jnp.take_along_axis(traj.info["goal_distance"], last[..., None], axis=-1)[..., 0]
    return jnp.where(jnp.any(mine, axis=-1), distance, jnp.nan).astype(jnp.float32)


@functools.lru_cache(maxsize=None)
def make_suite_env(obs_mode: str = "full") -> SuiteCartPole:
    """The (cached, stateless) `SuiteCartPole` of `obs_mode`: the same object on every call."""
    check_obs_mode(obs_mode, BASE_NAME)
    return SuiteCartPole(obs_mode)


def make_suite_params(physics: EnvParams, *, after: EnvParams | None = None,
                      switch_steps: tuple[int, int] | None = None, goal_x=None) -> SuiteParams:
    """`SuiteParams` of tasks with the physics `physics` (an `EnvParams`, any leading task axes).

    Args:
      physics: the physics every episode starts with.
      after: the physics from the switch step on (same shapes as `physics`); needed with
        `switch_steps`.
      switch_steps: `(low, high)`: each episode switches at a step drawn uniformly from
        `[low, high]`; None: never.
      goal_x: the hidden target cart position (broadcast to the task shape); None: survival
        reward.
    """
    shape = jnp.shape(physics.gravity)
    if (after is None) != (switch_steps is None):
        raise ValueError("make_suite_params: give both after and switch_steps, or neither")
    low, high = (NO_SWITCH, NO_SWITCH) if switch_steps is None else switch_steps
    if after is None:
        after = physics
    fields = {f: getattr(physics, f) for f in EnvParams.__dataclass_fields__}
    full = lambda v, dtype: jnp.broadcast_to(jnp.asarray(v, dtype), shape)  # noqa: E731
    return SuiteParams(
        **fields,
        after=EnvParams(**{f: getattr(after, f) for f in EnvParams.__dataclass_fields__}),
        switch_low=full(low, jnp.int32), switch_high=full(high, jnp.int32),
        goal_x=full(0.0 if goal_x is None else goal_x, jnp.float32),
        goal_reward=full(goal_x is not None, jnp.bool_))


class GoalVisible(ObservationWrapper):
    """A `SuiteCartPole` whose observation ends with what its task hides: the goal
    `params.goal_x` and, with `direction`, the force direction: the oracle's view of the `goal`
    suite.

    Observation `[inner observation | goal_x]`, `(D + 1,)` float32 (`D` the inner env's
    observation size in its own mode), or with `direction` `[inner observation | goal_x | d]`,
    `(D + 2,)`, where `d` is `envs.force_sign` of the physics the step to come runs on
    (`physics_at`: `params.after` from the episode's switch step on): -1.0 inverted, +1.0
    normal. States, params, tasks, rewards and dones are the inner environment's, so
    rollouts take the same `SuiteParams` tasks. Wrappers of the same inner environment with the
    same `direction` compare and hash equal (jitted functions taking it as a static argument do
    not recompile).

    Args:
      env: a `SuiteCartPole` (`make_suite_env(obs_mode)`); ValueError otherwise.
      direction: also tell the force direction (bool).
    """

    def __init__(self, env, direction: bool = False):
        if not isinstance(env, SuiteCartPole):
            raise ValueError(f"env must be a SuiteCartPole (envs.make_suite_env()), whose tasks carry a goal, "
                             f"got {type(env).__name__}")
        super().__init__(env)
        self.direction = check_bool("direction", direction)

    def identity(self) -> tuple:
        return (self.direction,)

    @property
    def name(self) -> str:
        return f"{self._env.name}+goal" + ("+direction" if self.direction else "")

    def observation_space(self, params=None) -> spaces.Box:
        inner = self._env.observation_space(params)
        return spaces.Box(-jnp.inf, jnp.inf, (inner.shape[0] + 1 + self.direction,), jnp.float32)

    def _told(self, obs, state, params) -> jax.Array:
        told = [jnp.asarray(obs, jnp.float32), jnp.reshape(jnp.asarray(params.goal_x, jnp.float32), (1,))]
        if self.direction:
            told.append(jnp.reshape(force_sign(physics_at(state, params)), (1,)))
        return jnp.concatenate(told, axis=-1)

    def reset(self, key, params=None):
        params = self.default_params if params is None else params
        obs, state = self._env.reset(key, params)
        return self._told(obs, state, params), state

    def step(self, key, state, action, params=None):
        params = self.default_params if params is None else params
        obs, state, reward, terminated, truncated, info = self._env.step(key, state, action, params)
        return self._told(obs, state, params), state, reward, terminated, truncated, info
