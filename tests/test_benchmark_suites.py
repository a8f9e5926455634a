"""`python -m benchmarks.cartpole --suite NAME`: the benchmark side of the evaluation suites.

The default run checks the command line and configs (no compilation), the trainers each suite
builds, the `--suite all` plumbing with a stand-in run, and one tiny training run of a wrapped
suite with `--eval_only` reproducing it; a slow test runs every other suite's `--quick` end to end
with a subset of the methods (standard's whole `--quick` run is test_cartpole_benchmark.py's).
"""

import csv
import dataclasses
import json
import os

import chex
import jax
import numpy as np
import pytest

import envs
from benchmarks import cartpole, runs
from benchmarks import evaluation as ev
from benchmarks.cli import RunOptions, build_parser, parse_args
from benchmarks.config import METHODS, STANDARD_METHODS, BenchmarkConfig, default_methods
from benchmarks.methods import GOAL_METHODS, METHODS_BY_NAME
from benchmarks.results import print_suite_summary, suite_summary
from benchmarks.trainers import TRAINERS, build_trainer
from envs.suites import SUITE_NAMES, SUITES
from test_cartpole_benchmark import _check_results


@pytest.fixture(autouse=True)
def _in_a_temporary_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _error_of(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


# ------------------------------------------------------------------------------ command line


def test_standard_suite_is_todays_run_config_trainers_and_test_tasks():
    today = BenchmarkConfig()
    config, options = parse_args(["--suite", "standard"])
    assert config == parse_args([])[0] == today and config.suite == "standard"
    assert not options.all_suites
    assert config.to_dict()["suite"] == "standard"
    legacy = {k: v for k, v in today.to_dict().items() if k != "suite"}  # config.json of older runs
    assert BenchmarkConfig.from_dict(legacy) == today
    cartpole_env = envs.make("CartPole-v1")[0]
    key = jax.random.key(11)
    for name in TRAINERS:
        if name == "goal_oracle":
            with pytest.raises(ValueError, match="goal_oracle is told the hidden goal, so it needs a suite with one"):
                build_trainer(name, config)
            continue
        trainer = build_trainer(name, config)
        inner = trainer.env.inner if name == "in_context" else trainer.env
        assert inner is cartpole_env
        dist = trainer.task_dist if hasattr(trainer, "task_dist") else trainer.algo.task_dist
        chex.assert_trees_all_equal(dist.sample(key, 8, "train"), envs.CartPoleTasks().sample(key, 8, "train"))
    k = ev.eval_key(0, 1)
    chex.assert_trees_all_equal(ev.test_tasks(k, 16, SUITES["standard"]), ev.test_tasks(k, 16))


@pytest.mark.parametrize("name", SUITE_NAMES)
def test_each_suite_sets_the_trainers_env_and_task_distribution(name):
    config = parse_args(["--suite", name, "--quick"])[0]
    assert config.suite == name and config == BenchmarkConfig.quick_preset().with_values({"suite": name})
    suite = SUITES[name]
    for trainer_name in TRAINERS:
        if trainer_name == "goal_oracle" and not suite.has_goal:
            with pytest.raises(ValueError, match="needs a suite with one"):
                build_trainer(trainer_name, config)
            continue
        trainer = build_trainer(trainer_name, config)
        if trainer_name == "in_context":
            assert trainer.env == envs.ContextWrapper(suite.env())
            assert trainer.policy.obs_dim == envs.obs_dim(suite.env()) + 4
        elif trainer_name == "goal_oracle":
            assert trainer.env == envs.GoalVisible(suite.env(), direction=True) and trainer.policy.obs_dim == 6
        else:
            assert trainer.env is suite.env()
            assert trainer.policy.obs_dim == (2 if name == "partial" else 4)
        dist = trainer.task_dist if hasattr(trainer, "task_dist") else trainer.algo.task_dist
        assert dist is suite


def test_a_suite_reports_the_task_fields_it_varies():
    """`Suite.task_fields` (per_task.csv's task columns): the physics distribution's varied fields,
    and the hidden goal x* where the suite has one; each is a field of the suite's sampled tasks."""
    key = jax.random.key(0)
    physics = ("length", "masspole", "masscart", "gravity", "force_mag")
    for name in SUITE_NAMES:
        suite = SUITES[name]
        assert suite.task_fields == physics + (("goal_x",) if name == "goal" else ())
        tasks = suite.sample(key, 4, "test")
        for field in suite.task_fields:
            assert np.shape(getattr(tasks, field)) == (4,), (name, field)


def test_goal_oracle_trains_with_its_own_section_and_old_runs_keep_theirs():
    """goal_oracle's PPO budget and settings are `config.goal_oracle`, whatever non_adaptive_ssm's
    are; a config stored before that section existed (its oracle trained with non_adaptive_ssm's
    section) reads back with that section as the oracle's, and one stored before the oracle was
    told the force direction reads back without it (a policy of the x*-only width); its carry is
    reset like non_adaptive_ssm's."""
    config = BenchmarkConfig(suite="goal").with_values({
        "goal_oracle.total_iterations": 40, "goal_oracle.lr": 3e-4, "non_adaptive_ssm.total_iterations": 20})
    oracle, ssm = build_trainer("goal_oracle", config), build_trainer("non_adaptive_ssm", config)
    assert (oracle.iterations, oracle.algo.config) == (40, config.goal_oracle)
    assert (ssm.iterations, ssm.algo.config) == (20, config.non_adaptive_ssm)
    assert oracle.algo.config.lr == 3e-4 != ssm.algo.config.lr
    assert oracle.policy.obs_dim == ssm.policy.obs_dim + 2
    assert oracle.env == envs.GoalVisible(ssm.env, direction=True) and config.goal_oracle_direction
    stored = config.to_dict()
    del stored["goal_oracle"]
    assert BenchmarkConfig.from_dict(stored).goal_oracle == config.non_adaptive_ssm
    del stored["goal_oracle_direction"]
    older = BenchmarkConfig.from_dict(stored)
    assert older == dataclasses.replace(config, goal_oracle=config.non_adaptive_ssm, goal_oracle_direction=False)
    x_only = build_trainer("goal_oracle", older)
    assert x_only.env == envs.GoalVisible(ssm.env) and x_only.policy.obs_dim == ssm.policy.obs_dim + 1
    assert BenchmarkConfig.from_dict(config.to_dict()) == config
    assert BenchmarkConfig().goal_oracle.carry_across_episodes is False
    with pytest.raises(ValueError, match="goal_oracle.carry_across_episodes must be False"):
        config.with_values({"goal_oracle.carry_across_episodes": True})


def test_each_suite_runs_its_default_methods_unless_methods_are_given(tmp_path, monkeypatch, capsys):
    """standard keeps today's six methods; every other suite runs every method that exists there
    (goal_oracle on goal only); --methods (or a config file's methods) overrides that for one
    suite and for --suite all, and a bad one is refused at parse time."""
    assert default_methods("meta_rl", "standard") == STANDARD_METHODS and len(STANDARD_METHODS) == 6
    everywhere = tuple(m for m in METHODS if m not in GOAL_METHODS)
    for name in SUITE_NAMES:
        expected = STANDARD_METHODS if name == "standard" else (METHODS if name == "goal" else everywhere)
        assert parse_args(["--suite", name])[0].methods == expected
        assert parse_args(["--suite", name, "--quick"])[0].methods == expected
        assert BenchmarkConfig(suite=name).methods == expected == default_methods("meta_rl", name)
        assert parse_args(["--suite", name, "--methods", "non_adaptive,test_time_hybrid"])[0].methods == (
            "non_adaptive", "test_time_hybrid")
        assert parse_args(["--suite", name, "--mode", "policy_gradient"])[0].methods == ("non_adaptive",)
    assert set(METHODS) - set(STANDARD_METHODS) == {"non_adaptive_ssm", "test_time_hybrid",
                                                    "test_time_within_episode", "goal_oracle"}
    err = _error_of(["--suite", "switching", "--methods", "maml_adapted,goal_oracle"], capsys)
    assert "methods ['goal_oracle'] are told the hidden goal: they run on a suite with one (['goal'])" in err
    # a config follows its suite while its methods are defaulted, never once they are given
    assert BenchmarkConfig().with_values({"suite": "goal"}).methods == METHODS
    given = BenchmarkConfig().with_values({"methods": STANDARD_METHODS})
    assert given.with_values({"suite": "goal"}).methods == STANDARD_METHODS
    path = tmp_path / "run.toml"
    path.write_text('suite = "partial"\n')
    assert parse_args(["--config", str(path)])[0].methods == everywhere
    path.write_text('suite = "partial"\nmethods = ["maml_adapted"]\n')
    assert parse_args(["--config", str(path)])[0].methods == ("maml_adapted",)
    err = _error_of(["--suite", "goal", "--methods", "non_adaptive,test_time_magic"], capsys)
    assert "--methods must be a non-empty subset of" in err and "test_time_within_episode" in err
    # --suite all: each suite's default methods, or the given ones in every suite
    calls = []
    monkeypatch.setattr(cartpole, "run", lambda config, options: calls.append(config) or {"methods": {}})
    assert cartpole.main(["--suite", "all", "--quick", "--out", str(tmp_path / "a")]) == 0
    assert [c.methods for c in calls] == [default_methods("meta_rl", s) for s in SUITE_NAMES]
    calls.clear()
    assert cartpole.main(["--suite", "all", "--quick", "--methods", "non_adaptive,maml_adapted",
                          "--out", str(tmp_path / "b")]) == 0
    assert [c.methods for c in calls] == [("non_adaptive", "maml_adapted")] * len(SUITE_NAMES)


def test_suite_flag_is_listed_validated_and_stored(tmp_path, capsys):
    text = build_parser().format_help()
    listed = " ".join(text.split("suites (--suite):")[1].split("options:")[0].split())
    for suite in SUITES.values():
        assert f"{suite.name} {' '.join(suite.description.split()[:5])}" in listed
    assert "--suite NAME" in text and "all: one run per suite" in " ".join(text.split())
    err = _error_of(["--suite", "hard"], capsys)
    assert "--suite must be one of ['standard', 'partial', 'extreme', 'switching', 'goal', 'all'], got 'hard'" in err
    path = tmp_path / "run.toml"
    path.write_text('suite = "goal"\nnum_seeds = 2\n')
    assert parse_args(["--config", str(path)])[0].suite == "goal"
    assert parse_args(["--config", str(path), "--suite", "extreme"])[0].suite == "extreme"  # flags win
    path.write_text('suite = "goals"\n')
    assert "suite must be one of ['standard'" in _error_of(["--config", str(path)], capsys)


def test_suite_all_options_and_refusals(tmp_path, capsys):
    config, options = parse_args(["--suite", "all", "--quick", "--out", str(tmp_path / "all")])
    assert options.all_suites and config == BenchmarkConfig.quick_preset()
    assert "--print_config prints one run's config" in _error_of(["--suite", "all", "--print_config"], capsys)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(BenchmarkConfig().to_dict()))
    assert "do not pass other config flags" in _error_of(["--resume", str(run), "--suite", "all"], capsys)
    assert "--eval_only accepts only" in _error_of(["--eval_only", "--checkpoint", str(run), "--suite", "goal"], capsys)
    assert "holds a run itself" in _error_of(["--suite", "all", "--out", str(run)], capsys)
    (tmp_path / "all" / "goal").mkdir(parents=True)
    (tmp_path / "all" / "goal" / "config.json").write_text(json.dumps(BenchmarkConfig().to_dict()))
    assert "goal' already holds a run" in _error_of(["--suite", "all", "--out", str(tmp_path / "all")], capsys)
    assert parse_args(["--suite", "all", "--out", str(tmp_path / "all"), "--overwrite"])[1].overwrite


