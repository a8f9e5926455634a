"""Training metrics a user can load into their tools: a CSV per trainer, TensorBoard on request.

`MetricsLog(run_dir, trainer, tensorboard=...)` is handed to `benchmarks.training.train`, which
calls `start(history)` once (a resumed run's restored history) and `write(history, first, stop)`
after every chunk with the iterations `[first, stop)` it added. Files, in the run directory:

  metrics/<trainer>.csv      one row per training iteration: `iteration` (1-based), `env_steps`
                             and `wall_s` (per seed, cumulative: see `benchmarks.training`), the
                             mean over seeds of every scalar metric, `<metric>_seed<s>` for the
                             metrics with a per-seed series, `return_by_step_<k>` for MAML.
  tensorboard/<trainer>/     (with `tensorboard=True`) the same scalars through tensorboardX's
                             `SummaryWriter`, step = iteration; per-seed series as
                             `<metric>/seed<s>`.

On resume the CSV is rewritten from the checkpoint's history (so rows of iterations a killed run
logged after its last checkpoint are dropped and logged again), and the TensorBoard writer
purges events from the resumed iteration on (`purge_step`).
"""

from __future__ import annotations

import csv
import math
import os
from typing import Optional

from benchmarks.rundir import atomic_write

METRICS_DIR = "metrics"
TENSORBOARD_DIR = "tensorboard"


def csv_path(run_dir: str, trainer: str) -> str:
    return os.path.join(run_dir, METRICS_DIR, f"{trainer}.csv")


def tensorboard_dir(run_dir: str, trainer: str) -> str:
    return os.path.join(run_dir, TENSORBOARD_DIR, trainer)


def history_row(history: dict, i: int) -> dict:
    """The logged values of iteration `i` (0-based) of a training history (see the module
    docstring for the columns); a metric the history lacks at `i` is left out."""
    row = {"iteration": i + 1}
    for key in ("env_steps", "wall_s"):
        if len(history.get(key, ())) > i:
            row[key] = history[key][i]
    for key in sorted(history):
        series = history[key]
        if key in ("env_steps", "wall_s") or len(series) <= i:
            continue
        value = series[i]
        if key.endswith("_per_seed"):
            for s, v in enumerate(value):
                row[f"{key[:-len('_per_seed')]}_seed{s}"] = v
        elif key == "return_by_step":
            for k, v in enumerate(value):
                row[f"return_by_step_{k}"] = v
        elif not isinstance(value, (list, tuple)):
            row[key] = value
    return row


class MetricsLog:
    """The CSV (always) and TensorBoard (if `tensorboard`) logs of one trainer of a run."""

    def __init__(self, run_dir: str, trainer: str, *, tensorboard: bool = False):
        self.path = csv_path(run_dir, trainer)
        self.tensorboard_dir = tensorboard_dir(run_dir, trainer) if tensorboard else None
        self._columns: Optional[list] = None
        self._writer = None

    def start(self, history: dict) -> None:
        """Begin the logs with the iterations already in `history` (a resumed run's)."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        done = len(history.get("env_steps", ()))
        rows = [history_row(history, i) for i in range(done)]
        self._columns = list(dict.fromkeys(k for r in rows for k in r)) if rows else None
        with atomic_write(self.path, newline="") as f:
            if rows:
                w = csv.DictWriter(f, fieldnames=self._columns, restval="")
                w.writeheader()
                w.writerows(rows)
        if self.tensorboard_dir is not None:
            from tensorboardX import SummaryWriter  # noqa: PLC0415 - optional extra "tensorboard"

            self._writer = SummaryWriter(logdir=self.tensorboard_dir, purge_step=done + 1 if done else None)

    def write(self, history: dict, first: int, stop: int) -> None:
        """Append iterations `[first, stop)` (0-based) of `history`."""
        rows = [history_row(history, i) for i in range(first, stop)]
        if not rows:
            return
        if self._columns is None:
            self._columns = list(rows[0])
            with open(self.path, "w", newline="") as f:
                csv.DictWriter(f, fieldnames=self._columns).writeheader()
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self._columns, restval="", extrasaction="ignore").writerows(rows)
        if self._writer is not None:
            for row in rows:
                step = row["iteration"]
                for key, value in row.items():
                    if key == "iteration" or value is None or not math.isfinite(value):
                        continue
                    tag = key
                    base, sep, seed = key.rpartition("_seed")
                    if sep and seed.isdigit():
                        tag = f"{base}/seed{seed}"
                    self._writer.add_scalar(tag, value, global_step=step)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
