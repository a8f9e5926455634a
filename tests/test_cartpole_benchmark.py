"""`python -m benchmarks.cartpole`: CLI validation, statistics, the pipeline end to end
(results.json schema, returns in [0, 500], plots), eval-only and resume through the CLI."""

import dataclasses
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading

import chex
import jax
import numpy as np
import pytest

import envs
from benchmarks import cartpole, compile_time
from benchmarks import evaluation as ev
from benchmarks import methods as registry
from benchmarks.checkpointing import Checkpointer
from benchmarks.cli import FLAG_PATHS, RunOptions, build_parser, parse_args
from benchmarks.config import FLAT_PATHS, METHODS, STANDARD_METHODS, BenchmarkConfig, EvaluationConfig
from maml.ppo import PPOConfig
from benchmarks.results import method_results, print_table
from benchmarks.rundir import RunDirError
from benchmarks.stats import mean_ci95, paired_difference, seed_t_interval, summarize
from benchmarks.trainers import build_trainer
from maml.rl import MAMLRLConfig
from ssm_jax import MLPPolicy, SSMPolicy

#: config.json of the default run in the flat form (one level of prefixed fields).
OLD_FLAT_DEFAULT = {
    "mode": "meta_rl", "env_name": "CartPole-v1",
    "methods": ["non_adaptive", "in_context", "maml_zero_shot", "maml_adapted", "test_time_adapted",
                "maml_adapted_mlp"],
    "num_epochs": 300, "tasks_per_epoch": 8, "inner_lr": 0.1, "outer_lr": 0.003, "num_inner_steps": 3,
    "first_order": True, "anneal_outer_lr": True, "maml_envs": 8, "maml_support_steps": 200,
    "maml_query_steps": 500, "maml_baseline": "linear", "maml_gae_lambda": 1.0, "ppo_iterations": 750,
    "ppo_tasks": 8, "ppo_envs": 4, "ppo_lr": 0.001, "ppo_entropy_coef": 0.0, "in_context_iterations": 150,
    "in_context_tasks": 16, "in_context_envs": 2, "in_context_steps": 1000, "in_context_lr": 0.001,
    "in_context_entropy_coef": 0.01, "in_context_core": "ssm", "in_context_state_dim": 16,
    "in_context_hidden_dim": 64, "in_context_layers": 2, "state_dim": 16, "hidden_dim": 64,
    "tta_lr": 0.01, "tta_rounds": 4, "eval_tasks": 256, "eval_envs": 2, "eval_inner_steps": 3, "seed": 0,
    "num_seeds": 3, "chunk_size": 10, "checkpoint_every": 50, "quick": False,
}
#: config.json of a --quick run in the flat form.
OLD_FLAT_QUICK = {
    **OLD_FLAT_DEFAULT,
    "num_epochs": 20, "tasks_per_epoch": 4, "maml_envs": 4, "maml_support_steps": 100,
    "maml_query_steps": 100, "ppo_iterations": 10, "ppo_tasks": 4, "ppo_envs": 2,
    "in_context_iterations": 10, "in_context_tasks": 4, "in_context_envs": 2, "in_context_steps": 200,
    "in_context_hidden_dim": 32, "in_context_layers": 1, "hidden_dim": 32, "tta_rounds": 2,
    "eval_tasks": 32, "eval_envs": 1, "num_seeds": 2, "chunk_size": 5, "checkpoint_every": 10,
    "quick": True,
}

TINY_PG = ["--quick", "--mode", "policy_gradient", "--ppo_iterations", "4", "--chunk_size", "2",
           "--checkpoint_every", "2", "--eval_tasks", "6", "--num_seeds", "2"]


@pytest.fixture(autouse=True)
def _in_a_temporary_directory(tmp_path, monkeypatch):
    """Relative --out paths (and the default results/cartpole) resolve inside tmp_path, so the
    tests neither see nor touch runs in the working directory."""
    monkeypatch.chdir(tmp_path)


def _error_of(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--num_epochs", "0"], "--num_epochs must be a positive int"),
    (["--inner_lr", "-0.1"], "--inner_lr must be >= 0"),
    (["--outer_lr", "0"], "--outer_lr must be > 0"),
    (["--outer_lr", "nan"], "--outer_lr must be finite"),
    (["--num_inner_steps", "0"], "--num_inner_steps must be a positive int"),
    (["--num_seeds", "-2"], "--num_seeds must be a positive int"),
    (["--env_name", "MountainCar-v0"], "--env_name must be one of"),  # Pendulum-v1 is supported now
    (["--mode", "supervised"], "invalid choice"),
    (["--tasks_per_epoch", "two"], "invalid int value"),
    (["--methods", "maml_adapted,magic"], "--methods must be a non-empty subset"),
    (["--mode", "policy_gradient", "--methods", "in_context"], "runs only ['non_adaptive']"),
    (["--eval_only"], "--eval_only needs --checkpoint"),
    (["--checkpoint", "x"], "--checkpoint is only used with --eval_only"),
    (["--resume", "/nonexistent/run"], "does not exist"),
    (["--first_order", "--second_order"], "not allowed with argument"),
    (["--mode", "policy_gradient", "--inner_lr", "0.1"], "--inner_lr has no effect: this run trains no maml model"),
    (["--methods", "non_adaptive", "--in_context_iterations", "5"], "--in_context_iterations has no effect"),
    (["--methods", "maml_adapted", "--num_episodes", "5"], "--num_episodes has no effect"),
    (["--quick", "--eval_only", "--checkpoint", "x"], "--quick sets training budgets"),
])
def test_cli_rejects_bad_flags_with_a_clear_message(argv, message, capsys):
    assert message in _error_of(argv, capsys)


