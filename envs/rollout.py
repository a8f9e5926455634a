"""Jitted rollouts of an `ssm_jax`-style policy in a gymnax environment.

`rollout` runs ONE task: `jax.lax.scan` over time, `jax.vmap` over `num_envs` parallel
environments, gymnax's auto-reset, the policy's recurrent carry reset at episode boundaries
(through the `reset` argument of the policy's step) or kept across episodes. `rollout_tasks`
`vmap`s it over a batch of tasks. Both are jit-compiled end to end and may be called inside
an outer `jit`, `vmap` or `jax.grad` (e.g. with traced, adapted params in MAML-RL).

Key schedule (what a reference loop must replicate to reproduce a rollout exactly)::

    key_reset, key_steps = jax.random.split(key)
    obs_0, state_0 = vmap(env.reset)(jax.random.split(key_reset, num_envs), task)
    step_keys = jax.random.split(key_steps, num_steps)           # one key per time step
    for t in range(num_steps):
        key_policy, key_env = jax.random.split(step_keys[t])
        action_t = dist_t.sample(key_policy)                     # or dist_t.mode()
        ... = vmap(env.step)(jax.random.split(key_env, num_envs), state_t, action_t, task)
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from gymnax.environments import spaces
from gymnax.environments.environment import Environment

from envs.observation import check_obs_mode, observe
from envs.registry import DEFAULT_ENV_NAME, make
from ssm_jax import sharding
from ssm_jax.validation import check_bool, check_finite, check_int


#: The environment info fields a trajectory keeps (`Trajectory.info`, `recorded_info`).
TRAJECTORY_INFO = ("since_switch", "goal_distance")


def recorded_info(info: dict) -> dict:
    """The fields of one step's environment `info` that a `Trajectory` keeps (`TRAJECTORY_INFO`)."""
    return {k: info[k] for k in TRAJECTORY_INFO if k in info}


@flax.struct.dataclass
class Trajectory:
    """A batch of rollouts of one task. `E` = num_envs, `T` = num_steps, `D` = obs_dim.

    Time step `t` means: the policy saw `obs[:, t]`, chose `actions[:, t]`, and the
    environment answered with `rewards[:, t]` and the flags `dones[:, t]`.

    Attributes:
      obs: `(E, T, D)` float32, the observation the policy saw at step `t` (after the
        observation mode, so `D` is `envs.obs_dim(env, obs_mode)`). After a done step, the
        next observation is the first observation of the new (auto-reset) episode.
      actions: `(E, T)` int32 for discrete actions, `(E, T, action_dim)` float32 for
        continuous ones. Wrapped in `stop_gradient`.
      rewards: `(E, T)` float32.
      dones: `(E, T)` bool, `terminated | truncated`: the episode ended at this step.
      terminated: `(E, T)` bool, natural termination (pole fell, cart left the track).
      truncated: `(E, T)` bool, time limit (`task.max_steps_in_episode`) reached.
      log_probs: `(E, T)` float32, `dist.log_prob(action)` under the params used to act.
      values: `(E, T)` float32, the policy's value head at step `t`.
      resets: `(E, T)` bool, True where `obs[:, t]` starts a new episode: every row at
        `t = 0`, and `dones[:, t - 1]` afterwards. This is the `resets` argument to give the
        policy's sequence `apply` to recompute the same outputs from `obs` (when the rollout
        was made with `carry_across_episodes=False`; with True, pass `resets` that are True
        only at `t = 0`, or `None`).
      episode_returns: `(E, T)` float32, the undiscounted return of the episode that ended at
        step `t` (exact, summed over all its steps even across auto-reset and, for the first
        episode, from `t = 0`) where `dones[:, t]`, and 0 elsewhere.
      last_obs: `(E, D)`, the observation following the last step (for bootstrapping).
      last_reset: `(E,)` bool, True where `last_obs` starts a new episode (= `dones[:, -1]`).
      last_value: `(E,)` float32, value of `last_obs` from `final_carry` (carry reset first
        where `last_reset`, unless the rollout kept carries across episodes).
      final_carry: the policy carry after consuming `obs[:, T - 1]` (leading axis `E` on
        every leaf); feeding it `last_obs` continues the recurrence.
      info: the fields of the environment's per-step info named in `TRAJECTORY_INFO` that its
        `step` returns (`since_switch` and `goal_distance` of `envs.SuiteCartPole`), leaves
        `(E, T)`; empty for other environments and for a trajectory built by hand.
    """

    obs: jax.Array
    actions: jax.Array
    rewards: jax.Array
    dones: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    log_probs: jax.Array
    values: jax.Array
    resets: jax.Array
    episode_returns: jax.Array
    last_obs: jax.Array
    last_reset: jax.Array
    last_value: jax.Array
    final_carry: Any
    info: dict = flax.struct.field(default_factory=dict)


