"""What a user does with a finished `benchmarks.cartpole` run: load it (`benchmarks.load_run`),
roll a policy out and animate it (`python -m benchmarks.rollout`), read per_task.csv.

One tiny policy_gradient run is shared by the default tests (session fixture); the run with
every method (MAML adaptation, RL^2, test-time updates) is a slow test on the shared --quick run.
"""

import csv
import json
import math
import os
import shutil

import chex
import jax
import numpy as np
import pytest
from PIL import Image

import envs
from benchmarks import compile_time
from benchmarks import plot as plot_cli
from benchmarks.trainers import build_trainer
from benchmarks import cartpole
from benchmarks import evaluation as ev
from benchmarks import rollout as rollout_cli
from benchmarks import runs
from benchmarks.methods import METHODS_BY_NAME, STANDARD_METHODS, TASK_FIELDS

TINY_PG = ["--quick", "--mode", "policy_gradient", "--ppo_iterations", "4", "--chunk_size", "2",
           "--checkpoint_every", "2", "--eval_tasks", "6", "--num_seeds", "2"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished tiny policy_gradient run (non_adaptive, 2 seeds x 6 test tasks), logged for
    TensorBoard too, with its own compilation cache in the sibling directory jax_cache/."""
    root = tmp_path_factory.mktemp("after_a_run")
    out = str(root / "run")
    assert cartpole.main(TINY_PG + ["--out", out, "--tensorboard", "--compile_cache", str(root / "jax_cache")]) == 0
    return out


def _results(out):
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def _per_task(out):
    with open(os.path.join(out, "per_task.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _check_per_task(out):
    """per_task.csv: one row per (method, seed, task), the test tasks' physics, and per-method
    (and per-kind) means equal to results.json's."""
    res, rows = _results(out), _per_task(out)
    config = cartpole.BenchmarkConfig.from_dict(res["config"])
    s, n = config.num_seeds, config.evaluation.num_tasks
    assert len(rows) == len(config.methods) * s * n
    assert len({(r["method"], r["seed_index"], r["task_index"]) for r in rows}) == len(rows)
    for seed_index in range(s):
        tasks = ev.test_tasks(ev.eval_key(config.seed, seed_index), n)
        for r in rows:
            if int(r["seed_index"]) == seed_index:
                i = int(r["task_index"])
                for f in TASK_FIELDS:
                    assert float(r[f]) == float(np.asarray(getattr(tasks, f))[i]), f
                assert (r["inverted"] == "True") == bool(np.asarray(envs.is_inverted(tasks))[i])
                assert int(r["seed"]) == config.seed + seed_index
    for name, entry in res["methods"].items():
        mine = [r for r in rows if r["method"] == name]
        returns = np.array([float(r["return"]) for r in mine])
        assert math.isclose(np.nanmean(returns), entry["return_mean"], rel_tol=1e-12)
        for kind, flag in (("normal", "False"), ("inverted", "True")):
            part = np.array([float(r["return"]) for r in mine if r["inverted"] == flag])
            assert math.isclose(np.nanmean(part), entry["return_by_task_kind"][kind]["mean"], rel_tol=1e-12)
        steps = METHODS_BY_NAME[name].adaptation_unit
        after = sorted(k for k in mine[0] if k.startswith("return_after_") and mine[0][k] != "")
        if "return_by_inner_step" in entry:  # every step's mean is results.json's
            assert len(after) == len(entry["return_by_inner_step"]) and steps == "inner step"
            for k, expected in enumerate(entry["return_by_inner_step"]):
                got = np.nanmean([float(r[f"return_after_{k}"]) for r in mine])
                assert math.isclose(got, expected, rel_tol=1e-12)
        if "return_by_round" in entry:
            assert len(after) == len(entry["return_by_round"])
    return config, rows


def _check_load_run_reproduces(out, config, rows):
    """Every loaded policy, evaluated on the run's test tasks and keys, gives per_task.csv's
    per-task returns exactly."""
    run = runs.load_run(out)
    assert run.config == config and set(run.policies) == set(config.methods)
    for name, p in run.policies.items():
        for s in range(config.num_seeds):
            series = p.evaluate(s).series
            returns = p.method.returns({k: v[None] for k, v in series.items()}, config)[0]
            stored = [float(r["return"]) for r in rows if r["method"] == name and int(r["seed_index"]) == s]
            np.testing.assert_array_equal(returns.astype(np.float64), np.array(stored))
    return run


def _check_gif(out, method, tmp_path, extra=()):
    """The rollout command writes a GIF with one frame per episode step (and ceil(T / stride)
    frames with --stride); the episode length matches an independent rollout of the params."""
    gif = str(tmp_path / f"{method}.gif")
    argv = ["--run", out, "--method", method, "--gif", gif, "--key", "3", *extra]
    assert rollout_cli.main(argv) == 0
    run = runs.load_run(out, methods=[method])
    p = run.policies[method]
    task = runs.make_task(length=0.9, masspole=0.2, inverted=True) if "--inverted" in extra else runs.sample_task(5)
    episode = runs.rollout_episode(p, 0, task, jax.random.key(3))
    with Image.open(gif) as img:
        assert img.format == "GIF" and img.n_frames == episode.length
    assert episode.total == episode.length  # CartPole: +1 per step
    assert rollout_cli.main(argv[:-len(extra) or None] + list(extra) + ["--stride", "4", "--gif", gif]) == 0
    with Image.open(gif) as img:
        assert img.n_frames == math.ceil(episode.length / 4)
    return episode


def test_per_task_csv_and_load_run_reproduce_the_run(tiny_run):
    config, rows = _check_per_task(tiny_run)
    run = _check_load_run_reproduces(tiny_run, config, rows)
    assert {"episode_return", "episode_return_per_seed"} <= set(run.histories["non_adaptive"])
    p = run.policies["non_adaptive"]
    params, before = p.adapt(0, run.test_task(0, 0), jax.random.key(0))
    assert before.shape == (0,)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p.params(0))):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="num_steps must be 0"):
        p.adapt(0, run.test_task(0, 0), jax.random.key(0), num_steps=2)
    with pytest.raises(ValueError, match="seed_index must be < 2"):
        p.params(2)
    with pytest.raises(ValueError, match="method must be one of"):
        runs.load_run(tiny_run, methods=["maml_adapted"])


