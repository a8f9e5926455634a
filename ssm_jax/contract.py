"""The sequence/step contract shared by every model in :mod:`ssm_jax`.

A model has integer fields ``input_dim`` and ``initialize_carry(batch_size)``. Its sequence call
takes ``xs`` of shape ``(batch, time, input_dim)`` with optional ``resets`` ``(batch, time)`` and
``carry``; its step call takes ``x`` of shape ``(batch, input_dim)``, a carry and an optional
``reset`` ``(batch,)``. These helpers validate those arguments and fill in the defaults.

Inputs must be real arrays (complex or non-numeric ones are refused); a given carry must match
the initial carry in structure, shapes and dtype kind. Values are not checked: the layers are
arithmetic, so a NaN or infinite input reaches the outputs and the carry of its row until the
next reset of that row, which clears it (in the sequential and the associative scan alike).
The policies (``ssm_jax.policy``) are stricter: they act, so an eager call refuses non-finite
observations and params.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ssm_jax.validation import check_array, check_carry, check_float, check_int, real_array


def check_dims(module: Any, *names: str) -> None:
    """Validate that each named module field is a positive int."""
    for name in names:
        check_int(name, getattr(module, name))


def check_dt_range(module: Any) -> None:
    """Validate ``0 < module.dt_min <= module.dt_max`` (initial step sizes of a diagonal SSM)."""
    dt_min = check_float("dt_min", module.dt_min, minimum=0.0, strict_min=True)
    dt_max = check_float("dt_max", module.dt_max, minimum=0.0, strict_min=True)
    if dt_max < dt_min:
        raise ValueError(f"dt_max must be >= {dt_min} (dt_min), got dt_max={dt_max!r} < dt_min={dt_min!r}")


def prepare_sequence(module: Any, xs: Any, resets: Any, carry: Any, name: str = "xs"):
    """Check a sequence call's arguments; returns ``(xs, resets, carry)`` with defaults filled.

    ``xs`` must be a real array (complex or non-numeric inputs are refused, see
    ``ssm_jax.validation.real_array``); a given ``carry`` must match the initial carry's
    structure, shapes and dtype kinds (``check_carry``: an int32 carry is refused).

    ``resets`` defaults to all false and ``carry`` to ``module.initialize_carry(batch)``;
    ``name`` is the caller's name for ``xs`` in error messages.
    """
    xs = real_array(name, xs)
    check_array(name, xs, (None, None, module.input_dim), f"(batch, time, input_dim={module.input_dim})")
    batch, time = xs.shape[:2]
    if time < 1:
        raise ValueError(f"{name} must have at least one time step, got shape {tuple(xs.shape)}")
    if resets is None:
        resets = jnp.zeros((batch, time), dtype=bool)
    else:
        resets = real_array("resets", resets)
        check_array("resets", resets, (batch, time), f"(batch={batch}, time={time})")
        resets = resets.astype(bool)
    initial = module.initialize_carry(batch)
    if carry is None:
        # Follow the inputs' precision (e.g. float64 inputs under jax.enable_x64).
        carry = jax.tree.map(lambda c: c.astype(jnp.result_type(c, xs)), initial)
    else:
        check_carry("carry", carry, initial)
    return xs, resets, carry


def prepare_step(module: Any, x: Any, carry: Any, reset: Any, name: str = "x"):
    """Check a step call's arguments; returns ``(x, reset)`` (``reset`` ``None`` if not given)."""
    x = real_array(name, x)
    check_array(name, x, (None, module.input_dim), f"(batch, input_dim={module.input_dim})")
    batch = x.shape[0]
    check_carry("carry", carry, module.initialize_carry(batch))
    if reset is not None:
        reset = real_array("reset", reset)
        check_array("reset", reset, (batch,), f"(batch={batch},)")
        reset = reset.astype(bool)
    return x, reset
