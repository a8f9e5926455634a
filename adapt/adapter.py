"""``Adapter``: the seeds' test-time adaptation API as a thin shell over ``adapt.core``.

    adapter = Adapter(model, AdaptationConfig(lr=0.01, max_steps_per_call=10),
                      strategy="online", params=params)
    info = adapter.adapt({"observations": x, "targets": y}, loss_fn=mse_loss)
    info["loss"], info["steps"], info["rolled_back"]; adapter.params

Strategies:
  ``"none"``    no update; ``adapt`` only measures the loss (params untouched).
  ``"online"``  guarded gradient steps on the current batch (optimiser and
                step size from the config), joined by the samples recorded
                with ``observe`` since the previous ``adapt`` call.
  ``"meta"``    the same, from a ``maml.MetaMAML``'s meta-learned params with
                its meta-learned inner rule: plain gradient descent with its
                inner step size (Meta-SGD per-parameter step sizes if it learned
                them), only on the params its ``adapt_filter`` adapts (ANIL).
                ``cfg.lr``/``cfg.optimizer`` are not used; ``cfg.grad_clip``,
                ``cfg.divergence_threshold`` and ``cfg.max_steps_per_call`` are.
                The default loss is the MetaMAML's own ``loss_fn``. Observed
                samples join the next batch, as in ``"online"``.
  ``"hybrid"``  ``"online"`` on the current batch pooled with samples replayed
                from a ring buffer of earlier experience (``observe`` and, by
                default, earlier ``adapt`` batches feed it; batches holding a
                non-finite value are never stored).

One jitted function runs a whole ``adapt`` call (sampling the replay, every
step and the buffer update). Its static arguments are the target, the config
and ``loss_fn``: reuse the same function objects (not a fresh lambda per call)
and batches of the same shapes, and repeated calls never retrace, even from a
new ``Adapter`` with the same target and config (``num_traces`` counts). Any
flax Module or callable is a valid target, hashable or not (``nn.Sequential``
holds a list): an unhashable one is keyed by identity (see ``_Static``), so a
new ``Adapter`` shares compilations with the same target object.
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from adapt import buffer as rb
from adapt import core
from adapt.config import AdaptationConfig
from adapt.losses import hybrid_objective, make_apply_fn, mse_loss, supervised_objective
from maml.core import build_mask, check_supervised_batch, scale_by_inner_lr
from ssm_jax.validation import check_choice, check_int, check_params, real_array

STRATEGIES = ("none", "online", "meta", "hybrid")
BATCH_KEYS = ("observations", "targets")


def _check_batch(batch, what: str):
    """``(observations, targets)`` arrays of a batch mapping, validated."""
    if not isinstance(batch, Mapping):
        raise ValueError(
            f"{what} must be a mapping with keys {BATCH_KEYS}, got {type(batch).__name__}."
        )
    for k in BATCH_KEYS:
        if k not in batch:
            raise ValueError(
                f"{what} is missing key {k!r}: expected a mapping with keys {BATCH_KEYS}, got keys "
                f"{sorted(map(str, batch))}."
            )
    obs = real_array(f"{what}['observations']", batch["observations"])
    targets = real_array(f"{what}['targets']", batch["targets"])
    if obs.ndim == 0 or targets.ndim == 0:
        raise ValueError(
            f"{what}['observations'] and {what}['targets'] need a leading sample axis; got shapes "
            f"{obs.shape} and {targets.shape}."
        )
    if obs.shape[0] != targets.shape[0]:
        raise ValueError(
            f"{what}['observations'] has {obs.shape[0]} samples (shape {obs.shape}) but "
            f"{what}['targets'] has {targets.shape[0]} (shape {targets.shape}); they must match."
        )
    if obs.shape[0] == 0:
        raise ValueError(f"{what} is empty (0 samples).")
    return obs, targets


def _guarded_add(buffer: rb.ReplayBuffer, items) -> rb.ReplayBuffer:
    """``buffer_add`` unless a sample is non-finite: then the whole batch is
    dropped, so a bad batch can never poison later replayed steps."""
    return core.tree_select(core.tree_all_finite(items), rb.buffer_add(buffer, items), buffer)


class _Static:
    """A hashable handle on a static argument of the jitted adaptation functions (the target,
    the loss function).

    ``jax.jit`` hashes its static arguments. A hashable value (a flax Module of hashable fields,
    a function) is keyed by its own hash and equality, so equal models share compilations. An
    unhashable one (e.g. ``nn.Sequential([...])``, whose layers are a list; a callable object
    that defines ``__eq__`` without ``__hash__``) is keyed by identity: the same object shares
    compilations, a new one compiles once. Either way the handle keeps the value alive.
    """

    __slots__ = ("value", "_hashable")

    def __init__(self, value):
        self.value = value
        try:
            hash(value)
            self._hashable = True
        except TypeError:
            self._hashable = False

    def __hash__(self):
        return hash(self.value) if self._hashable else id(self.value)

    def __eq__(self, other):
        if not isinstance(other, _Static):
            return NotImplemented
        if self.value is other.value:
            return True
        if not (self._hashable and other._hashable):
            return False
        try:
            return bool(self.value == other.value)
        except Exception:  # e.g. dataclass fields holding arrays: fall back to identity
            return False

    def __repr__(self):
        return f"_Static({self.value!r})"


class _Spec(NamedTuple):
    """The static part of an adapter: equal specs share compiled functions, so a
    new ``Adapter`` for the same model and config (e.g. one per task) does not
    recompile. ``per_param_lr``: the update is the meta rule
    ``maml.core.scale_by_inner_lr(lr_tree, mask)`` with ``lr_tree`` a dynamic argument,
    else ``cfg``'s optimiser. ``mask``: the meta rule's adapted-leaf flags, flattened in
    the params' leaf order (None: every leaf adapts)."""

    target: _Static
    cfg: AdaptationConfig
    strategy: str
    per_param_lr: bool
    mask: Optional[tuple] = None