def num_episodes(traj: Trajectory) -> jax.Array:
    """Number of episodes completed in the trajectory (any leading axes are summed over)."""
    return jnp.sum(traj.dones)


def mean_episode_return(traj: Trajectory) -> jax.Array:
    """Mean return of the episodes completed in `traj` (float32 scalar; NaN if none completed).

    Episodes still running at the end of the rollout are not counted. Works on a batched
    trajectory from `rollout_tasks` too (averages over all tasks' completed episodes).
    """
    n = jnp.sum(traj.dones)
    total = jnp.sum(jnp.where(traj.dones, traj.episode_returns, 0.0))
    return jnp.where(n > 0, total / jnp.maximum(n, 1), jnp.nan).astype(jnp.float32)


def episode_returns_per_row(traj: Trajectory) -> tuple[jax.Array, jax.Array]:
    """Per-row `(sum of completed-episode returns, number of completed episodes)`.

    Shapes: `traj.dones.shape[:-1]` for both (e.g. `(E,)`, or `(num_tasks, E)` batched). The
    caller divides where the count is positive, e.g. to average per task.
    """
    total = jnp.sum(jnp.where(traj.dones, traj.episode_returns, 0.0), axis=-1)
    count = jnp.sum(traj.dones, axis=-1)
    return total, count


def episode_index(dones) -> jax.Array:
    """The index of the episode each step belongs to, from done flags `(..., T)`: 0 up to and
    including the first done step, 1 up to the second, and so on (int)."""
    dones = jnp.asarray(dones)
    return jnp.cumsum(dones, axis=-1) - dones


def first_episode_return(traj: Trajectory) -> jax.Array:
    """Per-row undiscounted return of the FIRST episode of the window (float32).

    Shape `traj.dones.shape[:-1]` (e.g. `(E,)`). Where a row's first episode ended inside the
    window this is its exact return (`episode_returns` at its first done step); where it was
    still running at the window end it is the partial return (the sum of the row's rewards),
    a lower bound that is exact once `num_steps` >= the episode limit
    (`task.max_steps_in_episode`, 500 for CartPole-v1). Always finite, and every row counts
    once whatever its episode length (unlike `mean_episode_return`, which favours rows that
    finish several short episodes and is NaN when none finishes).
    """
    first = traj.dones & (jnp.cumsum(traj.dones, axis=-1) == 1)
    done_return = jnp.sum(jnp.where(first, traj.episode_returns, 0.0), axis=-1)
    partial = jnp.sum(traj.rewards, axis=-1)
    return jnp.where(jnp.any(traj.dones, axis=-1), done_return, partial).astype(jnp.float32)


# --------------------------------------------------------------------------------------------
# validation (plain Python on shapes: works with traced arrays inside an outer jit/vmap/grad)


def _resolve_env(env) -> Environment:
    if env is None:
        return make(DEFAULT_ENV_NAME)[0]
    if not isinstance(env, Environment):
        raise ValueError(
            f"env must be a gymnax Environment (e.g. envs.make('CartPole-v1')[0]) or None, "
            f"got {type(env).__name__}"
        )
    return env


