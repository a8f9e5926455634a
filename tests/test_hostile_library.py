"""Hostile inputs for the library's public entry points (issue 19), generated with hypothesis.

Every case ends in one of two ways: a ``ValueError`` whose message names the argument (checked
before anything compiles), or a documented result that the test checks:

- SSM layers are arithmetic: a NaN/inf/huge input reaches the outputs up to the next reset and
  is cleared by it (``ssm_jax.contract``), in the sequential and the associative scan;
- policies refuse non-finite observations and params in eager calls; under ``jit`` the affected
  rows' log-probs and values are NaN (``ssm_jax.policy``);
- ``MetaMAML.meta_update`` skips a step whose loss, gradient or new params are not finite
  (``skipped_steps``, state unchanged); ``Adapter.adapt`` rolls such a step back;
- ``ssm_jax.load`` of a missing file raises its documented ``FileNotFoundError``.

Numpy scalar types (and 0-d arrays) in range are accepted wherever Python numbers are, and
stored as Python numbers. Cases are cheap: the hostile ones fail before compiling, and the few
that compute reuse one compiled function per model (fixed shapes).
"""

from __future__ import annotations

import errno
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import envs
import ssm_jax
from adapt import AdaptationConfig, Adapter
from adapt.buffer import ReplayBuffer, buffer_add, buffer_init
from maml import MAMLRL, PPO, MetaMAML
from maml.config import MAMLRLConfig, PPOConfig
from ssm_jax import SSM, DiagonalSSM, MLPPolicy, SelectiveSSM, SSMPolicy


def sweep(n: int):
    """Reproducible hypothesis settings with ``n`` examples per test (or per parameter)."""
    return settings(deadline=None, max_examples=n, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.filter_too_much])


def cheap_params(module, example, seed=0):
    """Params shaped like ``module.init(key, example)``, filled with small normal values from
    numpy: ``jax.eval_shape`` traces the init without compiling or running it (every model
    keeps its state bounded for any real params: tanh-bounded or exp-parameterised)."""
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), example)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype), shapes)


def raises_naming(call, *names: str):
    """``call()`` raises a ValueError whose message contains every one of ``names``."""
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    for name in names:
        assert name in message, f"{name!r} not named in: {message}"


# ============================================================================ field specs
# A spec is the documented domain of one argument:
#   ("int", m)                     an int >= m
#   ("float", lo, hi, strict_lo, strict_hi, allow_inf)   a real number in the range (None: open)
#   ("bool",)                      a bool
#   ("choice", options)            one of the options
#   ("optional", spec)             None or spec
def INT(m=1):
    return ("int", m)


def FLOAT(lo=None, hi=None, strict_lo=False, strict_hi=False, allow_inf=False):
    return ("float", lo, hi, strict_lo, strict_hi, allow_inf)


BOOL = ("bool",)


def CHOICE(*options):
    return ("choice", options)


def OPTIONAL(spec):
    return ("optional", spec)


_JUNK = st.sampled_from(["3", "", None, [1], (1,), {"a": 1}, object(), 1 + 2j, b"1"])


def bad_values(spec) -> st.SearchStrategy:
    """Values outside ``spec``'s domain (never a valid one)."""
    kind = spec[0]
    if kind == "optional":
        return bad_values(spec[1]).filter(lambda v: v is not None)
    if kind == "int":
        m = spec[1]
        return st.one_of(
            st.integers(max_value=m - 1),
            st.integers(min_value=-(2 ** 63), max_value=m - 1).map(np.int64),
            st.floats(allow_nan=True, allow_infinity=True),   # 2.0 is not an int
            st.floats(min_value=m, max_value=1e6).map(np.float32),
            st.booleans(), st.just(np.bool_(True)), _JUNK)
    if kind == "float":
        _, lo, hi, strict_lo, strict_hi, allow_inf = spec
        parts = [st.sampled_from([math.nan, np.float32("nan")]), st.booleans(), st.just(np.bool_(False)),
                 _JUNK.filter(lambda v: v is not None)]
        if not allow_inf:
            parts.append(st.sampled_from([math.inf, -math.inf, np.float64("inf")]))
        if lo is not None:
            parts.append(st.floats(max_value=lo, allow_nan=False, allow_infinity=False).filter(
                lambda v: v <= lo if strict_lo else v < lo))
        if hi is not None:
            parts.append(st.floats(min_value=hi, allow_nan=False, allow_infinity=False).filter(
                lambda v: v >= hi if strict_hi else v > hi))
        return st.one_of(*parts)
    if kind == "bool":
        return st.one_of(st.integers(), st.integers(0, 1).map(np.int64), st.floats(allow_nan=True),
                         st.text(max_size=4), st.none(), st.just([True]))
    if kind == "choice":
        options = spec[1]
        return st.one_of(st.text(max_size=8), st.integers(), st.none(), st.booleans(),
                         st.just(list(options[:1]))).filter(
            lambda v: not any(type(v) is type(o) and v == o for o in options))
    raise AssertionError(spec)


def good_numpy_values(spec) -> st.SearchStrategy:
    """Numpy scalar types (and 0-d arrays) inside ``spec``'s domain."""
    kind = spec[0]
    if kind == "optional":
        return good_numpy_values(spec[1])
    if kind == "int":
        m = spec[1]
        return st.tuples(st.integers(m, m + 6), st.sampled_from([np.int64, np.int32, np.uint16, np.array])
                         ).filter(lambda t: t[0] >= 0 or t[1] is not np.uint16).map(lambda t: t[1](t[0]))
    if kind == "float":
        _, lo, hi, strict_lo, strict_hi, _ = spec
        lo_ = -10.0 if lo is None else lo
        hi_ = lo_ + 10.0 if hi is None else hi

        def inside(v):
            v = float(v)
            return ((lo is None or (v > lo if strict_lo else v >= lo))
                    and (hi is None or (v < hi if strict_hi else v <= hi)))

        return st.tuples(st.floats(lo_, hi_), st.sampled_from([np.float32, np.float64, np.array])
                         ).map(lambda t: t[1](t[0])).filter(inside)
    if kind == "bool":
        return st.sampled_from([np.bool_(True), np.bool_(False), np.array(True)])
    raise AssertionError(spec)


