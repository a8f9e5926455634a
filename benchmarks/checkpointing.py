"""Training checkpoints with orbax: save every N iterations and at the end, resume from the last.

`Checkpointer(directory)` wraps an `orbax.checkpoint.CheckpointManager` (synchronous saves, the
two most recent kept). Each checkpoint is one step directory (the step = iterations done)
holding the training state pytree (`StandardSave`) and a JSON metadata dict (config, training
history) saved together. orbax writes a step into a temporary directory and renames it into
place only once complete, so a process killed at any moment (SIGKILL during a save included)
leaves the previous complete checkpoints intact and the partial one is invisible to
`latest_step` (and cleaned up by the next manager).

Errors are `CheckpointError` with a message naming the directory and what is wrong (missing,
empty, a step that cannot be read, a save that failed: "no space left on device" for a full
disk), never a deep orbax traceback. A failed save waits for orbax's background writes to end
and removes its partial step. orbax logs every exception of its background threads before
re-raising it in the caller; tensorstore reports read callbacks that arrive after a failed
restore has closed its event loop ("Event loop is closed"); and when one of a restore's parallel
reads fails first, asyncio logs the failures of its sibling reads that nobody awaited any more
("Future exception was never retrieved", a tensorstore error) when their futures are collected.
All three are noise about an error this module already raises, so `Checkpointer` drops exactly
those reports (`_quiet_orbax`).

Sharded state (`ssm_jax.sharding`): a state whose arrays span several processes (a
`jax.distributed` run) is saved as it is: every process calls `save` and orbax writes each
process's shards; `restore` onto a target of such arrays gives arrays with the target's
shardings (the same number of processes, so the same layout). A state that one process holds
entirely (one device, or a mesh of this process's devices) is saved from host copies as before.

Resuming (`restore(..., fallback=log)`) falls back to the newest readable step when the latest
cannot be read, moving the unreadable step aside to `<step>.unreadable` with a warning.
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import shutil
import sys
import threading
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp


#: Seconds a failed save waits for its other writer threads before removing the partial step.
ABANDON_WAIT_S = 60.0


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, empty, corrupted or does not match the run, or a
    checkpoint could not be written."""


class _OrbaxThreadErrors(logging.Filter):
    """Drops orbax's log of an exception in one of its background threads: the exception is
    re-raised in the thread waiting for the operation (and reported there, once)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR
                    and "_SignalingThread.run() raised an exception" in str(record.msg))


class _UnretrievedTensorstoreErrors(logging.Filter):
    """Drops asyncio's log of a never-awaited future that failed with a tensorstore error (the
    sibling reads of a failed restore, whose first error this module raises)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not str(record.msg).startswith("Future exception was never retrieved"):
            return True
        err = record.exc_info[1] if record.exc_info else None
        return not (err is not None and "tensorstore_spec" in str(err))


def _closed_loop_callback(unraisable) -> bool:
    """Whether an unraisable exception is a late tensorstore callback into the closed event
    loop of a failed orbax operation."""
    err, tb = unraisable.exc_value, unraisable.exc_traceback
    if not (isinstance(err, RuntimeError) and str(err) == "Event loop is closed"):
        return False
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_filename.endswith(os.path.join("asyncio", "base_events.py"))


def _quiet_orbax() -> None:
    """Install the three filters of the module docstring (again if something replaced them):
    logging filters on the "absl" and "asyncio" loggers, and a `sys.unraisablehook` that passes
    everything else on to the hook it replaces."""
    for name, kind in (("absl", _OrbaxThreadErrors), ("asyncio", _UnretrievedTensorstoreErrors)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())
    if getattr(sys.unraisablehook, "drops_closed_loop_callbacks", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable):
        if not _closed_loop_callback(unraisable):
            previous(unraisable)

    hook.drops_closed_loop_callbacks = True
    sys.unraisablehook = hook


def _reason(err: BaseException) -> str:
    """What went wrong in a failed orbax operation, in a few words: "no space left on device"
    for ENOSPC wherever it is in the exception chain (tensorstore reports it as
    os_error_code 28), else the exception's type and first line."""
    seen, e = [], err
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    for e in seen:
        text = str(e)
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or f"os_error_code='{errno.ENOSPC}'" in text \
                or os.strerror(errno.ENOSPC) in text:
            return "no space left on device"
    first = (str(err).strip().splitlines() or [""])[0][:300]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def _addressable(tree: Any) -> bool:
    """Whether this process holds every leaf of `tree` entirely (no multi-process global array)."""
    return all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(tree))


