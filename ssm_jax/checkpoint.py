"""Save and load parameter pytrees, atomically.

``save(path, params)`` serialises the pytree with flax's msgpack format to a temporary file in
the same directory, flushes it to disk, then ``os.replace``-s it over ``path``. A rename within a
directory is atomic, so a crash at any moment leaves either the previous file or the new one,
never a half-written file. ``load(path)`` returns the same nested dicts of arrays (dtypes and
values bit-exact). Training checkpoints with history and resume live in the benchmark's orbax
checkpoint manager; this is the small single-file format for a model's parameters.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import jax
import numpy as np
from flax import serialization


def save(path: str | os.PathLike, params: Any) -> None:
    """Write ``params`` (a pytree of arrays, e.g. from ``model.init``) to ``path`` atomically."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    state = serialization.to_state_dict(jax.device_get(params))
    data = serialization.msgpack_serialize(state)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".msgpack", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: str | os.PathLike) -> Any:
    """Read parameters written by :func:`save`; nested dicts of ``numpy`` arrays."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no parameter file at {path!r}")
    with open(path, "rb") as f:
        data = f.read()
    try:
        state = serialization.msgpack_restore(data)
    except Exception as err:  # msgpack raises several unrelated types on corrupt input
        raise ValueError(f"path: {path!r} is not a parameter file written by ssm_jax.save ({err})") from err
    return jax.tree.map(np.asarray, state)
