"""A finished benchmark run as a library object: `load_run(DIR)` and its ready policies.

    run = load_run("results/cartpole")          # a run directory of `python -m benchmarks.cartpole`
    run.config                                  # its BenchmarkConfig (config.json)
    p = run.policies["maml_adapted"]            # one MethodPolicy per method of the run
    params = p.params(seed_index=0)             # the trained params of one training seed
    task = run.test_task(seed_index=0, task_index=3)   # a held-out task of the run's evaluation
    adapted = p.adapt(0, task, key)             # MAML methods: params after the inner steps
    episode = rollout_episode(p, 0, task, key)  # one episode (states, actions, rewards, return)

A `MethodPolicy` holds what a method acts with: its trainer's policy module and environment
(`policy.apply(params, obs, carry, reset, method="step")`, the `ssm_jax` policy contract) and
the trained state of every seed (leading seed axis). The MAML methods adapt with the library's
own functions: `maml_zero_shot` / `maml_adapted` / `maml_adapted_mlp` with the MAML inner
policy-gradient step and the trained Meta-SGD step sizes (`maml.MAMLRL.adapt_and_evaluate`,
support batches of the training size), `test_time_adapted` with its online rule and
`test_time_hybrid` with its hybrid rule (`adapt.evaluate_with_adaptation`,
`benchmarks.evaluation.test_time_rule`); `in_context`
adapts through its carry, kept across episodes. `MethodPolicy.evaluate` reruns the method's
registered evaluator, so it reproduces the run's per-task returns (per_task.csv) exactly.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

import adapt
import envs
from benchmarks import compile_time
from benchmarks import evaluation as ev
from benchmarks import rundir
from benchmarks.config import BenchmarkConfig
from benchmarks.methods import METHODS_BY_NAME, TASK_FIELDS, Evaluation, Method
from benchmarks.trainers import Trainer, build_trainer
from envs.observation import PARTIAL_OBS_INDICES
from ssm_jax.validation import check_bool, check_choice, check_float, check_int

#: How each method adapts: "inner_steps" (MAML inner steps), "rounds" (test-time updates
#: between rounds), "context" (RL^2 carry across episodes), "within_episode" (weight updates
#: during the episode itself) or "none".
ADAPTATION = {"non_adaptive": "none", "non_adaptive_ssm": "none", "in_context": "context",
              "maml_zero_shot": "inner_steps", "maml_adapted": "inner_steps", "test_time_adapted": "rounds",
              "test_time_hybrid": "rounds", "test_time_within_episode": "within_episode",
              "maml_adapted_mlp": "inner_steps", "goal_oracle": "none"}
#: The "rounds" methods whose rule replays earlier rounds (`evaluation.hybrid_replay_*`).
REPLAY_METHODS = ("test_time_hybrid",)


def _index(name: str, value: Any, size: int) -> int:
    """`value` as an index into `size` items, else ValueError naming `name`."""
    i = check_int(name, value, 0)
    if i >= size:
        raise ValueError(f"{name} must be < {size}, got {i}")
    return i


@dataclasses.dataclass(frozen=True)
class MethodPolicy:
    """One method of a finished run, ready to act.

    Attributes:
      method: the registry entry (`benchmarks.methods.Method`).
      trainer: the `benchmarks.trainers.Trainer` it was trained by (policy, env, algorithm).
      states: the trained state of every seed (leading seed axis `S`): a PPO train state or a
        `maml.core.MetaState` (params, Meta-SGD step sizes `inner_lr`).
      config: the run's `BenchmarkConfig`.
    """

    method: Method
    trainer: Trainer
    states: Any
    config: BenchmarkConfig

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def policy(self):
        """The policy module (`SSMPolicy` / `MLPPolicy`); act with `policy.apply(params, ...)`."""
        return self.trainer.policy

    @property
    def apply(self):
        """`policy.apply`: `apply(params, obs, carry, reset, method="step") -> (out, carry)`."""
        return self.trainer.policy.apply

    @property
    def env(self):
        """The environment it acts in (`envs.context.ContextWrapper` for in_context)."""
        return self.trainer.env

    @property
    def adaptation(self) -> str:
        """"none", "inner_steps", "rounds", "context" or "within_episode" (see `ADAPTATION`)."""
        return ADAPTATION[self.method.name]

    @property
    def obs_mode(self) -> str:
        """The observation mode of the run's suite (`"full"`, or `"partial"`: `[x, theta]`)."""
        return envs.get_suite(self.config.suite, self.config.env_name).obs_mode

    @property
    def carry_across_episodes(self) -> bool:
        """Whether the policy keeps its carry across episodes (in_context)."""
        return self.adaptation == "context"

    @property
    def default_adapt_steps(self) -> int:
        """The adaptation the method is reported with: inner steps (maml_adapted:
        `maml.rl.num_inner_steps`, maml_zero_shot: 0) or updates (test_time_adapted: rounds - 1)."""
        if self.method.name in ("maml_adapted", "maml_adapted_mlp"):
            return self.config.maml.rl.num_inner_steps
        if self.adaptation == "rounds":
            return self.config.evaluation.test_time_rounds - 1
        return 0

    @property
    def num_seeds(self) -> int:
        return self.config.num_seeds

    def state(self, seed_index: int):
        """The trained state of training seed `config.seed + seed_index`."""
        s = _index("seed_index", seed_index, self.num_seeds)
        return jax.tree.map(lambda x: x[s], self.states)

    def params(self, seed_index: int):
        """The trained policy params of training seed `config.seed + seed_index`."""
        return self.state(seed_index).params

    def adapt(self, seed_index: int, task, key, num_steps: Optional[int] = None,
              max_steps: Optional[int] = None):
        """`(params, returns)`: the params of seed `seed_index` after `num_steps` adaptation
        steps on ONE task (default `default_adapt_steps`), and the returns measured on the way.

        `max_steps` (an int >= `num_steps`, or None): run one program compiled for up to
        `max_steps` steps, with `num_steps` as data, so that every step count up to it reuses
        it (the web page's slider); the results are those of the `num_steps` program (same
        keys and data, up to the last bits in which two programs may round apart; `MAMLRL.adapt_and_evaluate`'s `max_inner_steps`,
        `adapt.evaluate_with_adaptation`'s `num_active_rounds`), computed at the cost of
        `max_steps` steps. None: the program of `num_steps` steps.

        inner_steps methods: `num_steps` MAML inner steps (`MAMLRL.adapt_and_evaluate`, support
        batches of `maml.rl.support_envs x support_steps`); returns `(num_steps + 1,)`: the
        completed-episode return of each support batch and of a batch of the final params.
        rounds (test_time_adapted, test_time_hybrid): `num_steps` rounds of 500 steps, each
        followed by one update of the method's rule (`adapt.evaluate_with_adaptation`, online or
        hybrid); returns `(num_steps,)`: each round's first-episode return. Methods that do not
        adapt their params before an episode (non_adaptive, non_adaptive_ssm, in_context,
        test_time_within_episode, which adapts them during it) accept only `num_steps` 0 or
        None; returns `(0,)`.
        """
        kind = self.adaptation
        k = self.default_adapt_steps if num_steps is None else check_int("num_steps", num_steps, 0)
        if max_steps is not None:
            max_steps = check_int("max_steps", max_steps, k)
        state = self.state(seed_index)
        if kind in ("none", "context", "within_episode"):
            if k:
                how = {"none": "", "context": ", it adapts in context",
                       "within_episode": ", it adapts them during the episode"}[kind]
                raise ValueError(f"num_steps must be 0 for {self.name!r} (it does not adapt its "
                                 f"params before an episode{how}), got {k}")
            return state.params, np.zeros((0,))
        if kind == "inner_steps":
            c = self.trainer.algo.config
            out = self.trainer.algo.adapt_and_evaluate(
                state, jax.tree.map(lambda x: jnp.asarray(x)[None], task), key, num_inner_steps=k,
                num_envs=c.support_envs, num_steps=c.support_steps, max_inner_steps=max_steps)
            return jax.tree.map(lambda x: x[0], out["params"]), np.asarray(out["completed_return"])[0, :k + 1]
        e = self.config.evaluation
        replay = (e.hybrid_replay_capacity, e.hybrid_replay_ratio) if self.name in REPLAY_METHODS else (0, 0.0)
        rounds = k if max_steps is None else max_steps
        active = None if max_steps is None else jnp.int32(k)
        params, returns = _adapt_online(key, self.policy, state, task, rounds, e.num_envs, self.env,
                                        self.trainer.algo.config.baseline, *replay,
                                        self.config.episode_steps, active)
        return params, np.asarray(returns)[:k]

    def evaluate(self, seed_index: int, tasks=None, key=None) -> Evaluation:
        """The method's registered evaluator on seed `seed_index`'s tasks: by default the run's
        own test tasks and evaluation key, which reproduces the run's per-task series exactly
        (compiled as the run compiled it, `compile_time.fast_compile(config.fast_compile)`)."""
        s = _index("seed_index", seed_index, self.num_seeds)
        key = ev.eval_key(self.config.seed, s) if key is None else key
        if tasks is None:
            tasks = ev.test_tasks(key, self.config.evaluation.num_tasks,
                                  envs.get_suite(self.config.suite, self.config.env_name))
        with compile_time.fast_compile(self.config.fast_compile):
            return self.method.evaluator(key, tasks, self.trainer, self.state(s), self.config)