def _check_task(task, env: Environment, leading: tuple[int, ...], fn: str) -> None:
    """Task leaves must have shape `leading + default leaf shape`."""
    default = env.default_params
    d_leaves, d_def = jax.tree_util.tree_flatten(default)
    try:
        t_leaves, t_def = jax.tree_util.tree_flatten(task)
    except Exception as err:  # pragma: no cover - defensive
        raise ValueError(f"{fn}: task must be a {type(default).__name__} pytree") from err
    if t_def != d_def:
        fields = lambda p: list(getattr(type(p), "__dataclass_fields__", {}))  # noqa: E731
        raise ValueError(
            f"{fn}: task must be {env.name}'s {type(default).__name__} pytree like "
            f"env.default_params (fields {fields(default)}), got {type(task).__name__} with "
            f"fields {fields(task)} (tasks of another environment? sample them with "
            f"envs.EnvTasks({env.name!r}))"
        )
    names = [f.name for f in getattr(type(default), "__dataclass_fields__", {}).values()]
    for i, (t, d) in enumerate(zip(t_leaves, d_leaves)):
        want = tuple(leading) + tuple(jnp.shape(d))
        if tuple(jnp.shape(t)) != want:
            field = names[i] if i < len(names) else f"leaf {i}"
            hint = (
                " (rollout takes ONE task without a task axis: use rollout_tasks for a batch)"
                if not leading
                else " (rollout_tasks takes tasks with one leading task axis)"
            )
            raise ValueError(
                f"{fn}: task field {field!r} must have shape {want}, got {tuple(jnp.shape(t))}"
                + hint
            )


#: (policy, env, obs_mode) combinations that already passed `check_policy` (the check traces
#: `observe`, which costs more than a cached jitted rollout: do it once per combination).
_CHECKED_POLICIES: set = set()


def _action_space_str(space) -> str:
    if isinstance(space, spaces.Discrete):
        return f"Discrete({int(space.n)}) ({int(space.n)} actions)"
    return f"Box(shape={tuple(space.shape)})"


def check_policy(policy, env: Environment | None = None, obs_mode: str = "full") -> None:
    """Check that `policy` can act in `env` in `obs_mode`, before anything is traced.

    The one check where a policy meets an environment: `rollout`, `rollout_tasks` (hence every
    trainer and evaluator built on them: `maml.MAMLRL`, `maml.PPO`,
    `adapt.evaluate_with_adaptation`) call it. Raises `ValueError` unless

    - `policy` follows the `ssm_jax` policy contract (`apply(..., method="step")`,
      `initialize_carry(batch)`);
    - `policy.obs_dim` (if it has one) is the length of `env`'s observations in `obs_mode`;
    - its action head matches `env.action_space`: for a `Discrete(n)` space a discrete policy
      (`policy.discrete`, True if absent) with `policy.action_dim == n` (a policy with more
      actions would emit actions the environment reads as something else, e.g. CartPole
      applies any action other than 1 as a push to the left); for a `Box` space a continuous
      policy (`discrete=False`) whose `action_dim` is the box's size. A policy without an int
      `action_dim` is not checked for it.

    The result is cached per hashable `(policy, env, obs_mode)`.
    """
    env = _resolve_env(env)
    check_obs_mode(obs_mode, env)
    try:
        cache_key = (policy, env, obs_mode)
        if cache_key in _CHECKED_POLICIES:
            return
    except TypeError:  # unhashable policy: check every time
        cache_key = None
    _check_policy_uncached(policy, env, obs_mode)
    if cache_key is not None:
        _CHECKED_POLICIES.add(cache_key)


def _check_policy_uncached(policy, env: Environment, obs_mode: str) -> None:
    for attr in ("apply", "initialize_carry"):
        if not hasattr(policy, attr):
            raise ValueError(
                f"policy must follow the ssm_jax policy contract (apply(..., method='step'), "
                f"initialize_carry(batch)); {type(policy).__name__} has no {attr!r}"
            )
    want = getattr(policy, "obs_dim", None)
    if isinstance(want, int):
        full_shape = env.observation_space(env.default_params).shape
        got = jax.eval_shape(
            lambda: observe(jnp.zeros(full_shape, jnp.float32), obs_mode, env)
        ).shape[-1]
        if want != got:
            raise ValueError(
                f"policy.obs_dim is {want} but {env.name} observations in obs_mode="
                f"{obs_mode!r} have {got} components (envs.obs_dim(env, obs_mode))"
            )
    action_dim = getattr(policy, "action_dim", None)
    if not isinstance(action_dim, int):
        return
    space = env.action_space(env.default_params)
    discrete = getattr(policy, "discrete", True)
    if isinstance(space, spaces.Discrete):
        want_discrete, want_dim = True, int(space.n)
    else:
        want_discrete, want_dim = False, int(np.prod(space.shape))
    if discrete is not want_discrete or action_dim != want_dim:
        raise ValueError(
            f"policy.action_dim is {action_dim} (discrete={discrete!r}) but {env.name}'s action "
            f"space is {_action_space_str(space)}: the policy needs discrete={want_discrete} and "
            f"action_dim={want_dim}"
        )


