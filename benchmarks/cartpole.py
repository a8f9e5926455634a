"""`python -m benchmarks.cartpole`: the end-to-end meta-RL benchmark on CartPole task distributions.

Meta-trains on the CartPole train split (`envs.CartPoleTasks`: varied pole length and mass,
cart mass, gravity, force magnitude; half the tasks with the force direction inverted) and
evaluates on held-out test-split tasks, then prints a table and writes `results.json`,
`config.json`, `training_curves.png` and `returns_by_task_kind.png` into `--out`.

Methods: one entry each in `benchmarks.methods.REGISTRY` (its trainer, label and evaluator;
`--help` lists them, `benchmarks.evaluation` says exactly how each is measured). Every method is
measured on the same held-out test tasks per seed, so methods are compared task by task.

Each trainer (`benchmarks.trainers`) is trained for `--num_seeds` seeds at once (`vmap`), in
jitted chunks of `--chunk_size` iterations (one progress line each), with orbax checkpoints every
`--checkpoint_every` iterations and at the end under `--out/checkpoints/<trainer>/`;
`--resume DIR` continues an interrupted run, `--eval_only --checkpoint DIR` re-evaluates one.
`python -m benchmarks.cartpole --help` documents every flag; `benchmarks.config` the
configuration, `benchmarks.rundir` the run directory.

Suites (`--suite NAME`, `envs.suites`): the task distribution and splits, observation mode,
reward and within-episode switch of the run; every trainer trains on the suite's train split
and every method is evaluated on its test split (`standard`, the default, is the benchmark as
it always was). `--suite all` runs the same config once per suite into `--out/<suite>/`
(`run_all_suites`) and prints one summary table (also `--out/summary.json`).

`--env_name Acrobot-v1|Pendulum-v1` runs the standard suite on `envs.EnvTasks(env_name)`
(`envs.suites.get_suite(suite, env_name)`), with windows of that environment's episode limit
(`BenchmarkConfig.episode_steps`) and action heads from its action space; the other suites are
CartPole's.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

from tqdm.auto import tqdm

from benchmarks import rundir
from benchmarks.cli import RunOptions, check_all_suites_out, is_primary, parse_args, run_main
from benchmarks.config import BenchmarkConfig
from benchmarks.methods import trainer_label, trainer_names
from benchmarks.trainers import Trainer, build_trainer
from envs.suites import SUITE_NAMES, get_suite

# JAX, orbax and the training/evaluation modules are imported by `load_trained` and `run`, after
# the command line is parsed and validated (`--help` and usage errors import none of them).


#: Whether this process prints progress: a multi-process run's processes other than process 0
#: are quiet (`run_command` sets it).
_printing = True


def log(msg: str) -> None:
    """Print a progress line on stdout above any tqdm bar (nothing in a quiet process)."""
    if _printing:
        tqdm.write(msg, file=sys.stdout)
        sys.stdout.flush()


def same_run(stored, current: dict) -> bool:
    """Whether checkpoint metadata `stored` was written by the run `current` describes: the
    same trainer and the same config once both configs are read by `BenchmarkConfig.from_dict`
    (so either JSON form of the config compares by its values)."""
    if not isinstance(stored, dict) or stored.get("model") != current["model"]:
        return False
    try:
        return BenchmarkConfig.from_dict(stored.get("config")) == BenchmarkConfig.from_dict(current["config"])
    except ValueError:
        return False


def load_trained(trainer: Trainer, directory: str, num_seeds: int) -> tuple:
    """`(states, history)` of the last checkpoint of `trainer` in `directory` (CheckpointError if
    it is missing, unreadable or another trainer's)."""
    import jax
    import numpy as np

    from benchmarks.checkpointing import Checkpointer, CheckpointError

    ckpt = Checkpointer(directory, create=False)
    # the restore target needs only the state's structure, shapes and dtypes: traced, not
    # compiled (compiling the trainers' init took seconds of a first load)
    shapes = jax.eval_shape(lambda k: jax.vmap(trainer.init)(jax.random.split(k, num_seeds)), jax.random.key(0))
    target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    states, meta, step = ckpt.restore(target)
    stored = meta.get("run", {}).get("model")
    if stored != trainer.name:
        raise CheckpointError(f"{directory!r} holds model {stored!r}, not {trainer.name!r}")
    if step != trainer.iterations:
        log(f"[{trainer.name}] note: evaluating the checkpoint at iteration {step} of {trainer.iterations}")
    return states, trainer.migrate_history(meta.get("history", {}))


def run(config: BenchmarkConfig, options: RunOptions) -> dict:
    """Train (or load), evaluate, write results; returns the results dict.

    Raises RunDirError if `options.out` must not be written (see `benchmarks.rundir`) and
    CheckpointError if a checkpoint to resume or evaluate is missing or does not match; an
    evaluation (`options.eval_only`) loads every checkpoint before it writes anything.

    Several processes (`options.distributed`, after `jax.distributed` is initialised): every
    process checks the run directory, trains its share and evaluates (on its own device, from
    the gathered states); only process 0 (`benchmarks.cli.is_primary`) changes the run directory,
    with barriers between the checks, its changes and the training, so every process sees the
    same directory.
    """
    import jax

    from benchmarks import compile_time
    from ssm_jax import sharding

    compile_time.install()
    t_start = time.perf_counter()
    cache_before = compile_time.cache_counts()
    out = options.out
    primary = is_primary(options.distributed)
    fresh = not options.eval_only and not options.resume
    source = rundir.run_dir_of(options.checkpoint or out) if options.eval_only else out
    if primary:
        rundir.recover(source, log=log)
    sharding.barrier("run directory recovered")
    if options.eval_only:
        rundir.check_eval_out(out, source)
    if fresh or options.eval_only:
        rundir.check_out(out, overwrite=options.overwrite,
                         what="run or evaluation" if options.eval_only else "run")
    if options.resume:
        rundir.check_resumable(out, trainer_names(config.methods))
    sharding.barrier("run directory checked")  # no process changes it before every process checked it
    if options.resume and primary:
        rundir.remove_stale_temporaries(out)
    from benchmarks.training import training_mesh

    devices = options.devices or (jax.device_count() if options.distributed else 1)
    mesh = training_mesh(devices, config.num_seeds)
    trainers = {name: build_trainer(name, config, mesh=mesh) for name in trainer_names(config.methods)}
    states, histories = {}, {}
    if options.eval_only:  # every checkpoint loads before `out` is touched
        for name, trainer in trainers.items():
            states[name], histories[name] = load_trained(
                trainer, rundir.checkpoint_dir(source, name), config.num_seeds)
    replacing = []  # the run an --overwrite replaces is kept aside until this one has a checkpoint
    if fresh and primary:  # a replaced run's checkpoints and results never mix with this one's
        os.makedirs(out, exist_ok=True)
        rundir.remove_stale_temporaries(out)
        if rundir.set_aside(out):
            replacing.append(out)
        rundir.write_json_atomic(os.path.join(out, rundir.CONFIG_FILE), config.to_dict())
    elif options.eval_only and options.overwrite and primary and os.path.isdir(out):
        rundir.remove_stale_temporaries(out)
        if rundir.set_aside(out):  # the replaced evaluation stays until the new one is written
            replacing.append(out)
    sharding.barrier("run directory ready")

    def saved(trainer_name: str, step: int) -> None:
        if not primary:
            return
        rundir.record_checkpoint(out, trainer_name, step)
        if replacing:
            rundir.discard_previous(replacing.pop())

    try:
        results = _train_and_evaluate(config, options, trainers, states, histories, source, t_start, saved,
                                      cache_before, mesh, primary)
    except BaseException:
        if replacing:  # failed or stopped before its first checkpoint (or, evaluating, before
            rundir.restore_previous(replacing.pop())  # its results): the old run comes back
        raise
    if replacing:  # an evaluation writes no checkpoint: the replaced one goes once it is complete
        rundir.discard_previous(replacing.pop())
    return results


def _train_and_evaluate(config: BenchmarkConfig, options: RunOptions, trainers: dict, states: dict,
                        histories: dict, source: str, t_start: float, saved, cache_before: dict,
                        mesh=None, primary: bool = True) -> dict:
    """The rest of `run`: train every trainer (`states`/`histories` already hold the loaded
    ones of an evaluation), evaluate, write the results; `saved(trainer, step)` follows each
    complete checkpoint; `cache_before`: `compile_time.cache_counts()` when the run started;
    `mesh`: the training mesh (`benchmarks.training.training_mesh`, None: one device);
    `primary`: whether this process writes metrics and results (see `run`)."""
    import jax

    from benchmarks import compile_time
    from ssm_jax import sharding
    from benchmarks.checkpointing import Checkpointer
    from benchmarks.methods import measure
    from benchmarks.metrics_log import MetricsLog
    from benchmarks.results import json_safe, method_results, per_task_rows, print_table, versions, write_csv
    from benchmarks.training import TrainResult, train

    out = options.out
    timing_train = {}
    log(f"benchmarks.cartpole: suite {config.suite}, methods {list(config.methods)}, {config.num_seeds} seeds, "
        f"jax {jax.__version__} on {jax.default_backend()} ({os.cpu_count()} cpus), "
        f"{1 if mesh is None else mesh.size} device(s), out={out}")
    compile_s = run_s = 0.0
    env_steps = 0
    for name, trainer in trainers.items():
        if options.eval_only:
            break
        directory = rundir.checkpoint_dir(source, name)
        result: TrainResult = train(
            name, init=trainer.init, update=trainer.update, seed=config.seed,
            num_seeds=config.num_seeds, iterations=trainer.iterations, chunk_size=config.chunk_size,
            env_steps_per_update=trainer.env_steps_per_update,
            checkpointer=Checkpointer(directory, create=True,
                                      on_saved=lambda step, name=name: saved(name, step)),
            checkpoint_every=config.checkpoint_every,
            metadata={"config": config.to_dict(), "model": name},
            resume=options.resume is not None, per_seed=(trainer.return_metric,),
            same_run=same_run, migrate_history=trainer.migrate_history, log=log,
            label=trainer_label(name, config.methods),
            metrics_log=MetricsLog(out, name, tensorboard=options.tensorboard) if primary else None, mesh=mesh)
        states[name] = result.states
        histories[name] = result.history
        compile_s += result.compile_s
        run_s += result.run_s
        env_steps += result.env_steps
        timing_train[name] = {"compile_s": result.compile_s, "run_s": result.run_s,
                              "env_steps": result.env_steps, "resumed_from": result.resumed_from,
                              "env_steps_per_s": result.env_steps / max(result.run_s, 1e-9)}
        log(f"[{trainer_label(name, config.methods)}] trained: compile {result.compile_s:.1f}s, run {result.run_s:.1f}s, "
            f"{result.env_steps / max(result.run_s, 1e-9):,.0f} env steps/s")
    t_eval = time.perf_counter()
    log(f"evaluating on {config.evaluation.num_tasks} held-out test tasks x {config.num_seeds} seeds ...")
    compiled_before = compile_time.compile_seconds()
    if mesh is not None:  # evaluation runs on one device (in every process), from host copies of the
        states = {name: sharding.to_host(s) for name, s in states.items()}  # trained states
    measurement = measure(config, trainers, states, log=log)
    methods = method_results(config, trainers, measurement)
    eval_s = time.perf_counter() - t_eval
    eval_compile_s = compile_time.compile_seconds() - compiled_before
    wall = time.perf_counter() - t_start
    cache_counts = compile_time.cache_counts()
    results = {
        "env_name": config.env_name,
        "suite": config.suite,
        "suite_definition": get_suite(config.suite, config.env_name).to_dict(),
        "config": config.to_dict(),
        "methods": methods,
        "timing": {"wall_s": wall, "compile_s": compile_s + eval_compile_s, "train_compile_s": compile_s,
                   "train_run_s": run_s, "eval_compile_s": eval_compile_s, "eval_s": eval_s,
                   "env_steps": env_steps + measurement.env_steps, "train_env_steps": env_steps,
                   "eval_env_steps": measurement.env_steps,
                   "env_steps_per_s": env_steps / run_s if run_s > 0 else None,
                   "per_model": timing_train, "eval_only": options.eval_only,
                   "compile_cache": compile_time.active_cache(),
                   "fast_compile": compile_time.fast_compile_on(),
                   "devices": 1 if mesh is None else int(mesh.size),
                   "processes": jax.process_count(),
                   "compile_cache_hits": cache_counts["hits"] - cache_before["hits"],
                   "compile_cache_writes": cache_counts["writes"] - cache_before["writes"]},
        "versions": versions(),
        "command": " ".join(["python -m benchmarks.cartpole"] + sys.argv[1:]),
    }
    results = json_safe(results)
    if not primary:
        return results
    if options.eval_only:  # an evaluation writes nothing until it has its results
        os.makedirs(out, exist_ok=True)
        rundir.write_json_atomic(os.path.join(out, rundir.CONFIG_FILE), config.to_dict())
    rundir.write_json_atomic(os.path.join(out, rundir.RESULTS_FILE), results)
    rundir.write_json_atomic(os.path.join(out, rundir.HISTORY_FILE), json_safe(histories))
    write_csv(os.path.join(out, rundir.PER_TASK_FILE), per_task_rows(config, measurement))
    from benchmarks.plot import plot_run

    plot_run(out, histories=json_safe(histories))
    print_table(methods, log=log)
    log(f"\nwall {wall:.0f}s (compile {compile_s + eval_compile_s:.0f}s, train {run_s:.0f}s, eval "
        f"{eval_s:.0f}s of which compile {eval_compile_s:.0f}s); "
        f"wrote {os.path.join(out, rundir.RESULTS_FILE)} and plots")
    return results


SUMMARY_FILE = "summary.json"


def run_all_suites(config: BenchmarkConfig, options: RunOptions) -> dict:
    """`--suite all`: `run(config with suite s, out=options.out/s)` for every suite s of
    `envs.suites.SUITE_NAMES`, in order; then one summary table (every method's return and its
    paired difference to non_adaptive, per suite) on stdout and in `options.out/summary.json`.
    Returns suite name -> that run's results dict."""
    from benchmarks.results import print_suite_summary, suite_summary

    from ssm_jax import sharding

    primary = is_primary(options.distributed)
    if primary:  # recovers and checks; the other processes check once it has
        check_all_suites_out(options.out, overwrite=options.overwrite)
    sharding.barrier("suite directories checked")
    if not primary:
        check_all_suites_out(options.out, overwrite=options.overwrite, recover=False)
    results = {}
    for name in SUITE_NAMES:
        log(f"\n=== suite {name} ({SUITE_NAMES.index(name) + 1}/{len(SUITE_NAMES)}) ===")
        results[name] = run(config.with_values({"suite": name}),
                            dataclasses.replace(options, out=os.path.join(options.out, name), all_suites=False))
    summary = suite_summary(results)
    if not primary:
        return results
    os.makedirs(options.out, exist_ok=True)
    rundir.write_json_atomic(os.path.join(options.out, SUMMARY_FILE), summary)
    print_suite_summary(summary, log=log)
    log(f"\nwrote {os.path.join(options.out, SUMMARY_FILE)}")
    return results


def run_command(config: BenchmarkConfig, options: RunOptions) -> dict:
    """`run_all_suites` for `--suite all` (`options.all_suites`), else `run`; with JAX's persistent
    compilation cache in `options.compile_cache` (None: off) for the whole command
    (`benchmarks.compile_time.persistent_cache`; results.json's timing records the directory,
    null when off, and the cache's hits and writes). A config with `fast_compile` (`--quick`'s)
    compiles with most of XLA's optimisations off (`compile_time.fast_compile`; results.json's
    timing records whether the run's programs did). A multi-process run (`options.distributed`)
    joins its processes first (`ssm_jax.sharding.initialize`); only process 0 prints."""
    global _printing
    from benchmarks import compile_time
    from ssm_jax import sharding

    if options.distributed is not None:
        sharding.initialize(**options.distributed)
        _printing = is_primary(options.distributed)
    with compile_time.persistent_cache(options.compile_cache, log=log), \
            compile_time.fast_compile(config.fast_compile):
        return run_all_suites(config, options) if options.all_suites else run(config, options)


def main(argv=None) -> int:
    """The command line: parse and validate `argv` (usage errors exit 2 before JAX is imported),
    then `run_command`; a runtime fault or Ctrl-C ends in one line on stderr
    (`benchmarks.cli.run_main`)."""
    return run_main(argv, run_command)


if __name__ == "__main__":
    sys.exit(main())