#: How many times each spec's functions were traced (``Adapter.num_traces``).
_TRACES: collections.Counter = collections.Counter()


def _optimizer(spec: _Spec, lr_tree) -> optax.GradientTransformation:
    if not spec.per_param_lr:
        return spec.cfg.make_optimizer()
    mask = None if spec.mask is None else jax.tree.unflatten(jax.tree.structure(lr_tree), spec.mask)
    opt = scale_by_inner_lr(lr_tree, mask)
    if spec.cfg.grad_clip is not None:
        opt = optax.chain(optax.clip_by_global_norm(spec.cfg.grad_clip), opt)
    return opt


def _objective(spec: _Spec, loss_fn: _Static, params, obs, targets):
    """The supervised objective of ``spec``'s target and ``loss_fn``, after checking (at trace
    time, from shapes) that the batch fits the model and the loss (``check_supervised_batch``)."""
    apply_fn = make_apply_fn(spec.target.value)
    check_supervised_batch(apply_fn, loss_fn.value, params, obs, targets,
                           "batch['observations']", "batch['targets']")
    return supervised_objective(apply_fn, loss_fn.value)


@functools.partial(jax.jit, static_argnames=("spec", "loss_fn"))
def _loss_call(params, obs, targets, *, spec: _Spec, loss_fn):
    _TRACES[spec] += 1
    objective = _objective(spec, loss_fn, params, obs, targets)
    return core._scalar_objective(objective)(params, (obs, targets))


@functools.partial(jax.jit, static_argnames=("spec", "loss_fn"))
def _adapt_call(params, opt_state, lr_tree, obs, targets, *, spec: _Spec, loss_fn):
    _TRACES[spec] += 1
    cfg = spec.cfg
    objective = _objective(spec, loss_fn, params, obs, targets)
    return core.adapt_steps(params, opt_state, (obs, targets), objective=objective,
                            optimizer=_optimizer(spec, lr_tree), num_steps=cfg.max_steps_per_call,
                            divergence_threshold=cfg.threshold, monotone=cfg.monotone)


