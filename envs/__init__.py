"""gymnax environments, task distributions (CartPole, Acrobot, Pendulum), evaluation suites,
observation modes and jitted rollouts.

Names are imported on first use (``ssm_jax.lazy``): ``import envs``, ``envs.OBS_MODES``,
``envs.CartPoleTasks``, ``envs.EnvTasks``, ``envs.TASK_ENVS`` and ``envs.SUITES`` import no
JAX or gymnax.
"""

from ssm_jax.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "context": ("ContextWrapper",),
    "observation": ("OBS_MODES", "PARTIAL_OBS_INDICES", "obs_dim", "observe"),
    "registry": ("ENV_NAMES", "make"),
    "rollout": ("TRAJECTORY_INFO", "Trajectory", "check_policy", "episode_index", "episode_returns_per_row",
                "first_episode_return", "mean_episode_return", "num_episodes", "rollout", "rollout_tasks"),
    "suite_env": ("GoalVisible", "SuiteCartPole", "SuiteParams", "SuiteState", "make_suite_env",
                  "make_suite_params", "rewards_around_switch", "final_goal_distance"),
    "wrapper": ("ObservationWrapper",),
    "suites": ("SUITES", "SUITE_NAMES", "Suite", "get_suite"),
    "tasks": ("DEFAULT_TEST_RANGES", "VARIED_FIELDS", "CartPoleTasks", "EnvTasks", "TASK_ENVS",
              "TASK_ENV_NAMES", "TaskEnv", "force_sign", "get_task_env", "is_inverted",
              "make_cartpole_params", "make_task_params"),
})
