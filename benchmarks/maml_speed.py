"""Speed of MAML meta-updates: ``python -m benchmarks.maml_speed [--quick] [--skip-rl]``.

Workloads (all measured in this one run; times are medians of ``--repeats`` calls of an
already compiled jitted meta-update, compile time reported separately):

1. The seeds' PyTorch MetaMAML workloads with our ``ssm_jax.SSM`` and MSE, 1 inner step,
   second order (reference: ~380 ms per meta_update on a 2-core CPU for both):
   a. one task, 250-step support and query sequences, SSM(state 16, in 4, out 4, hidden 64);
   b. 5 tasks of 50 steps, SSM(state 32, in 4, out 2, hidden 64).
   Also with ``jax.checkpoint`` on the inner step (``remat_inner=True``).
2. Sinusoid regression (MAML paper): 40-40 MLP, 10 shots, 5 inner steps; 8 tasks, first vs
   second order, and the scaling with 8 -> 64 -> 256 tasks.
3. MAML-RL on CartPole (``maml.rl``): one full meta-step (support rollouts, inner policy
   gradient, query rollouts, outer update) for 8 tasks, MLP and SSM policies, first vs
   second order: a small setup (1 inner step, 8 x 100 support and query steps) and the one
   ``python -m benchmarks.cartpole`` trains with (read from its default config).

Timings are wall clock on whatever machine runs this; on a shared CPU they are noisy
(multi-threaded XLA on a loaded 2-core machine in particular); ``--single-thread`` pins the
process to one core and gives steadier numbers. Our SSM builds the orthogonal factors of its
state matrix from Householder products evaluated in compact WY form (a Gram matrix and a few
matrix products: no n-step loop, which under second-order MAML per task and per factor used to
dominate workload 1b, and no LAPACK call, so per-task adapted params under ``vmap`` stay cheap
and the rematerialised update cannot hit the triangular-solve hang noted in ``ssm_jax.ssm``);
it is a smaller model than the seeds': SSM(16,4,4,64) has 1,972 params
here vs 3,576 in the seeds' PyTorch model (the table prints both), so the ratio is per
meta-update of the same workload, not of the same model. The seeds' reference is 380 ms per
meta-update (210 ms single-threaded); the ratios use the one that matches the threading of
this run. Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if "--single-thread" in sys.argv:  # must happen before jax is imported: XLA sizes its pools then
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maml import MetaMAML, sample_sinusoid_tasks

#: The seeds' PyTorch MetaMAML on the same workloads, 2-core CPU: default threading / one thread.
TORCH_REFERENCE_MS = 380.0
TORCH_REFERENCE_SINGLE_THREAD_MS = 210.0
#: Parameter count of the seeds' PyTorch SSM(16, 4, 4, 64) (ours is printed next to it).
SEED_SSM_16_4_4_64_PARAMS = 3576


def _block(tree):
    jax.tree.map(lambda x: x.block_until_ready() if hasattr(x, "block_until_ready") else x, tree)
    return tree


def time_step(step, state, batch, repeats):
    """(compile seconds, (median, min) ms per call, metrics) of ``state, _ = step(state, batch)``."""
    t0 = time.perf_counter()
    state, metrics = _block(step(state, batch))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, metrics = _block(step(state, batch))
        times.append(time.perf_counter() - t0)
    return compile_s, (1e3 * float(np.median(times)), 1e3 * float(np.min(times))), metrics


def ssm_workloads(repeats, reference_ms=TORCH_REFERENCE_MS):
    from ssm_jax import SSM

    rows = []
    specs = [
        ("1 task x 250 steps, SSM(16,4,4,64)", 1, 250, dict(state_dim=16, input_dim=4, output_dim=4, hidden_dim=64)),
        ("5 tasks x 50 steps, SSM(32,4,2,64)", 5, 50, dict(state_dim=32, input_dim=4, output_dim=2, hidden_dim=64)),
    ]
    for name, num_tasks, length, dims in specs:
        model = SSM(**dims)
        key = jax.random.key(0)
        ks = jax.random.split(key, 5)
        shape_x = (num_tasks, 1, length, dims["input_dim"])
        shape_y = (num_tasks, 1, length, dims["output_dim"])
        tasks = {
            "support_x": jax.random.normal(ks[0], shape_x), "support_y": jax.random.normal(ks[1], shape_y),
            "query_x": jax.random.normal(ks[2], shape_x), "query_y": jax.random.normal(ks[3], shape_y),
        }
        params = model.init(ks[4], tasks["support_x"][0])
        n_params = sum(p.size for p in jax.tree.leaves(params))
        if dims == specs[0][3]:
            ours_16 = f"{n_params:,}"
        for remat in (False, True):
            maml = MetaMAML(model, inner_lr=0.01, outer_lr=0.001, num_inner_steps=1, remat_inner=remat)
            c, ms, _ = time_step(maml.meta_update, maml.init(params), tasks, repeats)
            rows.append((f"{name} [{n_params} params]" + (" remat" if remat else ""), c, ms))
    print("\n== 1. seeds' SSM workloads (MSE, 1 inner step, second order) ==")
    print(f"{'workload':56s} {'compile s':>9s} {'ms median':>9s} {'ms min':>8s} {f'x vs torch {reference_ms:.0f} ms (median/min)':>31s}")
    for name, c, (med, mn) in rows:
        print(f"{name:56s} {c:9.2f} {med:9.3f} {mn:8.3f} {reference_ms / med:20.0f}x /{reference_ms / mn:6.0f}x")
    print(f"note: our SSM(16,4,4,64) has {ours_16} params vs the seeds' {SEED_SSM_16_4_4_64_PARAMS:,} "
          "(Householder-product orthogonal factors); the ratios compare the same workload, not "
          "the same parameter count.")


class SineMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(40)(x))
        x = nn.relu(nn.Dense(40)(x))
        return nn.Dense(1)(x)


def sinusoid_workloads(repeats, task_counts):
    model = SineMLP()
    params = model.init(jax.random.key(0), jnp.zeros((1, 1)))
    print("\n== 2. sinusoid, 40-40 MLP, 10 shots, 5 inner steps ==")
    print(f"{'tasks':>5s} {'order':>6s} {'compile s':>9s} {'ms median':>9s} {'ms min':>8s} {'updates/s':>10s}")
    base = {}
    for n in task_counts:
        tasks = sample_sinusoid_tasks(jax.random.key(n), n, 10, 10)
        for first_order in (False, True):
            maml = MetaMAML(model, inner_lr=0.01, outer_lr=0.001, num_inner_steps=5, first_order=first_order)
            c, (ms, mn), _ = time_step(maml.meta_update, maml.init(params), tasks, repeats)
            base.setdefault(first_order, ms)
            label = "first" if first_order else "second"
            print(f"{n:5d} {label:>6s} {c:9.2f} {ms:9.3f} {mn:8.3f} {1e3 / ms:10.0f}   "
                  f"(time x{ms / base[first_order]:.1f} vs {task_counts[0]} tasks)")


def rl_workloads(repeats):
    import envs
    from benchmarks.config import BenchmarkConfig
    from maml.rl import MAMLRL, MAMLRLConfig
    from ssm_jax import MLPPolicy, SSMPolicy

    b = BenchmarkConfig().maml.rl
    setups = {
        "small": dict(num_inner_steps=1),
        "benchmark": dict(num_inner_steps=b.num_inner_steps, support_envs=b.support_envs,
                          support_steps=b.support_steps, query_envs=b.query_envs,
                          query_steps=b.query_steps, baseline=b.baseline, gae_lambda=b.gae_lambda),
    }
    print("\n== 3. MAML-RL on CartPole: one full meta-step (sampling to Adam update) for 8 tasks ==")
    for label, kw in setups.items():
        c = MAMLRLConfig(**kw)
        print(f"{label}: {c.num_inner_steps} inner step(s) of {c.support_envs} envs x {c.support_steps} "
              f"support steps, {c.query_envs} x {c.query_steps} query steps, {c.baseline} baseline")
    print("MLPPolicy(hidden 64), SSMPolicy(core ssm, state 16, hidden 64)")
    print(f"{'setup':>9s} {'policy':>6s} {'order':>6s} {'compile s':>9s} {'ms median':>9s} {'ms min':>8s} "
          f"{'updates/s':>10s} {'env steps/s':>12s}")
    tasks = envs.CartPoleTasks().sample(jax.random.key(0), 8)
    for label, kw in setups.items():
        for name, policy in (("mlp", MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=64)),
                             ("ssm", SSMPolicy(obs_dim=4, action_dim=2, core="ssm", state_dim=16, hidden_dim=64))):
            for first_order in (False, True):
                algo = MAMLRL(policy, MAMLRLConfig(first_order=first_order, **kw))
                state = algo.init(jax.random.key(1))

                def step(s, batch, algo=algo):
                    return algo.meta_update(s, batch[0], batch[1])

                c, (ms, mn), _ = time_step(step, state, (tasks, jax.random.key(2)), repeats)
                steps = algo.env_steps_per_update(8)
                order = "first" if first_order else "second"
                print(f"{label:>9s} {name:>6s} {order:>6s} {c:9.2f} {ms:9.2f} {mn:8.2f} {1e3 / ms:10.1f} "
                      f"{steps / ms * 1e3:12.0f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per workload (median reported)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, sinusoid scaling up to 64 tasks")
    parser.add_argument("--skip-rl", action="store_true", help="skip the MAML-RL workload")
    parser.add_argument("--single-thread", action="store_true",
                        help="pin the process to one core, single-threaded XLA (compare with the seeds' "
                             "210 ms single-threaded reference; far steadier on a shared machine)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    repeats = 3 if args.quick else args.repeats
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}"
          f"{' (single-threaded XLA)' if args.single_thread else ''}; {repeats} timed calls each "
          "(median and min); numbers are noisy on a shared CPU")
    ssm_workloads(repeats, TORCH_REFERENCE_SINGLE_THREAD_MS if args.single_thread else TORCH_REFERENCE_MS)
    sinusoid_workloads(repeats, (8, 64) if args.quick else (8, 64, 256))
    if not args.skip_rl:
        rl_workloads(max(3, repeats // 4))


if __name__ == "__main__":
    main()
