"""Pure-function core of MAML / FOMAML / Meta-SGD / ANIL.

Everything here is a pure function of arrays and pytrees, safe under ``jit``,
``vmap`` and ``grad``; the ``MetaMAML`` class only binds the static pieces
(apply function, loss, config) with ``functools.partial``.

Notation (shapes are per task unless a leading ``T`` task axis is shown):
  params     model parameters (any pytree).
  inner_lr   step sizes: a pytree with the structure and leaf shapes of ``params``
             (``init_inner_lr`` for a scalar; Meta-SGD learns it per parameter).
  mask       ``None`` (adapt everything) or a pytree of Python bools with the
             structure of ``params``; only ``True`` leaves are adapted in the
             inner loop (ANIL-style adaptation of a subset). The mask is static:
             frozen leaves are not even differentiated in the inner loop.
  tasks      dict with ``support_x`` (T, ...), ``support_y`` (T, ...),
             ``query_x`` (T, ...), ``query_y`` (T, ...).

The inner loop is ``lax.scan`` over ``num_steps`` gradient steps, so compile
time does not grow with the number of steps. ``first_order=True`` puts a
``stop_gradient`` on every inner gradient: the adapted params are then
``params - lr * sg(g)``, whose Jacobian w.r.t. ``params`` is the identity, so
the meta-gradient becomes the FOMAML one (the query gradient at the adapted
params), while a learned ``inner_lr`` still receives its (exact) gradient
``-sg(g) * dL_query/dadapted``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import chex
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from adapt.core import finite_step, tree_select
from ssm_jax.validation import check_params

PyTree = Any
ApplyFn = Callable[[PyTree, chex.Array], chex.Array]
LossFn = Callable[[chex.Array, chex.Array], chex.Array]
Objective = Callable[[PyTree, Any], chex.Array]


# --------------------------------------------------------------------------
# model / loss adapters
# --------------------------------------------------------------------------
def predictions_of(output) -> chex.Array:
    """The predictions in a model output.

    ``ssm_jax`` modules return ``(ys, carry)``; their predictions are ``ys``.
    A tuple/list output is therefore read as ``(predictions, *extras)``; any
    other output is the predictions themselves.
    """
    if isinstance(output, (tuple, list)):
        if len(output) == 0:
            raise ValueError("model returned an empty tuple; expected predictions or (predictions, carry).")
        return output[0]
    return output


def make_apply_fn(model, arg_name: str = "model") -> ApplyFn:
    """``(params, x) -> predictions`` from a Flax module or an apply function.

    ``arg_name`` is the caller's name for the argument, used in the error message.
    """
    if isinstance(model, nn.Module):
        return lambda params, x: predictions_of(model.apply(params, x))
    if callable(model):
        return lambda params, x: predictions_of(model(params, x))
    raise ValueError(
        f"{arg_name} must be a flax.linen.Module or a callable (params, x) -> predictions, "
        f"got {type(model).__name__}."
    )


def mse_loss(predictions: chex.Array, targets: chex.Array) -> chex.Array:
    """Mean squared error over every element; predictions and targets share a shape."""
    if jnp.shape(predictions) != jnp.shape(targets):
        raise ValueError(
            f"mse_loss: predictions of shape {jnp.shape(predictions)} do not match targets of "
            f"shape {jnp.shape(targets)}."
        )
    return jnp.mean(jnp.square(predictions - targets))


def supervised_objective(apply_fn: ApplyFn, loss_fn: LossFn) -> Objective:
    """``objective(params, (x, y)) = loss_fn(apply_fn(params, x), y)``."""

    def objective(params, batch):
        x, y = batch
        return loss_fn(apply_fn(params, x), y)

    return objective


def check_supervised_batch(apply_fn: ApplyFn, loss_fn: LossFn, params: PyTree, x, y,
                           x_name: str, y_name: str, params_name: str = "params") -> None:
    """Check, from shapes alone, that ``loss_fn(apply_fn(params, x), y)`` is a real scalar.

    The one check of a supervised batch against a model, shared by ``MetaMAML`` (support and
    query sets) and ``adapt.Adapter`` (``observations``/``targets``); it runs at trace time
    (``jax.eval_shape``, nothing is computed), so a mismatch is a ``ValueError`` naming the
    arguments before anything compiles, instead of an error from inside the model. ``x`` and
    ``y`` (arrays, tracers or ``jax.ShapeDtypeStruct``) need a leading sample axis of the same
    size >= 1.
    """
    def spec(a):
        return jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a))

    xs, ys = spec(x), spec(y)
    for name, a in ((x_name, xs), (y_name, ys)):
        if not a.shape:
            raise ValueError(f"{name} must have a leading sample axis, got shape ()")
    if xs.shape[0] != ys.shape[0]:
        raise ValueError(f"{x_name} and {y_name} must have the same number of samples (leading axis), "
                         f"got shapes {xs.shape} and {ys.shape}")
    if xs.shape[0] == 0:
        raise ValueError(f"{x_name} must hold at least one sample, got shape {xs.shape}")
    try:
        pred = jax.eval_shape(apply_fn, jax.tree.map(spec, params), xs)
    except Exception as err:  # the model's own shape/type error, whatever its kind
        raise ValueError(f"the model cannot be applied to {params_name} and {x_name} of shape {xs.shape} "
                         f"({xs.dtype}): {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                         ) from err
    try:
        loss = jax.eval_shape(loss_fn, pred, ys)
    except Exception as err:
        raise ValueError(f"{y_name} of shape {ys.shape} does not fit the model's predictions of shape "
                         f"{getattr(pred, 'shape', pred)} for {x_name} of shape {xs.shape} under loss_fn: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    if getattr(loss, "shape", None) != () or not jnp.issubdtype(loss.dtype, jnp.floating):
        raise ValueError(f"loss_fn must return a real scalar, got {getattr(loss, 'shape', loss)} "
                         f"{getattr(loss, 'dtype', '')} for predictions {getattr(pred, 'shape', pred)} and "
                         f"{y_name} {ys.shape}; reduce it (e.g. mean)")


# --------------------------------------------------------------------------
# masks, step-size trees and the inner step
# --------------------------------------------------------------------------
def build_mask(params: PyTree, adapt_filter) -> Optional[PyTree]:
    """Turn ``adapt_filter`` into a static mask pytree of Python bools (or None).

    ``adapt_filter`` may be:
      * ``None``: adapt every parameter (returns ``None``);
      * a callable ``(path: str, leaf) -> bool`` where ``path`` is the
        '/'-joined key path, e.g. ``"params/Dense_1/kernel"``;
      * a sequence of strings: adapt the leaves whose path contains any of them;
      * a pytree of bools with the structure of ``params``.
    """
    if adapt_filter is None:
        return None
    if isinstance(adapt_filter, str):
        adapt_filter = (adapt_filter,)
    if isinstance(adapt_filter, (tuple, list)) and all(isinstance(s, str) for s in adapt_filter):
        names = tuple(adapt_filter)
        predicate = lambda path, leaf: any(n in path for n in names)
    elif callable(adapt_filter):
        predicate = adapt_filter
    else:
        try:
            mask = jax.tree.map(lambda _, m: bool(m), params, adapt_filter)
        except (ValueError, TypeError) as e:
            raise ValueError(
                "adapt_filter must be None, a predicate (path, leaf) -> bool, a list of path "
                f"substrings, or a pytree of bools with the structure of params ({e})."
            ) from None
        return _checked_mask(mask)

    def path_str(path):
        parts = []
        for k in path:
            for attr in ("key", "name", "idx"):
                if hasattr(k, attr):
                    parts.append(str(getattr(k, attr)))
                    break
            else:
                parts.append(str(k))
        return "/".join(parts)

    mask = jax.tree_util.tree_map_with_path(lambda p, leaf: bool(predicate(path_str(p), leaf)), params)
    return _checked_mask(mask)


class MaskCache:
    """``build_mask(params, adapt_filter)``, rebuilt only when the params' tree structure changes.

    Shared by ``MetaMAML`` and ``MAMLRL``: the mask is built on demand from whatever params
    arrive (also a state restored from a checkpoint that never went through ``init``).
    """

    def __init__(self, adapt_filter):
        self.adapt_filter = adapt_filter
        self._treedef = None
        self._mask = None

    def __call__(self, params: PyTree) -> Optional[PyTree]:
        treedef = jax.tree.structure(params)
        if self._treedef is None or self._treedef != treedef:
            self._mask = build_mask(params, self.adapt_filter)
            self._treedef = treedef
        return self._mask


def _checked_mask(mask):
    if not any(jax.tree.leaves(mask)):
        raise ValueError("adapt_filter selects no parameter to adapt; check the names/predicate.")
    return mask


def init_inner_lr(params: PyTree, value: float) -> PyTree:
    """The step-size tree of a scalar step size: ``value`` in every entry of every leaf.

    Leaves have the shapes and dtypes of ``params`` (float32 for float32 params). This is the
    form of ``MetaState.inner_lr`` and of every ``inner_lr`` argument in this module.
    """
    return jax.tree.map(lambda p: jnp.full(jnp.shape(p), value, jnp.result_type(p)), params)


def _check_inner_lr(inner_lr, treedef) -> list:
    """The leaves of ``inner_lr``, which must have the tree structure ``treedef``."""
    if jax.tree.structure(inner_lr) != treedef:
        raise ValueError(
            "inner_lr must be a pytree with the structure of the params (e.g. "
            f"maml.core.init_inner_lr(params, 0.01)); got structure {jax.tree.structure(inner_lr)}, "
            f"params have {treedef}."
        )
    return treedef.flatten_up_to(inner_lr)


def check_inner_lr(inner_lr: PyTree, params: PyTree) -> None:
    """Raise ``ValueError`` unless ``inner_lr`` is a step-size tree for ``params``: their tree
    structure, float leaves that broadcast to the params' leaves, finite in an eager call."""
    lrs = _check_inner_lr(inner_lr, jax.tree.structure(params))
    check_params("inner_lr", inner_lr)
    for lr, p in zip(lrs, jax.tree.leaves(params)):
        _check_broadcasts(lr, p)


