"""JAX's persistent compilation cache for `python -m benchmarks.cartpole`: the `--compile_cache`
flag (checked without JAX), `benchmarks.compile_time.persistent_cache` (entries written and read
back, off for None even when JAX has a cache directory, JAX's settings restored) and what a run
records. A run's own cache use is checked on the shared tiny run of tests/test_after_a_run.py.
Also `compile_time.quick_compilation`, with which `--quick` runs compile."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import compile_time
from benchmarks.cli import compile_cache_dir, parse_args


def _options(argv, tmp_path):
    return parse_args(argv + ["--quick", "--out", str(tmp_path / "run")])[1]


def test_flag_sets_the_directory_or_turns_the_cache_off(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _options(["--compile_cache", "none"], tmp_path).compile_cache is None
    assert _options(["--compile_cache", "cc"], tmp_path).compile_cache == str(tmp_path / "cc")
    assert _options(["--compile_cache=" + str(tmp_path / "x" / "y")], tmp_path).compile_cache == str(
        tmp_path / "x" / "y")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "from_env"))
    assert _options([], tmp_path).compile_cache == str(tmp_path / "from_env")
    assert _options(["--compile_cache", "none"], tmp_path).compile_cache is None


def test_default_directory():
    home = os.path.expanduser("~")
    assert compile_cache_dir(None, environ={}) == os.path.join(home, ".cache", "ssm-metarl-jax", "jax")
    assert compile_cache_dir(None, environ={"XDG_CACHE_HOME": "/x/cache"}) == "/x/cache/ssm-metarl-jax/jax"
    # a relative XDG_CACHE_HOME is invalid by the XDG spec and ignored
    assert compile_cache_dir(None, environ={"XDG_CACHE_HOME": "rel"}) == os.path.join(
        home, ".cache", "ssm-metarl-jax", "jax")
    assert compile_cache_dir(None, environ={"XDG_CACHE_HOME": "/x/cache", "JAX_COMPILATION_CACHE_DIR": "/j"}) == "/j"


@pytest.mark.parametrize("value, message", [
    ("", "--compile_cache must be a directory or 'none', got ''"),
    ("  ", "--compile_cache must be a directory or 'none', got '  '"),
    ("a\x00b", "--compile_cache must be a directory or 'none'"),
    ("FILE", "is not a directory (give a directory or 'none')"),
])
def test_bad_values_are_usage_errors_naming_the_flag(value, message, tmp_path, capsys):
    if value == "FILE":
        value = str(tmp_path / "a_file")
        open(value, "w").close()
    with pytest.raises(SystemExit) as exc:
        _options(["--compile_cache", value], tmp_path)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("python -m benchmarks.cartpole: error: --compile_cache") and message in err[-1]
    assert not (tmp_path / "run").exists()


def _program(scale: float):
    """A fresh jitted function object computing the same program for the same `scale` (so a new
    one misses JAX's in-memory caches and compiles, or reads the persistent cache)."""
    def scaled_sine(x):
        return jnp.sin(x) * scale + jnp.cos(x * scale)

    return jax.jit(scaled_sine)


def _entries(directory) -> list:
    return sorted(n for n in os.listdir(directory) if n.endswith("-cache")) if os.path.isdir(directory) else []


def test_persistent_cache_writes_reads_back_and_restores_jax_settings(tmp_path):
    compile_time.install()
    settings = {name: getattr(jax.config, name) for name in compile_time.CACHE_SETTINGS}
    x = jnp.linspace(-3.0, 3.0, 7)
    fresh = np.asarray(_program(1.25)(x))   # compiled outside any cache
    on, outer = str(tmp_path / "on"), str(tmp_path / "outer")
    counts = compile_time.cache_counts()
    with compile_time.persistent_cache(on) as used:
        assert used == on == compile_time.active_cache()
        first = np.asarray(_program(1.25)(x))
        assert len(_entries(on)) == 1 and compile_time.cache_counts()["writes"] == counts["writes"] + 1
        again = np.asarray(_program(1.25)(x))  # a new jit of the same program is read back
        assert compile_time.cache_counts() == {"hits": counts["hits"] + 1, "writes": counts["writes"] + 1}
        assert len(_entries(on)) == 1
    np.testing.assert_array_equal(first, fresh)
    np.testing.assert_array_equal(again, fresh)
    assert compile_time.active_cache() is None
    assert {name: getattr(jax.config, name) for name in compile_time.CACHE_SETTINGS} == settings

    # None turns the cache off even where JAX has a cache directory, and the outer one is back after
    with compile_time.persistent_cache(outer):
        with compile_time.persistent_cache(None) as used:
            assert used is None and compile_time.active_cache() is None
            _program(2.5)(x).block_until_ready()
            assert _entries(outer) == []
        assert compile_time.active_cache() == outer
        _program(3.5)(x).block_until_ready()
        assert len(_entries(outer)) == 1
    assert {name: getattr(jax.config, name) for name in compile_time.CACHE_SETTINGS} == settings


def test_a_directory_that_cannot_be_created_runs_without_a_cache(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    notes = []
    with compile_time.persistent_cache(str(blocker / "cache"), log=notes.append) as used:
        assert used is None and compile_time.active_cache() is None
        _program(4.5)(jnp.ones(3)).block_until_ready()
    assert len(notes) == 1 and notes[0].startswith("note: no compilation cache: cannot create")
    assert str(blocker / "cache") in notes[0]


def test_quick_compilation_reaches_the_compiler_and_restores_the_setting(tmp_path):
    """`quick_compilation(True)` compiles with most optimisations off: the same program compiled
    inside and outside it is two persistent-cache entries (the optimisation level is part of
    the compile options the key hashes), with equal values; False leaves the setting as it is,
    and the previous setting is back after the block, also after an error."""
    before = compile_time.quick_compilation_on()
    x = jnp.linspace(-3.0, 3.0, 7)
    cache = str(tmp_path / "cc")
    with compile_time.persistent_cache(cache):
        with compile_time.quick_compilation(False) as on:
            assert on is False and compile_time.quick_compilation_on() == before
            a = np.asarray(_program(6.5)(x))
        n = len(_entries(cache))
        with compile_time.quick_compilation(True) as on:
            assert on is True and compile_time.quick_compilation_on()
            b = np.asarray(_program(6.5)(x))
        if before:  # the suite's default run compiles this way already: one program, one entry
            assert len(_entries(cache)) == n == 1
        else:
            assert len(_entries(cache)) == n + 1 == 2
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert compile_time.quick_compilation_on() == before
    with pytest.raises(RuntimeError, match="inside"):
        with compile_time.quick_compilation(True):
            raise RuntimeError("inside")
    assert compile_time.quick_compilation_on() == before


@pytest.mark.parametrize("quick", [True, False])
def test_a_run_compiles_quickly_exactly_when_its_config_is_quick(quick, tmp_path, monkeypatch):
    """`run_command` wraps the run (and `--suite all`) in `quick_compilation(config.quick)`:
    a --quick run, and the --resume or --eval_only of one (they read its config.json), compile
    with most optimisations off; any other run compiles as the process does."""
    from benchmarks import cartpole

    seen = []
    monkeypatch.setattr(cartpole, "run", lambda config, options: seen.append(compile_time.quick_compilation_on()))
    monkeypatch.setattr(cartpole, "run_all_suites",
                        lambda config, options: seen.append(compile_time.quick_compilation_on()))
    before = compile_time.quick_compilation_on()
    for extra in ([], ["--suite", "all"]):
        config, options = parse_args((["--quick"] if quick else []) + extra + ["--out", str(tmp_path / "run"),
                                                                                 "--compile_cache", "none"])
        assert config.quick == quick and options.all_suites == bool(extra)
        cartpole.run_command(config, options)
    assert seen == [quick or before] * 2
    assert compile_time.quick_compilation_on() == before
