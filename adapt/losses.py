"""Supervised losses and the model/loss glue of the ``Adapter``.

A loss is ``loss_fn(predictions, targets) -> scalar``; the objective the
functional core minimises is ``objective(params, (x, y)) = loss_fn(apply(params, x), y)``.
"""

from __future__ import annotations

from typing import Any, Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

ApplyFn = Callable[[Any, chex.Array], Any]


def mse_loss(predictions: chex.Array, targets: chex.Array) -> chex.Array:
    """Mean squared error over all elements (like ``torch.nn.functional.mse_loss``).

    ``predictions`` and ``targets`` must have the same shape.
    """
    if jnp.shape(predictions) != jnp.shape(targets):
        raise ValueError(
            f"mse_loss: predictions of shape {jnp.shape(predictions)} do not match targets of "
            f"shape {jnp.shape(targets)}."
        )
    return jnp.mean(jnp.square(predictions - targets))


def predictions_of(output):
    """Predictions in a model output: a tuple ``(ys, carry)`` (the ``ssm_jax``
    modules) gives ``ys``; anything else is the predictions itself."""
    if isinstance(output, (tuple, list)):
        if not output:
            raise ValueError("the model returned an empty tuple; expected predictions or (predictions, carry).")
        return output[0]
    return output


def make_apply_fn(target) -> ApplyFn:
    """``(params, x) -> predictions`` from a Flax module or an apply function
    (the same convention as ``maml.MetaMAML``'s ``model``)."""
    if isinstance(target, nn.Module):
        return lambda params, x: predictions_of(target.apply(params, x))
    if callable(target):
        return lambda params, x: predictions_of(target(params, x))
    raise ValueError(
        "target must be a flax.linen.Module or a callable (params, x) -> predictions, "
        f"got {type(target).__name__}."
    )


def supervised_objective(apply_fn: ApplyFn, loss_fn: Callable):
    """``objective(params, (x, y)) = loss_fn(apply_fn(params, x), y)``."""

    def objective(params, batch):
        x, y = batch
        return loss_fn(apply_fn(params, x), y)

    return objective


def hybrid_objective(objective, replay_weight: float):
    """Pooled loss over a current batch and a replayed one.

    ``objective_h(params, (current, replay, valid)) = (1 - w) * objective(params,
    current) + w * objective(params, replay)`` with ``w = replay_weight`` if
    the replayed samples are valid (``valid`` a bool array, all equal: the
    buffer was not empty) and plain ``objective(params, current)`` otherwise.
    The choice is a ``lax.cond``, so with an empty buffer the replayed term is
    not even evaluated (a loss that is non-finite on the buffer's zero
    placeholders cannot leak into the gradient).
    """

    def objective_h(params, batch):
        current, replay, valid = batch

        def pooled(params):
            return ((1.0 - replay_weight) * objective(params, current)
                    + replay_weight * objective(params, replay))

        def current_only(params):
            return jnp.asarray(objective(params, current), jnp.float32)

        return jax.lax.cond(jnp.all(valid), pooled, current_only, params)

    return objective_h
