"""`python -m benchmarks.cartpole --env_name Acrobot-v1|Pendulum-v1`: tiny in-process runs.

Each run's results.json has the CartPole run's schema with `env_name` recorded, per_task.csv's
physics columns are the environment's varied fields with the values of the test tasks drawn
again here (`benchmarks.evaluation.test_tasks` of the run's seeds), and every return lies
within the environment's bounds (per-step reward bounds times the episode limit: Acrobot
[-500, 0]; Pendulum [-16.2757 * 200, 0], the worst step being -(pi^2 + 0.1 * 8^2 +
0.001 * 2.4^2) at the largest default max_torque). The default pass measures untrained
non_adaptive policies in process; the slow pass runs the command on Pendulum (RL^2 and
MAML-RL with an MLP, both with Gaussian heads) and test_time_within_episode's evaluator.
Unknown environments and CartPole-only suites are usage errors.
"""

from __future__ import annotations

import csv
import json
import math
import os

import jax
import numpy as np
import pytest

import envs
from benchmarks import cartpole, rundir
from benchmarks import evaluation as ev
from benchmarks.cli import parse_args
from benchmarks.config import ENV_NAMES, ENV_VALUES, BenchmarkConfig
from benchmarks.trainers import build_trainer

ENVS = ("Acrobot-v1", "Pendulum-v1")
#: An episode's return bounds: (min, max) per step, times the episode limit.
RETURN_BOUNDS = {"Acrobot-v1": (-500.0, 0.0), "Pendulum-v1": (-(math.pi ** 2 + 6.4 + 0.001 * 2.4 ** 2) * 200, 0.0)}
EPISODE_LIMIT = {"Acrobot-v1": 500, "Pendulum-v1": 200}
TINY = ["--quick", "--methods", "in_context,maml_adapted_mlp", "--num_epochs", "2",
        "--in_context_iterations", "2", "--chunk_size", "2",
        "--checkpoint_every", "2", "--eval_tasks", "3", "--num_seeds", "2"]
#: results.json's top-level keys (a CartPole run's, `env_name` included).
RESULT_KEYS = {"env_name", "suite", "suite_definition", "config", "methods", "timing", "versions", "command"}


def check_run(env_name: str, out: str) -> None:
    """results.json's schema and env, per_task.csv's physics against the test tasks drawn
    again, every return within the environment's bounds."""
    with open(os.path.join(out, rundir.RESULTS_FILE)) as f:
        results = json.load(f)
    assert set(results) == RESULT_KEYS
    assert results["env_name"] == env_name and results["config"]["env_name"] == env_name
    with open(os.path.join(out, rundir.CONFIG_FILE)) as f:
        assert json.load(f)["env_name"] == env_name
    config = BenchmarkConfig.from_dict(results["config"])
    suite = envs.get_suite("standard", env_name)
    assert results["suite_definition"] == json.loads(json.dumps(suite.to_dict()))
    assert results["suite_definition"]["episode_limit"] == EPISODE_LIMIT[env_name]
    fields = envs.get_task_env(env_name).default_ranges.keys()
    assert suite.task_fields == tuple(fields)
    lo, hi = RETURN_BOUNDS[env_name]
    for name, entry in results["methods"].items():
        assert entry["episodes"]["episode_limit"] == EPISODE_LIMIT[env_name]
        assert entry["trained_model"] and {"return_mean", "return_by_task_kind"} <= set(entry)
        assert lo <= entry["return_mean"] <= hi, (name, entry["return_mean"])

    with open(os.path.join(out, rundir.PER_TASK_FILE)) as f:
        reader = csv.DictReader(f)
        columns, rows = reader.fieldnames, list(reader)
    start = columns.index("task_index") + 1
    assert tuple(columns[start:columns.index("inverted")]) == tuple(fields)
    n = config.evaluation.num_tasks
    assert len(rows) == len(config.methods) * config.num_seeds * n
    for s in range(config.num_seeds):
        tasks = ev.test_tasks(ev.eval_key(config.seed, s), n, suite)
        inverted = np.asarray(envs.is_inverted(tasks))
        for row in (r for r in rows if int(r["seed_index"]) == s):
            i = int(row["task_index"])
            for f in fields:
                np.testing.assert_allclose(float(row[f]), float(getattr(tasks, f)[i]), rtol=1e-6)
            assert row["inverted"] == str(bool(inverted[i]))
            for k, v in row.items():
                if k == "return" or (k.startswith("return_after_") and v):
                    assert lo <= float(v) <= hi, (row["method"], k, v)
    assert any(r["inverted"] == "True" for r in rows) and any(r["inverted"] == "False" for r in rows)


