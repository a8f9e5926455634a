"""A hostile-input sweep of the benchmark's command line, generated with hypothesis.

Every flag of `benchmarks.cli.FLAG_PATHS` (and --second_order) gets generated bad values (wrong
type, negative, zero, huge, NaN, inf, empty, unknown choices, repeated methods), given as
`--flag VALUE` or `--flag=VALUE`; every field of the config gets bad values through a
`--config` TOML or JSON file, plus unknown field names. Each must end in exit status 2 with
exactly one error line, the last one, naming what the user typed (the flag, or the config file
and the field path). Everything is parsed in-process: parsing imports no JAX, so each case is
cheap (`tests/test_cli_reliability.py` checks the import in a fresh interpreter).
"""

import contextlib
import io
import json
import math
import os
import subprocess
import sys
import time

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.cli import ALL_SUITES, FLAG_PATHS, parse_args
from benchmarks.config import ENV_NAMES, MAX_COUNT, MAX_SEED, MODES, BenchmarkConfig, _paths
from benchmarks.methods import METHODS
from envs.suites import SUITE_NAMES
from ssm_jax import CORE_NAMES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = settings(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

#: int flags -> their minimum value.
INT_FLAGS = {"num_epochs": 1, "tasks_per_epoch": 1, "num_inner_steps": 1, "num_episodes": 1,
             "ppo_iterations": 1, "in_context_iterations": 1, "eval_tasks": 1, "seed": 0,
             "num_seeds": 1, "chunk_size": 1, "checkpoint_every": 1}
#: float flags -> whether 0 is refused (outer_lr must be > 0, inner_lr >= 0).
FLOAT_FLAGS = {"inner_lr": False, "outer_lr": True}
CHOICE_FLAGS = {"mode": MODES, "env_name": ENV_NAMES, "suite": SUITE_NAMES + (ALL_SUITES,)}


def test_every_flag_is_swept():
    """A new flag must be given a kind here (and so bad values) before the suite passes."""
    swept = set(INT_FLAGS) | set(FLOAT_FLAGS) | set(CHOICE_FLAGS) | {"methods", "first_order"}
    assert swept == set(FLAG_PATHS)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """An --out that does not exist yet (a fresh run would create it)."""
    return str(tmp_path_factory.mktemp("hostile") / "run")


def _refused(argv) -> str:
    """Parse `argv`; it must exit with status 2 and exactly one error line, the last line of
    stderr, which is returned."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            parse_args(argv)
        except SystemExit as exc:
            code = exc.code
        else:
            code = None
    lines = err.getvalue().splitlines()
    assert code == 2, (argv, code, err.getvalue())
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and lines[-1] == errors[0], (argv, err.getvalue())
    assert errors[0].startswith("python -m benchmarks.cartpole: error: ")
    return errors[0]


def _argv(flag: str, value: str, form: str) -> list:
    return [f"--{flag}={value}"] if form == "=" else [f"--{flag}", value]


def _names_flag(line: str, flag: str) -> bool:
    return f"--{flag}" in line


#: text that is no number (argparse's int()/float() refuse it), no newline-free requirement:
#: values are shown by repr, so even a newline keeps the message on one line.
_not_a_number = st.text(min_size=1, max_size=12).filter(lambda s: "\x00" not in s).filter(
    lambda s: not _parses(float, s))


def _parses(kind, s: str) -> bool:
    try:
        kind(s)
        return True
    except (ValueError, OverflowError):
        return False


def _bad_ints(minimum: int, top: int):
    return st.one_of(
        _not_a_number,
        st.sampled_from(["", " ", "1.5", "2.0", "1e3", "nan", "inf", "-inf", "0x10", "1_0.0", "true"]),
        st.integers(max_value=minimum - 1).map(str),                 # negative / zero
        st.integers(min_value=top + 1, max_value=top + 2**70).map(str),   # huge
    )


@settings(SWEEP, max_examples=14)
@pytest.mark.parametrize("flag", sorted(INT_FLAGS))
@given(value=st.data(), form=st.sampled_from([" ", "="]))
def test_bad_int_flags_are_usage_errors_naming_the_flag(flag, value, form, out):
    top = MAX_SEED + 1 - BenchmarkConfig().num_seeds if flag == "seed" else MAX_COUNT
    bad = value.draw(_bad_ints(INT_FLAGS[flag], top))
    assert _names_flag(_refused(_argv(flag, bad, form) + ["--out", out]), flag)


def _bad_floats(zero_refused: bool):
    negative = st.floats(max_value=-1e-300, allow_nan=False, allow_infinity=True)
    zeros = st.sampled_from(["0", "0.0", "-0.0", "0e5"]) if zero_refused else st.nothing()
    return st.one_of(
        _not_a_number,
        st.sampled_from(["", "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e400", "-1e400", "0x1p3",
                         "1,5"]),
        negative.map(repr),
        zeros,
    )


@settings(SWEEP, max_examples=25)
@pytest.mark.parametrize("flag", sorted(FLOAT_FLAGS))
@given(value=st.data(), form=st.sampled_from([" ", "="]))
def test_bad_float_flags_are_usage_errors_naming_the_flag(flag, value, form, out):
    bad = value.draw(_bad_floats(FLOAT_FLAGS[flag]))
    assert _names_flag(_refused(_argv(flag, bad, form) + ["--out", out]), flag)


@settings(SWEEP, max_examples=15)
@pytest.mark.parametrize("flag", sorted(CHOICE_FLAGS))
@given(bad=st.text(max_size=20).filter(lambda s: "\x00" not in s), form=st.sampled_from([" ", "="]))
def test_unknown_choices_are_usage_errors_naming_the_flag(flag, bad, form, out):
    if bad in CHOICE_FLAGS[flag]:
        bad += "x"
    assert _names_flag(_refused(_argv(flag, bad, form) + ["--out", out]), flag)


_unknown_method = st.text(alphabet=st.characters(blacklist_characters=",\x00"), min_size=1, max_size=15).filter(
    lambda s: s.strip() and s.strip() not in METHODS)


@st.composite
def _bad_methods(draw):
    kind = draw(st.sampled_from(["unknown", "repeated", "empty"]))
    names = draw(st.lists(st.sampled_from(METHODS), max_size=4))
    if kind == "unknown":
        names.insert(draw(st.integers(0, len(names))), draw(_unknown_method))
    elif kind == "repeated":
        twice = draw(st.sampled_from(METHODS))
        names += [twice, twice]
    else:
        return draw(st.sampled_from(["", ",", " ", " , ,", ",,,"]))
    sep = draw(st.sampled_from([",", ", ", " ,"]))
    return sep.join(names)


@settings(SWEEP, max_examples=30)
@given(bad=_bad_methods(), form=st.sampled_from([" ", "="]))
def test_bad_method_lists_are_usage_errors_naming_the_flag(bad, form, out):
    assert _names_flag(_refused(_argv("methods", bad, form) + ["--out", out]), "methods")


@pytest.mark.parametrize("argv, flag", [
    (["--first_order=yes"], "first_order"), (["--second_order=1"], "second_order"),
    (["--first_order", "--second_order"], "second_order"),
    (["--num_episodes", "0"], "num_episodes"), (["--ppo_iterations", "0"], "ppo_iterations"),
    (["--num_episodes", "3", "--ppo_iterations", "4"], "num_episodes"),
    (["--seed", "4294967295", "--num_seeds", "2"], "seed"),
    (["--num_episodes", str(MAX_COUNT // 16 + 1)], "num_episodes"),   # its Adam step count overflows
    (["--num_epochs", str(MAX_COUNT + 1)], "num_epochs"),
])
def test_explicit_flag_cases_name_the_flag_typed(argv, flag, out):
    assert _names_flag(_refused(argv + ["--out", out]), flag)


@pytest.mark.parametrize("flag", sorted(INT_FLAGS) + sorted(FLOAT_FLAGS) + sorted(CHOICE_FLAGS) + ["methods"])
def test_a_good_value_of_every_flag_is_accepted(flag, out):
    """The sweep's counterpart: each flag does take a good value (so a refusal is about the value)."""
    good = {"seed": "7", "mode": "meta_rl", "env_name": "CartPole-v1", "methods": "maml_adapted, in_context",
            "inner_lr": "0", "outer_lr": "1e-4", "suite": "switching"}.get(flag, "3")
    config, _ = parse_args([f"--{flag}", good, "--out", out])
    path = FLAG_PATHS[flag]
    expected = {"methods": ("maml_adapted", "in_context")}.get(flag, type(config.get(path))(good)
                                                                if flag not in ("mode", "env_name", "suite") else good)
    assert config.get(path) == expected


# ------------------------------------------------------------------------------------ --config files
DEFAULTS = _paths(BenchmarkConfig().to_dict())
#: Field paths whose value may be None (Optional fields), and the choices of the string fields.
OPTIONAL = {"maml.rl.grad_clip"}
CHOICES = {"mode": MODES, "env_name": ENV_NAMES, "maml.rl.baseline": ("value", "linear"),
           "maml.rl.obs_mode": ("full", "partial"), "in_context_policy.core": CORE_NAMES}
_junk_text = st.text(max_size=10).filter(lambda s: "\x00" not in s)


def _bad_value(path: str):
    """Values that the field at `path` refuses whatever its (valid) default is."""
    default = DEFAULTS[path]
    common = [_junk_text, st.lists(st.integers(), min_size=1, max_size=2)]
    if path == "maml.rl.outer_lr_decay_steps":  # must stay None (the schedule follows from the run)
        return st.integers(1, 10**6)
    if path == "methods":
        return st.one_of(st.just([]), st.lists(_unknown_method, min_size=1, max_size=2),
                         st.sampled_from(METHODS).map(lambda m: [m, m]), st.integers())
    if isinstance(default, bool):
        return st.one_of(*common, st.integers(), st.floats(), st.none())
    if isinstance(default, int):
        top = MAX_SEED if path == "seed" else MAX_COUNT
        minimum = 0 if path == "seed" else 1
        return st.one_of(*common, st.booleans(), st.none(), st.integers(max_value=minimum - 1),
                         st.integers(min_value=top + 1, max_value=top + 2**70), st.floats())
    if isinstance(default, float) or path in OPTIONAL:
        nones = st.nothing() if path in OPTIONAL else st.none()
        return st.one_of(*common, st.booleans(), nones, st.sampled_from([math.nan, math.inf, -math.inf]),
                         st.floats(max_value=-1e-300, allow_nan=False))
    if isinstance(default, str):
        return st.one_of(_junk_text.filter(lambda s: s != default and s not in (CHOICES.get(path) or ())),
                         st.integers(), st.none(), st.booleans())
    raise AssertionError(f"no bad values for {path} ({type(default).__name__})")


def _nested(path: str, value) -> dict:
    out: dict = {}
    node = out
    *sections, name = path.split(".")
    for s in sections:
        node = node.setdefault(s, {})
    node[name] = value
    return out


def _write_config(directory: str, data: dict, fmt: str, n: list) -> str:
    n.append(None)
    path = os.path.join(directory, f"c{len(n)}.{fmt}")
    with open(path, "w") as f:
        f.write(json.dumps(data) if fmt == "json" else tomli_w.dumps(data))
    return path


def _has_none(x) -> bool:
    return x is None or (isinstance(x, list) and any(_has_none(v) for v in x))


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("configs")), []