def _check_broadcasts(lr, p) -> None:
    """An inner_lr leaf must broadcast to its parameter's shape (without growing it)."""
    try:
        ok = jnp.broadcast_shapes(jnp.shape(lr), jnp.shape(p)) == jnp.shape(p)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"an inner_lr leaf of shape {jnp.shape(lr)} does not broadcast to its "
                         f"parameter's shape {jnp.shape(p)}.")


def scale_by_inner_lr(inner_lr: PyTree, mask: Optional[PyTree] = None) -> optax.GradientTransformation:
    """The inner-loop gradient step as an optax transformation: ``update = -(inner_lr * grad)``.

    With ``optax.apply_updates`` an adapted leaf becomes exactly ``p - lr * g``. ``inner_lr``
    has the structure of the params, each leaf of its param's shape (or broadcastable to it,
    e.g. a scalar per leaf); it is closed over, so ``jax.grad`` through ``update`` reaches it
    (Meta-SGD). ``mask`` is None (every leaf adapted) or a pytree of Python bools with that
    structure: a frozen (``False``) leaf gets the update ``-0.0``, the additive identity, so
    ``optax.apply_updates`` returns it bit for bit, whatever its gradient. Stateless
    (``optax.EmptyState``); ``params`` is not used. The MAML inner loops apply it through
    ``inner_sgd_step``, which leaves frozen leaves out of the arithmetic altogether.
    """

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        grads, treedef = jax.tree.flatten(updates)
        lrs = _check_inner_lr(inner_lr, treedef)
        adapted = [True] * len(grads) if mask is None else treedef.flatten_up_to(mask)
        out = []
        for g, lr, m in zip(grads, lrs, adapted):
            _check_broadcasts(lr, g)
            out.append(-(lr * g) if m else jnp.full_like(g, -0.0))
        return jax.tree.unflatten(treedef, out), state

    return optax.GradientTransformation(init, update)


