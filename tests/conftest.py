"""Shared test setup."""

import chex
import pytest


@pytest.fixture(autouse=True)
def _fresh_trace_counter():
    """``chex.assert_max_traces`` counts per function code object across the whole session;
    start each test from zero so parametrised tests count their own traces only."""
    chex.clear_trace_counter()
    yield


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """One uninterrupted `python -m benchmarks.cartpole --quick` run (slow tests only), in a
    subprocess with a JAX persistent compilation cache that later runs of the same config
    (`tests/test_faults.py`'s interrupted and resumed runs) share: they then skip XLA
    compilation, which dominates a --quick run. Cached executables are the ones compiled, so
    results do not depend on the cache. Returns a namespace with `out` (the run directory),
    `cache` (the cache directory), `results` (its results.json), `stdout` and `wall_s`."""
    import json
    import os
    import subprocess
    import sys
    import time
    import types

    root = tmp_path_factory.mktemp("quick_run")
    out, cache = root / "run", root / "jax_cache"
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1"}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.cartpole", "--quick", "--out", str(out)],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "results.json") as f:
        results = json.load(f)
    return types.SimpleNamespace(out=str(out), cache=str(cache), results=results, stdout=proc.stdout,
                                 wall_s=time.perf_counter() - t0)
