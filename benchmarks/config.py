"""The CartPole benchmark's configuration: nested frozen dataclasses (everything to rerun a run).

`BenchmarkConfig()` is the default run and `BenchmarkConfig.quick_preset()` the `--quick` smoke
test. The benchmark config holds the library configs, so each value is validated once, by the
class that owns it: `maml.config.MAMLRLConfig` (MAML-RL), `PPOConfig` (non_adaptive and
in_context training) and the benchmark's own sections for the rest (the policies' sizes and
core are checked as `SSMPolicy`/`MLPPolicy` check them). A bad value raises a ValueError naming
the field, before anything is compiled. This module imports no JAX: the command line validates
a whole config before importing anything heavy.

Field paths name nested values (`"maml.rl.inner_lr"`); `config.with_values({path: value})` is a
validated copy with values changed and its ValueErrors start with the path (`benchmarks.cli` maps
paths back onto its flags). `to_dict()` / `from_dict()` are the nested JSON form stored in
config.json, results.json and checkpoints; `from_dict` also reads the flat form (one level of
prefixed fields, `FLAT_PATHS`) and migrates it.

Training defaults were chosen on validation seeds >= 100, never on the seeds the README reports.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import typing
from types import MappingProxyType
from typing import Any, Mapping, Optional

import ssm_jax
from benchmarks.methods import GOAL_METHODS, METHODS, STANDARD_METHODS
from envs.suites import DEFAULT_SUITE, ENV_SUITES, SUITE_NAMES, SUITES
from envs.tasks import TASK_ENV_NAMES, TASK_ENVS
from maml.config import MAMLRLConfig, PPOConfig
from ssm_jax import CORE_NAMES
from ssm_jax.validation import check_bool, check_choice, check_float, check_int

MODES = ("meta_rl", "policy_gradient")
#: Methods each mode may run (policy_gradient: the non-meta baseline alone).
MODE_METHODS = {"meta_rl": METHODS, "policy_gradient": ("non_adaptive",)}


def default_methods(mode: str, suite: str) -> tuple:
    """The methods a run of `mode` on `suite` runs unless its methods are given: in meta_rl
    mode, on the standard suite the six it has always run (`STANDARD_METHODS`, so its numbers
    and run time are unchanged) and on every other suite every method (`METHODS`) that exists
    there (`GOAL_METHODS` on a suite with a hidden goal only); in policy_gradient mode
    non_adaptive."""
    check_choice("mode", mode, MODES)
    check_choice("suite", suite, SUITE_NAMES)
    if mode != "meta_rl":
        return MODE_METHODS[mode]
    if suite == DEFAULT_SUITE:
        return STANDARD_METHODS
    return tuple(m for m in METHODS if m not in GOAL_METHODS or SUITES[suite].has_goal)
#: The largest training seed. A seed is a uint32 (the PRNG seed width): seed `s` is the key
#: `jax.random.key(uint32(s))` (`benchmarks.training.seed_keys`, `benchmarks.evaluation.eval_key`),
#: so a run's seeds `seed .. seed + num_seeds - 1` must all lie in `[0, MAX_SEED]` (a larger int
#: would wrap around onto another seed's key).
MAX_SEED = 2**32 - 1
#: The largest count (iterations, tasks, envs, steps, sizes) a config accepts: JAX counts in
#: int32 (iteration numbers in the training scan, optax's step counts and schedules, array
#: sizes), so a larger one would fail or wrap around late in a run.
MAX_COUNT = 2**31 - 1
#: Steps of a CartPole evaluation window (CartPole-v1's episode limit; `episode_steps`).
EPISODE_STEPS = 500
#: The environments the benchmark runs (`--env_name`): those with a task distribution,
#: `envs.TASK_ENVS` (CartPole-v1 on every suite, the others on the standard suite).
ENV_NAMES = TASK_ENV_NAMES


#: Training settings of an environment that differ from `BenchmarkConfig()`'s (field path ->
#: value), applied by `BenchmarkConfig.with_env` (`--env_name`) under any config file and flags.
#: Chosen on validation seeds >= 100: on Pendulum-v1 a discount of 0.9 for every trainer that
#: runs there (its reward is dense and a swing-up's horizon short) and 300 RL^2 iterations (its
#: return still rose at 150; 9.6M env steps per seed, below non_adaptive's 12M), and MAML-RL's
#: query rollouts on 16 envs per task instead of 8 (the validation seeds' spread narrowed:
#: -579.4 +- 71.7 against -608.3 +- 309.9). The README's Pendulum section has the validation
#: tables.
ENV_VALUES = MappingProxyType({
    "CartPole-v1": MappingProxyType({}),
    "Acrobot-v1": MappingProxyType({}),
    "Pendulum-v1": MappingProxyType({
        **{f"{section}.gamma": 0.9 for section in ("maml.rl", "non_adaptive", "non_adaptive_ssm", "in_context")},
        "in_context.total_iterations": 300, "maml.rl.query_envs": 16}),
})


def episode_steps(env_name: str) -> int:
    """Steps of an evaluation window on `env_name`: its gymnax episode limit
    (`envs.TASK_ENVS[env_name].max_steps_in_episode`: CartPole 500, Acrobot 500, Pendulum 200),
    so every evaluation episode completes inside one window."""
    check_choice("env_name", env_name, ENV_NAMES)
    return TASK_ENVS[env_name].max_steps_in_episode


def _check_counts(config: Any, prefix: str = "") -> None:
    """Every int field of `config` and its sections (bar `seed`, a uint32) is <= MAX_COUNT,
    else ValueError naming its path."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            _check_counts(value, f"{prefix}{f.name}.")
        elif isinstance(value, int) and not isinstance(value, bool) and f.name != "seed" and value > MAX_COUNT:
            raise ValueError(f"{prefix}{f.name} must be <= {MAX_COUNT} (2**31 - 1: JAX counts in int32), "
                             f"got {value!r}")