def python_value(v):
    """The Python number a validated numpy value is stored as."""
    return np.asarray(v).item()


# ============================================================================ configs
CONFIG_FIELDS = {
    "MAMLRLConfig": (MAMLRLConfig, {
        "inner_lr": FLOAT(0.0), "outer_lr": FLOAT(0.0, strict_lo=True),
        "outer_lr_decay_steps": OPTIONAL(INT(1)), "num_inner_steps": INT(0), "first_order": BOOL,
        "learn_inner_lr": BOOL, "grad_clip": OPTIONAL(FLOAT(0.0, strict_lo=True)),
        "support_envs": INT(1), "support_steps": INT(1), "query_envs": INT(1), "query_steps": INT(1),
        "gamma": FLOAT(0.0, 1.0), "gae_lambda": FLOAT(0.0, 1.0), "reward_scale": FLOAT(0.0, strict_lo=True),
        "normalize_advantages": BOOL, "value_coef": FLOAT(0.0), "entropy_coef": FLOAT(0.0),
        "clip_eps": FLOAT(0.0, strict_lo=True), "num_outer_epochs": INT(1),
        "baseline": CHOICE("value", "linear"), "obs_mode": CHOICE("full", "partial"),
        "carry_across_episodes": BOOL, "remat_inner": BOOL}),
    "PPOConfig": (PPOConfig, {
        # num_minibatches=1 in the base config: any num_tasks/num_envs divide
        "num_tasks": INT(1), "num_envs": INT(1), "num_steps": INT(1), "update_epochs": INT(1),
        "lr": FLOAT(0.0, strict_lo=True), "anneal_lr": BOOL, "total_iterations": INT(1),
        "gamma": FLOAT(0.0, 1.0), "gae_lambda": FLOAT(0.0, 1.0), "clip_eps": FLOAT(0.0, strict_lo=True),
        "value_coef": FLOAT(0.0), "entropy_coef": FLOAT(0.0), "grad_clip": FLOAT(0.0, strict_lo=True),
        "reward_scale": FLOAT(0.0, strict_lo=True), "carry_across_episodes": BOOL}),
    "AdaptationConfig": (AdaptationConfig, {
        "lr": FLOAT(0.0, strict_lo=True), "max_steps_per_call": INT(1),
        "optimizer": CHOICE("sgd", "momentum", "adam", "adamw", "rmsprop", "adagrad"),
        "momentum": FLOAT(0.0, 1.0, strict_hi=True), "grad_clip": OPTIONAL(FLOAT(0.0, strict_lo=True)),
        "divergence_threshold": OPTIONAL(FLOAT(allow_inf=True)), "monotone": BOOL,
        "replay_capacity": INT(1), "replay_ratio": FLOAT(0.0, 1.0, strict_hi=True),
        "store_adapt_batches": BOOL}),
    "MetaMAML": (None, {
        "inner_lr": FLOAT(0.0), "outer_lr": FLOAT(0.0, strict_lo=True), "num_inner_steps": INT(0),
        "first_order": BOOL, "grad_clip": OPTIONAL(FLOAT(0.0, strict_lo=True)),
        "learn_inner_lr": BOOL, "remat_inner": BOOL}),
    "CartPoleTasks": (envs.CartPoleTasks, {
        "inverted_fraction": FLOAT(0.0, 1.0), "max_steps_in_episode": INT(1)}),
    "SSM": (None, {"state_dim": INT(1), "input_dim": INT(1), "output_dim": INT(1), "hidden_dim": INT(1),
                   "max_radius": FLOAT(0.0, 1.0, strict_lo=True, strict_hi=True), "chunk_size": INT(1)}),
    "DiagonalSSM": (None, {"state_dim": INT(1), "input_dim": INT(1), "output_dim": INT(1),
                           "hidden_dim": INT(1), "parallel": BOOL,
                           "dt_min": FLOAT(0.0, 0.1, strict_lo=True)}),  # dt_max = 0.1 by default
    "SelectiveSSM": (None, {"state_dim": INT(1), "input_dim": INT(1), "output_dim": INT(1),
                            "hidden_dim": INT(1), "parallel": BOOL,
                            "dt_max": FLOAT(1e-3)}),  # dt_min = 1e-3 by default
    "SSMPolicy": (None, {"obs_dim": INT(1), "action_dim": INT(1), "state_dim": INT(1), "hidden_dim": INT(1),
                         "num_layers": INT(1), "core": CHOICE("ssm", "diagonal", "selective"),
                         "discrete": BOOL, "init_log_std": FLOAT(), "chunk_size": INT(1)}),
    "MLPPolicy": (None, {"obs_dim": INT(1), "action_dim": INT(1), "hidden_dim": INT(1), "discrete": BOOL,
                         "init_log_std": FLOAT()}),
}

_DIMS = dict(state_dim=4, input_dim=3, output_dim=2, hidden_dim=8)


def _linear(params, x):
    return x @ params["w"] + params["b"]