def test_cli_protects_existing_runs_and_output_paths(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(BenchmarkConfig().to_dict()))
    assert "already holds a run" in _error_of(["--out", str(run)], capsys)
    _, opts = parse_args(["--out", str(run), "--overwrite"])
    assert opts.overwrite and opts.out == str(run)
    # --overwrite replaces benchmark runs only, never another program's config.json
    other = tmp_path / "project"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"learning_rate": 3}))
    assert "not a benchmark run's; refusing to replace it" in _error_of(
        ["--out", str(other), "--overwrite"], capsys)
    # resume writes into the run it continues; eval-only writes beside it, never over it
    _, opts = parse_args(["--resume", str(run)])
    assert opts.out == str(run) and opts.resume == str(run)
    assert "drop --out" in _error_of(["--resume", str(run), "--out", str(tmp_path / "elsewhere")], capsys)
    _, opts = parse_args(["--eval_only", "--checkpoint", str(run)])
    assert opts.out == str(run / "eval") and opts.checkpoint == str(run)
    assert "would overwrite the training run" in _error_of(
        ["--eval_only", "--checkpoint", str(run), "--out", str(run)], capsys)
    afile = tmp_path / "file"
    afile.write_text("x")
    assert "exists and is not a directory" in _error_of(["--out", str(afile)], capsys)
    assert "cannot be created" in _error_of(["--out", str(afile / "sub")], capsys)


def test_cli_builds_validated_configs():
    config, opts = parse_args(["--num_epochs", "7", "--second_order", "--inner_lr", "0.05", "--out", "x"])
    assert (config.maml.num_meta_updates, config.maml.rl.first_order, config.maml.rl.inner_lr,
            opts.out) == (7, False, 0.05, "x")
    assert config.maml.algorithm_config.outer_lr_decay_steps == 7  # annealed over the 7 updates
    assert config.methods == STANDARD_METHODS and set(STANDARD_METHODS) < set(METHODS)
    config, _ = parse_args(["--mode", "policy_gradient", "--num_episodes", "12"])
    assert config.methods == ("non_adaptive",) and config.non_adaptive.total_iterations == 12
    # maml_adapted is measured after num_inner_steps, and 0..max(3, num_inner_steps) are reported
    config, _ = parse_args(["--num_inner_steps", "5"])
    assert config.reported_inner_steps == 5
    assert parse_args(["--num_inner_steps", "1"])[0].reported_inner_steps == 3
    quick, _ = parse_args(["--quick"])
    assert quick.quick and quick.maml.num_meta_updates < BenchmarkConfig().maml.num_meta_updates
    assert quick == BenchmarkConfig.quick_preset()
    assert BenchmarkConfig().evaluation.num_tasks >= 256 and BenchmarkConfig().num_seeds >= 3
    assert BenchmarkConfig.from_dict(BenchmarkConfig().to_dict()) == BenchmarkConfig()
    assert BenchmarkConfig.from_dict(json.loads(json.dumps(quick.to_dict()))) == quick
    # a flat config.json saved before a field existed loads with the value that run trained with
    old_run = {k: v for k, v in OLD_FLAT_DEFAULT.items()
               if k not in ("in_context_layers", "maml_baseline", "maml_gae_lambda")}
    legacy = BenchmarkConfig.from_dict(old_run)
    assert (legacy.in_context_policy.num_layers, legacy.maml.rl.baseline,
            legacy.maml.rl.gae_lambda) == (1, "value", 0.95)
    # a nested config stored before the RL^2 policy scanned in chunks: it scanned step by step
    nested = BenchmarkConfig().to_dict()
    del nested["in_context_policy"]["scan_chunk"]
    assert BenchmarkConfig.from_dict(nested).in_context_policy.scan_chunk == 1
    assert BenchmarkConfig().in_context_policy.scan_chunk == 32
    assert legacy.in_context_policy.scan_chunk == 1
    # a config stored before non_adaptive_ssm existed: that section as a run of its kind has it today
    for run in (quick, BenchmarkConfig()):
        stored = {k: v for k, v in run.to_dict().items() if k != "non_adaptive_ssm"}
        assert BenchmarkConfig.from_dict(stored) == run
    assert quick.non_adaptive_ssm != BenchmarkConfig().non_adaptive_ssm
    with pytest.raises(Exception):
        BenchmarkConfig().seed = 3  # frozen
    with pytest.raises(Exception):
        BenchmarkConfig().maml.num_meta_updates = 3  # frozen sections


