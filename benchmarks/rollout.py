"""`python -m benchmarks.rollout`: roll a finished run's policy out on one task and animate it.

    python -m benchmarks.rollout --run results/cartpole --method maml_adapted --length 0.9 \\
        --inverted --gif episode.gif

loads the run (`benchmarks.runs.load_run`), adapts the method's params of seed `--seed_index`
on the task as the method does (`--adapt_steps`, default: as reported), rolls out one
evaluation episode (`benchmarks.runs.rollout_episode`) and writes it as an animated GIF
(`benchmarks.render`): one frame per step (`--stride N`: every N-th step), 50 frames per
second of real time (CartPole's 0.02 s step) unless `--fps` says otherwise.

The task: gymnax's default CartPole changed by `--length` (half pole length, m), `--masspole`,
`--masscart` (kg), `--gravity` (m/s^2), `--force_mag` (N) and `--inverted`; or `--sample_task
SEED`, a held-out test-split task of `envs.CartPoleTasks()` drawn with that seed; or
`--test_task I`, the run's own I-th test task of the seed (per_task.csv's `task_index`).

Compiled programs go to the benchmark's persistent compilation cache (`--compile_cache`, the same
default as `python -m benchmarks.cartpole`), so a second GIF of the same method reads them back.
"""

from __future__ import annotations

import argparse
import math
import sys

from benchmarks.cli import add_compile_cache_flag, compile_cache_dir
from benchmarks.methods import METHODS

TASK_FLAGS = ("length", "masspole", "masscart", "gravity", "force_mag")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rollout", description=__doc__.split("\n\n")[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--run", required=True, metavar="DIR", help="the run directory (python -m benchmarks.cartpole --out)")
    a("--method", required=True, choices=METHODS, help="the method whose policy acts")
    a("--seed_index", type=int, default=0, help="which training seed's params (0-based) [default 0]")
    a("--gif", required=True, metavar="FILE", help="where to write the animated GIF")
    a("--adapt_steps", type=int, default=None,
      help="inner steps (MAML methods) or updates (test_time_adapted, test_time_hybrid) before "
           "the episode (test_time_within_episode updates during it) [default: as the method is "
           "reported]")
    a("--key", type=int, default=0, help="PRNG seed of the adaptation and the episode [default 0]")
    a("--greedy", action="store_true", help="act with the most likely action instead of sampling")
    a("--stride", type=int, default=1, help="draw every N-th step [default 1: every step]")
    a("--fps", type=float, default=None, help="GIF frames per second [default 50 / stride: real time]")
    add_compile_cache_flag(p)
    g = p.add_argument_group("task (default: gymnax's CartPole-v1 physics)")
    g.add_argument("--length", type=float, default=None, help="half pole length in m [0.5]")
    g.add_argument("--masspole", type=float, default=None, help="pole mass in kg [0.1]")
    g.add_argument("--masscart", type=float, default=None, help="cart mass in kg [1.0]")
    g.add_argument("--gravity", type=float, default=None, help="gravity in m/s^2 [9.8]")
    g.add_argument("--force_mag", type=float, default=None, help="push magnitude in N [10.0]")
    g.add_argument("--inverted", action="store_true", help="invert the push direction")
    g.add_argument("--sample_task", type=int, default=None, metavar="SEED",
                   help="a held-out test-split task of envs.CartPoleTasks() drawn with SEED")
    g.add_argument("--test_task", type=int, default=None, metavar="I",
                   help="the run's own I-th test task of --seed_index (per_task.csv task_index)")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    physics = {f: getattr(args, f) for f in TASK_FLAGS if getattr(args, f) is not None}
    chosen = [name for name, given in (("--sample_task", args.sample_task is not None),
                                       ("--test_task", args.test_task is not None),
                                       ("the physics flags", bool(physics) or args.inverted)) if given]
    if len(chosen) > 1:
        parser.error(f"choose the task one way: got {' and '.join(chosen)}")
    try:
        cache = compile_cache_dir(args.compile_cache)
    except ValueError as err:
        parser.error(str(err))
    # JAX after the usage checks: --help and usage errors stay fast
    from benchmarks import compile_time  # noqa: PLC0415
    from benchmarks.checkpointing import CheckpointError  # noqa: PLC0415

    try:
        with compile_time.persistent_cache(cache, log=print):
            episode, frames = _render(args, physics)
    except ValueError as err:  # RunDirError included: bad input, named
        parser.error(str(err))
    except CheckpointError as err:
        print(f"benchmarks.rollout: error: {err}", file=sys.stderr)
        return 1
    before = returns_text(episode.pre_returns)
    print(f"{args.method} (seed index {args.seed_index}) on {episode.task}: return {episode.total:.0f} "
          f"in {episode.length} steps" + (f" (while adapting: {before})" if before else "")
          + f"; wrote {len(frames)} frames to {args.gif}")
    return 0


def returns_text(returns) -> str:
    """The returns measured while adapting, as printed: rounded, comma-separated; a batch in
    which no episode ended (its completed-episode return is NaN) says so."""
    return ", ".join("no episode ended" if math.isnan(r) else f"{r:.0f}" for r in returns)


def _render(args, physics: dict):
    """Load the run, adapt and roll out one episode, write the GIF; `(episode, frames)`."""
    import jax  # noqa: PLC0415

    from benchmarks import render, runs  # noqa: PLC0415

    run = runs.load_run(args.run, methods=[args.method])
    if args.sample_task is not None:
        task = runs.sample_task(args.sample_task)
    elif args.test_task is not None:
        task = run.test_task(args.seed_index, args.test_task)
    else:
        task = runs.make_task(**physics, inverted=args.inverted)
    episode = runs.rollout_episode(run.policies[args.method], args.seed_index, task, jax.random.key(args.key),
                                   adapt_steps=args.adapt_steps, deterministic=args.greedy)
    frames = render.episode_frames(episode.states, episode.actions, episode.task, rewards=episode.rewards,
                                   stride=args.stride, title=f"{args.method}, seed index {args.seed_index}")
    fps = args.fps if args.fps is not None else 1 / (render.TAU * args.stride)
    render.save_gif(frames, args.gif, fps=fps)
    return episode, frames


if __name__ == "__main__":
    sys.exit(main())
