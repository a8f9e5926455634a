"""benchmarks.checkpointing and benchmarks.training: orbax round trip, resume == uninterrupted,
interrupted saves invisible, corrupted / missing directories give a clear CheckpointError."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from benchmarks.checkpointing import Checkpointer, CheckpointError
from benchmarks.training import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(key):
    params = {"w": jax.random.normal(key, (3, 2)), "b": jnp.zeros((2,))}
    return {"params": params, "opt": optax.adam(1e-2).init(params), "step": jnp.zeros((), jnp.int32)}


def _update(state, key):
    """A noisy Adam step on a quadratic: depends on the key, like an RL update."""
    opt = optax.adam(1e-2)
    target = jax.random.normal(key, (3, 2))
    loss = lambda p: jnp.sum(jnp.square(p["w"] - target)) + jnp.sum(jnp.square(p["b"] - 1))  # noqa: E731
    value, grads = jax.value_and_grad(loss)(state["params"])
    updates, opt_state = opt.update(grads, state["opt"], state["params"])
    new = {"params": optax.apply_updates(state["params"], updates), "opt": opt_state, "step": state["step"] + 1}
    return new, {"return": -value, "loss": value}


def _train(ckpt, iterations, resume=False, chunk_size=3, checkpoint_every=4):
    return train("toy", init=_state, update=_update, seed=5, num_seeds=2, iterations=iterations,
                 chunk_size=chunk_size, env_steps_per_update=1, checkpointer=ckpt,
                 checkpoint_every=checkpoint_every, metadata={"cfg": 1}, resume=resume,
                 log=lambda m: None)


def test_round_trip_is_exact_and_keeps_structure(tmp_path):
    state = jax.vmap(_state)(jax.random.split(jax.random.key(0), 2))
    ckpt = Checkpointer(tmp_path / "c")
    ckpt.save(7, state, {"run": {"a": 1}, "history": {"return": [1.0, 2.0]}})
    restored, meta, step = Checkpointer(tmp_path / "c", create=False).restore(
        jax.tree.map(jnp.zeros_like, state))
    assert step == 7 and meta["history"]["return"] == [1.0, 2.0] and meta["run"] == {"a": 1}
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, restored), jax.tree.map(np.asarray, state))


def test_resume_equals_uninterrupted_and_checkpoint_schedule(tmp_path):
    full = _train(Checkpointer(tmp_path / "full"), 11)
    # the schedule: a checkpoint at the chunk end crossing each multiple of 4, and at the end
    assert Checkpointer(tmp_path / "full").all_steps()[-2:] == [9, 11]
    # "interrupted" run: stop after 6 iterations (its last checkpoint: 6, since chunks 0-3-6)
    part = Checkpointer(tmp_path / "part")
    _train(part, 6)
    assert part.latest_step() == 6
    resumed = _train(Checkpointer(tmp_path / "part"), 11, resume=True)
    assert resumed.resumed_from == 6
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, resumed.states),
                                jax.tree.map(np.asarray, full.states))
    np.testing.assert_allclose(resumed.history["return"], full.history["return"])
    assert len(full.history["return"]) == 11
    # a different seed gives different params (the check above can fail)
    other = train("toy", init=_state, update=_update, seed=6, num_seeds=2, iterations=11, chunk_size=3,
                  env_steps_per_update=1, log=lambda m: None)
    assert not np.allclose(np.asarray(other.states["params"]["w"]), np.asarray(full.states["params"]["w"]))


def test_resume_rejects_a_different_configuration(tmp_path):
    ckpt = Checkpointer(tmp_path / "c")
    _train(ckpt, 3)
    with pytest.raises(CheckpointError, match="different configuration"):
        train("toy", init=_state, update=_update, seed=5, num_seeds=2, iterations=6, chunk_size=3,
              env_steps_per_update=1, checkpointer=ckpt, metadata={"cfg": 2}, resume=True,
              log=lambda m: None)


def test_missing_empty_and_corrupted_directories_give_clear_errors(tmp_path):
    target = jax.vmap(_state)(jax.random.split(jax.random.key(0), 2))
    with pytest.raises(CheckpointError, match="does not exist"):
        Checkpointer(tmp_path / "nope", create=False)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        Checkpointer(tmp_path / "empty", create=False).restore(target)
    ckpt = Checkpointer(tmp_path / "bad")
    ckpt.save(3, target, {"run": {}})
    # corrupt every data file of the step
    for root, _, files in os.walk(tmp_path / "bad" / "3"):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupted"):
        Checkpointer(tmp_path / "bad", create=False).restore(target)
    # a checkpoint of a different model (other shapes) is rejected too
    ckpt2 = Checkpointer(tmp_path / "other")
    ckpt2.save(1, {"params": {"w": jnp.zeros((5,))}}, {"run": {}})
    with pytest.raises(CheckpointError):
        Checkpointer(tmp_path / "other", create=False).restore(target)


def test_interrupted_save_leftover_is_ignored(tmp_path):
    """A save killed half-way leaves orbax's temporary directory: not a checkpoint."""
    state = jax.vmap(_state)(jax.random.split(jax.random.key(0), 2))
    ckpt = Checkpointer(tmp_path / "c")
    ckpt.save(4, state, {"run": {}})
    partial = tmp_path / "c" / "8.orbax-checkpoint-tmp-1234567890"
    shutil.copytree(tmp_path / "c" / "4", partial)
    for root, _, files in os.walk(partial):  # half-written files
        for f in files[: len(files) // 2 + 1]:
            open(os.path.join(root, f), "wb").close()
    again = Checkpointer(tmp_path / "c", create=False)
    assert again.latest_step() == 4
    restored, _, step = again.restore(state)
    assert step == 4
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, restored), jax.tree.map(np.asarray, state))


SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    sys.path.insert(0, {here!r})
    from benchmarks.checkpointing import Checkpointer
    from benchmarks.training import train
    from test_checkpointing import _state, _update
    def update(s, k):
        return _update(s, k)
    def log(m):
        print(m, flush=True)
    r = train("toy", init=_state, update=update, seed=5, num_seeds=2, iterations=int(sys.argv[2]),
              chunk_size=1, env_steps_per_update=1, checkpointer=Checkpointer(sys.argv[1]),
              checkpoint_every=1, metadata={{"cfg": 1}}, resume=True, log=log)
    import numpy as np
    np.save(sys.argv[1] + "/final.npy", np.asarray(r.states["params"]["w"]))
""")


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_result(tmp_path):
    """Kill a checkpointing run with SIGKILL several times (it saves after every iteration, and
    saving dominates its time, so kills tend to land inside a save); the run that then resumes
    from the last complete checkpoint ends with the uninterrupted run's params."""
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(repo=REPO, here=os.path.dirname(os.path.abspath(__file__))))
    iterations = 40
    ref = _train(None, iterations, chunk_size=1, checkpoint_every=1)
    d = str(tmp_path / "killed")
    rng = np.random.default_rng(0)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, str(script), d, str(iterations)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        lines = 0
        wanted = int(rng.integers(2, 8))
        for line in proc.stdout:
            lines += line.startswith("[toy] it")
            if lines >= wanted:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    final = subprocess.run([sys.executable, str(script), d, str(iterations)], check=True,
                           capture_output=True, text=True, timeout=600)
    # the last run really resumed (a silent restart from 0 would also reach the same params)
    resumed = [line for line in final.stdout.splitlines() if "resumed from checkpoint at iteration" in line]
    assert resumed and int(resumed[0].split("iteration ")[1].split("/")[0]) > 0, final.stdout[:500]
    np.testing.assert_array_equal(np.load(d + "/final.npy"), np.asarray(ref.states["params"]["w"]))