def _check_step_count(path: str, iterations: int, per_iteration: int, what: str) -> None:
    """The optimizer steps of a run (`iterations x per_iteration`, the length of its step-size
    schedule) fit in int32, else ValueError naming the iteration count's `path`."""
    if iterations * per_iteration > MAX_COUNT:
        raise ValueError(f"{path} must be <= {MAX_COUNT // per_iteration} ({per_iteration} {what} per "
                         f"iteration; the optimizer's step count is an int32), got {iterations!r}")


def _check_section(name: str, value: Any, cls: type) -> None:
    if not isinstance(value, cls):
        raise ValueError(f"{name} must be a {cls.__name__}, got {type(value).__name__}")


def _check_subset(name: str, values: tuple, choices: tuple, message: str) -> None:
    """`values` is non-empty and each entry is one of `choices`, else ValueError(message); an
    entry given twice is a ValueError naming it."""
    try:
        check_int(f"number of {name}", len(values), 1)
        for v in values:
            check_choice(name, v, choices)
    except ValueError:
        raise ValueError(message) from None
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{name} must not repeat a method, got {list(values)} ({repeated} twice)")


@dataclasses.dataclass(frozen=True)
class MAMLTrainingConfig:
    """MAML-RL meta-training of the maml_ssm and maml_mlp trainers.

    Attributes:
      num_meta_updates: meta-updates (`MAMLRL.meta_update` calls) per training run.
      tasks_per_update: train tasks sampled per meta-update.
      anneal_outer_lr: decay the outer step size linearly to 0 over the run.
      rl: the `MAMLRLConfig` (inner/outer step sizes, inner steps, support/query sizes,
        baseline, GAE lambda, ...). Its `outer_lr_decay_steps` stays None: the schedule
        follows from `num_meta_updates` and `anneal_outer_lr` (`algorithm_config`). The
        benchmark needs `rl.num_inner_steps >= 1` (maml_adapted is measured after them).
    """

    num_meta_updates: int = 300
    tasks_per_update: int = 8
    anneal_outer_lr: bool = True
    rl: MAMLRLConfig = dataclasses.field(default_factory=lambda: MAMLRLConfig(
        inner_lr=0.1, outer_lr=3e-3, num_inner_steps=3, first_order=True, support_envs=8,
        support_steps=200, query_envs=8, query_steps=500, baseline="linear", gae_lambda=1.0))

    def __post_init__(self):
        check_int("num_meta_updates", self.num_meta_updates, 1)
        check_int("tasks_per_update", self.tasks_per_update, 1)
        check_bool("anneal_outer_lr", self.anneal_outer_lr)
        _check_section("rl", self.rl, MAMLRLConfig)
        check_int("rl.num_inner_steps", self.rl.num_inner_steps, 1)
        if self.rl.outer_lr_decay_steps is not None:
            raise ValueError(f"rl.outer_lr_decay_steps must be None (the schedule follows from "
                             f"num_meta_updates and anneal_outer_lr), got {self.rl.outer_lr_decay_steps!r}")

    @property
    def algorithm_config(self) -> MAMLRLConfig:
        """`rl` with the outer step-size schedule: linear decay to 0 over every Adam step of the
        run (`num_meta_updates * rl.num_outer_epochs`) if `anneal_outer_lr`, else constant."""
        steps = self.num_meta_updates * self.rl.num_outer_epochs if self.anneal_outer_lr else None
        return dataclasses.replace(self.rl, outer_lr_decay_steps=steps)


