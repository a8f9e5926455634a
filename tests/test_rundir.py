"""Runs are never lost: atomic writes on a full disk, `--overwrite` keeping the replaced run until
the new one has a checkpoint (restored on failure, Ctrl-C, or after a kill), and `--resume`
refusing a run whose checkpoints are gone. No JAX compilation: the training is replaced by
stand-ins that fail at chosen moments."""

import errno
import json
import os

import pytest

from benchmarks import cartpole, rundir
from benchmarks.cli import parse_args
from benchmarks.config import BenchmarkConfig
from benchmarks.results import write_csv

TINY_PG = ["--quick", "--mode", "policy_gradient", "--ppo_iterations", "4", "--chunk_size", "2",
           "--checkpoint_every", "2", "--eval_tasks", "6", "--num_seeds", "2"]


def _tree(root) -> dict:
    """relative path -> bytes of every file under `root`."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


def _full_disk_at_fsync(monkeypatch):
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("writer", ["json", "csv"])
def test_a_full_disk_leaves_no_temporary_file_and_the_old_file_intact(tmp_path, monkeypatch, writer):
    path = str(tmp_path / ("results.json" if writer == "json" else "per_task.csv"))
    write = (lambda v: rundir.write_json_atomic(path, {"v": v})) if writer == "json" else (
        lambda v: write_csv(path, [{"v": v}]))
    write(1)
    before = _tree(tmp_path)
    with monkeypatch.context() as m:
        _full_disk_at_fsync(m)
        with pytest.raises(OSError) as exc:
            write(2)
    assert exc.value.errno == errno.ENOSPC
    assert str(exc.value) == f"[Errno 28] cannot write {path!r}: No space left on device"
    assert _tree(tmp_path) == before                       # no results.json.tmp-<pid>, old content
    write(3)                                               # space freed: it writes again
    assert len(_tree(tmp_path)) == 1


def test_stale_temporaries_of_a_killed_writer_are_removed(tmp_path):
    (tmp_path / "metrics").mkdir()
    for name in ("results.json.tmp-999999", "metrics/x.csv.tmp-1", "notes.tmp-x", "keep.txt"):
        (tmp_path / name).write_text("x")
    mine = tmp_path / f"config.json.tmp-{os.getpid()}"
    mine.write_text("x")
    rundir.remove_stale_temporaries(str(tmp_path))
    assert sorted(_tree(tmp_path)) == sorted(["notes.tmp-x", "keep.txt", mine.name])


def _old_run(out) -> dict:
    """A finished run's files in `out` (stand-ins: the benchmark run's layout), plus files that
    are not the run's; returns the tree."""
    config = parse_args(TINY_PG + ["--out", str(out)])[0]
    os.makedirs(out / "checkpoints" / "non_adaptive" / "4")
    (out / "checkpoints" / "non_adaptive" / "4" / "state").write_text("old params")
    os.makedirs(out / "checkpoints" / "notes")
    (out / "checkpoints" / "notes" / "keep.txt").write_text("mine")
    os.makedirs(out / "metrics")
    (out / "metrics" / "non_adaptive.csv").write_text("iteration\n1\n")
    (out / "eval").mkdir()
    (out / "eval" / "results.json").write_text("{}")
    for name in ("results.json", "history.json", "progress.json", "training_curves.png"):
        (out / name).write_text(json.dumps({"old": name}))
    (out / "config.json").write_text(json.dumps(config.to_dict()))
    return _tree(out)


def _stand_in(fail, checkpoint_first=False):
    """A `cartpole._train_and_evaluate` that writes like a run, maybe saves a first checkpoint
    (calls `saved`), then raises `fail`."""
    def run(config, options, trainers, states, histories, source, t_start, saved, *_):
        os.makedirs(os.path.join(options.out, "metrics"), exist_ok=True)
        with open(os.path.join(options.out, "metrics", "non_adaptive.csv"), "w") as f:
            f.write("iteration\nnew\n")
        if checkpoint_first:
            os.makedirs(rundir.checkpoint_dir(options.out, "non_adaptive") + "/2")
            saved("non_adaptive", 2)
        raise fail
    return run