# flat (old) runs scanned the RL^2 policy step by step and told their goal oracle x* alone; an old
# --quick run compiled optimised
@pytest.mark.parametrize("flat, nested", [(OLD_FLAT_DEFAULT, BenchmarkConfig().with_values(
                                              {"in_context_policy.scan_chunk": 1,
                                               "goal_oracle_direction": False})),
                                          (OLD_FLAT_QUICK, BenchmarkConfig.quick_preset().with_values(
                                              {"fast_compile": False, "in_context_policy.scan_chunk": 1,
                                               "goal_oracle_direction": False}))])
def test_a_flat_config_json_migrates_to_the_nested_config_with_its_values(flat, nested):
    config = BenchmarkConfig.from_dict(json.loads(json.dumps(flat)))
    assert config == nested
    c = flat  # the library configs are the ones the flat fields were copied into by hand
    assert config.maml.algorithm_config == MAMLRLConfig(
        inner_lr=c["inner_lr"], outer_lr=c["outer_lr"], num_inner_steps=c["num_inner_steps"],
        outer_lr_decay_steps=c["num_epochs"] if c["anneal_outer_lr"] else None,
        first_order=c["first_order"], support_envs=c["maml_envs"], support_steps=c["maml_support_steps"],
        query_envs=c["maml_envs"], query_steps=c["maml_query_steps"], baseline=c["maml_baseline"],
        gae_lambda=c["maml_gae_lambda"])
    assert (config.maml.num_meta_updates, config.maml.tasks_per_update) == (c["num_epochs"], c["tasks_per_epoch"])
    assert config.non_adaptive == PPOConfig(
        num_tasks=c["ppo_tasks"], num_envs=c["ppo_envs"], num_steps=500, lr=c["ppo_lr"],
        entropy_coef=c["ppo_entropy_coef"], total_iterations=c["ppo_iterations"])
    assert config.in_context == PPOConfig(
        num_tasks=c["in_context_tasks"], num_envs=c["in_context_envs"], num_steps=c["in_context_steps"],
        lr=c["in_context_lr"], entropy_coef=c["in_context_entropy_coef"],
        total_iterations=c["in_context_iterations"], carry_across_episodes=True)
    assert config.in_context_policy.build(8, 2) == SSMPolicy(
        obs_dim=8, action_dim=2, core=c["in_context_core"], state_dim=c["in_context_state_dim"],
        hidden_dim=c["in_context_hidden_dim"], num_layers=c["in_context_layers"], chunk_size=1)  # stored before chunks
    assert config.policy.ssm(4, 2) == SSMPolicy(obs_dim=4, action_dim=2, core="ssm", state_dim=c["state_dim"],
                                                hidden_dim=c["hidden_dim"])
    assert config.policy.mlp(4, 2) == MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=c["hidden_dim"])
    assert config.evaluation == EvaluationConfig(num_tasks=c["eval_tasks"], num_envs=c["eval_envs"],
                                                 inner_steps=c["eval_inner_steps"], test_time_rounds=c["tta_rounds"])
    for name in ("mode", "env_name", "seed", "num_seeds", "chunk_size", "checkpoint_every", "quick"):
        assert getattr(config, name) == c[name]
    assert config.methods == tuple(c["methods"])
    # what is stored is the nested form: no flat field is left, and tta_lr (it had no effect) is gone
    stored = config.to_dict()
    assert not set(stored) & set(FLAT_PATHS) and "tta_lr" not in json.dumps(stored)
    assert BenchmarkConfig.from_dict(stored) == config


def test_config_errors_name_the_field_path_and_every_flag_sets_a_field():
    with pytest.raises(ValueError, match=r"^maml\.rl\.inner_lr must be >= 0"):
        BenchmarkConfig().with_values({"maml.rl.inner_lr": -1.0})
    with pytest.raises(ValueError, match=r"^in_context_policy\.core must be one of"):
        BenchmarkConfig.from_dict({"in_context_policy": {"core": "lstm"}})
    with pytest.raises(ValueError, match=r"^in_context_policy\.scan_chunk must be a positive int"):
        BenchmarkConfig.from_dict({"in_context_policy": {"scan_chunk": 0}})
    # the chunked evaluation is the "ssm" core's; another core builds with step-by-step scans
    diagonal = BenchmarkConfig().with_values({"in_context_policy.core": "diagonal"})
    assert diagonal.in_context_policy.build(8, 2).chunk_size == 1
    with pytest.raises(ValueError, match=r"^non_adaptive\.num_minibatches \(4\) must divide"):
        BenchmarkConfig().with_values({"non_adaptive.num_tasks": 3, "non_adaptive.num_envs": 3})
    with pytest.raises(ValueError, match="unknown field 'maml.rl.inner_rate'"):
        BenchmarkConfig.from_dict({"maml": {"rl": {"inner_rate": 0.1}}})
    with pytest.raises(ValueError, match="rl.outer_lr_decay_steps must be None"):
        BenchmarkConfig().with_values({"maml.rl.outer_lr_decay_steps": 10})
    help_text = build_parser().format_help()
    for flag, path in FLAG_PATHS.items():
        BenchmarkConfig().get(path)  # an existing field
        assert f"--{flag}" in help_text


