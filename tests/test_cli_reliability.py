"""The benchmark command line as a user meets it: usage errors (exit 2, one line, before JAX is
imported), runtime faults (exit 1, one line; --debug: the traceback), Ctrl-C (one line, exit
130), and the seed and method checks that used to fail late."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import cli
from benchmarks.cli import parse_args, run_main
from benchmarks.config import MAX_SEED, BenchmarkConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    return err.strip().splitlines()[-1]


def test_repeated_methods_are_refused_before_training(capsys, tmp_path):
    line = _usage_error(["--methods", "non_adaptive,non_adaptive", "--out", str(tmp_path / "o")], capsys)
    assert line.endswith("--methods must not repeat a method, got ['non_adaptive', 'non_adaptive'] "
                         "(['non_adaptive'] twice)")
    with pytest.raises(ValueError, match="methods must not repeat"):
        BenchmarkConfig(methods=("maml_adapted", "in_context", "maml_adapted"))
    # a stored config with a repeated method is refused on --resume too (read by from_dict)
    d = BenchmarkConfig().to_dict()
    d["methods"] = ["in_context", "in_context"]
    with pytest.raises(ValueError, match="must not repeat"):
        BenchmarkConfig.from_dict(d)


@pytest.mark.parametrize("num_seeds", [1, 3])
def test_seed_range_is_the_uint32_range_of_every_seed(num_seeds, capsys, tmp_path):
    top = MAX_SEED + 1 - num_seeds  # seeds top .. top + num_seeds - 1 = 2**32 - 1
    out = ["--out", str(tmp_path / "o"), "--num_seeds", str(num_seeds)]
    assert parse_args(["--seed", str(top)] + out)[0].seed == top
    assert parse_args(["--seed", "0"] + out)[0].seed == 0
    for bad in (top + 1, 2**32, 10**20):
        assert f"--seed must be <= {top}" in _usage_error(["--seed", str(bad)] + out, capsys)
    assert "--seed must be an int >= 0" in _usage_error(["--seed=-1"] + out, capsys)
    assert "invalid int value: '1e20'" in _usage_error(["--seed", "1e20"] + out, capsys)


def test_seed_to_key_rule_is_one_rule():
    """Training and evaluation keys of seed s both come from jax.random.key(uint32(s)): equal to
    the Python-int key for every valid seed, and distinct at the top of the range (no wrap)."""
    import jax
    import numpy as np

    from benchmarks.evaluation import EVAL_STREAM, eval_key
    from benchmarks.training import seed_keys

    for seed in (0, 2, 2**31 + 7, MAX_SEED - 1):
        keys = seed_keys(seed, 2, EVAL_STREAM)
        for s in range(2):
            expected = jax.random.fold_in(jax.random.key(seed + s), EVAL_STREAM)
            np.testing.assert_array_equal(jax.random.key_data(keys[s]), jax.random.key_data(expected))
            np.testing.assert_array_equal(jax.random.key_data(eval_key(seed, s)),
                                          jax.random.key_data(expected))
    top = jax.random.key_data(seed_keys(MAX_SEED - 1, 2, 0))
    assert not np.array_equal(top[0], top[1])


def test_resume_of_a_file_and_a_missing_dir(capsys, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert "is not a directory" in _usage_error(["--resume", str(f)], capsys)
    assert "does not exist" in _usage_error(["--resume", str(tmp_path / "nope")], capsys)
    assert "is not a directory" in _usage_error(["--eval_only", "--checkpoint", str(f)], capsys)


def test_usage_errors_import_no_jax_and_exit_2(fresh_python):
    """In a fresh interpreter: --help and usage errors (flag values, config checks, directories)
    are answered without importing JAX, flax or gymnax; a usage error is one line after usage."""
    code = r"""
import contextlib, io, sys
from benchmarks.cli import parse_args
cases = [["--help"], ["--seed", "4294967296"], ["--methods", "maml_adapted,maml_adapted"],
         ["--inner_lr", "-1"], ["--num_epochs", "0"], ["--mode", "x"], ["--resume", "/nonexistent"],
         ["--eval_only"], ["--in_context_iterations", "3", "--methods", "non_adaptive"]]
for argv in cases:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parse_args(argv)
            code = None
        except SystemExit as e:
            code = e.code
    lines = [l for l in err.getvalue().splitlines() if "error:" in l]
    print(argv[0], code, len(lines))
