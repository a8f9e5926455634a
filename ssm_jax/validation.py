"""The project's one home for argument checks, used by every package (``ssm_jax``, ``envs``,
``maml``, ``adapt``, ``benchmarks``).

Each check raises a ``ValueError`` whose message names the argument and what it must be (type,
range, choices or shape), so every config and entry point reports a bad value the same way.
The checks read only Python values and static shapes, so they run at trace time (and this
module imports no JAX, so configs validate before JAX is imported): a wrong input
fails at the call, with that message, rather than deep inside XLA.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any, Sequence

import numpy as np


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as a Python int ``>= minimum`` (numpy integers accepted), else ``ValueError``.

    Bools are refused. Messages: ``"<name> must be a positive int"`` (minimum 1) or
    ``"<name> must be an int >= m"``.
    """
    expected = "a positive int" if minimum == 1 else f"an int >= {minimum}"
    if isinstance(value, bool):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be {expected}, got {value!r} ({type(value).__name__})") from None
    if value < minimum:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


def check_float(name: str, value: Any, *, minimum: float | None = None,
                maximum: float | None = None, strict_min: bool = False, strict_max: bool = False,
                allow_inf: bool = False) -> float:
    """``value`` as a Python float in the given range, else ``ValueError`` naming ``name``.

    Python and numpy reals are accepted; bools and non-numbers are rejected, NaN always,
    infinities unless ``allow_inf``; the bounds are inclusive unless ``strict_min``/``strict_max``. Messages: ``"<name> must be a real
    number"``, ``"must be finite"``, ``"must be > m"``/``">= m"``, ``"must be < M"``/``"<= M"``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None and (value <= minimum if strict_min else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict_min else '>='} {minimum}, got {value!r}")
    if maximum is not None and (value >= maximum if strict_max else value > maximum):
        raise ValueError(f"{name} must be {'<' if strict_max else '<='} {maximum}, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a Python or numpy bool, else ``ValueError``: ``"<name> must be a bool"``.

    Ints are refused (``1`` is not ``True`` here): a flag given a number is a mistake.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(f"{name} must be a bool, got {value!r} ({type(value).__name__})")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``, else ``ValueError``: ``"<name> must be one of [...]"``."""
    def same(choice) -> bool:
        # True == 1 in Python; a bool only matches a bool choice, and vice versa
        if isinstance(choice, bool) != isinstance(value, bool):
            return False
        try:
            return bool(choice == value)
        except (TypeError, ValueError):  # e.g. an array compared elementwise
            return False

    if not any(same(c) for c in choices):
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


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
    import jax  # local: the other checks (and the configs using them) import no JAX

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
        if dtype is None or np.iscomplexobj(leaf) != np.iscomplexobj(ref):
            raise ValueError(
                f"{name} leaves must have dtypes {[str(r.dtype) for r in ref_leaves]}, "
                f"got {[str(getattr(l, 'dtype', None)) for l in leaves]}"
            )