def _series_of(rng, n, config):
    """Fake per-task series of every evaluator, (n, ...)."""
    return {"return": rng.uniform(0, 500, n), "after_context": rng.uniform(0, 500, n),
            "updates": rng.uniform(0, 9, n), "rollbacks": rng.uniform(0, 1, n),
            "first_episode": rng.uniform(0, 500, n),
            "by_inner_step": rng.uniform(0, 500, (n, config.reported_inner_steps + 1)),
            "by_round": rng.uniform(0, 500, (n, config.evaluation.test_time_rounds))}


def test_the_registry_evaluates_every_method_once_per_seed_on_the_same_tasks(capsys):
    """measure() calls each (evaluator, trainer) once per seed with that seed's test tasks and
    key, shares one computation between methods (maml_zero_shot / maml_adapted), counts its env
    steps once, and each method's returns are its entry's view of the shared series."""
    # the goal suite: the one where every method, goal_oracle included, exists
    config = BenchmarkConfig.quick_preset().with_values({"evaluation.num_tasks": 5, "num_seeds": 3, "seed": 7,
                                                         "methods": METHODS, "suite": "goal"})
    calls = []
    rng = np.random.default_rng(0)

    def spy(evaluator):
        def evaluate(key, tasks, trainer, state, cfg):
            assert cfg is config
            calls.append({"evaluator": evaluator, "trainer": trainer, "key": key, "tasks": tasks,
                          "state": state})
            n = jax.tree.leaves(tasks)[0].shape[0]
            calls[-1]["out"] = registry.Evaluation(_series_of(rng, n, config), env_steps=1000 + len(calls))
            return calls[-1]["out"]
        return evaluate

    spies = {m.evaluator: spy(m.evaluator) for m in registry.REGISTRY}
    entries = {m.name: dataclasses.replace(m, evaluator=spies[m.evaluator]) for m in registry.REGISTRY}
    names = registry.trainer_names(config.methods)
    assert names == ("non_adaptive", "non_adaptive_ssm", "in_context", "maml_ssm", "maml_mlp", "goal_oracle")
    trainers = {t: build_trainer(t, config) for t in names}
    states = {t: {"w": np.arange(3) + 10 * i} for i, t in enumerate(names)}
    m = registry.measure(config, trainers, states, registry=entries)

    computations = {(e.evaluator, e.trainer) for e in registry.REGISTRY}
    per_seed = len(computations)
    assert per_seed == 9 and len(calls) == per_seed * 3
    for s in range(3):
        seed_calls = calls[per_seed * s: per_seed * (s + 1)]
        assert {(c["evaluator"], c["trainer"].name) for c in seed_calls} == computations
        key = ev.eval_key(config.seed, s)
        tasks = ev.test_tasks(key, 5, envs.SUITES["goal"])
        for c in seed_calls:
            chex.assert_trees_all_equal(c["tasks"], tasks)
            np.testing.assert_array_equal(jax.random.key_data(c["key"]), jax.random.key_data(key))
            assert c["state"]["w"] == states[c["trainer"].name]["w"][s]
        np.testing.assert_array_equal(m.kinds[s], np.asarray(ev.task_kinds(tasks)))
    assert not np.array_equal(calls[0]["tasks"].gravity, calls[per_seed]["tasks"].gravity)
    assert m.env_steps == sum(c["out"].env_steps for c in calls)

    by_step = np.stack([c["out"].series["by_inner_step"] for c in calls
                        if c["evaluator"] is registry.evaluate_maml_inner_steps
                        and c["trainer"].name == "maml_ssm"])  # (seeds, tasks, K + 1)
    k = config.maml.rl.num_inner_steps
    np.testing.assert_array_equal(m.returns["maml_zero_shot"], by_step[..., 0])
    np.testing.assert_array_equal(m.returns["maml_adapted"], by_step[..., k])

    def stacked(evaluator, trainer, name):
        return np.stack([c["out"].series[name] for c in calls
                         if c["evaluator"] is evaluator and c["trainer"].name == trainer])

    # every other method's returns are the documented view of its own evaluator's series
    np.testing.assert_array_equal(m.returns["maml_adapted_mlp"], stacked(
        registry.evaluate_maml_inner_steps, "maml_mlp", "by_inner_step")[..., k])
    np.testing.assert_array_equal(m.returns["test_time_adapted"], stacked(
        registry.evaluate_test_time, "maml_ssm", "by_round")[..., -1])
    np.testing.assert_array_equal(m.returns["test_time_hybrid"], stacked(
        registry.evaluate_test_time_hybrid, "maml_ssm", "by_round")[..., -1])
    np.testing.assert_array_equal(m.returns["test_time_within_episode"], stacked(
        registry.evaluate_within_episode, "maml_ssm", "return"))
    np.testing.assert_array_equal(m.returns["in_context"], stacked(
        registry.evaluate_in_context, "in_context", "after_context"))
    np.testing.assert_array_equal(m.returns["non_adaptive"], stacked(
        registry.evaluate_fixed_policy, "non_adaptive", "return"))
    np.testing.assert_array_equal(m.returns["non_adaptive_ssm"], stacked(
        registry.evaluate_fixed_policy, "non_adaptive_ssm", "return"))
    np.testing.assert_array_equal(m.returns["goal_oracle"], stacked(
        registry.evaluate_fixed_policy, "goal_oracle", "return"))
    results = method_results(config, trainers, m, registry=entries)
    assert list(results) == list(config.methods)
    assert results["maml_adapted"]["num_inner_steps"] == k and results["maml_zero_shot"]["num_inner_steps"] == 0
    assert results["maml_adapted"]["return_by_inner_step"][k] == pytest.approx(results["maml_adapted"]["return_mean"])
    for name, entry in results.items():
        assert entry["trained_model"] == entries[name].trainer
        assert ("vs_non_adaptive" in entry) == (name != "non_adaptive")
    assert results["in_context"]["vs_non_adaptive"]["all"]["mean"] == pytest.approx(
        float(np.mean(m.returns["in_context"] - m.returns["non_adaptive"])))
    print_table(results, registry=entries)
    printed = capsys.readouterr().out
    assert all(name in printed for name in config.methods) and "by adaptation round" in printed


