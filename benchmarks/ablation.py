"""`python -m benchmarks.ablation`: what a fixed policy reads to balance both task kinds.

    python -m benchmarks.ablation --run results/cartpole [--method non_adaptive]

A method that acts without adapting (`non_adaptive`, `non_adaptive_ssm`) cannot tell an
inverted-force task from a normal one except through what it observes. This measures which
observation components it relies on, on the run's own held-out test tasks and evaluation keys
(`benchmarks.evaluation.evaluate_policy`, exactly as the benchmark measured the method: the
row `none` reproduces its results.json return):

* ablations: the return on normal and inverted tasks with one observation component replaced by
  0 (its value at rest: cart centred, still, pole upright), one component at a time
  (`MaskedObservation`), with the seed-level 95% t intervals of `benchmarks.stats.summarize`;
* pushes: from the unablated rollouts, per task kind and observation component, how often the
  policy's chosen direction, and the cart's actual push (reversed on an inverted task), have the
  sign of the component (`push_statistics`; theta > 0 leans toward +x), and where the visited
  states lie (the means of each component and of its absolute value);
* a figure (`states.png`): the visited states of each task kind in the (theta, theta_dot) and
  (x, x_dot) planes, coloured by the action the policy chose.

It writes `ablation.json` and `states.png` into `--out` (default `<run>/ablation/`) and prints
the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
from typing import Any

from benchmarks.methods import METHODS

#: CartPole-v1's observation components, in order.
OBS_NAMES = ("x", "x_dot", "theta", "theta_dot")
#: The ablations: None (the policy as trained) and each component replaced by 0.
ABLATIONS = ("none",) + OBS_NAMES
#: At most this many visited states per task kind are drawn.
MAX_POINTS = 20_000


@dataclasses.dataclass(frozen=True)
class MaskedObservation:
    """`policy` seeing its observation with the components where `keep` is False set to 0.

    Follows the `ssm_jax` policy contract (`apply`, `initialize_carry`, `obs_dim`,
    `action_dim`, `discrete`), so `envs.rollout` and every evaluator take it in place of
    `policy` with `policy`'s params. Hashable (a static argument of jitted rollouts).
    """

    policy: Any
    keep: tuple

    def __post_init__(self):
        if len(self.keep) != self.policy.obs_dim:
            raise ValueError(f"keep must have one entry per observation component ({self.policy.obs_dim}), "
                             f"got {len(self.keep)}")

    @property
    def obs_dim(self) -> int:
        return self.policy.obs_dim

    @property
    def action_dim(self) -> int:
        return self.policy.action_dim

    @property
    def discrete(self) -> bool:
        return getattr(self.policy, "discrete", True)

    def initialize_carry(self, batch_size: int):
        return self.policy.initialize_carry(batch_size)

    def apply(self, params, obs, *args, **kwargs):
        import jax.numpy as jnp  # noqa: PLC0415

        mask = jnp.asarray(self.keep, obs.dtype)
        return self.policy.apply(params, obs * mask, *args, **kwargs)


def ablated(policy, component: str):
    """`policy` with observation component `component` (one of `OBS_NAMES`) set to 0; `"none"`:
    `policy` itself."""
    if component == "none":
        return policy
    if component not in OBS_NAMES:
        raise ValueError(f"component must be one of {list(ABLATIONS)}, got {component!r}")
    return MaskedObservation(policy, tuple(name != component for name in OBS_NAMES))


def push_statistics(obs, actions, inverted) -> dict:
    """How a policy's pushes relate to the state on each task kind.

    `obs` `(..., 4)` CartPole observations, `actions` `(...)` in {0, 1} (1 pushes along +x on a
    normal task, along -x on an inverted one), `inverted` `(...)` bool, the same leading shape
    (every step of the rollouts). Returns {normal, inverted: {steps, action_agrees, force_agrees,
    mean, mean_abs}}, each of the last four a dict over `OBS_NAMES`: `action_agrees[c]` is the
    fraction of the steps with `c != 0` whose chosen direction (action 1: +x) has the sign of `c`,
    `force_agrees[c]` the same for the direction the cart is actually pushed (the action's,
    reversed on an inverted task); `mean` and `mean_abs` are the means of `c` and `|c|`. A
    balancing controller pushes the cart under the pole: `force_agrees["theta"]` and
    `["theta_dot"]` well above 0.5 on both kinds, so on inverted tasks the same fixed policy's
    `action_agrees` must fall below 0.5.
    """
    import numpy as np  # noqa: PLC0415

    obs = np.asarray(obs, np.float64).reshape(-1, len(OBS_NAMES))
    action_dir = np.where(np.asarray(actions).reshape(-1) == 1, 1.0, -1.0)
    inv = np.broadcast_to(np.asarray(inverted, bool), np.shape(actions)).reshape(-1)
    force_dir = action_dir * np.where(inv, -1.0, 1.0)

    def agrees(direction, mask):
        out = {}
        for i, name in enumerate(OBS_NAMES):
            sign = np.sign(obs[:, i])
            m = mask & (sign != 0)
            out[name] = float((direction[m] * sign[m] > 0).mean()) if m.any() else float("nan")
        return out

    out = {}
    for kind, mask in (("normal", ~inv), ("inverted", inv)):
        out[kind] = {
            "steps": int(mask.sum()),
            "action_agrees": agrees(action_dir, mask),
            "force_agrees": agrees(force_dir, mask),
            "mean": {n: float(obs[mask, i].mean()) if mask.any() else float("nan") for i, n in enumerate(OBS_NAMES)},
            "mean_abs": {n: float(np.abs(obs[mask, i]).mean()) if mask.any() else float("nan")
                         for i, n in enumerate(OBS_NAMES)},
        }
    return out


@functools.lru_cache(maxsize=None)
def _jitted_rollouts():
    """`evaluation.policy_rollouts`, jitted once per process (JAX is imported on first use)."""
    import jax  # noqa: PLC0415

    from benchmarks import evaluation as ev  # noqa: PLC0415

    return jax.jit(ev.policy_rollouts, static_argnames=("policy", "num_envs", "env", "episode_steps"))


def _rollouts(key, policy, params, tasks, num_envs, env, episode_steps):
    """The trajectories the push statistics read: `evaluation.policy_rollouts`, jitted."""
    return _jitted_rollouts()(key, policy, params, tasks, num_envs=num_envs, env=env, episode_steps=episode_steps)


def check_method(method: str) -> str:
    """`method` if it acts without adapting (`benchmarks.runs.ADAPTATION` "none"), else
    ValueError (checked before a run is loaded)."""
    from benchmarks.runs import ADAPTATION  # noqa: PLC0415

    fixed = [m for m, kind in ADAPTATION.items() if kind == "none"]
    if method not in fixed:
        raise ValueError(f"method must act without adapting (one of {fixed}), got {method!r}")
    return method


def measure(run, method: str) -> dict:
    """The ablations and push statistics of `method` (a fixed-policy method of the finished
    `benchmarks.runs.Run` `run`) on the run's test tasks of every seed (see the module
    docstring). Returns the dict written to ablation.json, with the arrays for the figure
    under "_states" (obs, actions, inverted of the unablated rollouts)."""
    import envs  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from benchmarks import evaluation as ev  # noqa: PLC0415
    from benchmarks.stats import summarize  # noqa: PLC0415

    config = run.config
    check_method(method)
    if config.env_name != "CartPole-v1" or envs.get_suite(config.suite).obs_mode != "full":
        raise ValueError(f"the ablation reads CartPole's full observations {list(OBS_NAMES)}; the run is "
                         f"{config.env_name}, suite {config.suite!r}")
    p = run.policies[method]
    if p.policy.obs_dim != len(OBS_NAMES):
        raise ValueError(f"the ablation reads CartPole's observations {list(OBS_NAMES)}; {method} observes "
                         f"{p.policy.obs_dim} components")
    e, t = config.evaluation.num_envs, config.episode_steps
    returns = {a: [] for a in ABLATIONS}
    kinds, seen, acts, differ = [], [], [], 0
    for s in range(config.num_seeds):
        key = ev.eval_key(config.seed, s)
        tasks = run.test_tasks(s)
        inverted = np.asarray(ev.task_kinds(tasks))
        kinds.append(inverted)
        for a in ABLATIONS:
            returns[a].append(np.asarray(ev.evaluate_policy(key, ablated(p.policy, a), p.params(s), tasks,
                                                            num_envs=e, env=p.env, episode_steps=t)))
        traj = _rollouts(key, p.policy, p.params(s), tasks, e, p.env, t)
        # the statistics' rollouts are compiled apart from evaluate_policy's: count the tasks whose
        # returns differ (float rounding in chaotic episodes), reported with them
        differ += int(np.sum(np.asarray(ev.per_task_return(traj)) != returns["none"][-1]))
        seen.append(np.asarray(traj.obs))
        acts.append(np.asarray(traj.actions))
    kinds = np.stack(kinds)
    inverted_steps = np.broadcast_to(kinds[:, :, None, None], np.stack(acts).shape)
    table = {}
    for a in ABLATIONS:
        summary = summarize(np.stack(returns[a]), kinds)
        table[a] = {"return": summary["return_mean"], "return_ci95": summary["return_ci95"],
                    **{kind: {"return": summary["return_by_task_kind"][kind]["mean"],
                              "return_ci95": summary["return_by_task_kind"][kind]["ci95"]}
                       for kind in ("normal", "inverted")},
                    "per_seed_mean": summary["per_seed_mean"]}
    return {"run": run.directory, "method": method, "seeds": config.num_seeds,
            "tasks_per_seed": config.evaluation.num_tasks, "envs_per_task": e, "episode_steps": t,
            "ablated_value": 0.0, "ablations": table,
            "pushes": push_statistics(np.stack(seen), np.stack(acts), inverted_steps),
            "pushes_tasks_differing_from_evaluation": differ,
            "_states": (np.stack(seen), np.stack(acts), inverted_steps)}


def plot_states(states, path: str, method: str) -> None:
    """`states.png`: visited states per task kind (rows) in the (theta, theta_dot) and
    (x, x_dot) planes (columns), coloured by the chosen action; at most `MAX_POINTS` per kind,
    evenly spaced over the steps."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from benchmarks.plotting import _save  # noqa: PLC0415 - one home for atomic figure writes

    obs, actions, inverted = states
    obs = np.asarray(obs).reshape(-1, len(OBS_NAMES))
    actions, inverted = np.asarray(actions).reshape(-1), np.asarray(inverted).reshape(-1)
    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    for row, (kind, mask) in enumerate((("normal force", ~inverted), ("inverted force", inverted))):
        idx = np.flatnonzero(mask)
        idx = idx[np.linspace(0, len(idx) - 1, min(len(idx), MAX_POINTS)).astype(int)] if len(idx) else idx
        colours = np.where(actions[idx] == 1, "tab:red", "tab:blue")  # one scatter: no colour drawn on top
        for col, (a, b) in enumerate((("theta", "theta_dot"), ("x", "x_dot"))):
            ax = axes[row, col]
            ax.scatter(obs[idx, OBS_NAMES.index(a)], obs[idx, OBS_NAMES.index(b)], s=1, alpha=0.3, c=colours,
                       rasterized=True)
            ax.set_xlabel(a)
            ax.set_ylabel(b)
            ax.set_title(f"{method}, {kind}: states visited")
            ax.axhline(0, color="grey", lw=0.5)
            ax.axvline(0, color="grey", lw=0.5)
    handles = [plt.Line2D([], [], ls="", marker="o", color=c, label=label)
               for c, label in (("tab:blue", "push -x (action 0)"), ("tab:red", "push +x (action 1)"))]
    axes[0, 0].legend(handles=handles, loc="upper right")
    fig.tight_layout()
    _save(fig, path)