@functools.partial(jax.jit, static_argnums=(1, 4, 5, 6, 7, 8, 9, 10))
def _adapt_online(key, policy, state, task, num_rounds, num_envs, env, baseline, replay_capacity,
                  replay_ratio, episode_steps, num_active_rounds=None):
    """`(params after num_rounds updates, (num_rounds,) returns of the rounds before them)` of
    test_time_adapted's online rule on one task, or of test_time_hybrid's rule with
    `replay_capacity > 0` (`benchmarks.evaluation.evaluate_test_time`); with
    `num_active_rounds` (an int32 scalar <= num_rounds) only that many count
    (`adapt.evaluate_with_adaptation`)."""
    objective, optimizer = ev.test_time_rule(policy, state, baseline=baseline)
    if num_rounds == 0:
        return state.params, jnp.zeros((0,), jnp.float32)
    params, returns, _ = adapt.evaluate_with_adaptation(
        key, policy, state.params, task, objective=objective, optimizer=optimizer,
        num_rounds=num_rounds, steps_per_round=episode_steps, num_envs=num_envs,
        divergence_threshold=ev.TEST_TIME_DIVERGENCE, env=env,
        replay_capacity=replay_capacity, replay_ratio=replay_ratio, num_active_rounds=num_active_rounds)
    return params, returns