def test_suite_all_runs_every_suite_into_its_directory_and_summarises(tmp_path, monkeypatch, capsys):
    """The --suite all plumbing with a stand-in for `run` (no training): each suite's config and
    directory, then summary.json and the table from the runs' results."""
    calls = []

    def fake_run(config, options):
        i = len(calls)
        calls.append((config, options))
        entry = lambda mean, diff: {"return_mean": mean, "return_ci95": 1.5, "per_seed_mean": [mean], **(  # noqa: E731
            {} if diff is None else {"vs_non_adaptive": {"all": {"mean": diff, "ci95_low": diff - 1, "ci95_high": diff + 1}}})}
        return {"methods": {"non_adaptive": entry(100.0 + i, None), "in_context": entry(200.0 + i, 100.0)}}

    monkeypatch.setattr(cartpole, "run", fake_run)
    out = str(tmp_path / "all")
    assert cartpole.main(["--suite", "all", "--quick", "--num_seeds", "4", "--out", out]) == 0
    assert [c.suite for c, _ in calls] == list(SUITE_NAMES)
    assert [o.out for _, o in calls] == [os.path.join(out, s) for s in SUITE_NAMES]
    assert all(c.num_seeds == 4 and c.quick and not o.all_suites for c, o in calls)
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert list(summary) == list(SUITE_NAMES)
    assert summary["goal"]["in_context"]["return_mean"] == 204.0
    assert summary["goal"]["in_context"]["vs_non_adaptive"] == {"mean": 100.0, "ci95_low": 99.0, "ci95_high": 101.0}
    printed = capsys.readouterr().out
    table = printed[printed.index("summary over suites"):]
    assert "".join(f"{s:>24s}" for s in SUITE_NAMES) in table
    assert "200.0 +- 1.5" in table and "204.0 +- 1.5" in table and "+100.0 [+99.0, +101.0]" in table


