"""Chunked, checkpointed, resumable training of any pure `update(state, key)`, vmapped over seeds.

`train(...)` runs `iterations` iterations of `update` for `num_seeds` seeds at once:

    states  = vmap(init)(init_keys)                                   (leading seed axis)
    chunk(states, start) = lax.scan over i in [start, start + chunk_size):
        states, metrics = vmap(update)(states, fold_in(train_keys, i))

One `jit` per chunk (compiled ahead of time, so compile time is measured apart from run
time); the key of iteration `i` is derived from the seed and `i` alone, so training is a pure
function of (initial state, seed) and chunk boundaries: a run resumed from a checkpoint taken
after chunk `k` runs exactly the same chunks afterwards as an uninterrupted run and ends with
the same params. Chunks are aligned to multiples of `chunk_size` from iteration 0 (the last
one may be shorter), and checkpoints are taken at the end of the chunk that reaches a multiple
of `checkpoint_every`, and at the end.

History: besides the metrics, `env_steps` and `wall_s` per iteration: the env steps one seed
has run (`(i + 1) * env_steps_per_update`) and the training run time so far in seconds (all
seeds at once, compilation excluded, spread evenly over a chunk's iterations; a resumed run
continues from the checkpoint's value). Histories stored without them stay loadable.

Devices (`mesh`, `training_mesh`): with a mesh of several devices the seed axis is split over
its `"seed"` axis (states, keys and every iteration's work) and whatever the mesh's `"batch"`
axis holds splits the trainers' own batch axes (`ssm_jax.sharding`: MAML's tasks, PPO's
rollout tasks); `jax.vmap(update, spmd_axis_name="seed")` keeps both. Keys are split per seed
and task exactly as on one device, so the numbers are the same up to float reassociation.
The mesh may span several processes (`jax.distributed`): each process then holds its share of
the states, every process takes part in each chunk and checkpoint, and the per-iteration
metrics are gathered so that every process keeps the same history.

Progress: a tqdm bar per trainer on stderr (iterations, elapsed time, ETA, env steps/s of all
seeds, the mean return), a line before each compilation saying what compiles, and one line
per chunk (iteration, mean of every metric, env steps/s). `metrics_log` (a
`benchmarks.metrics_log.MetricsLog`) gets every iteration's row.
"""

from __future__ import annotations

import dataclasses
import operator
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from benchmarks.checkpointing import Checkpointer, CheckpointError
from ssm_jax import sharding

INIT_STREAM = 0
TRAIN_STREAM = 1


SEED_AXIS = "seed"


