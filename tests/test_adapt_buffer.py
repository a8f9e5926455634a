"""Ring buffer: capacity, wrap-around order against a Python reference, sampling
only from filled slots (uniformly), the empty buffer, jit without retracing."""

import collections

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapt import buffer_add, buffer_contents, buffer_init, buffer_init_like, buffer_sample


def _items(start, n):
    """n samples numbered start..start+n-1: observations (n, 3) and targets (n,)."""
    ids = jnp.arange(start, start + n, dtype=jnp.float32)
    return {"observations": jnp.stack([ids, -ids, 2 * ids], axis=1), "targets": ids}


def test_init_shapes_and_empty_state():
    buf = buffer_init_like(_items(0, 2), capacity=5)
    assert buf.capacity == 5
    chex.assert_shape(buf.data["observations"], (5, 3))
    chex.assert_shape(buf.data["targets"], (5,))
    assert int(buf.size) == 0 and int(buf.insert_pos) == 0


def test_wrap_around_order_matches_a_python_deque():
    capacity = 5
    buf = buffer_init_like(_items(0, 1), capacity)
    ref = collections.deque(maxlen=capacity)
    added = 0
    for n in [1, 2, 3, 0, 4, 7, 1, 5, 2]:  # includes n == 0 and n > capacity
        buf = buffer_add(buf, _items(added, n))
        ref.extend(range(added, added + n))
        added += n
        assert int(buf.size) == min(added, capacity)  # capacity respected
        assert int(buf.insert_pos) == added % capacity
        chex.assert_shape(buf.data["targets"], (capacity,))
        contents = buffer_contents(buf)
        np.testing.assert_array_equal(contents["targets"], np.array(ref, np.float32))
        np.testing.assert_array_equal(contents["observations"][:, 1], -np.array(ref, np.float32))
        # physical layout: sample i lives in slot i % capacity
        for i in ref:
            assert float(buf.data["targets"][i % capacity]) == i


def test_wrap_around_overwrites_oldest_slots_in_place():
    buf = buffer_init_like(_items(0, 1), capacity=4)
    buf = buffer_add(buf, _items(0, 6))  # 0..5 -> slots hold [4, 5, 2, 3]
    np.testing.assert_array_equal(buf.data["targets"], [4.0, 5.0, 2.0, 3.0])
    assert int(buf.insert_pos) == 2


def test_sampling_only_from_filled_slots_and_uniform():
    buf = buffer_init_like(_items(0, 1), capacity=16)
    buf = buffer_add(buf, _items(1, 4))  # ids 1..4 in slots 0..3; slots 4..15 are zeros
    samples, valid = buffer_sample(buf, jax.random.PRNGKey(0), 4000)
    assert bool(jnp.all(valid))
    ids = np.asarray(samples["targets"])
    assert set(np.unique(ids)) == {1.0, 2.0, 3.0, 4.0}
    counts = np.array([(ids == k).sum() for k in (1, 2, 3, 4)])
    # uniform: each count is Binomial(4000, 1/4), sd ~ 27; allow 5 sd
    assert np.all(np.abs(counts - 1000) < 140), counts
    # samples are whole rows (observations consistent with targets)
    np.testing.assert_array_equal(samples["observations"][:, 2], 2 * ids)


def test_sampling_after_wrap_covers_every_slot():
    buf = buffer_init_like(_items(0, 1), capacity=3)
    buf = buffer_add(buf, _items(0, 5))  # holds 2, 3, 4
    samples, _ = buffer_sample(buf, jax.random.PRNGKey(1), 600)
    assert set(np.unique(np.asarray(samples["targets"]))) == {2.0, 3.0, 4.0}


def test_empty_buffer_samples_are_zero_and_invalid():
    buf = buffer_init({"observations": jnp.zeros(3), "targets": jnp.zeros(())}, capacity=4)
    samples, valid = buffer_sample(buf, jax.random.PRNGKey(0), 6)
    chex.assert_shape(valid, (6,))
    assert not bool(jnp.any(valid))
    chex.assert_shape(samples["observations"], (6, 3))
    assert float(jnp.abs(samples["observations"]).sum()) == 0.0
    assert buffer_contents(buf)["targets"].shape == (0,)


def test_add_and_sample_jit_without_retracing_as_the_buffer_fills():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def add_then_sample(buf, items, key):
        buf = buffer_add(buf, items)
        return buf, buffer_sample(buf, key, 8)

    buf = buffer_init_like(_items(0, 1), capacity=6)
    for t in range(5):
        buf, (samples, valid) = add_then_sample(buf, _items(3 * t, 3), jax.random.PRNGKey(t))
        assert bool(jnp.all(valid))
        lo = max(0, 3 * t + 3 - 6)
        assert float(samples["targets"].min()) >= lo and float(samples["targets"].max()) <= 3 * t + 2


def test_mismatched_samples_raise_clear_errors():
    buf = buffer_init_like(_items(0, 1), capacity=4)
    with pytest.raises(ValueError, match="shape"):
        buffer_add(buf, {"observations": jnp.zeros((2, 5)), "targets": jnp.zeros(2)})
    with pytest.raises(ValueError, match="structure"):
        buffer_add(buf, {"observations": jnp.zeros((2, 3))})
    with pytest.raises(ValueError, match="leading sample axis"):
        buffer_add(buf, {"observations": jnp.zeros((2, 3)), "targets": jnp.zeros(3)})
    with pytest.raises(ValueError, match="capacity"):
        buffer_init_like(_items(0, 1), capacity=0)