def _adapted_indices(treedef, mask) -> list:
    """Indices of the adapted leaves (all of them when ``mask`` is None)."""
    if mask is None:
        return list(range(treedef.num_leaves))
    return [i for i, m in enumerate(treedef.flatten_up_to(mask)) if m]


def inner_sgd_step(params: PyTree, grads: PyTree, inner_lr: PyTree, mask: Optional[PyTree] = None) -> PyTree:
    """``params`` after one ``scale_by_inner_lr(inner_lr)`` step along ``grads``.

    Adapted leaves become ``p + (-(lr * g))`` (``optax.apply_updates``), i.e. ``p - lr * g``;
    frozen leaves (``mask`` False) are returned as they are, the same arrays, so a ``lax.scan``
    over inner steps sees them as loop-invariant. ``params``, ``grads`` and ``inner_lr`` share
    one tree structure.
    """
    leaves, treedef = jax.tree.flatten(params)
    lrs = _check_inner_lr(inner_lr, treedef)
    g = treedef.flatten_up_to(grads)
    idx = _adapted_indices(treedef, mask)
    sgd = scale_by_inner_lr([lrs[i] for i in idx])
    updates, _ = sgd.update([g[i] for i in idx], sgd.init(None))
    new = list(leaves)
    for i, leaf in zip(idx, optax.apply_updates([leaves[i] for i in idx], updates)):
        new[i] = leaf
    return jax.tree.unflatten(treedef, new)


