"""Speed of MAML meta-updates: ``python -m benchmarks.maml_speed [--quick] [--skip-rl]
[--reference-python PYTHON [--reference-dir DIR]]``.

Workloads (all measured in this one run; times are medians of ``--repeats`` calls of an
already compiled jitted meta-update, compile time reported separately):

1. The seeds' PyTorch MetaMAML workloads with our ``ssm_jax.SSM`` and MSE, 1 inner step,
   second order: "1x250", one task with 250-step support and query sequences,
   SSM(state 16, in 4, out 4, hidden 64); "5x50", 5 tasks of 50 steps, SSM(state 32, in 4,
   out 2, hidden 64). Also with ``jax.checkpoint`` on the inner step (``remat_inner=True``).
   With ``--reference-python``, the PyTorch reference is timed in the same run, side by side:
   ``--rounds`` rounds, each running the reference's ``time_peer_meta_update.py --json`` (a
   subprocess of that interpreter, with as many threads as XLA uses here) and then ours, so load
   from other processes hits both sides alike; per workload the table gives the reference's ms
   (median over rounds of its mean per meta-update), ours (median over rounds of the median of
   ``--repeats`` calls) and their ratio. Without it the ratio is not measured: no fixed figure
   stands in for the reference, whose time depends on the machine as much as ours does.
2. Sinusoid regression (MAML paper): 40-40 MLP, 10 shots, 5 inner steps; 8 tasks, first vs
   second order, and the scaling with 8 -> 64 -> 256 tasks.
3. MAML-RL on CartPole (``maml.rl``): one full meta-step (support rollouts, inner policy
   gradient, query rollouts, outer update) for 8 tasks, MLP and SSM policies, first vs
   second order: a small setup (1 inner step, 8 x 100 support and query steps) and the one
   ``python -m benchmarks.cartpole`` trains with (read from its default config).

The reference (``--reference-dir``, default ``shared/peer-reference`` in the nearest directory
above the repository holding this package, else above the current directory) is the seeds' PyTorch code with its
timing script; it runs only in its own interpreter (one with ``torch`` and ``numpy``) and is
never imported here. Flags are checked, and the reference interpreter is asked to import torch,
before JAX is imported: a missing script or interpreter is a usage error (exit 2) naming the flag.

Timings are wall clock on whatever machine runs this; on a shared CPU they are noisy
(multi-threaded XLA on a loaded 2-core machine in particular), so only ratios measured side by
side mean anything across machines; the 1-minute load average is printed with the results.
``--single-thread`` pins the process (and the reference, which inherits the pinning) to one core
with single-threaded XLA and gives steadier numbers; it must be given on the command line (it
sets XLA_FLAGS before JAX is first imported). Our SSM builds the orthogonal factors of its state
matrix from Householder products evaluated in compact WY form (a Gram matrix and a few matrix
products: no n-step loop and no LAPACK call, so per-task adapted params under ``vmap`` stay cheap
and the rematerialised update cannot hit the triangular-solve hang noted in ``ssm_jax.ssm``); it
is a smaller model than the seeds': SSM(16,4,4,64) has 1,972 params here vs 3,576 in the seeds'
PyTorch model (the table prints both), so the ratio is per meta-update of the same workload, not
of the same model. Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Mapping, Optional, Sequence

from ssm_jax.validation import check_int

#: Parameter count of the seeds' PyTorch SSM(16, 4, 4, 64) (ours is printed next to it).
SEED_SSM_16_4_4_64_PARAMS = 3576
#: The reference's timing script, in --reference-dir.
REFERENCE_SCRIPT = "time_peer_meta_update.py"
#: The seeds' workloads: key (as the reference script's JSON names them) -> (tasks, steps, SSM dims).
SSM_WORKLOADS = {
    "1x250": (1, 250, dict(state_dim=16, input_dim=4, output_dim=4, hidden_dim=64)),
    "5x50": (5, 50, dict(state_dim=32, input_dim=4, output_dim=2, hidden_dim=64)),
}
#: Seconds the reference interpreter may take to import torch, and to run one round.
REFERENCE_IMPORT_TIMEOUT_S = 300
REFERENCE_ROUND_TIMEOUT_S = 1800


# ------------------------------------------------------------------------ the PyTorch reference
def default_reference_dirs() -> list[str]:
    """Where the reference is looked for without --reference-dir, in order:
    ``../shared/peer-reference`` relative to the repository holding this package, then
    ``../../shared/peer-reference`` and so on up to the root (a git worktree nested below the
    main checkout finds it too), then the same relative to the current directory."""
    dirs = []
    for start in (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.getcwd()):
        here = os.path.abspath(start)
        while os.path.dirname(here) != here:
            here = os.path.dirname(here)
            dirs.append(os.path.join(here, "shared", "peer-reference"))
    return list(dict.fromkeys(dirs))


def find_reference_script(reference_dir: Optional[str]) -> str:
    """The path of ``REFERENCE_SCRIPT`` in ``reference_dir`` (None: the first of
    ``default_reference_dirs()`` that holds it); ValueError naming --reference-dir if absent."""
    dirs = [reference_dir] if reference_dir is not None else default_reference_dirs()
    for d in dirs:
        script = os.path.join(d, REFERENCE_SCRIPT)
        if os.path.isfile(script):
            return os.path.abspath(script)
    if reference_dir is not None:
        raise ValueError(f"--reference-dir {reference_dir!r} holds no {REFERENCE_SCRIPT} (give the "
                         "directory of the PyTorch reference and its timing script)")
    raise ValueError(f"no {REFERENCE_SCRIPT} in the default reference directories {dirs}; give "
                     "--reference-dir DIR (the directory of the PyTorch reference)")


def check_reference_python(python: str) -> str:
    """``python`` as an absolute path, after checking that it runs and imports torch and numpy;
    ValueError naming --reference-python otherwise."""
    path = os.path.abspath(python)
    if not os.path.isfile(path):
        raise ValueError(f"--reference-python {python!r} does not exist (give a Python interpreter "
                         "with torch and numpy)")
    if not os.access(path, os.X_OK):
        raise ValueError(f"--reference-python {python!r} is not executable (give a Python interpreter "
                         "with torch and numpy)")
    try:
        proc = subprocess.run([path, "-c", "import torch, numpy"], capture_output=True, text=True,
                              timeout=REFERENCE_IMPORT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ValueError(f"--reference-python {python!r} cannot be run as a Python interpreter: "
                         f"{err}") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise ValueError(f"--reference-python {python!r} cannot import torch and numpy ({last}); "
                         f"install them there: {python} -m pip install torch numpy")
    return path


def run_reference(python: str, script: str, threads: int, reps: int) -> dict[str, float]:
    """One run of the reference timing script: ``{workload key: ms per meta-update}`` (the mean of
    ``reps`` calls after a warm-up, ``threads`` torch threads). RuntimeError if it fails or prints
    no JSON object of positive numbers on its last line."""
    cmd = [python, script, "--json", "--threads", str(threads), "--reps", str(reps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=REFERENCE_ROUND_TIMEOUT_S,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"the reference {' '.join(cmd)} exited with status {proc.returncode}:\n{tail}")
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
        if not isinstance(result, dict):
            raise ValueError("not an object")
        result = {str(k): float(v) for k, v in result.items()}
        if not all(v > 0 for v in result.values()):
            raise ValueError("a time is not positive")
    except (IndexError, ValueError, TypeError) as err:
        raise RuntimeError(f"the reference {' '.join(cmd)} printed no JSON line of ms per workload "
                           f"({err}); its output ended {proc.stdout[-300:]!r}") from None
    return result


def side_by_side(reference: Callable[[], Mapping[str, float]], ours: Callable[[], Mapping[str, float]],
                 rounds: int, log: Callable[[str], None] = print) -> list[tuple[dict, dict]]:
    """``rounds`` alternating measurements, reference first in each round: the list of
    ``(reference(), ours())`` results (each a dict of ms per workload)."""
    results = []
    for r in range(check_int("rounds", rounds)):
        ref = dict(reference())
        mine = dict(ours())
        log(f"round {r + 1}/{rounds}: reference " + ", ".join(f"{k} {v:.1f} ms" for k, v in ref.items())
            + "; ours " + ", ".join(f"{k} {v:.3f} ms" for k, v in mine.items()))
        results.append((ref, mine))
    return results


def ratio_rows(results: Sequence[tuple[Mapping[str, float], Mapping[str, float]]],
               pairs: Sequence[tuple[str, str]]) -> list[tuple[str, float, float, float]]:
    """Per ``(ours key, reference key)`` pair: ``(ours key, reference ms, ours ms, ratio)``, with
    each side's median over the rounds of ``side_by_side`` and ratio = reference / ours."""
    rows = []
    for ours_key, ref_key in pairs:
        ref_ms = statistics.median(ref[ref_key] for ref, _ in results)
        ours_ms = statistics.median(mine[ours_key] for _, mine in results)
        rows.append((ours_key, ref_ms, ours_ms, ref_ms / ours_ms))
    return rows


