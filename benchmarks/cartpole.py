"""`python -m benchmarks.cartpole`: the end-to-end meta-RL benchmark on CartPole task distributions.

Meta-trains on the CartPole train split (`envs.CartPoleTasks`: varied pole length and mass,
cart mass, gravity, force magnitude; half the tasks with the force direction inverted) and
evaluates on held-out test-split tasks, then prints a table and writes `results.json`,
`config.json`, `training_curves.png` and `returns_by_task_kind.png` into `--out`.

Methods (see `benchmarks.evaluation` for exactly how each is measured):
  non_adaptive       PPO MLP policy trained across train tasks (domain randomisation);
  in_context         RL^2: SSM policy on `envs.context.ContextWrapper` observations, PPO over
                     windows of several episodes with the carry kept across episodes;
  maml_zero_shot     MAML-RL SSM policy (Meta-SGD, LVC inner step), before adaptation;
  maml_adapted       the same after `num_inner_steps` inner steps on support rollouts of the
                     test task (returns after 0..3 steps are reported);
  test_time_adapted  the MAML SSM policy adapted online by `adapt` during evaluation rounds;
  maml_adapted_mlp   the MAML pipeline with an MLP policy (what the SSM contributes).

Each trainer (`benchmarks.trainers`) is trained for `--num_seeds` seeds at once (`vmap`), in
jitted chunks of `--chunk_size` iterations (one progress line each), with orbax checkpoints every
`--checkpoint_every` iterations and at the end under `--out/checkpoints/<trainer>/`;
`--resume DIR` continues an interrupted run, `--eval_only --checkpoint DIR` re-evaluates one.
`python -m benchmarks.cartpole --help` documents every flag; `benchmarks.config` the
configuration, `benchmarks.rundir` the run directory.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from importlib import metadata as importlib_metadata

import jax
import numpy as np

from benchmarks import compile_time, rundir
from benchmarks import evaluation as ev
from benchmarks.checkpointing import Checkpointer, CheckpointError
from benchmarks.cli import RunOptions, parse_args
from benchmarks.config import BenchmarkConfig, trainer_of, trainers
from benchmarks.rundir import RunDirError
from benchmarks.stats import paired_difference, summarize
from benchmarks.trainers import TRAINERS, Trainer, build_trainer
from benchmarks.training import TrainResult, train


PACKAGES = ("jax", "jaxlib", "flax", "optax", "gymnax", "chex", "orbax-checkpoint", "numpy",
            "matplotlib")


def log(msg: str) -> None:
    print(msg, flush=True)


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
    ckpt = Checkpointer(directory, create=False)
    target = jax.jit(jax.vmap(trainer.init))(jax.random.split(jax.random.key(0), num_seeds))
    states, meta, step = ckpt.restore(target)
    stored = meta.get("run", {}).get("model")
    if stored != trainer.name:
        raise CheckpointError(f"{directory!r} holds model {stored!r}, not {trainer.name!r}")
    if step != trainer.iterations:
        log(f"[{trainer.name}] note: evaluating the checkpoint at iteration {step} of {trainer.iterations}")
    return states, trainer.migrate_history(meta.get("history", {}))


def _curves(trainers: dict, histories: dict) -> dict:
    return {name: {label: histories[name].get(key, []) for label, key in t.curves.items()}
            for name, t in trainers.items()}


def versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform(),
           "machine": platform.machine(), "cpu_count": os.cpu_count(),
           "jax_backend": jax.default_backend()}
    for p in PACKAGES:
        try:
            out[p] = importlib_metadata.version(p)
        except importlib_metadata.PackageNotFoundError:  # pragma: no cover
            out[p] = None
    return out


def _seed_slice(states, s):
    return jax.tree.map(lambda x: x[s], states)


def _clean(x):
    """JSON-safe floats (NaN -> None)."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    return x


