"""``MetaMAML``: the seeds' API as a thin shell over ``maml.core``.

    maml = MetaMAML(model, inner_lr=0.01, outer_lr=0.001, num_inner_steps=1)
    state = maml.init(params)
    state, metrics = maml.meta_update(state, tasks)   # jitted once per shape
    adapted = maml.adapt(state, task_data=x, task_labels=y)
    loss = maml.outer_loop(query_x=qx, query_y=qy, adapted_params=adapted)

The seeds' methods keep their names and keyword names; what is functional here is passed
explicitly: the params (or the ``MetaState``, carrying the inner step sizes) come first, and
``meta_update`` returns the new state.

``tasks`` is a dict of arrays ``support_x``, ``support_y``, ``query_x``,
``query_y``, each with a leading task axis ``T``; the per-task arrays are what
``model`` takes/produces (e.g. support_x ``(T, B, time, input_dim)`` for an
``ssm_jax.SSM``).
"""

from __future__ import annotations

import functools
from typing import Optional

import jax

from maml import core
from maml.config import MAMLConfig
from ssm_jax import sharding
from ssm_jax.validation import check_finite, check_params, real_array


def _task_arrays(tasks):
    """The four task arrays of a validated task dict, as real JAX arrays (other keys, e.g.
    metadata without a task axis, are ignored)."""
    return {k: real_array(f"tasks[{k!r}]", tasks[k]) for k in core.TASK_KEYS}


def _data(name: str, x):
    """One task's support or query array for an eager-or-traced call: a real array, refused
    (``ValueError`` naming ``name``) if it is concrete and holds NaN or an infinity."""
    x = real_array(name, x)
    check_finite(name, x)
    return x


def _per_task(a):
    """The shape of one task's slice of a task-leading array."""
    return jax.ShapeDtypeStruct(a.shape[1:], a.dtype)