# --------------------------------------------------------------------------------------------
# the rollout


@functools.partial(
    jax.jit,
    static_argnames=(
        "policy",
        "num_envs",
        "num_steps",
        "obs_mode",
        "carry_across_episodes",
        "env",
        "deterministic",
        "unroll",
        "mesh",
    ),
)
def _rollout(
    key,
    policy,
    params,
    task,
    *,
    num_envs: int,
    num_steps: int,
    obs_mode: str,
    carry_across_episodes: bool,
    env: Environment,
    deterministic: bool,
    unroll: int,
    mesh=None,
) -> Trajectory:
    vstep = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    key_reset, key_steps = jax.random.split(key)
    # the env axis over the mesh's devices (mesh None: no-op); keys are split per env as always
    full_obs, env_state = sharding.constrain(jax.vmap(env.reset, in_axes=(0, None))(
        jax.random.split(key_reset, num_envs), task
    ), mesh)
    obs = observe(full_obs, obs_mode, env).astype(jnp.float32)
    carry = sharding.constrain(policy.initialize_carry(num_envs), mesh)
    reset = jnp.ones((num_envs,), dtype=bool)
    running = jnp.zeros((num_envs,), dtype=jnp.float32)
    never = jnp.zeros((num_envs,), dtype=bool)

    def policy_reset(r):
        return never if carry_across_episodes else r

    def body(state, key_t):
        env_state, obs, reset, carry, running = state
        key_policy, key_env = jax.random.split(key_t)
        out, carry = policy.apply(params, obs, carry, policy_reset(reset), method="step")
        dist = out.dist
        action = dist.mode() if deterministic else dist.sample(key_policy)
        action = jax.lax.stop_gradient(action)
        log_prob = dist.log_prob(action)
        full_next, env_state, reward, terminated, truncated, info = vstep(
            jax.random.split(key_env, num_envs), env_state, action, task
        )
        reward = reward.astype(jnp.float32)
        terminated = terminated.astype(bool)
        truncated = truncated.astype(bool)
        done = terminated | truncated
        running = running + reward
        ep_return = jnp.where(done, running, 0.0)
        running = jnp.where(done, 0.0, running)
        next_obs = observe(full_next, obs_mode, env).astype(jnp.float32)
        per_step = (
            obs,
            action,
            reward,
            done,
            terminated,
            truncated,
            log_prob.astype(jnp.float32),
            out.value.astype(jnp.float32),
            reset,
            ep_return,
            recorded_info(info),
        )
        return (env_state, next_obs, done, carry, running), per_step

    init = (env_state, obs, reset, carry, running)
    (_, last_obs, last_reset, carry, _), ys = jax.lax.scan(
        body, init, jax.random.split(key_steps, num_steps), unroll=unroll
    )
    # time-major (T, E, ...) -> env-major (E, T, ...)
    ys = jax.tree_util.tree_map(lambda y: jnp.swapaxes(y, 0, 1), ys)
    last_out, _ = policy.apply(params, last_obs, carry, policy_reset(last_reset), method="step")
    return sharding.constrain(Trajectory(
        obs=ys[0],
        actions=ys[1],
        rewards=ys[2],
        dones=ys[3],
        terminated=ys[4],
        truncated=ys[5],
        log_probs=ys[6],
        values=ys[7],
        resets=ys[8],
        episode_returns=ys[9],
        last_obs=last_obs,
        last_reset=last_reset,
        last_value=last_out.value.astype(jnp.float32),
        final_carry=carry,
        info=ys[10],
    ), mesh)