def load_note() -> str:
    """The 1-minute load average and the CPUs this process may use, for the record of a timing."""
    return f"load average {os.getloadavg()[0]:.2f} on {len(os.sched_getaffinity(0))} usable cpus"


# ----------------------------------------------------------------------------------- our side
def _block(tree):
    import jax

    jax.tree.map(lambda x: x.block_until_ready() if hasattr(x, "block_until_ready") else x, tree)
    return tree


def time_step(step, state, batch, repeats):
    """(compile seconds, (median, min) ms per call, metrics) of ``state, _ = step(state, batch)``."""
    import numpy as np

    t0 = time.perf_counter()
    state, metrics = _block(step(state, batch))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, metrics = _block(step(state, batch))
        times.append(time.perf_counter() - t0)
    return compile_s, (1e3 * float(np.median(times)), 1e3 * float(np.min(times))), metrics


def ssm_steps() -> dict:
    """Our compiled side of the seeds' workloads: ``{row key: (meta_update, state, tasks,
    compile s)}``, row keys ``"1x250"``, ``"1x250 remat"``, ``"5x50"``, ``"5x50 remat"``;
    plus ``"params"``: ``{workload key: our parameter count}``."""
    import jax

    from maml import MetaMAML
    from ssm_jax import SSM

    steps, n_params = {}, {}
    for key, (num_tasks, length, dims) in SSM_WORKLOADS.items():
        model = SSM(**dims)
        ks = jax.random.split(jax.random.key(0), 5)
        shape_x = (num_tasks, 1, length, dims["input_dim"])
        shape_y = (num_tasks, 1, length, dims["output_dim"])
        tasks = {
            "support_x": jax.random.normal(ks[0], shape_x), "support_y": jax.random.normal(ks[1], shape_y),
            "query_x": jax.random.normal(ks[2], shape_x), "query_y": jax.random.normal(ks[3], shape_y),
        }
        params = model.init(ks[4], tasks["support_x"][0])
        n_params[key] = sum(p.size for p in jax.tree.leaves(params))
        for remat in (False, True):
            maml = MetaMAML(model, inner_lr=0.01, outer_lr=0.001, num_inner_steps=1, remat_inner=remat)
            state = maml.init(params)
            t0 = time.perf_counter()
            state, _ = _block(maml.meta_update(state, tasks))
            steps[key + (" remat" if remat else "")] = (maml.meta_update, state, tasks, time.perf_counter() - t0)
    steps["params"] = n_params
    return steps


