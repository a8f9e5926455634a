"""Supervised losses and the model/loss glue of the ``Adapter``.

A loss is ``loss_fn(predictions, targets) -> scalar``; the objective the
functional core minimises is ``objective(params, (x, y)) = loss_fn(apply(params, x), y)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# One convention for models and losses across the library: adapt takes its target exactly as
# MetaMAML takes its model, so the glue is shared rather than repeated.
from maml.core import ApplyFn, make_apply_fn, mse_loss, predictions_of, supervised_objective  # noqa: F401


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