def build(owner: str, field: str, value):
    """The entry point of ``owner`` with ``field=value`` (other fields at valid defaults)."""
    if owner == "PPOConfig":
        return PPOConfig(num_minibatches=1, **{field: value})
    if owner == "MetaMAML":
        return MetaMAML(_linear, **{field: value}).config
    if owner in ("SSM", "DiagonalSSM", "SelectiveSSM"):
        return {"SSM": SSM, "DiagonalSSM": DiagonalSSM, "SelectiveSSM": SelectiveSSM}[owner](**{**_DIMS, field: value})
    if owner == "SSMPolicy":
        return SSMPolicy(**{"obs_dim": 4, "action_dim": 2, field: value})
    if owner == "MLPPolicy":
        return MLPPolicy(**{"obs_dim": 4, "action_dim": 2, field: value})
    return CONFIG_FIELDS[owner][0](**{field: value})


@pytest.mark.parametrize("owner", sorted(CONFIG_FIELDS))
@sweep(16)
@given(data=st.data())
def test_every_field_refuses_bad_values_naming_the_field(owner, data):
    field, spec = data.draw(st.sampled_from(sorted(CONFIG_FIELDS[owner][1].items())), label="field")
    value = data.draw(bad_values(spec), label="value")
    raises_naming(lambda: build(owner, field, value), field)


_NUMERIC = {owner: {f: s for f, s in fields.items()
                    if (s[1] if s[0] == "optional" else s)[0] in ("int", "float", "bool")}
            for owner, (_, fields) in CONFIG_FIELDS.items()}


@pytest.mark.parametrize("owner", sorted(CONFIG_FIELDS))
@sweep(6)
@given(data=st.data())
def test_numpy_scalars_in_range_are_accepted_as_python_values(owner, data):
    field, spec = data.draw(st.sampled_from(sorted(_NUMERIC[owner].items())), label="field")
    value = data.draw(good_numpy_values(spec), label="value")
    built = build(owner, field, value)
    stored = getattr(built, field)
    assert stored == python_value(value)
    if owner.endswith("Config") or owner in ("MetaMAML", "CartPoleTasks"):  # configs store Python values
        assert type(stored) is type(python_value(value))


@sweep(12)
@given(bound=st.sampled_from(["length", "masspole", "masscart", "gravity", "force_mag"]),
       value=st.one_of(
           st.tuples(st.floats(allow_nan=True), st.floats(allow_nan=True)).filter(
               lambda t: not (0 < t[0] <= t[1] < math.inf)),
           st.sampled_from([(1.0,), (1.0, 2.0, 3.0), 1.0, "0.1,0.2", None, ("0.1", "0.2"), (True, 2.0)])))
def test_cartpole_ranges_refuse_bad_pairs_naming_the_range(bound, value):
    raises_naming(lambda: envs.CartPoleTasks(**{bound: value}), bound)


@sweep(8)
@given(lo=st.floats(0.05, 0.4), width=st.floats(0.0, 0.3),
       cast=st.sampled_from([np.float32, np.float64, np.array]))
def test_cartpole_ranges_accept_numpy_bounds(lo, width, cast):
    tasks = envs.CartPoleTasks(length=(cast(lo), cast(lo + width)))
    assert tasks.length == (python_value(cast(lo)), python_value(cast(lo + width)))
    assert all(type(v) is float for v in tasks.length)


# ============================================================================ SSM layers
_X = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 3)), jnp.float32)


@pytest.fixture(scope="module")
def layers():
    """One model (and its params) per layer kind; params are shared by the two scan paths."""
    out = {}
    for name, cls in (("ssm", SSM), ("diagonal", DiagonalSSM), ("selective", SelectiveSSM)):
        model = cls(**_DIMS)
        out[name] = (model, cheap_params(model, _X[:, :2]))
    return out


def _bad_array_for(expected_shape, name_hint):
    """Arrays (or non-arrays) that do not match ``expected_shape`` (None: any size >= 1) or are
    not real: wrong rank, a wrong fixed size, complex or text dtypes, Python junk."""
    rank = len(expected_shape)

    def wrong_shape(shape):
        if len(shape) != rank:
            return True
        return any(e is not None and s != e for s, e in zip(shape, expected_shape))

    shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple).filter(wrong_shape)
    real_bad_shape = st.tuples(shapes, st.sampled_from([np.float32, np.int32, np.bool_])).map(
        lambda t: np.zeros(t[0], t[1]))
    good_shape = tuple(2 if e is None else e for e in expected_shape)
    bad_dtype = st.sampled_from([np.complex64, np.complex128, "U2"]).map(lambda d: np.zeros(good_shape, d))
    return st.one_of(real_bad_shape, bad_dtype, st.sampled_from(["abc", None, {"x": 1}, object()]))


@pytest.mark.parametrize("kind", ["ssm", "diagonal", "selective"])
@sweep(10)
@given(data=st.data())
def test_layer_sequence_call_refuses_bad_xs_resets_and_carry(layers, kind, data):
    model, params = layers[kind]
    arg = data.draw(st.sampled_from(["xs", "resets", "carry"]), label="argument")
    if arg == "xs":
        xs = data.draw(_bad_array_for((None, None, 3), "xs"), label="xs")
        raises_naming(lambda: model.apply(params, xs), "xs")
    elif arg == "resets":
        resets = data.draw(_bad_array_for((2, 6), "resets").filter(lambda r: r is not None), label="resets")
        raises_naming(lambda: model.apply(params, _X, resets=resets), "resets")
    else:
        good = model.initialize_carry(2)
        bad = data.draw(st.one_of(
            st.sampled_from([(good, good), {"h": good}, [good], "abc"]),
            st.tuples(st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple),
                      st.sampled_from([good.dtype, np.int32, np.float16, np.bool_])).filter(
                lambda t: t[0] != good.shape or t[1] != good.dtype).map(lambda t: jnp.zeros(t[0], t[1])),
            st.just(jnp.zeros(good.shape, jnp.complex64 if good.dtype == jnp.float32 else jnp.float32))),
            label="carry")
        raises_naming(lambda: model.apply(params, _X, carry=bad), "carry")