def test_the_run_wrote_its_programs_to_its_compile_cache_and_recorded_it(tiny_run):
    """`--compile_cache DIR`: the run's compilations (its training chunk and init are fresh
    functions, so they compile whatever ran before in this process) are written to DIR, one
    entry per write results.json counts."""
    timing = _results(tiny_run)["timing"]
    cache = os.path.join(os.path.dirname(tiny_run), "jax_cache")
    assert timing["compile_cache"] == cache
    entries = [n for n in os.listdir(cache) if n.endswith("-cache")]
    assert timing["compile_cache_writes"] == len(entries) >= 2
    assert any(n.startswith("jit_run_chunk-") for n in entries)


def test_rollout_writes_an_animation_with_one_frame_per_step(tiny_run, tmp_path):
    episode = _check_gif(tiny_run, "non_adaptive", tmp_path, extra=("--length", "0.9", "--masspole", "0.2", "--inverted"))
    assert episode.task["inverted"] and episode.task["length"] == pytest.approx(0.9)
    k_roll = jax.random.split(jax.random.key(3))[1]  # rollout_episode's rollout key
    run = runs.load_run(tiny_run)
    p = run.policies["non_adaptive"]
    traj = envs.rollout(k_roll, p.policy, p.params(0), runs.make_task(length=0.9, masspole=0.2, inverted=True),
                        num_envs=1, num_steps=500)
    dones = np.asarray(traj.dones[0])
    assert episode.length == (int(np.argmax(dones)) + 1 if dones.any() else 500)
    np.testing.assert_array_equal(episode.states, np.asarray(traj.obs[0, :episode.length], np.float64))


