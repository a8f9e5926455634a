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


def _scalar(value: Any) -> Any:
    """A 0-d numpy array, or a concrete 0-d JAX array, as its numpy scalar; anything else as is.

    So that ``np.float32(0.5)``, ``np.array(0.5)`` and ``jnp.float32(0.5)`` are all accepted
    where ``0.5`` is. A traced value (inside ``jit``) cannot be read and is left as it is, to be
    refused as not a number.
    """
    if getattr(value, "shape", None) == () and hasattr(value, "dtype") and not isinstance(value, np.generic):
        try:
            return np.asarray(value)[()]
        except Exception:  # a tracer: no concrete value at trace time
            return value
    return value


def _is_bool(value: Any) -> bool:
    """Python and numpy bools: refused where numbers are expected."""
    return isinstance(value, (bool, np.bool_))


def check_prefix_keys(name: str) -> None:
    """ValueError naming `name` unless JAX's `jax_threefry_partitionable` is on (its default):
    a program run for fewer steps than it was compiled for (`name`) relies on
    `jax.random.split(key, n)[i]` not depending on `n`, which holds only then."""
    import jax  # noqa: PLC0415

    if not jax.config.jax_threefry_partitionable:
        raise ValueError(f"{name} needs jax_threefry_partitionable (JAX's default) on: with it off, "
                         f"jax.random.split's keys depend on the count, so a shorter run would not "
                         f"reproduce its own program's keys")


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as a Python int ``>= minimum``, else ``ValueError``.

    Python ints, numpy integer scalars (``np.int64(3)``) and 0-d integer arrays are accepted;
    bools (Python or numpy) and floats are refused. Messages: ``"<name> must be a positive
    int"`` (minimum 1) or ``"<name> must be an int >= m"``.
    """
    expected = "a positive int" if minimum == 1 else f"an int >= {minimum}"
    value = _scalar(value)
    if _is_bool(value):
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

    Python and numpy reals (``np.float32(0.5)``, ``np.int64(2)``) and 0-d real arrays are
    accepted; bools and non-numbers are rejected, NaN always, infinities unless ``allow_inf``;
    the bounds are inclusive unless ``strict_min``/``strict_max``. Messages: ``"<name> must be
    a real number"``, ``"must be finite"``, ``"must be > m"``/``">= m"``, ``"must be < M"``/``"<= M"``.
    """
    value = _scalar(value)
    if _is_bool(value) or not isinstance(value, numbers.Real):
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

    Ints are refused (``1`` is not ``True`` here): a flag given a number is a mistake. A 0-d
    bool array counts as its bool.
    """
    value = _scalar(value)
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


def _kind(dtype) -> str:
    """``"bool"``, ``"int"``, ``"float"``, ``"complex"`` or ``"other"`` for a numpy/JAX dtype."""
    import jax.numpy as jnp  # local: the scalar checks import no JAX

    for kind, parent in (("bool", jnp.bool_), ("int", jnp.integer), ("float", jnp.floating),
                         ("complex", jnp.complexfloating)):
        if jnp.issubdtype(dtype, parent):
            return kind
    return "other"


def real_array(name: str, x: Any):
    """``x`` as a JAX array of a real dtype (bool, int or float), else ``ValueError``.

    Complex arrays are refused (``"<name> must be a real array ..., got complex64"``): the
    models are real-valued, and a complex input would silently give complex outputs. So are
    values that are not numeric arrays at all (strings, objects, ragged lists).
    """
    import jax.numpy as jnp  # local: the scalar checks import no JAX

    try:
        arr = jnp.asarray(x)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric array, got {type(x).__name__} ({err})") from None
    if _kind(arr.dtype) not in ("bool", "int", "float"):
        raise ValueError(f"{name} must be a real array (bool, int or float dtype), got {arr.dtype}")
    return arr


def check_finite(name: str, tree: Any) -> None:
    """Raise ``ValueError`` if a concrete float leaf of ``tree`` (an array or a Python float)
    holds NaN or an infinity.

    The check reads values, so it applies to eager calls only: if any leaf is traced (the call
    is inside ``jit``, ``vmap`` or ``grad``) nothing is checked, and the caller's documented
    behaviour under tracing applies. The message names ``name`` and the first bad leaf's path.
    """
    import jax  # local: the scalar checks import no JAX

    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    if any(isinstance(leaf, jax.core.Tracer) for _, leaf in leaves):
        return
    for path, leaf in leaves:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None and isinstance(leaf, (float, complex)):  # Python numbers count too
            dtype = np.asarray(leaf).dtype
        if dtype is None or _kind(dtype) not in ("float", "complex"):
            continue
        values = np.asarray(leaf)
        if not np.isfinite(values).all():
            what = "NaN" if np.isnan(values).any() else "an infinity"
            raise ValueError(f"{name} must be finite, but {name}{jax.tree_util.keystr(path)} holds {what}")


def check_params(name: str, params: Any, finite: bool = True) -> None:
    """Raise ``ValueError`` unless ``params`` is a non-empty pytree of float arrays and, with
    ``finite``, finite in an eager call (``check_finite``; traced params are checked for dtypes
    only). ``finite=False`` skips reading the values (no device-to-host copy), for params a
    non-finite guard already keeps finite.

    The message names ``name`` and the first bad leaf's path, e.g. ``"params must be a pytree of
    float arrays, but params['w'] is str"``.
    """
    import jax  # local: the scalar checks import no JAX

    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    if not leaves:
        raise ValueError(f"{name} must be a non-empty pytree of float arrays (e.g. model.init(key, x)), "
                         f"got {type(params).__name__} with no array leaves")
    for path, leaf in leaves:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or _kind(dtype) != "float":
            got = f"{dtype} array" if dtype is not None else type(leaf).__name__
            raise ValueError(f"{name} must be a pytree of float arrays, but "
                             f"{name}{jax.tree_util.keystr(path)} is {got}")
    if finite:
        check_finite(name, params)


def check_carry(name: str, carry: Any, reference: Any) -> None:
    """Raise ``ValueError`` unless ``carry`` has the structure, shapes and dtype kinds of
    ``reference``.

    Each leaf must have its reference leaf's shape and be of the same kind: a float leaf for a
    float reference (a wider float, e.g. float64 under x64, is accepted), a complex leaf for a
    complex one; integer, bool and narrower float leaves are refused (the scan's carry type
    must not change).
    """
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
    for leaf, ref in zip(leaves, ref_leaves):
        dtype = getattr(leaf, "dtype", None)
        if (dtype is None or _kind(dtype) != _kind(ref.dtype)
                or np.dtype(dtype).itemsize < np.dtype(ref.dtype).itemsize):
            raise ValueError(
                f"{name} leaves must have dtypes {[str(r.dtype) for r in ref_leaves]}, "
                f"got {[str(getattr(l, 'dtype', None)) for l in leaves]}"
            )