@functools.partial(jax.jit, static_argnums=(1, 4))
def _within_episode_traj(key, algo, state, task, chunk_steps):
    """The `(1, 500)` window of test_time_within_episode's rule in one env on ONE task."""
    return ev.within_episode_window(key, algo, state, task, num_envs=1, chunk_steps=chunk_steps).traj


@dataclasses.dataclass(frozen=True)
class Run:
    """A finished run: `directory`, `config`, `policies` (method name -> `MethodPolicy`) and
    `histories` (trainer name -> training history from its last checkpoint)."""

    directory: str
    config: BenchmarkConfig
    policies: dict
    histories: dict

    def test_tasks(self, seed_index: int):
        """The held-out test tasks the run evaluated seed `seed_index` on (leading task axis)."""
        s = _index("seed_index", seed_index, self.config.num_seeds)
        return ev.test_tasks(ev.eval_key(self.config.seed, s), self.config.evaluation.num_tasks,
                             envs.get_suite(self.config.suite, self.config.env_name))

    def test_task(self, seed_index: int, task_index: int):
        """One of them (no task axis), as per_task.csv's `seed_index` / `task_index` name it."""
        i = _index("task_index", task_index, self.config.evaluation.num_tasks)
        return jax.tree.map(lambda x: x[i], self.test_tasks(seed_index))


