"""Run directories of `benchmarks.cartpole`: what a run writes, and the checks that protect runs.

A run directory holds `config.json` (the run's `BenchmarkConfig.to_dict()`), `results.json`,
PNG plots, `checkpoints/<trainer>/` (orbax) and `progress.json` (trainer -> the iteration of its
last complete checkpoint, written after each one). An evaluation of a run (`--eval_only`) writes
the same files except checkpoints, by default into `<run>/eval/`.

Both the command line (`benchmarks.cli`, before anything is compiled) and `benchmarks.cartpole.run`
(for library callers) use these checks; they raise `RunDirError`, a ValueError the CLI turns into
a usage error (exit status 2).

Nothing a user saved is lost or half-written:
- every file is written through a temporary file and a rename (`atomic_write`); a failed write
  (a full disk) removes its temporary file and leaves the previous file as it was;
- `--overwrite` does not delete the run it replaces: `set_aside` moves its files into
  `<out>/.previous-run/`; the new run `discard_previous` once it has written its first complete
  checkpoint, and `restore_previous` puts the old run back if it fails or is stopped before.
  A process killed in between leaves `.previous-run/`, which `recover` (run by every command
  that reads or writes the directory) moves back;
- `check_resumable` refuses to resume a run whose checkpoints are gone (rather than retraining
  it from iteration 0).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import Callable, Iterable, Optional

from benchmarks.config import BenchmarkConfig
from benchmarks.trainers import TRAINERS

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
CURVES_FILE = "training_curves.png"
RETURNS_FILE = "returns_by_task_kind.png"
CURVES_WALL_FILE = "training_curves_wall.png"
ADAPTATION_FILE = "adaptation.png"
PER_TASK_PLOT_FILE = "per_task_physics.png"
SWITCH_FILE = "switch_recovery.png"
#: One row per (method, seed, test task): `benchmarks.results.per_task_rows`.
PER_TASK_FILE = "per_task.csv"
#: Trainer name -> its training history (`benchmarks.training`), as the run ended.
HISTORY_FILE = "history.json"
#: Per-trainer metric logs (`benchmarks.metrics_log`): metrics/<trainer>.csv, tensorboard/<trainer>/.
LOG_DIRS = ("metrics", "tensorboard")
CHECKPOINTS_DIR = "checkpoints"
#: Trainer name -> iteration of its last complete checkpoint (`record_checkpoint`).
PROGRESS_FILE = "progress.json"
#: Entries whose presence means a directory already holds a benchmark run (or an evaluation).
RUN_FILES = (CONFIG_FILE, RESULTS_FILE, CHECKPOINTS_DIR)
#: Files a run writes at its top level (besides config.json and the per-trainer entries).
OUTPUT_FILES = (RESULTS_FILE, CURVES_FILE, RETURNS_FILE, PER_TASK_FILE, HISTORY_FILE, CURVES_WALL_FILE,
                ADAPTATION_FILE, PER_TASK_PLOT_FILE, SWITCH_FILE, PROGRESS_FILE)
#: Where `set_aside` keeps the run an `--overwrite` replaces until the new run has a checkpoint.
PREVIOUS_DIR = ".previous-run"


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


def run_entries(out: str, trainers: Iterable[str]) -> list:
    """The paths (relative to `out`) of what a run of `trainers` writes there and that exist:
    config.json, the results, plots and progress files, and each trainer's checkpoint
    directory and metric logs. Other files (another tool's, an evaluation in `eval/`) are not
    a run's."""
    names = [CONFIG_FILE, *OUTPUT_FILES]
    for trainer in trainers:
        names.append(os.path.join(CHECKPOINTS_DIR, trainer))
        for logs in LOG_DIRS:
            names += [os.path.join(logs, trainer), os.path.join(logs, f"{trainer}.csv")]
    return [n for n in names if os.path.lexists(os.path.join(out, n))]


def _remove_empty_dirs(out: str) -> None:
    for name in (*LOG_DIRS, CHECKPOINTS_DIR):
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(out, name))


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def clear_run(out: str, trainers: Iterable[str]) -> None:
    """Remove what a run of `trainers` writes from `out` (`run_entries`; checkpoints/ and the
    log directories themselves only if that leaves them empty)."""
    for name in run_entries(out, trainers):
        _remove(os.path.join(out, name))
    _remove_empty_dirs(out)


def set_aside(out: str) -> bool:
    """Move the run in `out` (`run_entries` of every trainer) into `out/.previous-run/`, with
    the same layout; returns whether there was anything to move. The entries are moved into
    `.previous-run.partial/` first (renames within `out`), which is renamed once all are in:
    a kill part-way leaves the partial directory, which `recover` moves back without touching
    anything else (the new run has not written anything yet). The run stays in
    `.previous-run/` until `discard_previous` or `restore_previous`."""
    recover(out)
    names = run_entries(out, TRAINERS)
    if not names:
        return False
    previous = os.path.join(out, PREVIOUS_DIR)
    staging = previous + ".partial"
    for name in names:
        os.makedirs(os.path.dirname(os.path.join(staging, name)), exist_ok=True)
        os.replace(os.path.join(out, name), os.path.join(staging, name))
    os.replace(staging, previous)
    _remove_empty_dirs(out)
    return True