class _CountingCartPole(type(envs.make("CartPole-v1")[0])):
    """CartPole that counts the environment steps it runs (a host callback in every step)."""

    steps = [0]
    # XLA may run the callbacks of one program on several threads at once: `+=` on the shared
    # counter is a read-modify-write, so it is done under a lock (or counts get lost)
    lock = threading.Lock()

    def step_env(self, key, state, action, params):
        jax.debug.callback(_CountingCartPole._count, state.time)
        return super().step_env(key, state, action, params)

    @staticmethod
    def _count(time):
        with _CountingCartPole.lock:
            _CountingCartPole.steps[0] += int(np.size(time))  # one per env (a batch under vmap)


@pytest.mark.slow
def test_every_evaluator_reports_the_env_steps_it_ran():
    config = BenchmarkConfig.quick_preset().with_values({
        "policy.hidden_dim": 8, "in_context_policy.hidden_dim": 8, "in_context_policy.state_dim": 4,
        "maml.rl.num_inner_steps": 1, "maml.rl.support_envs": 3, "maml.rl.support_steps": 30,
        "evaluation.inner_steps": 2, "evaluation.num_envs": 2, "evaluation.test_time_rounds": 2})
    env = _CountingCartPole()
    cases = {registry.evaluate_fixed_policy: "non_adaptive", registry.evaluate_in_context: "in_context",
             registry.evaluate_maml_inner_steps: "maml_mlp", registry.evaluate_test_time: "maml_mlp",
             registry.evaluate_test_time_hybrid: "maml_mlp", registry.evaluate_within_episode: "maml_mlp"}
    assert {m.evaluator for m in registry.REGISTRY} == set(cases)
    key = ev.eval_key(0, 0)
    tasks = ev.test_tasks(key, 3)
    with compile_time.fast_compile(config.fast_compile):  # as a --quick run compiles them
        for evaluator, name in cases.items():
            trainer = build_trainer(name, config, env=env)
            state = trainer.init(jax.random.key(1))
            before = _CountingCartPole.steps[0]
            evaluation = evaluator(key, tasks, trainer, state, config)
            jax.effects_barrier()
            assert evaluation.env_steps == _CountingCartPole.steps[0] - before > 0, evaluator.__name__


def test_histories_and_run_metadata_in_the_flat_form_are_migrated():
    config = BenchmarkConfig.quick_preset()
    ppo, maml = build_trainer("non_adaptive", config), build_trainer("maml_mlp", config)
    old_ppo = {"return": [1.0, 2.0], "return_per_seed": [[1.0, 1.0], [2.0, 2.0]], "entropy": [0.6, 0.5]}
    new_ppo = {"episode_return": [1.0, 2.0], "episode_return_per_seed": [[1.0, 1.0], [2.0, 2.0]],
               "entropy": [0.6, 0.5]}
    assert ppo.migrate_history(old_ppo) == new_ppo and ppo.migrate_history(new_ppo) == new_ppo
    old_maml = {"return": [3.0], "post_return": [3.0], "pre_return": [1.0], "return_per_seed": [[3.0, 3.0]],
                "return_by_step": [[1.0, 2.0, 3.0]]}
    new_maml = {"post_return": [3.0], "pre_return": [1.0], "post_return_per_seed": [[3.0, 3.0]],
                "return_by_step": [[1.0, 2.0, 3.0]]}
    assert maml.migrate_history(old_maml) == new_maml and maml.migrate_history(new_maml) == new_maml
    # a --quick run stored in the flat form compiled optimised and scanned RL^2 step by step
    current = {"config": config.with_values({"fast_compile": False, "in_context_policy.scan_chunk": 1,
                                             "goal_oracle_direction": False}).to_dict(),
               "model": "maml_mlp"}
    assert cartpole.same_run({"config": OLD_FLAT_QUICK, "model": "maml_mlp"}, current)
    assert not cartpole.same_run({"config": OLD_FLAT_QUICK, "model": "maml_mlp"},
                                 {"config": config.to_dict(), "model": "maml_mlp"})
    assert cartpole.same_run(json.loads(json.dumps(current)), current)
    assert not cartpole.same_run({"config": {**OLD_FLAT_QUICK, "inner_lr": 0.2}, "model": "maml_mlp"}, current)
    assert not cartpole.same_run({"config": OLD_FLAT_QUICK, "model": "maml_ssm"}, current)
    assert not cartpole.same_run({"config": {"learning_rate": 3}, "model": "maml_mlp"}, current)


