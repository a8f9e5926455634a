"""The benchmark's methods: one registry entry per method, and the measurement of all of them.

A `Method` names its trainer (the `benchmarks.trainers.Trainer` whose trained state it
evaluates; methods may share one), a one-line label, and an evaluator: a function
`(key, tasks, trainer, state, config) -> Evaluation` that runs one seed's held-out tasks and
returns named per-task series and the env steps it ran. Methods whose evaluator and trainer are
the same (maml_zero_shot and maml_adapted read one MAML evaluation) share one computation per
seed, counted once. From the series stacked over seeds, the entry derives its per-task returns
(`returns`), its extra results.json fields (`report`) and its extra table lines (`lines`).

`measure(config, trainers, states)` evaluates every configured method on the same test tasks
per seed (`benchmarks.evaluation.eval_key` / `test_tasks`), so methods are paired by task.
Adding a method is one new `Method` in `REGISTRY`. The registry itself imports no JAX (the
command line lists and checks methods before importing it); evaluators and reports import
`benchmarks.evaluation` / `benchmarks.stats` when they run.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from benchmarks.config import BenchmarkConfig
    from benchmarks.trainers import Trainer

#: The method every other one is compared with, paired by task (results.json `vs_<REFERENCE>`).
REFERENCE = "non_adaptive"
#: The non-adaptive baselines every other method of a run is paired with, by task (results.json
#: `vs_<name>` for each one the run holds): the memoryless MLP policy and the SSM policy whose
#: carry is reset at every episode start (memory within an episode, no adaptation).
REFERENCES = (REFERENCE, "non_adaptive_ssm")


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One evaluator's output on one seed's `N` tasks.

    series: name -> per-task array `(N, ...)`; env_steps: environment steps the evaluator ran.
    """

    series: dict
    env_steps: int


#: `(key, tasks, trainer, state, config) -> Evaluation`
Evaluator = Callable[[Any, Any, "Trainer", Any, "BenchmarkConfig"], Evaluation]


# ------------------------------------------------------------------------------------ evaluators
def _num_tasks(tasks) -> int:
    import jax

    return int(jax.tree.leaves(tasks)[0].shape[0])


def episode_measures(config):
    """What every evaluator measures of its episodes besides returns on the run's suite
    (`evaluation.episode_measures`)."""
    import envs
    from benchmarks import evaluation as ev

    return ev.episode_measures(envs.get_suite(config.suite, config.env_name), config.episode_steps)


def _arrays(out: dict) -> dict:
    return {k: np.asarray(v) for k, v in out.items()}


def evaluate_fixed_policy(key, tasks, trainer, state, config) -> Evaluation:
    """The trained policy as is, a recurrent policy's carry reset at every episode start: series
    "return" `(N,)` (`evaluation.policy_series`)."""
    from benchmarks import evaluation as ev

    e = config.evaluation.num_envs
    t = config.episode_steps
    out = ev.policy_series(key, trainer.policy, state.params, tasks, num_envs=e, env=trainer.env,
                           episode_steps=t, measures=episode_measures(config))
    return Evaluation(_arrays(out), ev.policy_env_steps(_num_tasks(tasks), e, t))


def evaluate_in_context(key, tasks, trainer, state, config) -> Evaluation:
    """RL^2 with its carry kept across one context episode: series "after_context" and
    "first_episode" `(N,)` (`evaluation.evaluate_in_context`)."""
    from benchmarks import evaluation as ev

    e = config.evaluation.num_envs
    out = ev.evaluate_in_context(key, trainer.policy, state.params, tasks, num_envs=e, env=trainer.env,
                                 context_episodes=1, episode_steps=config.episode_steps,
                                 measures=episode_measures(config))
    return Evaluation(_arrays(out),
                      ev.in_context_env_steps(_num_tasks(tasks), e, context_episodes=1,
                                              episode_steps=config.episode_steps))


def evaluate_maml_inner_steps(key, tasks, trainer, state, config) -> Evaluation:
    """The MAML policy after 0..K inner steps, K = `config.reported_inner_steps`: series
    "by_inner_step" `(N, K + 1)` (`evaluation.maml_series`)."""
    from benchmarks import evaluation as ev

    e, k = config.evaluation.num_envs, config.reported_inner_steps
    t = config.episode_steps
    out = ev.maml_series(key, trainer.algo, state, tasks, num_inner_steps=k, num_envs=e,
                         episode_steps=t, measures=episode_measures(config))
    return Evaluation(_arrays(out),
                      ev.maml_env_steps(trainer.algo, _num_tasks(tasks), k, e, t))