@pytest.mark.parametrize("kind", ["ssm", "diagonal", "selective"])
@sweep(6)
@given(data=st.data())
def test_layer_step_refuses_bad_x_reset_and_carry(layers, kind, data):
    model, params = layers[kind]
    carry = model.initialize_carry(2)
    arg = data.draw(st.sampled_from(["x", "reset", "carry"]), label="argument")
    if arg == "x":
        x = data.draw(_bad_array_for((None, 3), "x").filter(
            lambda a: not (isinstance(a, np.ndarray) and a.ndim == 2 and a.shape[-1] == 3
                           and a.dtype.kind in "biuf")), label="x")
        raises_naming(lambda: model.apply(params, x, carry, method="step"), "x")
    elif arg == "reset":
        reset = data.draw(_bad_array_for((2,), "reset").filter(lambda r: r is not None), label="reset")
        raises_naming(lambda: model.apply(params, _X[:, 0], carry, reset, method="step"), "reset")
    else:
        bad = data.draw(st.sampled_from([carry[:1], jnp.zeros(carry.shape, jnp.int32), (carry,), "abc",
                                         jnp.zeros((2, 9), carry.dtype)]), label="carry")
        raises_naming(lambda: model.apply(params, _X[:, 0], bad, method="step"), "carry")


@pytest.fixture(scope="module")
def jitted_layers(layers):
    """A jitted sequence call per (layer, scan path): compiled once, reused by every example."""
    out = {}
    for kind, (model, params) in layers.items():
        paths = [False] if kind == "ssm" else [False, True]
        for parallel in paths:
            m = model if kind == "ssm" else type(model)(**_DIMS, parallel=parallel)
            out[kind, parallel] = (jax.jit(lambda p, xs, r, m=m: m.apply(p, xs, resets=r)), params)
    return out


@pytest.mark.parametrize("kind, parallel", [("ssm", False), ("diagonal", True), ("selective", True),
                                            ("selective", False)])
@sweep(6)
@given(bad=st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -1e38]), row=st.integers(0, 1),
       t_bad=st.integers(0, 2), t_reset=st.integers(3, 5))
def test_non_finite_input_is_cleared_by_the_next_reset(jitted_layers, kind, parallel, bad, row, t_bad,
                                                       t_reset):
    """Documented: a non-finite (or huge) input reaches the outputs until the next reset of its
    row, and the outputs from the reset on equal those of a clean input."""
    fn, params = jitted_layers[kind, parallel]
    resets = jnp.zeros((2, 6), bool).at[:, t_reset].set(True)
    xs = _X.at[row, t_bad].set(bad)
    ys, _ = fn(params, xs, resets)
    clean, _ = fn(params, _X, resets)
    after = np.asarray(ys[:, t_reset:])
    assert np.isfinite(after).all()
    np.testing.assert_allclose(after, np.asarray(clean[:, t_reset:]), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(ys[1 - row]), np.asarray(clean[1 - row]))  # rows independent


# ============================================================================ policies
_OBS = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4)), jnp.float32)


@pytest.fixture(scope="module")
def policies():
    out = {}
    for name, policy in (("ssm", SSMPolicy(obs_dim=4, action_dim=2, state_dim=4, hidden_dim=8)),
                         ("mlp", MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=8))):
        out[name] = (policy, cheap_params(policy, jnp.zeros((1, 1, 4))))
    return out


def _poison(tree, where, value):
    """``tree`` with entry ``where`` (a flat index into its leaves' concatenation) set to ``value``."""
    leaves, treedef = jax.tree.flatten(tree)
    sizes = np.cumsum([leaf.size for leaf in leaves])
    i = int(np.searchsorted(sizes, where % int(sizes[-1]), side="right"))
    offset = where % int(sizes[-1]) - (int(sizes[i - 1]) if i else 0)
    leaves[i] = leaves[i].reshape(-1).at[offset].set(value).reshape(leaves[i].shape)
    return jax.tree.unflatten(treedef, leaves)


@pytest.mark.parametrize("kind", ["ssm", "mlp"])
@sweep(8)
@given(data=st.data())
def test_policy_refuses_bad_obs_and_non_finite_obs_or_params_eagerly(policies, kind, data):
    policy, params = policies[kind]
    carry = policy.initialize_carry(3)
    case = data.draw(st.sampled_from(["obs", "obs_seq", "nan_obs", "nan_obs_seq", "nan_params"]), label="case")
    bad = st.sampled_from([np.nan, np.inf, -np.inf])
    if case == "obs":
        obs = data.draw(_bad_array_for((None, 4), "obs").filter(
            lambda a: not (isinstance(a, np.ndarray) and a.ndim == 2 and a.shape[-1] == 4
                           and a.dtype.kind in "biuf")), label="obs")
        raises_naming(lambda: policy.apply(params, obs, carry, method="step"), "obs")
    elif case == "obs_seq":
        obs_seq = data.draw(_bad_array_for((None, None, 4), "obs_seq"), label="obs_seq")
        raises_naming(lambda: policy.apply(params, obs_seq), "obs_seq")
    elif case == "nan_obs":
        obs = _OBS.at[data.draw(st.integers(0, 2)), data.draw(st.integers(0, 3))].set(data.draw(bad))
        raises_naming(lambda: policy.apply(params, obs, carry, method="step"), "obs", "finite")
    elif case == "nan_obs_seq":
        obs_seq = jnp.stack([_OBS, _OBS], 1).at[data.draw(st.integers(0, 2)), 1, 0].set(data.draw(bad))
        raises_naming(lambda: policy.apply(params, obs_seq), "obs_seq", "finite")
    else:
        poisoned = _poison(params, data.draw(st.integers(0, 10_000)), data.draw(bad))
        raises_naming(lambda: policy.apply(poisoned, _OBS, carry, method="step"), "params", "finite")