COMPILE_LISTENER_SCRIPT = """
import jax
from benchmarks import cartpole, compile_time
event = compile_time.COMPILE_EVENTS[0]
jax.monitoring.record_event_duration_secs(event, 1.0)
assert compile_time.compile_seconds() == 0.0, "importing the benchmark installed the listener"
compile_time.install()
compile_time.install()
jax.monitoring.record_event_duration_secs(event, 1.5)
jax.monitoring.record_event_duration_secs("/jax/some/other/event", 4.0)
assert compile_time.compile_seconds() == 1.5, compile_time.compile_seconds()
"""


def test_the_compile_time_listener_is_installed_by_a_run_once_not_on_import():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", COMPILE_LISTENER_SCRIPT], check=True, cwd=root, timeout=300)


def test_seed_t_interval_matches_its_formula_and_covers_the_true_mean():
    rng = np.random.default_rng(3)
    offsets = np.array([[40.0], [0.0], [-25.0]])
    x = np.clip(rng.normal(420, 60, size=(3, 200)) + offsets, 0, 500)
    low, high = seed_t_interval(x)
    seed_means = [statistics.fmean(row) for row in x.tolist()]
    half = 4.302652729911275 * statistics.stdev(seed_means) / math.sqrt(3)  # t(0.975, 2)
    assert math.isclose(low, statistics.fmean(seed_means) - half)
    assert math.isclose(high, statistics.fmean(seed_means) + half)
    # seeds that disagree widen the interval far beyond the all-tasks-independent formula
    s = summarize(x, np.zeros_like(x, bool))
    assert s["return_ci95"] > 4 * s["task_ci95"]
    assert s["return_ci95_low"] < x.mean() < s["return_ci95_high"]
    # one seed: no seed-level interval
    assert all(math.isnan(v) for v in seed_t_interval(x[:1]))
    # coverage: 3 seeds (seed sd 20) x 64 tasks (task sd 60), 2000 simulated benchmark runs
    runs = 420 + rng.normal(0, 20, size=(2000, 3, 1)) + rng.normal(0, 60, size=(2000, 3, 64))
    covered = [lo < 420 < hi for lo, hi in map(seed_t_interval, runs)]
    assert 0.93 < np.mean(covered) < 0.97


def test_paired_difference_is_the_seed_interval_of_per_task_differences():
    rng = np.random.default_rng(7)
    base = rng.uniform(100, 500, size=(3, 50))
    inv = rng.uniform(size=(3, 50)) < 0.5
    better = base + 20 + rng.normal(0, 2, size=base.shape)   # +20 on every task, little noise
    d = paired_difference(better, base, inv)
    assert d["inverted"]["ci95_low"] > 0 and math.isclose(d["all"]["mean"], float(np.mean(better - base)))
    assert (d["inverted"]["ci95_low"], d["inverted"]["ci95_high"]) == seed_t_interval(better - base, inv)
    # the unpaired intervals of the two methods overlap: task variation hides the +20
    a, b = summarize(better, inv), summarize(base, inv)
    assert a["return_ci95_low"] < b["return_ci95_high"]
    with pytest.raises(ValueError, match="same \\(seeds, tasks\\) shape"):
        paired_difference(better[:2], base, inv)


def test_mean_ci95_matches_the_textbook_formula_and_kinds_split():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 500, size=(3, 40))
    inv = rng.uniform(size=(3, 40)) < 0.5
    mean, ci, n = mean_ci95(x)
    flat = list(x.ravel())
    assert n == 120 and math.isclose(mean, statistics.fmean(flat))
    assert math.isclose(ci, 1.959963984540054 * statistics.stdev(flat) / math.sqrt(120))
    s = summarize(x, inv)
    assert math.isclose(s["return_by_task_kind"]["inverted"]["mean"], statistics.fmean(x[inv].tolist()))
    assert s["return_by_task_kind"]["normal"]["n"] == int((~inv).sum())
    assert np.allclose(s["per_seed_mean"], x.mean(axis=1))
    x[0, 0] = np.nan
    assert summarize(x, inv)["nonfinite"] == 1 and summarize(x, inv)["n"] == 119