def evaluate_test_time(key, tasks, trainer, state, config) -> Evaluation:
    """The MAML policy adapted online by `adapt` between evaluation rounds: series "by_round"
    `(N, rounds)` (`evaluation.test_time_series`)."""
    return _test_time(key, tasks, trainer, state, config, replay=False)


def evaluate_test_time_hybrid(key, tasks, trainer, state, config) -> Evaluation:
    """`evaluate_test_time` with `adapt`'s hybrid rule (replay of earlier rounds,
    `config.evaluation.hybrid_replay_*`): series "by_round" `(N, rounds)`."""
    return _test_time(key, tasks, trainer, state, config, replay=True)


def evaluate_within_episode(key, tasks, trainer, state, config) -> Evaluation:
    """The MAML policy updating its weights during each episode, every
    `config.evaluation.within_episode_chunk` steps: series "return", "updates" and "rollbacks"
    `(N,)` (`evaluation.evaluate_within_episode`)."""
    from benchmarks import evaluation as ev

    c = config.evaluation
    out = ev.evaluate_within_episode(key, trainer.algo, state, tasks, num_envs=c.num_envs,
                                     chunk_steps=c.within_episode_chunk,
                                     episode_steps=config.episode_steps, measures=episode_measures(config))
    return Evaluation(_arrays(out),
                      ev.within_episode_env_steps(_num_tasks(tasks), c.num_envs, config.episode_steps))


def _test_time(key, tasks, trainer, state, config, replay: bool) -> Evaluation:
    from benchmarks import evaluation as ev

    c = config.evaluation
    e, rounds = c.num_envs, c.test_time_rounds
    out = ev.test_time_series(key, trainer.policy, state, tasks, num_rounds=rounds, num_envs=e,
                              env=trainer.env, baseline=trainer.algo.config.baseline,
                              replay_capacity=c.hybrid_replay_capacity if replay else 0,
                              replay_ratio=c.hybrid_replay_ratio if replay else 0.0,
                              episode_steps=config.episode_steps, measures=episode_measures(config))
    return Evaluation(_arrays(out),
                      ev.test_time_env_steps(_num_tasks(tasks), rounds, e, config.episode_steps))


# ------------------------------------------------------------------------------------ reports
def _no_report(series, kinds, config, trainer) -> dict:
    return {}


def _no_lines(entry) -> list:
    return []


def _maml_report(num_inner_steps: Callable[[Any], int]):
    def report(series, kinds, config, trainer) -> dict:
        from benchmarks.stats import summarize

        by_step = series["by_inner_step"]  # (S, N, K + 1)
        per_step = [summarize(by_step[..., k], kinds) for k in range(by_step.shape[-1])]
        return {"return_by_inner_step": [s["return_mean"] for s in per_step],
                "return_by_inner_step_and_kind": [s["return_by_task_kind"] for s in per_step],
                "num_inner_steps": num_inner_steps(config)}
    return report


def _adapted_steps(config) -> int:
    return config.maml.rl.num_inner_steps


def _inner_step_lines(entry) -> list:
    return ["after 0,1,..,K inner steps: " + ", ".join(f"{x:.1f}" for x in entry["return_by_inner_step"])]


def _test_time_report(series, kinds, config, trainer) -> dict:
    from benchmarks.stats import summarize

    by_round = series["by_round"]  # (S, N, rounds)
    return {"return_by_round": [summarize(by_round[..., r], kinds)["return_mean"]
                                for r in range(by_round.shape[-1])],
            "rule": (f"adapt.evaluate_with_adaptation, online, policy_gradient_loss "
                     f"(baseline {trainer.algo.config.baseline}), Meta-SGD rates")}


