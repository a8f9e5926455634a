"""JAX's persistent compilation cache for `python -m benchmarks.cartpole`: the `--compile_cache`
flag (checked without JAX), `benchmarks.compile_time.persistent_cache` (entries written and read
back, off for None even when JAX has a cache directory, JAX's settings restored) and what a run
records. A run's own cache use is checked on the shared tiny run of tests/test_after_a_run.py.
Also `compile_time.fast_compile`, with which `--quick` runs compile."""

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


def test_fast_compile_reaches_the_compiler_clears_programs_and_restores_the_setting(tmp_path,
                                                                                    default_optimizations):
    """From XLA's defaults (the `default_optimizations` fixture; the default test run compiles
    fast everywhere): `fast_compile(True)` turns most optimisations off for the block, so the
    same program compiled inside and outside it is two persistent-cache entries (the level is
    part of the compile options the key hashes) with values equal to rounding; a jitted function
    compiled before the block is compiled again inside it and after it (in-memory programs are
    cleared where the setting changes); False changes nothing; the setting is back after the
    block, also after an error."""
    x = jnp.linspace(-3.0, 3.0, 7)
    cache = str(tmp_path / "cc")
    traced = []

    @jax.jit
    def f(v):
        traced.append(1)
        return jnp.sin(v) * 6.5 + jnp.cos(v * 6.5)

    with default_optimizations(), compile_time.persistent_cache(cache):
        assert compile_time.fast_compile_on() is False
        with compile_time.fast_compile(False) as on:
            assert on is False and compile_time.fast_compile_on() is False
            a = np.asarray(f(x))
            f(x)
        assert len(traced) == 1 and len(_entries(cache)) == 1  # nothing cleared without a change
        with compile_time.fast_compile(True) as on:
            assert on is True and compile_time.fast_compile_on() is True
            b = np.asarray(f(x))
        assert len(traced) == 2 and len(_entries(cache)) == 2  # compiled again, the fast way
        assert compile_time.fast_compile_on() is False
        np.asarray(f(x))
        assert len(traced) == 3 and len(_entries(cache)) == 2  # and again after: read back optimised
        with pytest.raises(RuntimeError, match="inside"):
            with compile_time.fast_compile(True):
                raise RuntimeError("inside")
        assert compile_time.fast_compile_on() is False
        with compile_time.fast_compile(True):  # optimizations_off(False) inside a fast block: XLA's
            with compile_time.optimizations_off(False) as off:  # defaults again, compiled anew
                assert off is False and compile_time.fast_compile_on() is False
                np.testing.assert_array_equal(np.asarray(f(x)), a)
            assert compile_time.fast_compile_on() is True
        assert len(traced) == 4
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("quick", [True, False])
def test_a_run_compiles_fast_exactly_when_its_config_says_so(quick, tmp_path, monkeypatch, default_optimizations):
    """`run_command` wraps the run (and `--suite all`) in `fast_compile(config.fast_compile)`,
    which `--quick` sets and the default leaves off (from XLA's defaults, so the difference
    shows); a --quick run's config file keeps it, and a stored config without the field (a run
    made before it existed) reads back False."""
    from benchmarks import cartpole
    from benchmarks.config import BenchmarkConfig

    seen = []
    monkeypatch.setattr(cartpole, "run", lambda config, options: seen.append(compile_time.fast_compile_on()))
    monkeypatch.setattr(cartpole, "run_all_suites", lambda config, options: seen.append(compile_time.fast_compile_on()))
    with default_optimizations():
        for extra in ([], ["--suite", "all"]):
            config, options = parse_args((["--quick"] if quick else []) + extra + [
                "--out", str(tmp_path / "run"), "--compile_cache", "none"])
            assert config.fast_compile == quick and options.all_suites == bool(extra)
            cartpole.run_command(config, options)
            assert compile_time.fast_compile_on() is False
    assert seen == [quick, quick]
    stored = parse_args(["--quick"])[0].to_dict()
    assert BenchmarkConfig.from_dict(stored).fast_compile is True
    del stored["fast_compile"]
    assert BenchmarkConfig.from_dict(stored).fast_compile is False
