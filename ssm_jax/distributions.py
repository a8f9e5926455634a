"""Action distributions as pytrees, so they pass through ``jit``, ``vmap`` and ``lax.scan``.

Leading axes are batch axes (``(batch,)`` or ``(batch, time)``); the last axis of ``logits`` /
``mean`` is the action axis.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class Categorical:
    """Categorical over ``action_dim`` actions; ``logits`` ``(..., action_dim)``."""

    logits: jax.Array

    def sample(self, key: jax.Array) -> jax.Array:
        """Integer actions, shape ``logits.shape[:-1]``, int32."""
        return jax.random.categorical(key, self.logits).astype(jnp.int32)

    def log_prob(self, actions: jax.Array) -> jax.Array:
        """Log-probabilities of integer ``actions`` (shape ``logits.shape[:-1]``).

        Actions must lie in ``[0, action_dim)``; concrete (non-traced) actions are checked.
        """
        if not isinstance(actions, jax.core.Tracer):
            a = np.asarray(actions)
            n = self.logits.shape[-1]
            if a.size and (a.min() < 0 or a.max() >= n):
                raise ValueError(f"actions must be integers in [0, {n}), got values in [{a.min()}, {a.max()}]")
        logp = jax.nn.log_softmax(self.logits)
        return jnp.take_along_axis(logp, actions[..., None].astype(jnp.int32), axis=-1)[..., 0]

    def entropy(self) -> jax.Array:
        logp = jax.nn.log_softmax(self.logits)
        return -jnp.sum(jnp.exp(logp) * logp, axis=-1)

    def mode(self) -> jax.Array:
        return jnp.argmax(self.logits, axis=-1).astype(jnp.int32)


@struct.dataclass
class Gaussian:
    """Diagonal Gaussian; ``mean`` and ``log_std`` both ``(..., action_dim)``."""

    mean: jax.Array
    log_std: jax.Array

    def sample(self, key: jax.Array) -> jax.Array:
        """Actions of shape ``mean.shape``."""
        return self.mean + jnp.exp(self.log_std) * jax.random.normal(key, self.mean.shape, self.mean.dtype)

    def log_prob(self, actions: jax.Array) -> jax.Array:
        """Log-density of ``actions`` (shape ``mean.shape``), summed over the action axis."""
        z = (actions - self.mean) * jnp.exp(-self.log_std)
        return jnp.sum(-0.5 * z**2 - self.log_std - 0.5 * math.log(2 * math.pi), axis=-1)

    def entropy(self) -> jax.Array:
        return jnp.sum(self.log_std + 0.5 * (1.0 + math.log(2 * math.pi)), axis=-1)

    def mode(self) -> jax.Array:
        return self.mean
