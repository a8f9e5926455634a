"""Non-finite values: where they may appear, they are contained by a documented rule.

- the parallel (associative) scan clears a NaN or huge state at a reset exactly as the
  sequential scan does (`ssm_jax.scan`);
- a meta-update (MetaMAML, MAMLRL: `maml.core.meta_update`) whose loss, gradient or new params
  are not finite is skipped and counted (`skipped_steps`), by the guard `adapt` uses too
  (`adapt.core.finite_step`); an empty task batch is refused.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_jax import DiagonalSSM, SelectiveSSM
from ssm_jax.scan import linear_recurrence, matrix_recurrence

DIMS = dict(state_dim=4, input_dim=3, output_dim=2, hidden_dim=8)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e30])
def test_linear_recurrence_clears_bad_state_at_reset_in_both_paths(bad):
    """h_t = a_t * where(r_t, 0, h_{t-1}) + b_t: a bad b (or a) before the reset of step 4 never
    reaches steps >= 4, in both paths; a reference computed by hand gives the same numbers."""
    batch, time = 2, 7
    a = jnp.full((batch, time, 3), 0.5)
    b = jnp.tile(jnp.arange(1.0, time + 1.0)[None, :, None], (batch, 1, 3))
    b = b.at[0, 2].set(bad).at[1, 1, 0].set(bad)
    a = a.at[1, 2].set(bad)
    resets = jnp.zeros((batch, time), bool).at[:, 4].set(True)
    h0 = jnp.full((batch, 3), 2.0)
    seq = linear_recurrence(a, b, h0, resets, parallel=False)
    par = linear_recurrence(a, b, h0, resets, parallel=True)
    ref = np.zeros((batch, time, 3), np.float32)
    h = np.asarray(h0)
    for t in range(time):
        with np.errstate(over="ignore", invalid="ignore"):
            h = np.asarray(a[:, t]) * np.where(np.asarray(resets[:, t])[:, None], 0.0, h) + np.asarray(b[:, t])
            ref[:, t] = h
    np.testing.assert_allclose(seq[:, 4:], ref[:, 4:], rtol=1e-6)
    np.testing.assert_allclose(par[:, 4:], ref[:, 4:], rtol=1e-6)
    assert np.isfinite(np.asarray(par[:, 4:])).all()


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 16])
@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e30])
def test_matrix_recurrence_matches_a_loop_and_clears_bad_state_at_reset(chunk_size, bad):
    """h_t = where(r_t, 0, h_{t-1}) @ m + b_t against a NumPy loop, vmapped over 2 tasks: equal
    on every finite step, and a bad input before each row's reset (steps 5 and 9; 11 steps, so
    the chunks of 3 and 4 pad the last one, and 16 is one chunk) never reaches the steps from
    the reset on, whatever the chunk size."""
    tasks, batch, time, n = 2, 3, 11, 4
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    m = 0.4 * jax.random.normal(k[0], (tasks, n, n))
    b = jax.random.normal(k[1], (tasks, batch, time, n)).at[:, 0, 2].set(bad).at[:, 1, 6, 1].set(bad)
    h0 = jax.random.normal(k[2], (tasks, batch, n))
    resets = jnp.zeros((tasks, batch, time), bool).at[:, 0, 5].set(True).at[:, 1, 9].set(True)
    hs = jax.jit(jax.vmap(lambda *a: matrix_recurrence(*a, chunk_size=chunk_size)))(m, b, h0, resets)
    ref = np.zeros(b.shape, np.float32)
    h = np.asarray(h0)
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(time):
            h = np.einsum("tbn,tnm->tbm", np.where(np.asarray(resets[..., t])[..., None], 0.0, h),
                          np.asarray(m)) + np.asarray(b[:, :, t])
            ref[:, :, t] = h
    finite = np.isfinite(ref)
    np.testing.assert_allclose(np.asarray(hs)[finite], ref[finite], rtol=1e-4, atol=1e-5)
    assert np.isfinite(np.asarray(hs[:, 0, 5:])).all() and np.isfinite(np.asarray(hs[:, 1, 9:])).all()
    assert np.isfinite(np.asarray(hs[:, 2])).all()  # the row with no bad input


@pytest.mark.parametrize("chunk_size", [1, 4, 16])
def test_matrix_recurrence_gradient_ignores_a_bad_last_step_it_does_not_read(chunk_size):
    """A NaN input at the LAST step (10 steps: the chunks of 4 pad 2 more) and a loss that reads
    the steps before it only: the gradient is finite, as step by step (the padded steps never
    carry the bad state forward), and equal across chunk sizes."""
    m = 0.4 * jax.random.normal(jax.random.PRNGKey(0), (3, 3))
    b = jax.random.normal(jax.random.PRNGKey(1), (2, 10, 3)).at[:, -1].set(np.nan)
    h0 = jnp.ones((2, 3))

    def loss(m, b, resets):
        return jnp.sum(matrix_recurrence(m, b, h0, resets, chunk_size)[:, :-1] ** 2)

    reference = jax.grad(lambda m, b: jnp.sum(matrix_recurrence(m, b, h0, None, 1)[:, :-1] ** 2),
                         argnums=(0, 1))(m, b)
    for resets in (None, jnp.zeros((2, 10), bool).at[1, 3].set(True)):
        grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(m, b, resets)
        chex.assert_tree_all_finite(grads)
        if resets is None:
            chex.assert_trees_all_close(grads, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls", [DiagonalSSM, SelectiveSSM])
@pytest.mark.parametrize("bad", [np.nan, 1e30])
def test_parallel_model_is_clean_after_reset_like_sequential(cls, bad):
    """A NaN (or 1e30) input before a reset: the outputs after the reset are finite and equal
    in the parallel and sequential paths (issue: the parallel path stayed NaN)."""
    xs = jax.random.normal(jax.random.PRNGKey(0), (3, 12, DIMS["input_dim"]))
    xs = xs.at[:, 3].set(bad)
    resets = jnp.zeros((3, 12), bool).at[:, 6].set(True)
    seq, par = cls(**DIMS, parallel=False), cls(**DIMS, parallel=True)
    params = seq.init(jax.random.PRNGKey(1), xs[:, :2])
    ys_seq, c_seq = seq.apply(params, xs, resets=resets)
    ys_par, c_par = par.apply(params, xs, resets=resets)
    assert np.isfinite(np.asarray(ys_seq[:, 6:])).all()
    np.testing.assert_allclose(ys_par[:, 6:], ys_seq[:, 6:], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(c_par, c_seq, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------ MAML guard
def _sinusoid_maml(**kw):
    import flax.linen as nn

    from maml import MetaMAML

    mlp = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(1)])
    params = mlp.init(jax.random.PRNGKey(0), jnp.zeros((1, 1)))
    maml = MetaMAML(mlp, **{"inner_lr": 0.01, "outer_lr": 0.001, "num_inner_steps": 1, **kw})
    return maml, maml.init(params)


def _tasks(n=4):
    from maml import sample_sinusoid_tasks

    return sample_sinusoid_tasks(jax.random.PRNGKey(1), n)


def _same(a, b) -> bool:
    return all(np.array_equal(x, y, equal_nan=True) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("case", ["nan_support_y", "inf_query_x", "inner_lr_1e30", "outer_lr_1e39"])
def test_meta_update_skips_a_non_finite_step(case):
    """A step whose loss, gradient or new params are not finite leaves the whole state as it
    was and is counted in skipped_steps; the next finite batch trains normally."""
    kw = {"inner_lr_1e30": {"inner_lr": 1e30}, "outer_lr_1e39": {"outer_lr": 1e39}}.get(case, {})
    maml, state = _sinusoid_maml(**kw)
    tasks = _tasks()
    if case == "nan_support_y":
        tasks["support_y"] = tasks["support_y"].at[0, 0].set(jnp.nan)
    if case == "inf_query_x":
        tasks["query_x"] = tasks["query_x"].at[1, 2].set(jnp.inf)
    new, metrics = maml.meta_update(state, tasks=tasks)
    if case == "outer_lr_1e39":  # a finite loss and gradient, but the new params overflow
        assert np.isfinite(metrics["meta_loss"])
    assert int(metrics["skipped_steps"]) == 1
    assert _same(new, state)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(new.params))


def test_meta_update_finite_step_is_unchanged_by_the_guard():
    """A finite step is the plain update: Adam (maml.optimizer) on jax.grad of maml.meta_loss."""
    import optax

    maml, state = _sinusoid_maml()
    tasks = _tasks()
    new, metrics = maml.meta_update(state, tasks=tasks)
    assert int(metrics["skipped_steps"]) == 0 and int(new.step) == int(state.step) + 1
    grads = jax.grad(lambda p: maml.meta_loss(p, tasks, inner_lr=state.inner_lr))(state.params)
    updates, _ = maml.optimizer.update(grads, state.opt_state, state.params)
    expected = optax.apply_updates(state.params, updates)
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert not _same(new.params, state.params)


def test_empty_task_batch_is_refused():
    maml, state = _sinusoid_maml()
    tasks = jax.tree.map(lambda a: a[:0], _tasks())
    with pytest.raises(ValueError, match="at least one task"):
        maml.meta_update(state, tasks=tasks)
