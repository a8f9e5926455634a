"""`benchmarks.ablation`: the masked-observation policy, the push statistics against a Python
loop, and (slow) the command on the shared --quick run, whose unablated row must reproduce the
run's own results.json."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import ablation
from ssm_jax import MLPPolicy


def test_a_masked_component_no_longer_changes_the_policy_and_the_others_still_do():
    policy = MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=16)
    params = policy.init(jax.random.key(0), jnp.zeros((1, 1, 4)))
    masked = ablation.ablated(policy, "theta")
    assert ablation.ablated(policy, "none") is policy and hash(masked) == hash(ablation.ablated(policy, "theta"))
    obs = jax.random.normal(jax.random.key(1), (5, 4))
    carry, reset = masked.initialize_carry(5), jnp.ones((5,), bool)

    def logits(p, o):
        out, _ = p.apply(params, o, carry, reset, method="step")
        return out.dist.logits

    other_theta = obs.at[:, 2].set(obs[:, 2] + 1.0)
    chex.assert_trees_all_equal(logits(masked, obs), logits(masked, other_theta))
    chex.assert_trees_all_close(logits(masked, obs), logits(policy, obs.at[:, 2].set(0.0)))
    other_x = obs.at[:, 0].set(obs[:, 0] + 1.0)
    assert float(jnp.max(jnp.abs(logits(masked, obs) - logits(masked, other_x)))) > 1e-3
    with pytest.raises(ValueError, match="component must be one of"):
        ablation.ablated(policy, "omega")


def test_push_statistics_match_a_python_loop():
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(3, 50, 4))
    obs[0, :5, 2] = 0.0  # no sign: not counted for theta
    actions = rng.integers(0, 2, size=(3, 50))
    inverted = np.array([False, True, True])[:, None] & np.ones((3, 50), bool)
    got = ablation.push_statistics(obs, actions, inverted)
    for kind, want_inv in (("normal", False), ("inverted", True)):
        assert got[kind]["steps"] == int(np.sum(inverted == want_inv))
        for c, name in enumerate(ablation.OBS_NAMES):
            action_hits, force_hits, values = [], [], []
            for o, a, i in zip(obs.reshape(-1, 4), actions.ravel(), inverted.ravel()):
                if i != want_inv:
                    continue
                values.append(o[c])
                if o[c] == 0:
                    continue
                chosen = 1 if a == 1 else -1
                pushed = -chosen if i else chosen
                action_hits.append((chosen > 0) == (o[c] > 0))
                force_hits.append((pushed > 0) == (o[c] > 0))
            assert got[kind]["action_agrees"][name] == pytest.approx(np.mean(action_hits))
            assert got[kind]["force_agrees"][name] == pytest.approx(np.mean(force_hits))
            assert got[kind]["mean"][name] == pytest.approx(np.mean(values))
            assert got[kind]["mean_abs"][name] == pytest.approx(np.mean(np.abs(values)))
    # on normal tasks the push is the action; on inverted ones its opposite
    for name in ablation.OBS_NAMES:
        assert got["normal"]["force_agrees"][name] == got["normal"]["action_agrees"][name]
        assert got["inverted"]["force_agrees"][name] == pytest.approx(1 - got["inverted"]["action_agrees"][name])


@pytest.mark.slow
def test_the_command_reproduces_the_runs_return_and_writes_its_files(quick_run, tmp_path, capsys):
    out = tmp_path / "ablation"
    assert ablation.main(["--run", str(quick_run.out), "--out", str(out)]) == 0
    result = json.loads((out / "ablation.json").read_text())
    measured = quick_run.results["methods"]["non_adaptive"]
    none = result["ablations"]["none"]
    assert none["return"] == measured["return_mean"]
    for kind in ("normal", "inverted"):
        assert none[kind]["return"] == measured["return_by_task_kind"][kind]["mean"]
    assert set(result["ablations"]) == set(ablation.ABLATIONS)
    assert all(0 <= row["return"] <= 500 for row in result["ablations"].values())
    assert (out / "states.png").stat().st_size > 10_000
    assert result["pushes_tasks_differing_from_evaluation"] == 0  # the statistics read the scored rollouts
    assert "observation set to 0" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        ablation.main(["--run", str(quick_run.out), "--method", "maml_adapted", "--out", str(out)])
    assert exc.value.code == 2
    assert "method must act without adapting" in capsys.readouterr().err
