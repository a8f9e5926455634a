"""Scale-out with ``jax.sharding`` and ``jax.distributed``: the one home of meshes and shardings.

Every batch axis the library vmaps over (the task axis of ``MetaMAML.meta_update`` and
``MAMLRL.meta_update``, the environment axis of ``envs.rollout``, the task axis of
``envs.rollout_tasks`` and ``PPO``, the seed axis of the benchmark's training) can be split over
the devices of a 1-D ``Mesh`` whose axis is named ``BATCH_AXIS``; params and optimiser state are
replicated. The maths does not change: the functions stay ``vmap``s with PRNG keys split per
task/env (never per device), and only ``jax.lax.with_sharding_constraint`` (``constrain``) tells
XLA's partitioner how to lay the batch out, so gradients and means are reduced across devices
inside the one jitted step (an all-reduce) and the numbers equal the single-device ones up to
the reassociation of those sums.

    mesh = make_mesh()                       # every device (of every process), axis "batch"
    mesh = make_mesh(4)                      # the first 4
    tasks = shard_batch(tasks, mesh)         # leading axis split over the mesh (checked: divisible)
    state = replicate(state, mesh)           # a full copy on every device

Several hosts: ``initialize()`` runs ``jax.distributed.initialize`` from its arguments or the
environment variables ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0),
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; without them JAX detects a cluster (SLURM, Open
MPI, ...) itself. After it, ``jax.devices()`` lists every process's devices and ``make_mesh()``
spans them; each process then feeds its own shards (``shard_batch`` builds a global array from
data every process holds, reading only the process's own slices).

A mesh of one device is valid everywhere, so code written for a mesh runs unchanged on one
device. This module imports JAX only inside its functions (its checks run before JAX starts).
"""

from __future__ import annotations

import os
from typing import Any, Optional

from ssm_jax.validation import check_int

#: The name of the mesh axis batch axes are split over.
BATCH_AXIS = "batch"

#: Environment variables read by `initialize` (the first is JAX's own).
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"


def available_devices() -> int:
    """The number of devices JAX sees (every process's, after `initialize`)."""
    import jax

    return jax.device_count()


def _force_hint(platform: str, n: int) -> str:
    if platform != "cpu":
        return ""
    return (f"; on a CPU, make {n} host devices with XLA_FLAGS=--xla_force_host_platform_device_count={n} "
            f"(or JAX_NUM_CPU_DEVICES={n}) set before JAX starts")


def check_devices(name: str, num_devices: Any) -> int:
    """`num_devices` as a positive int no larger than the number of available devices, else a
    ValueError naming `name` and both numbers."""
    import jax

    n = check_int(name, num_devices)
    have = jax.device_count()
    if n > have:
        platform = jax.default_backend()
        raise ValueError(f"{name}={n} exceeds the {have} available {platform} device(s)"
                         + _force_hint(platform, n))
    return n


def make_mesh(num_devices: Optional[int] = None, axis_name: str = BATCH_AXIS):
    """A 1-D `jax.sharding.Mesh` of `num_devices` devices (default: all of them, across every
    process), its one axis named `axis_name`.

    `num_devices` must be a positive int <= the available devices (ValueError naming both
    numbers). In a multi-process run a mesh must hold whole processes: use every device, or a
    multiple of the devices per process.
    """
    import jax
    import numpy as np

    devices = jax.devices()
    n = len(devices) if num_devices is None else check_devices("num_devices", num_devices)
    if jax.process_count() > 1 and n % jax.local_device_count():
        raise ValueError(f"num_devices={n} must be a multiple of the {jax.local_device_count()} "
                         f"devices of each of the {jax.process_count()} processes")
    # device order: process by process, so each process's devices form a contiguous block
    devices = sorted(devices, key=lambda d: (d.process_index, d.id))[:n]
    return jax.sharding.Mesh(np.asarray(devices), (axis_name,))