@dataclasses.dataclass(frozen=True)
class InContextPolicyConfig:
    """The in_context (RL^2) agent's `SSMPolicy`: `core` (one of `ssm_jax.CORE_NAMES`),
    `state_dim`, `hidden_dim` and `num_layers` stacked cores (positive ints); `scan_chunk`, the
    "ssm" core's `chunk_size` (`ssm_jax.SSM`: its recurrence over PPO's 1000-step sequences in
    chunks of that many steps; 1 steps through time; the other cores ignore it). It changes the
    training's speed, and its numbers only by float rounding."""

    core: str = "ssm"
    state_dim: int = 16
    hidden_dim: int = 64
    num_layers: int = 2
    scan_chunk: int = 32

    def __post_init__(self):
        check_choice("core", self.core, CORE_NAMES)
        for name in ("state_dim", "hidden_dim", "num_layers", "scan_chunk"):
            check_int(name, getattr(self, name))

    def build(self, obs_dim: int, action_dim: int, parallel: bool = False,
              discrete: bool = True) -> "ssm_jax.SSMPolicy":
        return ssm_jax.SSMPolicy(obs_dim=obs_dim, action_dim=action_dim, core=self.core,
                         state_dim=self.state_dim, hidden_dim=self.hidden_dim,
                         num_layers=self.num_layers, parallel=parallel, discrete=discrete,
                         chunk_size=self.scan_chunk if self.core == "ssm" else 1)


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """Sizes of the non-adaptive and MAML policies (positive ints): `MLPPolicy` of width
    `hidden_dim` (non_adaptive, maml_mlp) and `SSMPolicy` with core "ssm", state `state_dim`
    and width `hidden_dim` (maml_ssm, non_adaptive_ssm). `discrete` (the builders' argument,
    from the environment's action space): a categorical head, else a Gaussian one."""

    state_dim: int = 16
    hidden_dim: int = 64

    def __post_init__(self):
        for name in ("state_dim", "hidden_dim"):
            check_int(name, getattr(self, name))

    def ssm(self, obs_dim: int, action_dim: int, discrete: bool = True) -> "ssm_jax.SSMPolicy":
        return ssm_jax.SSMPolicy(obs_dim=obs_dim, action_dim=action_dim, core="ssm",
                         state_dim=self.state_dim, hidden_dim=self.hidden_dim, discrete=discrete)

    def mlp(self, obs_dim: int, action_dim: int, discrete: bool = True) -> "ssm_jax.MLPPolicy":
        return ssm_jax.MLPPolicy(obs_dim=obs_dim, action_dim=action_dim, hidden_dim=self.hidden_dim,
                                 discrete=discrete)


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """Evaluation on held-out test tasks (`benchmarks.evaluation`).

    Attributes:
      num_tasks: test tasks per seed; num_envs: parallel envs per task.
      inner_steps: the MAML methods are measured after 0..max(inner_steps,
        maml.rl.num_inner_steps) inner steps (`BenchmarkConfig.reported_inner_steps`).
      test_time_rounds: evaluation rounds of test_time_adapted and test_time_hybrid (one update
        between rounds).
      hybrid_replay_capacity: rows (one env's 500-step round each) test_time_hybrid's replay
        ring buffer holds, >= 1.
      hybrid_replay_ratio: weight of the replayed rows in test_time_hybrid's loss, in [0, 1)
        (0: the online rule of test_time_adapted).
      within_episode_chunk: test_time_within_episode updates its weights every this many steps
        of an episode; a positive divisor of the evaluation window (`episode_steps(env_name)`,
        checked by `BenchmarkConfig`).
    """

    num_tasks: int = 256
    num_envs: int = 2
    inner_steps: int = 3
    test_time_rounds: int = 4
    hybrid_replay_capacity: int = 16
    hybrid_replay_ratio: float = 0.5
    within_episode_chunk: int = 50

    def __post_init__(self):
        for name in ("num_tasks", "num_envs", "inner_steps", "test_time_rounds", "hybrid_replay_capacity",
                     "within_episode_chunk"):
            check_int(name, getattr(self, name), 1)
        object.__setattr__(self, "hybrid_replay_ratio", check_float(
            "hybrid_replay_ratio", self.hybrid_replay_ratio, minimum=0.0, maximum=1.0, strict_max=True))