@pytest.mark.parametrize("env_name", ENVS)
def test_measured_physics_and_returns(env_name):
    """In process, untrained non_adaptive policies: per_task.csv's rows carry the test tasks'
    varied fields (drawn again here) and returns within the environment's bounds; results.json's
    entry records the environment's episode limit."""
    from benchmarks.methods import measure
    from benchmarks.results import method_results, per_task_columns, per_task_rows

    config = BenchmarkConfig.quick_preset().with_values({
        "env_name": env_name, "mode": "policy_gradient", "num_seeds": 2, "policy.hidden_dim": 8,
        "evaluation.num_tasks": 4})
    trainer = build_trainer("non_adaptive", config)
    states = {"non_adaptive": jax.vmap(trainer.init)(jax.random.split(jax.random.key(1), 2))}
    m = measure(config, {"non_adaptive": trainer}, states)
    entry = method_results(config, {"non_adaptive": trainer}, m)["non_adaptive"]
    assert entry["episodes"]["episode_limit"] == EPISODE_LIMIT[env_name]
    rows = per_task_rows(config, m)
    fields = tuple(envs.get_task_env(env_name).default_ranges)
    assert tuple(rows[0])[:len(per_task_columns(fields))] == per_task_columns(fields)
    lo, hi = RETURN_BOUNDS[env_name]
    for s in range(2):
        tasks = ev.test_tasks(ev.eval_key(config.seed, s), 4, envs.get_suite("standard", env_name))
        inverted = np.asarray(envs.is_inverted(tasks))
        for row in rows[4 * s:4 * s + 4]:
            i = row["task_index"]
            assert row["seed_index"] == s and row["inverted"] == bool(inverted[i])
            for f in fields:
                np.testing.assert_allclose(row[f], float(getattr(tasks, f)[i]), rtol=1e-6)
            assert lo <= row["return"] <= hi
    assert lo <= entry["return_mean"] <= hi and entry["return_mean"] < hi  # rewards are not all 0


@pytest.mark.slow
@pytest.mark.parametrize("env_name", ["Pendulum-v1"])
def test_run(env_name, tmp_path_factory):
    """`python -m benchmarks.cartpole --env_name Pendulum-v1` end to end on a tiny budget: RL^2
    (PPO training of a Gaussian SSM policy through envs.ContextWrapper) and MAML-RL with an MLP
    policy. (Acrobot's discrete heads are CartPole's path; its evaluation is checked in the
    default pass; a run per environment would double the slow pass's budget.)"""
    out = str(tmp_path_factory.mktemp(f"run_{env_name}") / "run")
    assert cartpole.main(TINY + ["--env_name", env_name, "--out", out]) == 0
    check_run(env_name, out)
    with open(os.path.join(out, rundir.RESULTS_FILE)) as f:
        methods = json.load(f)["methods"]
    by_step = methods["maml_adapted_mlp"]["return_by_inner_step"]
    lo, hi = RETURN_BOUNDS[env_name]
    assert len(by_step) == 4 and all(lo <= r <= hi for r in by_step)


@pytest.mark.parametrize("env_name, discrete, action_dim", [
    ("Acrobot-v1", True, 3), ("Pendulum-v1", False, 1)])
def test_action_heads_follow_the_action_space(env_name, discrete, action_dim):
    config = BenchmarkConfig(env_name=env_name)
    for name in ("non_adaptive", "non_adaptive_ssm", "in_context", "maml_ssm", "maml_mlp"):
        trainer = build_trainer(name, config)
        assert trainer.policy.discrete is discrete and trainer.policy.action_dim == action_dim, name
        envs.check_policy(trainer.policy, trainer.env)
    assert config.episode_steps == envs.get_task_env(env_name).max_steps_in_episode
    assert build_trainer("maml_mlp", config).task_dist.tasks.env_name == env_name


