"""Gradient time of the RL^2 policy's sequence call, step by step and in chunks.

    python -m benchmarks.scan_speed            # 4, 8, 16, 32 rows of 1000 steps; chunks 1 8 32 64
    python -m benchmarks.scan_speed --steps 200 500 --rows 8

The policy is the in_context agent's (`BenchmarkConfig().in_context_policy`: two "ssm" cores,
state 16, width 64, on `envs.ContextWrapper` CartPole observations) with `scan_chunk` set to
each `--chunks` value (1: the step-by-step scan); the timed program is the jitted gradient of
its value and log-probabilities over `rows x steps` observations with an episode start at step
0, the shape of one PPO minibatch (8 rows of 1000 steps per seed by default). Every
configuration is compiled first, then all are timed round-robin (`benchmarks.throughput`'s
interleaving, median per call); the ratio to chunk 1 of the same shape is the figure to
compare (a shared CPU moves the milliseconds).
"""

from __future__ import annotations

import argparse
import dataclasses


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scan_speed", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[4, 8, 16, 32], help="rows per gradient [default 4 8 16 32]")
    parser.add_argument("--steps", type=int, nargs="+", default=[1000], help="time steps per row [default 1000]")
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 8, 32, 64],
                        help="scan_chunk values to compare; 1 is the step-by-step scan [default 1 8 32 64]")
    parser.add_argument("--min_time", type=float, default=2.0,
                        help="seconds of timed calls per configuration [default 2]")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("rows", "steps", "chunks"):
        if any(v < 1 for v in getattr(args, name)):
            parser.error(f"--{name} must be positive ints, got {getattr(args, name)}")
    if args.min_time < 0:
        parser.error(f"--min_time must be >= 0, got {args.min_time}")
    if 1 not in args.chunks:
        args.chunks = [1] + args.chunks  # the reference every ratio is to
    return args


def gradient_program(scan_chunk: int, rows: int, steps: int):
    """`run(key) -> grads` of the in_context policy with `scan_chunk` over `rows x steps`."""
    import jax
    import jax.numpy as jnp

    import envs
    from benchmarks.config import BenchmarkConfig

    env = envs.ContextWrapper(envs.make("CartPole-v1")[0])
    obs_dim = envs.obs_dim(env)
    config = dataclasses.replace(BenchmarkConfig().in_context_policy, scan_chunk=scan_chunk)
    policy = config.build(obs_dim, env.action_space().n)
    obs = jax.random.normal(jax.random.PRNGKey(1), (rows, steps, obs_dim))
    resets = jnp.zeros((rows, steps), bool).at[:, 0].set(True)
    actions = jnp.zeros((rows, steps), jnp.int32)
    params = policy.init(jax.random.PRNGKey(0), obs[:, :1])

    def loss(p):
        out, _ = policy.apply(p, obs, resets=resets)
        return jnp.mean(out.value ** 2) - jnp.mean(out.dist.log_prob(actions))

    grad = jax.jit(jax.grad(loss))
    return lambda key: grad(params)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    import jax

    from benchmarks.throughput import measure_interleaved

    print(f"jax {jax.__version__} on {jax.default_backend()}; gradient of the in_context policy's "
          f"sequence call, median of >= {args.min_time:.1f} s of interleaved calls each")
    header = f"{'rows':>5}{'steps':>7}{'chunk':>7}{'ms':>10}{'vs chunk 1':>12}{'compile s':>11}"
    print(header)
    print("-" * len(header))
    table = []
    for steps in args.steps:
        for rows in args.rows:
            runs = [gradient_program(c, rows, steps) for c in args.chunks]
            results = measure_interleaved(runs, args.min_time)
            reference = results[args.chunks.index(1)][0]
            for chunk, (sec, comp) in zip(args.chunks, results):
                table.append({"rows": rows, "steps": steps, "chunk": chunk, "ms": 1e3 * sec,
                              "vs_chunk_1": reference / sec})
                print(f"{rows:>5}{steps:>7}{chunk:>7}{1e3 * sec:>10.1f}{reference / sec:>11.2f}x{comp:>11.1f}",
                      flush=True)
    return table


if __name__ == "__main__":
    main()
