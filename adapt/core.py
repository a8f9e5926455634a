"""Pure functional core of test-time adaptation: safe gradient steps with rollback.

Everything here is a pure function of pytrees, safe under ``jit``, ``vmap``
and inside ``lax.scan`` (e.g. an RL evaluation that adapts between episodes).

Notation:
  params     model parameters (any pytree of float arrays).
  opt_state  the optax state of ``optimizer`` for ``params``.
  batch      any pytree the objective reads (e.g. ``(x, y)`` or a trajectory).
  objective  ``objective(params, batch) -> scalar`` loss (a static Python callable).
  optimizer  an ``optax.GradientTransformation`` (static).

The safety rule. A step proposes ``params' = params + update(grad)`` and
evaluates ``(loss', grad') = value_and_grad(objective)(params', batch)``
(which the next step reuses, so a step costs one forward and one backward
pass). The step is ACCEPTED only if all of ``loss``, ``grad``, ``params'``,
``loss'`` and ``grad'`` are finite and ``loss' <= divergence_threshold``
(and, with ``monotone=True``, ``loss' <= loss``);
otherwise it is ROLLED BACK: params and optimiser state stay exactly as they
were (``jnp.where`` on the pytrees). Params therefore never become NaN or
infinite, whatever the learning rate or the batch. After a rollback the
multi-step loop stops (the same step on the same batch would be rejected
again), so ``steps`` counts accepted steps and ``rollbacks`` is 0 or 1.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Tuple

import chex
import flax.struct
import jax
import jax.numpy as jnp
import optax

from ssm_jax.validation import check_bool, check_int

PyTree = Any
Objective = Callable[[PyTree, Any], chex.Array]


@flax.struct.dataclass
class AdaptInfo:
    """What an adaptation call did (all scalars).

    loss_before: objective at the params the call started from.
    loss_after:  objective at the params the call returned.
    steps:       int32, accepted gradient steps.
    rollbacks:   int32, rejected (undone) steps, 0 or 1.
    rolled_back: bool, ``rollbacks > 0``.
    """

    loss_before: chex.Array
    loss_after: chex.Array
    steps: chex.Array
    rollbacks: chex.Array
    rolled_back: chex.Array


def tree_all_finite(tree: PyTree) -> chex.Array:
    """A bool scalar: every element of every (inexact) leaf is finite."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    if not leaves:
        return jnp.array(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def finite_step(loss: chex.Array, grads: PyTree, new_params: PyTree) -> chex.Array:
    """The non-finite guard shared by every gradient step of the project (``adapt`` here,
    ``maml.core.meta_update`` for MetaMAML and MAMLRL): a bool scalar, true iff the step's
    ``loss``, its ``grads`` and the ``new_params`` it proposes are all finite. A step for which
    it is false is not taken (the caller keeps its previous state)."""
    return jnp.isfinite(loss) & tree_all_finite(grads) & tree_all_finite(new_params)


def tree_select(pred: chex.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    """Leaf-wise ``jnp.where(pred, on_true, on_false)`` for a scalar ``pred``."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _scalar_objective(objective: Objective) -> Objective:
    def checked(params, batch):
        loss = objective(params, batch)
        if jnp.shape(loss) != ():
            raise ValueError(
                f"the loss must be a scalar, got shape {jnp.shape(loss)}; reduce it (e.g. mean) in loss_fn."
            )
        return jnp.asarray(loss, jnp.float32)

    return checked


def _propose(params, opt_state, loss, grads, batch, *, objective, optimizer, divergence_threshold,
             monotone):
    """One guarded step from ``params`` whose ``loss``/``grads`` are known.

    Returns ``(params, opt_state, loss, grads, accepted)`` where the first four
    are the new values if accepted, the old ones otherwise.
    """
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    new_params = jax.tree.map(lambda n, p: n.astype(p.dtype), new_params, params)
    new_loss, new_grads = jax.value_and_grad(objective)(new_params, batch)
    accepted = (
        finite_step(loss, grads, new_params)
        & jnp.isfinite(new_loss)
        & tree_all_finite(new_grads)
        & (new_loss <= divergence_threshold)
    )
    if monotone:
        accepted = accepted & (new_loss <= loss)
    return (
        tree_select(accepted, new_params, params),
        tree_select(accepted, new_opt_state, opt_state),
        jnp.where(accepted, new_loss, loss),
        tree_select(accepted, new_grads, grads),
        accepted,
    )


def adapt_step(
    params: PyTree,
    opt_state: optax.OptState,
    batch: Any,
    *,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    divergence_threshold: float = math.inf,
    monotone: bool = False,
) -> Tuple[PyTree, optax.OptState, AdaptInfo]:
    """One guarded gradient step of ``objective(., batch)`` (see module docstring).

    Returns ``(params, opt_state, info)``; on rollback params and opt_state are
    the inputs, unchanged. Pure; jit with ``objective``/``optimizer`` static.
    """
    return adapt_steps(params, opt_state, batch, objective=objective, optimizer=optimizer,
                       num_steps=1, divergence_threshold=divergence_threshold, monotone=monotone)


def adapt_steps(
    params: PyTree,
    opt_state: optax.OptState,
    batch: Any,
    *,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    divergence_threshold: float = math.inf,
    monotone: bool = False,
) -> Tuple[PyTree, optax.OptState, AdaptInfo]:
    """Up to ``num_steps`` guarded gradient steps on one batch (``lax.while_loop``).

    The loop stops at ``num_steps`` accepted steps or at the first rollback.
    Compile time does not depend on ``num_steps``. Under ``vmap`` each row
    stops independently (finished rows are left unchanged).
    Returns ``(params, opt_state, info)``.
    """
    num_steps = check_int("num_steps", num_steps, 0)
    monotone = check_bool("monotone", monotone)
    objective = _scalar_objective(objective)
    loss0, grads0 = jax.value_and_grad(objective)(params, batch)
    threshold = jnp.asarray(divergence_threshold, jnp.float32)

    def cond(carry):
        i, _, _, _, _, rolled_back = carry
        return (i < num_steps) & ~rolled_back

    def body(carry):
        i, p, s, loss, grads, _ = carry
        p, s, loss, grads, accepted = _propose(
            p, s, loss, grads, batch, objective=objective, optimizer=optimizer,
            divergence_threshold=threshold, monotone=monotone)
        return i + accepted.astype(jnp.int32), p, s, loss, grads, ~accepted

    init = (jnp.zeros((), jnp.int32), params, opt_state, loss0, grads0, jnp.array(False))
    steps, params, opt_state, loss, _, rolled_back = jax.lax.while_loop(cond, body, init)
    info = AdaptInfo(loss_before=loss0, loss_after=loss, steps=steps,
                     rollbacks=rolled_back.astype(jnp.int32), rolled_back=rolled_back)
    return params, opt_state, info
