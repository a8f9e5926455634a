"""Seconds the process spends compiling jitted functions, from `jax.monitoring` events.

`install()` registers the listener (once per process; later calls do nothing), and
`compile_seconds()` is the total since then of the events that make up the time jax spends
before running a new jit: tracing to a jaxpr, lowering to MLIR and the backend compile.
"""

from __future__ import annotations

import jax

#: jax.monitoring events that together make up the time jax spends before running a new jit.
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")

_seconds = [0.0]
_installed = [False]


def _on_duration_event(event: str, duration: float, **_) -> None:
    if event in COMPILE_EVENTS:
        _seconds[0] += duration


def install() -> None:
    """Start counting compile time (idempotent)."""
    if not _installed[0]:
        jax.monitoring.register_event_duration_secs_listener(_on_duration_event)
        _installed[0] = True


def compile_seconds() -> float:
    """Seconds spent tracing, lowering and compiling jitted functions since `install()`."""
    return _seconds[0]