# --------------------------------------------------------------------------
# inner loop
# --------------------------------------------------------------------------
def inner_loop(
    params: PyTree,
    inner_lr: PyTree,
    batch,
    *,
    objective: Objective,
    num_steps: int,
    mask: Optional[PyTree] = None,
    first_order: bool = False,
    remat: bool = False,
):
    """``num_steps`` gradient steps of ``objective(., batch)`` from ``params``.

    Each step is ``inner_sgd_step`` on the adapted leaves (the leaves ``mask`` selects): only
    they are carried through the scan and differentiated.
    Returns ``(adapted_params, losses)``: losses has shape ``(num_steps,)``,
    the objective *before* each step (``losses[0]`` is the pre-adaptation
    support loss). ``num_steps = 0`` returns ``params`` unchanged.
    """
    leaves, treedef = jax.tree.flatten(params)
    lrs = _check_inner_lr(inner_lr, treedef)
    idx = _adapted_indices(treedef, mask)
    frozen = list(leaves)
    ad_lrs = [lrs[i] for i in idx]

    def rebuild(adapted_leaves):
        full = list(frozen)
        for i, leaf in zip(idx, adapted_leaves):
            full[i] = leaf
        return jax.tree.unflatten(treedef, full)

    def step(adapted_leaves, _):
        loss, grads = jax.value_and_grad(lambda a: objective(rebuild(a), batch))(adapted_leaves)
        if first_order:
            grads = jax.lax.stop_gradient(grads)
        return inner_sgd_step(adapted_leaves, grads, ad_lrs), loss

    if remat:
        step = jax.checkpoint(step)
    adapted, losses = jax.lax.scan(step, [leaves[i] for i in idx], None, length=num_steps)
    return rebuild(adapted), losses


# --------------------------------------------------------------------------
# outer objective
# --------------------------------------------------------------------------
def task_meta_loss(params, inner_lr, task, *, objective: Objective, num_steps: int,
                   mask=None, first_order=False, remat=False):
    """Query loss after adapting on the support set of one task, and metrics.

    ``task`` has ``support_x``, ``support_y``, ``query_x``, ``query_y``
    without a task axis. Returns ``(post_query_loss, metrics)`` with metrics
    ``pre_query_loss`` (unadapted params, no gradient), ``pre_support_loss``.
    """
    adapted, losses = inner_loop(
        params, inner_lr, (task["support_x"], task["support_y"]), objective=objective,
        num_steps=num_steps, mask=mask, first_order=first_order, remat=remat,
    )
    query = (task["query_x"], task["query_y"])
    post = objective(adapted, query)
    pre = objective(jax.lax.stop_gradient(params), query)
    pre_support = losses[0] if num_steps > 0 else objective(jax.lax.stop_gradient(params),
                                                            (task["support_x"], task["support_y"]))
    return post, {"pre_query_loss": pre, "post_query_loss": post,
                  "pre_support_loss": jax.lax.stop_gradient(pre_support)}


TASK_KEYS = ("support_x", "support_y", "query_x", "query_y")


def check_tasks(tasks) -> int:
    """Validate a task batch (at trace time) and return the number of tasks.

    Only ``TASK_KEYS`` need (and get) a leading task axis, of size >= 1 (a mean over no task
    is NaN); other keys are allowed and ignored.
    """
    if not isinstance(tasks, dict) or any(k not in tasks for k in TASK_KEYS):
        got = sorted(tasks) if isinstance(tasks, dict) else type(tasks).__name__
        raise ValueError(f"tasks must be a dict with keys {TASK_KEYS}, each with a leading task axis; got {got}.")
    sizes = {k: (jnp.shape(tasks[k])[0] if jnp.ndim(tasks[k]) > 0 else None) for k in TASK_KEYS}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise ValueError(
            f"tasks arrays must share a leading task axis; got leading sizes {sizes} "
            f"(shapes { {k: jnp.shape(tasks[k]) for k in TASK_KEYS} })."
        )
    n = next(iter(sizes.values()))
    if n < 1:
        raise ValueError(f"tasks must hold at least one task, got a task axis of size 0 (shapes "
                         f"{ {k: jnp.shape(tasks[k]) for k in TASK_KEYS} }).")
    return n


