"""Save and load parameter pytrees, atomically.

``save(path, params)`` serialises the pytree with flax's msgpack format to a temporary file in
the same directory, flushes it to disk, then ``os.replace``-s it over ``path``. A rename within a
directory is atomic, so a crash at any moment leaves either the previous file or the new one,
never a half-written file; a failed write (a full disk, an interrupt) removes the temporary file
and leaves an existing ``path`` byte-identical. ``load(path)`` returns the same nested dicts of
arrays (dtypes and values bit-exact). Training checkpoints with history and resume live in the
benchmark's orbax checkpoint manager; this is the small single-file format for a model's
parameters.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from typing import Any

import jax
import numpy as np
from flax import serialization


def _check_path(path: Any) -> str:
    """``path`` as a str naming a file, else ``ValueError`` naming ``path``."""
    try:
        path = os.fspath(path)
    except TypeError:
        raise ValueError(f"path must be a str or os.PathLike, got {type(path).__name__}") from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not path or path.endswith(os.sep) or os.path.basename(path) in ("", ".", ".."):
        raise ValueError(f"path must name a file, got {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"path {path!r} is a directory; it must name a file")
    return path


def _make_parent(path: str, directory: str) -> None:
    """Create ``directory`` (and its parents) unless an existing ancestor is not a directory."""
    ancestor = directory
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ValueError(f"path {path!r}: parent {ancestor!r} is not a directory")
    os.makedirs(directory, exist_ok=True)


def _check_leaves(state: Any) -> None:
    """Every leaf of the state dict must be a numeric array or number."""
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        if isinstance(leaf, (bool, int, float, complex, np.generic, np.ndarray)) and \
                np.asarray(leaf).dtype.kind in "biufc":
            continue
        raise ValueError(
            f"params must be a pytree of numeric arrays, but params{jax.tree_util.keystr(key_path)} "
            f"is {type(leaf).__name__}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def save(path: str | os.PathLike, params: Any) -> None:
    """Write ``params`` (a pytree of arrays, e.g. from ``model.init``) to ``path`` atomically.

    Missing parent directories are created. An existing file keeps its permission bits; a new
    one gets the usual ``0o666`` minus the umask.

    Raises:
      ValueError: ``path`` is not a str/PathLike naming a file, is a directory, or has an
        ancestor that is a regular file (``"parent ... is not a directory"``); ``params`` has a
        leaf that is not a numeric array.
      OSError: the write failed (e.g. ``errno.ENOSPC``, a full disk); the message names
        ``path``, whose previous content (if any) is unchanged, and no temporary file is left.
    """
    path = _check_path(path)
    directory = os.path.dirname(os.path.abspath(path))
    state = serialization.to_state_dict(jax.device_get(params))
    _check_leaves(state)
    data = serialization.msgpack_serialize(state)
    _make_parent(path, directory)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
        try:
            if os.path.exists(path):
                os.fchmod(fd, stat.S_IMODE(os.stat(path).st_mode))
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(err, OSError) and err.errno is not None:
            raise OSError(err.errno, f"ssm_jax.save could not write {path!r}: {os.strerror(err.errno)} "
                                     f"(any previous file at that path is unchanged)") from err
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: str | os.PathLike) -> Any:
    """Read parameters written by :func:`save`; nested dicts of ``numpy`` arrays.

    Raises ``FileNotFoundError`` (message ``"path: no parameter file at ..."``) if ``path`` is
    not an existing file, ``ValueError`` if it is not a str/PathLike or not a file written by
    :func:`save`.
    """
    try:
        path = os.fspath(path)
    except TypeError:
        raise ValueError(f"path must be a str or os.PathLike, got {type(path).__name__}") from None
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no parameter file at {path!r}")
    with open(path, "rb") as f:
        data = f.read()
    try:
        state = serialization.msgpack_restore(data)
    except Exception as err:  # msgpack raises several unrelated types on corrupt input
        raise ValueError(f"path: {path!r} is not a parameter file written by ssm_jax.save ({err})") from err
    return jax.tree.map(np.asarray, state)