def rollout(
    key: jax.Array,
    policy,
    params,
    task=None,
    *,
    num_envs: int,
    num_steps: int,
    obs_mode: str = "full",
    carry_across_episodes: bool = False,
    env: Environment | None = None,
    deterministic: bool = False,
    unroll: int = 1,
    mesh=None,
) -> Trajectory:
    """Roll out `policy` for `num_steps` steps in `num_envs` parallel copies of ONE task.

    Jitted end to end (one compilation per combination of static arguments and shapes); may be
    called inside an outer `jit`, `vmap` or `jax.grad` with traced `params`/`task`/`key`.

    Args:
      key: PRNG key; the whole rollout is a pure function of it (see the module docstring for
        the exact key schedule).
      policy: a module following the `ssm_jax` policy contract: `policy.initialize_carry(B)`
        returns a carry pytree with leading axis `B`, and
        `out, carry = policy.apply(params, obs, carry, reset, method="step")` takes `obs`
        `(B, obs_dim)` and `reset` `(B,)` bool (rows reset to the initial carry first) and
        returns `out.dist` (with `sample(key)`, `mode()`, `log_prob(a)`) and `out.value (B,)`.
        Must be hashable (flax modules are): it is a static argument.
      params: the policy's flax params (may be traced, e.g. adapted params inside `jax.grad`).
      task: ONE task, an `EnvParams` pytree of `env` without a task axis (e.g. one element of
        `envs.CartPoleTasks(...).sample(...)`; inverted-force CartPole tasks carry a negative
        `force_mag`). `None` means `env.default_params`. For a batch use `rollout_tasks`.
      num_envs: number of parallel environments `E` (static; a Python or numpy integer).
      num_steps: number of time steps `T` (static; a Python or numpy integer).
      obs_mode: `"full"` or `"partial"` (velocities dropped; see `envs.observation`).
      carry_across_episodes: False (default): the policy carry is reset whenever an episode
        starts. True: it is reset only at `t = 0` and kept across auto-resets, so a recurrent
        policy can adapt in context over several episodes of the same task.
      env: a gymnax `Environment` (static, hashed by identity: use `envs.make(name)[0]`, which
        caches); `None` means CartPole-v1.
      deterministic: act with `dist.mode()` instead of sampling.
      unroll: `lax.scan` unroll factor (a speed knob; results do not depend on it).
      mesh: None (one device) or a `jax.sharding.Mesh` with a `"batch"` axis
        (`ssm_jax.sharding.make_mesh`): the env axis is split over its devices (`num_envs`
        must be divisible by them); the numbers are those of one device (each env's key is
        split from `key` exactly as without a mesh). Static.

    Returns:
      A `Trajectory` with leading axes `(num_envs, num_steps)`; see its docstring (with a
      `mesh`, every leaf split along its env axis over the mesh). Actions are
      `stop_gradient`-ed; `log_probs` and `values` are differentiable functions of `params`
      (their gradient is the score-function gradient at fixed samples), but callers such as
      MAML-RL usually recompute log-probs from `traj.obs`/`traj.actions`/`traj.resets`
      (the policy's sequence `apply` with `resets=traj.resets` reproduces `log_probs` and
      `values`); passing `jax.lax.stop_gradient(params)` then makes explicit that the samples
      carry no gradient.

    Raises:
      ValueError: on a non-positive `num_envs`/`num_steps`, a `carry_across_episodes` or
        `deterministic` that is not a bool, an unknown `obs_mode`, a task
        with a leading task axis or of the wrong type, a policy that cannot act in `env`
        (`check_policy`: its `obs_dim` does not match the observation mode, or its
        `action_dim`/`discrete` do not match the action space), an `env` that is not a gymnax
        environment, or (in an eager call) `params` or `task` holding NaN or an infinity.

    Non-finite values under tracing: inside `jit`/`vmap`/`grad` the values of `params` and
    `task` cannot be checked; a NaN there makes the affected rows' `log_probs` and `values`
    NaN (see `ssm_jax.policy`), which is how it shows in the trajectory.
    """
    num_envs = check_int("num_envs", num_envs)
    num_steps = check_int("num_steps", num_steps)
    unroll = check_int("unroll", unroll)
    mesh = sharding.check_mesh("mesh", mesh)
    sharding.check_divisible("num_envs", num_envs, mesh)
    env = _resolve_env(env)
    check_obs_mode(obs_mode, env)
    task = env.default_params if task is None else task
    _check_task(task, env, (), "rollout")
    check_policy(policy, env, obs_mode)
    check_finite("params", params)
    check_finite("task", task)
    return _rollout(
        key,
        policy,
        params,
        task,
        num_envs=num_envs,
        num_steps=num_steps,
        obs_mode=obs_mode,
        carry_across_episodes=check_bool("carry_across_episodes", carry_across_episodes),
        env=env,
        deterministic=check_bool("deterministic", deterministic),
        unroll=unroll,
        mesh=mesh,
    )


