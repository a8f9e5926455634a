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


def _affine_step(m: jax.Array) -> Callable:
    """The scan step ``h -> h @ m + b_t`` (new state as carry and output)."""

    def step(h, b_t):
        h = h @ m + b_t
        return h, h

    return step


def matrix_powers(m: jax.Array, count: int) -> jax.Array:
    """``[m^0, m^1, ..., m^count]`` of a square ``(n, n)`` ``m``, shape ``(count + 1, n, n)``.

    Doubling: the powers ``0 .. k - 1`` times ``m^k`` are the powers ``k .. 2k - 1``, so
    ``ceil(log2(count + 1))`` batched products (static, unrolled at trace time).
    """
    p = jnp.eye(m.shape[0], dtype=m.dtype)[None]
    top = m  # m^len(p)
    while p.shape[0] < count + 1:
        p = jnp.concatenate([p, p @ top])
        top = top @ top
    return p[:count + 1]


def matrix_recurrence(
    m: jax.Array,
    b: jax.Array,
    h0: jax.Array,
    resets: jax.Array | None,
    chunk_size: int = 1,
) -> jax.Array:
    """All states of ``h_t = where(resets_t, 0, h_{t-1}) @ m + b_t`` (row vectors), from ``h0``.

    Args:
      m: ``(n, n)`` transition, the same at every step.
      b: ``(batch, time, n)`` inputs.
      h0: ``(batch, n)`` state before the first step.
      resets: ``(batch, time)`` bool or None (no resets).
      chunk_size: steps per chunk ``L`` (a static positive int); 1 is the plain
        ``sequential_scan``, which any other size equals up to float rounding.

    Returns:
      ``(batch, time, n)``: ``h_1 .. h_T``.

    Chunked evaluation, exact in real arithmetic: the time axis is cut into ``C = ceil(T / L)``
    chunks (the last padded with resetting steps, whose states are dropped; ``L >= T`` is one
    chunk, the sequential scan). (1) One scan of ``L`` steps runs every chunk of every row at
    once from a zero state (resets applied as in the sequential scan), giving the local states
    ``l[c, k]``. (2) A scan of ``C`` steps carries the
    true state at each chunk's end, ``e_c = l[c, L-1] + e_{c-1} @ m^L`` (the second term only if
    chunk ``c`` has no reset). (3) ``h[c, k] = l[c, k] + e_{c-1} @ m^(k+1)`` where chunk ``c`` has
    no reset in steps ``0..k``, else ``l[c, k]``. About ``L + T / L`` sequential steps instead of
    ``T``, each a larger product. It pays on long sequences of few rows, where the sequential
    scan's per-step overhead dominates (``L`` near ``sqrt(T)``); on short sequences the extra
    products cost more than the steps saved (both measured in the README). The state before a
    reset is selected away, never multiplied by zero, so a non-finite state before a reset is
    cleared as in the sequential scan (values and gradients).
    """
    batch, time, n = b.shape
    size = chunk_size  # L
    if size == 1 or size >= time:  # one chunk is the sequential scan
        _, hs = sequential_scan(_affine_step(m), h0, b, resets)
        return hs
    chunks = -(-time // size)
    pad = chunks * size - time
    plain = resets is None and pad == 0  # no select needed in the in-chunk scan
    if resets is None:
        resets = jnp.zeros((batch, time), bool)
    b = jnp.pad(b, ((0, 0), (0, pad), (0, 0))).reshape(batch * chunks, size, n)
    # the padded steps reset, so they never carry (or differentiate through) the last real state
    r = jnp.pad(resets, ((0, 0), (0, pad)), constant_values=True).reshape(batch * chunks, size)

    zero = jnp.zeros((batch * chunks, n), b.dtype)
    _, local = sequential_scan(_affine_step(m), zero, b, None if plain else r)
    local = local.reshape(batch, chunks, size, n)
    clean = jnp.cumsum(r.reshape(batch, chunks, size), axis=-1) == 0  # no reset in steps 0..k
    powers = matrix_powers(m, size)

    def across(e, x):
        l_end, clean_end = x
        e_next = l_end + jnp.where(clean_end[:, None], e, 0.0) @ powers[size]
        return e_next, e

    _, before = jax.lax.scan(across, h0, (jnp.swapaxes(local[:, :, -1], 0, 1),
                                          jnp.swapaxes(clean[:, :, -1], 0, 1)))
    before = jnp.where(clean[:, :, :1], jnp.swapaxes(before, 0, 1), 0.0)  # (batch, chunks, n)
    carried = jnp.einsum("bcn,knm->bckm", before, powers[1:])
    hs = local + jnp.where(clean[..., None], carried, 0.0)
    return hs.reshape(batch, chunks * size, n)[:, :time]