def _test_time_hybrid_report(series, kinds, config, trainer) -> dict:
    c = config.evaluation
    report = _test_time_report(series, kinds, config, trainer)
    report["rule"] = (f"adapt.evaluate_with_adaptation, hybrid: (1 - w) * policy_gradient_loss(this round) "
                      f"+ w * policy_gradient_loss({c.num_envs} rows replayed from a ring buffer of "
                      f"{c.hybrid_replay_capacity} rows of earlier rounds), w = {c.hybrid_replay_ratio} "
                      f"(w = 0 while the buffer is empty; baseline {trainer.algo.config.baseline}), "
                      f"Meta-SGD rates; rounds, tasks and keys of test_time_adapted")
    report["replay_capacity"] = c.hybrid_replay_capacity
    report["replay_ratio"] = c.hybrid_replay_ratio
    return report


def _test_time_lines(entry) -> list:
    return ["by adaptation round: " + ", ".join(f"{x:.1f}" for x in entry["return_by_round"])]


def _within_episode_report(series, kinds, config, trainer) -> dict:
    c = config.evaluation
    return {"updates_per_episode": float(np.mean(series["updates"])),
            "rollbacks_per_episode": float(np.mean(series["rollbacks"])),
            "chunk_steps": c.within_episode_chunk,
            "rule": (f"adapt.evaluate_within_episode: every {c.within_episode_chunk} steps of an episode "
                     f"one guarded step of the MAML inner loss (LVC surrogate, baseline "
                     f"{trainer.algo.config.baseline}) on the episode so far, Meta-SGD rates; "
                     f"weights reset at every episode start")}


def _within_episode_lines(entry) -> list:
    return [f"updates per episode: {entry['updates_per_episode']:.2f} accepted, "
            f"{entry['rollbacks_per_episode']:.2f} rolled back (every {entry['chunk_steps']} steps)"]


def _in_context_report(series, kinds, config, trainer) -> dict:
    from benchmarks.stats import summarize

    return {"first_episode": summarize(series["first_episode"], kinds),
            "measured_on": "episodes after the first (context) episode, carry kept"}


def _in_context_lines(entry) -> list:
    return [f"first (context) episode: {entry['first_episode']['return_mean']:.1f}"]


# ------------------------------------------------------------------------------------ registry
@dataclasses.dataclass(frozen=True)
class Method:
    """One benchmark method.

    Attributes:
      name: the method's name (results.json key, `--methods` entry).
      trainer: the trainer whose state it evaluates (`benchmarks.trainers.TRAINERS` key).
      label: one line saying what the method is.
      evaluator: `(key, tasks, trainer, state, config) -> Evaluation` for one seed.
      returns: `(series, config) -> (S, N)` per-task returns from the series stacked over seeds.
      report: `(series, kinds, config, trainer) -> dict` of extra results.json fields.
      lines: `(results entry) -> list of str` printed under the method's table row.
      adaptation: `series -> (S, N, K + 1)` per-task returns after 0..K units of adaptation
        (inner steps, updates between rounds, context episodes), None for a method that does
        not adapt or adapts within the measured episode (test_time_within_episode); the
        method's return is one of these columns.
      adaptation_unit: what one unit of adaptation is ("inner step", "update", "context
        episode"; "" when `adaptation` is None).
    """

    name: str
    trainer: str
    label: str
    evaluator: Evaluator
    returns: Callable[[dict, Any], np.ndarray]
    report: Callable[..., dict] = _no_report
    lines: Callable[[dict], list] = _no_lines
    adaptation: Optional[Callable[[dict], np.ndarray]] = None
    adaptation_unit: str = ""

    def measured(self, prefix: str, series: dict, config) -> Optional[np.ndarray]:
        """The measure `prefix` (`evaluation.EpisodeMeasures`: "around_switch." `(S, N, 2 * W)`,
        "goal_distance." `(S, N)`) of the windows the method's return measures (one episode per
        env, `evaluation.EpisodeMeasures`), from the series
        stacked over seeds: its `returns` rule applied to its evaluator's `prefix` series; None
        when there are none (the suite does not ask for that measure)."""
        sub = {k[len(prefix):]: v for k, v in series.items() if k.startswith(prefix)}
        return np.asarray(self.returns(sub, config)) if sub else None

    def by_adaptation(self, series: dict) -> np.ndarray:
        """`(S, N, K + 1)` returns after 0..K adaptation units (`(S, N, 1)`: the method's
        returns, for a method that does not adapt) from the series stacked over seeds."""
        if self.adaptation is None:
            return np.asarray(series[_ONLY_SERIES[self.name]])[..., None]
        return np.asarray(self.adaptation(series))