def test_environment_settings_come_before_file_and_flags(tmp_path):
    """`--env_name E` (or a config file's `env_name`) starts from `BenchmarkConfig().with_env(E)`,
    E's training settings (`ENV_VALUES`, Pendulum's discount), and a config file still sets
    any of them; CartPole's and Acrobot's are `BenchmarkConfig()`'s own."""
    assert set(ENV_VALUES) == set(ENV_NAMES)
    base = BenchmarkConfig()
    assert base.with_env("CartPole-v1") == base
    assert base.with_env("Acrobot-v1") == base.with_values({"env_name": "Acrobot-v1"})
    pendulum = base.with_env("Pendulum-v1")
    assert ENV_VALUES["Pendulum-v1"] and all(pendulum.get(p) == v for p, v in ENV_VALUES["Pendulum-v1"].items())
    assert all(base.get(p) != v for p, v in ENV_VALUES["Pendulum-v1"].items())
    assert pendulum.with_values({p: base.get(p) for p in ENV_VALUES["Pendulum-v1"]}) == \
        base.with_values({"env_name": "Pendulum-v1"})  # nothing else differs
    assert parse_args(["--env_name", "Pendulum-v1"])[0] == pendulum
    quick = parse_args(["--env_name", "Pendulum-v1", "--quick", "--num_seeds", "4"])[0]
    assert quick == BenchmarkConfig.quick_preset("Pendulum-v1").with_values({"num_seeds": 4})
    assert quick.in_context.gamma == 0.9 and quick.in_context.total_iterations == 10  # the preset's budget
    assert BenchmarkConfig.quick_preset("CartPole-v1") == BenchmarkConfig.quick_preset()
    path = tmp_path / "pendulum.toml"
    path.write_text('env_name = "Pendulum-v1"\n[in_context]\ngamma = 0.95\n')
    from_file = parse_args(["--config", str(path)])[0]
    assert from_file == pendulum.with_values({"in_context.gamma": 0.95})
    assert parse_args(["--config", str(path), "--env_name", "CartPole-v1"])[0] == \
        base.with_values({"in_context.gamma": 0.95})
    with pytest.raises(ValueError, match=r"env_name must be one of \['CartPole-v1'"):
        base.with_env("MountainCar-v0")


@pytest.mark.parametrize("argv, expected", [
    (["--env_name", "MountainCar-v0"], "['CartPole-v1', 'Acrobot-v1', 'Pendulum-v1']"),
    (["--env_name", "Pendulum-v1", "--suite", "goal"], "Pendulum-v1 runs the suites ['standard']"),
    (["--env_name", "Acrobot-v1", "--suite", "all"], "Acrobot-v1 runs the suites ['standard']"),
])
def test_unsupported_env_or_suite_is_a_usage_error(argv, expected, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cartpole.main(argv + ["--out", str(tmp_path / "run")])
    assert exc.value.code == 2
    assert expected in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "run")


def test_suites_on_other_envs():
    for env_name in ENVS:
        suite = envs.get_suite("standard", env_name)
        assert suite is envs.get_suite("standard", env_name)  # cached: jit caches are shared
        assert suite.env_name == env_name and suite.env() is envs.make(env_name)[0]
        a = suite.sample(jax.random.key(0), 4, "test")
        b = envs.EnvTasks(env_name).sample(jax.random.key(0), 4, "test")
        assert jax.tree.all(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b))
    assert envs.get_suite("goal") is envs.get_suite("goal", "CartPole-v1") is envs.SUITES["goal"]
    with pytest.raises(ValueError, match=r"suite must be one of \['standard'\], got 'partial'"):
        envs.get_suite("partial", "Acrobot-v1")
    with pytest.raises(ValueError, match="CartPole-v1 tasks only"):
        envs.Suite("x", "", tasks=envs.EnvTasks("Pendulum-v1"), switch_steps=(10, 20))


@pytest.mark.slow
def test_within_episode_on_pendulum():
    """test_time_within_episode's evaluator with a Gaussian MAML policy (MLP, untrained): every
    env's episode takes its 200 / 50 - 1 = 3 guarded updates and its return is in bounds."""
    config = BenchmarkConfig.quick_preset().with_values({"env_name": "Pendulum-v1", "policy.hidden_dim": 8})
    trainer = build_trainer("maml_mlp", config)
    state = trainer.init(jax.random.key(0))
    tasks = ev.test_tasks(jax.random.key(1), 2, envs.get_suite("standard", "Pendulum-v1"))
    out = ev.evaluate_within_episode(jax.random.key(2), trainer.algo, state, tasks, num_envs=1,
                                     chunk_steps=50, episode_steps=config.episode_steps)
    lo, hi = RETURN_BOUNDS["Pendulum-v1"]
    assert np.all((lo <= np.asarray(out["return"])) & (np.asarray(out["return"]) <= hi))
    np.testing.assert_array_equal(np.asarray(out["updates"]) + np.asarray(out["rollbacks"]), 3.0)
