"""The functional core: guarded steps equal plain gradient descent when nothing
diverges; any non-finite or diverging step is undone exactly; jit/vmap/scan work
without retracing."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adapt import adapt_step, adapt_steps, make_optimizer, tree_all_finite


def _lstsq_problem(seed=0, n=24, d=3, k=2):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    w_true = rng.normal(size=(d, k)).astype(np.float32)
    y = (x @ w_true + 0.1 * rng.normal(size=(n, k))).astype(np.float32)
    params = {"w": jnp.zeros((d, k)), "b": jnp.zeros(k)}
    return params, (jnp.asarray(x), jnp.asarray(y))


def _objective(params, batch):
    x, y = batch
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def _numpy_gd(params, batch, lr, steps):
    """Reference: gradient descent with the analytic least-squares gradient."""
    x, y = (np.asarray(a, np.float64) for a in batch)
    w, b = np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64)
    n, k = y.shape
    for _ in range(steps):
        r = x @ w + b - y
        w = w - lr * 2.0 / (n * k) * x.T @ r
        b = b - lr * 2.0 / (n * k) * r.sum(0)
    return {"w": w, "b": b}


def test_steps_equal_plain_gradient_descent_when_nothing_diverges():
    params, batch = _lstsq_problem()
    opt = optax.sgd(0.1)
    new, _, info = jax.jit(
        lambda p, s, b: adapt_steps(p, s, b, objective=_objective, optimizer=opt, num_steps=7)
    )(params, opt.init(params), batch)
    ref = _numpy_gd(params, batch, 0.1, 7)
    chex.assert_trees_all_close(new, jax.tree.map(lambda a: a.astype(np.float32), ref), rtol=1e-4, atol=1e-5)
    assert int(info.steps) == 7 and int(info.rollbacks) == 0 and not bool(info.rolled_back)
    np.testing.assert_allclose(info.loss_before, _objective(params, batch), rtol=1e-6)
    np.testing.assert_allclose(info.loss_after, _objective(new, batch), rtol=1e-5)
    assert float(info.loss_after) < float(info.loss_before)


def test_single_step_equals_one_of_many():
    params, batch = _lstsq_problem(1)
    opt = optax.sgd(0.05)
    one, _, info = adapt_step(params, opt.init(params), batch, objective=_objective, optimizer=opt)
    ref = _numpy_gd(params, batch, 0.05, 1)
    chex.assert_trees_all_close(one, jax.tree.map(lambda a: a.astype(np.float32), ref), rtol=1e-4, atol=1e-6)
    assert int(info.steps) == 1


def test_nan_batch_is_rolled_back_and_params_unchanged():
    params, (x, y) = _lstsq_problem(2)
    params = jax.tree.map(lambda p: p + 0.3, params)
    x = x.at[3, 1].set(jnp.nan)
    opt = optax.adam(0.1)
    state = opt.init(params)
    new, new_state, info = adapt_steps(params, state, (x, y), objective=_objective, optimizer=opt,
                                       num_steps=5)
    assert bool(info.rolled_back) and int(info.steps) == 0 and int(info.rollbacks) == 1
    chex.assert_trees_all_equal(new, params)
    chex.assert_trees_all_equal(new_state, state)
    chex.assert_tree_all_finite(new)


@pytest.mark.parametrize("lr", [1e20, 1e38])
def test_huge_learning_rate_is_rolled_back_with_finite_params(lr):
    params, batch = _lstsq_problem(3)
    opt = optax.sgd(lr)
    new, _, info = adapt_steps(params, opt.init(params), batch, objective=_objective, optimizer=opt,
                               num_steps=4)
    assert bool(info.rolled_back)
    chex.assert_tree_all_finite(new)
    chex.assert_trees_all_equal(new, params)


def test_divergence_threshold_stops_at_the_step_that_crosses_it():
    params, batch = _lstsq_problem(4)
    # lr above 1/L: GD oscillates with growing loss; find when the plain loss first exceeds 50
    lr = 1.5
    losses, p = [], params
    for _ in range(30):
        p = jax.tree.map(lambda a, b: a.astype(np.float32), _numpy_gd(p, batch, lr, 1), p)
        losses.append(float(_objective(p, batch)))
    threshold = 50.0
    first_bad = next(i for i, l in enumerate(losses) if l > threshold)
    assert 0 < first_bad < 29
    opt = optax.sgd(lr)
    new, _, info = adapt_steps(params, opt.init(params), batch, objective=_objective, optimizer=opt,
                               num_steps=30, divergence_threshold=threshold)
    assert int(info.steps) == first_bad and bool(info.rolled_back)
    assert float(info.loss_after) <= threshold
    np.testing.assert_allclose(info.loss_after, losses[first_bad - 1], rtol=1e-3)
    # without the threshold nothing is rolled back (the losses stay finite)
    _, _, info2 = adapt_steps(params, opt.init(params), batch, objective=_objective, optimizer=opt,
                              num_steps=30)
    assert int(info2.steps) == 30 and not bool(info2.rolled_back)


def test_monotone_stops_at_the_first_step_that_increases_the_loss():
    params, batch = _lstsq_problem(5)
    lr = 1.5  # above 1/L: plain GD eventually oscillates with growing loss
    losses, p = [float(_objective(params, batch))], params
    for _ in range(30):
        p = jax.tree.map(lambda a, b: a.astype(np.float32), _numpy_gd(p, batch, lr, 1), p)
        losses.append(float(_objective(p, batch)))
    first_up = next(i for i in range(30) if losses[i + 1] > losses[i])
    opt = optax.sgd(lr)
    new, _, info = adapt_steps(params, opt.init(params), batch, objective=_objective, optimizer=opt,
                               num_steps=30, monotone=True)
    assert bool(info.rolled_back) and int(info.steps) == first_up
    np.testing.assert_allclose(info.loss_after, losses[first_up], rtol=1e-3)
    assert float(info.loss_after) <= float(info.loss_before)


def test_non_scalar_loss_is_a_clear_error():
    params, batch = _lstsq_problem()
    opt = optax.sgd(0.1)
    with pytest.raises(ValueError, match="scalar"):
        adapt_steps(params, opt.init(params), batch, objective=lambda p, b: (b[0] @ p["w"]) ** 2,
                    optimizer=opt, num_steps=1)
    with pytest.raises(ValueError, match="num_steps"):
        adapt_steps(params, opt.init(params), batch, objective=_objective, optimizer=opt, num_steps=-1)


def test_vmap_rows_roll_back_independently():
    params, (x, y) = _lstsq_problem(6)
    xs = jnp.stack([x, x.at[0, 0].set(jnp.inf)])
    ys = jnp.stack([y, y])
    opt = optax.sgd(0.1)
    f = jax.vmap(lambda b: adapt_steps(params, opt.init(params), b, objective=_objective, optimizer=opt,
                                       num_steps=3), in_axes=((0, 0),))
    new, _, info = f((xs, ys))
    np.testing.assert_array_equal(info.steps, [3, 0])
    np.testing.assert_array_equal(info.rolled_back, [False, True])
    solo, _, _ = adapt_steps(params, opt.init(params), (x, y), objective=_objective, optimizer=opt, num_steps=3)
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[0], new), solo, rtol=1e-6)
    chex.assert_trees_all_equal(jax.tree.map(lambda a: a[1], new), params)


def test_inside_scan_and_no_retracing():
    params, batch = _lstsq_problem(7)
    opt = make_optimizer("adam", 0.05)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(params, opt_state, batches):
        def body(carry, b):
            p, s = carry
            p, s, info = adapt_steps(p, s, b, objective=_objective, optimizer=opt, num_steps=2)
            return (p, s), info.loss_after
        return jax.lax.scan(body, (params, opt_state), batches)

    batches = jax.tree.map(lambda a: jnp.stack([a] * 4), batch)
    state = opt.init(params)
    for _ in range(3):
        (params, state), losses = run(params, state, batches)
        chex.assert_shape(losses, (4,))
        assert bool(jnp.all(jnp.diff(losses) < 0))


def test_tree_all_finite():
    assert bool(tree_all_finite({"a": jnp.ones(2), "n": jnp.arange(3)}))
    assert not bool(tree_all_finite({"a": jnp.array([1.0, math.inf])}))
    assert not bool(tree_all_finite([jnp.ones(1), jnp.array(jnp.nan)]))


def _log_objective(params, batch):
    """Finite for positive targets, non-finite on an empty buffer's zero placeholders."""
    x, y = batch
    return jnp.mean((x @ params["w"] + params["b"] - jnp.log(y)) ** 2)