@pytest.fixture(scope="module")
def jitted_policy_step(policies):
    policy, _ = policies["ssm"]
    return jax.jit(lambda p, obs, c, k: _step_outputs(policy, p, obs, c, k))


def _step_outputs(policy, params, obs, carry, key):
    out, _ = policy.apply(params, obs, carry, method="step")
    action = out.dist.sample(key)
    return action, out.dist.log_prob(action), out.value


@sweep(8)
@given(row=st.integers(0, 2), col=st.integers(0, 3))
def test_under_jit_a_nan_observation_gives_nan_log_prob_and_value_in_its_row(
        policies, jitted_policy_step, row, col):
    """Documented (ssm_jax.policy): values cannot be checked under jit; a NaN observation's
    row gets a NaN log-prob and value (so a training step on it is skipped by the non-finite
    guard), the other rows are exactly those of the clean observations."""
    policy, params = policies["ssm"]
    carry = policy.initialize_carry(3)
    key = jax.random.PRNGKey(3)
    _, logp, value = jitted_policy_step(params, _OBS.at[row, col].set(jnp.nan), carry, key)
    _, clean_logp, clean_value = jitted_policy_step(params, _OBS, carry, key)
    assert np.isnan(logp[row]) and np.isnan(value[row])
    others = [r for r in range(3) if r != row]
    np.testing.assert_array_equal(np.asarray(logp)[others], np.asarray(clean_logp)[others])
    np.testing.assert_array_equal(np.asarray(value)[others], np.asarray(clean_value)[others])


# ============================================================================ MetaMAML
_P = {"w": jnp.full((2, 1), 0.5, jnp.float32), "b": jnp.zeros((1,), jnp.float32)}
_SX = jnp.asarray(np.random.default_rng(2).normal(size=(5, 2)), jnp.float32)
_SY = jnp.sin(_SX[:, :1])
_TASKS = {"support_x": jnp.stack([_SX] * 3), "support_y": jnp.stack([_SY] * 3),
          "query_x": jnp.stack([_SX] * 3), "query_y": jnp.stack([_SY] * 3)}


@pytest.fixture(scope="module")
def meta():
    maml = MetaMAML(_linear, inner_lr=0.1, outer_lr=0.01, num_inner_steps=1)
    return maml, maml.init(_P)


#: params an entry point refuses whatever the model: not a non-empty pytree of finite float arrays
_BAD_PARAM_VALUES = st.sampled_from([
    "params", None, 3.0, [], {}, {"w": _P["w"], "b": "0"},
    {"w": _P["w"].astype(jnp.int32), "b": _P["b"]}, {"w": _P["w"], "b": jnp.zeros((1,), jnp.complex64)},
    {"w": _P["w"].at[0, 0].set(jnp.nan), "b": _P["b"]}, {"w": _P["w"], "b": _P["b"].at[0].set(jnp.inf)},
])
#: and params that do not fit the model (refused where the model meets its inputs)
_BAD_PARAMS = st.sampled_from([
    "params", None, 3.0, [], {}, {"w": _P["w"]}, {"w": _P["w"], "b": "0"},
    {"w": _P["w"].astype(jnp.int32), "b": _P["b"]}, {"w": _P["w"], "b": jnp.zeros((1,), jnp.complex64)},
    {"w": jnp.zeros((3, 1)), "b": _P["b"]}, {"w": _P["w"].at[0, 0].set(jnp.nan), "b": _P["b"]},
    {"w": _P["w"], "b": _P["b"].at[0].set(jnp.inf)}, (_P["w"], _P["b"]),
])


@sweep(14)
@given(data=st.data())
def test_meta_maml_inner_and_outer_loop_refuse_bad_arguments(meta, data):
    maml, state = meta
    case = data.draw(st.sampled_from(["params", "support_x", "support_y", "query_x", "query_y",
                                      "nan_support", "inner_lr", "adapted_params"]), label="case")
    if case in ("params", "adapted_params"):
        bad = data.draw(_BAD_PARAMS, label="params")
        if case == "params":
            if bad is None:
                return raises_naming(lambda: maml.inner_loop(bad, _SX, _SY), "params")
            return raises_naming(lambda: maml.adapt(bad, task_data=_SX, task_labels=_SY), "params")
        return raises_naming(lambda: maml.outer_loop(bad, _SX, _SY), "adapted_params")
    if case == "inner_lr":
        bad = data.draw(st.sampled_from([0.1, "0.1", {"w": 0.1}, [0.1, 0.1],
                                         {"w": jnp.ones((3, 3)), "b": jnp.ones(1)}]), label="inner_lr")
        return raises_naming(lambda: maml.inner_loop(_P, _SX, _SY, inner_lr=bad), "inner_lr")
    if case == "nan_support":
        which = data.draw(st.sampled_from(["support_x", "support_y"]))
        value = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        args = {"support_x": _SX, "support_y": _SY}
        args[which] = args[which].at[data.draw(st.integers(0, 4)), 0].set(value)
        return raises_naming(lambda: maml.inner_loop(state, **args), which, "finite")
    x_shape = (5, 2) if case.endswith("_x") else (5, 1)
    bad = data.draw(st.one_of(
        _bad_array_for(x_shape, case),
        st.lists(st.integers(0, 5), min_size=1, max_size=3).map(tuple).filter(
            lambda s: s != x_shape).map(lambda s: np.zeros(s, np.float32))), label=case)
    args = {"support_x": _SX, "support_y": _SY} if case.startswith("support") else {"query_x": _SX, "query_y": _SY}
    args[case] = bad
    if case.startswith("support"):
        raises_naming(lambda: maml.inner_loop(state, **args), case)
    else:
        raises_naming(lambda: maml.outer_loop(_P, **args), case)


