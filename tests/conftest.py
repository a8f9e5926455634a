"""Shared test setup."""


import chex
import pytest

# JAX's switch for XLA backend optimisation level 0 without LLVM's expensive passes (read at every
# compilation, and by the test subprocesses from JAX_DISABLE_MOST_OPTIMIZATIONS).
from benchmarks.compile_time import FAST_COMPILE


@pytest.fixture
def fresh_python():
    """`run(code, timeout=60) -> list of stdout lines`: `code` run by a new Python interpreter
    from the repository root (so what it imports starts from an empty `sys.modules`), asserting
    it exits 0 (its stderr shown otherwise)."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def run(code: str, timeout: float = 60) -> list:
        out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                             timeout=timeout)
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()

    return run


#: XLA's CPU fusion emitters off (read once, when JAX starts its CPU backend, from `XLA_FLAGS`):
#: fused computations are then emitted by XLA's older elemental emitter, which compiles faster
#: (README, Development).
FUSION_EMITTERS_OFF = "--xla_cpu_use_fusion_emitters=false"


def pytest_configure(config):
    """The quick default run (`-m 'not slow'`, pyproject's addopts) compiles with most of XLA's
    optimisations off (`FAST_COMPILE`) and XLA's CPU fusion emitters off (`FUSION_EMITTERS_OFF`),
    because compilation dominates it (README, Development). Both reach the tests' subprocesses
    through the environment. A run that selects slow tests (CI's slow pass, `-m slow`) compiles
    as users' programs do; a value set in `JAX_DISABLE_MOST_OPTIMIZATIONS` keeps the run as it
    is, and fusion emitters named in `XLA_FLAGS` are left as set."""
    import os

    import jax
    from jax._src import xla_bridge

    if "JAX_DISABLE_MOST_OPTIMIZATIONS" in os.environ or config.getoption("markexpr", "").strip() != "not slow":
        return
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "true"  # inherited by the tests' subprocesses
    jax.config.update(FAST_COMPILE, True)
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_use_fusion_emitters" not in flags:
        # XLA reads its flags once: a backend started already (by a plugin) would ignore them.
        assert not xla_bridge.backends_are_initialized(), "JAX's backend started before pytest_configure"
        os.environ["XLA_FLAGS"] = f"{flags} {FUSION_EMITTERS_OFF}".strip()


@pytest.fixture(scope="session")
def default_optimizations():
    """A context manager: the computations compiled inside it get XLA's default optimisations,
    whatever `pytest_configure` chose. For comparisons of chaotic episodes between two
    programs (a fused evaluator against a Python loop of separately compiled pieces), which at
    optimisation level 0 round differently enough for an episode to diverge. JAX's compiled
    functions are cleared on entry and exit, so no program compiled the other way is reused.
    (The CPU fusion emitters stay as the process started: XLA reads its flags once.)"""
    from benchmarks.compile_time import optimizations_off

    return lambda: optimizations_off(False)


@pytest.fixture(autouse=True)
def _fresh_trace_counter():
    """``chex.assert_max_traces`` counts per function code object across the whole session;
    start each test from zero so parametrised tests count their own traces only."""
    chex.clear_trace_counter()
    yield


@pytest.fixture(scope="session", autouse=True)
def compile_cache(tmp_path_factory):
    """One JAX persistent compilation cache directory for the whole session, in
    `JAX_COMPILATION_CACHE_DIR`: every `benchmarks.cartpole` command a test runs (in-process
    through `cartpole.main`, or in a subprocess) uses it by default (`benchmarks.cli.
    compile_cache_dir`), so nothing is written under the user's ~/.cache and a later run of a
    configuration already compiled in the session (`quick_run`, then `tests/test_faults.py`'s
    resumed runs) reads its programs back instead of compiling them. Cached executables are
    the ones XLA compiled, so results do not depend on the cache. The JAX of this process read
    the variable at import (before this fixture), so only the benchmark commands use it here."""
    import os

    cache = str(tmp_path_factory.mktemp("jax_cache"))
    previous = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
    yield cache
    if previous is None:
        del os.environ["JAX_COMPILATION_CACHE_DIR"]
    else:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory, compile_cache):
    """One uninterrupted `python -m benchmarks.cartpole --quick` run (slow tests only), in a
    subprocess with the session's compilation cache (`compile_cache`), which later runs of the
    same config (`tests/test_faults.py`'s interrupted and resumed runs) share: they then skip
    XLA compilation, which dominates a --quick run. Returns a namespace with `out` (the run
    directory), `cache` (the cache directory), `results` (its results.json), `stdout` and
    `wall_s`."""
    import json
    import os
    import subprocess
    import sys
    import time
    import types

    root = tmp_path_factory.mktemp("quick_run")
    out, cache = root / "run", compile_cache
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


@pytest.fixture(scope="session")
def app_server(quick_run, compile_cache, tmp_path_factory):
    """The web page (`benchmarks.app`) served in this process on 127.0.0.1 and a free port
    (slow tests only), its `--runs_root` a temporary directory holding a copy of `quick_run`'s
    run as `quick` (the shared run itself is only read) and `broken`, a copy whose checkpoint
    files are truncated. Returns a namespace with `url`, `root`, `demo` and `started` (the
    `time.perf_counter()` when the page was built); the server is closed at the end of the session."""
    import os
    import shutil
    import socket
    import time
    import types

    from benchmarks import app, app_core, compile_time

    root = tmp_path_factory.mktemp("runs_root")
    shutil.copytree(quick_run.out, root / "quick")
    broken = root / "broken"
    shutil.copytree(quick_run.out, broken)
    for path in (broken / "checkpoints").rglob("*"):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(b"\0" * 16)
    os.utime(root / "quick" / "results.json")  # the newest run: the page's default
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the session's persistent compilation cache, as `python -m benchmarks.app` uses the
    # benchmark's: Compare on the run's own task count reads quick_run's programs back
    with compile_time.persistent_cache(compile_cache, log=print):
        started = time.perf_counter()  # the page warms up its newest run from here on
        demo = app.launch(app_core.AppOptions(str(root), "127.0.0.1", port), block=False, quiet=True)
        yield types.SimpleNamespace(url=f"http://127.0.0.1:{port}/", root=str(root), demo=demo, started=started)
        demo.jobs.cancel_all()
        demo.close()
        shutil.rmtree(demo.out_dir, ignore_errors=True)
