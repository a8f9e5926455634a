"""The sinusoid regression tasks of the MAML paper (Finn et al., 2017, sec. 5.1).

A task is ``y = amplitude * sin(x - phase)`` with amplitude ~ U[0.1, 5.0],
phase ~ U[0, pi], inputs x ~ U[-5, 5]. Sampling is a pure function of a key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ssm_jax.validation import check_int

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, jnp.pi)
X_RANGE = (-5.0, 5.0)


def sample_sinusoid_tasks(key, num_tasks: int, num_shots: int = 10, num_query: int = 10):
    """A batch of sinusoid tasks in the ``MetaMAML`` task format.

    Returns a dict: ``support_x``/``support_y`` (num_tasks, num_shots, 1),
    ``query_x``/``query_y`` (num_tasks, num_query, 1), and ``amplitude``,
    ``phase`` (num_tasks,). All float32.
    """
    num_tasks = check_int("num_tasks", num_tasks)
    num_shots = check_int("num_shots", num_shots)
    num_query = check_int("num_query", num_query)
    k_amp, k_phase, k_x = jax.random.split(key, 3)
    amp = jax.random.uniform(k_amp, (num_tasks,), minval=AMPLITUDE[0], maxval=AMPLITUDE[1])
    phase = jax.random.uniform(k_phase, (num_tasks,), minval=PHASE[0], maxval=PHASE[1])
    x = jax.random.uniform(k_x, (num_tasks, num_shots + num_query, 1),
                           minval=X_RANGE[0], maxval=X_RANGE[1])
    y = amp[:, None, None] * jnp.sin(x - phase[:, None, None])
    return {
        "support_x": x[:, :num_shots], "support_y": y[:, :num_shots],
        "query_x": x[:, num_shots:], "query_y": y[:, num_shots:],
        "amplitude": amp, "phase": phase,
    }