def mesh_size(mesh) -> int:
    """The number of devices of `mesh` (1 for None)."""
    return 1 if mesh is None else int(mesh.size)


def check_mesh(name: str, mesh) -> Any:
    """`mesh` if it is None or a 1-D-or-more `jax.sharding.Mesh` with a `BATCH_AXIS` axis, else a
    ValueError naming `name`."""
    if mesh is None:
        return None
    import jax

    if not isinstance(mesh, jax.sharding.Mesh) or BATCH_AXIS not in mesh.axis_names:
        raise ValueError(f"{name} must be None or a jax.sharding.Mesh with an axis named {BATCH_AXIS!r} "
                         f"(ssm_jax.sharding.make_mesh()), got {mesh!r}")
    return mesh


def batch_devices(mesh) -> int:
    """How many devices a batch axis is split over: the size of `mesh`'s `BATCH_AXIS` (1 for
    None)."""
    return 1 if mesh is None else int(mesh.shape[BATCH_AXIS])


def check_divisible(name: str, size: int, mesh) -> None:
    """ValueError unless a batch axis of `size` (named `name`, e.g. "num_tasks") splits evenly
    over `mesh`'s batch axis: e.g. "num_tasks=6 is not divisible by the 4 devices of the mesh"."""
    n = batch_devices(mesh)
    if size % n:
        raise ValueError(f"{name}={size} is not divisible by the {n} devices of the mesh "
                         f"(use a multiple of {n}, or a mesh of fewer devices)")


def batch_spec(ndim: int, axis: int = 0):
    """`PartitionSpec` splitting dimension `axis` of an `ndim`-d array over `BATCH_AXIS`."""
    from jax.sharding import PartitionSpec as P

    spec = [None] * ndim
    spec[axis] = BATCH_AXIS
    return P(*spec)


def batch_sharding(mesh, ndim: int = 1, axis: int = 0):
    """`NamedSharding` of an `ndim`-d array split along `axis` over `mesh`'s batch axis."""
    from jax.sharding import NamedSharding

    return NamedSharding(mesh, batch_spec(ndim, axis))


