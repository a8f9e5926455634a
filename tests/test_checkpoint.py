"""ssm_jax.save / ssm_jax.load: exact round trips, atomic writes, clear errors."""

import errno
import os
import re
import stat

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssm_jax
from ssm_jax import SSM, SSMPolicy


def _params(seed=0):
    model = SSMPolicy(obs_dim=4, action_dim=2, core="diagonal", state_dim=8, hidden_dim=16, discrete=False)
    return model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 3, 4)))


def test_round_trip_is_bit_exact(tmp_path):
    params = _params()
    path = tmp_path / "nested" / "params.msgpack"
    ssm_jax.save(path, params)
    loaded = ssm_jax.load(path)
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    # Loaded params drive the model to the same outputs.
    model = SSM(state_dim=4, input_dim=3, output_dim=2, hidden_dim=8)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3))
    p = model.init(jax.random.PRNGKey(2), xs)
    ssm_jax.save(tmp_path / "ssm.msgpack", p)
    chex.assert_trees_all_equal(model.apply(ssm_jax.load(tmp_path / "ssm.msgpack"), xs), model.apply(p, xs))


def test_crash_mid_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "params.msgpack"
    old = _params(0)
    ssm_jax.save(path, old)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        ssm_jax.save(path, _params(1))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.msgpack"]  # no temp file left
    chex.assert_trees_all_equal(ssm_jax.load(path), jax.device_get(old))


def test_overwrite_replaces_content(tmp_path):
    path = tmp_path / "params.msgpack"
    ssm_jax.save(path, _params(0))
    new = _params(1)
    ssm_jax.save(path, new)
    chex.assert_trees_all_equal(ssm_jax.load(path), jax.device_get(new))


def test_missing_and_corrupt_files_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no parameter file"):
        ssm_jax.load(tmp_path / "absent.msgpack")
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"\xc1 definitely not msgpack")
    with pytest.raises(ValueError, match="not a parameter file"):
        ssm_jax.load(bad)


def test_overwrite_keeps_the_files_mode_and_a_new_file_follows_the_umask(tmp_path):
    path = tmp_path / "params.msgpack"
    old_umask = os.umask(0o022)
    try:
        ssm_jax.save(path, _params(0))
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # 0o666 minus the umask, as open() gives
        for mode in (0o644, 0o600, 0o640):
            os.chmod(path, mode)
            ssm_jax.save(path, _params(1))
            assert stat.S_IMODE(os.stat(path).st_mode) == mode
    finally:
        os.umask(old_umask)
    chex.assert_trees_all_equal(ssm_jax.load(path), jax.device_get(_params(1)))


def test_a_path_under_a_regular_file_is_refused_naming_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"keep me")
    for path in (blocker / "p.msgpack", blocker / "a" / "b" / "p.msgpack"):
        with pytest.raises(ValueError, match=re.escape(f"path '{path}': parent '{blocker}' is not a directory")):
            ssm_jax.save(path, _params(0))
    assert blocker.read_bytes() == b"keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    with pytest.raises(ValueError, match="is a directory"):
        ssm_jax.save(tmp_path, _params(0))


def test_save_fails_cleanly_on_a_full_disk(tmp_path, monkeypatch):
    """ENOSPC in the middle of the write: the previous file is byte-identical, its mode kept,
    no temporary file survives, and the error names the path."""
    path = tmp_path / "p.msgpack"
    ssm_jax.save(path, _params(0))
    os.chmod(path, 0o640)
    before = path.read_bytes()
    real_write, writes = os.write, []

    def full_disk(fd, data):
        writes.append(real_write(fd, bytes(data[: len(data) // 2])))  # half of it lands, then ENOSPC
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError) as info:
        ssm_jax.save(path, _params(1))
    monkeypatch.undo()
    assert writes and writes[0] > 0
    assert info.value.errno == errno.ENOSPC and str(path) in str(info.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.msgpack"]
    assert (os.stat(path).st_mode & 0o777) == 0o640
