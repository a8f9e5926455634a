"""Environment steps per second of `envs.rollout` on CartPole: random, SSM and MLP policies.

    python -m benchmarks.throughput            # 1, 64, 1024, 4096 parallel envs
    python -m benchmarks.throughput --quick    # a short smoke run

All rows are measured in the same run, one after the other, and each policy's figure is also
given as a ratio to the random-policy ceiling at the same number of environments. The ceiling
is a parameter-free uniform-random policy that follows the `ssm_jax` policy contract and goes
through exactly the same `envs.rollout` (auto-reset, trajectory storage, log-probs); the
`bare gymnax` row is gymnax alone (a `lax.scan` of `vmap(env.step)` with random actions and
nothing stored), for reference.

Timing: for each number of environments, every configuration is compiled first (compile time
reported separately), then the configurations are run round-robin (fresh keys) for at least
`--min_time` seconds each, and each one's median run time is reported. Interleaving makes load
from other processes hit all rows alike; on a shared machine the absolute figures are still
noisy: compare the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

import envs
from ssm_jax import CORES, Categorical, MLPPolicy, PolicyOutput, SSMPolicy


class RandomPolicy(nn.Module):
    """Uniform-random actions, zero values, no parameters (the `ssm_jax` policy contract)."""

    obs_dim: int = 4
    action_dim: int = 2

    def __call__(self, obs_seq, resets=None, carry=None):
        shape = obs_seq.shape[:-1]
        return PolicyOutput(Categorical(jnp.zeros(shape + (self.action_dim,))), jnp.zeros(shape)), carry

    def step(self, obs, carry, reset=None):
        b = obs.shape[0]
        return PolicyOutput(Categorical(jnp.zeros((b, self.action_dim))), jnp.zeros((b,))), carry

    def initialize_carry(self, batch_size: int):
        return jnp.zeros((batch_size, 0), jnp.float32)


def _bare_gymnax(num_envs: int, num_steps: int):
    env, params = envs.make("CartPole-v1")

    @jax.jit
    def run(key):
        key_reset, key_steps = jax.random.split(key)
        _, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key_reset, num_envs), params)

        def body(carry, k):
            state, total = carry
            k_act, k_env = jax.random.split(k)
            action = jax.random.randint(k_act, (num_envs,), 0, 2)
            _, state, reward, _, _, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
                jax.random.split(k_env, num_envs), state, action, params
            )
            return (state, total + reward.sum()), None

        (_, total), _ = jax.lax.scan(body, (state, 0.0), jax.random.split(key_steps, num_steps))
        return total

    return run


def _policy_rollout(policy, params, num_envs: int, num_steps: int, unroll: int):
    task = envs.CartPoleTasks().sample(jax.random.PRNGKey(0), 1)
    task = jax.tree_util.tree_map(lambda x: x[0], task)

    def run(key):
        return envs.rollout(key, policy, params, task, num_envs=num_envs, num_steps=num_steps,
                            unroll=unroll)

    return run


def measure_interleaved(runs, min_time: float, min_reps: int = 3):
    """Compile every run, then time them round-robin (fresh key each call) for at least
    `min_time` seconds each, so that load from other processes hits all of them alike.

    Returns a list of `(median seconds per call, compile seconds)`, one per run.
    """
    compile_s = []
    for run in runs:
        t0 = time.perf_counter()
        jax.block_until_ready(run(jax.random.PRNGKey(0)))
        compile_s.append(time.perf_counter() - t0)
    times = [[] for _ in runs]
    start, i = time.perf_counter(), 1
    while min(len(t) for t in times) < min_reps or time.perf_counter() - start < min_time * len(runs):
        for run, ts in zip(runs, times):
            t = time.perf_counter()
            jax.block_until_ready(run(jax.random.PRNGKey(i)))
            ts.append(time.perf_counter() - t)
        i += 1
    return [(statistics.median(ts), c) for ts, c in zip(times, compile_s)]


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description="CartPole env steps/s of envs.rollout for random, SSM and MLP policies.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="short run: fewer steps and envs, less timing (smoke test)")
    parser.add_argument("--num_envs", type=int, nargs="+", default=None,
                        help="parallel environment counts (default 1 64 1024 4096; quick: 1 64 1024)")
    parser.add_argument("--num_steps", type=int, default=None,
                        help="time steps per rollout (default 500; quick: 100)")
    parser.add_argument("--min_time", type=float, default=None,
                        help="seconds of timed runs per configuration (default 2; quick: 0.3)")
    parser.add_argument("--core", default="ssm", choices=sorted(CORES), help="SSM policy core")
    parser.add_argument("--state_dim", type=int, default=16, help="SSM policy state size")
    parser.add_argument("--hidden_dim", type=int, default=64, help="hidden width of both policies")
    parser.add_argument("--unroll", type=int, default=1, help="lax.scan unroll of the rollout")
    args = parser.parse_args(argv)
    num_envs = args.num_envs or ([1, 64, 1024] if args.quick else [1, 64, 1024, 4096])
    num_steps = args.num_steps or (100 if args.quick else 500)
    min_time = args.min_time if args.min_time is not None else (0.3 if args.quick else 2.0)
    for name in ("num_steps", "state_dim", "hidden_dim", "unroll"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if any(n < 1 for n in num_envs) or min_time < 0:
        parser.error("--num_envs must be >= 1 and --min_time >= 0")

    obs = jnp.zeros((1, 2, 4))
    random_policy = RandomPolicy()
    ssm = SSMPolicy(obs_dim=4, action_dim=2, core=args.core, state_dim=args.state_dim,
                    hidden_dim=args.hidden_dim)
    mlp = MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=args.hidden_dim)
    policies = [
        ("random (ceiling)", random_policy, random_policy.init(jax.random.PRNGKey(0), obs)),
        (f"SSM ({args.core}, state {args.state_dim}, hidden {args.hidden_dim})", ssm,
         ssm.init(jax.random.PRNGKey(0), obs)),
        (f"MLP (hidden {args.hidden_dim})", mlp, mlp.init(jax.random.PRNGKey(0), obs)),
    ]

    print(f"jax {jax.__version__} on {jax.default_backend()}, {num_steps} steps per rollout, "
          f"median of >= {min_time:.1f} s of interleaved runs each (shared CPU: compare ratios)")
    header = f"{'policy':<36}{'envs':>6}{'steps/s':>14}{'vs ceiling':>12}{'compile s':>11}"
    print(header)
    print("-" * len(header))
    for n in num_envs:
        labels = ["bare gymnax (reference)"] + [label for label, _, _ in policies]
        runs = [_bare_gymnax(n, num_steps)] + [
            _policy_rollout(policy, params, n, num_steps, args.unroll) for _, policy, params in policies
        ]
        results = measure_interleaved(runs, min_time)
        ceiling = n * num_steps / results[1][0]
        for j, (label, (sec, comp)) in enumerate(zip(labels, results)):
            rate = n * num_steps / sec
            ratio = "" if j == 0 else f"{rate / ceiling:.0%}"
            print(f"{label:<36}{n:>6}{rate:>14,.0f}{ratio:>12}{comp:>11.1f}", flush=True)
        print()


if __name__ == "__main__":
    main()
