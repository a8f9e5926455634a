"""``AdaptationConfig``: frozen, validated hyper-parameters of test-time adaptation.

Every field is checked on construction; a bad value raises ``ValueError``
naming the field and what was expected, before anything is traced.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import optax

from maml.core import scale_by_inner_lr
from ssm_jax.validation import check_bool, check_choice, check_float, check_int

#: Optimiser names accepted by ``AdaptationConfig.optimizer`` (all from optax).
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop", "adagrad")


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
        object.__setattr__(self, "lr", check_float("lr", self.lr, minimum=0.0, strict_min=True))
        object.__setattr__(
            self, "max_steps_per_call", check_int("max_steps_per_call", self.max_steps_per_call, 1)
        )
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        object.__setattr__(self, "momentum", check_float("momentum", self.momentum, minimum=0.0,
                                                         maximum=1.0, strict_max=True))
        if self.grad_clip is not None:
            object.__setattr__(self, "grad_clip", check_float("grad_clip", self.grad_clip, minimum=0.0,
                                                              strict_min=True))
        if self.divergence_threshold is not None:
            object.__setattr__(
                self, "divergence_threshold", check_float("divergence_threshold", self.divergence_threshold,
                                                          allow_inf=True)
            )
        object.__setattr__(self, "replay_capacity", check_int("replay_capacity", self.replay_capacity, 1))
        object.__setattr__(self, "replay_ratio", check_float("replay_ratio", self.replay_ratio,
                                                             minimum=0.0, maximum=1.0, strict_max=True))
        for name in ("monotone", "store_adapt_batches"):
            object.__setattr__(self, name, check_bool(name, getattr(self, name)))

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
    of per-parameter step sizes shaped like the params, e.g. Meta-SGD's: the step is then
    ``maml.core.scale_by_inner_lr(lr)``)."""
    check_choice("optimizer", name, OPTIMIZERS)
    if name == "sgd":
        if isinstance(lr, (int, float)):
            opt = optax.sgd(lr)
        else:
            opt = scale_by_inner_lr(lr)
    elif name == "momentum":
        opt = optax.sgd(lr, momentum=momentum)
    else:
        opt = {"adam": optax.adam, "adamw": optax.adamw, "rmsprop": optax.rmsprop,
               "adagrad": optax.adagrad}[name](lr)
    if grad_clip is not None:
        opt = optax.chain(optax.clip_by_global_norm(grad_clip), opt)
    return opt
