"""gymnax environments, CartPole task distributions, observation modes and jitted rollouts."""

from envs.context import ContextWrapper
from envs.observation import OBS_MODES, PARTIAL_OBS_INDICES, obs_dim, observe
from envs.registry import ENV_NAMES, make
from envs.rollout import (
    Trajectory,
    episode_returns_per_row,
    first_episode_return,
    mean_episode_return,
    num_episodes,
    rollout,
    rollout_tasks,
)
from envs.tasks import (
    DEFAULT_TEST_RANGES,
    VARIED_FIELDS,
    CartPoleTasks,
    force_sign,
    is_inverted,
    make_cartpole_params,
)

__all__ = [
    "CartPoleTasks",
    "ContextWrapper",
    "DEFAULT_TEST_RANGES",
    "ENV_NAMES",
    "OBS_MODES",
    "PARTIAL_OBS_INDICES",
    "Trajectory",
    "VARIED_FIELDS",
    "episode_returns_per_row",
    "first_episode_return",
    "force_sign",
    "is_inverted",
    "make",
    "make_cartpole_params",
    "mean_episode_return",
    "num_episodes",
    "obs_dim",
    "observe",
    "rollout",
    "rollout_tasks",
]