def _goal_oracle_ppo() -> PPOConfig:
    """The goal oracle's PPO training: non_adaptive_ssm's settings (`_non_adaptive_ppo`)."""
    return _non_adaptive_ppo()


def _non_adaptive_ppo() -> PPOConfig:
    """The PPO training of both non-adaptive baselines (non_adaptive, non_adaptive_ssm): the
    same budget and settings, so the two differ only in their policy."""
    return PPOConfig(num_tasks=8, num_envs=4, num_steps=500, lr=1e-3, entropy_coef=0.0,
                     total_iterations=750)


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    """Everything that defines a benchmark run (stored in config.json, results.json, checkpoints).

    Attributes:
      mode: "meta_rl" (every method) or "policy_gradient" (non_adaptive alone).
      env_name: the gymnax environment (one of `ENV_NAMES`): the suite's tasks are
        `envs.EnvTasks(env_name)` (CartPole's `envs.CartPoleTasks`), every evaluation window is
        `episode_steps(env_name)` steps and the policies' action heads follow its action space
        (`envs.TASK_ENVS[env_name].discrete`). Environments other than CartPole-v1 run the
        standard suite alone (`envs.suites.ENV_SUITES`).
      suite: the evaluation suite (one of `envs.suites.SUITE_NAMES`, default "standard"): the
        task distribution and splits, observation mode, reward and within-episode switch every
        method trains and is evaluated on (`envs.suites.SUITES[suite]`).
      methods: the methods to run, a non-empty subset of `MODE_METHODS[mode]`; None (the
        default): `default_methods(mode, suite)`, and a config whose methods were defaulted
        keeps following its mode and suite (`with_values` of another suite gives that suite's
        default methods; given methods stay as given).
      seed, num_seeds: training seeds seed, seed + 1, ..., seed + num_seeds - 1 (vmapped in
        training), each in [0, MAX_SEED].
      chunk_size: training iterations per jitted chunk; checkpoint_every: iterations between
        checkpoints.
      quick: the run is the `--quick` smoke test.
      fast_compile: compile with most of XLA's optimisations off
        (`benchmarks.compile_time.fast_compile`; True in `--quick`, whose time is mostly
        compilation). A run and its `--resume`, `--eval_only` and re-evaluations compile this
        one way; a stored config without it (older runs) reads back False.
      maml: MAML-RL training of maml_ssm / maml_mlp (`MAMLTrainingConfig`).
      non_adaptive: PPO training of the non_adaptive MLP (`PPOConfig`; `total_iterations` is
        the number of iterations).
      non_adaptive_ssm: PPO training of the non_adaptive_ssm SSM policy (`PPOConfig`, carry
        reset at every episode start; defaults equal to non_adaptive's).
      goal_oracle: PPO training of the goal suite's oracle, non_adaptive_ssm's policy told the
        hidden goal (`PPOConfig`, carry reset at every episode start; `_goal_oracle_ppo`).
      goal_oracle_direction: the goal oracle is also told the force direction
        (`envs.GoalVisible(direction=True)`), so it is told everything a goal task hides but its
        physics; a stored config without it reads back False (that oracle was told x* alone).
      in_context: PPO training of the RL^2 agent (`PPOConfig`, carry kept across episodes).
      in_context_policy: the RL^2 agent's policy (`InContextPolicyConfig`).
      policy: sizes of the non-adaptive and MAML policies (`PolicyConfig`).
      evaluation: the held-out evaluation (`EvaluationConfig`).
    """

    mode: str = "meta_rl"
    env_name: str = "CartPole-v1"
    suite: str = DEFAULT_SUITE
    methods: Optional[tuple] = None
    seed: int = 0
    num_seeds: int = 3
    chunk_size: int = 10
    checkpoint_every: int = 50
    quick: bool = False
    fast_compile: bool = False
    maml: MAMLTrainingConfig = dataclasses.field(default_factory=MAMLTrainingConfig)
    non_adaptive: PPOConfig = dataclasses.field(default_factory=_non_adaptive_ppo)
    non_adaptive_ssm: PPOConfig = dataclasses.field(default_factory=_non_adaptive_ppo)
    goal_oracle: PPOConfig = dataclasses.field(default_factory=_goal_oracle_ppo)
    goal_oracle_direction: bool = True
    in_context: PPOConfig = dataclasses.field(default_factory=lambda: PPOConfig(
        num_tasks=16, num_envs=2, num_steps=1000, lr=1e-3, entropy_coef=0.01,
        total_iterations=150, carry_across_episodes=True))
    in_context_policy: InContextPolicyConfig = dataclasses.field(default_factory=InContextPolicyConfig)
    policy: PolicyConfig = dataclasses.field(default_factory=PolicyConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)

    def __post_init__(self):
        check_choice("mode", self.mode, MODES)
        check_choice("env_name", self.env_name, ENV_NAMES)
        check_choice("suite", self.suite, SUITE_NAMES)
        if self.suite not in ENV_SUITES[self.env_name]:
            raise ValueError(f"suite {self.suite} runs on CartPole-v1 only; {self.env_name} runs the "
                             f"suites {list(ENV_SUITES[self.env_name])}")
        object.__setattr__(self, "_methods_defaulted", self.methods is None)
        if self.methods is None:
            object.__setattr__(self, "methods", default_methods(self.mode, self.suite))
        methods = tuple(self.methods) if isinstance(self.methods, (list, tuple)) else (self.methods,)
        _check_subset("methods", methods, METHODS,
                      f"methods must be a non-empty subset of {list(METHODS)}, got {list(methods)}")
        allowed = MODE_METHODS[self.mode]
        _check_subset("methods", methods, allowed,
                      f"mode {self.mode} runs only {list(allowed)}, got methods {list(methods)}")
        told = [m for m in methods if m in GOAL_METHODS]
        if told and not SUITES[self.suite].has_goal:
            raise ValueError(f"methods {told} are told the hidden goal: they run on a suite with one "
                             f"({[n for n, s in SUITES.items() if s.has_goal]}), not on suite {self.suite}")
        object.__setattr__(self, "methods", methods)
        for name in ("num_seeds", "chunk_size", "checkpoint_every"):
            check_int(name, getattr(self, name), 1)
        check_int("seed", self.seed, 0)
        check_bool("quick", self.quick)
        check_bool("fast_compile", self.fast_compile)
        check_bool("goal_oracle_direction", self.goal_oracle_direction)
        for name, cls in _sections(type(self)).items():
            _check_section(name, getattr(self, name), cls)
        _check_counts(self)  # num_seeds <= MAX_COUNT < MAX_SEED first: the seed bound below is then >= 1
        if self.seed > MAX_SEED + 1 - self.num_seeds:
            raise ValueError(f"seed must be <= {MAX_SEED + 1 - self.num_seeds} (2**32 - num_seeds: seeds "
                             f"seed..seed+num_seeds-1 are uint32), got {self.seed!r}")
        if self.maml.anneal_outer_lr:
            _check_step_count("maml.num_meta_updates", self.maml.num_meta_updates,
                              self.maml.rl.num_outer_epochs, "outer epochs")
        for name in ("non_adaptive", "non_adaptive_ssm", "goal_oracle", "in_context"):
            ppo = getattr(self, name)
            if ppo.anneal_lr:
                _check_step_count(f"{name}.total_iterations", ppo.total_iterations,
                                  ppo.update_epochs * ppo.num_minibatches, "epochs x minibatches")
        if self.episode_steps % self.evaluation.within_episode_chunk:
            raise ValueError(f"evaluation.within_episode_chunk must divide the {self.episode_steps}-step "
                             f"evaluation window of {self.env_name}, got {self.evaluation.within_episode_chunk}")
        for name in ("non_adaptive_ssm", "goal_oracle"):
            if getattr(self, name).carry_across_episodes:
                raise ValueError(f"{name}.carry_across_episodes must be False (its carry is reset at every "
                                 f"episode start; in_context is the agent that keeps it), got True")

    @classmethod
    def quick_preset(cls, env_name: str = "CartPole-v1") -> "BenchmarkConfig":
        """The `--quick` smoke test on `env_name`: tiny budgets, 2 seeds, 32 test tasks (numbers
        not meaningful); the environment's settings (`with_env`) apply first, so its budgets
        are the preset's too.

        RL^2 gets one narrower core: compilation dominates a quick run, and the stacked policy
        is covered by the policy tests.
        """
        return cls().with_env(env_name).with_values(QUICK_VALUES)

    def with_env(self, env_name: str) -> "BenchmarkConfig":
        """This config on `env_name` with that environment's training settings (`ENV_VALUES`):
        `BenchmarkConfig().with_env("Pendulum-v1")` is the default Pendulum run, what
        `--env_name Pendulum-v1` starts from before a config file and flags apply
        (`quick_preset(env_name)` with `--quick`). A bare `with_values({"env_name": ...})`
        changes the environment alone."""
        check_choice("env_name", env_name, ENV_NAMES)
        return self.with_values({"env_name": env_name, **ENV_VALUES[env_name]})

    @property
    def episode_steps(self) -> int:
        """Steps of every evaluation window, `episode_steps(env_name)`."""
        return episode_steps(self.env_name)

    @property
    def reported_inner_steps(self) -> int:
        """MAML returns are reported after 0..this many inner steps (at least num_inner_steps)."""
        return max(self.evaluation.inner_steps, self.maml.rl.num_inner_steps)

    def get(self, path: str) -> Any:
        """The value at a field path, e.g. `config.get("maml.rl.inner_lr")`."""
        value = self
        for name in path.split("."):
            value = getattr(value, name)
        return value

    def with_values(self, changes: Mapping[str, Any]) -> "BenchmarkConfig":
        """A validated copy with the values at the given field paths replaced.

        A ValueError names the full path of the bad field (e.g. "maml.rl.inner_lr must be >= 0.0").
        Methods that were defaulted (`default_methods`) are defaulted again for the new mode and
        suite unless `changes` gives them.
        """
        changes = dict(changes)
        if self._methods_defaulted and "methods" not in changes:
            changes["methods"] = None
        return _replace(self, changes, "")

    def to_dict(self) -> dict:
        """The nested JSON form (sections are dicts of their fields, `methods` a list)."""
        d = dataclasses.asdict(self)
        d["methods"] = list(self.methods)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BenchmarkConfig":
        """The config of a nested dict (`to_dict`) or of a flat one (migrated, `migrate_flat`).

        Fields it lacks keep their values in `BenchmarkConfig()`, or in `quick_preset()` for a
        config with `quick` true (a field added since a `--quick` run was stored gets the value
        a `--quick` run has today), but for four that record how an older run was made: without
        `goal_oracle` the oracle's section is its `non_adaptive_ssm` (it trained with that),
        without `goal_oracle_direction` it is False (its oracle was told x* alone), without
        `fast_compile` it is False (it compiled optimised), and without
        `in_context_policy.scan_chunk` it is 1 (its RL^2 policy scanned step by step). Unknown
        fields are a ValueError.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"a benchmark config must be a dict, got {type(d).__name__}")
        if is_flat(d):
            d = migrate_flat(d)
        if "goal_oracle" not in d and isinstance(d.get("non_adaptive_ssm"), Mapping):
            d = {**d, "goal_oracle": d["non_adaptive_ssm"]}  # runs stored before the oracle had its own
        if "fast_compile" not in d:
            d = {**d, "fast_compile": False}  # runs stored before it existed compiled optimised
        if "goal_oracle_direction" not in d:
            d = {**d, "goal_oracle_direction": False}  # runs stored before it existed told x* alone
        in_context_policy = d.get("in_context_policy", {})
        if isinstance(in_context_policy, Mapping) and "scan_chunk" not in in_context_policy:
            # runs stored before it existed trained the RL^2 policy step by step
            d = {**d, "in_context_policy": {**in_context_policy, "scan_chunk": 1}}
        base = cls.quick_preset() if d.get("quick") is True else cls()
        return base.with_values(_paths(d))

    def dumps(self, fmt: str = "toml") -> str:
        """The whole config as a config file (`--print_config`, read back by `--config`):
        "toml" (nested tables; fields whose value is None are left out, their default) or
        "json" (`to_dict`)."""
        check_choice("config format", fmt, CONFIG_FORMATS)
        if fmt == "json":
            return json.dumps(self.to_dict(), indent=2) + "\n"
        import tomli_w  # noqa: PLC0415

        return tomli_w.dumps(_without_none(self.to_dict()))


#: Config file formats (`--config FILE`, by its extension; `--print_config`).
CONFIG_FORMATS = ("toml", "json")


def config_file_format(path: str) -> str:
    """"toml" or "json" from a config file's extension, else ValueError."""
    ext = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    if ext not in CONFIG_FORMATS:
        raise ValueError(f"--config {path!r}: the file must end in .toml or .json")
    return ext