@sweep(10)
@given(data=st.data())
def test_meta_maml_meta_update_refuses_bad_tasks_and_states(meta, data):
    maml, state = meta
    case = data.draw(st.sampled_from(["key", "array", "dtype", "tasks", "state"]), label="case")
    if case == "tasks":
        bad = data.draw(st.sampled_from([[1, 2], "tasks", {"support_x": _TASKS["support_x"]},
                                         {k: v[:0] for k, v in _TASKS.items()},
                                         dict(_TASKS, query_y=_TASKS["query_y"][:2]),
                                         dict(_TASKS, support_x=_TASKS["support_x"][0])]), label="tasks")
        return raises_naming(lambda: maml.meta_update(state, bad), "tasks")
    if case == "state":
        bad = data.draw(st.sampled_from([_P, None, "state", state.params]), label="state")
        return raises_naming(lambda: maml.meta_update(bad, _TASKS), "state")
    key = data.draw(st.sampled_from(sorted(_TASKS)), label="key")
    if case == "array":
        shape = data.draw(st.lists(st.integers(1, 4), min_size=2, max_size=4).map(tuple).filter(
            lambda s: s[0] == 3 and s[1:] != _TASKS[key].shape[1:]), label="shape")
        bad = dict(_TASKS, **{key: np.zeros(shape, np.float32)})
    else:
        bad = dict(_TASKS, **{key: np.asarray(_TASKS[key]).astype(
            data.draw(st.sampled_from([np.complex64, "U1"]), label="dtype"))})
    raises_naming(lambda: maml.meta_update(state, bad), f"tasks[{key!r}]")


@sweep(6)
@given(key=st.sampled_from(sorted(_TASKS)), task=st.integers(0, 2), bad=st.sampled_from([np.nan, np.inf]))
def test_meta_update_on_a_non_finite_task_is_skipped(meta, key, task, bad):
    """Documented (maml.core.meta_update): the step is skipped, the state returned unchanged and
    ``skipped_steps`` is 1."""
    maml, state = meta
    tasks = dict(_TASKS, **{key: _TASKS[key].at[task, 0, 0].set(bad)})
    new, metrics = maml.meta_update(state, tasks)
    assert int(metrics["skipped_steps"]) == 1
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(state)):
        np.testing.assert_array_equal(a, b)


# ============================================================================ Adapter
@pytest.fixture(scope="module")
def adapter_parts():
    return {"model": _linear, "cfg": AdaptationConfig(lr=0.05, max_steps_per_call=2)}


@sweep(14)
@given(data=st.data())
def test_adapter_constructor_refuses_bad_arguments(adapter_parts, data):
    model, cfg = adapter_parts["model"], adapter_parts["cfg"]
    case = data.draw(st.sampled_from(["params", "target", "cfg", "strategy", "key", "meta"]), label="case")
    if case == "params":
        bad = data.draw(_BAD_PARAM_VALUES, label="params")
        return raises_naming(lambda: Adapter(model, cfg, "online", params=bad), "params")
    if case == "target":
        bad = data.draw(st.sampled_from([3, "model", None, [model], 1.5]), label="target")
        return raises_naming(lambda: Adapter(bad, cfg, "online", params=_P), "target")
    if case == "cfg":
        bad = data.draw(st.sampled_from([{"lr": 0.1}, "cfg", 0.1, MAMLRLConfig()]), label="cfg")
        return raises_naming(lambda: Adapter(model, bad, "online", params=_P), "cfg")
    if case == "strategy":
        bad = data.draw(bad_values(CHOICE("none", "online", "meta", "hybrid")), label="strategy")
        return raises_naming(lambda: Adapter(model, cfg, bad, params=_P), "strategy")
    if case == "key":
        bad = data.draw(st.one_of(st.sampled_from(["k", 1.5, None, [0], -1, 2 ** 32, True, np.float32(1.0),
                                                   jnp.zeros(3, jnp.uint32)]),
                                  st.integers(max_value=-1), st.integers(min_value=2 ** 32)), label="key")
        return raises_naming(lambda: Adapter(model, cfg, "hybrid", params=_P, key=bad), "key")
    bad = data.draw(st.sampled_from([None, "maml", cfg]), label="meta")
    raises_naming(lambda: Adapter(model, cfg, "meta", params=_P, meta=bad), "meta")


@pytest.fixture(scope="module")
def online_adapter(adapter_parts):
    return Adapter(adapter_parts["model"], adapter_parts["cfg"], "online", params=_P)


@sweep(12)
@given(data=st.data())
def test_adapter_adapt_refuses_bad_batches(online_adapter, data):
    field = data.draw(st.sampled_from(["observations", "targets", "batch"]), label="field")
    if field == "batch":
        bad = data.draw(st.sampled_from([None, (_SX, _SY), {"observations": _SX}, {"targets": _SY},
                                         {"obs": _SX, "targets": _SY}, "batch"]), label="batch")
        return raises_naming(lambda: online_adapter.adapt(bad), "batch")
    shape = (5, 2) if field == "observations" else (5, 1)
    bad = data.draw(st.one_of(
        _bad_array_for(shape, field),
        st.lists(st.integers(0, 6), min_size=1, max_size=3).map(tuple).filter(lambda s: s != shape).map(
            lambda s: np.zeros(s, np.float32))), label=field)
    batch = {"observations": _SX, "targets": _SY, field: bad}
    before = online_adapter.params
    raises_naming(lambda: online_adapter.adapt(batch), field)
    assert online_adapter.params is before


