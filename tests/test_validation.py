"""The shared argument checks (ssm_jax.validation) every config and entry point uses."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import envs
from adapt.buffer import buffer_init, buffer_sample
from adapt.core import adapt_steps
from maml.sinusoid import sample_sinusoid_tasks
from ssm_jax import SSM, DiagonalSSM, MLPPolicy, SelectiveSSM, SSMPolicy
from ssm_jax.validation import check_float, check_int


@pytest.mark.parametrize("value, kwargs, message", [
    (True, {}, "x must be a real number"),
    ("0.1", {}, "x must be a real number"),
    (math.nan, {"allow_inf": True}, "x must be finite"),
    (math.inf, {}, "x must be finite"),
    (0.0, {"minimum": 0.0, "strict_min": True}, "x must be > 0.0"),
    (-1e-9, {"minimum": 0.0}, "x must be >= 0.0"),
    (1.0, {"maximum": 1.0, "strict_max": True}, "x must be < 1.0"),
    (1.5, {"maximum": 1.0}, "x must be <= 1.0"),
])
def test_check_float_rejects_with_the_argument_name(value, kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_float("x", value, **kwargs)


@pytest.mark.parametrize("value, kwargs", [
    (0, {"minimum": 0.0}), (1.0, {"maximum": 1.0}), (math.inf, {"allow_inf": True}),
    (np.float32(0.5), {"minimum": 0.0, "maximum": 1.0, "strict_min": True, "strict_max": True}),
])
def test_check_float_accepts_the_range_and_returns_a_python_float(value, kwargs):
    out = check_float("x", value, **kwargs)
    assert type(out) is float and out == float(value)


def test_check_int_accepts_numpy_ints_and_rejects_bools_and_floats():
    assert check_int("n", np.int64(3)) == 3 and type(check_int("n", np.int64(3))) is int
    for bad in (True, 2.0, 0, "3"):
        with pytest.raises(ValueError, match="n must be a positive int"):
            check_int("n", bad)
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        check_int("n", -1, minimum=0)


def test_check_bool_accepts_python_and_numpy_bools_only():
    from ssm_jax.validation import check_bool

    assert check_bool("flag", True) is True and check_bool("flag", np.bool_(False)) is False
    for bad in (1, 0, "yes", None, 1.0):
        with pytest.raises(ValueError, match="flag must be a bool"):
            check_bool("flag", bad)


def test_check_choice_names_the_argument_and_lists_the_choices():
    from ssm_jax.validation import check_choice

    assert check_choice("mode", "a", ("a", "b")) == "a"
    for bad in ("c", None, ["a"], 1):
        with pytest.raises(ValueError, match=r"mode must be one of \['a', 'b'\]"):
            check_choice("mode", bad, ("a", "b"))
    with pytest.raises(ValueError, match="must be one of"):
        check_choice("k", True, (1, 2))  # True == 1, but a bool is not the int choice



# --------------------------------------------------- the checks at each package's entry points
_KEY = jax.random.PRNGKey(0)
_EXAMPLE = {"x": jnp.zeros(3)}


def _adapt_steps(**kw):
    params, opt = {"w": jnp.ones(3)}, optax.sgd(0.1)
    return adapt_steps(params, opt.init(params), jnp.ones(3), optimizer=opt,
                       objective=lambda p, b: jnp.sum((p["w"] - b) ** 2), **{"num_steps": 1, **kw})


def _rollout(**kw):
    policy = MLPPolicy(obs_dim=4, action_dim=2)
    params = policy.init(_KEY, jnp.zeros((1, 1, 4)))
    return envs.rollout(_KEY, policy, params, num_envs=1, num_steps=1, **kw)


@pytest.mark.parametrize("call, message", [
    (lambda: SSM(4, 2, 2, 8, max_radius=1.0), "max_radius must be < 1.0"),
    (lambda: SSM(4, 2, 2, 8, max_radius=True), "max_radius must be a real number"),
    (lambda: DiagonalSSM(4, 2, 2, 8, dt_min=0.1, dt_max=0.01), "dt_max must be >= 0.1"),
    (lambda: SelectiveSSM(4, 2, 2, 8, dt_min=0.0), "dt_min must be > 0.0"),
    (lambda: DiagonalSSM(4, 2, 2, 8, parallel=1), "parallel must be a bool"),
    (lambda: SSMPolicy(4, 2, core="diagonal", parallel="yes"), "parallel must be a bool"),
    (lambda: SSMPolicy(4, 2, core="lstm"), r"core must be one of \['diagonal', 'selective', 'ssm'\]"),
    (lambda: MLPPolicy(4, 2, discrete=1), "discrete must be a bool"),
    (lambda: envs.CartPoleTasks(inverted_fraction=True), "inverted_fraction must be a real number"),
    (lambda: envs.CartPoleTasks(length=(0.5, "1")), "length max must be a real number"),
    (lambda: envs.CartPoleTasks(gravity=(0.0, 9.8)), "gravity min must be > 0.0"),
    (lambda: envs.CartPoleTasks(max_steps_in_episode=1.5), "max_steps_in_episode must be a positive int"),
    (lambda: envs.CartPoleTasks(test_ranges={"tau": (0.01, 0.02)}),
     r"test_ranges key must be one of \['length', .*got 'tau'"),
    (lambda: envs.CartPoleTasks().sample(_KEY, 4, split="val"), r"split must be one of \['train', 'test'\]"),
    (lambda: envs.make("Pong-v0"), r"environment name must be one of \['CartPole-v1'"),
    (lambda: envs.observe(jnp.zeros(4), "hidden", "CartPole-v1"), "obs_mode must be one of"),
    (lambda: _rollout(deterministic=1), "deterministic must be a bool"),
    (lambda: _rollout(carry_across_episodes="no"), "carry_across_episodes must be a bool"),
    (lambda: buffer_init(_EXAMPLE, capacity=2.0), "capacity must be a positive int"),
    (lambda: buffer_sample(buffer_init(_EXAMPLE, 2), _KEY, -1), "num_samples must be an int >= 0"),
    (lambda: _adapt_steps(num_steps=True), "num_steps must be an int >= 0"),
    (lambda: _adapt_steps(monotone=None), "monotone must be a bool"),
    (lambda: sample_sinusoid_tasks(_KEY, 4, num_shots=0), "num_shots must be a positive int"),
])
def test_every_package_rejects_bad_arguments_with_the_shared_messages(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_numpy_integers_are_accepted_where_ints_are_and_stored_as_python_ints():
    buf = buffer_init({"x": np.zeros(3, np.float32)}, capacity=np.int64(5))
    assert buf.capacity == 5 and buf.data["x"].shape == (5, 3)
    tasks = envs.CartPoleTasks(max_steps_in_episode=np.int64(200))
    assert type(tasks.max_steps_in_episode) is int and tasks.max_steps_in_episode == 200
    assert tasks == envs.CartPoleTasks(max_steps_in_episode=200)
    batch = sample_sinusoid_tasks(_KEY, np.int32(3), np.int64(4), 2)
    assert batch["support_x"].shape == (3, 4, 1) and batch["query_x"].shape == (3, 2, 1)


# --------------------------------------------------- numpy scalars, dtypes, finiteness (issue 19)
@pytest.mark.parametrize("value", [np.float32(0.25), np.float64(0.25), np.array(0.25), jnp.float32(0.25),
                                   np.float16(0.25)])
def test_check_float_accepts_numpy_scalars_and_0d_arrays(value):
    out = check_float("x", value, minimum=0.0, maximum=1.0)
    assert type(out) is float and out == 0.25


@pytest.mark.parametrize("value", [np.int64(5), np.int8(5), np.uint64(5), np.array(5), jnp.int32(5)])
def test_check_int_accepts_numpy_ints_and_0d_int_arrays(value):
    out = check_int("n", value)
    assert type(out) is int and out == 5


@pytest.mark.parametrize("value", [np.bool_(True), np.array(True), jnp.bool_(True), np.float32(5.0),
                                   np.array([5]), np.array(5.0)])
def test_check_int_refuses_bools_floats_and_non_scalar_arrays(value):
    with pytest.raises(ValueError, match="n must be a positive int"):
        check_int("n", value)


def test_check_float_refuses_a_traced_value_naming_it():
    def f(x):
        check_float("lr", x)

    with pytest.raises(ValueError, match="lr must be a real number"):
        jax.jit(f)(0.5)


def test_real_array_refuses_complex_and_non_numeric_values():
    from ssm_jax.validation import real_array

    for good in (np.zeros(3, np.float32), np.zeros(3, np.int32), [1.0, 2.0], np.zeros(2, bool)):
        assert real_array("xs", good).shape == np.shape(good)
    with pytest.raises(ValueError, match="xs must be a real array .* got complex64"):
        real_array("xs", np.zeros(3, np.complex64))
    for bad in ("abc", {"a": 1}, [[1.0], [1.0, 2.0]], object()):
        with pytest.raises(ValueError, match="xs must be a numeric array"):
            real_array("xs", bad)


def test_check_carry_refuses_other_dtype_kinds_and_narrower_floats():
    from ssm_jax.validation import check_carry

    ref = jnp.zeros((2, 4), jnp.float32)
    check_carry("carry", jnp.ones((2, 4), jnp.float32), ref)
    check_carry("carry", np.ones((2, 4), np.float64), ref)  # wider is fine
    for dtype in (jnp.int32, jnp.bool_, jnp.float16, jnp.complex64):
        with pytest.raises(ValueError, match=r"carry leaves must have dtypes \['float32'\]"):
            check_carry("carry", jnp.zeros((2, 4), dtype), ref)
    with pytest.raises(ValueError, match=r"carry leaves must have dtypes \['complex64'\]"):
        check_carry("carry", jnp.zeros((2, 4)), jnp.zeros((2, 4), jnp.complex64))


@pytest.mark.parametrize("model", [SSM(4, 2, 2, 8), DiagonalSSM(4, 2, 2, 8), SelectiveSSM(4, 2, 2, 8)])
def test_layers_refuse_an_int_carry_and_complex_inputs_before_computing(model):
    xs = jnp.ones((2, 3, 2))
    params = jax.eval_shape(model.init, _KEY, xs)  # shapes suffice: the checks come first
    carry = model.initialize_carry(2)
    with pytest.raises(ValueError, match="carry leaves must have dtypes"):
        model.apply(params, xs, carry=jnp.zeros(carry.shape, jnp.int32))
    with pytest.raises(ValueError, match="carry leaves must have dtypes"):
        model.apply(params, xs[:, 0], jnp.zeros(carry.shape, jnp.int32), method="step")
    with pytest.raises(ValueError, match="xs must be a real array .* got complex64"):
        model.apply(params, xs.astype(jnp.complex64))
    with pytest.raises(ValueError, match="x must be a real array .* got complex64"):
        model.apply(params, xs[:, 0].astype(jnp.complex64), carry, method="step")


def test_check_finite_reads_eager_values_only():
    from ssm_jax.validation import check_finite, check_params

    tree = {"a": jnp.ones(3), "b": {"c": jnp.array([1.0, jnp.inf])}, "n": jnp.arange(3)}
    with pytest.raises(ValueError, match=r"params must be finite, but params\['b'\]\['c'\] holds an infinity"):
        check_finite("params", tree)
    with pytest.raises(ValueError, match=r"task must be finite, but task\['g'\] holds NaN"):
        check_finite("task", {"g": math.nan})
    check_finite("params", {"a": jnp.ones(3), "n": jnp.arange(3)})
    jax.jit(lambda t: check_finite("params", t) or 0.0)(tree)  # traced: not read, no error
    check_params("params", {"a": tree["a"], "b": tree["b"]}, finite=False)  # dtypes only
    for bad, needle in (({}, "non-empty"), ({"w": "1"}, r"params\['w'\] is str"),
                        ({"w": jnp.arange(3)}, r"params\['w'\] is int32 array")):
        with pytest.raises(ValueError, match=needle):
            check_params("params", bad)


def test_policies_refuse_non_finite_observations_and_params_in_eager_calls():
    policy = MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=8)
    params = jax.eval_shape(policy.init, _KEY, jnp.zeros((1, 1, 4)))
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)
    carry = policy.initialize_carry(2)
    obs = jnp.zeros((2, 4)).at[1, 2].set(jnp.nan)
    with pytest.raises(ValueError, match="obs must be finite, but obs holds NaN"):
        policy.apply(params, obs, carry, method="step")
    with pytest.raises(ValueError, match="obs_seq must be finite"):
        policy.apply(params, obs[:, None])
    bad = jax.tree.map(lambda x: x, params)
    bad["params"]["heads"]["critic"]["kernel"] = bad["params"]["heads"]["critic"]["kernel"].at[0, 0].set(jnp.inf)
    with pytest.raises(ValueError, match=r"params must be finite, but params\['params'\]\['heads'\]\['critic'\]"):
        policy.apply(bad, jnp.zeros((2, 4)), carry, method="step")
    # under jit the values are not read: the NaN row's value is NaN, the clean row's is not
    out, _ = jax.jit(lambda p, o: policy.apply(p, o, carry, method="step"))(params, obs)
    assert np.isnan(out.value[1]) and np.isfinite(out.value[0])


def test_replay_buffer_with_no_slot_is_refused():
    from adapt.buffer import ReplayBuffer

    with pytest.raises(ValueError, match="capacity must be a positive int, got 0"):
        ReplayBuffer(data={"x": jnp.zeros((0, 3))}, insert_pos=jnp.zeros((), jnp.int32),
                     size=jnp.zeros((), jnp.int32))
    with pytest.raises(ValueError, match="capacity must be a positive int, got 0"):
        buffer_init(_EXAMPLE, capacity=np.int64(0))