def training_mesh(num_devices: int, num_seeds: int):
    """The 2-D mesh `("seed", "batch")` of the first `num_devices` devices (`ssm_jax.sharding`):
    the seed axis gets `gcd(num_seeds, num_devices)` devices (so the seeds split evenly), the
    batch axis the rest (the trainers' task axes must divide it). None for one device of a
    single-process run. A multi-process run uses every device of every process (ValueError
    naming --devices otherwise)."""
    import math

    import numpy as np

    n = sharding.check_devices("--devices", num_devices)
    if jax.process_count() > 1 and n != jax.device_count():
        raise ValueError(f"--devices={n}: a run of {jax.process_count()} processes trains on every device of "
                         f"every process ({jax.device_count()}); drop --devices or pass {jax.device_count()}")
    if n == 1:
        return None
    seeds = math.gcd(num_seeds, n)
    devices = np.asarray(sharding.make_mesh(n).devices).reshape(seeds, n // seeds)
    return jax.sharding.Mesh(devices, (SEED_AXIS, sharding.BATCH_AXIS))


def _seed_sharding(mesh):
    """The `NamedSharding` of a leading seed axis split over `mesh`'s seed axis."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    return NamedSharding(mesh, P(SEED_AXIS))


def _seed_sharded(tree, mesh):
    """`tree` (leading seed axis on every leaf) split over `mesh`'s seed axis (None: as is);
    with several processes each places its own seeds (`ssm_jax.sharding.place`)."""
    if mesh is None:
        return tree
    return sharding.place(tree, _seed_sharding(mesh))


def _chunk_shardings(mesh) -> dict:
    """`jax.jit` keywords of a chunk on `mesh`: states stay split over the seed axis (leading)
    and the metrics `(chunk, seeds, ...)` over it too, so every chunk takes the layout the
    previous one returned. Nothing for one device."""
    if mesh is None:
        return {}
    from jax.sharding import NamedSharding, PartitionSpec as P

    return {"out_shardings": (_seed_sharding(mesh), NamedSharding(mesh, P(None, SEED_AXIS)))}


def seed_keys(seed: int, num_seeds: int, stream: int) -> jax.Array:
    """`(num_seeds,)` keys: seed `seed + s` as a uint32 (`benchmarks.config.MAX_SEED`), folded
    with the stream id (init / train / eval)."""
    return jax.vmap(lambda s: jax.random.fold_in(jax.random.key(s), stream))(
        jnp.arange(seed, seed + num_seeds, dtype=jnp.uint32))


@dataclasses.dataclass
class TrainResult:
    """states: final states (leading seed axis); history: metric name -> per-iteration list
    (mean over seeds; `<name>_per_seed` for the `per_seed` metrics: per-iteration list of
    per-seed lists); timing."""

    states: Any
    history: dict
    compile_s: float
    run_s: float
    env_steps: int
    resumed_from: Optional[int]


def _scalar_metrics(metrics: dict) -> dict:
    """Keep the scalar-per-iteration metrics (shape (chunk, seeds)) and return_by_step."""
    return {k: v for k, v in metrics.items() if v.ndim == 2 or k == "return_by_step"}


def train(name: str, *, init: Callable, update: Callable, seed: int, num_seeds: int,
          iterations: int, chunk_size: int, env_steps_per_update: int,
          checkpointer: Optional[Checkpointer] = None, checkpoint_every: int = 50,
          metadata: Optional[dict] = None, resume: bool = False, per_seed: Sequence[str] = (),
          same_run: Callable[[Any, dict], bool] = operator.eq,
          migrate_history: Callable[[dict], dict] = dict,
          log: Callable[[str], None] = print, label: Optional[str] = None,
          metrics_log=None, progress: bool = True, mesh=None) -> TrainResult:
    """Train (or resume) one model for all seeds; see the module docstring.

    Args:
      name: label for progress lines and checkpoint metadata.
      init: `key -> state` for one seed. update: `(state, key) -> (state, metrics)` for one
        seed; metrics are scalars (plus optionally `return_by_step` `(K + 1,)`).
      checkpointer: where to save (None: no checkpoints).
      metadata: JSON-serialisable dict stored with every checkpoint (e.g. the config); on
        resume `same_run(stored, metadata)` must hold (default: equality).
      resume: continue from the checkpointer's last complete checkpoint (if any; the newest
        readable one, with a warning through `log`, if the last cannot be read); its stored
        history goes through `migrate_history` first.
      per_seed: metrics whose per-seed series are kept too, as `<name>_per_seed`.
      label: how progress lines name the model (default `name`), e.g. with the methods it serves.
      metrics_log: `start(history)` / `write(history, first, stop)` / `close()` receiver of
        every iteration (None: no metric files).
      progress: show the tqdm bar.
      mesh: None (one device) or a `training_mesh`: the seed axis split over its `"seed"` axis
        (`init`/`update` must have been built with the same mesh for its `"batch"` axis).
    """
    label = name if label is None else label
    metadata = {} if metadata is None else dict(metadata)
    init_keys = seed_keys(seed, num_seeds, INIT_STREAM)
    train_keys = seed_keys(seed, num_seeds, TRAIN_STREAM)
    init_keys, train_keys = _seed_sharded((init_keys, train_keys), mesh)
    spmd = None if mesh is None else SEED_AXIS
    init_shardings = {} if mesh is None else {"out_shardings": _seed_sharding(mesh)}
    states = jax.jit(jax.vmap(init, spmd_axis_name=spmd), **init_shardings)(init_keys)
    history: dict = {}
    start = 0
    resumed_from = None
    if resume and checkpointer is not None and checkpointer.latest_step() is not None:
        states, meta, start = _restore(checkpointer, states, log)
        if not same_run(meta.get("run"), metadata):
            raise CheckpointError(
                f"checkpoint in {checkpointer.directory!r} was written by a different "
                f"configuration; stored {meta.get('run')!r}, this run {metadata!r}")
        states = _seed_sharded(states, mesh)
        history = migrate_history(meta.get("history", {}))
        resumed_from = start
        log(f"[{label}] resumed from checkpoint at iteration {start}/{iterations}")
    if start > iterations:
        raise CheckpointError(f"checkpoint at iteration {start} is past this run's {iterations} iterations")

    def run_chunk(states, train_keys, start_it, length):  # keys as an argument: they may span processes
        def body(s, i):
            keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(train_keys)
            return jax.vmap(update, spmd_axis_name=spmd)(s, keys)

        return jax.lax.scan(body, states, start_it + jnp.arange(length))

    compiled = {}
    compile_s = 0.0
    run_s = 0.0
    env_steps = 0
    it = start
    wall = _restored_clock(history, start, env_steps_per_update)
    if metrics_log is not None:
        metrics_log.start(history)
    bar = tqdm(total=iterations, initial=start, desc=label, unit="it", disable=not (progress and sharding.is_primary()),
               dynamic_ncols=True, leave=True)
    try:
        while it < iterations:
            length = min(chunk_size - it % chunk_size, iterations - it)
            if length not in compiled:
                log(f"[{label}] compiling a chunk of {length} iterations x {num_seeds} seeds (one jit "
                    f"of the whole update; can take a minute) ...")
                t0 = time.perf_counter()
                compiled[length] = (jax.jit(run_chunk, static_argnums=3, **_chunk_shardings(mesh))
                                    .lower(states, train_keys, jnp.int32(it), length).compile())
                compile_s += time.perf_counter() - t0
                log(f"[{label}] compiled in {time.perf_counter() - t0:.1f}s")
            t0 = time.perf_counter()
            states, metrics = compiled[length](states, train_keys, jnp.int32(it))
            metrics = sharding.to_host(_scalar_metrics(metrics))  # every process gets every seed's
            dt = time.perf_counter() - t0
            run_s += dt
            steps = length * num_seeds * env_steps_per_update
            env_steps += steps
            for k, v in metrics.items():
                v = np.asarray(v, np.float64)
                history.setdefault(k, []).extend(v.mean(axis=1).tolist())
                if k in per_seed:
                    history.setdefault(f"{k}_per_seed", []).extend(v.tolist())
            history.setdefault("env_steps", []).extend(
                (i + 1) * env_steps_per_update for i in range(it, it + length))
            history.setdefault("wall_s", []).extend(wall + dt * (j + 1) / length for j in range(length))
            wall += dt
            if metrics_log is not None:
                metrics_log.write(history, it, it + length)
            it += length
            shown = " ".join(f"{k}={np.nanmean(np.asarray(v)):.3g}" for k, v in sorted(metrics.items())
                             if k != "return_by_step")
            rate = steps / max(dt, 1e-9)
            bar.set_postfix_str(f"{rate:,.0f} env steps/s" + "".join(
                f", {k} {np.nanmean(np.asarray(metrics[k])):.1f}" for k in per_seed if k in metrics), refresh=False)
            bar.update(length)
            log(f"[{label}] it {it:5d}/{iterations} {shown} | {rate:,.0f} env steps/s")
            if checkpointer is not None and (it == iterations or it // checkpoint_every > (it - length) // checkpoint_every):
                checkpointer.save(it, states, {"run": metadata, "history": history, "iteration": it,
                                               "name": name})
    finally:  # a fault or Ctrl-C ends the progress bar's line before the one-line report
        bar.close()
        if metrics_log is not None:
            metrics_log.close()
    return TrainResult(states=states, history=history, compile_s=compile_s, run_s=run_s,
                       env_steps=env_steps, resumed_from=resumed_from)


def _restore(checkpointer: Checkpointer, states, log):
    """`checkpointer.restore(states)` of a resumed run. One process: the newest readable
    checkpoint (`fallback`). Several processes: the last one, read by every process for its
    shards, and all of them agree whether it could be read (a CheckpointError in every process
    if any failed), so none runs on alone."""
    if jax.process_count() == 1:
        return checkpointer.restore(states, fallback=log)
    from jax.experimental import multihost_utils

    try:
        restored, error = checkpointer.restore(states), None
    except CheckpointError as err:
        restored, error = None, err
    failed = np.asarray(multihost_utils.process_allgather(np.int32(error is not None)))
    if failed.any():
        who = ", ".join(str(i) for i in np.flatnonzero(failed))
        raise CheckpointError(f"the last checkpoint in {checkpointer.directory!r} cannot be read by process(es) "
                              f"{who}" + (f" ({error})" if error else "") + "; several processes do not fall back "
                              "to an older one: remove that step's directory and --resume again") from error
    return restored


def _restored_clock(history: dict, start: int, env_steps_per_update: int) -> float:
    """The run time a resumed history ends at (0 for a fresh run). A history stored without
    `env_steps` / `wall_s` gets its env steps (exact) and no clock: `wall_s` starts at the
    resumed iteration with NaN for the iterations before it."""
    if start == 0:
        return 0.0
    if len(history.get("env_steps", ())) != start:
        history["env_steps"] = [(i + 1) * env_steps_per_update for i in range(start)]
    if len(history.get("wall_s", ())) != start:
        history["wall_s"] = [float("nan")] * start
        return 0.0
    return float(history["wall_s"][-1])