def _no_json_constants(name):
    raise AssertionError(f"results.json holds {name}: non-finite numbers must be stored as null")


def _check_results(out, methods):
    with open(os.path.join(out, "results.json")) as f:
        res = json.load(f, parse_constant=_no_json_constants)  # strict JSON: no NaN/Infinity
    assert set(res) >= {"config", "methods", "timing", "versions"}
    assert BenchmarkConfig.from_dict(res["config"]).methods == tuple(methods)
    assert set(res["methods"]) == set(methods)
    for name, m in res["methods"].items():
        for key in ("return_mean", "return_ci95", "return_by_task_kind", "episodes"):
            assert key in m, (name, key)
        assert 0.0 <= m["return_mean"] <= 500.0
        for kind in ("normal", "inverted"):
            assert 0.0 <= m["return_by_task_kind"][kind]["mean"] <= 500.0
            assert m["return_by_task_kind"][kind]["n"] > 0
    t = res["timing"]
    for key in ("wall_s", "compile_s", "env_steps", "env_steps_per_s"):
        assert key in t
    assert t["env_steps"] > 0 and t["wall_s"] > 0
    assert abs(t["compile_s"] - t["train_compile_s"] - t["eval_compile_s"]) < 1e-6
    assert t["compile_s"] < t["wall_s"]
    assert res["versions"]["jax"] == jax.__version__
    for png in ("training_curves.png", "returns_by_task_kind.png"):
        with open(os.path.join(out, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return res


def test_tiny_pipeline_end_to_end_eval_only_and_missing_checkpoint(tmp_path, capsys):
    """policy_gradient mode with tiny budgets: results.json schema, plots, then --eval_only on
    the saved checkpoint reproduces the evaluation exactly; a missing checkpoint dir fails clearly."""
    out = str(tmp_path / "run")
    # --overwrite removes the benchmark's own checkpoint directories, nothing else in checkpoints/
    os.makedirs(os.path.join(out, "checkpoints", "notes"))
    with open(os.path.join(out, "checkpoints", "notes", "keep.txt"), "w") as f:
        f.write("mine")
    with pytest.raises(SystemExit):                        # refused without --overwrite
        cartpole.main(TINY_PG + ["--out", out])
    assert cartpole.main(TINY_PG + ["--out", out, "--overwrite"]) == 0
    assert os.path.exists(os.path.join(out, "checkpoints", "notes", "keep.txt"))
    res = _check_results(out, ["non_adaptive"])
    assert res["methods"]["non_adaptive"]["n"] == 12  # 2 seeds x 6 tasks
    assert Checkpointer(os.path.join(out, "checkpoints", "non_adaptive")).all_steps() == [2, 4]
    assert cartpole.main(["--eval_only", "--checkpoint", out]) == 0   # writes into out/eval
    again = _check_results(os.path.join(out, "eval"), ["non_adaptive"])
    assert again["methods"]["non_adaptive"]["return_mean"] == res["methods"]["non_adaptive"]["return_mean"]
    assert _check_results(out, ["non_adaptive"]) == res   # the training run's results are untouched
    ckdir = os.path.join(out, "checkpoints", "non_adaptive")
    _, meta, _ = Checkpointer(ckdir, create=False).restore(_restore_raw(ckdir, 4))
    assert {"episode_return", "episode_return_per_seed"} <= set(meta["history"]) and "return" not in meta["history"]
    assert len(meta["history"]["episode_return"]) == 4
    # the same run in the flat form (config.json, checkpoint metadata, history key "return")
    # evaluates to the same returns, with its history under today's keys
    flat_run = str(tmp_path / "flat_run")
    shutil.copytree(out, flat_run, ignore=shutil.ignore_patterns("eval"))
    _rewrite_in_the_flat_form(flat_run)
    assert cartpole.main(["--eval_only", "--checkpoint", flat_run, "--out", str(tmp_path / "flat_eval")]) == 0
    assert _check_results(str(tmp_path / "flat_eval"), ["non_adaptive"])["methods"] == again["methods"]
    trainer = build_trainer("non_adaptive", BenchmarkConfig.from_dict(TINY_PG_FLAT))
    _, history = cartpole.load_trained(trainer, os.path.join(flat_run, "checkpoints", "non_adaptive"), 2)
    assert history["episode_return"] == meta["history"]["episode_return"] and "return" not in history
    with pytest.raises(RunDirError, match="would overwrite the training run"):
        cartpole.run(BenchmarkConfig.from_dict(res["config"]),
                     RunOptions(out=out, resume=None, eval_only=True, checkpoint=out, overwrite=True))
    eval_out = str(tmp_path / "eval")
    # missing / corrupted checkpoint directories: a clear error, exit status 1
    shutil.rmtree(os.path.join(out, "checkpoints", "non_adaptive"))
    capsys.readouterr()
    assert cartpole.main(["--eval_only", "--checkpoint", out, "--out", eval_out]) == 1
    assert "does not exist" in capsys.readouterr().err


#: TINY_PG's config in the flat form.
TINY_PG_FLAT = {**OLD_FLAT_QUICK, "mode": "policy_gradient", "methods": ["non_adaptive"], "ppo_iterations": 4,
                "chunk_size": 2, "checkpoint_every": 2, "eval_tasks": 6, "num_seeds": 2}
#: history keys of PPO trainers in the flat form
FLAT_HISTORY_KEYS = {"episode_return": "return", "episode_return_per_seed": "return_per_seed"}


def _rewrite_in_the_flat_form(run_dir):
    """Rewrite a TINY_PG run as the flat form stores it: config.json, and checkpoints whose
    metadata holds the flat config and the history under the key "return" (the flat form has no
    `fast_compile`, `in_context_policy.scan_chunk` or `goal_oracle_direction`: they read back
    False, 1 and False, while the default test run compiles everything fast, scans RL^2 in chunks
    and tells its goal oracle the force direction)."""
    assert BenchmarkConfig.from_dict(TINY_PG_FLAT) == parse_args(TINY_PG)[0].with_values(
        {"fast_compile": False, "in_context_policy.scan_chunk": 1, "goal_oracle_direction": False})
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(TINY_PG_FLAT, f)
    ckdir = os.path.join(run_dir, "checkpoints", "non_adaptive")
    ckpt = Checkpointer(ckdir, create=False)
    saved = []
    for step in ckpt.all_steps():
        state, meta, _ = ckpt.restore(_restore_raw(ckdir, step), step=step)
        history = {FLAT_HISTORY_KEYS.get(k, k): v for k, v in meta["history"].items()}
        saved.append((step, state, {**meta, "run": {"config": TINY_PG_FLAT, "model": "non_adaptive"},
                                    "history": history}))
    ckpt.close()
    shutil.rmtree(ckdir)
    rewritten = Checkpointer(ckdir)
    for step, state, meta in saved:
        rewritten.save(step, state, meta)
    rewritten.close()


@pytest.mark.slow
@pytest.mark.parametrize("form", ["nested", "flat"])
def test_cli_resume_after_losing_the_last_checkpoint_equals_uninterrupted(tmp_path, form):
    """Also for a run stored in the flat form: its stored and current configs compare equal
    once both are migrated, and its history continues under today's keys. The flat form has no
    `fast_compile` (its runs compiled optimised, and it reads back false), so the run rewritten
    into it is trained that way too."""
    out = str(tmp_path / "run")
    optimised = tmp_path / "optimised.toml"
    optimised.write_text("fast_compile = false\n")
    assert cartpole.main(TINY_PG + ["--out", out] + (["--config", str(optimised)] if form == "flat" else [])) == 0
    if form == "flat":
        _rewrite_in_the_flat_form(out)
    ckdir = os.path.join(out, "checkpoints", "non_adaptive")
    with open(os.path.join(out, "results.json")) as f:
        before = json.load(f)["methods"]["non_adaptive"]["return_mean"]
    ckpt = Checkpointer(ckdir, create=False)
    template = jax.tree.map(np.zeros_like, _restore_raw(ckdir, 4))
    final, _, _ = ckpt.restore(template, step=4)
    shutil.rmtree(os.path.join(ckdir, "4"))  # as if killed after the checkpoint at 2
    assert cartpole.main(["--resume", out]) == 0
    resumed, _, step = Checkpointer(ckdir, create=False).restore(template)
    assert step == 4
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with open(os.path.join(out, "results.json")) as f:
        res = json.load(f)
    assert res["timing"]["per_model"]["non_adaptive"]["resumed_from"] == 2
    assert res["methods"]["non_adaptive"]["return_mean"] == before
    _, meta, _ = Checkpointer(ckdir, create=False).restore(template)
    assert len(meta["history"]["episode_return"]) == len(meta["history"]["episode_return_per_seed"]) == 4
    assert "return" not in meta["history"] and meta["run"]["config"] == res["config"]


def _restore_raw(ckdir, step):
    """A state of the non_adaptive trainer with the saved structure (a fresh init)."""
    config = BenchmarkConfig.quick_preset().with_values(
        {"mode": "policy_gradient", "methods": ("non_adaptive",), "non_adaptive.total_iterations": 4,
         "num_seeds": 2})
    trainer = build_trainer("non_adaptive", config)
    return jax.jit(jax.vmap(trainer.init))(jax.random.split(jax.random.key(0), 2))


@pytest.mark.slow
def test_quick_run_end_to_end(quick_run):
    """The shared --quick run (tests/conftest.py; a `python -m benchmarks.cartpole --quick`)."""
    res = _check_results(quick_run.out, STANDARD_METHODS)
    assert res["timing"]["fast_compile"] is True  # compile_time.fast_compile
    assert len(res["methods"]["maml_adapted"]["return_by_inner_step"]) == 4  # 0, 1, 2, 3 steps
    assert "first_episode" in res["methods"]["in_context"]
    assert set(res["methods"]["maml_adapted"]["vs_non_adaptive"]) == {"all", "normal", "inverted"}
