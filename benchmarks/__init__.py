"""Benchmarks of the library (`python -m benchmarks.<name>`) and the use of a finished run.

`benchmarks.load_run(DIR)` loads a run of `python -m benchmarks.cartpole` (see
`benchmarks.runs`); it is imported on first use, so `import benchmarks` does not import JAX.
"""

__all__ = ["load_run"]


def __getattr__(name):
    if name == "load_run":
        from benchmarks.runs import load_run

        return load_run
    raise AttributeError(f"module 'benchmarks' has no attribute {name!r}")
