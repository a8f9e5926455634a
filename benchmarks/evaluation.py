"""Evaluation harness: every method on the same held-out test tasks, with the same keys.

Per seed `s`, the test tasks are the held-out split of the run's suite (`envs.suites`;
`envs.CartPoleTasks()` for the standard suite), `suite.sample(eval_key(s), num_tasks, "test")`
(`test_tasks`), and every method gets the same rollout keys for them. The measurement is the
same for all methods: the mean return of the episodes completed in an evaluation window of the environment's
episode limit (`episode_steps`: `BenchmarkConfig.episode_steps`, CartPole-v1 and Acrobot-v1
500, Pendulum-v1 200; `EPISODE_STEPS` = 500 by default; fresh resets, `num_envs` parallel envs per task), giving one number
per (seed, task). What differs is what each method may do before/while it is measured:

* `non_adaptive` / `non_adaptive_ssm`: the PPO policy as is (the SSM policy's carry reset at
  every episode start, as in its training).
* `maml_zero_shot` / `maml_adapted`: the MAML policy after 0 / `num_inner_steps` inner
  policy-gradient steps (the trained Meta-SGD step sizes), each on fresh support rollouts of
  the test task of the training support size (`support_envs` x `support_steps`); the return
  after k = 0..K steps is reported (`return_by_inner_step`).
* `test_time_adapted`: the MAML policy with `adapt.evaluate_with_adaptation` (online rule:
  guarded policy-gradient steps between rounds of evaluation windows, Meta-SGD step sizes as the
  per-parameter SGD rates); the return of the last round is the method's return, every round
  is reported.
* `test_time_hybrid`: the same rounds, tasks and keys as `test_time_adapted` (the two are
  paired), with `adapt`'s hybrid rule: each step's loss pools the round's data with rows
  replayed from a ring buffer of the earlier rounds' (`evaluation.hybrid_replay_capacity`
  rows, weight `evaluation.hybrid_replay_ratio`); the first step, with an empty buffer, is
  the online one, so the first two rounds equal test_time_adapted's.
* `test_time_within_episode`: the MAML policy in an evaluation window whose every env's first
  episode updates its own copy of the weights every `evaluation.within_episode_chunk` steps from
  that episode's data so far (`adapt.evaluate_within_episode`, `within_episode_rule`: the MAML
  inner loss, Meta-SGD rates, guarded steps); the return is the mean over envs of that episode's.
* `in_context`: the RL^2 policy in a window of `context_episodes + 1` episode lengths with its
  carry kept across episodes; the return is the mean over the episodes that START after the
  agent's first episode (it has had its context), and the first episode is reported apart.

Besides returns, the evaluators measure episodes in the ways the suite asks (`EpisodeMeasures`,
`episode_measures(suite)`): for each return series `X` they also return `<measure>.X`, of ONE
episode per env in the windows `X` is measured on, averaged over envs: each env's first episode
of the window (RL^2: its first after the context). That is the episode `X` counts for the
test-time methods; the fixed policies' and MAML's `X` also count the later episodes a window
completes, and RL^2's every episode after the context.

* "around_switch." (a suite whose tasks switch within an episode; `SWITCH_WINDOW`): the rewards
  aligned on the episode's switch step, `(N, 2 * window, ...)` (`around_switch`). With
  CartPole's survival reward an entry is the fraction of episodes still running that many steps
  from the switch; the sum after the switch against the sum before is the method's recovery
  (`benchmarks.results.switch_report`).
* "goal_distance." (a suite with a hidden goal): `|x - x*|` after the episode's last step,
  `(N, ...)` (`envs.final_goal_distance`).

All functions are pure and jitted; they map over tasks with `vmap` and are called per seed.
`policy_env_steps`, `in_context_env_steps`, `maml_env_steps` and `test_time_env_steps` count
the environment steps each evaluator runs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import adapt
import envs
from benchmarks.config import EPISODE_STEPS
from ssm_jax.validation import check_bool, check_int
from maml.core import scale_by_inner_lr

EVAL_STREAM = 2
#: The test-time methods' divergence threshold: a step whose loss exceeds it is rolled back.
TEST_TIME_DIVERGENCE = 1e6
#: Steps on each side of the switch the evaluators keep (the recovery window; `episode_measures`).
SWITCH_WINDOW = 100
#: Prefix of an evaluator's series that holds, for its return series `X` `(N, ...)`, the
#: rewards around the switch `(N, 2 * SWITCH_WINDOW, ...)` (`around_switch`) of one episode per env.
AROUND_SWITCH = "around_switch."
#: Prefix of an evaluator's series that holds, for its return series `X`, the final `|x - x*|`
#: of one episode per env on a suite with a hidden goal (`envs.final_goal_distance`).
GOAL_DISTANCE = "goal_distance."


def eval_key(seed: int, s: int) -> jax.Array:
    """The evaluation key of seed index `s` (seed `seed + s` as a uint32, as
    `benchmarks.training.seed_keys`): tasks and rollouts derive from it."""
    return jax.random.fold_in(jax.random.key(np.uint32(seed + s)), EVAL_STREAM)


def test_tasks(key, num_tasks: int, task_dist=None):
    """`num_tasks` held-out test-split tasks of `task_dist` (an `envs.Suite`, `envs.EnvTasks`
    or `envs.CartPoleTasks`; default `envs.CartPoleTasks()`, the standard suite's), with a
    leading task axis."""
    task_dist = envs.CartPoleTasks() if task_dist is None else task_dist
    return task_dist.sample(jax.random.fold_in(key, 0), num_tasks, "test")


def rollout_key(key):
    """The key every evaluator derives its rollouts from, given the seed's evaluation key
    (`eval_key`); task `i` gets key `i` of `split(rollout_key(key), N)`."""
    return jax.random.fold_in(key, 1)


def around_switch(traj, window: int, episode=0) -> jax.Array:
    """Mean over envs of each env's rewards around the switch of its episode `episode`
    (`envs.rewards_around_switch`): `(2 * window,)` for a `(E, T)` trajectory of one task; entry
    `window + d` is the fraction of episodes (with CartPole's survival reward) still running
    `d` steps after the switch."""
    return jnp.mean(envs.rewards_around_switch(traj, window, episode), axis=-2)


@dataclasses.dataclass(frozen=True)
class EpisodeMeasures:
    """What the evaluators measure of one episode per env besides returns (a static,
    hashable argument): `switch_window > 0` the rewards around the switch ("around_switch.",
    `around_switch`), `goal_distance` the final `|x - x*|` ("goal_distance."). The default
    measures nothing."""

    switch_window: int = 0
    goal_distance: bool = False

    def __post_init__(self):
        check_int("switch_window", self.switch_window, 0)
        check_bool("goal_distance", self.goal_distance)

    def __call__(self, traj, episode=0) -> dict:
        """prefix -> the measure of episode `episode` of a `(E, T)` trajectory of one task, over envs."""
        out = {}
        if self.switch_window:
            out[AROUND_SWITCH] = around_switch(traj, self.switch_window, episode)
        if self.goal_distance:
            out[GOAL_DISTANCE] = jnp.nanmean(envs.final_goal_distance(traj, episode))
        return out

    def add(self, out: dict, name: str, traj, episode=0, over_tasks: bool = False) -> dict:
        """`out` with `<prefix>name` for each measure of `traj`'s episode `episode` (`over_tasks`:
        `traj` has a leading task axis to map over)."""
        fn = jax.vmap(lambda t: self(t, episode)) if over_tasks else (lambda t: self(t, episode))
        return {**out, **{prefix + name: v for prefix, v in fn(traj).items()}}


def episode_measures(suite, episode_steps: int = EPISODE_STEPS) -> EpisodeMeasures:
    """The `EpisodeMeasures` of `suite` (an `envs.Suite`): the rewards around the switch if its
    tasks switch (`SWITCH_WINDOW` steps either side, cut to what every episode holds: the
    earliest switch step, and the steps from the latest one to `episode_steps`), the final goal
    distance if it has a hidden goal."""
    window = 0
    if getattr(suite, "switches", False):
        low, high = suite.switch_steps
        window = min(SWITCH_WINDOW, low, episode_steps - high)
        if window < 1:
            raise ValueError(f"episode_steps ({episode_steps}) must exceed the suite's latest switch step {high}")
    return EpisodeMeasures(switch_window=window, goal_distance=bool(getattr(suite, "has_goal", False)))


def per_task_return(traj) -> jax.Array:
    """Mean completed-episode return per task of a `(N, E, T)` trajectory, `(N,)`."""
    total, count = envs.episode_returns_per_row(traj)
    total, count = jnp.sum(total, axis=-1), jnp.sum(count, axis=-1)
    return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)


def policy_rollouts(key, policy, params, tasks, *, num_envs: int, env=None,
                    episode_steps: int = EPISODE_STEPS):
    """The rollouts `evaluate_policy` measures: an `episode_steps`-step window of `num_envs`
    envs per task (carry reset per episode), an `envs.Trajectory` `(N, num_envs, episode_steps)`."""
    return envs.rollout_tasks(rollout_key(key), policy, params, tasks, num_envs=num_envs,
                              num_steps=episode_steps, env=env)


def evaluate_policy(key, policy, params, tasks, *, num_envs: int, env=None,
                    episode_steps: int = EPISODE_STEPS) -> jax.Array:
    """Per-task return `(N,)` of a fixed policy: the mean completed-episode return of
    `policy_rollouts`."""
    return policy_series(key, policy, params, tasks, num_envs=num_envs, env=env,
                         episode_steps=episode_steps)["return"]


@functools.partial(jax.jit, static_argnames=("policy", "num_envs", "env", "episode_steps", "measures"))
def policy_series(key, policy, params, tasks, *, num_envs: int, env=None,
                  episode_steps: int = EPISODE_STEPS, measures: EpisodeMeasures = EpisodeMeasures()) -> dict:
    """`evaluate_policy`'s "return" `(N,)` and `measures` of each env's first episode
    ("<prefix>return", see `EpisodeMeasures`)."""
    traj = policy_rollouts(key, policy, params, tasks, num_envs=num_envs, env=env,
                           episode_steps=episode_steps)
    return measures.add({"return": per_task_return(traj)}, "return", traj, over_tasks=True)


def policy_env_steps(num_tasks: int, num_envs: int, episode_steps: int = EPISODE_STEPS) -> int:
    """Env steps `evaluate_policy` runs: a window in each of `num_envs` envs per task."""
    return num_tasks * num_envs * episode_steps


def in_context_window(context_episodes: int, episode_steps: int = EPISODE_STEPS) -> int:
    """Steps of the `evaluate_in_context` window: the context episodes and one more episode."""
    return (context_episodes + 1) * episode_steps


def in_context_env_steps(num_tasks: int, num_envs: int, context_episodes: int = 1,
                         episode_steps: int = EPISODE_STEPS) -> int:
    """Env steps `evaluate_in_context` runs: its window in each of `num_envs` envs per task."""
    return num_tasks * num_envs * in_context_window(context_episodes, episode_steps)


@functools.partial(jax.jit, static_argnames=("policy", "num_envs", "env", "context_episodes",
                                             "episode_steps", "measures"))
def evaluate_in_context(key, policy, params, tasks, *, num_envs: int, env,
                        context_episodes: int = 1, episode_steps: int = EPISODE_STEPS,
                        measures: EpisodeMeasures = EpisodeMeasures()) -> dict:
    """RL^2 evaluation: `(N,)` returns after the context and of the first episode.

    A window of `(context_episodes + 1) * episode_steps` steps with the carry kept across
    episodes: the first `context_episodes` episodes are the context (at most `episode_steps`
    steps each, the episode limit, so at least one evaluation episode completes in every env). `after_context` averages the completed
    episodes with index >= `context_episodes`; `first_episode` is the return of episode 0.
    `measures` ("<prefix>after_context", `EpisodeMeasures`) are of each env's episode
    `context_episodes` (the first measured one, which the window always holds whole).
    """
    steps = in_context_window(context_episodes, episode_steps)
    traj = envs.rollout_tasks(rollout_key(key), policy, params, tasks, num_envs=num_envs,
                              num_steps=steps, env=env, carry_across_episodes=True)
    dones = traj.dones
    index = envs.episode_index(dones)  # episode index of the episode ending at t
    later = dones & (index >= context_episodes)
    first = dones & (index == 0)

    def mean_over(mask):
        total = jnp.sum(jnp.where(mask, traj.episode_returns, 0.0), axis=(-2, -1))
        count = jnp.sum(mask, axis=(-2, -1))
        return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)

    out = {"after_context": mean_over(later), "first_episode": mean_over(first)}
    return measures.add(out, "after_context", traj, context_episodes, over_tasks=True)


def evaluate_maml(key, algo, state, tasks, *, num_inner_steps: int, num_envs: int,
                  episode_steps: int = EPISODE_STEPS) -> jax.Array:
    """Per-task returns after 0..K inner steps, `(N, K + 1)`, of a `maml.MAMLRL` state.

    Step k: measure `theta_k` on an `episode_steps`-step window (`num_envs` envs), then (k < K) sample a
    support batch of the training size with `theta_k` and take one inner step with the trained
    step sizes (`algo.inner_step`).
    """
    return maml_series(key, algo, state, tasks, num_inner_steps=num_inner_steps, num_envs=num_envs,
                       episode_steps=episode_steps)["by_inner_step"]


def maml_series(key, algo, state, tasks, *, num_inner_steps: int, num_envs: int,
                episode_steps: int = EPISODE_STEPS, measures: EpisodeMeasures = EpisodeMeasures()) -> dict:
    """`evaluate_maml`'s "by_inner_step" `(N, K + 1)` and `measures` of the first episodes of
    each measurement window ("<prefix>by_inner_step", the step axis last, `EpisodeMeasures`)."""
    return _maml_series(key, algo, state, tasks, num_inner_steps, num_envs, episode_steps, measures)


@functools.partial(jax.jit, static_argnums=(1, 4, 5, 6, 7))
def _maml_series(key, algo, state, tasks, num_inner_steps, num_envs, episode_steps, measures):
    c = algo.config

    def one_task(task, k):
        def measured(theta, kk):
            traj = algo.rollout(theta, kk, task, num_envs, episode_steps)
            return measures.add({"by_inner_step": envs.mean_episode_return(traj)}, "by_inner_step", traj)

        def step(theta, kk):
            k_eval, k_support = jax.random.split(kk)
            out = measured(theta, k_eval)
            support = algo.collect(theta, k_support, task, c.support_envs, c.support_steps)
            theta, _ = algo.inner_step(theta, state.inner_lr, support, first_order=True)
            return theta, out

        theta, outs = jax.lax.scan(step, state.params, jax.random.split(k, num_inner_steps))
        last = measured(theta, jax.random.fold_in(k, num_inner_steps))
        # (K + 1, ...) -> the step axis last: (K + 1,) and (2 * window, K + 1)
        return jax.tree.map(lambda a, b: jnp.moveaxis(jnp.concatenate([a, b[None]]), 0, -1), outs, last)

    n = jax.tree.leaves(tasks)[0].shape[0]
    return jax.vmap(one_task)(tasks, jax.random.split(rollout_key(key), n))


def evaluate_test_time(key, policy, state, tasks, *, num_rounds: int, num_envs: int,
                       lr_scale: float = 1.0, env=None,
                       baseline: str = "value", replay_capacity: int = 0,
                       replay_ratio: float = 0.0, episode_steps: int = EPISODE_STEPS) -> jax.Array:
    """Per-task returns of each round `(N, num_rounds)` (rounds of `episode_steps` steps) with
    `adapt`'s online rule, or its hybrid rule when `replay_capacity > 0` and `replay_ratio > 0`.

    The objective is `adapt.policy_gradient_loss` (REINFORCE with `baseline`, the one the MAML
    policy was trained with: its value head or a linear fit to each round's returns; no value
    term, so only the policy moves); the optimiser is SGD with the MAML
    state's step sizes `state.inner_lr` (times `lr_scale`). One guarded
    step per round (`divergence_threshold` rejects non-finite or exploding steps).

    Hybrid (`adapt.evaluate_with_adaptation`'s replay): every round's `num_envs` trajectory rows
    join a ring buffer of `replay_capacity` rows after the round's step; a step's loss is
    `(1 - replay_ratio) * objective(this round) + replay_ratio * objective(num_envs rows drawn
    uniformly with replacement from the buffer)`, the plain online loss while the buffer is
    empty (the first step). Rollout keys are the online rule's, so with the same arguments the
    two are paired round by round (equal up to the first step that replays).
    """
    return test_time_series(key, policy, state, tasks, num_rounds=num_rounds, num_envs=num_envs,
                            lr_scale=lr_scale, env=env, baseline=baseline, replay_capacity=replay_capacity,
                            replay_ratio=replay_ratio, episode_steps=episode_steps)["by_round"]


def test_time_series(key, policy, state, tasks, *, num_rounds: int, num_envs: int,
                     lr_scale: float = 1.0, env=None, baseline: str = "value", replay_capacity: int = 0,
                     replay_ratio: float = 0.0, episode_steps: int = EPISODE_STEPS,
                     measures: EpisodeMeasures = EpisodeMeasures()) -> dict:
    """`evaluate_test_time`'s "by_round" `(N, num_rounds)` and `measures` of the first
    episodes of each round ("<prefix>by_round", the round axis last, `EpisodeMeasures`)."""
    return _test_time_series(key, policy, state, tasks, num_rounds, num_envs, lr_scale, env, baseline,
                             replay_capacity, replay_ratio, episode_steps, measures)


def test_time_rule(policy, state, *, lr_scale: float = 1.0, baseline: str = "value") -> tuple:
    """`(objective, optimizer)` of test_time_adapted's online rule for the MAML state `state`:
    `adapt.policy_gradient_loss` (REINFORCE with `baseline`, no value term) and SGD with the
    per-parameter step sizes `lr_scale * state.inner_lr` (`maml.core.scale_by_inner_lr`)."""
    optimizer = scale_by_inner_lr(jax.tree.map(lambda x: lr_scale * x, state.inner_lr))
    objective = functools.partial(adapt.policy_gradient_loss, policy=policy, value_coef=0.0,
                                  baseline=baseline)
    return objective, optimizer


@functools.partial(jax.jit, static_argnums=(1, 4, 5, 6, 7, 8, 9, 10, 11, 12))
def _test_time_series(key, policy, state, tasks, num_rounds, num_envs, lr_scale, env, baseline,
                      replay_capacity, replay_ratio, episode_steps, measures):
    objective, optimizer = test_time_rule(policy, state, lr_scale=lr_scale, baseline=baseline)

    def measure(traj):
        return measures.add({"by_round": jnp.mean(envs.first_episode_return(traj))}, "by_round", traj)

    def one_task(task, k):
        _, returns, _ = adapt.evaluate_with_adaptation(
            k, policy, state.params, task, objective=objective, optimizer=optimizer,
            num_rounds=num_rounds, steps_per_round=episode_steps, num_envs=num_envs,
            divergence_threshold=TEST_TIME_DIVERGENCE, env=env,
            replay_capacity=replay_capacity, replay_ratio=replay_ratio, measure=measure)
        return jax.tree.map(lambda x: jnp.moveaxis(x, 0, -1), returns)  # the round axis last

    n = jax.tree.leaves(tasks)[0].shape[0]
    return jax.vmap(one_task)(tasks, jax.random.split(rollout_key(key), n))


def within_episode_rule(algo, state) -> tuple:
    """`(objective, optimizer, make_batch)` of test_time_within_episode for the MAML state `state`
    of `algo` (a `maml.MAMLRL`), for `adapt.evaluate_within_episode`.

    The loss is the MAML inner loss the policy was meta-trained to adapt with,
    `algo.inner_objective` (the LVC policy-gradient surrogate), on the episode so far:
    `algo.batch_of(episode, mask=valid)` (the configured advantages: a linear baseline fitted to
    the episode's own steps, returns cut at the current step, normalised over them) with the
    episode's carry reset at its first step; the optimiser is SGD with the Meta-SGD step sizes
    `state.inner_lr`. Why this loss: it is the rule whose initialisation and step sizes were
    meta-trained (a dynamics or other self-supervised loss would adapt a head nobody trained);
    it needs no trained critic (the benchmark's MAML uses the linear baseline, its value head is
    untrained); its ratio to the logged log-probs importance-weights the steps that earlier
    weights of the same episode sampled. Its limit: with CartPole's survival reward a running
    episode's rewards are all 1, so until the reward varies within the episode (the goal suite's
    distance-shaped reward) the gradient carries little task information.
    """
    optimizer = scale_by_inner_lr(state.inner_lr)

    def make_batch(traj, valid):
        return algo.batch_of(traj, mask=valid).replace(resets=traj.resets), valid

    def objective(params, batch):
        b, valid = batch
        return algo.inner_objective(params, b, mask=valid)[0]

    return objective, optimizer, make_batch


def within_episode_window(key, algo, state, task, *, num_envs: int, chunk_steps: int,
                          episode_steps: int = EPISODE_STEPS):
    """`adapt.evaluate_within_episode` of test_time_within_episode's rule (`within_episode_rule`)
    on ONE task: an `episode_steps`-step window of `num_envs` envs, each env's first episode adapting its
    weights every `chunk_steps` steps (guarded steps, `TEST_TIME_DIVERGENCE`)."""
    objective, optimizer, make_batch = within_episode_rule(algo, state)
    return adapt.evaluate_within_episode(
        key, algo.policy, state.params, task, objective=objective, optimizer=optimizer,
        make_batch=make_batch, num_envs=num_envs, num_steps=episode_steps, chunk_steps=chunk_steps,
        divergence_threshold=TEST_TIME_DIVERGENCE, env=algo.env, obs_mode=algo.config.obs_mode)


def evaluate_within_episode(key, algo, state, tasks, *, num_envs: int, chunk_steps: int,
                            episode_steps: int = EPISODE_STEPS,
                            measures: EpisodeMeasures = EpisodeMeasures()) -> dict:
    """test_time_within_episode: per-task `(N,)` series of `within_episode_window` (task `i` with
    key `i` of `split(fold_in(key, 1), N)`): "return", the mean over envs of the first episode's
    return; "updates" and "rollbacks", the mean over envs of the accepted and rolled-back
    updates during it; `measures` of that episode ("<prefix>return", `EpisodeMeasures`)."""
    return _evaluate_within_episode(key, algo, state, tasks, num_envs, chunk_steps, episode_steps,
                                    measures)


@functools.partial(jax.jit, static_argnums=(1, 4, 5, 6, 7))
def _evaluate_within_episode(key, algo, state, tasks, num_envs, chunk_steps, episode_steps, measures):
    def one_task(task, k):
        r = within_episode_window(k, algo, state, task, num_envs=num_envs, chunk_steps=chunk_steps,
                                  episode_steps=episode_steps)
        out = {"return": jnp.mean(r.returns),
               "updates": jnp.mean(jnp.sum(r.infos.steps, axis=0).astype(jnp.float32)),
               "rollbacks": jnp.mean(jnp.sum(r.infos.rollbacks, axis=0).astype(jnp.float32))}
        return measures.add(out, "return", r.traj)

    n = jax.tree.leaves(tasks)[0].shape[0]
    return jax.vmap(one_task)(tasks, jax.random.split(rollout_key(key), n))


def within_episode_env_steps(num_tasks: int, num_envs: int, episode_steps: int = EPISODE_STEPS) -> int:
    """Env steps `evaluate_within_episode` runs: a window in `num_envs` envs per task."""
    return num_tasks * num_envs * episode_steps


def maml_env_steps(algo, num_tasks: int, num_inner_steps: int, num_envs: int,
                   episode_steps: int = EPISODE_STEPS) -> int:
    """Env steps `evaluate_maml` runs: K + 1 measurement windows in `num_envs` envs and K
    support batches of the training size (`algo.config`), per task."""
    c = algo.config
    return num_tasks * ((num_inner_steps + 1) * num_envs * episode_steps
                        + num_inner_steps * c.support_envs * c.support_steps)


def test_time_env_steps(num_tasks: int, num_rounds: int, num_envs: int,
                        episode_steps: int = EPISODE_STEPS) -> int:
    """Env steps `evaluate_test_time` runs: `num_rounds` windows in `num_envs` envs per task."""
    return num_tasks * num_rounds * num_envs * episode_steps


def task_kinds(tasks) -> Any:
    """`(N,)` bool: inverted tasks (mirrored control, `envs.is_inverted`)."""
    return envs.is_inverted(tasks)