def load_run(directory: str, methods=None) -> Run:
    """Load a finished run of `python -m benchmarks.cartpole` (its directory, or the
    checkpoints/ directory in it): the config and a `MethodPolicy` per method (`methods`: a
    subset of the run's methods, default all of them).

    Raises `benchmarks.rundir.RunDirError` if `directory` holds no benchmark config and
    `benchmarks.checkpointing.CheckpointError` if a trainer's checkpoint is missing or does not
    match the config.
    """
    from benchmarks.cartpole import load_trained  # noqa: PLC0415 - one home for checkpoint loading

    run_dir = rundir.run_dir_of(directory)
    config = rundir.load_run_config(run_dir)
    names = config.methods if methods is None else tuple(methods)
    for name in names:
        check_choice("method", name, config.methods)
    trainers, states, histories = {}, {}, {}
    for name in names:
        t = METHODS_BY_NAME[name].trainer
        if t not in trainers:
            trainers[t] = build_trainer(t, config)
            states[t], histories[t] = load_trained(trainers[t], rundir.checkpoint_dir(run_dir, t),
                                                   config.num_seeds)
    policies = {n: MethodPolicy(METHODS_BY_NAME[n], trainers[METHODS_BY_NAME[n].trainer],
                                states[METHODS_BY_NAME[n].trainer], config) for n in names}
    return Run(run_dir, config, policies, histories)


# ------------------------------------------------------------------------------------ tasks
def make_task(length: float = 0.5, masspole: float = 0.1, masscart: float = 1.0,
              gravity: float = 9.8, force_mag: float = 10.0, inverted: bool = False):
    """One CartPole task (`envs.make_cartpole_params`; gymnax's defaults): `length` is the
    half pole length in m, `force_mag` the push magnitude in N, `inverted` flips its direction."""
    values = {"length": length, "masspole": masspole, "masscart": masscart, "gravity": gravity,
              "force_mag": force_mag}
    values = {name: check_float(name, v, minimum=0.0, strict_min=True) for name, v in values.items()}
    if check_bool("inverted", inverted):
        values["force_mag"] = -values["force_mag"]
    return envs.make_cartpole_params(**values)


def sample_task(seed: int, split: str = "test"):
    """One task of `envs.CartPoleTasks()`'s `split`, drawn with `jax.random.key(seed)`."""
    tasks = envs.CartPoleTasks().sample(jax.random.key(check_int("seed", seed, 0)), 1, split)
    return jax.tree.map(lambda x: x[0], tasks)


def task_values(task) -> dict:
    """The physics of ONE task: `TASK_FIELDS` -> float, and `inverted` (bool)."""
    out = {f: float(np.asarray(getattr(task, f))) for f in TASK_FIELDS}
    out["inverted"] = bool(out["force_mag"] < 0)
    return out


# ------------------------------------------------------------------------------------ episodes
@dataclasses.dataclass(frozen=True)
class Episode:
    """One episode of a policy on a task (`T` = its length in steps).

    states: `(T, 4)` CartPole state [x, x_dot, theta, theta_dot] at each step, read from what the
      policy saw (a run with partial observations sees `[x, theta]`: its velocities are NaN);
    actions: `(T,)` int (1 pushes along +x for a normal task, along -x for an inverted one);
    rewards: `(T,)`; total: the episode's return; task: `task_values` of the task;
    pre_returns: returns measured while adapting (`MethodPolicy.adapt`), may be empty.
    """

    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    total: float
    task: dict
    pre_returns: np.ndarray

    @property
    def length(self) -> int:
        return int(self.states.shape[0])