print("heavy", sorted(m for m in ("jax", "flax", "gymnax", "optax", "orbax", "scipy") if m in sys.modules))
"""
    lines = fresh_python(code)
    assert lines[0] == "--help 0 0"
    assert all(l.endswith(" 2 1") for l in lines[1:-1]), lines
    assert lines[-1] == "heavy []"


def test_cli_entry_point_usage_error_in_a_subprocess(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks.cartpole", "--methods", "in_context,in_context",
                          "--out", str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("python -m benchmarks.cartpole: error: --methods")
    assert not (tmp_path / "o").exists()


def _fail_with(exc):
    def run(config, options):
        raise exc
    return run


def test_runtime_fault_is_one_line_with_exit_1_and_debug_shows_it(tmp_path, capsys):
    argv = ["--quick", "--out", str(tmp_path / "o")]
    assert run_main(argv, _fail_with(OSError(28, "No space left on device"))) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("python -m benchmarks.cartpole: error: OSError: [Errno 28] No space left on device")
    assert run_main(argv, _fail_with(ValueError("bad thing\nsecond line"))) == 1
    assert capsys.readouterr().err == ("python -m benchmarks.cartpole: error: bad thing "
                                       "(--debug shows the traceback)\n")
    with pytest.raises(OSError, match="No space"):
        run_main(argv + ["--debug"], _fail_with(OSError(28, "No space left on device")))
    assert run_main(argv, lambda c, o: None) == 0


def test_ctrl_c_is_one_line_with_exit_130(tmp_path, capsys):
    out = str(tmp_path / "o")
    assert run_main(["--quick", "--out", out], _fail_with(KeyboardInterrupt())) == 130
    err = capsys.readouterr().err
    assert err == (f"python -m benchmarks.cartpole: interrupted; the run in {out!r} keeps its "
                   f"checkpoints: continue it with --resume {out}\n")
    with pytest.raises(KeyboardInterrupt):
        run_main(["--quick", "--out", out, "--debug"], _fail_with(KeyboardInterrupt()))


def test_ctrl_c_message_starts_its_own_line_under_a_progress_bar(tmp_path, capsys):
    """Interrupted while a trainer's progress bar is drawn (no newline after it yet): the
    message is not glued to the bar."""
    from tqdm import tqdm

    out = str(tmp_path / "o")
    bars = []

    def run(config, options):
        bars.append(tqdm(total=10, desc="maml_ssm", file=sys.stderr))
        bars[0].update(3)
        raise KeyboardInterrupt

    try:
        assert run_main(["--quick", "--out", out], run) == 130
        err = capsys.readouterr().err
    finally:
        bars[0].close()
    message = (f"python -m benchmarks.cartpole: interrupted; the run in {out!r} keeps its "
               f"checkpoints: continue it with --resume {out}")
    assert "maml_ssm" in err and message in err.replace("\r", "\n").splitlines()


def test_ctrl_c_lost_in_a_gc_callback_prints_no_traceback(tmp_path, monkeypatch):
    """A Ctrl-C that lands in a gc callback (JAX registers one) cannot propagate; Python hands it
    to `sys.unraisablehook`, which would print a traceback. Inside `run_main` it is dropped (the
    watchdog reports the interrupt); any other unraisable exception still reaches the hook."""
    import gc

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: seen.append(type(info.exc_value)))
    raised = []

    def callback(phase, info):
        if phase == "start" and raised:
            raise raised.pop()

    def run(config, options):
        for exc in (KeyboardInterrupt(), RuntimeError("not an interrupt")):
            raised.append(exc)
            gc.collect()
            assert not raised

    gc.callbacks.append(callback)
    try:
        assert run_main(["--quick", "--out", str(tmp_path / "o")], run) == 0
    finally:
        gc.callbacks.remove(callback)
    assert seen == [RuntimeError]
    assert sys.unraisablehook is not None and sys.unraisablehook.__name__ == "<lambda>"  # put back


def test_failed_eval_only_writes_nothing(tmp_path, capsys):
    """An evaluation whose checkpoints are missing fails (exit 1, one line) and leaves no
    --out behind, so a rerun with a good checkpoint is not refused."""
    from benchmarks import cartpole

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(BenchmarkConfig.quick_preset().to_dict()))
    out = tmp_path / "eval"
    assert cartpole.main(["--eval_only", "--checkpoint", str(run), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    assert not out.exists()
    assert cartpole.main(["--eval_only", "--checkpoint", str(run)]) == 1
    assert not (run / "eval").exists()
