"""Argument checks at the library boundary.

They run on static shapes at trace time, so a wrong input raises a ``ValueError`` that names the
argument and the expected shape instead of failing deep inside XLA.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp


def check_positive_int(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is a positive Python int."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_array(name: str, x: Any, expected: Sequence[int | None], expected_str: str) -> None:
    """Raise ``ValueError`` unless ``x`` has rank ``len(expected)`` and matching sizes.

    ``None`` in ``expected`` accepts any size on that axis; ``expected_str`` spells the expected
    shape with axis names, e.g. ``"(batch, time, input_dim=4)"``.
    """
    shape = getattr(x, "shape", None)
    if shape is None:
        raise ValueError(f"{name} must be an array of shape {expected_str}, got {type(x).__name__}")
    if len(shape) != len(expected) or any(
        e is not None and s != e for s, e in zip(shape, expected)
    ):
        raise ValueError(f"{name} must have shape {expected_str}, got {tuple(shape)}")


def check_carry(name: str, carry: Any, reference: Any) -> None:
    """Raise ``ValueError`` unless ``carry`` has the structure and shapes of ``reference``."""
    ref_leaves, ref_tree = jax.tree_util.tree_flatten(reference)
    leaves, tree = jax.tree_util.tree_flatten(carry)
    if tree != ref_tree:
        raise ValueError(f"{name} must be a pytree like {ref_tree}, got {tree}")
    for leaf, ref in zip(leaves, ref_leaves):
        if getattr(leaf, "shape", None) != ref.shape:
            raise ValueError(
                f"{name} leaves must have shapes {[r.shape for r in ref_leaves]} "
                f"(leading batch axis), got {[getattr(l, 'shape', None) for l in leaves]}"
            )
        dtype = getattr(leaf, "dtype", None)
        # Same kind (real vs complex); a wider float (e.g. float64 under x64) is accepted.
        if dtype is None or jnp.iscomplexobj(leaf) != jnp.iscomplexobj(ref):
            raise ValueError(
                f"{name} leaves must have dtypes {[str(r.dtype) for r in ref_leaves]}, "
                f"got {[str(getattr(l, 'dtype', None)) for l in leaves]}"
            )
