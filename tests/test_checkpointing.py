"""benchmarks.checkpointing and benchmarks.training: orbax round trip, resume == uninterrupted,
interrupted saves invisible, corrupted / missing directories give a clear CheckpointError."""

import errno
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


def _no_space(monkeypatch):
    """A full disk for orbax's checkpoint writes: its JSON metadata write fails with ENOSPC
    (inside orbax's background threads, as a real full disk does)."""
    from orbax.checkpoint._src.handlers import json_checkpoint_handler

    async def full(self, x, directory):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", full)


def test_full_disk_during_a_save_is_one_checkpoint_error_and_leaves_no_partial_step(
        tmp_path, monkeypatch, capfd, caplog):
    state = jax.vmap(_state)(jax.random.split(jax.random.key(0), 2))
    saved = []
    ckpt = Checkpointer(tmp_path / "c", on_saved=saved.append)
    ckpt.save(2, state, {"run": {}})
    assert saved == [2]
    with monkeypatch.context() as m:
        _no_space(m)
        with pytest.raises(CheckpointError) as exc:
            ckpt.save(4, jax.tree.map(lambda x: x + 1, state), {"run": {}})
    assert str(exc.value) == (f"cannot write checkpoint step 4 into {str(tmp_path / 'c')!r}: "
                              f"no space left on device")
    assert saved == [2]                                        # not reported as saved
    assert sorted(os.listdir(tmp_path / "c")) == ["2"]         # no partial step left behind
    err = capfd.readouterr().err
    assert "Traceback" not in err and "raised an exception" not in err
    assert not [r for r in caplog.records if "raised an exception" in r.getMessage()]
    # the checkpoint before it is intact, and the next save (space freed) works
    restored, _, step = Checkpointer(tmp_path / "c", create=False).restore(state)
    assert step == 2
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, restored), jax.tree.map(np.asarray, state))
    ckpt.save(4, state, {"run": {}})
    assert ckpt.all_steps() == [2, 4] and saved == [2, 4]


def test_full_disk_at_the_command_line_is_one_line_naming_the_directory(tmp_path, monkeypatch, capfd):
    from benchmarks.cli import run_main

    state = {"w": jnp.arange(6.0)}

    def run(config, options):
        ckpt = Checkpointer(os.path.join(options.out, "checkpoints", "toy"))
        ckpt.save(1, state, {})
        _no_space(monkeypatch)
        ckpt.save(2, state, {})

    assert run_main(["--quick", "--out", str(tmp_path / "o")], run) == 1
    err = capfd.readouterr().err
    directory = str(tmp_path / "o" / "checkpoints" / "toy")
    assert err == (f"python -m benchmarks.cartpole: error: CheckpointError: cannot write checkpoint step 2 "
                   f"into {directory!r}: no space left on device (--debug shows the traceback)\n")


def test_the_reason_of_a_failed_write_finds_enospc_anywhere_in_the_chain():
    from benchmarks.checkpointing import _reason

    ts = ValueError('RESOURCE_EXHAUSTED: Error writing "w/0.0" in OCDBT database: Failed to write 96 bytes: '
                    "No space left on device [os_error_code='28']")
    assert _reason(ts) == "no space left on device"
    try:
        try:
            raise OSError(errno.ENOSPC, "disk full")
        except OSError as inner:
            raise RuntimeError("commit failed") from inner
    except RuntimeError as outer:
        assert _reason(outer) == "no space left on device"
    assert _reason(ValueError("OUT_OF_RANGE: File too large [os_error_code='27']\nmore")) == (
        "ValueError: OUT_OF_RANGE: File too large [os_error_code='27']")


def _corrupt(step_dir):
    """Overwrite every array data file of a checkpoint step (the metadata stays readable)."""
    for root, _, files in os.walk(step_dir):
        for f in files:
            if os.path.basename(root) == "d":
                with open(os.path.join(root, f), "wb") as fh:
                    fh.write(b"\x00garbage")