@pytest.mark.parametrize("fail", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_overwrite_restores_the_old_run_if_the_new_one_fails_before_its_first_checkpoint(
        tmp_path, monkeypatch, fail):
    out = tmp_path / "run"
    before = _old_run(out)
    monkeypatch.setattr(cartpole, "_train_and_evaluate", _stand_in(fail))
    code = cartpole.main(TINY_PG + ["--out", str(out), "--overwrite"])
    assert code == (130 if isinstance(fail, KeyboardInterrupt) else 1)
    assert _tree(out) == before
    assert not os.path.exists(out / rundir.PREVIOUS_DIR)


def test_overwrite_discards_the_old_run_once_the_new_one_has_a_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _old_run(out)
    monkeypatch.setattr(cartpole, "_train_and_evaluate", _stand_in(RuntimeError("later fault"), True))
    assert cartpole.main(TINY_PG + ["--out", str(out), "--overwrite"]) == 1
    after = _tree(out)
    # the new run stays (resumable): its config, progress and checkpoint; the old run is gone,
    # files that are not the run's are kept
    assert json.loads(after["progress.json"]) == {"non_adaptive": 2}
    assert after["metrics/non_adaptive.csv"] == b"iteration\nnew\n"
    assert after["checkpoints/notes/keep.txt"] == b"mine" and after["eval/results.json"] == b"{}"
    for gone in ("results.json", "history.json", "training_curves.png", "checkpoints/non_adaptive/4/state"):
        assert gone not in after
    assert not any(p.startswith(rundir.PREVIOUS_DIR) for p in os.listdir(out))
    assert parse_args(["--resume", str(out)])[1].resume == str(out)


def test_a_kill_during_an_overwrite_is_recovered_by_the_next_command(tmp_path, capsys):
    """SIGKILL before the new run's first checkpoint leaves the old run in .previous-run/: the
    next command on the directory puts it back (and says so) before doing anything else."""
    out = tmp_path / "run"
    before = _old_run(out)
    assert rundir.set_aside(str(out))
    (out / "config.json").write_text(json.dumps(BenchmarkConfig.quick_preset().to_dict()))  # the new run's
    os.makedirs(out / "metrics", exist_ok=True)
    (out / "metrics" / "non_adaptive.csv").write_text("new")
    with pytest.raises(SystemExit):                         # without --overwrite: refused, as before
        parse_args(TINY_PG + ["--out", str(out)])
    assert "restored the run" in capsys.readouterr().err
    assert _tree(out) == before
    # --resume and --eval_only recover too
    for argv in (["--resume", str(out)], ["--eval_only", "--checkpoint", str(out), "--out", str(tmp_path / "e")]):
        rundir.set_aside(str(out))
        parse_args(argv)
        assert _tree(out) == before
    # a kill part-way through setting the run aside: what was moved goes back, the rest stays
    staging = out / (rundir.PREVIOUS_DIR + ".partial")
    os.makedirs(staging / "checkpoints")
    os.replace(out / "config.json", staging / "config.json")
    os.replace(out / "checkpoints" / "non_adaptive", staging / "checkpoints" / "non_adaptive")
    assert rundir.recover(str(out)) and _tree(out) == before
    # a kill while discarding the old run (after the new run's first checkpoint) is not undone
    rundir.set_aside(str(out))
    os.replace(out / rundir.PREVIOUS_DIR, out / (rundir.PREVIOUS_DIR + ".discarded"))
    assert not rundir.recover(str(out)) and sorted(os.listdir(out)) == ["checkpoints", "eval"]


def test_resume_refuses_a_run_whose_checkpoints_are_gone(tmp_path, capsys):
    out = tmp_path / "run"
    _old_run(out)
    (out / "progress.json").write_text(json.dumps({"non_adaptive": 4}))
    os.remove(out / "results.json")                          # an interrupted run ...
    assert parse_args(["--resume", str(out)])[1].resume == str(out)
    os.remove(out / "checkpoints" / "non_adaptive" / "4" / "state")
    os.rmdir(out / "checkpoints" / "non_adaptive" / "4")      # ... whose checkpoints vanished
    with pytest.raises(SystemExit) as exc:
        parse_args(["--resume", str(out)])
    assert exc.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "non_adaptive had a checkpoint at iteration 4" in line and "refusing to retrain it from iteration 0" in line
    # a finished run (results.json) without checkpoints/ is refused without progress.json too
    os.remove(out / "progress.json")
    (out / "results.json").write_text("{}")
    with pytest.raises(SystemExit):
        parse_args(["--resume", str(out)])
    assert "(the run finished)" in capsys.readouterr().err
    # a run killed before its first checkpoint resumes (from iteration 0: nothing to lose)
    os.remove(out / "results.json")
    assert parse_args(["--resume", str(out)])[1].resume == str(out)
    # the library path checks it too
    (out / "progress.json").write_text(json.dumps({"non_adaptive": 2}))
    config, options = parse_args(["--eval_only", "--checkpoint", str(out), "--out", str(tmp_path / "e")])
    with pytest.raises(rundir.RunDirError, match="refusing to retrain"):
        cartpole.run(config, cartpole.RunOptions(out=str(out), resume=str(out), eval_only=False, checkpoint=None))


def _eval_stand_in(fail):
    """A `cartpole._train_and_evaluate` for --eval_only: writes an evaluation's results into
    `options.out`, then raises `fail` (or returns)."""
    def run(config, options, trainers, states, histories, source, t_start, saved, *_):
        os.makedirs(options.out, exist_ok=True)
        rundir.write_json_atomic(os.path.join(options.out, "results.json"), {"new": True})
        if fail is not None:
            raise fail
        return {"new": True}
    return run


@pytest.mark.parametrize("fail", [None, RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_eval_only_overwrite_keeps_the_old_evaluation_until_the_new_one_is_written(tmp_path, monkeypatch, fail):
    run_dir = tmp_path / "run"
    _old_run(run_dir)
    ev = run_dir / "eval"
    (ev / "results.json").write_text(json.dumps({"old": True}))
    (ev / "per_task.csv").write_text("method\nold\n")
    (ev / "notes.txt").write_text("mine")
    before = _tree(ev)
    monkeypatch.setattr(cartpole, "load_trained", lambda trainer, directory, num_seeds: ({}, {}))
    monkeypatch.setattr(cartpole, "_train_and_evaluate", _eval_stand_in(fail))
    code = cartpole.main(["--eval_only", "--checkpoint", str(run_dir), "--overwrite"])
    after = _tree(ev)
    if fail is None:
        assert code == 0
        # the new evaluation replaced the old one; files that are not an evaluation's stay
        assert json.loads(after["results.json"]) == {"new": True}
        assert "per_task.csv" not in after and after["notes.txt"] == b"mine"
    else:
        assert code == (130 if isinstance(fail, KeyboardInterrupt) else 1)
        assert after == before                     # the old evaluation is back, byte for byte
    assert not any(p.startswith(rundir.PREVIOUS_DIR) for p in os.listdir(ev))
