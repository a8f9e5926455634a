"""The numbers of the benchmark table against references computed another way.

One tiny benchmark (untrained policies, 2 seeds x 3 held-out tasks x 2 envs, every method but
maml_adapted_mlp) is measured by `benchmarks.methods.measure` and summarised by
`benchmarks.results` (test_time_within_episode measured apart, at XLA's default level, and merged
in). Each evaluator's per-task series is then rebuilt outside the evaluator:
plain `envs.rollout` calls with the keys `benchmarks.evaluation` documents, inner steps and
test-time steps written out as `p - lr * grad` (test_time_hybrid's with its replayed rows drawn
by hand), test_time_within_episode by the Python loop of test_within_episode.py, and episode
returns counted by hand from the rewards and done flags. The summary statistics (means, kinds,
per-seed means, seed-level t intervals, the paired difference with non_adaptive) are recomputed
from those hand counts, and the env steps of the measurement are counted from the rebuilt
trajectories.
"""

import json
import math
import os
import statistics
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import adapt
import envs
from benchmarks import evaluation as ev
from benchmarks.config import BenchmarkConfig
from benchmarks.methods import Measurement, measure, trainer_names
from benchmarks.results import json_safe, method_results, print_table
from benchmarks.rundir import write_json_atomic
from benchmarks.trainers import build_trainer
from test_within_episode import within_episode_loop

#: A tiny benchmark of untrained policies. maml.rl.num_inner_steps (1) differs from the reported
#: inner steps (2), so maml_adapted is a middle column, not the last. maml_adapted_mlp runs the
#: evaluator of maml_adapted with the MLP trainer (its registry entry is checked in
#: test_cartpole_benchmark.py); it is left out to save a compilation. Three test-time rounds, so
#: test_time_hybrid's second step replays the first round; inner step sizes of 1.0 (the untrained
#: state's), so one step moves the sampled actions and the rounds' returns tell rules apart.
#: test_time_within_episode updates every 10 steps: the untrained policies' episodes are short.
METHODS = ("non_adaptive", "non_adaptive_ssm", "in_context", "maml_zero_shot", "maml_adapted",
           "test_time_adapted", "test_time_hybrid", "test_time_within_episode")
TINY = {
    "seed": 3, "num_seeds": 2, "methods": METHODS,
    "policy.hidden_dim": 8, "policy.state_dim": 4,
    "in_context_policy.hidden_dim": 8, "in_context_policy.state_dim": 4, "in_context_policy.num_layers": 1,
    "maml.rl.num_inner_steps": 1, "maml.rl.support_envs": 2, "maml.rl.support_steps": 100,
    "evaluation.num_tasks": 3, "evaluation.num_envs": 2, "evaluation.inner_steps": 2,
    "evaluation.test_time_rounds": 3, "evaluation.hybrid_replay_ratio": 0.5, "maml.rl.inner_lr": 1.0,
    "evaluation.within_episode_chunk": 10,
}
T95_ONE_DOF = 12.706204736174707  # Student-t 0.975 quantile, 1 degree of freedom (2 seeds)


def completed_episodes(traj):
    """Hand count: per row, the returns (reward sums) of the episodes that end in the window."""
    rewards, dones = np.asarray(traj.rewards, np.float64), np.asarray(traj.dones)
    rows = []
    for r_row, d_row in zip(rewards.reshape(-1, rewards.shape[-1]), dones.reshape(-1, dones.shape[-1])):
        episodes, total = [], 0.0
        for r, d in zip(r_row, d_row):
            total += r
            if d:
                episodes.append(total)
                total = 0.0
        rows.append(episodes)
    return rows


def mean_completed(traj) -> float:
    """Mean over every completed episode of every row (NaN if none)."""
    returns = [x for row in completed_episodes(traj) for x in row]
    return float(np.mean(returns)) if returns else math.nan


class Rebuilt:
    """Rollouts for the references, counting the env steps they run."""

    def __init__(self):
        self.env_steps = 0

    def rollout(self, key, policy, params, task, *, num_envs, num_steps, env, carry_across_episodes=False):
        traj = _rollout(key, policy, params, task, num_envs=num_envs, num_steps=num_steps, obs_mode="full",
                        carry_across_episodes=carry_across_episodes, env=env)
        self.env_steps += int(np.size(traj.rewards))
        return traj

    def collect(self, algo, params, key, task):
        """`algo.collect` of a support batch of the training size (jitted once per algo)."""
        c = algo.config
        if algo not in _COLLECT:
            _COLLECT[algo] = jax.jit(lambda p, k, t: algo.collect(p, k, t, c.support_envs, c.support_steps))
        batch = _COLLECT[algo](params, key, task)
        self.env_steps += int(np.size(batch.actions))
        return batch


_rollout = jax.jit(envs.rollout, static_argnames=("policy", "num_envs", "num_steps", "obs_mode",
                                                   "carry_across_episodes", "env"))
_COLLECT = {}


