"""``Dense``: ``flax.linen.Dense`` applied to its inputs flattened to two dimensions.

Every dense map in ``ssm_jax`` (the SSM cores' input, state and output maps, the policies'
torsos and heads) reads ``(batch, time, features)`` sequences. On XLA:CPU, the kernel
gradient of a dense map of a 3-D input (a contraction over both leading axes) is several times
slower than the same contraction written as one ``(rows, features)`` matrix product, so this
layer reshapes ``(..., features)`` to ``(rows, features)``, applies ``flax.linen.Dense`` and
restores the leading axes. Parameters (``kernel``, ``bias``), their names, shapes and
initialisers are ``flax.linen.Dense``'s; outputs and gradients are the same up to float
rounding (the order of the kernel gradient's sum over rows may differ).
"""

from __future__ import annotations

import flax.linen as nn
import jax


class Dense(nn.Dense):
    """``flax.linen.Dense`` (same attributes and parameters) on inputs of any rank >= 1:
    ``(..., in)`` -> ``(..., features)``, computed as one ``(rows, in) @ (in, features)``
    product."""

    def __call__(self, inputs: jax.Array) -> jax.Array:
        lead = inputs.shape[:-1]
        out = super().__call__(inputs.reshape(-1, inputs.shape[-1]))
        return out.reshape(*lead, out.shape[-1])
