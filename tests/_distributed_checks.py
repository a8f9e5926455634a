"""One process of the two-process checks of tests/test_sharding.py (`jax.distributed` on CPU).

`python tests/_distributed_checks.py save|restore DIR`, with `JAX_COORDINATOR_ADDRESS`,
`JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` and 2 forced CPU devices per process (4 global devices):

- save: a `MetaMAML.meta_update` sharded over the 4 global devices (tasks split across both
  processes) and the same update on this process's one default device (the one-process
  result); then a state with a seed axis split over the 4 devices plus a replicated
  `MetaState` is saved by both processes into DIR with `benchmarks.checkpointing.Checkpointer`
  (orbax writes each process's shards).
- restore: a new pair restores DIR's checkpoint onto the same shardings and compares it, bit for
  bit, with the state recomputed from the same keys; then a resumed run's restore
  (`benchmarks.training._restore`) where only process 1 fails to read it: both must stop.

Prints one JSON object per process.
"""

from __future__ import annotations

import json
import sys

from ssm_jax import sharding

sharding.initialize()  # from the environment, before any other JAX call

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, __import__("os").path.dirname(__file__))
from _sharding_checks import diff  # noqa: E402


def setup():
    from maml import MetaMAML, sample_sinusoid_tasks

    mlp = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(1)])
    params = mlp.init(jax.random.key(0), jnp.zeros((1, 1)))
    tasks = sample_sinusoid_tasks(jax.random.key(1), 8)
    return mlp, params, tasks, MetaMAML


def saved_state(mesh):
    """The checkpointed state: a (4, 3) array split over the seed axis and a replicated MetaState."""
    mlp, params, tasks, MetaMAML = setup()
    algo = MetaMAML(mlp, num_inner_steps=1, mesh=mesh)
    state, _ = algo.meta_update(algo.init(params), tasks)
    per_seed = jax.random.normal(jax.random.key(2), (4, 3))
    return {"per_seed": sharding.shard_batch(per_seed, mesh), "meta": state}


def main(mode: str, directory: str) -> None:
    from benchmarks.checkpointing import Checkpointer

    mesh = sharding.make_mesh()
    out = {"process_count": jax.process_count(), "device_count": jax.device_count(),
           "process_index": jax.process_index()}
    if mode == "save":
        mlp, params, tasks, MetaMAML = setup()
        single = MetaMAML(mlp, num_inner_steps=1)
        ref = single.meta_update(single.init(params), tasks)
        algo = MetaMAML(mlp, num_inner_steps=1, mesh=mesh)
        got = algo.meta_update(algo.init(params), tasks)
        out["meta_update"] = diff(sharding.to_host(got), sharding.to_host(ref))
        # typed PRNG keys placed by each process from the same global value, split over both
        # processes, then gathered whole again in every process
        keys = jax.random.split(jax.random.key(5), 4)
        placed = sharding.place(keys, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch")))
        out["keys_spread"] = not placed.is_fully_addressable
        back = sharding.to_host(placed)  # gathered from both processes, still typed keys
        out["keys_round_trip"] = back.dtype == keys.dtype and bool(np.array_equal(
            np.asarray(jax.random.key_data(back)), np.asarray(jax.random.key_data(keys))))
        state = saved_state(mesh)
        out["sharded"] = sharding.is_sharded(state["per_seed"], mesh) and not state["per_seed"].is_fully_addressable
        out["replicated"] = all(sharding.is_replicated(x, mesh) for x in jax.tree.leaves(state["meta"]))
        ckpt = Checkpointer(directory)
        ckpt.save(3, state, {"note": "two processes"})
        ckpt.close()
    else:
        expected = saved_state(mesh)
        target = jax.tree.map(jnp.zeros_like, expected)
        target = {"per_seed": sharding.shard_batch(target["per_seed"], mesh),
                  "meta": sharding.replicate(target["meta"], mesh)}
        ckpt = Checkpointer(directory, create=False)
        state, meta, step = ckpt.restore(target)
        ckpt.close()
        out["restored_step"] = step
        out["restored"] = diff(sharding.to_host(state), sharding.to_host(expected))
        out["restored_sharded"] = (sharding.is_sharded(state["per_seed"], mesh)
                                   and all(sharding.is_replicated(x, mesh) for x in jax.tree.leaves(state["meta"])))
        # a resumed training run's restore: when process 1 cannot read the checkpoint, both stop
        from benchmarks.checkpointing import CheckpointError
        from benchmarks.training import _restore

        class FailsInProcessOne(Checkpointer):  # fails after orbax's reads (its restore is collective)
            def restore(self, target, step=None, *, fallback=None):
                restored = super().restore(target, step, fallback=fallback)
                if jax.process_index() == 1:
                    raise CheckpointError("unreadable here")
                return restored

        try:
            _restore(FailsInProcessOne(directory, create=False), target, log=lambda m: None)
            out["agreed_error"] = None
        except CheckpointError as err:
            out["agreed_error"] = str(err)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