def _task(tasks, i):
    return jax.tree.map(lambda x: x[i], tasks)


def _task_keys(key, n):
    """`benchmarks.evaluation`: every evaluator gives task i key i of split(fold_in(key, 1), n)."""
    return jax.random.split(jax.random.fold_in(key, 1), n)


def _sgd(params, lrs, grads):
    return jax.tree.map(lambda p, l, g: p - l * g, params, lrs, grads)


WITHIN = "test_time_within_episode"


@pytest.fixture(scope="module")
def bench(default_optimizations):
    """The tiny benchmark and its references. test_time_within_episode is measured and rebuilt
    apart, at XLA's default level (tests/conftest.py `default_optimizations`): its episodes are
    chaotic. The other methods compile as the run's other tests do, and the two measurements
    are merged as one `measure` of every method returns them."""
    config = BenchmarkConfig.quick_preset().with_values(TINY)
    assert config.reported_inner_steps == 2 and config.maml.rl.obs_mode == "full"
    trainers = {t: build_trainer(t, config) for t in trainer_names(config.methods)}
    states = {t: jax.jit(jax.vmap(tr.init))(jax.random.split(jax.random.key(20 + i), config.num_seeds))
              for i, (t, tr) in enumerate(trainers.items())}
    m = measure(config.with_values({"methods": tuple(n for n in METHODS if n != WITHIN)}), trainers, states)
    ref = _references(config, trainers, states)
    with default_optimizations():
        m_within = measure(config.with_values({"methods": (WITHIN,)}), trainers, states)
        ref_within = _within_references(config, trainers, states)
    m = _merged(m, m_within)
    ref.update(ref_within, env_steps=ref["env_steps"] + ref_within["env_steps"])
    return types.SimpleNamespace(config=config, trainers=trainers, states=states, m=m,
                                 results=method_results(config, trainers, m), ref=ref)


def _merged(a: Measurement, b: Measurement) -> Measurement:
    """One Measurement of the methods of `a` and of `b`, measured on the same tasks."""
    np.testing.assert_array_equal(a.kinds, b.kinds)
    for field in a.tasks:
        np.testing.assert_array_equal(a.tasks[field], b.tasks[field])
    return Measurement(series={**a.series, **b.series}, returns={**a.returns, **b.returns}, kinds=a.kinds,
                       env_steps=a.env_steps + b.env_steps, tasks=a.tasks)


def _seed_tasks(config, states):
    """Per seed: `(s, key, tasks, state)`, the seed's evaluation key, its test tasks and every
    trainer's state of that seed, as `benchmarks.evaluation` documents them."""
    for s in range(config.num_seeds):
        key = ev.eval_key(config.seed, s)
        assert np.array_equal(jax.random.key_data(key),
                              jax.random.key_data(jax.random.fold_in(jax.random.key(config.seed + s), 2)))
        tasks = envs.CartPoleTasks().sample(jax.random.fold_in(key, 0), config.evaluation.num_tasks, "test")
        yield s, key, tasks, {t: jax.tree.map(lambda x: x[s], st) for t, st in states.items()}


