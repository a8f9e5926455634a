"""Supervised losses and the model/loss glue of the ``Adapter``.

A loss is ``loss_fn(predictions, targets) -> scalar``; the objective the
functional core minimises is ``objective(params, (x, y)) = loss_fn(apply(params, x), y)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from adapt.core import tree_select

# One convention for models and losses across the library: adapt takes its target exactly as
# MetaMAML takes its model, so the glue is shared rather than repeated.
from maml.core import ApplyFn, make_apply_fn, mse_loss, predictions_of, supervised_objective  # noqa: F401


def hybrid_objective(objective, replay_weight: float):
    """Pooled loss over a current batch and a replayed one.

    ``objective_h(params, (current, replay, valid)) = (1 - w) * objective(params,
    current) + w * objective(params, replay)`` with ``w = replay_weight`` if
    the replayed samples are valid (``valid`` a bool array, all equal: the
    buffer was not empty) and plain ``objective(params, current)`` otherwise.
    The replayed term never reads the empty buffer's zero placeholders, so a
    loss that is non-finite on them cannot leak into the loss or gradient:

    * ``replay`` shaped like ``current`` (e.g. ``adapt.evaluate_with_adaptation``,
      the same number of rows each): with an empty buffer the replayed term reads
      the current batch and gets weight 0, so the loss and gradient are exactly
      the plain ones where those are finite (``0 * inf`` would be NaN). Two
      objective evaluations, whatever ``valid`` is, and no
      branch: under ``vmap`` a ``lax.cond`` becomes a select that evaluates both
      branches, three evaluations in all.
    * otherwise: a ``lax.cond`` between the pooled loss and the plain one (one
      evaluation while the buffer is empty, outside ``vmap``).
    """
    keep = 1.0 - replay_weight

    def objective_h(params, batch):
        current, replay, valid = batch
        full = jnp.all(valid)
        if _same_layout(current, replay):
            replay = tree_select(full, replay, current)
            return (jnp.where(full, keep, 1.0) * objective(params, current)
                    + jnp.where(full, replay_weight, 0.0) * objective(params, replay))

        def pooled(params):
            return keep * objective(params, current) + replay_weight * objective(params, replay)

        def current_only(params):
            return jnp.asarray(objective(params, current), jnp.float32)

        return jax.lax.cond(full, pooled, current_only, params)

    return objective_h


def _same_layout(a, b) -> bool:
    """Whether the pytrees `a` and `b` have the same structure, leaf shapes and dtypes."""
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    return ta == tb and all(jnp.shape(x) == jnp.shape(y) and jnp.result_type(x) == jnp.result_type(y)
                            for x, y in zip(la, lb))
