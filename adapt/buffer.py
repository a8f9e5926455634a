"""A fixed-capacity ring buffer of samples, as a pytree with jittable add/sample.

The buffer stores any pytree of samples (e.g. ``{'observations': (N, 10),
'targets': (N, 4)}``): ``data`` has the same structure, every leaf with a
leading ``capacity`` axis. Shapes are static, so ``add`` and ``sample`` jit,
vmap and run inside ``lax.scan`` without recompiling as the buffer fills.

Conventions:
  * ``insert_pos`` is the slot the next sample is written to; slots are
    written in order ``0, 1, ..., capacity - 1, 0, 1, ...`` (wrap-around), so
    the oldest samples are overwritten first.
  * ``size`` counts filled slots, ``min(total added, capacity)``.
  * ``sample`` draws uniformly with replacement among the filled slots
    ``0 .. size - 1`` (once full, among all slots). From an EMPTY buffer it
    returns zeros with an all-False validity mask; callers weight the
    replayed loss by the mask (the hybrid adapter gives it weight 0).
"""

from __future__ import annotations

from typing import Any, Tuple

import chex
import flax.struct
import jax
import jax.numpy as jnp

from ssm_jax.validation import check_int

PyTree = Any


@flax.struct.dataclass
class ReplayBuffer:
    """Ring buffer state.

    data:       pytree of arrays, each leaf (capacity, *sample_shape).
    insert_pos: int32 scalar, the next slot written.
    size:       int32 scalar, number of filled slots (<= capacity).
    """

    data: PyTree
    insert_pos: chex.Array
    size: chex.Array

    def __post_init__(self):
        # Built directly with arrays (not through buffer_init): refuse a buffer with no slot,
        # which would drop every sample it is given. Pytree rebuilds by JAX transformations
        # pass leaves without a shape (e.g. vmap's axis specs), which are not checked.
        shapes = [getattr(x, "shape", None) for x in jax.tree.leaves(self.data)]
        if shapes and all(s is not None and len(s) >= 1 for s in shapes):
            _check_capacity(shapes[0][0])

    @property
    def capacity(self) -> int:
        """Number of slots (static), >= 1."""
        leaves = jax.tree.leaves(self.data)
        if not leaves:
            raise ValueError("ReplayBuffer.data must be a non-empty pytree of arrays (use buffer_init).")
        return _check_capacity(leaves[0].shape[0])


def _check_capacity(capacity) -> int:
    """The buffer's capacity, a positive int, else ``ValueError`` naming ``capacity``."""
    return check_int("capacity", capacity)


def _leading(items: PyTree, what: str) -> int:
    leaves = jax.tree.leaves(items)
    if not leaves:
        raise ValueError(f"{what} must be a non-empty pytree of arrays.")
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) > 0 else None for x in leaves}
    if None in sizes or len(sizes) != 1:
        raise ValueError(
            f"{what} leaves must share a leading sample axis; got shapes "
            f"{[jnp.shape(x) for x in leaves]}."
        )
    return sizes.pop()


def buffer_init(example: PyTree, capacity: int) -> ReplayBuffer:
    """An empty buffer for samples shaped like ``example``.

    ``example`` is ONE sample (no leading axis), e.g. ``{'observations':
    (10,), 'targets': (4,)}`` arrays (or ``jax.ShapeDtypeStruct``s).
    """
    capacity = _check_capacity(capacity)
    if not jax.tree.leaves(example):
        raise ValueError("example must be a non-empty pytree of arrays (one sample).")
    data = jax.tree.map(lambda x: jnp.zeros((capacity,) + tuple(jnp.shape(x)), x.dtype), example)
    return ReplayBuffer(data=data, insert_pos=jnp.zeros((), jnp.int32), size=jnp.zeros((), jnp.int32))


def buffer_init_like(batch: PyTree, capacity: int) -> ReplayBuffer:
    """An empty buffer for the samples of ``batch`` (leaves with a leading sample axis)."""
    _leading(batch, "batch")
    return buffer_init(jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x)[1:], jnp.asarray(x).dtype), batch),
                       capacity)


def _check_structure(buffer: ReplayBuffer, items: PyTree, what: str):
    if jax.tree.structure(items) != jax.tree.structure(buffer.data):
        raise ValueError(
            f"{what} has structure {jax.tree.structure(items)} but the buffer stores "
            f"{jax.tree.structure(buffer.data)}."
        )
    for x, slot in zip(jax.tree.leaves(items), jax.tree.leaves(buffer.data)):
        if tuple(jnp.shape(x)[1:]) != tuple(slot.shape[1:]):
            raise ValueError(
                f"{what} samples have shape {tuple(jnp.shape(x)[1:])} but the buffer stores "
                f"samples of shape {tuple(slot.shape[1:])}."
            )


def buffer_add(buffer: ReplayBuffer, items: PyTree) -> ReplayBuffer:
    """Write the ``n`` samples of ``items`` (leaves ``(n, *sample_shape)``) in order.

    Sample ``i`` goes to slot ``(insert_pos + i) % capacity``. If ``n >
    capacity`` only the last ``capacity`` samples are kept (as if written one
    by one). ``n = 0`` is a no-op. Pure; jittable.
    """
    _check_structure(buffer, items, "items")
    n = _leading(items, "items")
    cap = buffer.capacity
    if n == 0:
        return buffer
    skipped = max(n - cap, 0)
    if skipped:
        items = jax.tree.map(lambda x: x[skipped:], items)
    kept = n - skipped
    start = (buffer.insert_pos + skipped) % cap
    slots = (start + jnp.arange(kept, dtype=jnp.int32)) % cap
    data = jax.tree.map(lambda d, x: d.at[slots].set(jnp.asarray(x, d.dtype)), buffer.data, items)
    return ReplayBuffer(
        data=data,
        insert_pos=((buffer.insert_pos + n) % cap).astype(jnp.int32),
        size=jnp.minimum(buffer.size + n, cap).astype(jnp.int32),
    )


def buffer_sample(buffer: ReplayBuffer, key: chex.PRNGKey, num_samples: int) -> Tuple[PyTree, chex.Array]:
    """``num_samples`` samples drawn uniformly with replacement from the filled slots.

    Returns ``(samples, valid)``: samples have leaves ``(num_samples,
    *sample_shape)``; ``valid`` is a ``(num_samples,)`` bool array, all True
    unless the buffer is empty (then all False and the samples are zeros).
    """
    num_samples = check_int("num_samples", num_samples, 0)
    idx = jax.random.randint(key, (num_samples,), 0, jnp.maximum(buffer.size, 1))
    nonempty = buffer.size > 0
    samples = jax.tree.map(lambda d: jnp.where(nonempty, d[idx], jnp.zeros_like(d[idx])), buffer.data)
    return samples, jnp.broadcast_to(nonempty, (num_samples,))


def buffer_contents(buffer: ReplayBuffer) -> PyTree:
    """The stored samples, oldest first (NOT jittable: the size is data-dependent)."""
    size = int(buffer.size)
    cap = buffer.capacity
    start = (int(buffer.insert_pos) - size) % cap
    order = (start + jnp.arange(size)) % cap
    return jax.tree.map(lambda d: d[order], buffer.data)