def _references(config, trainers, states):
    """Every series of every evaluator but test_time_within_episode's, rebuilt per seed and task
    (see the module docstring)."""
    rebuilt = Rebuilt()
    e, n = config.evaluation.num_envs, config.evaluation.num_tasks
    K, R = config.reported_inner_steps, config.evaluation.test_time_rounds
    fixed, context, maml = trainers["non_adaptive"], trainers["in_context"], trainers["maml_ssm"]
    fixed_ssm = trainers["non_adaptive_ssm"]
    algo = maml.algo
    inner_grad = jax.jit(jax.grad(lambda p, batch: algo.inner_objective(p, batch)[0]))
    online_grad = jax.jit(jax.grad(lambda p, traj: adapt.policy_gradient_loss(
        p, traj, policy=maml.policy, value_coef=0.0, baseline=algo.config.baseline)))
    out = {name: [] for name in ("non_adaptive", "non_adaptive_ssm", "after_context", "first_episode", "maml",
                                 "by_round", "hybrid_by_round", "inverted")}
    w = config.evaluation.hybrid_replay_ratio
    ssm_trajectory = None
    for s, key, tasks, state in _seed_tasks(config, states):
        out["inverted"].append(np.asarray(tasks.force_mag) < 0)
        rows = {name: [] for name in out if name != "inverted"}
        for i, k in enumerate(_task_keys(key, n)):
            task = _task(tasks, i)
            # non_adaptive: the PPO policy on a 500-step window
            traj = rebuilt.rollout(k, fixed.policy, state["non_adaptive"].params, task, num_envs=e,
                                   num_steps=500, env=fixed.env)
            rows["non_adaptive"].append(mean_completed(traj))
            # non_adaptive_ssm: the PPO SSM policy on a 500-step window, carry reset per episode
            traj = rebuilt.rollout(k, fixed_ssm.policy, state["non_adaptive_ssm"].params, task, num_envs=e,
                                   num_steps=500, env=fixed_ssm.env)
            rows["non_adaptive_ssm"].append(mean_completed(traj))
            if ssm_trajectory is None:
                ssm_trajectory = (traj, state["non_adaptive_ssm"].params)
            # in_context: 1000 steps, carry kept; episode 0 of each env is the context
            traj = rebuilt.rollout(k, context.policy, state["in_context"].params, task, num_envs=e,
                                   num_steps=1000, env=context.env, carry_across_episodes=True)
            episodes = completed_episodes(traj)
            assert all(len(row) >= 2 for row in episodes)
            rows["first_episode"].append(float(np.mean([row[0] for row in episodes])))
            rows["after_context"].append(float(np.mean([x for row in episodes for x in row[1:]])))
            # maml_zero_shot / maml_adapted: theta_j measured on a 500-step window (key 0 of
            # split(step_keys[j]); fold_in(k, K) after the last step), then one inner step
            # p - lr * grad on fresh support data sampled with theta_j (key 1 of the split)
            theta, by_step = state["maml_ssm"].params, []
            step_keys = jax.random.split(k, K)
            for j in range(K + 1):
                k_eval, k_support = jax.random.split(step_keys[j]) if j < K else (jax.random.fold_in(k, K), None)
                traj = rebuilt.rollout(k_eval, maml.policy, theta, task, num_envs=e, num_steps=500, env=algo.env)
                by_step.append(mean_completed(traj))
                if j < K:
                    support = rebuilt.collect(algo, theta, k_support, task)
                    theta = _sgd(theta, state["maml_ssm"].inner_lr, inner_grad(theta, support))
            rows["maml"].append(by_step)
            # test_time_adapted: round r (key 0 of split(round_keys[r])) measures theta_r by the
            # mean over envs of each env's first episode, then one step p - lr * grad of
            # adapt.policy_gradient_loss on the round's data (Meta-SGD rates)
            theta, by_round = state["maml_ssm"].params, []
            for kr in jax.random.split(k, R):
                traj = rebuilt.rollout(jax.random.split(kr)[0], maml.policy, theta, task, num_envs=e,
                                       num_steps=500, env=maml.env)
                by_round.append(float(np.mean([row[0] for row in completed_episodes(traj)])))
                g = online_grad(theta, traj)
                assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g))
                theta = _sgd(theta, state["maml_ssm"].inner_lr, g)
            rows["by_round"].append(by_round)
            # test_time_hybrid: the same rounds and keys; the step's gradient is (1 - w) times the
            # round's plus w times that of E rows drawn with key 1 of the round's split, uniformly
            # with replacement, from the rows of the earlier rounds (the round's alone at first)
            theta, by_round, stored = state["maml_ssm"].params, [], []
            for kr in jax.random.split(k, R):
                k_roll, k_replay = jax.random.split(kr)
                traj = rebuilt.rollout(k_roll, maml.policy, theta, task, num_envs=e, num_steps=500, env=maml.env)
                by_round.append(float(np.mean([row[0] for row in completed_episodes(traj)])))
                g = online_grad(theta, traj)
                if stored:
                    picks = np.asarray(jax.random.randint(k_replay, (e,), 0, len(stored)))
                    replay = jax.tree.map(lambda *xs: jnp.stack(xs), *[stored[i] for i in picks])
                    g = jax.tree.map(lambda a, b: (1 - w) * a + w * b, g, online_grad(theta, replay))
                theta = _sgd(theta, state["maml_ssm"].inner_lr, g)
                stored += [jax.tree.map(lambda x: x[i], traj) for i in range(e)]
            rows["hybrid_by_round"].append(by_round)
        for name, values in rows.items():
            out[name].append(values)
    ref = {name: np.asarray(v, bool if name == "inverted" else np.float64) for name, v in out.items()}
    ref["env_steps"] = rebuilt.env_steps
    ref["ssm_trajectory"] = ssm_trajectory
    return ref


def _within_references(config, trainers, states):
    """test_time_within_episode's series per seed and task: the Python loop of
    test_within_episode.py with the benchmark's rule (the MAML inner loss on the episode so far,
    Meta-SGD rates), and the env steps of the evaluator's windows, which run to their end."""
    e, n = config.evaluation.num_envs, config.evaluation.num_tasks
    maml = trainers["maml_ssm"]
    out = {"within": [], "within_updates": [], "within_rollbacks": []}
    for s, key, tasks, state in _seed_tasks(config, states):
        objective, _, make_batch = ev.within_episode_rule(maml.algo, state["maml_ssm"])
        rows = {name: [] for name in out}
        for i, k in enumerate(_task_keys(key, n)):
            returns, _, accepted, rejected, _ = within_episode_loop(
                k, maml.policy, state["maml_ssm"].params, _task(tasks, i), objective=objective,
                make_batch=make_batch, lrs=state["maml_ssm"].inner_lr, num_envs=e, num_steps=500,
                chunk_steps=config.evaluation.within_episode_chunk, env=maml.env,
                threshold=ev.TEST_TIME_DIVERGENCE, stop_early=True)
            rows["within"].append(float(np.mean(returns)))
            rows["within_updates"].append(float(np.mean(accepted)))
            rows["within_rollbacks"].append(float(np.mean(rejected)))
        for name, values in rows.items():
            out[name].append(values)
    ref = {name: np.asarray(v, np.float64) for name, v in out.items()}
    ref["env_steps"] = config.num_seeds * n * e * 500
    return ref