def test_suite_summary_keeps_missing_values_readable(capsys):
    res = {"standard": {"methods": {"non_adaptive": {"return_mean": float("nan"), "return_ci95": float("nan"),
                                                     "per_seed_mean": [float("nan")]}}}}
    summary = suite_summary(res)
    assert summary["standard"]["non_adaptive"]["return_mean"] is None  # strict JSON: nan -> null
    print_suite_summary(summary)
    assert "nan" in capsys.readouterr().out


def test_a_partial_run_episode_holds_the_positions_it_saw_and_nan_velocities():
    """A `partial` run's episode (untrained non_adaptive_ssm params): its states are the
    `[x, theta]` the policy saw in the rollout, in CartPole's state layout with NaN
    velocities; the same rollout of a full-observation run keeps all four."""
    config = BenchmarkConfig.quick_preset().with_values({"suite": "partial"})
    trainer = build_trainer("non_adaptive_ssm", config)
    states = jax.tree.map(lambda x: x[None], trainer.init(jax.random.key(0)))
    policy = runs.MethodPolicy(METHODS_BY_NAME["non_adaptive_ssm"], trainer, states, config)
    assert policy.obs_mode == "partial"
    task = jax.tree.map(lambda x: x[0], envs.SUITES["partial"].sample(jax.random.key(1), 1, "test"))
    episode = runs.rollout_episode(policy, 0, task, jax.random.key(2))
    traj = envs.rollout(jax.random.split(jax.random.key(2))[1], policy.policy, policy.params(0), task,
                        num_envs=1, num_steps=500, env=policy.env)
    seen = np.asarray(traj.obs)[0, :episode.length]
    assert seen.shape[-1] == 2 and episode.states.shape == (episode.length, 4)
    np.testing.assert_array_equal(episode.states[:, [0, 2]], seen)
    assert np.all(np.isnan(episode.states[:, [1, 3]]))
    assert episode.total == float(np.sum(np.asarray(traj.rewards)[0, :episode.length]))