@settings(SWEEP, max_examples=90)
@given(data=st.data())
def test_bad_config_file_fields_are_usage_errors_naming_file_and_field(data, config_dir, out):
    directory, counter = config_dir
    path = data.draw(st.sampled_from(sorted(DEFAULTS)), label="field")
    value = data.draw(_bad_value(path), label="value")
    fmt = "json" if _has_none(value) else data.draw(st.sampled_from(["toml", "json"]), label="format")
    file = _write_config(directory, _nested(path, value), fmt, counter)
    line = _refused(["--config", file, "--out", out])
    assert f"--config {file!r}" in line and path in line, (path, value, line)


@settings(SWEEP, max_examples=25)
@given(data=st.data())
def test_unknown_config_fields_are_usage_errors_naming_them(data, config_dir, out):
    directory, counter = config_dir
    sections = sorted({p.rpartition(".")[0] for p in DEFAULTS if "." in p}) + [""]
    section = data.draw(st.sampled_from(sections), label="section")
    name = data.draw(st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True), label="name")
    path = f"{section}.{name}" if section else name
    if path in DEFAULTS or any(p.startswith(path + ".") for p in DEFAULTS):
        path += "_x"
    file = _write_config(directory, _nested(path, 1), data.draw(st.sampled_from(["toml", "json"])), counter)
    line = _refused(["--config", file, "--out", out])
    assert f"--config {file!r}" in line and f"unknown field {path!r}" in line, line