# ------------------------------------------------------------------------------- per-task series
def test_non_adaptive_returns_are_hand_counted_episodes_of_a_plain_rollout(bench):
    np.testing.assert_allclose(bench.m.series["non_adaptive"]["return"], bench.ref["non_adaptive"], rtol=1e-6)
    np.testing.assert_allclose(bench.m.returns["non_adaptive"], bench.ref["non_adaptive"], rtol=1e-6)


def test_non_adaptive_ssm_returns_are_hand_counted_episodes_of_a_plain_rollout(bench):
    np.testing.assert_allclose(bench.m.series["non_adaptive_ssm"]["return"], bench.ref["non_adaptive_ssm"],
                               rtol=1e-6)
    np.testing.assert_allclose(bench.m.returns["non_adaptive_ssm"], bench.ref["non_adaptive_ssm"], rtol=1e-6)
    assert not np.allclose(bench.ref["non_adaptive_ssm"], bench.ref["non_adaptive"])  # another policy


def test_non_adaptive_ssm_carry_is_reset_at_every_episode_start(bench):
    """By hand, on the SSM policy's evaluation rollout: from the second episode of a row on, the
    log-probs it acted with are the sequence apply's on that episode alone (a fresh carry at its
    first step), and differ from those of the same steps with the carry of the episodes before
    kept; its PPO trainer keeps the carry only within episodes too."""
    traj, params = bench.ref["ssm_trajectory"]
    policy = bench.trainers["non_adaptive_ssm"].policy
    assert not bench.config.non_adaptive_ssm.carry_across_episodes
    assert bench.trainers["non_adaptive_ssm"].algo.config.carry_across_episodes is False
    dones = np.asarray(traj.dones[0])
    ends = np.flatnonzero(dones)
    assert len(ends) >= 2, "the untrained policy ends several episodes in the window"
    start, stop = int(ends[0]) + 1, int(ends[1]) + 1  # the second episode of row 0
    assert bool(traj.resets[0, start]) and not np.asarray(traj.resets[0, start + 1:stop]).any()
    obs, actions = traj.obs[0], traj.actions[0]
    fresh, _ = policy.apply(params, obs[None, start:stop])
    np.testing.assert_allclose(fresh.dist.log_prob(actions[None, start:stop])[0], traj.log_probs[0, start:stop],
                               rtol=1e-5, atol=1e-6)
    kept, _ = policy.apply(params, obs[None, :stop])  # no reset after t = 0: the carry is kept
    kept_logp = np.asarray(kept.dist.log_prob(actions[None, :stop])[0, start:])
    assert np.max(np.abs(kept_logp - np.asarray(traj.log_probs[0, start:stop]))) > 1e-4


def test_in_context_return_excludes_exactly_the_context_episode(bench):
    series = bench.m.series["in_context"]
    np.testing.assert_allclose(series["after_context"], bench.ref["after_context"], rtol=1e-6)
    np.testing.assert_allclose(series["first_episode"], bench.ref["first_episode"], rtol=1e-6)
    np.testing.assert_allclose(bench.m.returns["in_context"], bench.ref["after_context"], rtol=1e-6)
    # the two differ: the first episode is really left out of the method's return
    assert not np.allclose(bench.ref["after_context"], bench.ref["first_episode"])


def test_maml_returns_after_k_inner_steps_equal_k_manual_inner_steps(bench):
    """Column 0 is the meta-params on a plain rollout (maml_zero_shot), column k the params after
    k manual steps p - lr * grad on support data sampled with the keys evaluation.py uses."""
    ref = bench.ref["maml"]
    for method in ("maml_zero_shot", "maml_adapted"):
        by_step = bench.m.series[method]["by_inner_step"]
        assert by_step.shape == ref.shape == (2, 3, bench.config.reported_inner_steps + 1)
        np.testing.assert_allclose(by_step, ref, rtol=1e-6)
    np.testing.assert_allclose(bench.m.returns["maml_zero_shot"], ref[..., 0], rtol=1e-6)
    k = bench.config.maml.rl.num_inner_steps
    np.testing.assert_allclose(bench.m.returns["maml_adapted"], ref[..., k], rtol=1e-6)
    # the inner steps change the policy: the columns are different measurements
    assert not np.allclose(ref[..., 0], ref[..., 1]) and not np.allclose(ref[..., 1], ref[..., 2])