def test_resume_falls_back_to_the_newest_readable_checkpoint(tmp_path):
    """A corrupt latest checkpoint: resuming warns, moves it aside and continues from the one
    before, ending with the uninterrupted run's params; evaluation (no fallback) still refuses."""
    full = _train(Checkpointer(tmp_path / "full"), 11)
    part = Checkpointer(tmp_path / "part")
    _train(part, 9)                                   # checkpoints at 6 and 9 (chunks of 3)
    assert part.all_steps() == [6, 9]
    _corrupt(tmp_path / "part" / "9")
    target = jax.vmap(_state)(jax.random.split(jax.random.key(0), 2))
    with pytest.raises(CheckpointError, match="step 9 .* is corrupted"):
        Checkpointer(tmp_path / "part", create=False).restore(target)
    lines = []
    resumed = train("toy", init=_state, update=_update, seed=5, num_seeds=2, iterations=11, chunk_size=3,
                    env_steps_per_update=1, checkpointer=Checkpointer(tmp_path / "part"), checkpoint_every=4,
                    metadata={"cfg": 1}, resume=True, log=lines.append)
    assert resumed.resumed_from == 6
    warning = [line for line in lines if line.startswith("warning:")]
    assert len(warning) == 1 and "step 9" in warning[0] and "resuming from the newest readable checkpoint, step 6" \
        in warning[0]
    assert os.path.isdir(tmp_path / "part" / "9.unreadable")
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, resumed.states), jax.tree.map(np.asarray, full.states))
    np.testing.assert_allclose(resumed.history["return"], full.history["return"])
    assert Checkpointer(tmp_path / "part", create=False).all_steps()[-1] == 11
    # no readable step at all: the latest one's error, nothing renamed
    only = Checkpointer(tmp_path / "only")
    only.save(3, target, {"run": {}})
    _corrupt(tmp_path / "only" / "3")
    with pytest.raises(CheckpointError, match="step 3 .* is corrupted"):
        only.restore(target, fallback=lines.append)
    assert os.listdir(tmp_path / "only") == ["3"]


NOISE = textwrap.dedent("""
    import errno, os, sys
    sys.path.insert(0, {repo!r})
    import jax.numpy as jnp
    from orbax.checkpoint._src.handlers import json_checkpoint_handler
    from benchmarks.checkpointing import Checkpointer, CheckpointError
    d = sys.argv[1]
    state = {{f"w{{i}}": jnp.arange(4096.0) + i for i in range(24)}}  # many parallel reads
    ckpt = Checkpointer(d)
    ckpt.save(1, state, {{}})
    for root, _, files in os.walk(os.path.join(d, "1")):
        for f in files:
            if os.path.basename(root) == "d":
                open(os.path.join(root, f), "wb").write(b"garbage")
    for _ in range(4):
        try:
            Checkpointer(d, create=False).restore(state)
        except CheckpointError as err:
            print("restore:", str(err)[:40])
    async def full(self, x, directory):
        raise OSError(errno.ENOSPC, "No space left on device")
    json_checkpoint_handler.JsonCheckpointHandler._save_fn = full
    try:
        ckpt.save(2, state, {{}})
    except CheckpointError as err:
        print("save:", err)
    import gc, time
    time.sleep(0.5)
    gc.collect()
""")


def test_failed_orbax_operations_print_nothing_but_their_error(tmp_path):
    """In a fresh interpreter (pytest replaces the hooks involved): restoring a corrupt
    checkpoint and a save on a full disk raise their CheckpointError and print nothing else
    (no orbax thread tracebacks, no "Event loop is closed" from late tensorstore callbacks)."""
    script = tmp_path / "noise.py"
    script.write_text(NOISE.format(repo=REPO))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "c")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("restore: checkpoint step 1 in") == 4
    assert "save: cannot write checkpoint step 2" in proc.stdout and "no space left on device" in proc.stdout
    assert proc.stderr == "", proc.stderr[-2000:]


def test_unawaited_tensorstore_read_failures_are_dropped_and_other_asyncio_errors_kept(caplog):
    """asyncio logs a collected future whose exception nobody retrieved: a restore's sibling
    reads after its first failure. `Checkpointer`'s filter drops exactly those whose exception is
    tensorstore's (it names its `tensorstore_spec`); any other such report still reaches the
    log. Deterministic, unlike the subprocess test above, whose reads race."""
    import asyncio
    import gc
    import logging

    from benchmarks import checkpointing

    checkpointing._quiet_orbax()

    def collect_unretrieved(err):
        loop = asyncio.new_event_loop()
        future = loop.create_future()
        future.set_exception(err)
        del future
        gc.collect()
        loop.close()

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        collect_unretrieved(ValueError("OUT_OF_RANGE: Error reading \"w13/.zarray\" [tensorstore_spec='{}']"))
        collect_unretrieved(ValueError("an error of something else"))
    reports = [r for r in caplog.records if r.name == "asyncio"]
    assert len(reports) == 1 and reports[0].getMessage().startswith("Future exception was never retrieved")
    assert str(reports[0].exc_info[1]) == "an error of something else"
