"""RL^2 context wrapper: append the previous action, reward and done flag to the observation.

An in-context (RL-squared) agent adapts with its recurrent state instead of gradient steps. To
infer the task (e.g. whether CartPole's force direction is inverted) it needs to see what it did
and what happened: the wrapper's observation at step `t + 1` is::

    [ observe(obs_{t+1}, obs_mode) | one_hot(action_t) | reward_t | done_t ]

where `done_t` is 1.0 when step `t` ended an episode (the observation is then the first one of
the auto-reset episode, as in gymnax), so an agent that keeps its carry across episodes
(`envs.rollout(..., carry_across_episodes=True)`) sees where one episode ends and the next
begins. The observation after `reset` carries an all-zero context (no previous action).

Shapes (`D` = inner observation size in `obs_mode`, `A` = `num_actions` for a discrete action
space, else the action vector's size): observation `(D + A + 2,)` float32. CartPole-v1 full:
`4 + 2 + 2 = 8`; partial: `2 + 2 + 2 = 6`.

Observation modes: the wrapper applies `obs_mode` ("full" or "partial", `envs.observation`) to
the INNER observation itself, before appending the context. Roll the wrapped environment out
with `obs_mode="full"` (the default), which passes its observation through unchanged:
`envs.observe` does not know the wrapper's name, so `obs_mode="partial"` on the wrapper is
rejected with a clear error instead of silently slicing the context away.

The wrapper keeps no state of its own (the context is a function of the step's inputs and
outputs), so its state, params and tasks are the inner environment's: `envs.rollout(key,
policy, params, task, env=ContextWrapper(env))` takes the same `EnvParams` tasks. Wrappers of
the same inner environment and `obs_mode` compare and hash equal, so jitted functions taking
the environment as a static argument do not recompile for a new but equal wrapper.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from gymnax.environments import spaces
from gymnax.environments.environment import Environment

from envs.observation import check_obs_mode, obs_dim, observe
from envs.wrapper import ObservationWrapper


class ContextWrapper(ObservationWrapper):
    """A gymnax `Environment` whose observations end with `[one_hot(a), r, done]` of the last step.

    Args:
      env: the inner gymnax environment (e.g. `envs.make("CartPole-v1")[0]`).
      obs_mode: observation mode applied to the inner observation ("full" or "partial").

    Raises:
      ValueError: if `env` is not a gymnax `Environment` or `obs_mode` is not supported for it.
    """

    def __init__(self, env: Environment, obs_mode: str = "full"):
        super().__init__(env)
        check_obs_mode(obs_mode, env)
        self.obs_mode = obs_mode
        space = env.action_space(env.default_params)
        self.discrete = isinstance(space, spaces.Discrete)
        self.action_size = int(space.n) if self.discrete else int(jnp.prod(jnp.array(space.shape)))
        self.inner_obs_dim = obs_dim(env, obs_mode)

    def identity(self) -> tuple:
        return (self.obs_mode,)

    @property
    def name(self) -> str:
        return f"{self._env.name}+context"

    @property
    def context_dim(self) -> int:
        """Number of appended components: action size + reward + done."""
        return self.action_size + 2

    def observation_space(self, params=None):
        dim = self.inner_obs_dim + self.context_dim
        return spaces.Box(-jnp.inf, jnp.inf, (dim,), jnp.float32)

    def _encode_action(self, action) -> jax.Array:
        if self.discrete:
            return jax.nn.one_hot(action, self.action_size, dtype=jnp.float32)
        return jnp.reshape(jnp.asarray(action, jnp.float32), (self.action_size,))

    def _wrap(self, obs, action_code, reward, done) -> jax.Array:
        inner = observe(jnp.asarray(obs, jnp.float32), self.obs_mode, self._env)
        tail = jnp.stack([jnp.asarray(reward, jnp.float32), jnp.asarray(done, jnp.float32)])
        return jnp.concatenate([inner, action_code, tail], axis=-1)

    def reset(self, key, params=None):
        """`(obs (D + A + 2,), state)`: the inner reset with an all-zero context."""
        obs, state = self._env.reset(key, params)
        return self._wrap(obs, jnp.zeros((self.action_size,), jnp.float32), 0.0, False), state

    def step(self, key, state, action, params=None):
        """The inner (auto-resetting) step; the new observation carries this step's context."""
        obs, state, reward, terminated, truncated, info = self._env.step(key, state, action, params)
        done = jnp.logical_or(terminated, truncated)
        wrapped = self._wrap(obs, self._encode_action(action), reward, done)
        return wrapped, state, reward, terminated, truncated, info
