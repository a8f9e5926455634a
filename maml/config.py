"""Frozen, validated hyper-parameters of (supervised) MAML.

A ``MAMLConfig`` is a plain immutable record: every field is checked on
construction and a bad value raises ``ValueError`` naming the field and what
was expected, before anything is traced or compiled.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from ssm_jax.validation import check_bool, check_float, check_int


@dataclasses.dataclass(frozen=True)
class MAMLConfig:
    """Hyper-parameters of MAML / Meta-SGD.

    Attributes:
      inner_lr: step size of the inner (task-adaptation) gradient steps, >= 0.
        With ``learn_inner_lr`` it is the initial value of every per-parameter
        step size.
      outer_lr: Adam step size of the meta-parameters, > 0.
      num_inner_steps: number of inner gradient steps, >= 0 (0 means "no
        adaptation": the meta-loss is then the plain query loss).
      first_order: drop the second-order term (stop_gradient on the inner
        gradients, FOMAML).
      grad_clip: if given (> 0), clip the meta-gradient to this global norm.
      learn_inner_lr: Meta-SGD: per-parameter inner step sizes (same shapes as
        the params) are meta-learned with the params.
      remat_inner: wrap each inner step in ``jax.checkpoint`` (saves memory on
        long sequences at the price of recomputing the inner forward pass).
    """

    inner_lr: float = 0.01
    outer_lr: float = 0.001
    num_inner_steps: int = 1
    first_order: bool = False
    grad_clip: Optional[float] = None
    learn_inner_lr: bool = False
    remat_inner: bool = False

    def __post_init__(self):
        object.__setattr__(self, "inner_lr", check_float("inner_lr", self.inner_lr, minimum=0.0))
        object.__setattr__(self, "outer_lr", check_float("outer_lr", self.outer_lr, minimum=0.0, strict_min=True))
        object.__setattr__(
            self, "num_inner_steps", check_int("num_inner_steps", self.num_inner_steps, minimum=0)
        )
        for name in ("first_order", "learn_inner_lr", "remat_inner"):
            object.__setattr__(self, name, check_bool(name, getattr(self, name)))
        if self.grad_clip is not None:
            object.__setattr__(
                self, "grad_clip", check_float("grad_clip", self.grad_clip, minimum=0.0, strict_min=True)
            )
