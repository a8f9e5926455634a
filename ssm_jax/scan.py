"""Resettable scans shared by the SSM layers.

Every model in :mod:`ssm_jax` keeps a recurrent state ``h`` that starts at zero. ``resets[b, t]``
true means: row ``b`` forgets its state before reading step ``t`` (an episode boundary inside a
batch of trajectories). The diagonal layers have the recurrence ``h_t = a_t * h_{t-1} + b_t``
(elementwise), which this module evaluates either with ``jax.lax.scan`` or with
``jax.lax.associative_scan``; both give the same numbers up to float rounding, and both clear
a non-finite state at a reset (the state after a reset never depends on the one before).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def _expand(mask: jax.Array, like: jax.Array) -> jax.Array:
    """Right-pad ``mask`` with unit axes so that it broadcasts against ``like``."""
    return mask.reshape(mask.shape + (1,) * (like.ndim - mask.ndim))


def reset_carry(carry: Any, resets: jax.Array) -> Any:
    """Zero the rows of every carry leaf where ``resets`` (shape ``(batch,)``) is true."""
    return jax.tree.map(lambda c: jnp.where(_expand(resets, c), jnp.zeros_like(c), c), carry)


def sequential_scan(
    step: Callable[[Any, Any], tuple[Any, Any]],
    carry: Any,
    inputs: Any,
    resets: jax.Array | None,
) -> tuple[Any, Any]:
    """Scan ``step(carry, x_t) -> (carry, y_t)`` over the time axis (axis 1) with resets.

    Args:
      step: one time step on batch-major slices (leaves of shape ``(batch, ...)``).
      carry: initial carry, leaves ``(batch, ...)``.
      inputs: pytree of ``(batch, time, ...)`` arrays.
      resets: ``(batch, time)`` bool; the carry is zeroed before step ``t`` where true. ``None``
        means no resets: same result as all false, without the per-step select (and without
        the masks that differentiating the select would store).

    Returns:
      ``(final_carry, ys)`` with ``ys`` leaves of shape ``(batch, time, ...)``.
    """
    if resets is None:
        body = step
        time_major = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), inputs)
    else:

        def body(c, xr):
            x_t, r_t = xr
            return step(reset_carry(c, r_t), x_t)

        time_major = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), (inputs, resets))
    carry, ys = jax.lax.scan(body, carry, time_major)
    return carry, jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), ys)


def _combine(left, right):
    """Compose two resettable affine maps ``h -> where(r, b, a*h + b)`` (left applied first).

    A reset on the right makes the composition the constant ``b_r`` by selection, never by
    multiplying the left part by zero, so a NaN or infinite state before a reset is cleared
    exactly as the sequential scan clears it (``0 * nan`` would be NaN).
    """
    a_l, b_l, r_l = left
    a_r, b_r, r_r = right
    return a_l * a_r, jnp.where(_expand(r_r, b_r), b_r, a_r * b_l + b_r), r_l | r_r


def linear_recurrence(
    a: jax.Array,
    b: jax.Array,
    h0: jax.Array,
    resets: jax.Array,
    parallel: bool = False,
) -> jax.Array:
    """All states of ``h_t = a_t * where(resets_t, 0, h_{t-1}) + b_t``, starting from ``h0``.

    Args:
      a: ``(batch, time, *state)`` decay factors (real or complex).
      b: ``(batch, time, *state)`` inputs, same dtype as ``a``.
      h0: ``(batch, *state)`` state before the first step.
      resets: ``(batch, time)`` bool.
      parallel: use ``jax.lax.associative_scan`` (O(log T) depth) instead of ``jax.lax.scan``.

    Returns:
      ``(batch, time, *state)``: ``h_1 .. h_T``.
    """
    if parallel:
        # Fold the incoming state into the first input (h_1 = a_1 h0 + b_1, or b_1 after a
        # reset); the first element then ignores its input, like a reset.
        b = b.at[:, 0].set(jnp.where(_expand(resets[:, 0], h0), b[:, 0], a[:, 0] * h0 + b[:, 0]))
        r = resets.at[:, 0].set(True)
        _, hs, _ = jax.lax.associative_scan(_combine, (a, b, r), axis=1)
        return hs

    def step(h, ab):
        a_t, b_t = ab
        h = a_t * h + b_t
        return h, h

    _, hs = sequential_scan(step, h0, (a, b), resets)
    return hs
