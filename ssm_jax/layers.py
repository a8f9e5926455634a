"""``Dense``: ``flax.linen.Dense`` applied to its inputs flattened to two dimensions.

The flax ``Dense`` maps of ``ssm_jax`` (the cores' input, state and output maps, the policies'
torsos and heads) read ``(batch, time, features)`` sequences. On XLA:CPU, the kernel gradient
of a dense map of a 3-D input (a contraction over both leading axes) is several times slower
than the same contraction written as one ``(rows, features)`` matrix product, so this layer
reshapes ``(..., features)`` to ``(rows, features)``, applies ``flax.linen.Dense`` and restores
the leading axes. Parameters (``kernel``, ``bias``), their names, shapes and initialisers are
``flax.linen.Dense``'s; outputs and gradients are the same up to float rounding (the order of the
kernel gradient's sum over rows may differ).

Under ``jax.vmap`` with the parameters shared across the mapped axis (as in a MAML support pass,
where every task starts from the same parameters), JAX's batching rule adds the mapped axis to
the input's leading axes again, and the kernel gradient contracts over two axes as before; with
per-example parameters (vmapped seeds, adapted per-task parameters) it stays one product each.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


class Dense(nn.Dense):
    """``flax.linen.Dense`` (same attributes and parameters) on inputs of any rank >= 1:
    ``(..., in)`` -> ``(..., features)``, computed as one ``(rows, in) @ (in, features)``
    product (``rows`` the product of the leading axes; zero-size axes allowed)."""

    def __call__(self, inputs: jax.Array) -> jax.Array:
        x = jnp.asarray(inputs)
        lead = x.shape[:-1]
        out = super().__call__(x.reshape(math.prod(lead), x.shape[-1]))
        return out.reshape(*lead, out.shape[-1])
