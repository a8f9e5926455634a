"""Evaluation suites: named, frozen descriptions of a CartPole evaluation problem.

A `Suite` is the task side of an evaluation: the task distribution with its train and held-out
test splits (`envs.CartPoleTasks`, whose test ranges may be unions of intervals), the
observation mode, an optional within-episode switch, an optional hidden goal, and the episode
limit. `suite.env()` is the gymnax environment its tasks run in and `suite.sample(key, n,
split)` draws `n` tasks of a split (a pure, jittable function of `key`), so a suite plugs into
everything that takes an `env` and a task distribution (`envs.rollout_tasks`, `maml.PPO`,
`maml.MAMLRL`, `adapt`, `envs.ContextWrapper`) without changes.

`SUITES` (`SUITE_NAMES`, in order):

==========  ===================================================================================
standard    `CartPoleTasks()`: varied pole length and mass, cart mass, gravity and force
            magnitude, half the tasks with inverted force; test split with longer and heavier
            poles and heavier carts; full observations, survival reward. Its env and tasks are
            exactly `envs.make("CartPole-v1")[0]` and `CartPoleTasks().sample`.
partial     standard's tasks with the velocities hidden (observation `[x, theta]`).
extreme     the extrapolation protocol of Packer et al. 2018: train force magnitude [5, 15] N,
            half pole length [0.25, 0.75] m, pole mass [0.05, 0.5] kg; test on the ranges beyond
            both ends, force [1, 5] U [15, 20], length [0.05, 0.25] U [0.75, 1.0], pole mass
            [0.01, 0.05] U [0.5, 1.0]; cart mass 1.0 kg and gravity 9.8 (gymnax's defaults);
            half the tasks inverted.
switching   standard's tasks, and in each episode at a step drawn uniformly from [100, 400] the
            force direction flips and the physics is replaced by a second draw from the same
            split (per task); the switch is visible only through the dynamics.
goal        standard's tasks with a hidden target cart position x* per task (train |x*| <= 1.0,
            test |x*| <= 1.5) and the reward `max(0, 1 - |x - x*| / x_threshold)` per step
            while the pole is up (x after the step, x_threshold = 2.4), so returns stay in
            [0, 500]; x* is not observed.
==========  ===================================================================================

Suites that only change the task distribution (standard, extreme) run in plain gymnax CartPole
with `EnvParams` tasks; the others in `envs.suite_env.SuiteCartPole` with `SuiteParams` tasks
(the switch and the goal are data in the task params; see that module). This module imports no
JAX or gymnax (the command line lists and checks suite names without them).
"""

from __future__ import annotations

import dataclasses
import functools
from types import MappingProxyType
from typing import Any, Mapping, Optional

from envs.observation import check_obs_mode
from envs.tasks import SPLITS, TASK_ENV_NAMES, CartPoleTasks, EnvTasks, check_intervals, intervals, span
from ssm_jax.validation import check_choice, check_int

#: The environment every suite varies.
BASE_ENV = "CartPole-v1"
#: gymnax CartPole's track half-width (`EnvParams.x_threshold`): a goal must lie inside it.
X_THRESHOLD = 2.4
#: Key stream of the suite's own draws (switch physics, goals), apart from the physics draw.
SUITE_STREAM = 0x5017E


