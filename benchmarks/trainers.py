"""The benchmark's trainers: what each method's trained state comes from.

A `Trainer` is one training algorithm with its policy and environment, built from the nested
`BenchmarkConfig`: pure `init(key) -> state` and `update(state, key) -> (state, metrics)` (one
iteration, one seed; `benchmarks.training.train` vmaps them over seeds). Its `name` is its
checkpoint directory (`checkpoints/<name>/`):

Every trainer trains on the train split of the run's suite (`config.suite`, `envs.suites`: its
environment and task distribution).

  non_adaptive  PPO (`config.non_adaptive`) of an `MLPPolicy` (`config.policy`);
  non_adaptive_ssm
                PPO (`config.non_adaptive_ssm`) of the `SSMPolicy` of `config.policy` (the
                maml_ssm architecture) with its carry reset at every episode start: memory
                within an episode, nothing carried across episodes;
  goal_oracle   PPO (`config.goal_oracle`) of the same `SSMPolicy` on `envs.GoalVisible`
                observations (the goal suite's, with its hidden goal and, with
                `config.goal_oracle_direction`, the force direction appended);
  in_context    PPO (`config.in_context`) of an `SSMPolicy` (`config.in_context_policy`) on
                `envs.context.ContextWrapper` observations (RL^2);
  maml_ssm      MAML-RL (`config.maml`) of an `SSMPolicy` (`config.policy`);
  maml_mlp      the same with an `MLPPolicy`.

Training history keys (per-iteration means over seeds): PPO trainers record "episode_return"
(mean return of the window's episodes) and its per-seed series "episode_return_per_seed"; MAML
trainers "pre_return" / "post_return" (train return before / after the inner steps) with
"post_return_per_seed", and "return_by_step"; both record their losses. `migrate_history`
maps a history stored under the generic key "return" onto these names.

This module imports JAX and the algorithms only when a trainer is built or run, so the command
line can check which config sections a run reads (`sections_used`) before importing them.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import TYPE_CHECKING, Callable

import numpy as np

import envs
import maml

if TYPE_CHECKING:  # pragma: no cover
    from benchmarks.config import BenchmarkConfig

#: The metric of `PPO.update` holding the mean episode return of the iteration's window.
PPO_RETURN_METRIC = "episode_return"


class Trainer(abc.ABC):
    """One trainer: `init`, `update`, how many iterations, env steps per iteration, and its
    history layout (`return_metric`: the metric with a per-seed series). Subclasses define
    `update` and `env_steps_per_update`."""

    return_metric: str = ""
    #: stored history key -> this trainer's key (None: dropped, a duplicate of another key)
    history_renames: dict = {}

    def __init__(self, name: str, policy, env, algo, iterations: int):
        self.name = name
        self.policy = policy
        self.env = env
        self.algo = algo
        self.iterations = iterations

    def init(self, key):
        return self.algo.init(key)

    @abc.abstractmethod
    def update(self, state, key):
        """`(state, key) -> (state, metrics)`: one training iteration."""

    @property
    @abc.abstractmethod
    def env_steps_per_update(self) -> int:
        """Environment steps one `update` takes (the history's `env_steps` adds them up)."""

    def migrate_history(self, history: dict) -> dict:
        """`history` (from a checkpoint) with its keys renamed to this trainer's keys."""
        out = {}
        for key, series in history.items():
            if key not in self.history_renames:
                out[key] = series
            elif self.history_renames[key] is not None and self.history_renames[key] not in history:
                out[self.history_renames[key]] = series
        return out


class PPOTrainer(Trainer):
    """PPO over the train tasks (non_adaptive, non_adaptive_ssm, in_context)."""

    return_metric = "episode_return"
    history_renames = {"return": "episode_return", "return_per_seed": "episode_return_per_seed"}

    def update(self, state, key):
        state, metrics = self.algo.update(state, key)
        metrics = dict(metrics)
        metrics[self.return_metric] = metrics.pop(PPO_RETURN_METRIC)
        return state, metrics

    @property
    def env_steps_per_update(self) -> int:
        return self.algo.env_steps_per_update


class MAMLTrainer(Trainer):
    """MAML-RL meta-updates, each on `tasks_per_update` freshly sampled train tasks."""

    return_metric = "post_return"
    history_renames = {"return": None, "return_per_seed": "post_return_per_seed"}
    #: the meta-update metrics kept in the training history
    METRICS = ("policy_loss", "value_loss", "entropy", "pre_return", "post_return", "return_by_step")

    def __init__(self, name, policy, env, algo, iterations, task_dist, tasks_per_update: int):
        super().__init__(name, policy, env, algo, iterations)
        self.task_dist = task_dist
        self.tasks_per_update = tasks_per_update

    def update(self, state, key):
        import jax

        k_tasks, k_update = jax.random.split(key)
        tasks = self.task_dist.sample(k_tasks, self.tasks_per_update, "train")
        state, m = self.algo.meta_update(state, tasks, k_update)
        return state, {k: m[k] for k in self.METRICS if k in m}

    @property
    def env_steps_per_update(self) -> int:
        return self.algo.env_steps_per_update(self.tasks_per_update)


# ------------------------------------------------------------------------------------ builders
def _action_head(env) -> dict:
    """`action_dim` and `discrete` of a policy for `env`'s action space: `Discrete(n)` ->
    `n` actions, categorical; `Box` -> its size, Gaussian."""
    from gymnax.environments import spaces

    space = env.action_space(env.default_params)
    if isinstance(space, spaces.Discrete):
        return {"action_dim": int(space.n), "discrete": True}
    return {"action_dim": int(np.prod(space.shape)), "discrete": False}


def _non_adaptive(name, config, env, task_dist, mesh=None) -> Trainer:
    policy = config.policy.mlp(obs_dim=envs.obs_dim(env), **_action_head(env))
    algo = maml.PPO(policy, config.non_adaptive, env=env, task_dist=task_dist, mesh=mesh)
    return PPOTrainer(name, policy, env, algo, config.non_adaptive.total_iterations)


def _ssm_ppo(ppo, config, env, task_dist, mesh) -> tuple:
    """`(policy, algo)`: the SSM policy of `config.policy` trained by PPO with `ppo` on `env`."""
    policy = config.policy.ssm(obs_dim=envs.obs_dim(env), **_action_head(env))
    return policy, maml.PPO(policy, ppo, env=env, task_dist=task_dist, mesh=mesh)


def _non_adaptive_ssm(name, config, env, task_dist, mesh=None) -> Trainer:
    ppo = config.non_adaptive_ssm  # carry_across_episodes is False (BenchmarkConfig checks it)
    policy, algo = _ssm_ppo(ppo, config, env, task_dist, mesh)
    return PPOTrainer(name, policy, env, algo, ppo.total_iterations)


def _goal_oracle(name, config, env, task_dist, mesh=None) -> Trainer:
    """non_adaptive_ssm's policy trained by PPO with its own budget (`config.goal_oracle`) in
    the goal suite, with the hidden goal (and with `config.goal_oracle_direction` the force
    direction) appended to its observation (`envs.GoalVisible`): the oracle the goal suite's
    adaptive methods are measured against."""
    if not getattr(task_dist, "has_goal", False):
        raise ValueError(f"goal_oracle is told the hidden goal, so it needs a suite with one (goal), got "
                         f"suite {getattr(task_dist, 'name', task_dist)!r}")
    env = envs.GoalVisible(env, direction=config.goal_oracle_direction)
    policy, algo = _ssm_ppo(config.goal_oracle, config, env, task_dist, mesh)
    return PPOTrainer(name, policy, env, algo, config.goal_oracle.total_iterations)


def _in_context(name, config, env, task_dist, mesh=None) -> Trainer:
    import jax

    env = envs.ContextWrapper(env)
    p = config.in_context_policy
    policy = p.build(obs_dim=envs.obs_dim(env), **_action_head(env),
                     parallel=p.core != "ssm" and jax.default_backend() != "cpu")
    algo = maml.PPO(policy, config.in_context, env=env, task_dist=task_dist, mesh=mesh)
    return PPOTrainer(name, policy, env, algo, config.in_context.total_iterations)


def _maml(make_policy: Callable) -> Callable:
    def build(name, config, env, task_dist, mesh=None) -> Trainer:
        from ssm_jax import sharding

        sharding.check_divisible("--tasks_per_epoch", config.maml.tasks_per_update, mesh)
        policy = make_policy(config.policy, obs_dim=envs.obs_dim(env), **_action_head(env))
        algo = maml.MAMLRL(policy, config.maml.algorithm_config, env=env, mesh=mesh)
        return MAMLTrainer(name, policy, env, algo, config.maml.num_meta_updates, task_dist,
                           config.maml.tasks_per_update)
    return build


@dataclasses.dataclass(frozen=True)
class TrainerSpec:
    """sections: the `BenchmarkConfig` sections the trainer reads; build: `(name, config, env,
    task_dist, mesh=None) -> Trainer` (`mesh`: `benchmarks.training.training_mesh`, whose
    `"batch"` axis splits the trainer's task axis)."""

    sections: tuple
    build: Callable


TRAINERS = {
    "non_adaptive": TrainerSpec(("non_adaptive", "policy"), _non_adaptive),
    "non_adaptive_ssm": TrainerSpec(("non_adaptive_ssm", "policy"), _non_adaptive_ssm),
    "goal_oracle": TrainerSpec(("goal_oracle", "policy"), _goal_oracle),
    "in_context": TrainerSpec(("in_context", "in_context_policy"), _in_context),
    "maml_ssm": TrainerSpec(("maml", "policy"), _maml(lambda p, **dims: p.ssm(**dims))),
    "maml_mlp": TrainerSpec(("maml", "policy"), _maml(lambda p, **dims: p.mlp(**dims))),
}


def build_trainer(name: str, config: "BenchmarkConfig", env=None, mesh=None) -> Trainer:
    """The trainer `name` (a `TRAINERS` key) of `config`, training on the train split of the
    suite `config.suite` (`envs.suites.SUITES`) in `env` (default: the suite's environment;
    the standard suite's is `envs.make(config.env_name)[0]`); policies get the action head of
    its action space (categorical for `Discrete`, Gaussian for `Box`); the task axis is split
    over the `"batch"` axis of `mesh` (None: one device; a ValueError if the tasks do not
    divide it)."""
    suite = envs.get_suite(config.suite, config.env_name)
    env = suite.env() if env is None else env
    return TRAINERS[name].build(name, config, env, suite, mesh)


def sections_used(trainer_names) -> set:
    """The config sections the named trainers read."""
    return {s for t in trainer_names for s in TRAINERS[t].sections}


def trainer_sections() -> set:
    """Every config section some trainer reads."""
    return sections_used(TRAINERS)