def rollout_episode(policy: MethodPolicy, seed_index: int, task, key, adapt_steps: Optional[int] = None,
                    deterministic: bool = False) -> Episode:
    """One evaluation episode of `policy` (seed `seed_index`) on ONE task.

    The params are first adapted by `policy.adapt(seed_index, task, k, adapt_steps)` (default:
    the method's reported adaptation). The episode is the first one of a fresh 500-step window
    (as the evaluation measures it); for in_context it is the first episode after one context
    episode, with the carry kept across both; test_time_within_episode updates its weights
    during it as its evaluation does (`benchmarks.evaluation.within_episode_window`). Actions
    are sampled (`deterministic=True`: the most likely action; refused for
    test_time_within_episode, whose updates are policy gradients of sampled actions). The task must be one of the run's suite (`Run.test_task` always is;
    `make_task` / `sample_task` give standard-suite tasks). The episode's states are read from
    the observations: a run whose suite observes `[x, theta]` (partial) has NaN velocities.
    """
    suite = envs.get_suite(policy.config.suite, policy.config.env_name)
    if suite.env_name != "CartPole-v1":
        raise ValueError(f"rollout_episode reads CartPole states; the run is on {suite.env_name}")
    deterministic = check_bool("deterministic", deterministic)
    if deterministic and policy.adaptation == "within_episode":
        raise ValueError(f"deterministic must be False for {policy.name!r}: its updates during the "
                         f"episode are policy gradients of sampled actions")
    k_adapt, k_roll = jax.random.split(key)
    params, pre = policy.adapt(seed_index, task, k_adapt, adapt_steps)
    if policy.adaptation == "within_episode":
        traj = _within_episode_traj(k_roll, policy.trainer.algo, policy.state(seed_index), task,
                                    policy.config.evaluation.within_episode_chunk)
        return episodes_of(traj, task, 1, pre, policy.obs_mode)[0]
    episode_index = 1 if policy.carry_across_episodes else 0
    return rollout_episodes(policy, params, task, k_roll, episode_index + 1, deterministic, pre)[-1]


def rollout_episodes(policy: MethodPolicy, params, task, key, num_episodes: int = 1,
                     deterministic: bool = False, pre_returns=()) -> list:
    """The first `num_episodes` episodes of one rollout window of `num_episodes * 500` steps of
    `policy` acting with `params` on ONE task (one env; the carry kept across episodes for
    in_context, reset at every episode start otherwise): a list of `Episode`s, each with
    `pre_returns`. The window always holds them all (an episode lasts at most 500 steps). One
    jitted rollout per (policy, `num_episodes`): the task and params are data."""
    n = check_int("num_episodes", num_episodes)
    traj = envs.rollout(key, policy.policy, params, task, num_envs=1, num_steps=n * ev.EPISODE_STEPS,
                        env=policy.env, carry_across_episodes=policy.carry_across_episodes,
                        deterministic=check_bool("deterministic", deterministic))
    return episodes_of(traj, task, n, pre_returns, policy.obs_mode)


def episodes_of(traj, task, num_episodes: int, pre_returns=(), obs_mode: str = "full") -> list:
    """The first `num_episodes` episodes of env 0 of a rollout `traj` (`envs.rollout`'s
    trajectory of ONE task, time axis second) as `Episode`s; an episode the window cuts off
    ends at the window's end. `obs_mode`: what `traj.obs` starts with, CartPole's full state or
    (`"partial"`) `[x, theta]`, whose states get NaN velocities."""
    # numpy from here: slicing the device arrays by episode length would compile a slice per length
    dones, seen, actions, all_rewards = (np.asarray(x)[0] for x in (traj.dones, traj.obs, traj.actions, traj.rewards))
    kept = list(PARTIAL_OBS_INDICES["CartPole-v1"]) if obs_mode == "partial" else list(range(4))
    obs = np.full(seen.shape[:-1] + (4,), np.nan)
    obs[:, kept] = seen[:, :len(kept)]  # in_context's observations append its context after them
    steps = dones.shape[0]
    ends = [int(e) + 1 for e in np.flatnonzero(dones)]
    values = task_values(task)
    pre = np.asarray(pre_returns, np.float64)
    out, start = [], 0
    for _ in range(num_episodes):
        stop = next((e for e in ends if e > start), steps)
        rewards = np.asarray(all_rewards[start:stop], np.float64)
        out.append(Episode(states=np.asarray(obs[start:stop, :4], np.float64),
                           actions=actions[start:stop], rewards=rewards,
                           total=float(rewards.sum()), task=values, pre_returns=pre))
        start = stop
    return out