# ------------------------------------------------------------------------------------ evaluation
def evaluate(config: BenchmarkConfig, trainers: dict, states: dict) -> tuple[dict, int]:
    """Evaluate every configured method on the same test tasks per seed; returns (methods, env steps)."""
    c = config
    per_method = {m: [] for m in c.methods}
    extras = {m: [] for m in c.methods}
    kinds = []
    env_steps = 0
    n, e = c.evaluation.num_tasks, c.evaluation.num_envs
    for s in range(c.num_seeds):
        key = ev.eval_key(c.seed, s)
        tasks = ev.test_tasks(key, n)
        kinds.append(np.asarray(ev.task_kinds(tasks)))
        cache = {}
        for method in c.methods:
            trainer = trainers[trainer_of(method)]
            state = _seed_slice(states[trainer.name], s)
            if method == "non_adaptive":
                r = ev.evaluate_policy(key, trainer.policy, state.params, tasks, num_envs=e, env=trainer.env)
                per_method[method].append(np.asarray(r))
                env_steps += n * e * ev.EPISODE_STEPS
            elif method == "in_context":
                out = ev.evaluate_in_context(key, trainer.policy, state.params, tasks, num_envs=e, env=trainer.env)
                per_method[method].append(np.asarray(out["after_context"]))
                extras[method].append(np.asarray(out["first_episode"]))
                env_steps += n * e * 2 * ev.EPISODE_STEPS
            elif method in ("maml_zero_shot", "maml_adapted", "maml_adapted_mlp"):
                if trainer.name not in cache:
                    cache[trainer.name] = np.asarray(ev.evaluate_maml(
                        key, trainer.algo, state, tasks, num_inner_steps=c.reported_inner_steps, num_envs=e))
                    k = c.reported_inner_steps
                    env_steps += n * ((k + 1) * e * ev.EPISODE_STEPS
                                      + k * trainer.algo.config.support_envs * trainer.algo.config.support_steps)
                by_step = cache[trainer.name]
                col = 0 if method == "maml_zero_shot" else c.maml.rl.num_inner_steps
                per_method[method].append(by_step[:, col])
                extras[method].append(by_step)
            elif method == "test_time_adapted":
                r = np.asarray(ev.evaluate_test_time(key, trainer.policy, state, tasks,
                                                     num_rounds=c.evaluation.test_time_rounds, num_envs=e,
                                                     env=trainer.env, baseline=trainer.algo.config.baseline))
                per_method[method].append(r[:, -1])
                extras[method].append(r)
                env_steps += n * e * c.evaluation.test_time_rounds * ev.EPISODE_STEPS
    kinds = np.stack(kinds)
    results = {}
    for method in c.methods:
        returns = np.stack(per_method[method])
        entry = summarize(returns, kinds)
        entry["episodes"] = {"num_seeds": c.num_seeds, "tasks_per_seed": n, "envs_per_task": e,
                             "episode_limit": ev.EPISODE_STEPS}
        entry["trained_model"] = trainer_of(method)
        if method in ("maml_zero_shot", "maml_adapted", "maml_adapted_mlp"):
            by_step = np.stack(extras[method])  # (S, N, K + 1)
            entry["return_by_inner_step"] = [summarize(by_step[..., k], kinds)["return_mean"]
                                             for k in range(by_step.shape[-1])]
            entry["return_by_inner_step_and_kind"] = [
                summarize(by_step[..., k], kinds)["return_by_task_kind"] for k in range(by_step.shape[-1])]
            entry["num_inner_steps"] = 0 if method == "maml_zero_shot" else c.maml.rl.num_inner_steps
        if method == "test_time_adapted":
            by_round = np.stack(extras[method])
            entry["return_by_round"] = [summarize(by_round[..., r], kinds)["return_mean"]
                                        for r in range(by_round.shape[-1])]
            entry["rule"] = (f"adapt.evaluate_with_adaptation, online, policy_gradient_loss "
                             f"(baseline {trainers[trainer_of(method)].algo.config.baseline}), Meta-SGD rates")
        if method == "in_context":
            first = np.stack(extras[method])
            entry["first_episode"] = summarize(first, kinds)
            entry["measured_on"] = "episodes after the first (context) episode, carry kept"
        if method != "non_adaptive" and "non_adaptive" in per_method:
            entry["vs_non_adaptive"] = paired_difference(returns, np.stack(per_method["non_adaptive"]),
                                                         kinds)
        results[method] = entry
    return results, env_steps


def print_table(methods: dict) -> None:
    log("\nmean return over seeds x held-out tasks; +- is the half-width of a 95% interval from a "
        "Student-t over the training seeds' means (benchmarks.stats)")
    head = f"{'method':20s} {'return (95% CI)':>20s} {'normal force':>18s} {'inverted force':>18s}"
    log(head + "\n" + "-" * len(head))
    for name, m in methods.items():
        k = m["return_by_task_kind"]
        fmt = lambda mean, ci: f"{mean:7.1f} +- {ci:5.1f}" if np.isfinite(ci) else f"{mean:7.1f}"  # noqa: E731
        log(f"{name:20s} {fmt(m['return_mean'], m['return_ci95']):>20s} "
            f"{fmt(k['normal']['mean'], k['normal']['ci95']):>18s} "
            f"{fmt(k['inverted']['mean'], k['inverted']['ci95']):>18s}")
        log(f"{'':20s}   per training seed: " + ", ".join(f"{x:.1f}" for x in m["per_seed_mean"]))
        if "return_by_inner_step" in m and name != "maml_zero_shot":
            log(f"{'':20s}   after 0,1,..,K inner steps: "
                + ", ".join(f"{x:.1f}" for x in m["return_by_inner_step"]))
        if "return_by_round" in m:
            log(f"{'':20s}   by adaptation round: " + ", ".join(f"{x:.1f}" for x in m["return_by_round"]))
        if "first_episode" in m:
            log(f"{'':20s}   first (context) episode: {m['first_episode']['return_mean']:.1f}")
        if "vs_non_adaptive" in m:
            v = m["vs_non_adaptive"]
            span = lambda d: f"{d['mean']:+.1f} [{d['ci95_low']:+.1f}, {d['ci95_high']:+.1f}]"  # noqa: E731
            log(f"{'':20s}   minus non_adaptive, paired by task (95% CI): {span(v['all'])}; "
                f"inverted force {span(v['inverted'])}")