@dataclasses.dataclass(frozen=True)
class Suite:
    """One evaluation problem on CartPole (see the module docstring for the registered ones).

    Attributes:
      name: the suite's name (`--suite NAME`).
      description: one line saying what it tests.
      tasks: the physics distribution and its splits (`envs.CartPoleTasks`, or an
        `envs.EnvTasks` of any `TASK_ENVS` environment for an unwrapped suite; its
        `max_steps_in_episode` is the episode limit).
      obs_mode: `"full"` or `"partial"` (velocities hidden; `envs.observation`).
      switch_steps: `(low, high)`, ints with `1 <= low <= high < episode limit`: each episode
        switches at a step drawn uniformly from `[low, high]` to a second physics draw of the
        same split with the force direction flipped; None: no switch.
      goal_x: `(min, max)` of the hidden target cart position x* in the train split, or None
        (survival reward). goal_x_test: the test split's range of x*, a `(min, max)` pair or a
        union of disjoint intervals; it must reach outside `goal_x` (held out). Every x* lies
        strictly inside the track, `|x*| < X_THRESHOLD`.

    Raises:
      ValueError (on construction) naming the field: an empty name, `tasks` that is not a
      `CartPoleTasks` or `EnvTasks` (a wrapped suite needs CartPole tasks), an unknown observation mode, switch steps out of order or outside the
      episode, a goal range without its test range (or the reverse), off the track, or a test
      goal range inside the train one.
    """

    name: str
    description: str
    tasks: CartPoleTasks = dataclasses.field(default_factory=CartPoleTasks)
    obs_mode: str = "full"
    switch_steps: Optional[tuple] = None
    goal_x: Optional[tuple] = None
    goal_x_test: Optional[tuple] = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"name must be a non-empty identifier, got {self.name!r}")
        if not isinstance(self.description, str):
            raise ValueError(f"description must be a str, got {type(self.description).__name__}")
        if not isinstance(self.tasks, (CartPoleTasks, EnvTasks)):
            raise ValueError(f"tasks must be an envs.CartPoleTasks or envs.EnvTasks, got "
                             f"{type(self.tasks).__name__}")
        check_obs_mode(self.obs_mode, self.env_name)
        if self.switch_steps is not None:
            self._check_switch_steps()
        if (self.goal_x is None) != (self.goal_x_test is None):
            raise ValueError(f"goal_x and goal_x_test must both be given or both be None, got "
                             f"goal_x={self.goal_x!r}, goal_x_test={self.goal_x_test!r}")
        if self.goal_x is not None:
            self._check_goal()
        if self.wrapped and self.env_name != BASE_ENV:
            raise ValueError(f"a suite with a partial observation, a switch or a goal runs on "
                             f"{BASE_ENV} tasks only, got {self.env_name} tasks")

    def _check_switch_steps(self):
        value = self.switch_steps
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise ValueError(f"switch_steps must be a (low, high) pair of ints, got {value!r}")
        low = check_int("switch_steps low", value[0], 1)
        high = check_int("switch_steps high", value[1], low)
        limit = self.episode_limit
        if high >= limit:
            raise ValueError(f"switch_steps high must be < the episode limit {limit}, got {high}")
        object.__setattr__(self, "switch_steps", (low, high))

    def _check_goal(self):
        train = check_intervals("goal_x", self.goal_x, positive=False)
        if not isinstance(train[0], float):
            raise ValueError(f"goal_x must be one (min, max) pair, got {self.goal_x!r}")
        test = check_intervals("goal_x_test", self.goal_x_test, positive=False)
        for name, value in (("goal_x", train), ("goal_x_test", test)):
            lo, hi = span(value)
            if lo <= -X_THRESHOLD or hi >= X_THRESHOLD:
                raise ValueError(f"{name} must lie strictly inside the track (-{X_THRESHOLD}, "
                                 f"{X_THRESHOLD}), got {value!r}")
        lo, hi = span(test)
        if lo >= train[0] and hi <= train[1]:
            raise ValueError(f"goal_x_test must reach outside goal_x={train!r} so the test split is "
                             f"held out, got {test!r}")
        object.__setattr__(self, "goal_x", train)
        object.__setattr__(self, "goal_x_test", test)

    # ---- what the suite is -----------------------------------------------------------------
    @property
    def env_name(self) -> str:
        """The gymnax environment of the suite's tasks (`tasks.env_name`)."""
        return self.tasks.env_name

    @property
    def task_fields(self) -> tuple:
        """The task fields the suite varies, reported per test task: the physics distribution's
        (its train ranges' keys, in sampling order), then `goal_x` in a suite with a goal."""
        return tuple(self.tasks.split_ranges("train")) + (("goal_x",) if self.has_goal else ())

    @property
    def episode_limit(self) -> int:
        """Steps after which an episode is truncated (`tasks.max_steps_in_episode`)."""
        return self.tasks.max_steps_in_episode

    @property
    def switches(self) -> bool:
        return self.switch_steps is not None

    @property
    def has_goal(self) -> bool:
        return self.goal_x is not None

    @property
    def wrapped(self) -> bool:
        """Whether the suite needs `envs.suite_env.SuiteCartPole` (a partial observation, a
        switch or a goal); else it runs in plain gymnax CartPole with `EnvParams` tasks."""
        return self.obs_mode != "full" or self.switches or self.has_goal

    def goal_range(self, split: str = "train"):
        """The range (or union) x* is drawn from in `split`; None without a goal."""
        check_choice("split", split, SPLITS)
        return self.goal_x if split == "train" else self.goal_x_test

    def to_dict(self) -> dict:
        """The JSON form (results.json): every field, the task ranges of both splits (and the
        environment, for a suite on other tasks than CartPole's)."""
        t = self.tasks
        env = {} if self.env_name == BASE_ENV else {"env_name": self.env_name}
        return {**env, "name": self.name, "description": self.description, "obs_mode": self.obs_mode,
                "episode_limit": self.episode_limit,
                "switch_steps": None if self.switch_steps is None else list(self.switch_steps),
                "goal_x": {s: _json_range(self.goal_range(s)) for s in SPLITS} if self.has_goal else None,
                "tasks": {"inverted_fraction": t.inverted_fraction,
                          **{s: {f: _json_range(v) for f, v in t.split_ranges(s).items()} for s in SPLITS}}}

    # ---- the environment and its tasks -----------------------------------------------------
    def env(self):
        """The gymnax environment of the suite's tasks (cached: the same object every call):
        `envs.make(env_name)[0]`, or `envs.suite_env.make_suite_env(obs_mode)` for a
        wrapped suite."""
        if not self.wrapped:
            from envs.registry import make  # noqa: PLC0415

            return make(self.env_name)[0]
        from envs.suite_env import make_suite_env  # noqa: PLC0415

        return make_suite_env(self.obs_mode)

    def sample(self, key, num_tasks: int, split: str = "train"):
        """`num_tasks` tasks of `split`, a pure function of `key` (jittable, `num_tasks` and
        `split` static), with a leading task axis on every leaf.

        The physics is `tasks.sample(key, num_tasks, split)` (so standard's tasks are exactly
        `CartPoleTasks().sample`'s); a wrapped suite returns `SuiteParams` whose switch physics
        (a second physics draw, force direction flipped) and goals come from a separate key
        stream of `key` and the split.
        """
        physics = self.tasks.sample(key, num_tasks, split)
        if not self.wrapped:
            return physics
        import jax  # noqa: PLC0415
        import jax.numpy as jnp  # noqa: PLC0415

        from envs.suite_env import make_suite_params  # noqa: PLC0415
        from envs.tasks import _SPLIT_IDS, sample_intervals  # noqa: PLC0415

        extra = jax.random.fold_in(jax.random.fold_in(key, SUITE_STREAM), _SPLIT_IDS[split])
        k_after, k_goal = jax.random.split(extra)
        after = None
        if self.switches:
            after = self.tasks.sample(k_after, num_tasks, split)
            flipped = -jnp.sign(physics.force_mag) * jnp.abs(after.force_mag)
            after = after.replace(force_mag=flipped)
        goal = None
        if self.has_goal:
            goal = sample_intervals(k_goal, (num_tasks,), self.goal_range(split))
        return make_suite_params(physics, after=after,
                                 switch_steps=self.switch_steps if self.switches else None, goal_x=goal)