def replicated(mesh):
    """`NamedSharding` of a full copy on every device of `mesh`."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    return NamedSharding(mesh, P())


def is_concrete(tree) -> bool:
    """Whether no leaf of `tree` is a tracer (the call is not inside `jit`/`vmap`/`grad`)."""
    import jax

    return not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def _place(tree, sharding_of):
    """Every leaf `x` of `tree` as a global array with `sharding_of(x)`. Inside a trace: a
    sharding constraint. Leaves already laid out so (e.g. the previous step's outputs) are kept
    as they are; in one process the rest move in one batched `jax.device_put`; with several
    processes each is built from the slices this process's devices hold (`x` is the same
    global value in every process, e.g. sampled from the same key)."""
    import jax
    import numpy as np

    one_process = jax.process_count() == 1
    leaves, treedef = jax.tree.flatten(tree)
    out = list(leaves)
    moved, targets = [], []  # the leaves for the one batched device_put, and their shardings
    for i, x in enumerate(leaves):
        s = sharding_of(x)
        if isinstance(x, jax.core.Tracer):
            out[i] = jax.lax.with_sharding_constraint(x, s)
        elif isinstance(x, jax.Array) and x.sharding == s:
            continue  # already placed
        elif one_process or (isinstance(x, jax.Array) and not x.is_fully_addressable):
            moved.append(i)
            targets.append(s)
        else:  # typed PRNG keys are placed as their data
            key = jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
            host = np.asarray(jax.random.key_data(x) if key else x)
            placed = jax.make_array_from_callback(host.shape, s, lambda index, h=host: h[index])
            out[i] = jax.random.wrap_key_data(placed, impl=jax.random.key_impl(x)) if key else placed
    if moved:
        for i, y in zip(moved, jax.device_put([leaves[i] for i in moved], targets)):
            out[i] = y
    return jax.tree.unflatten(treedef, out)


def shard_batch(tree, mesh, axis: int = 0, name: str = "batch"):
    """Every leaf of `tree` split along `axis` over `mesh`'s batch axis (`NamedSharding` with
    `P(..., "batch", ...)`). ValueError (naming `name` and the sizes) if a leaf has no such axis
    or its size is not divisible by the mesh's devices. `mesh` None: `tree` unchanged. Leaves
    already split so are returned as they are (no copy)."""
    import numpy as np

    if mesh is None:
        return tree
    check_mesh("mesh", mesh)

    def sharding_of(x):
        ndim = np.ndim(x)
        if ndim <= axis:
            raise ValueError(f"{name} needs an axis {axis} to shard, got a leaf of shape {np.shape(x)}")
        check_divisible(name if axis == 0 else f"{name} (axis {axis})", np.shape(x)[axis], mesh)
        return batch_sharding(mesh, ndim, axis)

    return _place(tree, sharding_of)


def place(tree, sharding):
    """Every leaf of `tree` as a global array laid out by the `jax.sharding.Sharding`
    `sharding` (any mesh, e.g. a 2-D one). Leaves already laid out so are kept; with several
    processes each builds the slices its own devices hold, so every process must pass the
    same global value. Inside a trace: a sharding constraint."""
    return _place(tree, lambda x: sharding)


def replicate(tree, mesh):
    """Every leaf of `tree` copied to every device of `mesh` (`mesh` None: `tree` unchanged).
    Leaves already replicated on `mesh` are returned as they are (no copy)."""
    if mesh is None:
        return tree
    check_mesh("mesh", mesh)
    sharding = replicated(mesh)
    return _place(tree, lambda x: sharding)


def constrain(tree, mesh, axis: int = 0):
    """Inside a traced function: every array leaf of `tree` laid out split along `axis` over
    `mesh`'s batch axis (`jax.lax.with_sharding_constraint`); under `jax.vmap` the spec applies
    to the unbatched dimensions. `mesh` None: `tree` unchanged (single device). The values do not
    change, only where they live."""
    if mesh is None:
        return tree
    import jax

    def one(x):
        if not hasattr(x, "ndim") or x.ndim <= axis:
            return x
        return jax.lax.with_sharding_constraint(x, batch_sharding(mesh, x.ndim, axis))

    return jax.tree.map(one, tree)


def constrain_replicated(tree, mesh):
    """Inside a traced function: every array leaf of `tree` replicated over `mesh` (None: as is)."""
    if mesh is None:
        return tree
    import jax

    sharding = replicated(mesh)
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding) if hasattr(x, "ndim") else x,
                        tree)


def is_sharded(x, mesh, axis: int = 0) -> bool:
    """Whether the array `x` is split along `axis` over `mesh`'s batch axis (its `.sharding` is
    equivalent to `batch_sharding(mesh, x.ndim, axis)`) and spread over more than one device."""
    return (mesh_size(mesh) > 1 and len(x.sharding.device_set) == mesh_size(mesh)
            and x.sharding.is_equivalent_to(batch_sharding(mesh, x.ndim, axis), x.ndim))


def is_replicated(x, mesh) -> bool:
    """Whether the array `x` is a full copy on every device of `mesh`."""
    return len(x.sharding.device_set) == mesh_size(mesh) and x.sharding.is_fully_replicated


# ---------------------------------------------------------------------------------- processes
def _identity(tree):
    return tree


def to_host(tree):
    """Every array leaf of `tree` with its whole value on this host, in every process: numpy
    arrays (typed PRNG key arrays stay key arrays, on this process's default device); other
    leaves as they are. Leaves this process holds entirely (or fully replicated ones) are
    copied from its own devices; global arrays spread over several processes are first
    replicated by one jitted identity, a collective: with several processes, every process
    must call `to_host` on the same tree."""
    import jax
    import numpy as np

    leaves, treedef = jax.tree.flatten(tree)
    keys = [isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) for x in leaves]
    data = [jax.random.key_data(x) if k else x for x, k in zip(leaves, keys)]
    spread = [i for i, x in enumerate(data) if isinstance(x, jax.Array) and not x.is_fully_addressable
              and not x.is_fully_replicated]
    out = [np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) and not x.is_fully_addressable
           and x.is_fully_replicated else x for x in data]
    named = [i for i in spread if isinstance(data[i].sharding, jax.sharding.NamedSharding)]
    if named:  # one program for all of them (compiled once per layout)
        full = [data[i].sharding.update(spec=jax.sharding.PartitionSpec()) for i in named]
        for i, x in zip(named, jax.jit(_identity, out_shardings=full)([data[i] for i in named])):
            out[i] = np.asarray(x.addressable_data(0))
    others = [i for i in spread if i not in set(named)]
    if others:
        from jax.experimental import multihost_utils

        for i, x in zip(others, multihost_utils.process_allgather([data[i] for i in others], tiled=True)):
            out[i] = np.asarray(x)
    out = jax.device_get(out)
    out = [jax.random.wrap_key_data(x, impl=jax.random.key_impl(leaf)) if k else x
           for x, k, leaf in zip(out, keys, leaves)]
    return jax.tree.unflatten(treedef, out)


def is_primary() -> bool:
    """Whether this is process 0 (always, in a single-process run): the one that writes files
    and prints progress in a multi-process run."""
    import jax

    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (nothing with one process)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def distributed_settings(coordinator_address: Optional[str] = None, num_processes: Any = None,
                         process_id: Any = None, environ=os.environ) -> Optional[dict]:
    """The checked `jax.distributed.initialize` arguments from the given values, else the
    environment (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`); None when
    none of the three is set anywhere (a single process, or a cluster JAX detects itself).

    ValueError naming the argument: an address that is not `host:port`, a number of processes
    that is not a positive int, a process id outside `[0, num_processes)`, or only some of the
    three given.
    """
    values = {"coordinator_address": coordinator_address, "num_processes": num_processes,
              "process_id": process_id}
    envs = {"coordinator_address": COORDINATOR_ENV, "num_processes": NUM_PROCESSES_ENV,
            "process_id": PROCESS_ID_ENV}
    for key, var in envs.items():
        if values[key] is None and environ.get(var, "") != "":
            values[key] = environ[var]
    given = [k for k, v in values.items() if v is not None]
    if not given:
        return None
    if len(given) != 3:
        missing = [f"{k} (${envs[k]})" for k in values if values[k] is None]
        raise ValueError(f"a multi-process run needs coordinator_address, num_processes and process_id; "
                         f"missing {', '.join(missing)}")
    address = str(values["coordinator_address"])
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"coordinator_address must be host:port (the address of process 0), got {address!r}")
    n = check_int("num_processes", _int_of(values["num_processes"]))
    pid = check_int("process_id", _int_of(values["process_id"]), minimum=0)
    if pid >= n:
        raise ValueError(f"process_id must be < num_processes={n}, got {pid}")
    return {"coordinator_address": address, "num_processes": n, "process_id": pid}


def _int_of(value):
    """An environment variable's text as an int (other values as they are, for `check_int`)."""
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return value
    return value


def initialize(coordinator_address: Optional[str] = None, num_processes: Any = None,
               process_id: Any = None, *, auto_detect: bool = False) -> int:
    """Join a multi-process run: `jax.distributed.initialize` with `distributed_settings` (the
    arguments, else the environment variables). Nothing to join (none set) is a single-process
    run, unless `auto_detect`, which lets JAX find a cluster (SLURM, Open MPI) itself. Must run
    before any other JAX call. On CPU the processes' collectives use gloo. Returns the number of
    processes."""
    settings = distributed_settings(coordinator_address, num_processes, process_id)
    import jax

    if settings is None and not auto_detect:
        return 1
    jax.distributed.initialize(**(settings or {}))
    return jax.process_count()
