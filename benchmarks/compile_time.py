"""Seconds the process spends compiling jitted functions, from `jax.monitoring` events, and
JAX's persistent compilation cache for the command line.

`install()` registers the listeners (once per process; later calls do nothing), and
`compile_seconds()` is the total since then of the events that make up the time jax spends
before running a new jit: tracing to a jaxpr, lowering to MLIR and the backend compile (a
persistent-cache hit skips the backend compile; tracing and lowering remain).
`cache_counts()` counts the persistent cache's hits and writes since `install()`.

`persistent_cache(directory)` is a context manager that turns the persistent compilation cache
on in `directory` (or off, for None) for the compilations inside it, caching every program that
takes at least `CACHE_MIN_COMPILE_TIME_S` to compile, and restores JAX's previous cache settings
on exit. The cache stores the executables XLA compiled, so a run reads back exactly what it would
have compiled: results do not depend on it.

`fast_compile(on)` is a context manager that compiles the programs inside it with most of XLA's
optimisations off (`FAST_COMPILE`) when `on`, and restores the setting on exit. Runs whose config
says `fast_compile` (`--quick` runs: their budgets are tiny, so compilation, not running, is most
of their time) use it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator, Optional

import jax

#: jax.monitoring events that together make up the time jax spends before running a new jit.
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")

#: jax.monitoring events of the persistent cache: a hit, and an entry written after a miss.
CACHE_EVENTS = {"/jax/compilation_cache/cache_hits": "hits", "/jax/compilation_cache/cache_misses": "writes"}
#: Programs that take at least this long to compile are written to the persistent cache (JAX's
#: default, 1 s, leaves out most of a run's programs, which compile in well under a second).
CACHE_MIN_COMPILE_TIME_S = 0.0
#: The JAX settings `persistent_cache` changes and restores.
CACHE_SETTINGS = ("jax_enable_compilation_cache", "jax_compilation_cache_dir",
                  "jax_persistent_cache_min_compile_time_secs")

#: JAX's switch for XLA backend optimisation level 0 without LLVM's expensive passes, read at
#: every compilation (and part of the persistent cache's key).
FAST_COMPILE = "jax_disable_most_optimizations"

_seconds = [0.0]
_counts = {"hits": 0, "writes": 0}
_installed = [False]
_active_cache: list = [None]


def _on_duration_event(event: str, duration: float, **_) -> None:
    if event in COMPILE_EVENTS:
        _seconds[0] += duration


def _on_event(event: str, **_) -> None:
    if event in CACHE_EVENTS:
        _counts[CACHE_EVENTS[event]] += 1


def install() -> None:
    """Start counting compile time and persistent-cache hits and writes (idempotent)."""
    if not _installed[0]:
        jax.monitoring.register_event_duration_secs_listener(_on_duration_event)
        jax.monitoring.register_event_listener(_on_event)
        _installed[0] = True


def compile_seconds() -> float:
    """Seconds spent tracing, lowering and compiling jitted functions since `install()`."""
    return _seconds[0]


def cache_counts() -> dict:
    """``{"hits": n, "writes": m}``: persistent-cache hits and entries written since `install()`."""
    return dict(_counts)


def active_cache() -> Optional[str]:
    """The directory of the innermost `persistent_cache` in use, None outside one (or off)."""
    return _active_cache[0]


@contextlib.contextmanager
def persistent_cache(directory: Optional[str], log: Callable[[str], None] = print) -> Iterator[Optional[str]]:
    """JAX's persistent compilation cache in `directory` (created if needed) for the compilations
    inside the block, or no persistent cache for None (even if `JAX_COMPILATION_CACHE_DIR` is
    set). Yields the directory in use: None if off, or if `directory` cannot be created (the
    block then runs without a cache, after a note to `log`). On exit JAX's previous settings
    are back."""
    from jax.experimental.compilation_cache import compilation_cache

    if directory is not None:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as err:
            log(f"note: no compilation cache: cannot create {directory!r} ({err.strerror or err})")
            directory = None
    before = {name: getattr(jax.config, name) for name in CACHE_SETTINGS}
    previous = _active_cache[0]
    if directory is None:
        jax.config.update("jax_enable_compilation_cache", False)
    else:
        jax.config.update("jax_enable_compilation_cache", True)
        jax.config.update("jax_compilation_cache_dir", directory)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_TIME_S)
    compilation_cache.reset_cache()  # the next compilation reads the settings above
    _active_cache[0] = directory
    try:
        yield directory
    finally:
        for name, value in before.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()
        _active_cache[0] = previous


@contextlib.contextmanager
def optimizations_off(off: bool) -> Iterator[bool]:
    """Compile the block's programs with most of XLA's optimisations off (`FAST_COMPILE`) if
    `off`, with XLA's defaults if not, whatever the setting outside; yields `off`. JAX's
    in-memory caches do not key on the setting, so where it changes they are cleared on entry
    and on exit: every program the block runs is compiled the block's way (the persistent cache
    keys on it, and still serves both). On exit the previous setting is back."""
    before = fast_compile_on()
    changes = bool(off) != before
    if changes:
        jax.clear_caches()
        jax.config.update(FAST_COMPILE, bool(off))
    try:
        yield bool(off)
    finally:
        if changes:
            jax.config.update(FAST_COMPILE, before)
            jax.clear_caches()


def fast_compile(on: bool):
    """A context manager: the block's programs compile with most of XLA's optimisations off if
    `on` (`optimizations_off(True)`), else as they are; yields `on`. Programs compile in roughly
    half the time and run slower, and float results may differ in the last bits from optimised
    programs' (fusion changes the order of operations), so one run (its training, `--resume`,
    `--eval_only` and re-evaluations) compiles one way throughout: `BenchmarkConfig.fast_compile`
    says which."""
    return optimizations_off(True) if on else contextlib.nullcontext(False)


def fast_compile_on() -> bool:
    """Whether programs compiled now get most of XLA's optimisations off (`fast_compile`)."""
    return bool(jax.config.values[FAST_COMPILE])