@pytest.mark.parametrize("vmapped", [False, True])
def test_hybrid_objective_with_same_shaped_batches(vmapped):
    """`adapt.hybrid_objective` on a replayed batch shaped like the current one (the RL rule's
    case): two objective evaluations per trace, no branch; with an empty buffer of zero
    placeholders (non-finite under this objective) the loss and gradient are exactly the plain
    objective's under the same transformation, also under `vmap`; with a full one they are the
    pooled mean's."""
    from adapt import hybrid_objective

    params, (x, y) = _lstsq_problem(seed=3)
    current = (x, jnp.exp(y))
    replay = (x[::-1] + 0.5, jnp.exp(y[::-1]))
    placeholders = jax.tree.map(jnp.zeros_like, replay)
    calls = []

    def counted(p, b):
        calls.append(1)
        return _log_objective(p, b)

    hybrid = hybrid_objective(counted, 0.25)
    value_and_grad = jax.value_and_grad(hybrid)
    plain = jax.value_and_grad(_log_objective)
    pooled = jax.value_and_grad(lambda p: 0.75 * _log_objective(p, current) + 0.25 * _log_objective(p, replay))
    empty = (current, placeholders, jnp.zeros(3, bool))
    full = (current, replay, jnp.ones(3, bool))
    if vmapped:  # two tasks: one with an empty buffer, one with a full one
        both = jax.tree.map(lambda a, b: jnp.stack([a, b]), empty, full)
        (loss, grad) = jax.jit(jax.vmap(value_and_grad, in_axes=(None, 0)))(params, both)
        got_empty = (loss[0], jax.tree.map(lambda g: g[0], grad))
        got_full = (loss[1], jax.tree.map(lambda g: g[1], grad))
        currents = jax.tree.map(lambda a: jnp.stack([a, a]), current)
        loss, grad = jax.jit(jax.vmap(plain, in_axes=(None, 0)))(params, currents)
        want_empty = (loss[0], jax.tree.map(lambda g: g[0], grad))
    else:
        step = jax.jit(value_and_grad)
        got_empty, got_full = step(params, empty), step(params, full)
        want_empty = jax.jit(plain)(params, current)
    assert len(calls) == 2  # one trace (the same shapes either way), two evaluations in it
    chex.assert_trees_all_equal(got_empty, want_empty)
    chex.assert_tree_all_finite(got_empty)
    chex.assert_trees_all_close(got_full, pooled(params), rtol=1e-6)
