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

Each trained model is trained for `--num_seeds` seeds at once (`vmap`), in jitted chunks of
`--chunk_size` iterations (one progress line each), with orbax checkpoints every
`--checkpoint_every` iterations and at the end under `--out/checkpoints/<model>/`;
`--resume DIR` continues an interrupted run, `--eval_only --checkpoint DIR` re-evaluates one.
`python -m benchmarks.cartpole --help` documents every flag.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import sys
import time
from importlib import metadata as importlib_metadata

import jax
import numpy as np

import envs
from benchmarks import evaluation as ev
from benchmarks.checkpointing import Checkpointer, CheckpointError
from benchmarks.cli import RunOptions, check_replaceable, holds_run, parse_args, run_dir_of
from benchmarks.config import TRAINER_OF, BenchmarkConfig, trainer_of, trainers
from benchmarks.ppo import PPO, PPOConfig
from benchmarks.stats import paired_difference, summarize
from benchmarks.training import TrainResult, train
from envs.context import ContextWrapper
from maml.rl import MAMLRL, MAMLRLConfig
from ssm_jax import MLPPolicy, SSMPolicy

PACKAGES = ("jax", "jaxlib", "flax", "optax", "gymnax", "chex", "orbax-checkpoint", "numpy",
            "matplotlib")


#: jax.monitoring events that together make up the time jax spends before running a new jit.
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
_compile_seconds = [0.0]


def _on_duration_event(event: str, duration: float, **_) -> None:
    if event in COMPILE_EVENTS:
        _compile_seconds[0] += duration


jax.monitoring.register_event_duration_secs_listener(_on_duration_event)


def compile_seconds() -> float:
    """Seconds this process has spent tracing, lowering and compiling jitted functions so far."""
    return _compile_seconds[0]


#: What a run writes into --out besides config.json and checkpoints/.
RESULTS_FILE, CURVES_FILE, RETURNS_FILE = "results.json", "training_curves.png", "returns_by_task_kind.png"


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------ models
class Model:
    """A trainer behind one or more methods: pure `init(key)`, `update(state, key)`."""

    def __init__(self, name: str, config: BenchmarkConfig):
        self.name = name
        c = config
        self.task_dist = envs.CartPoleTasks()
        base = envs.make(c.env_name)[0]
        self.env = base
        if name == "non_adaptive":
            self.policy = MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=c.hidden_dim)
            self.algo = PPO(self.policy, PPOConfig(
                num_tasks=c.ppo_tasks, num_envs=c.ppo_envs, num_steps=500, lr=c.ppo_lr,
                entropy_coef=c.ppo_entropy_coef, total_iterations=c.ppo_iterations), env=base, task_dist=self.task_dist)
        elif name == "in_context":
            self.env = ContextWrapper(base)
            self.policy = SSMPolicy(obs_dim=envs.obs_dim(self.env), action_dim=2,
                                    core=c.in_context_core, state_dim=c.in_context_state_dim,
                                    hidden_dim=c.in_context_hidden_dim,
                                    num_layers=c.in_context_layers,
                                    parallel=c.in_context_core != "ssm" and jax.default_backend() != "cpu")
            self.algo = PPO(self.policy, PPOConfig(
                num_tasks=c.in_context_tasks, num_envs=c.in_context_envs,
                num_steps=c.in_context_steps, lr=c.in_context_lr,
                entropy_coef=c.in_context_entropy_coef,
                total_iterations=c.in_context_iterations, carry_across_episodes=True),
                env=self.env, task_dist=self.task_dist)
        elif name in ("maml_ssm", "maml_mlp"):
            if name == "maml_ssm":
                self.policy = SSMPolicy(obs_dim=4, action_dim=2, core="ssm", state_dim=c.state_dim,
                                        hidden_dim=c.hidden_dim)
            else:
                self.policy = MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=c.hidden_dim)
            self.algo = MAMLRL(self.policy, MAMLRLConfig(
                inner_lr=c.inner_lr, outer_lr=c.outer_lr, num_inner_steps=c.num_inner_steps,
                outer_lr_decay_steps=c.num_epochs if c.anneal_outer_lr else None,
                first_order=c.first_order, support_envs=c.maml_envs,
                support_steps=c.maml_support_steps, query_envs=c.maml_envs,
                query_steps=c.maml_query_steps, baseline=c.maml_baseline,
                gae_lambda=c.maml_gae_lambda), env=base)
        else:
            raise ValueError(f"unknown model {name!r}")
        self.tasks_per_epoch = c.tasks_per_epoch

    @property
    def is_maml(self) -> bool:
        return isinstance(self.algo, MAMLRL)

    def init(self, key):
        return self.algo.init(key)

    def update(self, state, key):
        if not self.is_maml:
            return self.algo.update(state, key)
        k_tasks, k_update = jax.random.split(key)
        tasks = self.task_dist.sample(k_tasks, self.tasks_per_epoch, "train")
        state, m = self.algo.meta_update(state, tasks, k_update)
        keep = ("policy_loss", "value_loss", "entropy", "pre_return", "post_return", "return_by_step")
        metrics = {k: m[k] for k in keep if k in m}
        metrics["return"] = m["post_return"]
        return state, metrics

    @property
    def env_steps_per_update(self) -> int:
        if self.is_maml:
            return self.algo.env_steps_per_update(self.tasks_per_epoch)
        return self.algo.env_steps_per_update


