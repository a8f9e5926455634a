"""Run directories of `benchmarks.cartpole`: what a run writes, and the checks that protect runs.

A run directory holds `config.json` (the run's `BenchmarkConfig.to_dict()`), `results.json`,
two PNG plots and `checkpoints/<trainer>/` (orbax). An evaluation of a run (`--eval_only`)
writes the same files except checkpoints, by default into `<run>/eval/`.

Both the command line (`benchmarks.cli`, before anything is compiled) and `benchmarks.cartpole.run`
(for library callers) use these checks; they raise `RunDirError`, a ValueError the CLI turns into
a usage error (exit status 2).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import Iterable

from benchmarks.config import BenchmarkConfig

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
CURVES_FILE = "training_curves.png"
RETURNS_FILE = "returns_by_task_kind.png"
CHECKPOINTS_DIR = "checkpoints"
#: Entries whose presence means a directory already holds a benchmark run (or an evaluation).
RUN_FILES = (CONFIG_FILE, RESULTS_FILE, CHECKPOINTS_DIR)


class RunDirError(ValueError):
    """A run directory is missing, is not a benchmark run's, or must not be written to."""


def run_dir_of(path: str) -> str:
    """The absolute run directory of `path` (a run directory or its checkpoints/ directory)."""
    path = os.path.abspath(path)
    return os.path.dirname(path) if os.path.basename(path) == CHECKPOINTS_DIR else path


def checkpoint_dir(run_dir: str, trainer: str) -> str:
    """Where the checkpoints of `trainer` in the run `run_dir` live."""
    return os.path.join(run_dir, CHECKPOINTS_DIR, trainer)


def load_run_config(run_dir: str) -> BenchmarkConfig:
    """The config.json of a run (either JSON form, see `BenchmarkConfig.from_dict`).

    Raises RunDirError if it is missing or not a benchmark config.
    """
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise RunDirError(f"{run_dir!r} is not a benchmark run directory (no {CONFIG_FILE})")
    try:
        with open(path) as f:
            return BenchmarkConfig.from_dict(json.load(f))
    except (ValueError, TypeError) as err:  # json.JSONDecodeError is a ValueError
        raise RunDirError(f"{path!r} is not a valid benchmark config ({err})") from err


def holds_run(path: str) -> bool:
    """Whether the directory `path` already holds a benchmark run (or an evaluation of one)."""
    return any(os.path.exists(os.path.join(path, f)) for f in RUN_FILES)


def check_replaceable(path: str) -> None:
    """Refuse to replace a directory whose config.json is not a benchmark config: overwriting
    replaces a benchmark run, never files of something else that happen to share a name."""
    if os.path.isfile(os.path.join(path, CONFIG_FILE)):
        try:
            load_run_config(path)
        except RunDirError as err:
            raise RunDirError(f"--out {path!r} holds a config.json that is not a benchmark run's; "
                              f"refusing to replace it ({err})") from err


def check_out(out: str, *, overwrite: bool, what: str = "run") -> None:
    """Refuse an output directory that is a file, cannot be created, or already holds a run
    (unless `overwrite`, and then only a benchmark run). `what` names what it would hold."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise RunDirError(f"--out {out!r} exists and is not a directory")
    if holds_run(out) and not overwrite:
        raise RunDirError(
            f"--out {out!r} already holds a {what} (config.json, results.json or checkpoints/); "
            f"pass --resume {out} to continue it, --overwrite (RunOptions.overwrite) to replace "
            f"it, or choose another --out")
    if overwrite:
        check_replaceable(out)
    ancestor = os.path.abspath(out)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor) or not os.access(ancestor, os.W_OK | os.X_OK):
        raise RunDirError(f"--out {out!r} cannot be created ({ancestor!r} is not a writable directory)")


def check_eval_out(out: str, run_dir: str) -> None:
    """Refuse to write an evaluation of the run in `run_dir` into that run directory itself."""
    if os.path.abspath(out) == run_dir_of(run_dir):
        raise RunDirError(
            f"an evaluation would overwrite the training run's config and results in "
            f"{run_dir_of(run_dir)!r}; write it elsewhere (default "
            f"{os.path.join(run_dir_of(run_dir), 'eval')!r})")


def clear_run(out: str, trainers: Iterable[str]) -> None:
    """Remove what a run writes from `out` before a fresh run: the results, plots and the
    checkpoint directories of `trainers` (checkpoints/ itself only if that leaves it empty)."""
    for trainer in trainers:
        shutil.rmtree(checkpoint_dir(out, trainer), ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.join(out, CHECKPOINTS_DIR))
    for name in (RESULTS_FILE, CURVES_FILE, RETURNS_FILE):
        if os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))


def write_json_atomic(path: str, obj) -> None:
    """Write `obj` as JSON to `path` through a temporary file and a rename (never half-written)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, allow_nan=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