def _by_inner_step(series) -> np.ndarray:
    return series["by_inner_step"]


def _in_context_by_episode(series) -> np.ndarray:
    return np.stack([series["first_episode"], series["after_context"]], axis=-1)


#: The series holding the returns of the methods without an `adaptation` series.
_ONLY_SERIES = {"non_adaptive": "return", "non_adaptive_ssm": "return", "test_time_within_episode": "return",
                "goal_oracle": "return"}


REGISTRY = (
    Method("non_adaptive", "non_adaptive",
           "PPO MLP policy trained across the train tasks (domain randomisation)",
           evaluate_fixed_policy, lambda s, c: s["return"]),
    Method("non_adaptive_ssm", "non_adaptive_ssm",
           "PPO SSM policy trained across the train tasks, its carry reset at every episode start "
           "(memory within an episode, no adaptation across episodes)",
           evaluate_fixed_policy, lambda s, c: s["return"]),
    Method("in_context", "in_context",
           "RL^2: SSM policy on envs.context.ContextWrapper observations, PPO over windows of "
           "several episodes with the carry kept across episodes",
           evaluate_in_context, lambda s, c: s["after_context"],
           report=_in_context_report, lines=_in_context_lines,
           adaptation=_in_context_by_episode, adaptation_unit="context episode"),
    Method("maml_zero_shot", "maml_ssm", "MAML-RL SSM policy (Meta-SGD, LVC inner step) before adaptation",
           evaluate_maml_inner_steps, lambda s, c: s["by_inner_step"][..., 0],
           report=_maml_report(lambda c: 0), adaptation=_by_inner_step, adaptation_unit="inner step"),
    Method("maml_adapted", "maml_ssm",
           "the MAML-RL SSM policy after num_inner_steps inner steps on support rollouts of the "
           "test task (returns after 0..max(3, num_inner_steps) steps are reported)",
           evaluate_maml_inner_steps, lambda s, c: s["by_inner_step"][..., _adapted_steps(c)],
           report=_maml_report(_adapted_steps), lines=_inner_step_lines,
           adaptation=_by_inner_step, adaptation_unit="inner step"),
    Method("test_time_adapted", "maml_ssm",
           "the MAML SSM policy adapted online by `adapt` between evaluation rounds",
           evaluate_test_time, lambda s, c: s["by_round"][..., -1],
           report=_test_time_report, lines=_test_time_lines,
           adaptation=lambda s: s["by_round"], adaptation_unit="update"),
    Method("test_time_hybrid", "maml_ssm",
           "the MAML SSM policy adapted by `adapt`'s hybrid rule between the rounds of "
           "test_time_adapted (each round's data pooled with replay from a ring buffer of earlier "
           "rounds)",
           evaluate_test_time_hybrid, lambda s, c: s["by_round"][..., -1],
           report=_test_time_hybrid_report, lines=_test_time_lines,
           adaptation=lambda s: s["by_round"], adaptation_unit="update"),
    Method("test_time_within_episode", "maml_ssm",
           "the MAML SSM policy updating its weights during each episode, every K steps, from "
           "that episode's data so far (MAML inner loss, guarded steps)",
           evaluate_within_episode, lambda s, c: s["return"],
           report=_within_episode_report, lines=_within_episode_lines),
    Method("maml_adapted_mlp", "maml_mlp", "the MAML pipeline with an MLP policy (what the SSM contributes)",
           evaluate_maml_inner_steps, lambda s, c: s["by_inner_step"][..., _adapted_steps(c)],
           report=_maml_report(_adapted_steps), lines=_inner_step_lines,
           adaptation=_by_inner_step, adaptation_unit="inner step"),
    Method("goal_oracle", "goal_oracle",
           "goal suite only: non_adaptive_ssm's policy trained by PPO with its own budget "
           "(config.goal_oracle), told the hidden goal x* and, with goal_oracle_direction (the default), "
           "the force direction (appended to its observation): the oracle the adaptive methods are "
           "measured against",
           evaluate_fixed_policy, lambda s, c: s["return"]),
)
METHODS_BY_NAME = {m.name: m for m in REGISTRY}
#: Every method's name, in registry order.
METHODS = tuple(METHODS_BY_NAME)
#: The methods that exist only on a suite with a hidden goal (they are told it).
GOAL_METHODS = ("goal_oracle",)
#: The six methods the standard suite has always run (its default: numbers and run time unchanged).
STANDARD_METHODS = ("non_adaptive", "in_context", "maml_zero_shot", "maml_adapted", "test_time_adapted",
                    "maml_adapted_mlp")