# ------------------------------------------------------------------------------------ I/O
def write_json_atomic(path: str, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, allow_nan=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
def evaluate(config: BenchmarkConfig, models: dict, states: dict) -> tuple[dict, int]:
    """Evaluate every configured method on the same test tasks per seed; returns (methods, env steps)."""
    c = config
    per_method = {m: [] for m in c.methods}
    extras = {m: [] for m in c.methods}
    kinds = []
    env_steps = 0
    n, e = c.eval_tasks, c.eval_envs
    for s in range(c.num_seeds):
        key = ev.eval_key(c.seed, s)
        tasks = ev.test_tasks(key, n)
        kinds.append(np.asarray(ev.task_kinds(tasks)))
        cache = {}
        for method in c.methods:
            model = models[trainer_of(method)]
            state = _seed_slice(states[model.name], s)
            if method == "non_adaptive":
                r = ev.evaluate_policy(key, model.policy, state.params, tasks, num_envs=e, env=model.env)
                per_method[method].append(np.asarray(r))
                env_steps += n * e * ev.EPISODE_STEPS
            elif method == "in_context":
                out = ev.evaluate_in_context(key, model.policy, state.params, tasks, num_envs=e, env=model.env)
                per_method[method].append(np.asarray(out["after_context"]))
                extras[method].append(np.asarray(out["first_episode"]))
                env_steps += n * e * 2 * ev.EPISODE_STEPS
            elif method in ("maml_zero_shot", "maml_adapted", "maml_adapted_mlp"):
                if model.name not in cache:
                    cache[model.name] = np.asarray(ev.evaluate_maml(
                        key, model.algo, state, tasks, num_inner_steps=c.reported_inner_steps, num_envs=e))
                    k = c.reported_inner_steps
                    env_steps += n * ((k + 1) * e * ev.EPISODE_STEPS
                                      + k * model.algo.config.support_envs * model.algo.config.support_steps)
                by_step = cache[model.name]
                col = 0 if method == "maml_zero_shot" else c.num_inner_steps
                per_method[method].append(by_step[:, col])
                extras[method].append(by_step)
            elif method == "test_time_adapted":
                r = np.asarray(ev.evaluate_test_time(key, model.policy, state, tasks,
                                                     num_rounds=c.tta_rounds, num_envs=e,
                                                     baseline=model.algo.config.baseline))
                per_method[method].append(r[:, -1])
                extras[method].append(r)
                env_steps += n * e * c.tta_rounds * ev.EPISODE_STEPS
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
            entry["num_inner_steps"] = 0 if method == "maml_zero_shot" else c.num_inner_steps
        if method == "test_time_adapted":
            by_round = np.stack(extras[method])
            entry["return_by_round"] = [summarize(by_round[..., r], kinds)["return_mean"]
                                        for r in range(by_round.shape[-1])]
            entry["rule"] = (f"adapt.evaluate_with_adaptation, online, policy_gradient_loss "
                             f"(baseline {models[trainer_of(method)].algo.config.baseline}), Meta-SGD rates")
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
    """Train (or load), evaluate, write results; returns the results dict."""
    t_start = time.perf_counter()
    out = options.out
    fresh = not options.eval_only and not options.resume
    if options.eval_only and os.path.abspath(out) == run_dir_of(options.checkpoint or out):
        raise CheckpointError(f"an evaluation would overwrite the training run's config and results "
                              f"in {out!r}; write it elsewhere (the CLI default is <run>/eval)")
    if fresh or options.eval_only:
        if holds_run(out) and not options.overwrite:
            raise CheckpointError(f"{out!r} already holds a run; resume it, or pass overwrite=True "
                                  f"(--overwrite) to replace it")
        try:
            check_replaceable(out)
        except ValueError as err:
            raise CheckpointError(str(err)) from err
    os.makedirs(out, exist_ok=True)
    ckpt_root = os.path.join(options.checkpoint or out, "checkpoints")
    if fresh:
        # a replaced run's checkpoints and results never mix with this one's; only the
        # benchmark's own per-model checkpoint directories are removed
        for trainer in set(TRAINER_OF.values()):
            shutil.rmtree(os.path.join(out, "checkpoints", trainer), ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(out, "checkpoints"))  # only if nothing else is in it
        for stale in (RESULTS_FILE, CURVES_FILE, RETURNS_FILE):
            if os.path.exists(os.path.join(out, stale)):
                os.remove(os.path.join(out, stale))
    if not options.resume:
        write_json_atomic(os.path.join(out, "config.json"), config.to_dict())
    log(f"benchmarks.cartpole: methods {list(config.methods)}, {config.num_seeds} seeds, "
        f"jax {jax.__version__} on {jax.default_backend()} ({os.cpu_count()} cpus), out={out}")
    models = {name: Model(name, config) for name in trainers(config)}
    states, histories, timing_train = {}, {}, {}
    compile_s = run_s = 0.0
    env_steps = 0
    for name, model in models.items():
        directory = os.path.join(ckpt_root, name)
        run_meta = {"config": config.to_dict(), "model": name}
        iterations = config.iterations(next(m for m in config.methods if trainer_of(m) == name))
        if options.eval_only:
            ckpt = Checkpointer(directory, create=False)
            target = jax.jit(jax.vmap(model.init))(
                jax.random.split(jax.random.key(0), config.num_seeds))
            state, meta, step = ckpt.restore(target)
            if meta.get("run", {}).get("model") != name:
                raise CheckpointError(f"{directory!r} holds model {meta.get('run', {}).get('model')!r}, not {name!r}")
            if step != iterations:
                log(f"[{name}] note: evaluating the checkpoint at iteration {step} of {iterations}")
            states[name] = state
            histories[name] = meta.get("history", {})
            continue
        ckpt = Checkpointer(directory, create=True)
        result: TrainResult = train(
            name, init=model.init, update=model.update, seed=config.seed,
            num_seeds=config.num_seeds, iterations=iterations, chunk_size=config.chunk_size,
            env_steps_per_update=model.env_steps_per_update, checkpointer=ckpt,
            checkpoint_every=config.checkpoint_every, metadata=run_meta,
            resume=options.resume is not None, log=log)
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
    log(f"evaluating on {config.eval_tasks} held-out test tasks x {config.num_seeds} seeds ...")
    compiled_before = compile_seconds()
    methods, eval_steps = evaluate(config, models, states)
    eval_s = time.perf_counter() - t_eval
    eval_compile_s = compile_seconds() - compiled_before
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
    write_json_atomic(os.path.join(out, RESULTS_FILE), results)
    from benchmarks.plotting import plot_returns, plot_training_curves

    curves = {}
    for name, h in histories.items():
        curves[name] = {"return": h.get("return", [])}
        if "post_return" in h:
            curves[name]["post_return"] = h["post_return"]
            curves[name]["return"] = h.get("pre_return", [])
    plot_training_curves(curves, os.path.join(out, CURVES_FILE))
    plot_returns(methods, os.path.join(out, RETURNS_FILE))
    print_table(methods)
    log(f"\nwall {wall:.0f}s (compile {compile_s + eval_compile_s:.0f}s, train {run_s:.0f}s, eval "
        f"{eval_s:.0f}s of which compile {eval_compile_s:.0f}s); "
        f"wrote {os.path.join(out, 'results.json')} and plots")
    return results


def main(argv=None) -> int:
    config, options = parse_args(argv)
    try:
        run(config, options)
    except CheckpointError as err:
        print(f"benchmarks.cartpole: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
