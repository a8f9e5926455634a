"""Training checkpoints with orbax: save every N iterations and at the end, resume from the last.

`Checkpointer(directory)` wraps an `orbax.checkpoint.CheckpointManager` (synchronous saves, the
two most recent kept). Each checkpoint is one step directory (the step = iterations done)
holding the training state pytree (`StandardSave`) and a JSON metadata dict (config, training
history) saved together. orbax writes a step into a temporary directory and renames it into
place only once complete, so a process killed at any moment (SIGKILL during a save included)
leaves the previous complete checkpoints intact and the partial one is invisible to
`latest_step` (and cleaned up by the next manager).

Errors are `CheckpointError` with a message naming the directory and what is wrong (missing,
empty, or a step that cannot be read), never a deep orbax traceback.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, empty, corrupted or does not match the run."""


class Checkpointer:
    """Save and restore `(state, metadata)` checkpoints in `directory`.

    Args:
      directory: the checkpoint directory (one per trained model).
      create: create it if missing (training); False for resume/eval, where a missing
        directory is a `CheckpointError`.
      max_to_keep: number of most recent checkpoints kept.
    """

    def __init__(self, directory: str | os.PathLike, *, create: bool = True, max_to_keep: int = 2):
        self.directory = os.path.abspath(os.fspath(directory))
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
        """Write checkpoint `step` (blocking until it is complete on disk)."""
        state = jax.device_get(state)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(metadata))
        self._manager.save(int(step), args=args, force=True)
        self._manager.wait_until_finished()

    def restore(self, target: Any, step: Optional[int] = None) -> tuple[Any, dict, int]:
        """Restore `(state, metadata, step)` from `step` (default: the latest complete one).

        `target` is a state pytree with the structure, shapes and dtypes of the saved one (e.g.
        a freshly initialised state); the restored state has its structure.
        """
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(
                f"no complete checkpoint in {self.directory!r} (empty, or only interrupted saves)")
        step = max(steps) if step is None else int(step)
        if step not in steps:
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory!r}; have {steps}")
        abstract = jax.tree.map(np.asarray, jax.device_get(target))
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
        return state, meta, step

    def close(self) -> None:
        self._manager.close()