class Checkpointer:
    """Save and restore `(state, metadata)` checkpoints in `directory`.

    Args:
      directory: the checkpoint directory (one per trained model).
      create: create it if missing (training); False for resume/eval, where a missing
        directory is a `CheckpointError`.
      max_to_keep: number of most recent checkpoints kept.
      on_saved: called with the step after each checkpoint is complete on disk.
    """

    def __init__(self, directory: str | os.PathLike, *, create: bool = True, max_to_keep: int = 2,
                 on_saved: Optional[Callable[[int], None]] = None):
        _quiet_orbax()
        self.directory = os.path.abspath(os.fspath(directory))
        self._on_saved = on_saved
        if not create and not os.path.isdir(self.directory):
            raise CheckpointError(f"checkpoint directory {self.directory!r} does not exist")
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise CheckpointError(f"checkpoint path {self.directory!r} is a file, not a directory")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=create, enable_async_checkpointing=False)
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        except Exception as err:  # pragma: no cover - orbax raises various types
            raise CheckpointError(f"cannot open checkpoint directory {self.directory!r}: {err}") from err

    def latest_step(self) -> Optional[int]:
        """The last complete checkpoint's step (iterations done), or None if there is none."""
        self._manager.reload()
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        self._manager.reload()
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, metadata: dict) -> None:
        """Write checkpoint `step` (blocking until it is complete on disk), then `on_saved(step)`.

        A failed write (e.g. a full disk) is a `CheckpointError` naming the directory and the
        reason; the partial step is removed and the earlier checkpoints are untouched.
        """
        _quiet_orbax()
        step = int(step)
        if _addressable(state):  # else: global arrays of several processes, written shard by shard
            state = jax.device_get(state)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(metadata))
        threads = set(threading.enumerate())
        try:
            self._manager.save(step, args=args, force=True)
            self._manager.wait_until_finished()
        except Exception as err:
            self._abandon(step, threads)
            raise CheckpointError(f"cannot write checkpoint step {step} into {self.directory!r}: "
                                  f"{_reason(err)}") from err
        if self._on_saved is not None:
            self._on_saved(step)

    def _abandon(self, step: int, threads: set) -> None:
        """After a failed save: wait (up to `ABANDON_WAIT_S`) for the writer threads the save
        started (orbax's non-daemon threads, not in `threads`; the first failure does not stop
        the others), then remove the partial step."""
        deadline = time.monotonic() + ABANDON_WAIT_S
        try:
            self._manager.wait_until_finished()
        except Exception:  # noqa: BLE001 - the save's own error is the one reported
            pass
        for t in threading.enumerate():
            if t not in threads and not t.daemon and t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))
        for partial in glob.glob(os.path.join(glob.escape(self.directory), f"{step}.orbax-checkpoint-tmp*")):
            shutil.rmtree(partial, ignore_errors=True)

    def restore(self, target: Any, step: Optional[int] = None, *,
                fallback: Optional[Callable[[str], None]] = None) -> tuple[Any, dict, int]:
        """Restore `(state, metadata, step)` from `step` (default: the latest complete one).

        `target` is a state pytree with the structure, shapes and dtypes of the saved one (e.g.
        a freshly initialised state); the restored state has its structure.

        `fallback` (with `step` None, for resuming): if the latest step cannot be read, try the
        older ones, newest first; the unreadable steps newer than the one restored are renamed
        `<step>.unreadable` (so training saves them anew) and `fallback(message)` says so. If no
        step can be read, the latest one's error is raised.
        """
        _quiet_orbax()
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(
                f"no complete checkpoint in {self.directory!r} (empty, or only interrupted saves)")
        step = max(steps) if step is None else int(step)
        if step not in steps:
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory!r}; have {steps}")
        if _addressable(target):
            abstract = jax.tree.map(np.asarray, jax.device_get(target))
        else:  # restored onto the target's shardings, each process reading its shards
            abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype,
                                                                   sharding=getattr(x, "sharding", None)), target)
        candidates = sorted(steps, reverse=True) if fallback is not None else [step]
        errors = []
        for s in candidates:
            try:
                state, meta = self._restore_step(s, abstract)
            except CheckpointError as err:
                errors.append((s, err))
                continue
            if errors:
                self._set_aside_unreadable(errors, s, fallback)
            return state, meta, s
        raise errors[0][1]

    def _restore_step(self, step: int, abstract: Any) -> tuple[Any, dict]:
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        try:
            restored = self._manager.restore(step, args=args)
            state, meta = restored["state"], restored["meta"]
        except Exception as err:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory!r} is corrupted or does not match "
                f"this run's model ({type(err).__name__}: {str(err).splitlines()[0][:300]})") from err
        if meta is None or not isinstance(meta, dict):
            raise CheckpointError(f"checkpoint step {step} in {self.directory!r} has no metadata")
        t_leaves, t_def = jax.tree.flatten(abstract)
        r_leaves, r_def = jax.tree.flatten(state)
        if t_def != r_def or any(np.shape(a) != np.shape(b) for a, b in zip(t_leaves, r_leaves)):
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory!r} does not match this run's model "
                f"(different parameter structure or shapes)")
        return state, meta

    def _set_aside_unreadable(self, errors: list, restored: int, warn: Callable[[str], None]) -> None:
        moved = []
        for s, _ in errors:
            src = os.path.join(self.directory, str(s))
            dst = f"{src}.unreadable"
            if os.path.exists(dst):
                shutil.rmtree(dst)
            os.replace(src, dst)
            moved.append(dst)
        self._manager.reload()
        first = errors[0][1]
        warn(f"warning: {first}; moved the unreadable step(s) to {moved} and resuming from the "
             f"newest readable checkpoint, step {restored}")

    def close(self) -> None:
        self._manager.close()