def time_ssm_steps(steps: dict, repeats: int) -> dict[str, float]:
    """One round of our side: ``{row key: median ms of repeats calls}``, each row's calls chained
    from the state its compilation call returned."""
    out = {}
    for key, value in steps.items():
        if key == "params":
            continue
        step, state, tasks, _ = value
        _, (median, _), _ = time_step(step, state, tasks, repeats)
        out[key] = median
    return out


def ssm_workloads(repeats: int, rounds: int, reference: Optional[Callable[[], Mapping[str, float]]]):
    """Section 1: compile our four rows, then ``rounds`` rounds (alternating with ``reference``
    when given) and print each row's ms and, with a reference, the side-by-side ratio."""
    print("\n== 1. seeds' SSM workloads (MSE, 1 inner step, second order) ==")
    steps = ssm_steps()
    n_params = steps["params"]
    rows = [k for k in steps if k != "params"]
    for key in rows:
        print(f"compiled {key:12s} in {steps[key][3]:.2f} s")

    def ours():
        return time_ssm_steps(steps, repeats)

    pairs = [(key, key.split()[0]) for key in rows]
    if reference is None:
        results = [({}, ours()) for _ in range(rounds)]
        print(f"{'workload':42s} {'ms ours':>9s}   ratio vs the PyTorch reference")
        for key in rows:
            ms = statistics.median(mine[key] for _, mine in results)
            print(f"{_row_label(key, n_params):42s} {ms:9.3f}   ratio not measured")
        print("ratio not measured: give --reference-python PYTHON (an interpreter with torch and numpy) "
              "to time the PyTorch reference side by side in this run")
    else:
        results = side_by_side(reference, ours, rounds)
        print(f"{'workload':42s} {'ms reference':>12s} {'ms ours':>9s} {'ratio':>8s}")
        for key, ref_ms, ours_ms, ratio in ratio_rows(results, pairs):
            print(f"{_row_label(key, n_params):42s} {ref_ms:12.1f} {ours_ms:9.3f} {ratio:7.0f}x")
        print(f"(medians over {rounds} alternating rounds; {load_note()})")
    print(f"note: our SSM(16,4,4,64) has {n_params['1x250']:,} params vs the seeds' "
          f"{SEED_SSM_16_4_4_64_PARAMS:,} (Householder-product orthogonal factors); the ratios "
          "compare the same workload, not the same parameter count.")