def _json_range(value) -> Any:
    parts = intervals(value)
    return list(parts[0]) if len(parts) == 1 else [list(p) for p in parts]


#: Packer et al. 2018's CartPole ranges: train "R", test "E" (both ends beyond the train range).
EXTREME_TASKS = CartPoleTasks(
    length=(0.25, 0.75), masspole=(0.05, 0.5), masscart=(1.0, 1.0), gravity=(9.8, 9.8),
    force_mag=(5.0, 15.0), inverted_fraction=0.5,
    test_ranges={"force_mag": ((1.0, 5.0), (15.0, 20.0)), "length": ((0.05, 0.25), (0.75, 1.0)),
                 "masspole": ((0.01, 0.05), (0.5, 1.0))})

SUITES: Mapping[str, Suite] = MappingProxyType({s.name: s for s in (
    Suite("standard", "varied CartPole physics, half the tasks with inverted force; held-out "
                      "longer/heavier poles and heavier carts"),
    Suite("partial", "standard's tasks with the velocities hidden (observation [x, theta])",
          obs_mode="partial"),
    Suite("extreme", "Packer et al. 2018 extrapolation: train force [5,15], length [0.25,0.75], "
                     "pole mass [0.05,0.5]; test beyond both ends; half inverted",
          tasks=EXTREME_TASKS),
    Suite("switching", "standard's tasks; at a step drawn from [100, 400] in every episode the "
                       "force direction flips and the physics is redrawn (unobserved)",
          switch_steps=(100, 400)),
    Suite("goal", "standard's tasks with a hidden target cart position x* (train |x*| <= 1, "
                  "test |x*| <= 1.5); reward 1 - |x - x*| / 2.4 while the pole is up",
          goal_x=(-1.0, 1.0), goal_x_test=(-1.5, 1.5)),
)})
#: Every registered suite's name, in order.
SUITE_NAMES: tuple = tuple(SUITES)
DEFAULT_SUITE = "standard"


#: The suites each task environment runs: every registered suite on CartPole-v1; the standard
#: suite (full observation, survival or the env's own reward, no switch) on the others.
ENV_SUITES: Mapping[str, tuple] = MappingProxyType(
    {name: SUITE_NAMES if name == BASE_ENV else (DEFAULT_SUITE,) for name in TASK_ENV_NAMES})


def get_suite(name: str, env_name: str = BASE_ENV) -> Suite:
    """The suite `name` on the tasks of `env_name` (one of `envs.TASK_ENV_NAMES`).

    On CartPole-v1 the registered suite (`SUITES[name]`); on another environment only the
    standard suite, whose tasks are `envs.EnvTasks(env_name)` (its default ranges and episode
    limit) in the plain gymnax environment (the same object every call). ValueError listing
    the supported environments, or the suites of `env_name` (`ENV_SUITES`), otherwise.
    """
    check_choice("env_name", env_name, TASK_ENV_NAMES)
    check_choice("suite", name, ENV_SUITES[env_name])
    if env_name == BASE_ENV:
        return SUITES[name]
    return _env_suite(env_name)


@functools.lru_cache(maxsize=None)
def _env_suite(env_name: str) -> Suite:
    return Suite(DEFAULT_SUITE, f"varied {env_name} physics, half the tasks with inverted "
                 f"control; held-out test ranges (envs.TASK_ENVS[{env_name!r}])",
                 tasks=EnvTasks(env_name))
