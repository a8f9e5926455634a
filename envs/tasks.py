"""`CartPoleTasks`: a distribution of CartPole physics, with train and held-out test splits.

A task is a gymnax CartPole `EnvParams`. Sampling varies the pole length, pole mass, cart mass,
gravity and force magnitude uniformly over `(min, max)` ranges, and the force *direction*:

Force direction (design). gymnax computes the push as
`force = force_mag * action - force_mag * (1 - action)`, i.e. `+force_mag` for action 1 and
`-force_mag` for action 0, so a *negative* `force_mag` mirrors the meaning of the two actions
exactly (action 1 pushes left) and leaves everything else unchanged. An inverted task is
therefore a plain `EnvParams` with `force_mag < 0`: no wrapper, no extra field, any code that
steps gymnax CartPole with it gets the inverted dynamics. `is_inverted(tasks)` tells them apart;
the `force_mag` range is a range of *magnitudes* and must be positive.

Derived fields are recomputed from the sampled ones in every task:
`total_mass = masscart + masspole`, `polemass_length = masspole * length`.

Splits. `"train"` samples every field from the train ranges. `"test"` samples from the test
ranges, which by default equal the train ranges except that they reach *outside* them on three
axes (longer poles, heavier poles and carts; see `DEFAULT_TEST_RANGES`), so evaluation measures
generalisation. A test range may also be a union of disjoint intervals (e.g. force magnitudes
`((1, 5), (15, 20))`, both ends beyond a train range `(5, 15)`), sampled uniformly over the
union (each interval with probability proportional to its length). The two splits also draw
from independent key streams (the key is folded with the split id), so the same key never gives
the same tasks in both splits.

This module imports JAX and gymnax only when tasks are sampled or built (`envs.suites` and the
command line read `CartPoleTasks` and check its ranges without them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

from typing import TYPE_CHECKING

from ssm_jax.validation import check_choice, check_float, check_int

#: The sampled (varied) `EnvParams` fields, in sampling order.
VARIED_FIELDS: tuple[str, ...] = ("length", "masspole", "masscart", "gravity", "force_mag")

#: Default test-split ranges that differ from the (default) train ranges: each reaches above
#: the train maximum. Fields not listed use the train range.
DEFAULT_TEST_RANGES: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "length": (0.25, 1.0),  # train (0.25, 0.75)
        "masspole": (0.05, 0.3),  # train (0.05, 0.2)
        "masscart": (0.5, 2.0),  # train (0.5, 1.5)
    }
)

if TYPE_CHECKING:  # pragma: no cover
    import jax
    from gymnax.environments.classic_control.cartpole import EnvParams

SPLITS: tuple[str, ...] = ("train", "test")
_SPLIT_IDS = {"train": 0, "test": 1}


def _check_range(name: str, value, positive: bool = True) -> tuple[float, float]:
    """``value`` as a finite ``(min, max)`` pair of floats with ``min <= max`` (and ``0 < min``
    if ``positive``)."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a (min, max) pair of numbers, got {value!r}")
    if positive:
        lo = check_float(f"{name} min", value[0], minimum=0.0, strict_min=True)
    else:
        lo = check_float(f"{name} min", value[0])
    hi = check_float(f"{name} max", value[1], minimum=lo)
    return lo, hi


def _is_pair_of_numbers(value) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 2 and not any(
        isinstance(v, (tuple, list)) for v in value)


def check_intervals(name: str, value, positive: bool = True):
    """A range or a union of ranges, validated: a ``(min, max)`` pair (as ``_check_range``) or a
    non-empty tuple of pairs, each with ``min < max``, in increasing order and disjoint (one may
    start where the previous ends). A union of one pair is returned as that pair.

    Returns ``(lo, hi)`` or ``((lo_0, hi_0), (lo_1, hi_1), ...)`` of Python floats.
    """
    if _is_pair_of_numbers(value):
        return _check_range(name, value, positive)
    if not isinstance(value, (tuple, list)) or not value:
        raise ValueError(f"{name} must be a (min, max) pair or a tuple of (min, max) pairs, got {value!r}")
    pairs = tuple(_check_range(f"{name}[{i}]", v, positive) for i, v in enumerate(value))
    if len(pairs) == 1:
        return pairs[0]
    for i, (lo, hi) in enumerate(pairs):
        if hi <= lo:
            raise ValueError(f"{name}[{i}] of a union must have min < max, got {(lo, hi)!r}")
        if i and lo < pairs[i - 1][1]:
            raise ValueError(f"{name} must be disjoint intervals in increasing order, got {value!r} "
                             f"(interval {i} starts before interval {i - 1} ends)")
    return pairs


def intervals(value) -> tuple[tuple[float, float], ...]:
    """The intervals of a checked range or union (``check_intervals``), as a tuple of pairs."""
    return (tuple(value),) if _is_pair_of_numbers(value) else tuple(tuple(v) for v in value)