def test_test_time_returns_by_round_equal_manual_online_steps(bench):
    np.testing.assert_allclose(bench.m.series["test_time_adapted"]["by_round"], bench.ref["by_round"], rtol=1e-6)
    np.testing.assert_allclose(bench.m.returns["test_time_adapted"], bench.ref["by_round"][..., -1], rtol=1e-6)
    assert not np.allclose(bench.ref["by_round"][..., 0], bench.ref["by_round"][..., 1])


def test_hybrid_returns_by_round_equal_manual_steps_with_replay(bench):
    """test_time_hybrid against steps written out with the replayed rows drawn by hand; it is
    paired with test_time_adapted: the same rounds until the first step that replays (the
    second), different afterwards."""
    hybrid, online = bench.ref["hybrid_by_round"], bench.ref["by_round"]
    np.testing.assert_allclose(bench.m.series["test_time_hybrid"]["by_round"], hybrid, rtol=1e-6)
    np.testing.assert_allclose(bench.m.returns["test_time_hybrid"], hybrid[..., -1], rtol=1e-6)
    np.testing.assert_array_equal(bench.m.series["test_time_hybrid"]["by_round"][..., :2],
                                  bench.m.series["test_time_adapted"]["by_round"][..., :2])
    assert not np.allclose(hybrid[..., 2], online[..., 2])
    entry = bench.results["test_time_hybrid"]
    assert entry["replay_ratio"] == 0.5 and entry["replay_capacity"] == bench.config.evaluation.hybrid_replay_capacity


def test_within_episode_returns_equal_a_python_loop_of_the_maml_rule(bench):
    """test_time_within_episode's returns and update counts per task against the Python loop
    (every env stepped by hand, its own weights updated every K steps while its first episode
    runs); some episodes really adapt."""
    series = bench.m.series["test_time_within_episode"]
    np.testing.assert_array_equal(bench.m.returns["test_time_within_episode"], series["return"])
    # the loop and the evaluator's vmapped program sum in other orders; the linear baseline's
    # near-singular fit (test_within_episode.py) can turn that rounding into another action, so
    # an episode may end a step or two apart (seen on an AVX2 CPU): most tasks agree exactly,
    # with the same update counts, and none is more than 2 steps of mean return apart
    same = np.isclose(series["return"], bench.ref["within"], rtol=1e-6, atol=0)
    assert same.mean() >= 0.75 and np.all(np.abs(series["return"] - bench.ref["within"]) <= 2.0)
    np.testing.assert_allclose(series["updates"][same], bench.ref["within_updates"][same])
    np.testing.assert_allclose(series["rollbacks"][same], bench.ref["within_rollbacks"][same])
    assert bench.ref["within_updates"].max() > 0
    entry = bench.results["test_time_within_episode"]
    assert entry["updates_per_episode"] == pytest.approx(float(bench.ref["within_updates"].mean()))
    assert entry["chunk_steps"] == 10


def test_every_method_is_measured_on_the_same_seed_tasks_and_kinds(bench):
    """The kinds are force_mag < 0 of the documented test tasks, and the rebuilt returns (which
    match every method's) ran on exactly those tasks: the pairing behind vs_non_adaptive."""
    np.testing.assert_array_equal(bench.m.kinds, bench.ref["inverted"])
    assert bench.ref["inverted"].any() and (~bench.ref["inverted"]).any()
    for name in bench.config.methods:
        assert bench.m.returns[name].shape == bench.ref["inverted"].shape


def test_env_steps_equal_a_count_from_the_rebuilt_trajectories(bench):
    """Every rollout an evaluator runs, rebuilt (the maml evaluation shared by maml_zero_shot and
    maml_adapted counted once): the count of their steps is the measurement's env_steps."""
    assert bench.m.env_steps == bench.ref["env_steps"] > 0


# ------------------------------------------------------------------------------- the summary
def _seed_interval(values):
    """Student-t 95% interval over the per-seed means (2 seeds here)."""
    means = [statistics.fmean(row) for row in values]
    half = T95_ONE_DOF * statistics.stdev(means) / math.sqrt(len(means))
    return statistics.fmean(means), half


def _kind_rows(values, mask):
    return [list(v[m]) for v, m in zip(values, mask)]


def _reference_returns(bench):
    ref = bench.ref
    k = bench.config.maml.rl.num_inner_steps
    return {"non_adaptive": ref["non_adaptive"], "non_adaptive_ssm": ref["non_adaptive_ssm"],
            "in_context": ref["after_context"],
            "maml_zero_shot": ref["maml"][..., 0], "maml_adapted": ref["maml"][..., k],
            "test_time_adapted": ref["by_round"][..., -1], "test_time_hybrid": ref["hybrid_by_round"][..., -1],
            # its own per-task returns (within rounding of the loop's: the test above)
            "test_time_within_episode": np.asarray(bench.m.returns["test_time_within_episode"], np.float64)}


