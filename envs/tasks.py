"""Task distributions over gymnax physics (`EnvTasks`, `CartPoleTasks`), with train and
held-out test splits.

A task is a gymnax `EnvParams`. `EnvTasks(env_name, ranges, test_ranges, inverted_fraction)`
varies any scalar `EnvParams` fields of a supported environment (`TASK_ENVS`: CartPole-v1,
Acrobot-v1, Pendulum-v1) uniformly over `(min, max)` ranges, recomputes the fields derived from
them, and mirrors the control of a fraction of the tasks. `CartPoleTasks` is its CartPole
instance with named range attributes (`CartPoleTasks().sample` is exactly
`EnvTasks("CartPole-v1").sample`).

Control inversion (design): each environment mirrors its control through plain `EnvParams`
data, so an inverted task needs no wrapper and any code stepping gymnax with it gets the
inverted dynamics; `is_inverted(tasks)` tells them apart, and the range of the field that
carries the sign is a range of *magnitudes*.

- CartPole: gymnax computes the push as `force = force_mag * action - force_mag * (1 - action)`
  (`+force_mag` for action 1, `-force_mag` for action 0), so a negative `force_mag` swaps the
  meaning of the two actions exactly and leaves everything else unchanged.
- Acrobot: the torque is `available_torque[action]`, `[-1, 0, +1]` by default; an inverted task
  has `[+1, 0, -1]` (actions 0 and 2 swap; the noise term is symmetric).
- Pendulum: the mass enters the dynamics only in the torque term
  `3 / (m * l**2) * u` (the gravity term is `3 g / (2 l) * sin(theta)`, the reward uses `u`
  itself), so a negative `m` mirrors the applied torque and nothing else.

Derived fields, recomputed from the sampled ones in every task: CartPole
`total_mass = masscart + masspole`, `polemass_length = masspole * length`; Acrobot
`link_com_pos_i = link_length_i / 2` (uniform links, gymnax's default 0.5 for 1.0). Acrobot's
`link_moi` is one moment of inertia shared by both links in gymnax (1.0, the "book" model's
value, not a formula of mass and length), so it is a field of its own that a range may vary,
not derived; Acrobot's goal test (`-cos(t1) - cos(t1 + t2) > 1`) is in angles and does not
scale with the link lengths. Pendulum has no derived fields.

Splits. `"train"` samples every field from the train ranges. `"test"` samples from the test
ranges, which equal the train ranges except on the fields of `test_ranges`, at least one of
which must reach *outside* its train range (e.g. CartPole's default: longer poles, heavier poles
and carts; see `DEFAULT_TEST_RANGES`), so evaluation measures generalisation. A range may also
be a union of disjoint intervals (e.g. force magnitudes `((1, 5), (15, 20))`, both ends beyond
a train range `(5, 15)`), sampled uniformly over the union (each interval with probability
proportional to its length). The two splits also draw from independent key streams (the key is
folded with the split id), so the same key never gives the same tasks in both splits.

This module imports JAX and gymnax only when tasks are sampled or built (`envs.suites` and the
command line read `CartPoleTasks`, `EnvTasks` and `TASK_ENVS` and check ranges without them).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, ClassVar

from ssm_jax.validation import check_choice, check_float, check_int

#: `CartPoleTasks`' sampled (varied) CartPole `EnvParams` fields, in sampling order.
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


# --------------------------------------------------------------------------------------------
# Task environments: which EnvParams fields exist, which are derived, how control is inverted


def _cartpole_derive(params):
    return params.replace(total_mass=params.masscart + params.masspole,
                          polemass_length=params.masspole * params.length)


def _cartpole_invert(params, signs):
    return params.replace(force_mag=signs * params.force_mag)


def _cartpole_is_inverted(params):
    import jax.numpy as jnp

    return jnp.asarray(params.force_mag) < 0


def _acrobot_derive(params):
    return params.replace(link_com_pos_1=0.5 * params.link_length_1,
                          link_com_pos_2=0.5 * params.link_length_2)


def _acrobot_invert(params, signs):
    return params.replace(available_torque=signs[..., None] * params.available_torque)


def _acrobot_is_inverted(params):
    import jax.numpy as jnp

    return jnp.asarray(params.available_torque)[..., -1] < 0


def _pendulum_derive(params):
    return params


def _pendulum_invert(params, signs):
    return params.replace(m=signs * params.m)


def _pendulum_is_inverted(params):
    import jax.numpy as jnp

    return jnp.asarray(params.m) < 0


@dataclasses.dataclass(frozen=True)
class TaskEnv:
    """How one gymnax environment's `EnvParams` become a task distribution (see `TASK_ENVS`).

    Plain data and pure functions, readable without JAX (the command line validates ranges
    against it before importing JAX).

    Attributes:
      name: the gymnax environment name (`envs.make(name)`).
      fields: every `EnvParams` field, in gymnax's order (a test checks them against gymnax).
      rangeable: the fields a range may vary (scalar floats that are not derived), in sampling
        order; the other fields keep gymnax's defaults.
      derived: derived field -> its formula (documentation of what `derive` recomputes).
      nonnegative: rangeable fields whose range may start at 0 (the others must be > 0).
      inversion: how an inverted task mirrors the control (documentation).
      default_ranges: train ranges of `EnvTasks(name)`, field -> `(min, max)`.
      default_test_ranges: test ranges of `EnvTasks(name)` that differ from the train ones.
      derive: `params -> params` recomputing every derived field from the varied ones.
      invert: `(params, signs) -> params`, `signs` +1/-1 (float32, the task axis): mirrors the
        control where `signs < 0` (applied once, after `derive`).
      is_inverted: `params -> bool array` (task axis), True where the control is mirrored.
      max_steps_in_episode: gymnax's default episode limit.
      discrete: whether the action space is `Discrete` (a categorical policy head) or a `Box`
        (a Gaussian head, `discrete=False`).
      reward_range: `(min, max)` of one step's reward over the default ranges (a return over
        `T` steps lies in `T` times it): CartPole `(0, 1)`; Acrobot `(-1, 0)`; Pendulum
        `(-16.2757, 0)`: `-(pi**2 + 0.1 * 8**2 + 0.001 * max_torque**2)` at `max_torque = 2.4`.
    """

    name: str
    fields: tuple[str, ...]
    rangeable: tuple[str, ...]
    derived: Mapping[str, str]
    nonnegative: tuple[str, ...]
    inversion: str
    default_ranges: Mapping[str, tuple[float, float]]
    default_test_ranges: Mapping[str, tuple[float, float]]
    max_steps_in_episode: int
    discrete: bool
    reward_range: tuple[float, float]
    derive: Callable = dataclasses.field(repr=False, compare=False)
    invert: Callable = dataclasses.field(repr=False, compare=False)
    is_inverted: Callable = dataclasses.field(repr=False, compare=False)

    def __hash__(self):
        return hash(self.name)


#: The environments a task distribution (`EnvTasks`) supports, by gymnax name.
TASK_ENVS: Mapping[str, TaskEnv] = MappingProxyType({
    "CartPole-v1": TaskEnv(
        name="CartPole-v1",
        fields=("max_steps_in_episode", "gravity", "masscart", "masspole", "total_mass",
                "length", "polemass_length", "force_mag", "tau", "theta_threshold_radians",
                "x_threshold"),
        rangeable=VARIED_FIELDS + ("tau", "theta_threshold_radians", "x_threshold"),
        derived=MappingProxyType({"total_mass": "masscart + masspole",
                                  "polemass_length": "masspole * length"}),
        nonnegative=(),
        inversion="force_mag < 0: gymnax pushes with +-force_mag, so every action is mirrored",
        default_ranges=MappingProxyType({"length": (0.25, 0.75), "masspole": (0.05, 0.2),
                                         "masscart": (0.5, 1.5), "gravity": (8.0, 12.0),
                                         "force_mag": (6.0, 14.0)}),
        default_test_ranges=DEFAULT_TEST_RANGES,
        max_steps_in_episode=500, discrete=True, reward_range=(0.0, 1.0),
        derive=_cartpole_derive, invert=_cartpole_invert, is_inverted=_cartpole_is_inverted,
    ),
    "Acrobot-v1": TaskEnv(
        name="Acrobot-v1",
        fields=("max_steps_in_episode", "available_torque", "dt", "link_length_1",
                "link_length_2", "link_mass_1", "link_mass_2", "link_com_pos_1", "link_com_pos_2",
                "link_moi", "max_vel_1", "max_vel_2", "torque_noise_max"),
        rangeable=("link_length_1", "link_length_2", "link_mass_1", "link_mass_2", "link_moi",
                   "dt", "max_vel_1", "max_vel_2", "torque_noise_max"),
        derived=MappingProxyType({"link_com_pos_1": "0.5 * link_length_1",
                                  "link_com_pos_2": "0.5 * link_length_2"}),
        nonnegative=("torque_noise_max",),
        inversion="available_torque = [+1, 0, -1] instead of [-1, 0, +1]: actions 0 and 2 swap",
        default_ranges=MappingProxyType({"link_length_1": (0.75, 1.25),
                                         "link_length_2": (0.75, 1.25),
                                         "link_mass_1": (0.75, 1.25),
                                         "link_mass_2": (0.75, 1.25)}),
        default_test_ranges=MappingProxyType({"link_length_1": (0.75, 1.5),
                                              "link_mass_2": (0.75, 1.5)}),
        max_steps_in_episode=500, discrete=True, reward_range=(-1.0, 0.0),
        derive=_acrobot_derive, invert=_acrobot_invert, is_inverted=_acrobot_is_inverted,
    ),
    "Pendulum-v1": TaskEnv(
        name="Pendulum-v1",
        fields=("max_steps_in_episode", "max_speed", "max_torque", "dt", "g", "m", "l"),
        rangeable=("m", "l", "g", "max_torque", "max_speed", "dt"),
        derived=MappingProxyType({}),
        nonnegative=(),
        inversion="m < 0: m appears only in the torque term 3 / (m l^2) * u, which flips sign",
        default_ranges=MappingProxyType({"m": (0.7, 1.3), "l": (0.7, 1.3), "g": (8.0, 12.0),
                                         "max_torque": (1.6, 2.4)}),
        default_test_ranges=MappingProxyType({"m": (0.7, 1.6), "l": (0.7, 1.6)}),
        max_steps_in_episode=200, discrete=False, reward_range=(-16.2757, 0.0),
        derive=_pendulum_derive, invert=_pendulum_invert, is_inverted=_pendulum_is_inverted,
    ),
})

#: The names `EnvTasks` (and `--env_name`) accept.
TASK_ENV_NAMES: tuple[str, ...] = tuple(TASK_ENVS)


def get_task_env(name: str) -> TaskEnv:
    """The `TaskEnv` of a supported environment; `ValueError` listing `TASK_ENV_NAMES` else."""
    check_choice("env_name (environments with a task distribution)", name, TASK_ENV_NAMES)
    return TASK_ENVS[name]


def _task_env_of(params) -> TaskEnv:
    """The `TaskEnv` whose `EnvParams` type `params` is (or subclasses, e.g. `SuiteParams`)."""
    names = set(getattr(type(params), "__dataclass_fields__", {}))
    for spec in TASK_ENVS.values():
        if set(spec.fields) <= names:
            return spec
    raise ValueError(f"tasks must be the EnvParams of one of {list(TASK_ENV_NAMES)}, got "
                     f"{type(params).__name__} with fields {sorted(names)}")


def check_task_ranges(env_name: str, name: str, ranges) -> dict:
    """Validated ranges of `env_name`'s task distribution, as a dict in sampling order.

    `ranges` maps `EnvParams` field names to a `(min, max)` pair or a union of disjoint pairs
    (`check_intervals`). `ValueError` for an unknown field (listing the valid ones), a derived
    field (naming its formula), a field that is not a varied scalar (e.g. `max_steps_in_episode`,
    Acrobot's `available_torque`) or a bad range.
    """
    spec = get_task_env(env_name)
    if not isinstance(ranges, Mapping):
        raise ValueError(f"{name} must be a mapping field -> (min, max), got {ranges!r}")
    for field in ranges:
        if field in spec.derived:
            raise ValueError(f"{name}: {env_name} field {field!r} is derived "
                             f"({field} = {spec.derived[field]}); vary the fields it is computed from")
        if field not in spec.rangeable:
            kind = "not a varied scalar field" if field in spec.fields else "not an EnvParams field"
            raise ValueError(f"{name}: {field!r} is {kind} of {env_name}; the fields a range may "
                             f"vary are {list(spec.rangeable)}")
    return {f: _check_field_range(spec, f"{name}[{f!r}]", f, ranges[f])
            for f in spec.rangeable if f in ranges}


def _check_field_range(spec: TaskEnv, name: str, field: str, value):
    """A range (or union) of one field: > 0 throughout, or >= 0 for `spec.nonnegative`."""
    if field not in spec.nonnegative:
        return check_intervals(name, value)
    checked = check_intervals(name, value, positive=False)
    if span(checked)[0] < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return checked


def make_task_params(env_name: str, batch_shape: tuple[int, ...] = (), *, signs=None, **values):
    """`env_name`'s `EnvParams` with `values` set, derived fields recomputed, control inverted.

    Args:
      env_name: one of `TASK_ENV_NAMES`.
      batch_shape: leading axes of every leaf, e.g. `(num_tasks,)`; `()` for one task. Every
        field not in `values` takes gymnax's default, broadcast to `batch_shape + its shape`.
      signs: optional +1/-1 per task (broadcast to `batch_shape`): where negative, the control
        is mirrored (`TaskEnv.invert`), after the derived fields are computed.
      **values: field -> value broadcastable to `batch_shape` (e.g. CartPole `length=...`); a
        field that is not an `EnvParams` field of `env_name`, or a derived one, raises
        `ValueError`.

    Returns:
      The `EnvParams`: float32 leaves where gymnax's default is a float, int32 where an int
      (`max_steps_in_episode`).
    """
    import jax.numpy as jnp

    spec = get_task_env(env_name)
    settable = [f for f in spec.fields if f not in spec.derived]
    for field in values:
        if field in spec.derived:
            raise ValueError(f"make_task_params: {env_name} field {field!r} is derived "
                             f"({field} = {spec.derived[field]}); set the fields it is computed from")
        if field not in settable:
            raise ValueError(f"make_task_params: {field!r} is not a settable {env_name} field; "
                             f"settable: {settable}")
    default = _default_params(env_name)
    lead = tuple(batch_shape)

    def full(field):
        base = jnp.asarray(getattr(default, field))
        dtype = jnp.int32 if jnp.issubdtype(base.dtype, jnp.integer) else jnp.float32
        value = jnp.asarray(values.get(field, base), dtype)
        return jnp.broadcast_to(value, lead + base.shape)

    params = spec.derive(default.replace(**{f: full(f) for f in spec.fields}))
    if signs is not None:
        params = spec.invert(params, jnp.broadcast_to(jnp.asarray(signs, jnp.float32), lead))
    return params


def _default_params(env_name: str):
    from envs.registry import make  # noqa: PLC0415 (gymnax only when params are built)

    return make(env_name)[1]


@dataclasses.dataclass(frozen=True)
class EnvTasks:
    """A distribution of tasks of one gymnax environment: `EnvParams` with varied fields.

    Every varied field is drawn uniformly and independently from its range; the derived fields
    are recomputed from the drawn ones (`TaskEnv.derive`), and exactly
    `round(inverted_fraction * num_tasks)` tasks of every batch, at random positions, have their
    control mirrored (`TaskEnv.invert`). Fields that are not varied keep gymnax's defaults.

    Attributes:
      env_name: one of `TASK_ENV_NAMES` ("CartPole-v1", "Acrobot-v1", "Pendulum-v1").
      ranges: train ranges, `EnvParams` field -> `(min, max)` or a union of disjoint pairs (as
        `check_intervals`); None for `TASK_ENVS[env_name].default_ranges`. Sampled in the
        order of `TaskEnv.rangeable`. Ranges of fields that carry the inversion
        (CartPole `force_mag`, Pendulum `m`) are ranges of magnitudes.
      test_ranges: test-split ranges that differ from the train ranges (keys among `ranges`'),
        None for the environment's defaults (only with default `ranges`: custom train ranges
        need their own test ranges). At least one must reach outside its train range, so the
        test split is held out.
      inverted_fraction: fraction of inverted tasks in every batch, in [0, 1].
      max_steps_in_episode: episode limit; None for gymnax's default (CartPole 500, Acrobot
        500, Pendulum 200).

    `EnvTasks("CartPole-v1")` samples exactly what `CartPoleTasks()` samples.

    Raises:
      ValueError (on construction): an unsupported environment (listing the supported ones), an
      unknown, derived or non-scalar field (listing the fields that may vary), a bad range, a
      test range for a field without a train range, test ranges inside the train ranges,
      custom `ranges` without `test_ranges`, a bad `inverted_fraction` or episode limit.
    """

    env_name: str = "CartPole-v1"
    ranges: Mapping | None = None
    test_ranges: Mapping | None = None
    inverted_fraction: float = 0.5
    max_steps_in_episode: int | None = None

    def __post_init__(self):
        spec = get_task_env(self.env_name)
        if self.ranges is None:
            ranges, test_default = spec.default_ranges, spec.default_test_ranges
        else:
            ranges, test_default = self.ranges, None
        train = check_task_ranges(self.env_name, "ranges", ranges)
        if not train:
            raise ValueError(f"ranges must vary at least one field of {self.env_name}: "
                             f"{list(spec.rangeable)}")
        test_ranges = test_default if self.test_ranges is None else self.test_ranges
        if test_ranges is None:
            raise ValueError("test_ranges must be given with custom ranges: at least one test "
                             "range reaching outside its train range, so the test split is held out")
        test = check_task_ranges(self.env_name, "test_ranges", test_ranges)
        for field in test:
            if field not in train:
                raise ValueError(f"test_ranges[{field!r}] has no train range; the train ranges "
                                 f"are for {list(train)}")
        outside = [f for f, v in test.items()
                   if span(v)[0] < span(train[f])[0] or span(v)[1] > span(train[f])[1]]
        if not outside:
            raise ValueError(
                "test_ranges must reach outside the train ranges on at least one field so the "
                f"test split is held out; got test_ranges={test!r} inside train ranges "
                f"{train!r} (widen a test range past the train min or max)")
        object.__setattr__(self, "ranges", MappingProxyType(train))
        object.__setattr__(self, "test_ranges", MappingProxyType(test))
        object.__setattr__(self, "inverted_fraction", check_float(
            "inverted_fraction", self.inverted_fraction, minimum=0.0, maximum=1.0))
        steps = self.max_steps_in_episode
        if steps is None:
            steps = spec.max_steps_in_episode
        object.__setattr__(self, "max_steps_in_episode", check_int("max_steps_in_episode", steps))

    def __hash__(self):
        return hash((self.env_name, tuple(self.ranges.items()), tuple(self.test_ranges.items()),
                     self.inverted_fraction, self.max_steps_in_episode))

    @property
    def task_env(self) -> TaskEnv:
        """The environment's `TaskEnv` (fields, derived fields, inversion)."""
        return TASK_ENVS[self.env_name]

    def env(self):
        """The (cached) gymnax environment, `envs.make(env_name)[0]`."""
        from envs.registry import make  # noqa: PLC0415

        return make(self.env_name)[0]

    def split_ranges(self, split: str = "train") -> dict:
        """Every varied field's range in `split`: a `(min, max)` pair or a union of pairs."""
        check_choice("split", split, SPLITS)
        out = dict(self.ranges)
        if split == "test":
            out.update(self.test_ranges)
        return out

    def sample(self, key: jax.Array, num_tasks: int, split: str = "train"):
        """Sample `num_tasks` tasks of `split` ("train" or "test"): a pure function of `key`.

        Key schedule: `key` is folded with the split id (train 0, test 1) and split into one
        key per varied field (in `ranges` order) and one for the inverted positions.

        Returns:
          The environment's `EnvParams`, every leaf with a leading `(num_tasks,)` axis (float32;
          `max_steps_in_episode` int32); `is_inverted(tasks)` marks the mirrored ones. Works
          under `jit` with `num_tasks` and `split` static.
        """
        import jax
        import jax.numpy as jnp

        num_tasks = check_int("num_tasks", num_tasks)
        ranges = self.split_ranges(split)
        key = jax.random.fold_in(key, _SPLIT_IDS[split])
        keys = jax.random.split(key, len(ranges) + 1)
        values = {name: sample_intervals(k, (num_tasks,), value)
                  for k, (name, value) in zip(keys[:-1], ranges.items())}  # fields, not tasks
        num_inverted = int(round(self.inverted_fraction * num_tasks))
        signs = jnp.where(jnp.arange(num_tasks) < num_inverted, -1.0, 1.0).astype(jnp.float32)
        signs = jax.random.permutation(keys[-1], signs)
        return make_task_params(self.env_name, (num_tasks,), signs=signs,
                                max_steps_in_episode=self.max_steps_in_episode, **values)


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
    env_name: ClassVar[str] = "CartPole-v1"

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

    def split_ranges(self, split: str = "train") -> dict:
        """`ranges(split)`: the name `EnvTasks` uses (its `ranges` is the train mapping)."""
        return self.ranges(split)

    def env_tasks(self) -> EnvTasks:
        """The same distribution as an `EnvTasks("CartPole-v1", ...)` (which `sample` runs)."""
        return self._env_tasks

    @functools.cached_property
    def _env_tasks(self) -> EnvTasks:
        return EnvTasks(self.env_name, ranges={n: getattr(self, n) for n in VARIED_FIELDS},
                        test_ranges=dict(self.test_ranges),
                        inverted_fraction=self.inverted_fraction,
                        max_steps_in_episode=self.max_steps_in_episode)

    def env(self):
        """The (cached) gymnax CartPole, `envs.make("CartPole-v1")[0]`."""
        return self.env_tasks().env()

    def sample(self, key: jax.Array, num_tasks: int, split: str = "train") -> EnvParams:
        """Sample `num_tasks` tasks of `split` ("train" or "test"): a pure function of `key`.

        Returns:
          A gymnax CartPole `EnvParams` whose every leaf has shape `(num_tasks,)` (float32,
          `max_steps_in_episode` int32): usable with `vmap(..., in_axes=0)` and
          `envs.rollout_tasks`. Inverted tasks have `force_mag < 0`. Works under `jit` with
          `num_tasks` and `split` static. The same numbers as `self.env_tasks().sample`.
        """
        return self.env_tasks().sample(key, num_tasks, split)