def span(value) -> tuple[float, float]:
    """``(min, max)`` over every interval of a checked range or union."""
    parts = intervals(value)
    return parts[0][0], parts[-1][1]


def sample_intervals(key, shape, value) -> "jax.Array":
    """Uniform float32 samples of `shape` over a checked range or union (``check_intervals``).

    A single ``(min, max)`` is ``jax.random.uniform(key, shape, minval=min, maxval=max)``; a
    union draws one uniform over the summed lengths and maps it onto the intervals in order,
    so each interval is chosen with probability proportional to its length.
    """
    import jax
    import jax.numpy as jnp

    if _is_pair_of_numbers(value):
        lo, hi = value
        return jax.random.uniform(key, shape, dtype=jnp.float32, minval=lo, maxval=hi)
    los = jnp.asarray([lo for lo, _ in value], jnp.float32)
    lengths = jnp.asarray([hi - lo for lo, hi in value], jnp.float32)
    ends = jnp.cumsum(lengths)
    u = jax.random.uniform(key, shape, dtype=jnp.float32, minval=0.0, maxval=ends[-1])
    index = jnp.clip(jnp.searchsorted(ends, u, side="right"), 0, len(value) - 1)
    his = jnp.asarray([hi for _, hi in value], jnp.float32)
    lo = los[index]
    return jnp.clip(lo + (u - (ends[index] - lengths[index])), lo, his[index])


@dataclasses.dataclass(frozen=True)
class CartPoleTasks:
    """A distribution of CartPole-v1 tasks (gymnax `EnvParams`).

    Every range is a `(min, max)` pair sampled uniformly, named after the `EnvParams` field
    (defaults in parentheses; gymnax's default CartPole value in brackets):

    Attributes:
      length: half pole length in m, `(0.25, 0.75)` [0.5].
      masspole: pole mass in kg, `(0.05, 0.2)` [0.1].
      masscart: cart mass in kg, `(0.5, 1.5)` [1.0].
      gravity: in m/s^2, `(8.0, 12.0)` [9.8].
      force_mag: magnitude of the push in N, `(6.0, 14.0)` [10.0]; the sign is set by the
        force direction (see `inverted_fraction`).
      inverted_fraction: fraction of tasks whose force direction is inverted (stored as a
        negative `force_mag`), `0.5`. Exactly `round(inverted_fraction * num_tasks)` tasks of
        every sampled batch are inverted, at random positions, in both splits.
      test_ranges: ranges of the `"test"` split that differ from the train ranges, a mapping
        from field name (one of `VARIED_FIELDS`) to `(min, max)` or to a union of disjoint
        intervals `((min_0, max_0), (min_1, max_1), ...)` sampled uniformly over its length;
        `DEFAULT_TEST_RANGES` by default (length up to 1.0, masspole up to 0.3, masscart up to
        2.0: all beyond the train maxima).
      max_steps_in_episode: episode time limit, `500` (CartPole-v1).

    Raises:
      ValueError (on construction): a range that is not a finite `(min, max)` pair, has
      `min > max`, or a non-positive minimum (lengths, masses, gravity and force magnitudes must
      be > 0); a test union whose intervals are empty, overlap or are out of order;
      `inverted_fraction` outside [0, 1]; an unknown `test_ranges` field;
      `test_ranges` that all lie inside the train ranges (the test split would not be held
      out: at least one test range must reach below the train min or above the train max,
      e.g. after widening a train range, widen a test range too); `max_steps_in_episode < 1`.
    """

    length: tuple[float, float] = (0.25, 0.75)
    masspole: tuple[float, float] = (0.05, 0.2)
    masscart: tuple[float, float] = (0.5, 1.5)
    gravity: tuple[float, float] = (8.0, 12.0)
    force_mag: tuple[float, float] = (6.0, 14.0)
    inverted_fraction: float = 0.5
    test_ranges: Mapping[str, tuple[float, float]] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_TEST_RANGES)
    )
    max_steps_in_episode: int = 500

    def __post_init__(self):
        for name in VARIED_FIELDS:
            object.__setattr__(self, name, _check_range(name, getattr(self, name)))
        object.__setattr__(self, "inverted_fraction", check_float(
            "inverted_fraction", self.inverted_fraction, minimum=0.0, maximum=1.0))
        if not isinstance(self.test_ranges, Mapping):
            raise ValueError(
                f"test_ranges must be a mapping field -> (min, max), got {self.test_ranges!r}"
            )
        checked = {}
        for name, value in self.test_ranges.items():
            check_choice("test_ranges key", name, VARIED_FIELDS)
            checked[name] = check_intervals(f"test_ranges[{name!r}]", value)
        object.__setattr__(self, "test_ranges", MappingProxyType(checked))
        outside = [
            name
            for name, value in checked.items()
            if span(value)[0] < getattr(self, name)[0] or span(value)[1] > getattr(self, name)[1]
        ]
        if not outside:
            raise ValueError(
                "test_ranges must reach outside the train ranges on at least one field so the "
                f"test split is held out; got test_ranges={dict(checked)!r} inside train ranges "
                f"{ {n: getattr(self, n) for n in VARIED_FIELDS}!r} (widen a test range past "
                "the train min or max)"
            )
        object.__setattr__(self, "max_steps_in_episode",
                           check_int("max_steps_in_episode", self.max_steps_in_episode))

    def __hash__(self):  # frozen dataclass with a mapping field: hash its items
        return hash(
            tuple(getattr(self, f) for f in VARIED_FIELDS)
            + (self.inverted_fraction, tuple(sorted(self.test_ranges.items())))
            + (self.max_steps_in_episode,)
        )

    def ranges(self, split: str = "train") -> dict:
        """The range of every varied field (force_mag: magnitude) in `split`: a `(min, max)`
        pair, or for a test union a tuple of such pairs (`envs.tasks.intervals` reads both)."""
        check_choice("split", split, SPLITS)
        out = {name: getattr(self, name) for name in VARIED_FIELDS}
        if split == "test":
            out.update(self.test_ranges)
        return out

    def sample(self, key: jax.Array, num_tasks: int, split: str = "train") -> EnvParams:
        """Sample `num_tasks` tasks of `split` ("train" or "test"): a pure function of `key`.

        Returns:
          A gymnax CartPole `EnvParams` whose every leaf has shape `(num_tasks,)` (float32,
          `max_steps_in_episode` int32): usable with `vmap(..., in_axes=0)` and
          `envs.rollout_tasks`. Inverted tasks have `force_mag < 0`. Works under `jit` with
          `num_tasks` and `split` static.
        """
        import jax
        import jax.numpy as jnp

        num_tasks = check_int("num_tasks", num_tasks)
        ranges = self.ranges(split)
        key = jax.random.fold_in(key, _SPLIT_IDS[split])
        keys = jax.random.split(key, len(VARIED_FIELDS) + 1)
        values = {}
        for k, name in zip(keys[:-1], VARIED_FIELDS):  # loop over fields, not tasks
            values[name] = sample_intervals(k, (num_tasks,), ranges[name])
        num_inverted = int(round(self.inverted_fraction * num_tasks))
        signs = jnp.where(jnp.arange(num_tasks) < num_inverted, -1.0, 1.0).astype(jnp.float32)
        signs = jax.random.permutation(keys[-1], signs)
        return make_cartpole_params(
            length=values["length"],
            masspole=values["masspole"],
            masscart=values["masscart"],
            gravity=values["gravity"],
            force_mag=signs * values["force_mag"],
            max_steps_in_episode=self.max_steps_in_episode,
        )