def test_table_numbers_equal_statistics_of_the_hand_counted_returns(bench, capsys):
    """Every number of a table row (return +- CI, normal/inverted +- CI, per-seed means) and of
    the lines under it (return after k inner steps, by round, first context episode, paired
    differences with non_adaptive and non_adaptive_ssm), from the hand-counted returns."""
    assert scipy.stats.t.ppf(0.975, 1) == pytest.approx(T95_ONE_DOF)
    inv = bench.ref["inverted"]
    ref = _reference_returns(bench)
    # float32 returns against float64 hand counts: agree to ~1e-6 of the returns (tens)
    close = lambda a, b: a == pytest.approx(b, rel=1e-6, abs=1e-4)  # noqa: E731
    for name, values in ref.items():
        entry = bench.results[name]
        mean, half = _seed_interval(values)
        assert close(entry["return_mean"], mean) and close(entry["return_ci95"], half)
        assert close(entry["return_mean"], float(np.mean(values)))  # equal tasks per seed
        assert entry["per_seed_mean"] == pytest.approx([statistics.fmean(row) for row in values], rel=1e-6)
        for kind, mask in (("normal", ~inv), ("inverted", inv)):
            k_mean, k_half = _seed_interval(_kind_rows(values, mask))
            got = entry["return_by_task_kind"][kind]
            assert close(got["mean"], float(np.mean(values[mask])))
            assert close((got["ci95_low"] + got["ci95_high"]) / 2, k_mean) and close(got["ci95"], k_half)
            assert got["n"] == int(mask.sum())
        for reference in ("non_adaptive", "non_adaptive_ssm"):  # paired with both baselines
            assert (f"vs_{reference}" in entry) == (name != reference)
            if name == reference:
                continue
            diff = values - ref[reference]
            for kind, mask in (("all", np.ones_like(inv)), ("inverted", inv), ("normal", ~inv)):
                d_mean, d_half = _seed_interval(_kind_rows(diff, mask))
                got = entry[f"vs_{reference}"][kind]
                assert close(got["mean"], float(np.mean(diff[mask])))
                assert close(got["ci95_low"], d_mean - d_half) and close(got["ci95_high"], d_mean + d_half)
    for name in ("maml_adapted", "maml_zero_shot"):
        assert bench.results[name]["return_by_inner_step"] == pytest.approx(
            list(bench.ref["maml"].mean(axis=(0, 1))), rel=1e-6)
    assert bench.results["test_time_adapted"]["return_by_round"] == pytest.approx(
        list(bench.ref["by_round"].mean(axis=(0, 1))), rel=1e-6)
    assert bench.results["test_time_hybrid"]["return_by_round"] == pytest.approx(
        list(bench.ref["hybrid_by_round"].mean(axis=(0, 1))), rel=1e-6)
    assert close(bench.results["in_context"]["first_episode"]["return_mean"], float(bench.ref["first_episode"].mean()))

    # the printed table shows these numbers
    print_table(bench.results)
    printed = capsys.readouterr().out
    for name, values in ref.items():
        mean, half = _seed_interval(values)
        assert f"{mean:7.1f} +- {half:5.1f}" in printed
        assert "per training seed: " + ", ".join(f"{statistics.fmean(r):.1f}" for r in values) in printed
    steps = ", ".join(f"{x:.1f}" for x in bench.ref["maml"].mean(axis=(0, 1)))
    assert f"after 0,1,..,K inner steps: {steps}" in printed
    assert f"first (context) episode: {bench.ref['first_episode'].mean():.1f}" in printed
    versus = bench.results["maml_adapted"]["vs_non_adaptive_ssm"]["all"]
    assert (f"minus non_adaptive_ssm, paired by task (95% CI): {versus['mean']:+.1f} "
            f"[{versus['ci95_low']:+.1f}, {versus['ci95_high']:+.1f}]") in printed


def test_non_finite_statistics_are_null_in_results_json(bench, tmp_path):
    """One seed has no seed-level interval (NaN): results.json stores null, never NaN."""
    one = Measurement(series={k: {n: v[:1] for n, v in s.items()} for k, s in bench.m.series.items()},
                      returns={k: v[:1] for k, v in bench.m.returns.items()}, kinds=bench.m.kinds[:1],
                      env_steps=bench.m.env_steps)
    config = bench.config.with_values({"num_seeds": 1})
    entries = method_results(config, bench.trainers, one)
    assert math.isnan(entries["maml_adapted"]["return_ci95"])
    assert math.isnan(entries["maml_adapted"]["vs_non_adaptive"]["all"]["ci95_low"])
    path = os.path.join(tmp_path, "results.json")
    write_json_atomic(path, json_safe({"methods": entries, "numbers": [np.float32(np.nan), np.int64(3)]}))
    with open(path) as f:
        text = f.read()

    def no_constants(name):
        raise AssertionError(f"results.json holds {name}")

    stored = json.loads(text, parse_constant=no_constants)
    entry = stored["methods"]["maml_adapted"]
    assert entry["return_ci95"] is None and entry["vs_non_adaptive"]["all"]["ci95_low"] is None
    assert entry["return_mean"] == pytest.approx(float(bench.ref["maml"][0, :, 1].mean()), rel=1e-6)
    assert stored["numbers"] == [None, 3]