def make_cartpole_params(
    *, length, masspole, masscart, gravity, force_mag, max_steps_in_episode=500
) -> EnvParams:
    """CartPole `EnvParams` from the physical fields, with consistent derived fields.

    Arguments broadcast against each other (scalars or arrays with a common leading task axis);
    `total_mass = masscart + masspole` and `polemass_length = masspole * length` are computed
    here, and the remaining fields (`tau`, thresholds) take gymnax's defaults, broadcast to the
    same shape. A negative `force_mag` inverts the force direction. (`make_task_params` for
    any supported environment.)
    """
    import jax.numpy as jnp

    fields = dict(length=length, masspole=masspole, masscart=masscart, gravity=gravity,
                  force_mag=force_mag)
    shape = jnp.broadcast_shapes(*(jnp.shape(v) for v in fields.values()))
    return make_task_params("CartPole-v1", shape, max_steps_in_episode=max_steps_in_episode,
                            **fields)


def is_inverted(tasks) -> jax.Array:
    """Boolean array (task axis shape), True where a task's control is mirrored.

    `tasks` is the `EnvParams` (or a subclass, e.g. `SuiteParams`) of a `TASK_ENVS`
    environment: CartPole `force_mag < 0`, Acrobot `available_torque[-1] < 0`, Pendulum
    `m < 0` (`TaskEnv.is_inverted`).
    """
    return _task_env_of(tasks).is_inverted(tasks)


def force_sign(tasks) -> jax.Array:
    """`+1.0` for normal tasks, `-1.0` for inverted ones (float32, task axis shape)."""
    import jax.numpy as jnp

    return jnp.where(is_inverted(tasks), -1.0, 1.0).astype(jnp.float32)