def print_report(result: dict) -> None:
    print(f"{result['method']} of {result['run']}: {result['seeds']} seed(s) x {result['tasks_per_seed']} "
          f"held-out tasks, {result['envs_per_task']} envs each; return (+- seed-level 95% t interval)")
    print(f"{'observation set to 0':<22}{'all tasks':>18}{'normal force':>18}{'inverted force':>18}")
    for a, row in result["ablations"].items():
        cells = [f"{row[k]['return'] if k != 'all' else row['return']:.1f} +- "
                 f"{row[k]['return_ci95'] if k != 'all' else row['return_ci95']:.1f}" for k in ("all", "normal", "inverted")]
        print(f"{a:<22}" + "".join(f"{c:>18}" for c in cells))
    print("pushes of the unablated policy (every step of its evaluation rollouts; "
          f"{result['pushes_tasks_differing_from_evaluation']} task(s) whose return differs from the evaluation's, "
          "compiled apart): the fraction of steps whose chosen direction (action) / actual push (force) has the "
          "sign of each component, and its mean |.|")
    print(f"{'':<24}" + "".join(f"{n:>12}" for n in OBS_NAMES))
    for kind, row in result["pushes"].items():
        for label, key in (("action agrees", "action_agrees"), ("force agrees", "force_agrees"), ("mean |.|", "mean_abs")):
            print(f"{kind + ' ' + label:<24}" + "".join(f"{row[key][n]:>12.3f}" for n in OBS_NAMES))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ablation", description=__doc__.split("\n\n")[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, metavar="DIR", help="the run directory (python -m benchmarks.cartpole --out)")
    p.add_argument("--method", default="non_adaptive", choices=METHODS,
                   help="a method that acts without adapting [default non_adaptive]")
    p.add_argument("--out", default=None, metavar="DIR", help="where to write ablation.json and states.png "
                   "[default <run>/ablation]")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from benchmarks import compile_time, rundir, runs  # noqa: PLC0415 - after the usage checks: --help stays fast
    from benchmarks.results import json_safe  # noqa: PLC0415
    from benchmarks.checkpointing import CheckpointError  # noqa: PLC0415

    try:
        check_method(args.method)  # before loading anything
        run = runs.load_run(args.run, methods=[args.method])
        with compile_time.fast_compile(run.config.fast_compile):  # as the run compiled its evaluation
            result = measure(run, args.method)
    except ValueError as err:  # RunDirError included: bad input, named
        parser.error(str(err))
    except CheckpointError as err:
        print(f"benchmarks.ablation: error: {err}", file=sys.stderr)
        return 1
    out = args.out or os.path.join(run.directory, "ablation")
    os.makedirs(out, exist_ok=True)
    states = result.pop("_states")
    rundir.write_json_atomic(os.path.join(out, "ablation.json"), json_safe(result))
    plot_states(states, os.path.join(out, "states.png"), args.method)
    print_report(result)
    print(f"wrote {os.path.join(out, 'ablation.json')} and states.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