def test_episode_measures_of_every_evaluator_are_of_the_episodes_its_return_measures():
    """On switching tasks whose switch comes early (steps 5-15, so the untrained policies'
    episodes reach it), every evaluator's "around_switch." series equals the Python loop of
    test_suites.py, and its "goal_distance." series `envs.final_goal_distance`, over a
    trajectory rebuilt with the documented keys: each env's first episode
    for the fixed policy, the MAML policy before its first inner step, the first test-time round
    and the within-episode window; the first episode after the context for RL^2. Asking for
    the series leaves the returns unchanged."""
    from test_suites import _around_switch_loop

    window, steps = 5, 40
    measures = ev.EpisodeMeasures(switch_window=window, goal_distance=True)
    config = BenchmarkConfig.quick_preset().with_values({**TINY, "suite": "switching"})
    suite = envs.get_suite("switching")
    key = ev.eval_key(config.seed, 0)
    tasks = ev.test_tasks(key, 2, suite)
    tasks = tasks.replace(switch_low=jnp.full(2, 5, jnp.int32), switch_high=jnp.full(2, 15, jnp.int32))
    task_keys = _task_keys(key, 2)

    def reference(traj, episode=0):
        since, dones = np.asarray(traj.info["since_switch"]), np.asarray(traj.dones)
        loop = _around_switch_loop(np.asarray(traj.rewards, np.float64), dones, since, window, episode)
        assert loop.sum() > 0  # episodes do reach the switch: the comparison is not of zeros
        return loop.mean(axis=-2)

    def distance(traj, episode=0):  # final |x - x*| (test_suites.py checks it against a loop)
        return np.asarray(envs.final_goal_distance(traj, episode)).mean(axis=-1)

    ppo = build_trainer("non_adaptive_ssm", config)
    params = ppo.init(jax.random.key(0)).params
    got = ev.policy_series(key, ppo.policy, params, tasks, num_envs=3, env=ppo.env, episode_steps=steps,
                           measures=measures)
    plain = ev.policy_series(key, ppo.policy, params, tasks, num_envs=3, env=ppo.env, episode_steps=steps)
    assert set(plain) == {"return"}
    np.testing.assert_array_equal(got["return"], plain["return"])
    traj = ev.policy_rollouts(key, ppo.policy, params, tasks, num_envs=3, env=ppo.env, episode_steps=steps)
    np.testing.assert_allclose(got["around_switch.return"], reference(traj), rtol=1e-6)
    np.testing.assert_allclose(got["goal_distance.return"], distance(traj), rtol=1e-6)

    rl2 = build_trainer("in_context", config)
    rl2_params = rl2.init(jax.random.key(1)).params
    got = ev.evaluate_in_context(key, rl2.policy, rl2_params, tasks, num_envs=3, env=rl2.env,
                                 episode_steps=steps, measures=measures)
    traj = envs.rollout_tasks(ev.rollout_key(key), rl2.policy, rl2_params, tasks, num_envs=3, num_steps=2 * steps,
                              env=rl2.env, carry_across_episodes=True)
    np.testing.assert_allclose(got["around_switch.after_context"], reference(traj, 1), rtol=1e-6)
    np.testing.assert_allclose(got["goal_distance.after_context"], distance(traj, 1), rtol=1e-6)

    maml = build_trainer("maml_ssm", config)
    state = maml.init(jax.random.key(2))
    got = ev.maml_series(key, maml.algo, state, tasks, num_inner_steps=1, num_envs=3, episode_steps=steps,
                         measures=measures)
    assert got["around_switch.by_inner_step"].shape == (2, 2 * window, 2)
    first = [maml.algo.rollout(state.params, jax.random.split(jax.random.split(k, 1)[0])[0], _task(tasks, i), 3, steps)
             for i, k in enumerate(task_keys)]
    np.testing.assert_allclose(got["around_switch.by_inner_step"][..., 0],
                               np.stack([reference(t) for t in first]), rtol=1e-6)
    np.testing.assert_allclose(got["goal_distance.by_inner_step"][..., 0], [distance(t) for t in first], rtol=1e-6)

    got = ev.test_time_series(key, maml.policy, state, tasks, num_rounds=2, num_envs=3, env=maml.env,
                              baseline=maml.algo.config.baseline, episode_steps=steps, measures=measures)
    by_round = ev.evaluate_test_time(key, maml.policy, state, tasks, num_rounds=2, num_envs=3, env=maml.env,
                                     baseline=maml.algo.config.baseline, episode_steps=steps)
    np.testing.assert_array_equal(got["by_round"], by_round)
    assert got["around_switch.by_round"].shape == (2, 2 * window, 2)
    first = [envs.rollout(jax.random.split(jax.random.split(k, 2)[0])[0], maml.policy, state.params, _task(tasks, i),
                          num_envs=3, num_steps=steps, env=maml.env) for i, k in enumerate(task_keys)]
    np.testing.assert_allclose(got["around_switch.by_round"][..., 0], np.stack([reference(t) for t in first]),
                               rtol=1e-6)
    np.testing.assert_allclose(got["goal_distance.by_round"][..., 0], [distance(t) for t in first], rtol=1e-6)

    got = ev.evaluate_within_episode(key, maml.algo, state, tasks, num_envs=3, chunk_steps=10, episode_steps=steps,
                                     measures=measures)
    windows = [ev.within_episode_window(k, maml.algo, state, _task(tasks, i), num_envs=3, chunk_steps=10,
                                        episode_steps=steps) for i, k in enumerate(task_keys)]
    np.testing.assert_allclose(got["return"], [float(np.mean(w.returns)) for w in windows], rtol=1e-6)
    np.testing.assert_allclose(got["around_switch.return"], np.stack([reference(w.traj) for w in windows]),
                               rtol=1e-6)
    np.testing.assert_allclose(got["goal_distance.return"], [distance(w.traj) for w in windows], rtol=1e-6)