def make_cartpole_params(
    *, length, masspole, masscart, gravity, force_mag, max_steps_in_episode=500
) -> EnvParams:
    """CartPole `EnvParams` from the physical fields, with consistent derived fields.

    Arguments broadcast against each other (scalars or arrays with a common leading task axis);
    `total_mass = masscart + masspole` and `polemass_length = masspole * length` are computed
    here, and the remaining fields (`tau`, thresholds) take gymnax's defaults, broadcast to the
    same shape. A negative `force_mag` inverts the force direction.
    """
    import jax.numpy as jnp
    from gymnax.environments.classic_control.cartpole import EnvParams

    f32 = lambda v: jnp.asarray(v, dtype=jnp.float32)  # noqa: E731
    length, masspole, masscart, gravity, force_mag = map(
        f32, (length, masspole, masscart, gravity, force_mag)
    )
    shape = jnp.broadcast_shapes(
        length.shape, masspole.shape, masscart.shape, gravity.shape, force_mag.shape
    )
    default = EnvParams()
    full = lambda v, dtype=jnp.float32: jnp.broadcast_to(jnp.asarray(v, dtype), shape)  # noqa: E731
    return EnvParams(
        gravity=full(gravity),
        masscart=full(masscart),
        masspole=full(masspole),
        total_mass=full(masscart + masspole),
        length=full(length),
        polemass_length=full(masspole * length),
        force_mag=full(force_mag),
        tau=full(default.tau),
        theta_threshold_radians=full(default.theta_threshold_radians),
        x_threshold=full(default.x_threshold),
        max_steps_in_episode=full(max_steps_in_episode, jnp.int32),
    )


def is_inverted(tasks: EnvParams) -> jax.Array:
    """Boolean array (task axis shape) that is True for inverted-force tasks (`force_mag < 0`)."""
    import jax.numpy as jnp

    return jnp.asarray(tasks.force_mag) < 0


def force_sign(tasks: EnvParams) -> jax.Array:
    """`+1.0` for normal tasks, `-1.0` for inverted-force tasks (float32, task axis shape)."""
    import jax.numpy as jnp

    return jnp.where(is_inverted(tasks), -1.0, 1.0).astype(jnp.float32)