def trainer_label(trainer: str, methods) -> str:
    """How progress lines and plots name a trainer: with the methods (of `methods`) it serves,
    e.g. "maml_ssm -> maml_zero_shot, maml_adapted"; just its name when that is the method's."""
    served = [m for m in methods if METHODS_BY_NAME[m].trainer == trainer]
    return trainer if served == [trainer] else f"{trainer} -> {', '.join(served)}"


def trainer_names(methods) -> tuple:
    """The distinct trainers the named methods need, in the methods' order."""
    return tuple(dict.fromkeys(METHODS_BY_NAME[m].trainer for m in methods))


# ------------------------------------------------------------------------------------ measuring
@dataclasses.dataclass(frozen=True)
class Measurement:
    """Every configured method measured on every seed's test tasks.

    series: method -> name -> array stacked over seeds `(S, N, ...)`; returns: method ->
    per-task returns `(S, N)`; kinds: `(S, N)` bool, inverted tasks; env_steps: env steps
    of all evaluations (a shared evaluation counted once); tasks: the test tasks' varied
    fields, field name -> `(S, N)` float for the suite's `Suite.task_fields` (e.g. CartPole's
    `TASK_FIELDS`, and the goal suite's `goal_x`; CartPole force_mag and Pendulum m negative
    for inverted tasks).
    """

    series: dict
    returns: dict
    kinds: np.ndarray
    env_steps: int
    tasks: dict = dataclasses.field(default_factory=dict)


#: The physical fields of a CartPole test task reported per task (`envs.CartPoleTasks`' varied
#: fields, `envs.VARIED_FIELDS`); another environment reports its suite's `task_fields`.
TASK_FIELDS = ("length", "masspole", "masscart", "gravity", "force_mag")


def measure(config, trainers: dict, states: dict, registry=METHODS_BY_NAME, log=None) -> Measurement:
    """Evaluate the configured methods on the same test tasks per seed (see the module docstring).

    `trainers`: trainer name -> `Trainer`; `states`: trainer name -> trained state with a
    leading seed axis; `log`: called with a line before each evaluation of the first seed
    (where it compiles), None for silence.
    """
    import jax

    import envs
    from benchmarks import evaluation as ev

    suite = envs.get_suite(config.suite, config.env_name)
    fields = suite.task_fields
    methods = [registry[m] for m in config.methods]
    per_seed = {m.name: [] for m in methods}
    kinds, physics = [], []
    env_steps = 0
    for s in range(config.num_seeds):
        key = ev.eval_key(config.seed, s)
        tasks = ev.test_tasks(key, config.evaluation.num_tasks, suite)
        kinds.append(np.asarray(ev.task_kinds(tasks)))
        physics.append({f: np.asarray(getattr(tasks, f), np.float64) for f in fields})
        done = {}
        for m in methods:
            computation = (m.evaluator, m.trainer)
            if computation not in done:
                if log is not None and s == 0:
                    same = [n.name for n in methods if (n.evaluator, n.trainer) == computation]
                    log(f"[{trainer_label(m.trainer, config.methods)}] evaluating {', '.join(same)} "
                        f"(compiling the evaluation first) ...")
                state = jax.tree.map(lambda x: x[s], states[m.trainer])
                done[computation] = m.evaluator(key, tasks, trainers[m.trainer], state, config)
                env_steps += done[computation].env_steps
            per_seed[m.name].append(done[computation].series)
    series = {name: {k: np.stack([d[k] for d in ds]) for k in ds[0]} for name, ds in per_seed.items()}
    returns = {m.name: np.ascontiguousarray(m.returns(series[m.name], config)) for m in methods}
    return Measurement(series=series, returns=returns, kinds=np.stack(kinds), env_steps=env_steps,
                       tasks={f: np.stack([p[f] for p in physics]) for f in fields})