@sweep(6)
@given(field=st.sampled_from(["observations", "targets"]), row=st.integers(0, 4),
       bad=st.sampled_from([np.nan, np.inf, -np.inf, 1e38]))
def test_adapter_rolls_back_a_non_finite_step_and_keeps_params_finite(adapter_parts, field, row, bad):
    """Documented (adapt.core): a step whose loss, gradient or new params are not finite is
    rolled back; params stay exactly as they were."""
    adapter = Adapter(adapter_parts["model"], adapter_parts["cfg"], "online", params=_P)
    batch = {"observations": _SX, "targets": _SY}
    batch[field] = batch[field].at[row, 0].set(bad)
    info = adapter.adapt(batch)
    assert info["rolled_back"] and info["steps"] == 0
    for a, b in zip(jax.tree.leaves(adapter.params), jax.tree.leaves(_P)):
        np.testing.assert_array_equal(a, b)


# ============================================================================ ReplayBuffer
@sweep(10)
@given(capacity=bad_values(INT(1)))
def test_replay_buffer_refuses_bad_capacities(capacity):
    raises_naming(lambda: buffer_init({"x": jnp.zeros(3)}, capacity), "capacity")


@sweep(4)
@given(capacity=good_numpy_values(INT(1)))
def test_replay_buffer_accepts_numpy_capacities(capacity):
    buf = buffer_init({"x": jnp.zeros(3)}, capacity)
    assert buf.capacity == python_value(capacity) and buf.data["x"].shape == (python_value(capacity), 3)


def test_replay_buffer_built_directly_with_no_slot_is_refused():
    raises_naming(lambda: ReplayBuffer(data={"x": jnp.zeros((0, 3))}, insert_pos=jnp.zeros((), jnp.int32),
                                       size=jnp.zeros((), jnp.int32)), "capacity")


@sweep(6)
@given(items=st.sampled_from([{"y": jnp.zeros((2, 3))}, {"x": jnp.zeros((2, 4))}, {"x": jnp.zeros(3)},
                              [jnp.zeros((2, 3))], {"x": jnp.zeros((2, 3)), "y": jnp.zeros((2, 3))}]))
def test_replay_buffer_add_refuses_items_of_another_structure(items):
    raises_naming(lambda: buffer_add(buffer_init({"x": jnp.zeros(3)}, 4), items), "items")


# ============================================================================ envs
@pytest.fixture(scope="module")
def cartpole_policy():
    policy = MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=8)
    return policy, cheap_params(policy, jnp.zeros((1, 1, 4)))


@sweep(8)
@given(name=st.one_of(st.text(max_size=12), st.sampled_from([None, 3, "cartpole-v1", "CartPole-v0"])).filter(
    lambda n: n not in envs.ENV_NAMES))
def test_make_refuses_unknown_names(name):
    raises_naming(lambda: envs.make(name), "environment name")


_KEY = jax.random.PRNGKey(5)


@sweep(16)
@given(data=st.data())
def test_rollout_refuses_bad_arguments_before_compiling(cartpole_policy, data):
    policy, params = cartpole_policy
    task = envs.make("CartPole-v1")[1]
    case = data.draw(st.sampled_from(["num_envs", "num_steps", "unroll", "obs_mode", "policy", "task",
                                      "nan_task", "nan_params", "env", "flags"]), label="case")
    kw = dict(num_envs=2, num_steps=3)
    if case in ("num_envs", "num_steps", "unroll"):
        kw[case] = data.draw(bad_values(INT(1)), label=case)
        return raises_naming(lambda: envs.rollout(_KEY, policy, params, task, **kw), case)
    if case == "obs_mode":
        kw["obs_mode"] = data.draw(bad_values(CHOICE("full", "partial")), label="obs_mode")
        return raises_naming(lambda: envs.rollout(_KEY, policy, params, task, **kw), "obs_mode")
    if case == "flags":
        flag = data.draw(st.sampled_from(["deterministic", "carry_across_episodes"]))
        kw[flag] = data.draw(bad_values(BOOL), label=flag)
        return raises_naming(lambda: envs.rollout(_KEY, policy, params, task, **kw), flag)
    if case == "policy":
        bad, named = data.draw(st.sampled_from([
            (MLPPolicy(obs_dim=4, action_dim=3), "action_dim"), (MLPPolicy(obs_dim=4, action_dim=1), "action_dim"),
            (MLPPolicy(obs_dim=4, action_dim=2, discrete=False), "action_dim"),
            (SSMPolicy(obs_dim=4, action_dim=5), "action_dim"), (MLPPolicy(obs_dim=3, action_dim=2), "obs_dim"),
            (SSMPolicy(obs_dim=2, action_dim=2), "obs_dim"), ("policy", "policy"), (_linear, "policy")]),
            label="policy")
        return raises_naming(lambda: envs.rollout(_KEY, bad, params, task, **kw), named)
    if case == "task":
        field = data.draw(st.sampled_from(["length", "masspole", "force_mag", "gravity"]), label="field")
        bad = task.replace(**{field: jnp.ones(data.draw(st.integers(1, 4)))})
        return raises_naming(lambda: envs.rollout(_KEY, policy, params, bad, **kw), "task", field)
    if case == "nan_task":
        field = data.draw(st.sampled_from(["length", "masspole", "force_mag", "gravity", "tau"]), label="field")
        bad = task.replace(**{field: jnp.asarray(data.draw(st.sampled_from([np.nan, np.inf])), jnp.float32)})
        return raises_naming(lambda: envs.rollout(_KEY, policy, params, bad, **kw), "task", "finite")
    if case == "nan_params":
        poisoned = _poison(params, data.draw(st.integers(0, 10_000)), data.draw(st.sampled_from([np.nan, -np.inf])))
        return raises_naming(lambda: envs.rollout(_KEY, policy, poisoned, task, **kw), "params", "finite")
    bad = data.draw(st.sampled_from(["CartPole-v1", 3, object()]), label="env")
    raises_naming(lambda: envs.rollout(_KEY, policy, params, task, env=bad, **kw), "env")


