"""`python -m benchmarks.plot DIR`: redraw every plot of a run from the files it stored.

Reads DIR's results.json, per_task.csv and history.json (training histories; a run without it
gets them from its checkpoints through `benchmarks.load_run`) and writes the PNGs
`benchmarks.plotting` describes into DIR (or `--out`). `benchmarks.cartpole` draws its plots
with the same function (`plot_run`), so a redrawn plot is the run's own.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Optional

from benchmarks import plotting, rundir
from benchmarks.config import BenchmarkConfig
from benchmarks.methods import trainer_label, trainer_names


def read_per_task(run_dir: str) -> list:
    """per_task.csv's rows (dicts of strings); [] if the run has none."""
    path = os.path.join(run_dir, rundir.PER_TASK_FILE)
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_histories(run_dir: str, config: BenchmarkConfig) -> dict:
    """Trainer name -> training history: history.json, else the checkpoints' (`load_run`);
    a history stored without per-iteration `env_steps` gets them from its trainer."""
    path = os.path.join(run_dir, rundir.HISTORY_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            histories = json.load(f)
    else:
        from benchmarks.runs import load_run  # noqa: PLC0415 - JAX only when needed

        histories = load_run(run_dir).histories
    for name, h in histories.items():
        done = max((len(v) for k, v in h.items() if k.endswith("_per_seed")), default=0)
        if len(h.get("env_steps", ())) != done:
            from benchmarks.trainers import build_trainer  # noqa: PLC0415

            per_update = build_trainer(name, config).env_steps_per_update
            h["env_steps"] = [(i + 1) * per_update for i in range(done)]
        if h.get("wall_s") is not None:
            h["wall_s"] = [float("nan") if v is None else v for v in h["wall_s"]]
    return histories


def plot_run(run_dir: str, out: Optional[str] = None, histories: Optional[dict] = None) -> list:
    """Draw every plot of the run in `run_dir` into `out` (default `run_dir`); returns the paths
    written. `histories` (trainer -> history) stands in for history.json if given."""
    out = run_dir if out is None else out
    with open(os.path.join(run_dir, rundir.RESULTS_FILE)) as f:
        results = json.load(f)
    config = BenchmarkConfig.from_dict(results["config"])
    rows = read_per_task(run_dir)
    if histories is None:
        histories = read_histories(run_dir, config)
    labels = {t: trainer_label(t, config.methods) for t in trainer_names(config.methods)}
    returns = plotting.return_range(config.env_name, config.episode_steps)
    written = []
    for x, name in (("env_steps", rundir.CURVES_FILE), ("wall_s", rundir.CURVES_WALL_FILE)):
        path = os.path.join(out, name)
        if plotting.plot_training_curves(histories, labels, path, x=x):
            written.append(path)
    path = os.path.join(out, rundir.RETURNS_FILE)
    plotting.plot_returns(results["methods"], rows, path, returns=returns)
    written.append(path)
    path = os.path.join(out, rundir.SWITCH_FILE)
    if plotting.plot_switch_recovery(results["methods"], path):
        written.append(path)
    for fn, name in ((plotting.plot_adaptation, rundir.ADAPTATION_FILE),
                     (plotting.plot_per_task, rundir.PER_TASK_PLOT_FILE)):
        path = os.path.join(out, name)
        if rows and fn(rows, path, returns=returns):
            written.append(path)
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.plot", description=__doc__.split("\n\n")[1])
    p.add_argument("run", metavar="DIR", help="a run (or --eval_only evaluation) directory")
    p.add_argument("--out", default=None, help="where to write the PNGs [default: DIR]")
    args = p.parse_args(argv)
    if not os.path.isfile(os.path.join(args.run, rundir.RESULTS_FILE)):
        p.error(f"{args.run!r} holds no {rundir.RESULTS_FILE}: not a finished run")
    for path in plot_run(args.run, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