class MetaMAML:
    """Model-Agnostic Meta-Learning (MAML, FOMAML, Meta-SGD, ANIL) in pure JAX.

    Args:
      model: a ``flax.linen.Module`` or an apply function ``(params, x) ->
        predictions``. A tuple output ``(ys, carry)`` (the ``ssm_jax``
        modules) is read as predictions ``ys``.
      inner_lr, outer_lr, num_inner_steps, first_order, grad_clip,
        learn_inner_lr, remat_inner: see ``MAMLConfig``.
      loss_fn: ``(predictions, targets) -> scalar``; default mean squared error.
      adapt_filter: which params the inner loop adapts (see
        ``core.build_mask``): None (all), a predicate ``(path, leaf) -> bool``,
        path substrings such as ``["Dense_2"]`` (ANIL: the head only), or a
        bool pytree.
      mesh: None (one device) or a ``jax.sharding.Mesh`` with a ``"batch"`` axis
        (``ssm_jax.sharding.make_mesh``): ``meta_update`` then splits the task axis over its
        devices (the number of tasks must be divisible by them) and keeps the state
        replicated; the meta-gradient is reduced across devices inside the jitted step, so
        the results equal the single-device ones up to float reassociation.
    """

    def __init__(self, model, inner_lr: float = 0.01, outer_lr: float = 0.001,
                 num_inner_steps: int = 1, first_order: bool = False, loss_fn=None,
                 grad_clip: Optional[float] = None, learn_inner_lr: bool = False,
                 adapt_filter=None, remat_inner: bool = False, mesh=None):
        self.config = MAMLConfig(inner_lr=inner_lr, outer_lr=outer_lr,
                                 num_inner_steps=num_inner_steps, first_order=first_order,
                                 grad_clip=grad_clip, learn_inner_lr=learn_inner_lr,
                                 remat_inner=remat_inner)
        if loss_fn is not None and not callable(loss_fn):
            raise ValueError(f"loss_fn must be callable (predictions, targets) -> scalar, got {loss_fn!r}.")
        self.model = model
        self.apply_fn = core.make_apply_fn(model)
        self.loss_fn = core.mse_loss if loss_fn is None else loss_fn
        self.objective = core.supervised_objective(self.apply_fn, self.loss_fn)
        self.adapt_filter = adapt_filter
        self.mesh = sharding.check_mesh("mesh", mesh)
        self.optimizer = core.make_optimizer(self.config.outer_lr, self.config.grad_clip)
        self._set_mask = core.MaskCache(adapt_filter)
        self._meta_update = jax.jit(self._meta_update_impl)
        # jitted once per object: eager calls reuse the compilation (no re-trace per call)
        self._inner_loop_jit = jax.jit(self._inner_loop_impl)
        self._outer_loop_jit = jax.jit(self._outer_loop_impl)
        self._meta_loss_jit = jax.jit(self._meta_loss_impl)

    # ------------------------------------------------------------------ state
    def init(self, params) -> core.MetaState:
        """MetaState of ``params``; its ``inner_lr`` is the params-shaped tree of
        ``config.inner_lr``, meta-learned by ``meta_update`` iff ``learn_inner_lr``."""
        if isinstance(params, core.MetaState):
            raise ValueError("init takes the model params (e.g. model.init(key, x)), got a MetaState.")
        check_params("params", params)
        self._set_mask(params)
        return core.init_state(params, self._config_inner_lr(params), self.optimizer,
                               learn_inner_lr=self.config.learn_inner_lr)

    def _config_inner_lr(self, params):
        """The step-size tree of ``config.inner_lr`` for ``params``."""
        return core.init_inner_lr(params, self.config.inner_lr)

    def params_and_inner_lr(self, params, inner_lr=None):
        """``(params, inner_lr_tree)`` of a call given a MetaState or raw params.

        A MetaState gives its params and its own step-size tree (``inner_lr`` must not be given
        then). Raw params take ``inner_lr`` (a params-shaped tree) if given, else the tree of
        ``config.inner_lr``.
        """
        if isinstance(params, core.MetaState):
            if inner_lr is not None:
                raise ValueError("conflicting step sizes: a MetaState carries its own inner_lr; pass "
                                 "either the MetaState or (params, inner_lr=...), not both.")
            check_params("state.params", params.params, finite=False)
            return params.params, params.inner_lr
        check_params("params", params)
        if inner_lr is None:
            inner_lr = self._config_inner_lr(params)
        else:
            core.check_inner_lr(inner_lr, params)
        return params, inner_lr

    def _kw(self, params):
        return dict(objective=self.objective, num_steps=self.config.num_inner_steps,
                    mask=self._set_mask(params), first_order=self.config.first_order,
                    remat=self.config.remat_inner)

    # ------------------------------------------------------------ inner/outer
    def inner_loop(self, params=None, support_x=None, support_y=None, inner_lr=None):
        """Adapted params after ``num_inner_steps`` steps on the support set.

        ``params``: the params to adapt or a MetaState (then its params and step sizes).
        ``support_x``/``support_y``: the support inputs and targets of one task (the seeds'
        names; keywords work). ``inner_lr``: step-size tree for raw params (default: the tree
        of ``config.inner_lr``). Jitted once per object (differentiable).

        Checked before compiling (``ValueError`` naming the argument): params are float arrays,
        the support set fits the model and the loss (``core.check_supervised_batch``) and, in
        an eager call, params and support set are finite. Under ``jit``/``grad`` values are not
        read: the inner steps are plain arithmetic, so a NaN in the data (or a step size that
        overflows) gives non-finite adapted params; ``meta_update`` skips such a step.
        """
        params = _required("inner_loop", "params", params, _STATE_HINT)
        support_x = _required("inner_loop", "support_x", support_x)
        support_y = _required("inner_loop", "support_y", support_y)
        params, inner_lr = self.params_and_inner_lr(params, inner_lr)
        support_x, support_y = _data("support_x", support_x), _data("support_y", support_y)
        return self._inner_loop_jit(params, support_x, support_y, inner_lr)

    def _check_batch(self, params, x, y, x_name, y_name, params_name="params"):
        """``core.check_supervised_batch`` with this MetaMAML's model and loss (trace time)."""
        core.check_supervised_batch(self.apply_fn, self.loss_fn, params, x, y, x_name, y_name, params_name)

    def _check_tasks(self, params, tasks):
        """Each task's support and query sets against the model (trace time, shapes only)."""
        for x, y in (("support_x", "support_y"), ("query_x", "query_y")):
            self._check_batch(params, _per_task(tasks[x]), _per_task(tasks[y]),
                              f"tasks[{x!r}] (per task)", f"tasks[{y!r}] (per task)")

    def _inner_loop_impl(self, params, support_x, support_y, inner_lr):
        self._check_batch(params, support_x, support_y, "support_x", "support_y")
        adapted, _ = core.inner_loop(params, inner_lr, (support_x, support_y), **self._kw(params))
        return adapted

    def adapt(self, params=None, task_data=None, task_labels=None, inner_lr=None, *,
              support_x=None, support_y=None):
        """``inner_loop`` in the seeds' names: ``adapt(params, task_data, task_labels)``.

        ``task_data``/``task_labels`` are the support inputs/targets (``support_x``/``support_y``
        are accepted instead, not both); ``params`` and ``inner_lr`` as in ``inner_loop``.
        Returns the adapted params.
        """
        task_data = _one_of("adapt", ("task_data", task_data), ("support_x", support_x))
        task_labels = _one_of("adapt", ("task_labels", task_labels), ("support_y", support_y))
        params = _required("adapt", "params", params, _STATE_HINT)
        return self.inner_loop(params, task_data, task_labels, inner_lr)

    def outer_loop(self, adapted_params=None, query_x=None, query_y=None):
        """Query loss of ``adapted_params`` (scalar); jitted once per object. The seeds' keyword
        form ``outer_loop(query_x=..., query_y=..., adapted_params=...)`` works."""
        adapted_params = _required("outer_loop", "adapted_params", adapted_params,
                                   " (the params returned by inner_loop/adapt)")
        query_x = _required("outer_loop", "query_x", query_x)
        query_y = _required("outer_loop", "query_y", query_y)
        check_params("adapted_params", adapted_params)
        return self._outer_loop_jit(adapted_params, _data("query_x", query_x), _data("query_y", query_y))

    def _outer_loop_impl(self, adapted_params, query_x, query_y):
        self._check_batch(adapted_params, query_x, query_y, "query_x", "query_y", "adapted_params")
        return self.objective(adapted_params, (query_x, query_y))

    def meta_loss(self, params, tasks, inner_lr=None):
        """Mean post-adaptation query loss over the task batch; differentiable; jitted once
        per object. ``params``/``inner_lr`` as in ``inner_loop``."""
        core.check_tasks(tasks)
        params, inner_lr = self.params_and_inner_lr(params, inner_lr)
        return self._meta_loss_jit(params, _task_arrays(tasks), inner_lr)

    def _meta_loss_impl(self, params, tasks, inner_lr):
        self._check_tasks(params, tasks)
        loss, _ = core.meta_loss(params, inner_lr, tasks, **self._kw(params))
        return loss

    def meta_loss_and_metrics(self, params, tasks, inner_lr=None):
        """``(meta_loss, metrics)`` with pre/post-adaptation losses (not jitted)."""
        core.check_tasks(tasks)
        params, inner_lr = self.params_and_inner_lr(params, inner_lr)
        tasks = _task_arrays(tasks)
        self._check_tasks(params, tasks)
        return core.meta_loss(params, inner_lr, tasks, **self._kw(params))

    # ------------------------------------------------------------ meta-update
    def _meta_update_impl(self, state, tasks):
        self._check_tasks(state.params, tasks)
        tasks = sharding.constrain(tasks, self.mesh)  # the task axis over the mesh's devices
        loss = functools.partial(core.meta_loss, **self._kw(state.params))
        out = core.meta_update(state, tasks, loss=loss, optimizer=self.optimizer,
                               learn_inner_lr=self.config.learn_inner_lr)
        return sharding.constrain_replicated(out, self.mesh)

    def meta_update(self, state: Optional[core.MetaState] = None, tasks=None):
        """One jitted meta-step. Returns ``(state, metrics)``; metrics holds
        ``pre_query_loss``, ``post_query_loss``, ``pre_support_loss``,
        ``meta_loss`` and ``meta_grad_norm`` (scalars). ``meta_update(state, tasks=...)`` is the
        seeds' ``meta_update(tasks)`` with the state passed in and returned.

        With a ``mesh``, the tasks are split over its devices (a ``ValueError`` if their number
        is not divisible by the mesh's devices) and the state is replicated on them; the
        returned state and metrics are replicated."""
        if not isinstance(state, core.MetaState):
            raise ValueError(
                "state must be the MetaState returned by init(params) (meta_update(state, tasks) "
                f"returns the new state), got {type(state).__name__}.")
        tasks = _required("meta_update", "tasks", tasks)
        core.check_tasks(tasks)
        check_params("state.params", state.params, finite=False)
        tasks = _task_arrays(tasks)
        if self.mesh is not None:
            sharding.check_divisible("num_tasks", core.check_tasks(tasks), self.mesh)
            tasks = sharding.shard_batch(tasks, self.mesh, name="num_tasks")
            state = sharding.replicate(state, self.mesh)
        return self._meta_update(state, tasks)


_STATE_HINT = (" (the params to adapt, or the MetaState from init/meta_update: this MetaMAML is "
               "functional and holds no params)")


def _required(method: str, name: str, value, hint: str = ""):
    """``value``, or a ValueError naming the missing argument of ``method``."""
    if value is None:
        raise ValueError(f"{method} needs {name}{hint}.")
    return value


def _one_of(method: str, first, second):
    """The value of whichever of two alternative ``(name, value)`` arguments is given."""
    (name_a, a), (name_b, b) = first, second
    if a is not None and b is not None:
        raise ValueError(f"{method}: {name_a} and {name_b} name the same argument; give one of them.")
    if a is None and b is None:
        raise ValueError(f"{method} needs {name_a} (or {name_b}).")
    return a if a is not None else b