@sweep(6)
@given(case=st.sampled_from(["unbatched", "nan", "params_per_task", "action_dim"]))
def test_rollout_tasks_refuses_bad_arguments(cartpole_policy, case):
    policy, params = cartpole_policy
    tasks = jax.tree.map(lambda x: jnp.stack([x, x]), envs.make()[1])  # two tasks, no sampling compile
    kw = dict(num_envs=2, num_steps=3)
    if case == "unbatched":
        raises_naming(lambda: envs.rollout_tasks(_KEY, policy, params, envs.make()[1], **kw), "tasks")
    elif case == "nan":
        raises_naming(lambda: envs.rollout_tasks(_KEY, policy, params, tasks.replace(
            gravity=tasks.gravity.at[1].set(jnp.nan)), **kw), "tasks", "finite")
    elif case == "params_per_task":
        raises_naming(lambda: envs.rollout_tasks(_KEY, policy, params, tasks, params_per_task=True, **kw),
                      "params_per_task")
    else:
        raises_naming(lambda: envs.rollout_tasks(_KEY, MLPPolicy(obs_dim=4, action_dim=4), params, tasks, **kw),
                      "policy.action_dim is 4", "Discrete(2)")


@sweep(8)
@given(case=st.sampled_from(["num_tasks", "split"]), data=st.data())
def test_task_sampling_refuses_bad_arguments(case, data):
    if case == "num_tasks":
        n = data.draw(bad_values(INT(1)), label="num_tasks")
        raises_naming(lambda: envs.CartPoleTasks().sample(_KEY, n), "num_tasks")
    else:
        split = data.draw(bad_values(CHOICE("train", "test")), label="split")
        raises_naming(lambda: envs.CartPoleTasks().sample(_KEY, 2, split), "split")


@pytest.mark.parametrize("algo", ["MAMLRL", "PPO"])
@sweep(5)
@given(data=st.data())
def test_trainers_refuse_policies_and_configs_that_do_not_fit(algo, data):
    cls, config_cls = (MAMLRL, MAMLRLConfig) if algo == "MAMLRL" else (PPO, PPOConfig)
    case = data.draw(st.sampled_from(["policy", "config"]), label="case")
    if case == "config":
        bad = data.draw(st.sampled_from([{"inner_lr": 0.1}, "config", (MAMLRLConfig if algo == "PPO" else PPOConfig)()]),
                        label="config")
        return raises_naming(lambda: cls(MLPPolicy(obs_dim=4, action_dim=2), bad), "config")
    bad, named = data.draw(st.sampled_from([
        (MLPPolicy(obs_dim=4, action_dim=3), "action_dim"), (MLPPolicy(obs_dim=4, action_dim=2, discrete=False),
                                                              "discrete"),
        (MLPPolicy(obs_dim=5, action_dim=2), "obs_dim"), ("policy", "policy")]), label="policy")
    raises_naming(lambda: cls(bad, config_cls()), named)


# ============================================================================ save / load
@sweep(10)
@given(data=st.data())
def test_save_refuses_bad_paths_and_params(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("save")
    (root / "file").write_bytes(b"x")
    case = data.draw(st.sampled_from(["path_type", "directory", "under_file", "params"]), label="case")
    if case == "path_type":
        bad = data.draw(st.sampled_from([3, None, 1.5, ["a"], {"p": 1}]), label="path")
        raises_naming(lambda: ssm_jax.save(bad, _P), "path")
    elif case == "directory":
        bad = data.draw(st.sampled_from([str(root), str(root) + os.sep, "", str(root / "sub") + os.sep]))
        raises_naming(lambda: ssm_jax.save(bad, _P), "path")
    elif case == "under_file":
        rest = data.draw(st.sampled_from(["p.msgpack", "a/b/p.msgpack"]))
        bad = root / "file" / rest
        raises_naming(lambda: ssm_jax.save(bad, _P), str(bad), f"parent {str(root / 'file')!r} is not a directory")
    else:
        bad = data.draw(st.sampled_from([{"w": "abc"}, {"w": object()}, {"w": [1, "a"]}]), label="params")
        raises_naming(lambda: ssm_jax.save(root / "p.msgpack", bad), "params")
    assert sorted(p.name for p in root.iterdir()) == ["file"]  # nothing written, no temporary file


@sweep(6)
@given(content=st.binary(max_size=40))
def test_load_refuses_files_that_are_not_parameter_files(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("load") / "bad.msgpack"
    path.write_bytes(content + b"\xc1")  # 0xc1 is never valid msgpack
    raises_naming(lambda: ssm_jax.load(path), "path")


def test_load_of_a_missing_file_raises_its_documented_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="path: no parameter file"):
        ssm_jax.load(tmp_path / "absent.msgpack")
    raises_naming(lambda: ssm_jax.load(3), "path")