@functools.partial(jax.jit, static_argnames=("spec", "loss_fn"))
def _hybrid_call(params, opt_state, lr_tree, obs, targets, buffer, key, *, spec: _Spec, loss_fn):
    _TRACES[spec] += 1
    cfg = spec.cfg
    n = obs.shape[0]
    m = cfg.replay_size(n)
    replay, valid = rb.buffer_sample(buffer, key, m)
    objective = hybrid_objective(_objective(spec, loss_fn, params, obs, targets), m / (n + m))
    batch = ((obs, targets), (replay["observations"], replay["targets"]), valid)
    params, opt_state, info = core.adapt_steps(
        params, opt_state, batch, objective=objective, optimizer=_optimizer(spec, lr_tree),
        num_steps=cfg.max_steps_per_call, divergence_threshold=cfg.threshold, monotone=cfg.monotone)
    if cfg.store_adapt_batches:
        buffer = _guarded_add(buffer, {"observations": obs, "targets": targets})
    return params, opt_state, info, buffer


_add_call = jax.jit(_guarded_add)


def _check_key(key):
    """``key`` as a PRNG key: an int seed in ``[0, 2**32)`` (Python or numpy int) or a JAX key
    (``jax.random.key(s)``, or a raw ``jax.random.PRNGKey(s)``: ``(2,)`` uint32), else
    ``ValueError`` naming ``key``."""
    dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key) and shape == ():
        return key
    if shape == (2,) and dtype == jnp.uint32:
        return jnp.asarray(key)
    expected = ("key must be an int seed in [0, 2**32) or a jax.random key (jax.random.key(0) or "
                f"jax.random.PRNGKey(0)), got {key!r}")
    try:
        seed = check_int("key", key, minimum=0)
    except ValueError:
        raise ValueError(expected) from None
    if seed >= 2 ** 32:
        raise ValueError(expected)
    return jax.random.PRNGKey(seed)


