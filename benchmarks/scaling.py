"""`python -m benchmarks.scaling`: meta-updates/s and env steps/s against the number of devices.

Two workloads, each sharded with `ssm_jax.sharding` over meshes of 1, 2, 4, ... devices (up to
`--max_devices`), each timed in one run:

- `MAMLRL.meta_update` (MLP policy, 1 inner step, `--envs`-env x `--steps`-step support and query
  rollouts per task; by default the CartPole benchmark's own meta-batch and support size per
  task, `benchmarks.config.MAMLTrainingConfig`: 8 tasks of 8 envs x 200 steps): the task axis
  split over the devices; timed as a training loop runs it,
  each call taking the previous call's state (already replicated) and tasks sharded once up
  front, so the time is the step's, not that of copying inputs from the host;
- `envs.rollout` of an SSM policy: the env axis split over the devices.

Strong scaling keeps the total work fixed (`--tasks` tasks, `--rollout_envs` envs) and splits it;
weak scaling keeps the work per device fixed (`--tasks_per_device`, `--envs_per_device`), so the
total grows with the devices. The table gives the median time per call (after compilation),
the rate, and efficiency: strong `t1 / (n * tn)` (1 = perfect speed-up), weak `t1 / tn` (1 =
flat time); `vs 1 device` is `tn / t1` of the strong rows, the overhead bound of the README
(target: <= 1.5 on forced CPU devices).

On a CPU-only host the devices are forced host devices (`XLA_FLAGS=--xla_force_host_platform_
device_count=N`, set here before JAX starts): they share the same cores, so the table shows
the overhead of sharding, not a speed-up. On a host with several GPUs (or after
`jax.distributed` initialisation across hosts) the same command shows the real curve.
"""

from __future__ import annotations

import argparse
import json
import functools
import os
import statistics
import sys
import time

from benchmarks.config import MAMLTrainingConfig
from ssm_jax.validation import check_int

FORCE_FLAG = "--xla_force_host_platform_device_count"


def parse_args(argv=None) -> argparse.Namespace:
    maml = MAMLTrainingConfig()  # the benchmark's meta-training: its meta-batch and support size
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--max_devices", type=int, default=8, help="largest mesh (powers of two up to it) [8]")
    p.add_argument("--tasks", type=int, default=maml.tasks_per_update,
                   help=f"strong scaling: MAML tasks per meta-update [{maml.tasks_per_update}]")
    p.add_argument("--tasks_per_device", type=int, default=2, help="weak scaling: MAML tasks per device [2]")
    p.add_argument("--envs", type=int, default=maml.rl.support_envs,
                   help=f"MAML support/query envs per task [{maml.rl.support_envs}]")
    p.add_argument("--steps", type=int, default=maml.rl.support_steps,
                   help=f"MAML support/query steps per env [{maml.rl.support_steps}]")
    p.add_argument("--rollout_envs", type=int, default=512, help="strong scaling: envs per rollout [512]")
    p.add_argument("--envs_per_device", type=int, default=128, help="weak scaling: rollout envs per device [128]")
    p.add_argument("--rollout_steps", type=int, default=200, help="rollout length [200]")
    p.add_argument("--repeats", type=int, default=15, help="timed calls per row (median) [15]")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the rows as JSON")
    args = p.parse_args(argv)
    try:
        for name in ("max_devices", "tasks", "tasks_per_device", "envs", "steps", "rollout_envs",
                     "envs_per_device", "rollout_steps", "repeats"):
            check_int(f"--{name}", getattr(args, name))
        counts = device_counts(args.max_devices)
        for name in ("tasks", "rollout_envs"):
            if getattr(args, name) % counts[-1]:
                raise ValueError(f"--{name}={getattr(args, name)} is not divisible by --max_devices "
                                 f"(largest mesh {counts[-1]})")
    except ValueError as err:
        p.error(str(err))
    return args


def device_counts(max_devices: int) -> list:
    """1, 2, 4, ... up to `max_devices` (and `max_devices` itself)."""
    counts, n = [], 1
    while n < max_devices:
        counts.append(n)
        n *= 2
    return counts + [max_devices]


def force_host_devices(n: int, environ=os.environ) -> None:
    """Ask XLA for `n` host (CPU) devices, unless XLA_FLAGS already forces a count. Must run
    before JAX starts; GPUs and TPUs are not affected."""
    flags = environ.get("XLA_FLAGS", "")
    if FORCE_FLAG not in flags:
        environ["XLA_FLAGS"] = f"{flags} {FORCE_FLAG}={n}".strip()


def _interleaved_medians(fns: list, repeats: int) -> list:
    """The median seconds per call of each of `fns`, after one compiling call each, timed in
    `repeats` rounds that call every function once in turn: a slow spell of the machine
    (other jobs, a hypervisor's steal) falls on every device count alike, so the ratios
    between them hold from run to run better than timing one after the other."""
    import jax

    for fn in fns:
        jax.block_until_ready(fn())  # compile
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


