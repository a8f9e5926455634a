"""Observation modes: the full state, or a partial view with the velocities hidden.

`"full"` passes the environment's observation through unchanged.

`"partial"` *drops* the velocity components, so the observation is shorter (it does not zero
them: a zero is still a value a memoryless policy could read). A policy that sees only
positions must infer velocities from the history of observations, which a recurrent (SSM)
policy can do and a memoryless MLP cannot.

What `"partial"` keeps, per environment (indices into the full observation):

==========================  ==================================================  ===========
environment                 full observation                                    partial
==========================  ==================================================  ===========
CartPole-v1                 [x, x_dot, theta, theta_dot]           (4,)         [x, theta] (2,)
Acrobot-v1                  [cos t1, sin t1, cos t2, sin t2, dt1, dt2] (6,)     first 4    (4,)
MountainCar-v0              [position, velocity]                   (2,)         [position] (1,)
MountainCarContinuous-v0    [position, velocity]                   (2,)         [position] (1,)
Pendulum-v1                 [cos theta, sin theta, theta_dot]      (3,)         [cos, sin] (2,)
==========================  ==================================================  ===========
"""

from __future__ import annotations

from ssm_jax.validation import check_choice

OBS_MODES: tuple[str, ...] = ("full", "partial")

#: Indices of the full observation that `"partial"` keeps (everything but velocities).
PARTIAL_OBS_INDICES: dict[str, tuple[int, ...]] = {
    "CartPole-v1": (0, 2),
    "Acrobot-v1": (0, 1, 2, 3),
    "MountainCar-v0": (0,),
    "MountainCarContinuous-v0": (0,),
    "Pendulum-v1": (0, 1),
}


def _env_name(env) -> str:
    return env if isinstance(env, str) else env.name


def check_obs_mode(obs_mode: str, env) -> None:
    """Raise a ValueError if `obs_mode` is unknown or unsupported for `env` (object or name)."""
    check_choice("obs_mode", obs_mode, OBS_MODES)
    name = _env_name(env)
    if obs_mode == "partial" and name not in PARTIAL_OBS_INDICES:
        raise ValueError(
            f"obs_mode='partial' is defined for {sorted(PARTIAL_OBS_INDICES)}, not for {name!r}"
        )


def observe(obs: jax.Array, obs_mode: str, env) -> jax.Array:
    """Map full observations `(..., full_dim)` to the observation mode `(..., obs_dim(env, mode))`.

    Args:
      obs: full observations with the feature axis last, any leading batch axes.
      obs_mode: `"full"` (returned unchanged) or `"partial"` (velocity components dropped).
      env: the gymnax environment, or its name, e.g. `"CartPole-v1"`.
    """
    check_obs_mode(obs_mode, env)
    if obs_mode == "full":
        return obs
    import jax.numpy as jnp  # local: the names above are importable without JAX (maml.config)

    idx = jnp.asarray(PARTIAL_OBS_INDICES[_env_name(env)], dtype=jnp.int32)
    return jnp.take(obs, idx, axis=-1)


def obs_dim(env="CartPole-v1", obs_mode: str = "full") -> int:
    """Length of the observation vector the policy sees for `env` (object or name) in `obs_mode`.

    CartPole-v1: 4 for `"full"`, 2 for `"partial"`.
    """
    check_obs_mode(obs_mode, env)
    name = _env_name(env)
    if obs_mode == "partial":
        return len(PARTIAL_OBS_INDICES[name])
    if isinstance(env, str):
        from envs.registry import make  # local import: registry is the only env factory

        env, params = make(env)
    else:
        params = env.default_params
    shape = env.observation_space(params).shape
    if len(shape) != 1:
        raise ValueError(f"obs_dim: {name!r} has a non-vector observation of shape {shape}")
    return int(shape[0])