class Adapter:
    """Test-time weight adaptation of a model.

    Args:
      target: a ``flax.linen.Module`` or an apply function ``(params, x) ->
        predictions`` (a tuple output ``(ys, carry)`` means predictions ``ys``).
        May be None with ``strategy="meta"``: the MetaMAML's model is used.
      cfg: an ``AdaptationConfig`` (default ``AdaptationConfig()``).
      strategy: one of ``STRATEGIES``.
      params: the params to start from. With ``"meta"`` it may be the
        ``maml.MetaState`` returned by ``MetaMAML.init``/``meta_update`` (its
        params and step-size tree are used), or plain params (with the MetaMAML's
        ``config.inner_lr`` in every entry, ``MetaMAML.params_and_inner_lr``).
      meta: the ``maml.MetaMAML`` (required by, and only used by, ``"meta"``).
      key: PRNG key (or int seed in [0, 2**32)) for replay sampling in hybrid mode.
      The default ``loss_fn`` of ``adapt``/``loss`` is the MetaMAML's ``loss_fn``
      with ``"meta"``, mean squared error otherwise.

    Attributes:
      params: the current (adapted) params.
      opt_state: the optimiser state (persists across ``adapt`` calls).
      buffer: the hybrid replay ``ReplayBuffer`` (None until the first sample).
      context: the last mapping given to ``observe`` (None before).
      num_traces: how many times the adaptation function has been traced.
    """

    def __init__(self, target, cfg: Optional[AdaptationConfig] = None, strategy: str = "none",
                 params: Any = None, meta=None, key=0):
        cfg = AdaptationConfig() if cfg is None else cfg
        if not isinstance(cfg, AdaptationConfig):
            raise ValueError(f"cfg must be an AdaptationConfig, got {type(cfg).__name__}.")
        check_choice("strategy", strategy, STRATEGIES)
        self.cfg = cfg
        self.strategy = strategy
        lr_tree, mask = None, None
        self.default_loss_fn = mse_loss
        if strategy == "meta":
            params, lr_tree, mask, target = self._meta_rule(meta, params, target)
            self.default_loss_fn = getattr(meta, "loss_fn", None) or mse_loss
        elif meta is not None:
            raise ValueError(f"meta (a MetaMAML) is only used by strategy='meta', got strategy={strategy!r}.")
        if params is None:
            raise ValueError("params must be given: the model parameters to adapt (e.g. model.init(key, x)).")
        check_params("params", params)  # float arrays, finite (an eager call: values are read)
        make_apply_fn(target, "target")  # validates target
        self.target = target
        self._spec = _Spec(_Static(target), cfg, strategy, lr_tree is not None, mask)
        self._lr_tree = lr_tree
        self.optimizer = _optimizer(self._spec, lr_tree)
        self._initial_params = params
        self._key0 = _check_key(key)
        self.reset()

    @property
    def num_traces(self) -> int:
        """Traces of the jitted adaptation functions for this adapter's model and
        config (shared by every adapter with the same ones)."""
        return _TRACES[self._spec]

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _meta_rule(meta, params, target):
        """A MetaMAML's start params, step-size tree and adapted-leaf flags (flattened; None
        when every leaf adapts), and the target (default: its model)."""
        if meta is None:
            raise ValueError("strategy='meta' needs meta=<a maml.MetaMAML> (its meta-learned inner rule).")
        for attr in ("config", "adapt_filter", "model", "params_and_inner_lr"):
            if not hasattr(meta, attr):
                raise ValueError(f"meta must be a maml.MetaMAML, got {type(meta).__name__} (no {attr!r}).")
        if params is None:
            raise ValueError("strategy='meta' needs params: the MetaState (or meta-learned params).")
        params, inner_lr = meta.params_and_inner_lr(params)
        mask = build_mask(params, meta.adapt_filter)  # the MetaMAML's own adapted leaves
        mask = None if mask is None else tuple(jax.tree.leaves(mask))
        target = meta.model if target is None else target
        return params, inner_lr, mask, target

    def reset(self):
        """Back to the params given at construction: fresh optimiser state, empty
        replay buffer, no context, replay key restarted."""
        self.params = self._initial_params
        self.opt_state = self.optimizer.init(self._initial_params)
        self.buffer = None
        self.context = None
        self._pending = []
        self._key = self._key0

    # ------------------------------------------------------------- public API
    def _ensure_buffer(self, obs, targets):
        if self.buffer is None:
            self.buffer = rb.buffer_init_like({"observations": obs, "targets": targets},
                                              self.cfg.replay_capacity)

    def _resolve_loss(self, loss_fn):
        loss_fn = self.default_loss_fn if loss_fn is None else loss_fn
        if not callable(loss_fn):
            raise ValueError(f"loss_fn must be callable (predictions, targets) -> scalar, got {loss_fn!r}.")
        return _Static(loss_fn)

    def _with_pending(self, obs, targets):
        """The batch joined (along the sample axis) by the samples observed since the last
        ``adapt`` call (online/meta); the pending samples are then cleared."""
        if not self._pending:
            return obs, targets
        for i, (o, t) in enumerate(self._pending):
            if o.shape[1:] != obs.shape[1:] or t.shape[1:] != targets.shape[1:]:
                raise ValueError(
                    f"observed context #{i} has per-sample shapes {o.shape[1:]} / {t.shape[1:]} but "
                    f"batch['observations'] / batch['targets'] have {obs.shape[1:]} / "
                    f"{targets.shape[1:]}; they must match to be adapted on together.")
        obs = jnp.concatenate([o for o, _ in self._pending] + [obs], axis=0)
        targets = jnp.concatenate([t for _, t in self._pending] + [targets], axis=0)
        self._pending = []
        return obs, targets

    def adapt(self, batch: Mapping[str, Any], loss_fn: Optional[Callable] = None) -> dict:
        """Adapt ``self.params`` to ``batch`` and report what happened.

        Args:
          batch: mapping with ``'observations'`` (N, ...) and ``'targets'``
            (N, ...) (other keys are ignored).
          loss_fn: ``(predictions, targets) -> scalar``; None (default): the
            MetaMAML's ``loss_fn`` with ``"meta"``, mean squared error otherwise.

        With ``"online"``/``"meta"`` the samples recorded by ``observe`` since
        the previous call are prepended to ``batch`` (so the batch size, hence
        the compiled shape, grows by their count) and then cleared.

        Returns a dict of Python numbers: ``loss_before`` and ``loss_after``
        (the loss of the call's objective before/after; for hybrid it includes
        the replayed samples), ``loss`` (= ``loss_after``), ``steps`` (accepted
        gradient steps), ``rollbacks`` and ``rolled_back`` (a step was undone).
        """
        obs, targets = _check_batch(batch, "batch")
        loss_fn = self._resolve_loss(loss_fn)
        if self.strategy in ("online", "meta"):
            obs, targets = self._with_pending(obs, targets)
        if self.strategy == "none":
            loss = float(_loss_call(self.params, obs, targets, spec=self._spec, loss_fn=loss_fn))
            return {"loss_before": loss, "loss_after": loss, "loss": loss, "steps": 0,
                    "rollbacks": 0, "rolled_back": False}
        if self.strategy == "hybrid":
            self._ensure_buffer(obs, targets)
            rb._check_structure(self.buffer, {"observations": obs, "targets": targets}, "batch")
            self._key, key = jax.random.split(self._key)
            self.params, self.opt_state, info, self.buffer = _hybrid_call(
                self.params, self.opt_state, self._lr_tree, obs, targets, self.buffer, key,
                spec=self._spec, loss_fn=loss_fn)
        else:
            self.params, self.opt_state, info = _adapt_call(
                self.params, self.opt_state, self._lr_tree, obs, targets, spec=self._spec,
                loss_fn=loss_fn)
        info = jax.device_get(info)
        return {"loss_before": float(info.loss_before), "loss_after": float(info.loss_after),
                "loss": float(info.loss_after), "steps": int(info.steps),
                "rollbacks": int(info.rollbacks), "rolled_back": bool(info.rolled_back)}

    def observe(self, context: Mapping[str, Any]) -> None:
        """Record ``context`` (kept in ``self.context``).

        A context with ``'observations'`` and ``'targets'`` (N, ...) is
        experience for adaptation (a context with only one of the two keys is
        an error):
          * ``"hybrid"``: the N samples go to the replay buffer, which later
            ``adapt`` calls replay (a batch with a non-finite value is dropped
            whole);
          * ``"online"``/``"meta"``: the N samples join the NEXT ``adapt``
            call's batch (prepended along the sample axis), then are cleared;
          * ``"none"``: only kept in ``self.context`` (no update happens).
        """
        if not isinstance(context, Mapping):
            raise ValueError(f"context must be a mapping, got {type(context).__name__}.")
        self.context = dict(context)
        present = [k for k in BATCH_KEYS if k in context]
        if not present or self.strategy == "none":
            return
        obs, targets = _check_batch(context, "context")
        if self.strategy in ("online", "meta"):
            self._pending.append((obs, targets))
            return
        self._ensure_buffer(obs, targets)
        items = {"observations": obs, "targets": targets}
        rb._check_structure(self.buffer, items, "context")
        self.buffer = _add_call(self.buffer, items)

    def loss(self, batch: Mapping[str, Any], loss_fn: Optional[Callable] = None) -> float:
        """The loss of the current params on ``batch`` (no update; default loss as in ``adapt``)."""
        obs, targets = _check_batch(batch, "batch")
        loss_fn = self._resolve_loss(loss_fn)
        return float(_loss_call(self.params, obs, targets, spec=self._spec, loss_fn=loss_fn))