# ------------------------------------------------------------------------------ end to end


TINY_PG = ["--quick", "--mode", "policy_gradient", "--ppo_iterations", "2", "--chunk_size", "2",
           "--checkpoint_every", "2", "--eval_tasks", "6", "--num_seeds", "2"]


def test_tiny_run_of_a_wrapped_suite_and_its_eval_only(tmp_path):
    """A wrapped suite through the whole pipeline (PPO on SuiteParams tasks, evaluation,
    per_task.csv, plots); results.json and config.json name the suite; --eval_only on the run
    reproduces its per-task returns exactly."""
    out = str(tmp_path / "run")
    assert cartpole.main(TINY_PG + ["--suite", "switching", "--out", out]) == 0
    res = _check_results(out, ["non_adaptive"])
    assert res["suite"] == "switching" and res["suite_definition"] == SUITES["switching"].to_dict()
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["suite"] == "switching"
    assert cartpole.main(["--eval_only", "--checkpoint", out]) == 0
    again = _check_results(os.path.join(out, "eval"), ["non_adaptive"])
    assert again["suite"] == "switching"
    assert again["methods"]["non_adaptive"]["per_seed_mean"] == res["methods"]["non_adaptive"]["per_seed_mean"]
    around = res["methods"]["non_adaptive"]["around_switch"]
    assert around == again["methods"]["non_adaptive"]["around_switch"]
    assert around["window"] == 100 and len(around["reward_by_offset"]) == 200
    assert os.path.getsize(os.path.join(out, "switch_recovery.png")) > 0
    with open(os.path.join(out, "per_task.csv")) as a, open(os.path.join(out, "eval", "per_task.csv")) as b:
        assert a.read() == b.read()