class TrainingSteps:
    """A call that runs one `algo.meta_update` as a training loop does: each call takes the
    previous call's state (`.state`; on a mesh, already replicated, so nothing moves) and
    returns the metrics; `state` and `tasks` are placed on the mesh by the caller, once."""

    def __init__(self, algo, state, tasks, key):
        self.algo, self.state, self.tasks, self.key = algo, state, tasks, key

    def __call__(self):
        self.state, metrics = self.algo.meta_update(self.state, self.tasks, self.key)
        return metrics


def measure(args) -> list:
    import jax
    import jax.numpy as jnp

    import envs
    from maml import MAMLRL, MAMLRLConfig
    from ssm_jax import MLPPolicy, SSMPolicy, sharding

    config = MAMLRLConfig(num_inner_steps=1, first_order=True, baseline="linear", support_envs=args.envs,
                          support_steps=args.steps, query_envs=args.envs, query_steps=args.steps)
    mlp = MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=32)
    ssm = SSMPolicy(obs_dim=4, action_dim=2, state_dim=16, hidden_dim=32)
    ssm_params = ssm.init(jax.random.key(0), jnp.zeros((1, 1, 4)))
    dist = envs.CartPoleTasks()
    task = jax.tree.map(lambda x: x[0], dist.sample(jax.random.key(1), 1))
    rows, fns = [], []  # a row (without its time) and its call, for every measurement
    for n in device_counts(args.max_devices):
        mesh = sharding.make_mesh(n) if n > 1 else None
        algo = MAMLRL(mlp, config, mesh=mesh)
        state = sharding.replicate(algo.init(jax.random.key(2)), mesh)
        for kind, num_tasks in (("strong", args.tasks), ("weak", args.tasks_per_device * n)):
            tasks = sharding.shard_batch(dist.sample(jax.random.key(3), num_tasks), mesh, name="num_tasks")
            fns.append(TrainingSteps(algo, state, tasks, sharding.replicate(jax.random.key(4), mesh)))
            rows.append({"workload": "maml_rl meta_update", "scaling": kind, "devices": n, "batch": num_tasks,
                         "unit": "meta-updates/s", "env_steps": algo.env_steps_per_update(num_tasks), "calls": 1})
        for kind, num_envs in (("strong", args.rollout_envs), ("weak", args.envs_per_device * n)):
            fns.append(functools.partial(envs.rollout, jax.random.key(5), ssm, ssm_params, task, num_envs=num_envs,
                                         num_steps=args.rollout_steps, mesh=mesh))
            steps = num_envs * args.rollout_steps
            rows.append({"workload": "rollout (SSM policy)", "scaling": kind, "devices": n, "batch": num_envs,
                         "unit": "env steps/s", "env_steps": steps, "calls": steps})
    for r, t in zip(rows, _interleaved_medians(fns, args.repeats)):
        r.update(seconds=t, per_s=r.pop("calls") / t, env_steps_per_s=r.pop("env_steps") / t)
    base = {(r["workload"], r["scaling"]): r["seconds"] for r in rows if r["devices"] == 1}
    for r in rows:
        t1 = base[(r["workload"], r["scaling"])]
        r["efficiency"] = t1 / (r["devices"] * r["seconds"]) if r["scaling"] == "strong" else t1 / r["seconds"]
        r["vs_1_device"] = r["seconds"] / t1
    return rows


def print_table(rows: list, platform: str, write=print) -> None:
    write(f"{'workload':22s} {'scaling':7s} {'devices':>7s} {'batch':>6s} {'ms/call':>9s} "
          f"{'rate':>16s} {'efficiency':>10s} {'vs 1 device':>11s}")
    for r in rows:
        rate = f"{r['per_s']:,.1f} u/s" if r["unit"] == "meta-updates/s" else f"{r['per_s'] / 1e6:,.2f} M steps/s"
        write(f"{r['workload']:22s} {r['scaling']:7s} {r['devices']:7d} {r['batch']:6d} {1e3 * r['seconds']:9.1f} "
              f"{rate:>16s} {r['efficiency']:10.2f} {r['vs_1_device']:10.2f}x")
    write("batch: tasks per meta-update (u/s: meta-updates/s) or envs per rollout; strong: fixed total "
          "work, efficiency t1/(n*tn); weak: fixed work per device, efficiency t1/tn.")
    if platform == "cpu":
        write("These are forced host devices sharing this machine's CPU cores: the table shows the "
              "overhead of sharding (vs 1 device, strong rows), not a speed-up. Run it on a host with "
              "several GPUs for the real curve.")


def main(argv=None) -> int:
    args = parse_args(argv)
    force_host_devices(args.max_devices)
    import jax

    if jax.device_count() < args.max_devices:
        print(f"python -m benchmarks.scaling: error: --max_devices={args.max_devices} exceeds the "
              f"{jax.device_count()} available {jax.default_backend()} device(s)", file=sys.stderr)
        return 2
    platform = jax.default_backend()
    print(f"jax {jax.__version__} on {platform}, {jax.device_count()} devices, {os.cpu_count()} cpus; "
          f"median of {args.repeats} calls after compilation, device counts interleaved")
    rows = measure(args)
    print_table(rows, platform)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"platform": platform, "devices": jax.device_count(), "cpus": os.cpu_count(),
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
