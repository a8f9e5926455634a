"""`python -m benchmarks.cartpole`: CLI validation, statistics, the pipeline end to end
(results.json schema, returns in [0, 500], plots), eval-only and resume through the CLI."""

import json
import math
import os
import shutil
import statistics
import subprocess
import sys

import jax
import numpy as np
import pytest

from benchmarks import cartpole
from benchmarks.checkpointing import Checkpointer
from benchmarks.cli import RunOptions, parse_args
from benchmarks.config import METHODS, BenchmarkConfig
from benchmarks.rundir import RunDirError
from benchmarks.stats import mean_ci95, paired_difference, seed_t_interval, summarize

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
    (["--env_name", "Pendulum-v1"], "--env_name must be one of"),
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
    assert (config.num_epochs, config.first_order, config.inner_lr, opts.out) == (7, False, 0.05, "x")
    assert config.methods == METHODS
    config, _ = parse_args(["--mode", "policy_gradient", "--num_episodes", "12"])
    assert config.methods == ("non_adaptive",) and config.ppo_iterations == 12
    # maml_adapted is measured after num_inner_steps, and 0..max(3, num_inner_steps) are reported
    config, _ = parse_args(["--num_inner_steps", "5"])
    assert config.reported_inner_steps == 5
    assert parse_args(["--num_inner_steps", "1"])[0].reported_inner_steps == 3
    quick, _ = parse_args(["--quick"])
    assert quick.quick and quick.num_epochs < BenchmarkConfig().num_epochs
    assert BenchmarkConfig().eval_tasks >= 256 and BenchmarkConfig().num_seeds >= 3
    assert BenchmarkConfig.from_dict(BenchmarkConfig().to_dict()) == BenchmarkConfig()
    # a config.json saved before a field existed loads with the value that run trained with
    old_run = {k: v for k, v in BenchmarkConfig().to_dict().items()
               if k not in ("in_context_layers", "maml_baseline", "maml_gae_lambda")}
    legacy = BenchmarkConfig.from_dict(old_run)
    assert (legacy.in_context_layers, legacy.maml_baseline, legacy.maml_gae_lambda) == (1, "value", 0.95)
    with pytest.raises(Exception):
        BenchmarkConfig().num_epochs = 3  # frozen


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


def _check_results(out, methods):
    with open(os.path.join(out, "results.json")) as f:
        res = json.load(f)
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
    with pytest.raises(RunDirError, match="would overwrite the training run"):
        cartpole.run(BenchmarkConfig.from_dict(res["config"]),
                     RunOptions(out=out, resume=None, eval_only=True, checkpoint=out, overwrite=True))
    eval_out = str(tmp_path / "eval")
    # missing / corrupted checkpoint directories: a clear error, exit status 1
    shutil.rmtree(os.path.join(out, "checkpoints", "non_adaptive"))
    capsys.readouterr()
    assert cartpole.main(["--eval_only", "--checkpoint", out, "--out", eval_out]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_resume_after_losing_the_last_checkpoint_equals_uninterrupted(tmp_path):
    out = str(tmp_path / "run")
    assert cartpole.main(TINY_PG + ["--out", out]) == 0
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


def _restore_raw(ckdir, step):
    """The saved state of the non_adaptive model with its real structure (a fresh init)."""
    config = BenchmarkConfig.quick_preset(mode="policy_gradient", methods=("non_adaptive",),
                                          ppo_iterations=4, num_seeds=2)
    model = cartpole.Model("non_adaptive", config)
    return jax.jit(jax.vmap(model.init))(jax.random.split(jax.random.key(0), 2))


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path):
    out = str(tmp_path / "quick")
    assert cartpole.main(["--quick", "--out", out]) == 0
    res = _check_results(out, METHODS)
    assert len(res["methods"]["maml_adapted"]["return_by_inner_step"]) == 4  # 0, 1, 2, 3 steps
    assert "first_episode" in res["methods"]["in_context"]
    assert set(res["methods"]["maml_adapted"]["vs_non_adaptive"]) == {"all", "normal", "inverted"}
