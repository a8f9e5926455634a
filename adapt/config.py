"""``AdaptationConfig``: frozen, validated hyper-parameters of test-time adaptation.

Every field is checked on construction; a bad value raises ``ValueError``
naming the field and what was expected, before anything is traced.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

from ssm_jax.validation import check_int

import jax
import optax

#: Optimiser names accepted by ``AdaptationConfig.optimizer`` (all from optax).
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop", "adagrad")


def _real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number, got {value!r} ({type(value).__name__}).")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN.")
    return value


@dataclasses.dataclass(frozen=True)
class AdaptationConfig:
    """How test-time adaptation updates the weights.

    Attributes:
      lr: step size of the adaptation optimiser, finite and > 0. Any size is
        accepted: a step that diverges is rolled back (see ``core``).
        Ignored by the ``"meta"`` strategy, which uses the meta-learned inner
        step size(s) of the ``MetaMAML`` instead.
      max_steps_per_call: number of gradient steps one ``adapt`` call takes
        (>= 1); fewer are taken only when a step is rolled back, after which the
        call stops.
      optimizer: one of ``OPTIMIZERS`` (optax): ``"sgd"`` (plain gradient
        descent), ``"momentum"`` (SGD with ``momentum``), ``"adam"``,
        ``"adamw"``, ``"rmsprop"``, ``"adagrad"``. The optimiser state persists
        across ``adapt`` calls until ``Adapter.reset``.
      momentum: momentum coefficient of ``"momentum"``, in [0, 1).
      grad_clip: if given (> 0), gradients are clipped to this global norm
        before the optimiser.
      divergence_threshold: if given, a step after which the loss (on the
        step's batch) exceeds this value is rolled back. Non-finite losses,
        gradients or params are always rolled back.
      monotone: if True, a step that increases the loss on its batch is also
        rolled back (each call then never ends above where it started).
      replay_capacity: number of samples the hybrid strategy's ring buffer
        holds (>= 1).
      replay_ratio: share of each hybrid step's samples that are replayed,
        in [0, 1). With a current batch of ``n`` samples, ``replay_size(n)``
        samples are drawn from the buffer and the loss is the pooled mean over
        the ``n + replay_size(n)`` samples (the replayed part gets weight
        ``replay_ratio``; weight 0 while the buffer is empty).
      store_adapt_batches: in hybrid mode, also add every ``adapt`` batch to
        the replay buffer (after the step, so a batch is never replayed in
        the call that brings it). ``observe`` always adds its samples.
    """

    lr: float = 0.001
    max_steps_per_call: int = 1
    optimizer: str = "sgd"
    momentum: float = 0.9
    grad_clip: Optional[float] = None
    divergence_threshold: Optional[float] = None
    monotone: bool = False
    replay_capacity: int = 1024
    replay_ratio: float = 0.5
    store_adapt_batches: bool = True

    def __post_init__(self):
        lr = _real("lr", self.lr)
        if not math.isfinite(lr) or lr <= 0.0:
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}.")
        object.__setattr__(self, "lr", lr)
        object.__setattr__(
            self, "max_steps_per_call", check_int("max_steps_per_call", self.max_steps_per_call, 1)
        )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}.")
        momentum = _real("momentum", self.momentum)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}.")
        object.__setattr__(self, "momentum", momentum)
        if self.grad_clip is not None:
            clip = _real("grad_clip", self.grad_clip)
            if not math.isfinite(clip) or clip <= 0.0:
                raise ValueError(f"grad_clip must be None or a finite number > 0, got {self.grad_clip!r}.")
            object.__setattr__(self, "grad_clip", clip)
        if self.divergence_threshold is not None:
            object.__setattr__(
                self, "divergence_threshold", _real("divergence_threshold", self.divergence_threshold)
            )
        object.__setattr__(self, "replay_capacity", check_int("replay_capacity", self.replay_capacity, 1))
        ratio = _real("replay_ratio", self.replay_ratio)
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"replay_ratio must be in [0, 1), got {self.replay_ratio!r}.")
        object.__setattr__(self, "replay_ratio", ratio)
        for name in ("monotone", "store_adapt_batches"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}.")

    @property
    def threshold(self) -> float:
        """``divergence_threshold`` as a float (``inf`` when unset)."""
        return math.inf if self.divergence_threshold is None else self.divergence_threshold

    def replay_size(self, batch_size: int) -> int:
        """Replayed samples drawn per hybrid call for a current batch of ``batch_size``.

        ``round(batch_size * r / (1 - r))`` so that they make up a share ``r =
        replay_ratio`` of the pooled batch; at least 1 when ``r > 0``.
        """
        r = self.replay_ratio
        if r == 0.0:
            return 0
        return max(1, int(round(batch_size * r / (1.0 - r))))

    def make_optimizer(self) -> optax.GradientTransformation:
        """The optax transformation this config describes (clipping first, if any)."""
        return make_optimizer(self.optimizer, self.lr, momentum=self.momentum, grad_clip=self.grad_clip)


def make_optimizer(name: str, lr, *, momentum: float = 0.9,
                   grad_clip: Optional[float] = None) -> optax.GradientTransformation:
    """An optax optimiser by name; ``lr`` is a float (for ``"sgd"`` also a pytree
    of per-parameter step sizes shaped like the params, e.g. Meta-SGD's)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}.")
    if name == "sgd":
        if isinstance(lr, (int, float)):
            opt = optax.sgd(lr)
        else:
            opt = scale_by_tree(lr)
    elif name == "momentum":
        opt = optax.sgd(lr, momentum=momentum)
    else:
        opt = {"adam": optax.adam, "adamw": optax.adamw, "rmsprop": optax.rmsprop,
               "adagrad": optax.adagrad}[name](lr)
    if grad_clip is not None:
        opt = optax.chain(optax.clip_by_global_norm(grad_clip), opt)
    return opt


def scale_by_tree(lr_tree) -> optax.GradientTransformation:
    """Gradient descent with per-parameter step sizes: ``update = -lr_tree * grad``.

    ``lr_tree`` is a pytree with the structure (and broadcastable leaf shapes)
    of the params; it is closed over, so it is a constant of the compiled step.
    """

    def init(params):
        del params
        return optax.EmptyState()

    def update(grads, state, params=None):
        del params
        return jax.tree.map(lambda g, lr: -lr * g, grads, lr_tree), state

    return optax.GradientTransformation(init, update)