def test_rollout_refuses_bad_input_naming_it(tiny_run, tmp_path, capsys):
    gif = str(tmp_path / "x.gif")
    for argv, message in (
            (["--length", "-1"], "length must be"),
            (["--sample_task", "1", "--length", "0.6"], "choose the task one way"),
            (["--seed_index", "5"], "seed_index must be < 2"),
            (["--method", "maml_adapted"], "method must be one of"),
            (["--compile_cache", " "], "--compile_cache must be a directory or 'none'")):
        base = ["--run", tiny_run, "--gif", gif] + (["--method", "non_adaptive"] if "--method" not in argv else [])
        with pytest.raises(SystemExit) as exc:
            rollout_cli.main(base + argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not os.path.exists(gif)


def test_rollout_prints_the_returns_measured_while_adapting():
    assert rollout_cli.returns_text(np.array([22.4, 25.0, 55.6, np.nan], np.float32)) == "22, 25, 56, no episode ended"
    assert rollout_cli.returns_text([-np.inf]) == "-inf"  # a blown-up return is shown, not hidden
    assert rollout_cli.returns_text(np.zeros((0,))) == ""


def test_rollout_reads_its_programs_back_from_the_compilation_cache(tiny_run, tmp_path):
    """`--compile_cache DIR`: the first GIF writes its programs to DIR; the same command again,
    with JAX's in-memory programs dropped, reads every one back (hits, no writes) and draws the
    same GIF; `--compile_cache none` neither reads nor writes."""
    compile_time.install()
    cache = tmp_path / "cache"
    counts, entries = [], []
    for i, where in enumerate((str(cache), str(cache), "none")):
        jax.clear_caches()
        before = compile_time.cache_counts()
        argv = ["--run", tiny_run, "--method", "non_adaptive", "--gif", str(tmp_path / f"{i}.gif"),
                "--sample_task", "3", "--compile_cache", where]
        assert rollout_cli.main(argv) == 0
        counts.append({k: v - before[k] for k, v in compile_time.cache_counts().items()})
        entries.append(sorted(n for n in os.listdir(cache) if n.endswith("-cache")))
    assert counts[0]["writes"] > 0  # (a program compiled twice in one command hits the first time's entry)
    assert len(entries[0]) == counts[0]["writes"] and entries[1] == entries[2] == entries[0]  # in DIR itself
    assert counts[1] == {"hits": counts[0]["hits"] + counts[0]["writes"], "writes": 0}
    assert counts[2] == {"hits": 0, "writes": 0}
    gifs = []
    for i in range(3):
        with open(tmp_path / f"{i}.gif", "rb") as f:
            gifs.append(f.read())
    assert gifs[0] == gifs[1] == gifs[2]


@pytest.mark.slow
def test_every_method_loads_adapts_and_rolls_out(quick_run, tmp_path):
    """The shared --quick run of every standard method (tests/conftest.py `quick_run`, copied so
    the run is only read): per_task.csv, load_run reproducing every method's returns, MAML
    adaptation through the library's inner step and a GIF of each adaptive method. Programs
    compiled here go through the run's compilation cache, as the rollout command's do."""
    with compile_time.persistent_cache(quick_run.cache):
        _check_every_method(quick_run, tmp_path)


def _check_every_method(quick_run, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(quick_run.out, out)
    config, rows = _check_per_task(out)
    assert config.methods == STANDARD_METHODS
    run = _check_load_run_reproduces(out, config, rows)
    p = run.policies["maml_adapted"]
    task = run.test_task(1, 2)
    params, before = p.adapt(1, task, jax.random.key(1))
    assert before.shape == (config.maml.rl.num_inner_steps + 1,)
    reference = p.trainer.algo.adapt_and_evaluate(p.state(1), jax.tree.map(lambda x: x[None], task),
                                                  jax.random.key(1), config.maml.rl.num_inner_steps,
                                                  config.maml.rl.support_envs, config.maml.rl.support_steps)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference["params"])):
        np.testing.assert_array_equal(a, b[0])
    # the page's one program for up to 5 steps gives each step count's own results
    for k in (1, config.maml.rl.num_inner_steps):
        own, own_returns = p.adapt(1, task, jax.random.key(1), k)
        upto, upto_returns = p.adapt(1, task, jax.random.key(1), k, max_steps=5)
        chex.assert_trees_all_close(upto, own, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(upto_returns, own_returns, rtol=1e-6)
    with pytest.raises(ValueError, match="max_steps must be"):
        p.adapt(1, task, jax.random.key(1), 3, max_steps=2)
    tt = run.policies["test_time_adapted"]
    _, rounds = tt.adapt(0, task, jax.random.key(2))
    assert rounds.shape == (config.evaluation.test_time_rounds - 1,)
    own, own_rounds = tt.adapt(0, task, jax.random.key(2), 2)
    upto, upto_rounds = tt.adapt(0, task, jax.random.key(2), 2, max_steps=5)
    chex.assert_trees_all_close(upto, own, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(upto_rounds, own_rounds, rtol=1e-6)
    for method in ("maml_adapted", "in_context", "test_time_adapted"):
        _check_gif(out, method, tmp_path, extra=("--sample_task", "5"))


def test_metric_logs_have_one_row_per_iteration_and_tensorboard_reads_them(tiny_run):
    """metrics/<trainer>.csv: one row per training iteration holding history.json's values;
    the TensorBoard event files hold the same scalars (read with tensorboard's own reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with open(os.path.join(tiny_run, "history.json")) as f:
        history = json.load(f)["non_adaptive"]
    with open(os.path.join(tiny_run, "metrics", "non_adaptive.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    config = runs.load_run(tiny_run).config
    per_update = build_trainer("non_adaptive", config).env_steps_per_update
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    assert [int(r["env_steps"]) for r in rows] == [per_update * i for i in (1, 2, 3, 4)] == history["env_steps"]
    wall = [float(r["wall_s"]) for r in rows]
    assert wall == history["wall_s"] and all(0 < a < b for a, b in zip(wall, wall[1:]))
    assert [float(r["episode_return"]) for r in rows] == history["episode_return"]
    for s in range(2):
        assert [float(r[f"episode_return_seed{s}"]) for r in rows] == [v[s] for v in history["episode_return_per_seed"]]
    events = EventAccumulator(os.path.join(tiny_run, "tensorboard", "non_adaptive"))
    events.Reload()
    assert {"episode_return", "episode_return/seed0", "env_steps"} <= set(events.Tags()["scalars"])
    scalars = events.Scalars("episode_return")
    assert [e.step for e in scalars] == [1, 2, 3, 4]
    np.testing.assert_allclose([e.value for e in scalars], history["episode_return"], rtol=1e-6)


def test_plot_command_redraws_every_plot_from_the_stored_files(tiny_run, tmp_path):
    out = str(tmp_path / "plots")
    assert plot_cli.main([tiny_run, "--out", out]) == 0
    for name in ("training_curves.png", "training_curves_wall.png", "returns_by_task_kind.png",
                 "per_task_physics.png"):
        with open(os.path.join(out, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
    assert not os.path.exists(os.path.join(out, "adaptation.png"))  # non_adaptive does not adapt
    # a history stored without env steps and wall time (older runs) is still plotted
    old = str(tmp_path / "old")
    os.makedirs(old)
    for name in ("results.json", "per_task.csv"):
        with open(os.path.join(tiny_run, name)) as f, open(os.path.join(old, name), "w") as g:
            g.write(f.read())
    with open(os.path.join(tiny_run, "history.json")) as f:
        history = json.load(f)
    stripped = {t: {k: v for k, v in h.items() if k not in ("env_steps", "wall_s")} for t, h in history.items()}
    with open(os.path.join(old, "history.json"), "w") as f:
        json.dump(stripped, f)
    config = runs.load_run(tiny_run).config
    assert plot_cli.read_histories(old, config)["non_adaptive"]["env_steps"] == history["non_adaptive"]["env_steps"]
    assert plot_cli.main([old]) == 0
    assert os.path.exists(os.path.join(old, "training_curves.png"))
    assert not os.path.exists(os.path.join(old, "training_curves_wall.png"))  # no clock stored


# ------------------------------------------------------------------------------------ config files
def _write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return str(path)


@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_print_config_then_config_gives_the_identical_config(tmp_path, capsys, fmt):
    from benchmarks.cli import parse_args

    assert cartpole.main(["--quick", "--second_order", "--num_seeds", "4", "--print_config", fmt]) == 0
    text = capsys.readouterr().out
    path = _write(tmp_path / f"run.{fmt}", text)
    expected = parse_args(["--quick", "--second_order", "--num_seeds", "4"])[0]
    assert parse_args(["--config", path])[0] == expected
    assert cartpole.main(["--config", path, "--print_config"]) == 0   # format follows the file
    assert capsys.readouterr().out == text
    assert not os.path.exists(os.path.join(str(tmp_path), "results"))   # nothing was run


def test_config_file_subset_with_flags_overriding(tmp_path):
    from benchmarks.cli import parse_args
    from benchmarks.config import BenchmarkConfig

    path = _write(tmp_path / "c.toml", 'num_seeds = 4\nin_context.lr = 0.0005\n\n[maml.rl]\ninner_lr = 0.05\n'
                                       'outer_lr = 0.01\n\n[evaluation]\nnum_tasks = 7\n')
    config = parse_args(["--config", path])[0]
    assert config == BenchmarkConfig().with_values({
        "num_seeds": 4, "maml.rl.outer_lr": 0.01, "maml.rl.inner_lr": 0.05, "evaluation.num_tasks": 7,
        "in_context.lr": 0.0005})
    config = parse_args(["--config", path, "--num_seeds", "2", "--inner_lr", "0.2", "--quick"])[0]
    assert (config.num_seeds, config.maml.rl.inner_lr, config.evaluation.num_tasks) == (2, 0.2, 7)
    assert config.maml.num_meta_updates == BenchmarkConfig.quick_preset().maml.num_meta_updates
    pg = parse_args(["--config", _write(tmp_path / "pg.json", '{"mode": "policy_gradient"}')])[0]
    assert pg.methods == ("non_adaptive",)


@pytest.mark.parametrize("text, name, message", [
    ("[maml]\nfoo = 1\n", "c.toml", "'maml.foo'"),
    ("num_seedz = 2\n", "c.toml", "'num_seedz'"),
    ("[maml.rl]\ninner_lr = -1.0\n", "c.toml", "maml.rl.inner_lr must be"),
    ('{"evaluation": {"num_tasks": 2.5}}', "c.json", "evaluation.num_tasks must be"),
    ("[policy]\nhidden_dim = \"wide\"\n", "c.toml", "policy.hidden_dim"),
    ("num_seeds = \n", "c.toml", "is not valid TOML"),
    ("num_seeds: 2\n", "c.yaml", "must end in .toml or .json"),
])
def test_config_file_refuses_unknown_keys_and_bad_values_naming_them(tmp_path, capsys, text, name, message):
    path = _write(tmp_path / name, text)
    with pytest.raises(SystemExit) as exc:
        cartpole.main(["--config", path, "--print_config"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and name in err, err
