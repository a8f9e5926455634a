"""`make(name)`: gymnax classic-control environments by name.

Environment objects are cached per name, so two calls with the same name return the *same*
object. gymnax environments are stateless, and jitted functions that take the environment as a
static argument (such as `envs.rollout`) hash it by identity: the cache is what keeps repeated
`make("CartPole-v1")` calls from recompiling.
"""

from __future__ import annotations

import functools

import gymnax

from ssm_jax.validation import check_choice

#: The environment names `make` accepts (gymnax's classic-control suite).
ENV_NAMES: tuple[str, ...] = (
    "CartPole-v1",
    "Acrobot-v1",
    "MountainCar-v0",
    "MountainCarContinuous-v0",
    "Pendulum-v1",
)

DEFAULT_ENV_NAME = "CartPole-v1"


@functools.lru_cache(maxsize=None)
def _make_env(name: str):
    env, _ = gymnax.make(name)
    return env


def make(name: str = DEFAULT_ENV_NAME):
    """Return `(env, default_params)` for a gymnax classic-control environment.

    Args:
      name: one of `ENV_NAMES`; `"CartPole-v1"` by default.

    Returns:
      `(env, default_params)`: the (cached, stateless) gymnax environment and its default
      `EnvParams` pytree (scalar leaves, no task axis).

    Raises:
      ValueError: if `name` is not one of `ENV_NAMES`; the message lists the valid names.
    """
    check_choice("envs.make: the environment name", name, ENV_NAMES)
    env = _make_env(name)
    return env, env.default_params