def rollout_tasks(
    key: jax.Array,
    policy,
    params,
    tasks,
    *,
    params_per_task: bool = False,
    env: Environment | None = None,
    mesh=None,
    **kwargs,
) -> Trajectory:
    """`rollout` `vmap`ped over a batch of tasks.

    Args:
      key: PRNG key, split into one key per task (`jax.random.split(key, num_tasks)`, task
        `i` gets key `i`), so task `i`'s trajectory equals
        `rollout(keys[i], policy, params, task_i, ...)`.
      policy: as in `rollout`.
      params: shared policy params, or (with `params_per_task=True`) params whose every leaf
        has a leading task axis (e.g. per-task adapted params in MAML).
      tasks: an `EnvParams` pytree with a leading task axis `N` on every leaf (as returned by
        `CartPoleTasks.sample`).
      params_per_task: whether `params` has a leading task axis.
      env, **kwargs: as in `rollout` (`num_envs`, `num_steps`, `obs_mode`, ...).
      mesh: None (one device) or a `jax.sharding.Mesh` with a `"batch"` axis: the task axis
        (each task's `num_envs` environments, its key and, with `params_per_task`, its params)
        is split over its devices; `N` must be divisible by them. The numbers are those of
        one device.

    Returns:
      A `Trajectory` with leading axes `(N, num_envs, num_steps)` (`final_carry` leaves
      `(N, num_envs, ...)`; with a `mesh`, split along the task axis).

    Equivalently, from the outside::

      jax.vmap(lambda k, t: envs.rollout(k, policy, params, t, num_envs=E, num_steps=T))(
          jax.random.split(key, N), tasks)
    """
    env = _resolve_env(env)
    check_policy(policy, env, kwargs.get("obs_mode", "full"))
    check_finite("params", params)
    check_finite("tasks", tasks)
    leaves = jax.tree_util.tree_leaves(tasks)
    if not leaves or jnp.ndim(leaves[0]) < 1:
        raise ValueError(
            "rollout_tasks: tasks must have a leading task axis on every leaf "
            "(e.g. CartPoleTasks(...).sample(key, num_tasks)); for one task use rollout"
        )
    n = jnp.shape(leaves[0])[0]
    _check_task(tasks, env, (n,), "rollout_tasks")
    mesh = sharding.check_mesh("mesh", mesh)
    sharding.check_divisible("num_tasks", n, mesh)
    if params_per_task:
        bad = [jnp.shape(p) for p in jax.tree_util.tree_leaves(params) if jnp.shape(p)[:1] != (n,)]
        if bad:
            raise ValueError(
                f"rollout_tasks: with params_per_task=True every params leaf needs a leading "
                f"task axis of size {n}; got a leaf of shape {bad[0]}"
            )

    def one(k, p, t):
        return rollout(k, policy, p, t, env=env, **kwargs)

    keys, tasks = sharding.constrain((jax.random.split(key, n), tasks), mesh)
    if params_per_task:
        params = sharding.constrain(params, mesh)
    traj = jax.vmap(one, in_axes=(0, 0 if params_per_task else None, 0))(keys, params, tasks)
    return sharding.constrain(traj, mesh)