#: The methods the slow end-to-end test runs in each non-standard suite (standard's whole
#: --quick run is test_cartpole_benchmark.py's test_quick_run_end_to_end). Every suite runs
#: end to end; the methods are suite-agnostic code fed the suite's env and tasks (each trainer's
#: wiring per suite is test_each_suite_sets_the_trainers_env_and_task_distribution's), so the
#: method kinds are spread where their suite-specific outputs are: switching runs a PPO trainer
#: of each policy, the MAML trainer and the two evaluators only these suites run by default
#: (their switch curves); goal runs a PPO and a MAML method with the oracle (goal distances
#: and fractions of the oracle); partial runs the recurrent PPO policy on the
#: velocity-free observations, extreme the MLP one on its extrapolation tasks.
SUITE_TEST_METHODS = {
    "switching": ("non_adaptive", "non_adaptive_ssm", "maml_adapted", "test_time_hybrid",
                  "test_time_within_episode"),
    "goal": ("non_adaptive", "maml_adapted") + GOAL_METHODS,
    "partial": ("non_adaptive_ssm",),
    "extreme": ("non_adaptive",),
}


@pytest.mark.slow
def test_quick_run_of_every_other_suite_end_to_end(tmp_path, capsys):
    """`--suite NAME --quick --methods ...` for every suite but standard: results.json's schema,
    the suite stored, returns in [0, 500] (a goal episode's reward per step is in [0, 1]) and the
    plots, in --out/<suite>/ as --suite all lays them out."""
    names = [n for n in SUITE_NAMES if n != "standard"]
    assert set(SUITE_TEST_METHODS) == set(names)
    run_somewhere = {m for methods in SUITE_TEST_METHODS.values() for m in methods}
    assert {"test_time_within_episode", "test_time_hybrid", *GOAL_METHODS} <= run_somewhere
    out = str(tmp_path / "suites")
    for name in names:
        argv = ["--suite", name, "--quick", "--methods", ",".join(SUITE_TEST_METHODS[name]),
                "--out", os.path.join(out, name)]
        assert cartpole.main(argv) == 0
        res = _check_results(os.path.join(out, name), SUITE_TEST_METHODS[name])
        assert res["suite"] == name and BenchmarkConfig.from_dict(res["config"]).suite == name
        for m in res["methods"].values():
            assert np.all((np.asarray(m["per_seed_mean"]) >= 0) & (np.asarray(m["per_seed_mean"]) <= 500))
        if name == "switching":  # where the two test-time evaluators run
            within = res["methods"]["test_time_within_episode"]
            assert within["updates_per_episode"] >= 0 and within["chunk_steps"] == 50
            assert res["methods"]["test_time_hybrid"]["replay_ratio"] == 0.5
        assert os.path.getsize(os.path.join(out, name, "per_task_physics.png")) > 0
        adapts = any(METHODS_BY_NAME[m].adaptation is not None for m in SUITE_TEST_METHODS[name])
        assert os.path.exists(os.path.join(out, name, "adaptation.png")) == adapts
        switches = SUITES[name].switches
        assert os.path.exists(os.path.join(out, name, "switch_recovery.png")) == switches
        for m in res["methods"].values():
            assert ("around_switch" in m) == switches
            assert ("final_goal_distance" in m) == SUITES[name].has_goal
        with open(os.path.join(out, name, "per_task.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        assert ("goal_x" in rows[0]) == SUITES[name].has_goal
        if SUITES[name].has_goal:
            # each row's x* is its test task's (drawn here without fast_compile: the last bit may differ)
            config = BenchmarkConfig.from_dict(res["config"])
            goals = [np.asarray(ev.test_tasks(ev.eval_key(config.seed, s), config.evaluation.num_tasks,
                                              SUITES[name]).goal_x) for s in range(config.num_seeds)]
            got = [float(r["goal_x"]) for r in rows]
            want = [float(goals[int(r["seed_index"])][int(r["task_index"])]) for r in rows]
            np.testing.assert_allclose(got, want, rtol=1e-6)
        for method, m in res["methods"].items():  # the suite test runs the oracle wherever there is a goal
            assert ("of_goal_oracle" in m) == (SUITES[name].has_goal and method not in GOAL_METHODS)
            if SUITES[name].has_goal:  # the track is 4.8 m long and |x*| <= 1.5
                assert all(0 <= d <= 4.0 for d in m["final_goal_distance"]["per_seed_mean"])
            if switches:  # survival reward: the fraction of episodes running only falls with time
                curve = np.asarray(m["around_switch"]["reward_by_offset_per_seed"])
                assert curve.shape == (2, 200) and np.all((curve >= 0) & (curve <= 1))
                assert np.all(np.diff(curve, axis=-1) <= 1e-6)
    summary = suite_summary({n: _check_results(os.path.join(out, n), SUITE_TEST_METHODS[n]) for n in names})
    print_suite_summary(summary)
    assert "summary over suites" in capsys.readouterr().out