def read_config_file(path: str) -> dict:
    """Field path -> value of a TOML or JSON config file holding any subset of the settings,
    as nested tables/objects (`[maml.rl]` / `{"maml": {"rl": ...}}`) or dotted keys. Values are
    not checked here (`BenchmarkConfig.with_values` does); a file that cannot be read or
    parsed, or whose top level is not a table, is a ValueError naming the file."""
    fmt = config_file_format(path)
    try:
        if fmt == "toml":
            if sys.version_info >= (3, 11):
                import tomllib  # noqa: PLC0415
            else:  # pragma: no cover - Python 3.10
                import tomli as tomllib  # noqa: PLC0415
            with open(path, "rb") as f:
                data = tomllib.load(f)
        else:
            with open(path) as f:
                data = json.load(f)
    except OSError as err:
        raise ValueError(f"--config {path!r} cannot be read ({err.strerror})") from None
    except ValueError as err:  # tomllib.TOMLDecodeError and json.JSONDecodeError are ValueErrors
        raise ValueError(f"--config {path!r} is not valid {fmt.upper()} ({err})") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"--config {path!r} must hold a table of settings, got {type(data).__name__}")
    return _paths(data)


def _without_none(d: dict) -> dict:
    return {k: _without_none(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}


#: The `--quick` preset: field path -> value, applied to `BenchmarkConfig().with_env(env_name)`
#: (`quick_preset`).
QUICK_VALUES = {
    "maml.num_meta_updates": 20, "maml.tasks_per_update": 4,
    "maml.rl.support_envs": 4, "maml.rl.query_envs": 4,
    "maml.rl.support_steps": 100, "maml.rl.query_steps": 100,
    "non_adaptive.total_iterations": 10, "non_adaptive.num_tasks": 4, "non_adaptive.num_envs": 2,
    "non_adaptive_ssm.total_iterations": 10, "non_adaptive_ssm.num_tasks": 4, "non_adaptive_ssm.num_envs": 2,
    "goal_oracle.total_iterations": 10, "goal_oracle.num_tasks": 4, "goal_oracle.num_envs": 2,
    "in_context.total_iterations": 10, "in_context.num_tasks": 4, "in_context.num_envs": 2,
    "in_context.num_steps": 200,
    "in_context_policy.num_layers": 1, "in_context_policy.hidden_dim": 32,
    "policy.hidden_dim": 32,
    "evaluation.test_time_rounds": 2, "evaluation.num_tasks": 32, "evaluation.num_envs": 1,
    "num_seeds": 2, "chunk_size": 5, "checkpoint_every": 10, "quick": True, "fast_compile": True,
}


# ------------------------------------------------------------------------------------ flat form
#: Field of the flat form -> the field path(s) it sets in the nested form (None: dropped, the
#: field had no effect). Top-level fields keep their names.
FLAT_PATHS = {
    "num_epochs": ("maml.num_meta_updates",),
    "tasks_per_epoch": ("maml.tasks_per_update",),
    "anneal_outer_lr": ("maml.anneal_outer_lr",),
    "inner_lr": ("maml.rl.inner_lr",),
    "outer_lr": ("maml.rl.outer_lr",),
    "num_inner_steps": ("maml.rl.num_inner_steps",),
    "first_order": ("maml.rl.first_order",),
    "maml_envs": ("maml.rl.support_envs", "maml.rl.query_envs"),
    "maml_support_steps": ("maml.rl.support_steps",),
    "maml_query_steps": ("maml.rl.query_steps",),
    "maml_baseline": ("maml.rl.baseline",),
    "maml_gae_lambda": ("maml.rl.gae_lambda",),
    "ppo_iterations": ("non_adaptive.total_iterations",),
    "ppo_tasks": ("non_adaptive.num_tasks",),
    "ppo_envs": ("non_adaptive.num_envs",),
    "ppo_lr": ("non_adaptive.lr",),
    "ppo_entropy_coef": ("non_adaptive.entropy_coef",),
    "in_context_iterations": ("in_context.total_iterations",),
    "in_context_tasks": ("in_context.num_tasks",),
    "in_context_envs": ("in_context.num_envs",),
    "in_context_steps": ("in_context.num_steps",),
    "in_context_lr": ("in_context.lr",),
    "in_context_entropy_coef": ("in_context.entropy_coef",),
    "in_context_core": ("in_context_policy.core",),
    "in_context_state_dim": ("in_context_policy.state_dim",),
    "in_context_hidden_dim": ("in_context_policy.hidden_dim",),
    "in_context_layers": ("in_context_policy.num_layers",),
    "state_dim": ("policy.state_dim",),
    "hidden_dim": ("policy.hidden_dim",),
    "tta_lr": None,
    "tta_rounds": ("evaluation.test_time_rounds",),
    "eval_tasks": ("evaluation.num_tasks",),
    "eval_envs": ("evaluation.num_envs",),
    "eval_inner_steps": ("evaluation.inner_steps",),
}

#: Values of flat-form fields that some flat config.json files lack: the values those runs
#: trained with (`migrate_flat` fills them in).
LEGACY_VALUES = {"in_context_layers": 1, "maml_baseline": "value", "maml_gae_lambda": 0.95}


def is_flat(d: Mapping[str, Any]) -> bool:
    """Whether `d` is in the flat form (it has a field that only the flat form has)."""
    return any(k in FLAT_PATHS for k in d)


def migrate_flat(d: Mapping[str, Any]) -> dict:
    """The nested dict of a flat-form config dict (unknown fields are kept, so `from_dict`
    rejects them): `LEGACY_VALUES` for fields it lacks, `FLAT_PATHS` for the rest."""
    nested: dict = {}
    for key, value in {**LEGACY_VALUES, **d}.items():
        paths = FLAT_PATHS.get(key, (key,))
        for path in paths or ():
            *sections, name = path.split(".")
            node = nested
            for s in sections:
                node = node.setdefault(s, {})
            node[name] = value
    return nested


# ------------------------------------------------------------------------------------ helpers
def _sections(cls: type) -> dict:
    """Field name -> dataclass type of the nested sections of `cls`."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])}


_LEADING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _qualified(err: ValueError, prefix: str, cls: type) -> ValueError:
    """`err` with its message prefixed by the path `prefix` of the section `cls` raised it in:
    `prefix + message` if the message starts with a field name of `cls`, else `prefix: message`."""
    msg = str(err)
    if not prefix:
        return ValueError(msg)
    match = _LEADING_NAME.match(msg)
    if match and match.group() in {f.name for f in dataclasses.fields(cls)}:
        return ValueError(prefix + msg)
    return ValueError(f"{prefix.rstrip('.')}: {msg}")


def _split(changes: Mapping[str, Any], cls: type, prefix: str) -> tuple[dict, dict]:
    names = {f.name for f in dataclasses.fields(cls)}
    direct, nested = {}, {}
    for path, value in changes.items():
        head, _, rest = path.partition(".")
        if head not in names:
            raise ValueError(f"config has unknown field {prefix + head!r} (fields of "
                             f"{cls.__name__}: {sorted(names)})")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    return direct, nested


def _construct(cls: type, kwargs: dict, prefix: str, base: Optional[Any] = None):
    try:
        return cls(**kwargs) if base is None else dataclasses.replace(base, **kwargs)
    except ValueError as err:
        raise _qualified(err, prefix, cls) from None
    except TypeError as err:  # e.g. a section given where a value is expected
        raise ValueError(f"{prefix.rstrip('.') or 'config'}: {err}") from None


def _replace(obj: Any, changes: dict, prefix: str):
    cls = type(obj)
    direct, nested = _split(changes, cls, prefix)
    sections = _sections(cls)
    for head, sub in nested.items():
        if head not in sections:
            raise ValueError(f"{prefix}{head} has no fields")
        direct[head] = _replace(getattr(obj, head), sub, f"{prefix}{head}.")
    return _construct(cls, direct, prefix, base=obj)


def _paths(d: Mapping[str, Any], prefix: str = "") -> dict:
    """Field path -> value of the leaves of a nested dict."""
    out = {}
    for key, value in d.items():
        if isinstance(value, Mapping):
            out.update(_paths(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out