def test_switch_report_by_hand_and_a_run_that_never_reaches_the_switch(tmp_path):
    """`switch_report` against sums written out by hand; a run whose episodes all end before
    the window (before = 0) stores a null recovery, which the table and the plot print as n/a."""
    from benchmarks import plotting
    from benchmarks.results import switch_report
    from benchmarks.stats import percent

    rng = np.random.default_rng(0)
    around, kinds = rng.uniform(size=(3, 4, 10)), rng.uniform(size=(3, 4)) < 0.5
    r = switch_report(around, kinds)
    before, after = around[..., :5].sum(-1), around[..., 5:].sum(-1)
    assert r["window"] == 5 and r["first_offset"] == -5
    np.testing.assert_allclose([r["before"]["return_mean"], r["after"]["return_mean"]], [before.mean(), after.mean()])
    np.testing.assert_allclose(r["recovery"], after.mean() / before.mean())
    np.testing.assert_allclose(r["after_minus_before"]["mean"], (after - before).mean())
    np.testing.assert_allclose(r["reward_by_offset_per_seed"], around.mean(axis=1))
    np.testing.assert_allclose(r["reward_by_offset"], around.mean(axis=(0, 1)))

    never = json_safe(switch_report(np.zeros((2, 3, 10)), kinds[:2, :3]))
    assert never["recovery"] is None and percent(never["recovery"]) == "n/a" and percent(0.456) == "46%"
    path = str(tmp_path / "switch.png")
    assert plotting.plot_switch_recovery({"a": {"around_switch": never}, "b": {"around_switch": json_safe(r)}}, path)
    assert os.path.getsize(path) > 0
    assert not plotting.plot_switch_recovery({"a": {"return_mean": 1.0}}, str(tmp_path / "none.png"))


def test_oracle_fraction_by_hand_and_its_table_line(capsys):
    """`oracle_fraction`: the ratio of the means over seeds x tasks and of each seed's means,
    against numbers worked out by hand, leaving non-finite returns out as `summarize` does; NaN
    (null, printed n/a) where the oracle's mean is not positive; mismatched shapes are refused.
    The table prints it as percentages."""
    from benchmarks.results import oracle_fraction

    returns = np.array([[100.0, 200.0], [300.0, 300.0]])
    oracle = np.array([[200.0, 400.0], [400.0, 400.0]])
    f = oracle_fraction(returns, oracle)  # means 225 / 350; per seed 150/300, 300/400
    np.testing.assert_allclose(f["mean"], 225.0 / 350.0)
    np.testing.assert_allclose(f["per_seed"], [0.5, 0.75])
    zero = oracle_fraction(returns, np.array([[0.0, 0.0], [400.0, 400.0]]))
    assert np.isnan(zero["per_seed"][0]) and json_safe(zero)["per_seed"][0] is None
    lost = oracle_fraction(np.array([[100.0, np.nan], [300.0, 300.0]]), oracle)  # as summarize: finite only
    np.testing.assert_allclose(lost["mean"], (700.0 / 3) / 350.0)
    np.testing.assert_allclose(lost["per_seed"], [100.0 / 300.0, 0.75])
    with pytest.raises(ValueError, match="returns and oracle must both be"):
        oracle_fraction(returns, oracle[:1])
    entry = {"return_mean": 225.0, "return_ci95": 1.0, "per_seed_mean": [150.0, 300.0],
             "return_by_task_kind": {k: {"mean": 1.0, "ci95": 1.0} for k in ("normal", "inverted")},
             "of_goal_oracle": f}
    print_table({"non_adaptive": entry})
    assert "of goal_oracle's return: 64% (per seed 50%, 75%)" in capsys.readouterr().out
