"""`ObservationWrapper`: the one home of what a gymnax wrapper that only rewrites observations
shares (`envs.ContextWrapper`, `envs.GoalVisible`).

Such a wrapper keeps no state of its own: its states, params, tasks, actions, rewards and dones
are the inner environment's, so rollouts take the inner environment's tasks unchanged. Two
wrappers of the same class around the same inner environment object, with the same
`identity()`, compare and hash equal, so jitted functions that take the environment as a static
argument (hashed) do not recompile for a new but equal wrapper.

A subclass implements `name`, `observation_space`, `reset` and `step` (gymnax's auto-resetting
`step` is overridden, so `step_env` is never reached), and `identity()` when it has options
beyond the inner environment.
"""

from __future__ import annotations

from typing import Any

from gymnax.environments.environment import Environment


class ObservationWrapper(Environment):
    """A gymnax `Environment` around `env` that rewrites observations only (see the module
    docstring). `env` must be a gymnax `Environment` (ValueError naming it otherwise)."""

    def __init__(self, env: Environment):
        if not isinstance(env, Environment):
            raise ValueError(f"env must be a gymnax Environment (e.g. envs.make('CartPole-v1')[0]), "
                             f"got {type(env).__name__}")
        self._env = env

    # ---- identity: equal wrappers share jit caches -------------------------------------------
    def identity(self) -> tuple:
        """The wrapper's options that change what it computes (hashable); none by default."""
        return ()

    def _key(self) -> tuple:
        return (type(self), id(self._env), self.identity())

    def __eq__(self, other: Any) -> bool:
        return type(other) is type(self) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    # ---- delegated to the inner environment --------------------------------------------------
    @property
    def inner(self) -> Environment:
        return self._env

    @property
    def default_params(self):
        return self._env.default_params

    @property
    def num_actions(self) -> int:
        return self._env.num_actions

    def action_space(self, params=None):
        return self._env.action_space(params)

    def reset(self, key, params=None):  # pragma: no cover - every subclass defines it
        raise NotImplementedError(f"{type(self).__name__} must define reset()")

    def reset_env(self, key, params):
        return self.reset(key, params)

    def step_env(self, key, state, action, params):  # pragma: no cover - step is overridden
        raise NotImplementedError(f"{type(self).__name__} overrides step(); call step, not step_env")
