"""`python -m benchmarks.scaling`: its flags, its table, and the training-loop timing of the
meta-update (the state carried from call to call, nothing copied again)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks import scaling
from tests.test_sharding import REPO, forced_env

SMALL = ["--max_devices", "2", "--tasks", "2", "--tasks_per_device", "1", "--envs", "2", "--steps", "4",
         "--rollout_envs", "4", "--envs_per_device", "2", "--rollout_steps", "4", "--repeats", "1"]


@pytest.mark.parametrize("argv,message", [(["--tasks", "6", "--max_devices", "4"], "--tasks=6 is not divisible"),
                                          (["--repeats", "0"], "--repeats"),
                                          (["--max_devices", "x"], "invalid int value")])
def test_bad_flags_exit_2_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as err:
        scaling.parse_args(argv)
    assert err.value.code == 2
    assert message in capsys.readouterr().err


def test_device_counts_are_powers_of_two_then_the_maximum():
    assert scaling.device_counts(1) == [1]
    assert scaling.device_counts(8) == [1, 2, 4, 8]
    assert scaling.device_counts(6) == [1, 2, 4, 6]


def test_default_maml_workload_is_the_benchmarks_meta_batch():
    from benchmarks.config import MAMLTrainingConfig

    args, maml = scaling.parse_args([]), MAMLTrainingConfig()
    assert (args.tasks, args.envs, args.steps) == (maml.tasks_per_update, maml.rl.support_envs,
                                                   maml.rl.support_steps)


@pytest.mark.slow
def test_small_run_writes_every_row_with_consistent_rates(tmp_path):
    """The command on 1 and 2 forced devices: one strong and one weak row per workload and
    device count; rates and ratios follow from the times; the 1-device rows are the baseline."""
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.scaling", *SMALL, "--json", str(out)], cwd=REPO,
                          env=forced_env(2), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "vs 1 device" in proc.stdout
    rows = json.loads(out.read_text())["rows"]
    keys = sorted((r["workload"], r["scaling"], r["devices"]) for r in rows)
    assert keys == sorted((w, k, n) for w in ("maml_rl meta_update", "rollout (SSM policy)")
                          for k in ("strong", "weak") for n in (1, 2))
    base = {(r["workload"], r["scaling"]): r["seconds"] for r in rows if r["devices"] == 1}
    for r in rows:
        assert r["seconds"] > 0
        t1 = base[(r["workload"], r["scaling"])]
        assert r["vs_1_device"] == pytest.approx(r["seconds"] / t1)
        expected = t1 / (r["devices"] * r["seconds"]) if r["scaling"] == "strong" else t1 / r["seconds"]
        assert r["efficiency"] == pytest.approx(expected)
        if r["workload"] == "rollout (SSM policy)":
            assert r["per_s"] == pytest.approx(r["batch"] * 4 / r["seconds"])
        else:
            assert r["per_s"] == pytest.approx(1.0 / r["seconds"])
    assert {r["batch"] for r in rows if r["scaling"] == "weak" and r["workload"].startswith("maml")} == {1, 2}


@pytest.mark.slow
def test_training_steps_carry_the_state_and_copy_nothing():
    """`TrainingSteps` feeds each meta-update's state into the next (the params move), and
    on a 2-device mesh the carried state stays replicated, so `replicate` returns its leaves as
    they are (nothing copied between steps)."""
    code = """
import jax, jax.numpy as jnp, numpy as np
import envs
from benchmarks.scaling import TrainingSteps
from maml import MAMLRL, MAMLRLConfig
from ssm_jax import MLPPolicy, sharding
mesh = sharding.make_mesh(2)
algo = MAMLRL(MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=8),
              MAMLRLConfig(num_inner_steps=1, first_order=True, support_envs=2, support_steps=4,
                           query_envs=2, query_steps=4), mesh=mesh)
state = sharding.replicate(algo.init(jax.random.key(0)), mesh)
tasks = sharding.shard_batch(envs.CartPoleTasks().sample(jax.random.key(1), 2), mesh)
step = TrainingSteps(algo, state, tasks, sharding.replicate(jax.random.key(2), mesh))
step(); a = step.state
step(); b = step.state
moved = any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)))
kept = all(x is y for x, y in zip(jax.tree.leaves(sharding.replicate(b, mesh)), jax.tree.leaves(b)))
print(moved, kept, all(sharding.is_replicated(x, mesh) for x in jax.tree.leaves(b)))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=forced_env(2), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-3:] == ["True", "True", "True"]