def _row_label(key: str, n_params: Mapping[str, int]) -> str:
    workload, _, variant = key.partition(" ")
    num_tasks, length, dims = SSM_WORKLOADS[workload]
    return (f"{num_tasks}x{length} SSM({dims['state_dim']},{dims['input_dim']},{dims['output_dim']},"
            f"{dims['hidden_dim']}) [{n_params[workload]}]" + (f" {variant}" if variant else ""))


def sinusoid_workloads(repeats, task_counts):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from maml import MetaMAML, sample_sinusoid_tasks

    class SineMLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Dense(40)(x))
            x = nn.relu(nn.Dense(40)(x))
            return nn.Dense(1)(x)

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
    import jax

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


# ------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.maml_speed", description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=20,
                   help="timed calls per workload and round (median reported) [default 20; --quick: 3]")
    p.add_argument("--rounds", type=int, default=3,
                   help="alternating rounds (reference, then ours) of the seeds' SSM workloads [default 3]")
    p.add_argument("--quick", action="store_true", help="fewer repeats, sinusoid scaling up to 64 tasks")
    p.add_argument("--skip-rl", action="store_true", help="skip the MAML-RL workload")
    p.add_argument("--single-thread", action="store_true",
                   help="pin the process to one core with single-threaded XLA (the reference then runs "
                        "with 1 thread on the same core); far steadier on a shared machine")
    p.add_argument("--reference-python", metavar="PYTHON", default=None,
                   help="a Python interpreter with torch and numpy: time the PyTorch reference side by "
                        "side in this run and print the ratios [default: not measured]")
    p.add_argument("--reference-dir", metavar="DIR", default=None,
                   help=f"the PyTorch reference's directory (holding {REFERENCE_SCRIPT}) [default: "
                        "shared/peer-reference in the nearest directory above the repository (../shared/"
                        "peer-reference, ../../shared/peer-reference, ...), else above the current directory]")
    p.add_argument("--reference-reps", type=int, default=5,
                   help="timed reference calls per workload and round (it reports their mean) [default 5]")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Parsed and checked flags (usage errors exit 2, before JAX is imported); with
    ``--reference-python``, ``args.reference_script`` is the script it will run."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        for name in ("repeats", "rounds", "reference_reps"):
            check_int("--" + name.replace("_", "-"), getattr(args, name))
        args.reference_script = None
        if args.reference_python is None:
            if args.reference_dir is not None:
                raise ValueError("--reference-dir is only used with --reference-python PYTHON")
        else:
            args.reference_script = find_reference_script(args.reference_dir)
            args.reference_python = check_reference_python(args.reference_python)
    except ValueError as err:
        parser.error(str(err))
    return args


def xla_threads(single_thread: bool) -> int:
    """Threads XLA:CPU uses here (one per usable core, or 1 with --single-thread): the reference
    gets as many."""
    return 1 if single_thread else len(os.sched_getaffinity(0))


def main(argv=None):
    args = parse_args(argv)
    if args.single_thread:  # before jax is imported: XLA sizes its thread pools then
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
    import jax

    repeats = 3 if args.quick else args.repeats
    threads = xla_threads(args.single_thread)
    reference = None
    if args.reference_script is not None:
        def reference():
            return run_reference(args.reference_python, args.reference_script, threads, args.reference_reps)
    print(f"jax {jax.__version__} on {jax.default_backend()} with {threads} thread(s)"
          f"{' (single-threaded XLA)' if args.single_thread else ''}; {repeats} timed calls each "
          f"(median and min); {load_note()}; numbers are noisy on a shared CPU")
    if reference is not None:
        print(f"reference: {args.reference_python} {args.reference_script} --threads {threads} "
              f"--reps {args.reference_reps}")
    ssm_workloads(repeats, args.rounds, reference)
    sinusoid_workloads(repeats, (8, 64) if args.quick else (8, 64, 256))
    if not args.skip_rl:
        rl_workloads(max(3, repeats // 4))
    print(f"\n{load_note()} at the end")


if __name__ == "__main__":
    main()