def meta_loss(params, inner_lr, tasks, *, objective: Objective, num_steps: int,
              mask=None, first_order=False, remat=False):
    """Mean post-adaptation query loss over a batch of tasks (``vmap``).

    Returns ``(loss, metrics)`` where metrics are task means of
    ``task_meta_loss``'s metrics. Differentiable in ``params`` and ``inner_lr``.
    """
    check_tasks(tasks)
    # vmap over the four task arrays only: other keys (e.g. task metadata without a task
    # axis) are ignored rather than crashing the vmap
    per_task = jax.vmap(
        lambda t: task_meta_loss(params, inner_lr, t, objective=objective, num_steps=num_steps,
                                 mask=mask, first_order=first_order, remat=remat)
    )({k: tasks[k] for k in TASK_KEYS})
    losses, metrics = per_task
    return jnp.mean(losses), jax.tree.map(jnp.mean, metrics)


# --------------------------------------------------------------------------
# meta-update
# --------------------------------------------------------------------------
@flax.struct.dataclass
class MetaState:
    """Carried state of meta-training.

    params:   meta-parameters of the model (the MAML initialisation).
    inner_lr: the inner step sizes, a pytree with the structure, shapes and dtypes of params
              (``init_inner_lr``); meta-learned (Meta-SGD) or constant, as ``meta_update``'s
              ``learn_inner_lr`` says.
    opt_state: optax state over the learned meta-parameters: ``(params, inner_lr)`` when the
              step sizes are learned, ``params`` otherwise.
    step:     number of meta-updates done (int32 scalar).
    """

    params: PyTree
    inner_lr: PyTree
    opt_state: optax.OptState
    step: chex.Array


def make_optimizer(outer_lr: float, grad_clip: Optional[float] = None) -> optax.GradientTransformation:
    """Adam at ``outer_lr``, preceded by global-norm clipping if ``grad_clip``."""
    parts = []
    if grad_clip is not None:
        parts.append(optax.clip_by_global_norm(grad_clip))
    parts.append(optax.adam(outer_lr))
    return optax.chain(*parts)


def _learned(params, inner_lr, learn_inner_lr: bool):
    """The meta-parameters the outer optimiser updates."""
    return (params, inner_lr) if learn_inner_lr else params


def init_state(params, inner_lr, optimizer, *, learn_inner_lr: bool) -> MetaState:
    """Fresh MetaState; ``inner_lr`` is a params-shaped step-size tree (``init_inner_lr``)."""
    return MetaState(params=params, inner_lr=inner_lr,
                     opt_state=optimizer.init(_learned(params, inner_lr, learn_inner_lr)),
                     step=jnp.zeros((), jnp.int32))


def meta_update(state: MetaState, batch, *, loss: Callable, optimizer, learn_inner_lr: bool):
    """One meta-step: gradient of ``loss(params, inner_lr, batch)`` and an optax update.

    ``loss`` returns ``(scalar, metrics)``. With ``learn_inner_lr`` the gradient and the
    update are over ``(params, inner_lr)`` (Meta-SGD); without it, over ``params`` only:
    ``state.inner_lr`` is a constant of the loss and is returned unchanged. The state must
    come from ``init_state`` with the same ``learn_inner_lr``. Returns ``(new_state,
    metrics)``; metrics gain ``meta_loss``, ``meta_grad_norm`` (of the learned part) and
    ``skipped_steps`` (int32, 1 if the step was skipped).

    Non-finite guard (``adapt.core.finite_step``, shared with ``adapt``): if the meta-loss, the
    meta-gradient or the updated meta-parameters are not finite (a NaN in a batch, a huge step
    size), the step is skipped: ``new_state`` is ``state`` unchanged (params, inner step sizes,
    optimiser state and step counter) and ``skipped_steps`` is 1; the metrics still report the
    non-finite loss, so a caller sees what happened. A finite step is taken exactly as without
    the guard (a select, bit for bit).
    """
    if learn_inner_lr:
        def total(meta_params):
            params, lr = meta_params
            return loss(params, lr, batch)
    else:
        def total(params):
            return loss(params, state.inner_lr, batch)

    meta_params = _learned(state.params, state.inner_lr, learn_inner_lr)
    (value, metrics), grads = jax.value_and_grad(total, has_aux=True)(meta_params)
    updates, opt_state = optimizer.update(grads, state.opt_state, meta_params)
    new = optax.apply_updates(meta_params, updates)
    params, lr = new if learn_inner_lr else (new, state.inner_lr)
    ok = finite_step(value, grads, new)
    new_state = tree_select(ok, MetaState(params=params, inner_lr=lr, opt_state=opt_state, step=state.step + 1),
                            state)
    metrics = dict(metrics, meta_loss=value, meta_grad_norm=optax.tree.norm(grads),
                   skipped_steps=jnp.logical_not(ok).astype(jnp.int32))
    return new_state, metrics