# ------------------------------------------------------------------------------------ main
def run(config: BenchmarkConfig, options: RunOptions) -> dict:
    """Train (or load), evaluate, write results; returns the results dict.

    Raises RunDirError if `options.out` must not be written (see `benchmarks.rundir`) and
    CheckpointError if a checkpoint to resume or evaluate is missing or does not match.
    """
    compile_time.install()
    t_start = time.perf_counter()
    out = options.out
    fresh = not options.eval_only and not options.resume
    source = rundir.run_dir_of(options.checkpoint or out) if options.eval_only else out
    if options.eval_only:
        rundir.check_eval_out(out, source)
    if fresh or options.eval_only:
        rundir.check_out(out, overwrite=options.overwrite,
                         what="run or evaluation" if options.eval_only else "run")
    os.makedirs(out, exist_ok=True)
    if fresh:  # a replaced run's checkpoints and results never mix with this one's
        rundir.clear_run(out, TRAINERS)
    if not options.resume:
        rundir.write_json_atomic(os.path.join(out, rundir.CONFIG_FILE), config.to_dict())
    log(f"benchmarks.cartpole: methods {list(config.methods)}, {config.num_seeds} seeds, "
        f"jax {jax.__version__} on {jax.default_backend()} ({os.cpu_count()} cpus), out={out}")
    built = {name: build_trainer(name, config) for name in trainers(config)}
    states, histories, timing_train = {}, {}, {}
    compile_s = run_s = 0.0
    env_steps = 0
    for name, trainer in built.items():
        directory = rundir.checkpoint_dir(source, name)
        if options.eval_only:
            states[name], histories[name] = load_trained(trainer, directory, config.num_seeds)
            continue
        result: TrainResult = train(
            name, init=trainer.init, update=trainer.update, seed=config.seed,
            num_seeds=config.num_seeds, iterations=trainer.iterations, chunk_size=config.chunk_size,
            env_steps_per_update=trainer.env_steps_per_update,
            checkpointer=Checkpointer(directory, create=True),
            checkpoint_every=config.checkpoint_every,
            metadata={"config": config.to_dict(), "model": name},
            resume=options.resume is not None, per_seed=(trainer.return_metric,),
            same_run=same_run, migrate_history=trainer.migrate_history, log=log)
        states[name] = result.states
        histories[name] = result.history
        compile_s += result.compile_s
        run_s += result.run_s
        env_steps += result.env_steps
        timing_train[name] = {"compile_s": result.compile_s, "run_s": result.run_s,
                              "env_steps": result.env_steps, "resumed_from": result.resumed_from,
                              "env_steps_per_s": result.env_steps / max(result.run_s, 1e-9)}
        log(f"[{name}] trained: compile {result.compile_s:.1f}s, run {result.run_s:.1f}s, "
            f"{result.env_steps / max(result.run_s, 1e-9):,.0f} env steps/s")
    t_eval = time.perf_counter()
    log(f"evaluating on {config.evaluation.num_tasks} held-out test tasks x {config.num_seeds} seeds ...")
    compiled_before = compile_time.compile_seconds()
    methods, eval_steps = evaluate(config, built, states)
    eval_s = time.perf_counter() - t_eval
    eval_compile_s = compile_time.compile_seconds() - compiled_before
    wall = time.perf_counter() - t_start
    results = {
        "config": config.to_dict(),
        "methods": methods,
        "timing": {"wall_s": wall, "compile_s": compile_s + eval_compile_s, "train_compile_s": compile_s,
                   "train_run_s": run_s, "eval_compile_s": eval_compile_s, "eval_s": eval_s,
                   "env_steps": env_steps + eval_steps, "train_env_steps": env_steps,
                   "eval_env_steps": eval_steps,
                   "env_steps_per_s": env_steps / run_s if run_s > 0 else None,
                   "per_model": timing_train, "eval_only": options.eval_only},
        "versions": versions(),
        "command": " ".join(["python -m benchmarks.cartpole"] + sys.argv[1:]),
    }
    results = _clean(results)
    rundir.write_json_atomic(os.path.join(out, rundir.RESULTS_FILE), results)
    from benchmarks.plotting import plot_returns, plot_training_curves

    plot_training_curves(_curves(built, histories), os.path.join(out, rundir.CURVES_FILE))
    plot_returns(methods, os.path.join(out, rundir.RETURNS_FILE))
    print_table(methods)
    log(f"\nwall {wall:.0f}s (compile {compile_s + eval_compile_s:.0f}s, train {run_s:.0f}s, eval "
        f"{eval_s:.0f}s of which compile {eval_compile_s:.0f}s); "
        f"wrote {os.path.join(out, rundir.RESULTS_FILE)} and plots")
    return results


def main(argv=None) -> int:
    config, options = parse_args(argv)
    try:
        run(config, options)
    except (CheckpointError, RunDirError) as err:
        print(f"benchmarks.cartpole: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