@pytest.mark.parametrize("text, fmt, message", [
    ("seed = ", "toml", "is not valid TOML"), ("{", "json", "is not valid JSON"),
    ("[1, 2]", "json", "must hold a table of settings"), ("", "json", "is not valid JSON"),
])
def test_unreadable_config_files_name_the_file(text, fmt, message, config_dir, out):
    directory, counter = config_dir
    counter.append(None)
    file = os.path.join(directory, f"u{len(counter)}.{fmt}")
    with open(file, "w") as f:
        f.write(text)
    line = _refused(["--config", file, "--out", out])
    assert f"--config {file!r}" in line and message in line


def test_usage_errors_in_a_fresh_interpreter_report_their_time(tmp_path, record_property):
    """Two usage errors as a user meets them (`python -m benchmarks.cartpole ...`): exit 2, one
    error line. The wall time is recorded (`record_property`, and printed), not asserted: the
    target is under 2 s."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[maml.rl]\ninner_lr = -1\n")
    for argv, flag in ((["--num_epochs", "1e3"], "--num_epochs"), (["--config", str(bad)], "maml.rl.inner_lr")):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "benchmarks.cartpole", *argv, "--out", str(tmp_path / "o")],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        wall = time.perf_counter() - t0
        record_property(f"usage_error_wall_s {argv[0]}", round(wall, 3))
        print(f"usage error {argv}: {wall:.2f}s wall")
        errors = [line for line in proc.stderr.splitlines() if "error:" in line]
        assert proc.returncode == 2 and len(errors) == 1 and flag in errors[0], proc.stderr
        assert "Traceback" not in proc.stderr