def discard_previous(out: str) -> None:
    """Delete the run `set_aside` kept (the new run has a complete checkpoint). It is renamed
    first, so a process killed while deleting never leaves a half-deleted `.previous-run/` that
    `recover` would put back."""
    previous = os.path.join(out, PREVIOUS_DIR)
    doomed = previous + ".discarded"
    if os.path.isdir(previous):
        if os.path.exists(doomed):
            shutil.rmtree(doomed)
        os.replace(previous, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _move_back(kept: str, out: str) -> None:
    for name in run_entries(kept, TRAINERS):
        target = os.path.join(out, name)
        if os.path.lexists(target):
            _remove(target)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(os.path.join(kept, name), target)
    shutil.rmtree(kept)


def restore_previous(out: str) -> bool:
    """Put the run `set_aside` kept back into `out`, replacing what the new run wrote there
    (`clear_run`; after an interrupted `set_aside`, only the entries it had moved go back);
    returns whether there was one."""
    previous = os.path.join(out, PREVIOUS_DIR)
    shutil.rmtree(previous + ".discarded", ignore_errors=True)
    if os.path.isdir(previous + ".partial"):
        _move_back(previous + ".partial", out)
        return True
    if not os.path.isdir(previous):
        return False
    clear_run(out, TRAINERS)
    _move_back(previous, out)
    return True


def recover(out: str, log: Optional[Callable[[str], None]] = None) -> bool:
    """If an `--overwrite` of `out` was killed before the new run's first checkpoint, put the
    run it replaced back (`restore_previous`) and say so through `log`; returns whether it did."""
    previous = os.path.join(out, PREVIOUS_DIR)
    if not (os.path.isdir(previous) or os.path.isdir(previous + ".partial")):
        shutil.rmtree(previous + ".discarded", ignore_errors=True)
        return False
    restore_previous(out)
    if log is not None:
        log(f"note: restored the run in {out!r} that an interrupted --overwrite had set aside "
            f"before the new run saved a checkpoint")
    return True


def checkpoint_steps(directory: str) -> list:
    """The steps of the checkpoint directories in `directory` (integer-named subdirectories;
    orbax's temporary directories of interrupted saves are not steps), without reading them."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(n) for n in os.listdir(directory)
                  if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def load_progress(run_dir: str) -> dict:
    """`progress.json`: trainer name -> iteration of its last complete checkpoint ({} if none)."""
    path = os.path.join(run_dir, PROGRESS_FILE)
    try:
        with open(path) as f:
            progress = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise RunDirError(f"{path!r} cannot be read ({err})") from None
    if not isinstance(progress, dict):
        raise RunDirError(f"{path!r} is not a table of trainer -> iteration")
    return progress


def record_checkpoint(run_dir: str, trainer: str, step: int) -> None:
    """Note in `progress.json` that `trainer` has a complete checkpoint at iteration `step`."""
    progress = load_progress(run_dir)
    progress[trainer] = int(step)
    write_json_atomic(os.path.join(run_dir, PROGRESS_FILE), progress)


def check_resumable(run_dir: str, trainers: Iterable[str]) -> None:
    """Refuse to resume the run in `run_dir` if a trainer that had saved a checkpoint (per
    `progress.json`, or every trainer of a finished run, one with results.json) has none left:
    resuming would silently retrain it from iteration 0."""
    progress = load_progress(run_dir)
    finished = os.path.isfile(os.path.join(run_dir, RESULTS_FILE))
    for trainer in trainers:
        had = progress.get(trainer)
        if (had is None and not finished) or checkpoint_steps(checkpoint_dir(run_dir, trainer)):
            continue
        when = f"at iteration {had}" if had is not None else "(the run finished)"
        raise RunDirError(
            f"--resume {run_dir!r}: {trainer} had a checkpoint {when} but "
            f"{checkpoint_dir(run_dir, trainer)!r} holds none (moved or deleted); refusing to "
            f"retrain it from iteration 0: restore the checkpoints, or start over with --overwrite")


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", **open_kwargs):
    """`open(path)` for writing through `<path>.tmp-<pid>`, renamed onto `path` once the block
    has written it completely (flushed and fsynced). If anything fails (a full disk: OSError
    ENOSPC) the temporary file is removed, `path` keeps its previous content, and the error is
    re-raised naming `path`."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(err, OSError) and err.filename is None and err.errno is not None:
            raise OSError(err.errno, f"cannot write {path!r}: {err.strerror or os.strerror(err.errno)}") from err
        raise


def remove_stale_temporaries(out: str) -> None:
    """Remove the `<file>.tmp-<pid>` files a killed process left beside the files a run writes."""
    for root in (out, *(os.path.join(out, d) for d in LOG_DIRS)):
        if not os.path.isdir(root):
            continue
        for name in os.listdir(root):
            stem, sep, pid = name.rpartition(".tmp-")
            if sep and pid.isdigit() and int(pid) != os.getpid() and stem:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(root, name))


def write_json_atomic(path: str, obj) -> None:
    """Write `obj` as JSON to `path` (`atomic_write`: never half-written; a failed write leaves
    no temporary file and the previous `path` intact)."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, allow_nan=True)
