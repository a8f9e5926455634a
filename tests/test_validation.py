"""The shared argument checks (ssm_jax.validation) every config and entry point uses."""

import math

import numpy as np
import pytest

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
