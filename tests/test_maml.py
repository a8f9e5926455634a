"""Tests of supervised MAML (maml.core, maml.MetaMAML): gradients against
independent references (finite differences, hand-written formulas, Python loops)."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from maml import MetaMAML, core, sample_sinusoid_tasks


# ----------------------------------------------------------------- helpers
def tiny_apply(params, x):
    """A 1-hidden-layer tanh net; x (B, 2) -> (B, 1)."""
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


def tiny_params(key, dtype=jnp.float32):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "w1": jax.random.normal(k1, (2, 3), dtype) * 0.8,
        "b1": jax.random.normal(k2, (3,), dtype) * 0.1,
        "w2": jax.random.normal(k3, (3, 1), dtype) * 0.8,
        "b2": jnp.zeros((1,), dtype),
    }


def tiny_tasks(key, num_tasks=3, shots=5, dtype=jnp.float32):
    ks = jax.random.split(key, 4)
    sx = jax.random.normal(ks[0], (num_tasks, shots, 2), dtype)
    qx = jax.random.normal(ks[1], (num_tasks, shots, 2), dtype)
    w = jax.random.normal(ks[2], (num_tasks, 2, 1), dtype)
    return {"support_x": sx, "support_y": jnp.sin(sx @ w), "query_x": qx, "query_y": jnp.sin(qx @ w)}


def mse(p, x, y):
    return jnp.mean((tiny_apply(p, x) - y) ** 2)


mse_grad = jax.jit(jax.grad(mse))


def manual_adapt(params, x, y, lr, steps, first_order=False):
    """Reference inner loop: a Python loop of plain gradient steps."""
    for _ in range(steps):
        g = mse_grad(params, x, y)
        if first_order:
            g = jax.lax.stop_gradient(g)
        params = jax.tree.map(lambda p, gi: p - lr * gi, params, g)
    return params


def central_fd_grad(f, params, eps):
    """Central finite differences of scalar f over every entry of every leaf."""
    leaves, treedef = jax.tree.flatten(params)
    grads = []
    for i, leaf in enumerate(leaves):
        flat = np.asarray(leaf).ravel()
        g = np.zeros_like(flat)
        for j in range(flat.size):
            for sign in (1.0, -1.0):
                pert = flat.copy()
                pert[j] += sign * eps
                new = list(leaves)
                new[i] = jnp.asarray(pert.reshape(leaf.shape))
                g[j] += sign * float(f(jax.tree.unflatten(treedef, new))) / (2 * eps)
        grads.append(g.reshape(leaf.shape))
    return jax.tree.unflatten(treedef, grads)


# ------------------------------------------------------------ gradients
def test_second_order_meta_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        params = tiny_params(jax.random.key(0), jnp.float64)
        tasks = tiny_tasks(jax.random.key(1), dtype=jnp.float64)
        maml = MetaMAML(tiny_apply, inner_lr=0.3, num_inner_steps=2)
        loss = jax.jit(lambda p: maml.meta_loss(p, tasks))
        grad = jax.grad(lambda p: maml.meta_loss(p, tasks))(params)
        fd = central_fd_grad(loss, params, eps=1e-5)
        chex.assert_trees_all_close(grad, fd, rtol=1e-6, atol=1e-8)
        # the second-order term matters here: the first-order gradient is far off
        fo = MetaMAML(tiny_apply, inner_lr=0.3, num_inner_steps=2, first_order=True)
        fo_grad = jax.grad(lambda p: fo.meta_loss(p, tasks))(params)
        diff = optax.tree.norm(jax.tree.map(jnp.subtract, fo_grad, fd))
        assert diff > 1e-3 * optax.tree.norm(fd)


def test_meta_sgd_learned_lr_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        params = tiny_params(jax.random.key(2), jnp.float64)
        tasks = tiny_tasks(jax.random.key(3), dtype=jnp.float64)
        maml = MetaMAML(tiny_apply, inner_lr=0.2, num_inner_steps=2, learn_inner_lr=True)
        lrs = maml.init(params).inner_lr
        lrs = jax.tree.map(lambda l, p: l + 0.05 * jnp.cos(jnp.arange(p.size).reshape(p.shape)), lrs, params)
        both = (params, lrs)
        f = lambda pl: maml.meta_loss(pl[0], tasks, inner_lr=pl[1])
        grad = jax.grad(f)(both)
        fd = central_fd_grad(jax.jit(f), both, eps=1e-5)
        chex.assert_trees_all_close(grad, fd, rtol=1e-6, atol=1e-8)


def test_anil_masked_second_order_meta_gradient_matches_finite_differences():
    """adapt_filter (ANIL): only w2, b2 take inner steps, yet the second-order meta-gradient of
    every leaf (the frozen torso included, through the adapted head's dependence on it) equals
    float64 central finite differences, and differs from the unmasked one."""
    with jax.enable_x64(True):
        params = tiny_params(jax.random.key(40), jnp.float64)
        tasks = tiny_tasks(jax.random.key(41), dtype=jnp.float64)
        anil = MetaMAML(tiny_apply, inner_lr=0.4, num_inner_steps=2, adapt_filter=["w2", "b2"])
        anil.init(params)
        loss = lambda p: anil.meta_loss(p, tasks)  # noqa: E731
        grad = jax.jit(jax.grad(loss))(params)
        fd = central_fd_grad(jax.jit(loss), params, eps=1e-5)
        chex.assert_trees_all_close(grad, fd, rtol=1e-6, atol=1e-8)
        # reference loss with the mask written out: the torso stays, the head takes two steps
        def masked(p):
            total = 0.0
            for i in range(tasks["support_x"].shape[0]):
                a = p
                for _ in range(2):
                    g = jax.grad(mse)(a, tasks["support_x"][i], tasks["support_y"][i])
                    a = {**a, "w2": a["w2"] - 0.4 * g["w2"], "b2": a["b2"] - 0.4 * g["b2"]}
                total = total + mse(a, tasks["query_x"][i], tasks["query_y"][i])
            return total / tasks["support_x"].shape[0]
        np.testing.assert_allclose(float(loss(params)), float(masked(params)), rtol=1e-12)
        full = MetaMAML(tiny_apply, inner_lr=0.4, num_inner_steps=2)
        full_grad = jax.jit(jax.grad(lambda p: full.meta_loss(p, tasks)))(params)
        assert optax.tree.norm(jax.tree.map(jnp.subtract, full_grad, grad)) > 1e-3 * optax.tree.norm(grad)


def test_remat_inner_gives_the_same_meta_gradient():
    """jax.checkpoint of each inner step recomputes instead of storing: the same second-order
    meta-gradient, of the params and of the Meta-SGD step sizes."""
    params = tiny_params(jax.random.key(42))
    tasks = tiny_tasks(jax.random.key(43))
    kw = dict(inner_lr=0.3, num_inner_steps=3, learn_inner_lr=True)
    plain, remat = MetaMAML(tiny_apply, **kw), MetaMAML(tiny_apply, **kw, remat_inner=True)
    lrs = plain.init(params).inner_lr
    grads = [jax.jit(jax.grad(lambda p, l, m=m: m.meta_loss(p, tasks, inner_lr=l), argnums=(0, 1)))(params, lrs)
             for m in (plain, remat)]
    chex.assert_trees_all_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)
    assert optax.tree.norm(grads[0][0]) > 0 and optax.tree.norm(grads[0][1]) > 0


def test_first_order_matches_first_order_formula():
    params = tiny_params(jax.random.key(4))
    tasks = tiny_tasks(jax.random.key(5))
    lr, steps = 0.3, 3
    fo = MetaMAML(tiny_apply, inner_lr=lr, num_inner_steps=steps, first_order=True)
    grad = jax.grad(lambda p: fo.meta_loss(p, tasks))(params)
    # FOMAML: mean over tasks of the query gradient evaluated at the adapted params
    per_task = []
    for i in range(tasks["support_x"].shape[0]):
        adapted = manual_adapt(params, tasks["support_x"][i], tasks["support_y"][i], lr, steps)
        per_task.append(mse_grad(adapted, tasks["query_x"][i], tasks["query_y"][i]))
    expected = jax.tree.map(lambda *g: sum(g) / len(g), *per_task)
    chex.assert_trees_all_close(grad, expected, rtol=1e-5, atol=1e-6)
    so = MetaMAML(tiny_apply, inner_lr=lr, num_inner_steps=steps, first_order=False)
    so_grad = jax.grad(lambda p: so.meta_loss(p, tasks))(params)
    assert optax.tree.norm(jax.tree.map(jnp.subtract, so_grad, grad)) > 1e-3 * optax.tree.norm(grad)


def test_first_order_meta_sgd_lr_gradient_formula():
    # one step: adapted = p - a * sg(g_s)  =>  dL/da = -g_s * dL_q/dadapted (elementwise)
    params = tiny_params(jax.random.key(6))
    tasks = tiny_tasks(jax.random.key(7), num_tasks=1)
    m = MetaMAML(tiny_apply, inner_lr=0.1, num_inner_steps=1, first_order=True, learn_inner_lr=True)
    lrs = m.init(params).inner_lr
    g_lr = jax.grad(lambda a: m.meta_loss(params, tasks, inner_lr=a))(lrs)
    sx, sy, qx, qy = (tasks[k][0] for k in core.TASK_KEYS)
    g_s = jax.grad(mse)(params, sx, sy)
    adapted = jax.tree.map(lambda p, g: p - 0.1 * g, params, g_s)
    g_q = jax.grad(mse)(adapted, qx, qy)
    chex.assert_trees_all_close(g_lr, jax.tree.map(lambda a, b: -a * b, g_s, g_q), rtol=1e-5, atol=1e-7)


def test_zero_inner_lr_gives_plain_query_gradient():
    params = tiny_params(jax.random.key(8))
    tasks = tiny_tasks(jax.random.key(9))
    m = MetaMAML(tiny_apply, inner_lr=0.0, num_inner_steps=3)
    grad = jax.grad(lambda p: m.meta_loss(p, tasks))(params)
    plain = jax.grad(lambda p: jnp.mean(jax.vmap(lambda x, y: mse(p, x, y))(tasks["query_x"], tasks["query_y"])))(params)
    chex.assert_trees_all_close(grad, plain, rtol=1e-6, atol=1e-7)


def test_vmapped_meta_loss_equals_python_loop():
    params = tiny_params(jax.random.key(10))
    tasks = tiny_tasks(jax.random.key(11), num_tasks=4)
    m = MetaMAML(tiny_apply, inner_lr=0.2, num_inner_steps=2)
    batched = m.meta_loss(params, tasks)
    losses = []
    for i in range(4):
        adapted = manual_adapt(params, tasks["support_x"][i], tasks["support_y"][i], 0.2, 2)
        losses.append(mse(adapted, tasks["query_x"][i], tasks["query_y"][i]))
        single = m.outer_loop(m.inner_loop(params, tasks["support_x"][i], tasks["support_y"][i]),
                              tasks["query_x"][i], tasks["query_y"][i])
        np.testing.assert_allclose(single, losses[-1], rtol=1e-5)
    np.testing.assert_allclose(batched, np.mean(losses), rtol=1e-5)


def test_adapt_filter_adapts_only_selected_leaves():
    params = tiny_params(jax.random.key(12))
    tasks = tiny_tasks(jax.random.key(13), num_tasks=1)
    sx, sy = tasks["support_x"][0], tasks["support_y"][0]
    m = MetaMAML(tiny_apply, inner_lr=0.5, num_inner_steps=1, adapt_filter=["w2", "b2"])
    m.init(params)
    adapted = m.inner_loop(params, sx, sy)
    g = jax.grad(mse)(params, sx, sy)
    for name in ("w1", "b1"):
        np.testing.assert_array_equal(adapted[name], params[name])
    for name in ("w2", "b2"):
        np.testing.assert_allclose(adapted[name], params[name] - 0.5 * g[name], rtol=1e-6)
    with pytest.raises(ValueError, match="adapt_filter"):
        MetaMAML(tiny_apply, adapt_filter=["nothing_matches"]).init(params)


def test_tuple_output_models_use_first_element():
    params = tiny_params(jax.random.key(14))
    tasks = tiny_tasks(jax.random.key(15))
    plain = MetaMAML(tiny_apply, num_inner_steps=2, inner_lr=0.1)
    with_carry = MetaMAML(lambda p, x: (tiny_apply(p, x), jnp.zeros((x.shape[0], 7))),
                          num_inner_steps=2, inner_lr=0.1)
    np.testing.assert_allclose(plain.meta_loss(params, tasks), with_carry.meta_loss(params, tasks), rtol=1e-6)


# ------------------------------------------------------------ the inner step
def test_scale_by_inner_lr_is_minus_lr_times_grad_on_adapted_leaves_and_zero_on_frozen():
    params = {"w": jnp.array([1.0, -0.0, 3.0]), "b": jnp.array([-0.0, 2.0])}
    grads = {"w": jnp.array([0.5, -2.0, 1.5]), "b": jnp.array([4.0, -1.0])}
    lrs = {"w": jnp.array([0.1, 0.2, 0.3]), "b": jnp.array([0.5, 0.25])}
    mask = {"w": True, "b": False}
    sgd = core.scale_by_inner_lr(lrs, mask)
    updates, state = jax.jit(sgd.update)(grads, sgd.init(params))
    assert isinstance(state, optax.EmptyState)
    np.testing.assert_array_equal(updates["w"], -(np.asarray(lrs["w"]) * np.asarray(grads["w"])))
    np.testing.assert_array_equal(updates["b"], np.zeros(2, np.float32))
    new = optax.apply_updates(params, updates)
    # frozen leaves come back bit for bit (the sign of -0.0 included), adapted ones are p - lr * g
    assert np.asarray(new["b"]).tobytes() == np.asarray(params["b"]).tobytes()
    np.testing.assert_array_equal(new["w"], np.asarray(params["w"]) - np.asarray(lrs["w"]) * np.asarray(grads["w"]))
    # no mask: every leaf adapts
    all_updates, _ = core.scale_by_inner_lr(lrs).update(grads, optax.EmptyState())
    np.testing.assert_array_equal(all_updates["b"], -(np.asarray(lrs["b"]) * np.asarray(grads["b"])))

    # differentiable w.r.t. the step sizes under jit: d/dlr sum(c * (p - lr * g)) = -c * g (adapted), 0 (frozen)
    c = {"w": jnp.array([1.0, 2.0, -1.0]), "b": jnp.array([3.0, 1.0])}

    def f(lr):
        u, _ = core.scale_by_inner_lr(lr, mask).update(grads, optax.EmptyState())
        new = optax.apply_updates(params, u)
        return sum(jnp.sum(c[k] * new[k]) for k in new)

    g_lr = jax.jit(jax.grad(f))(lrs)
    np.testing.assert_allclose(g_lr["w"], -np.asarray(c["w"]) * np.asarray(grads["w"]), rtol=1e-6)
    np.testing.assert_array_equal(g_lr["b"], np.zeros(2, np.float32))

    with pytest.raises(ValueError, match="structure of the params"):
        core.scale_by_inner_lr(0.1).update(grads, optax.EmptyState())
    with pytest.raises(ValueError, match="broadcast"):
        core.scale_by_inner_lr({"w": jnp.ones(2), "b": jnp.ones(2)}).update(grads, optax.EmptyState())


def test_inner_sgd_step_returns_frozen_leaves_as_they_are():
    params = tiny_params(jax.random.key(20))
    grads = jax.tree.map(lambda p: jnp.cos(p) + 0.5, params)
    lrs = jax.tree.map(lambda p: jnp.full(p.shape, 0.3, p.dtype), params)
    mask = {"w1": False, "b1": False, "w2": True, "b2": True}
    new = core.inner_sgd_step(params, grads, lrs, mask)
    for name in ("w1", "b1"):
        assert new[name] is params[name]
    for name in ("w2", "b2"):
        np.testing.assert_array_equal(new[name], np.asarray(params[name]) - np.float32(0.3) * np.asarray(grads[name]))
    chex.assert_trees_all_equal(core.inner_sgd_step(params, grads, lrs),
                                jax.tree.map(lambda p, g: p - 0.3 * g, params, grads))


def test_init_inner_lr_is_a_params_shaped_tree_of_the_value():
    params = tiny_params(jax.random.key(21))
    lrs = core.init_inner_lr(params, 0.25)
    chex.assert_trees_all_equal_shapes_and_dtypes(lrs, params)
    assert all(bool(jnp.all(l == np.float32(0.25))) for l in jax.tree.leaves(lrs))
    for learn in (False, True):
        state = MetaMAML(tiny_apply, inner_lr=0.25, learn_inner_lr=learn).init(params)
        chex.assert_trees_all_equal(state.inner_lr, lrs)


def _adam_reference(grads_per_step, start, outer_lr, clip=None, b1=0.9, b2=0.999, eps=1e-8, clipped=None):
    """Explicit Adam (after global-norm clipping) over a flat list of leaves; returns the final
    iterate. ``clipped``, a list, receives per step whether the clip changed the gradient."""
    x = [np.asarray(a, np.float64) for a in start]
    m = [np.zeros_like(a) for a in x]
    v = [np.zeros_like(a) for a in x]
    for t, grad_fn in enumerate(grads_per_step, start=1):
        g = [np.asarray(a, np.float64) for a in grad_fn(x)]
        if clip is not None:
            norm = np.sqrt(sum(np.sum(a ** 2) for a in g))
            if clipped is not None:
                clipped.append(bool(norm > clip))
            if norm >= clip:
                g = [a * clip / norm for a in g]
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        v = [b2 * vi + (1 - b2) * gi ** 2 for vi, gi in zip(v, g)]
        x = [xi - outer_lr * (mi / (1 - b1 ** t)) / (np.sqrt(vi / (1 - b2 ** t)) + eps)
             for xi, mi, vi in zip(x, m, v)]
    return x


@pytest.mark.parametrize("learn_inner_lr", [False, True])
def test_meta_update_matches_explicit_meta_sgd_adam_reference(learn_inner_lr):
    """Three meta-updates against a hand-written reference: Python loops over tasks and inner
    steps ``p - lr * g`` with per-leaf step sizes, the meta-gradient by jax.grad of that loop,
    global-norm clipping over the learned meta-parameters only, and Adam written out. A frozen
    inner_lr is exactly unchanged and the clip norm does not see its (absent) gradient."""
    with jax.enable_x64(True):
        params = tiny_params(jax.random.key(22), jnp.float64)
        m = MetaMAML(tiny_apply, inner_lr=0.3, outer_lr=0.01, num_inner_steps=2, grad_clip=0.05,
                     learn_inner_lr=learn_inner_lr)
        state = m.init(params)
        lr0 = state.inner_lr
        batches = [tiny_tasks(jax.random.key(30 + i), dtype=jnp.float64) for i in range(3)]
        for tasks in batches:
            state, metrics = m.meta_update(state, tasks)

        leaves, treedef = jax.tree.flatten(params)
        n = len(leaves)

        def reference_loss(p, lr, tasks):
            total = 0.0
            for i in range(tasks["support_x"].shape[0]):
                a = p
                for _ in range(2):
                    g = jax.grad(mse)(a, tasks["support_x"][i], tasks["support_y"][i])
                    a = jax.tree.map(lambda ai, li, gi: ai - li * gi, a, lr, g)
                total = total + mse(a, tasks["query_x"][i], tasks["query_y"][i])
            return total / tasks["support_x"].shape[0]

        def grad_fn(tasks):
            def fn(x):
                p = jax.tree.unflatten(treedef, [jnp.asarray(a) for a in x[:n]])
                if learn_inner_lr:
                    lr = jax.tree.unflatten(treedef, [jnp.asarray(a) for a in x[n:]])
                    gp, gl = jax.grad(reference_loss, argnums=(0, 1))(p, lr, tasks)
                    return jax.tree.leaves(gp) + jax.tree.leaves(gl)
                return jax.tree.leaves(jax.grad(reference_loss)(p, lr0, tasks))
            return fn

        start = leaves + (jax.tree.leaves(lr0) if learn_inner_lr else [])
        clipped = []
        ref = _adam_reference([grad_fn(t) for t in batches], start, 0.01, clip=0.05, clipped=clipped)
        assert any(clipped), "the clip must act on at least one step, or it is not tested"
        # without the clip Adam would land elsewhere: grad_clip is applied, not just accepted
        unclipped = _adam_reference([grad_fn(t) for t in batches], start, 0.01)
        assert max(float(np.max(np.abs(a - b))) for a, b in zip(ref, unclipped)) > 1e-6
        chex.assert_trees_all_close(state.params, jax.tree.unflatten(treedef, ref[:n]), rtol=1e-9, atol=1e-12)
        if learn_inner_lr:
            chex.assert_trees_all_close(state.inner_lr, jax.tree.unflatten(treedef, ref[n:]), rtol=1e-9, atol=1e-12)
            assert max(float(jnp.max(jnp.abs(a - b))) for a, b in
                       zip(jax.tree.leaves(state.inner_lr), jax.tree.leaves(lr0))) > 1e-4
        else:
            chex.assert_trees_all_equal(state.inner_lr, lr0)
        assert int(state.step) == 3


def test_frozen_inner_lr_is_unchanged_by_meta_update_and_has_no_optimizer_state():
    params = tiny_params(jax.random.key(23))
    m = MetaMAML(tiny_apply, inner_lr=0.2, num_inner_steps=2, grad_clip=1.0)
    state = m.init(params)
    lr0 = state.inner_lr
    for i in range(3):
        state, _ = m.meta_update(state, tiny_tasks(jax.random.key(40 + i)))
    chex.assert_trees_all_equal(state.inner_lr, lr0)
    # the outer optimiser's state covers the params only; with learn_inner_lr, (params, inner_lr)
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(m.optimizer.init(params))
    learned = MetaMAML(tiny_apply, inner_lr=0.2, learn_inner_lr=True, grad_clip=1.0)
    s = learned.init(params)
    assert jax.tree.structure(s.opt_state) == jax.tree.structure(learned.optimizer.init((params, s.inner_lr)))


# ------------------------------------------------------------ the seeds' argument names
def test_seed_keyword_forms_match_the_positional_calls():
    params = tiny_params(jax.random.key(24))
    tasks = tiny_tasks(jax.random.key(25))
    x, y, qx, qy = (tasks[k][0] for k in core.TASK_KEYS)
    m = MetaMAML(tiny_apply, inner_lr=0.2, num_inner_steps=2, learn_inner_lr=True)
    ref = m.inner_loop(params, x, y)
    chex.assert_trees_all_close(ref, manual_adapt(params, x, y, 0.2, 2), rtol=1e-5, atol=1e-6)
    for adapted in (m.inner_loop(params, support_x=x, support_y=y),
                    m.adapt(params, x, y),
                    m.adapt(params, task_data=x, task_labels=y),
                    m.adapt(params, support_x=x, support_y=y)):
        chex.assert_trees_all_equal(adapted, ref)
    loss = m.outer_loop(ref, qx, qy)
    np.testing.assert_array_equal(m.outer_loop(query_x=qx, query_y=qy, adapted_params=ref), loss)
    np.testing.assert_allclose(loss, mse(ref, qx, qy), rtol=1e-6)

    # a MetaState in place of params: its own step sizes are used
    state = m.init(params)
    lrs = jax.tree.map(lambda l, p: l * (1.0 + jnp.arange(p.size).reshape(p.shape) / p.size), state.inner_lr, params)
    state = state.replace(inner_lr=lrs)
    expected = m.inner_loop(params, x, y, inner_lr=lrs)
    for adapted in (m.inner_loop(state, x, y), m.inner_loop(state, support_x=x, support_y=y),
                    m.adapt(state, task_data=x, task_labels=y)):
        chex.assert_trees_all_equal(adapted, expected)
    reference = params
    for _ in range(2):
        g = mse_grad(reference, x, y)
        reference = jax.tree.map(lambda p, l, gi: p - l * gi, reference, lrs, g)
    chex.assert_trees_all_close(expected, reference, rtol=1e-5, atol=1e-6)
    assert optax.tree.norm(jax.tree.map(jnp.subtract, expected, ref)) > 1e-4
    np.testing.assert_array_equal(m.meta_loss(state, tasks), m.meta_loss(params, tasks, inner_lr=lrs))

    s1, m1 = m.meta_update(state, tasks=tasks)
    s2, m2 = m.meta_update(state, tasks)
    chex.assert_trees_all_equal(s1, s2)


def test_seed_argument_errors_are_clear():
    params = tiny_params(jax.random.key(26))
    tasks = tiny_tasks(jax.random.key(27))
    x, y, qx, qy = (tasks[k][0] for k in core.TASK_KEYS)
    m = MetaMAML(tiny_apply, inner_lr=0.2)
    state = m.init(params)
    with pytest.raises(ValueError, match="task_data and support_x name the same argument"):
        m.adapt(params, task_data=x, task_labels=y, support_x=x)
    with pytest.raises(ValueError, match="task_labels and support_y name the same argument"):
        m.adapt(params, x, y, support_y=y)
    with pytest.raises(ValueError, match=r"adapt needs task_labels \(or support_y\)"):
        m.adapt(params, task_data=x)
    with pytest.raises(ValueError, match="inner_loop needs params.*holds no params"):
        m.inner_loop(support_x=x, support_y=y)          # the seeds' stateful call
    with pytest.raises(ValueError, match="adapt needs params"):
        m.adapt(task_data=x, task_labels=y)
    with pytest.raises(ValueError, match="inner_loop needs support_y"):
        m.inner_loop(params, support_x=x)
    with pytest.raises(ValueError, match="conflicting step sizes"):
        m.inner_loop(state, x, y, inner_lr=state.inner_lr)
    with pytest.raises(ValueError, match="structure of the params"):
        m.inner_loop(params, x, y, inner_lr=0.1)
    with pytest.raises(ValueError, match="outer_loop needs adapted_params"):
        m.outer_loop(query_x=qx, query_y=qy)
    with pytest.raises(ValueError, match="outer_loop needs query_y"):
        m.outer_loop(params, qx)
    with pytest.raises(ValueError, match="state must be the MetaState"):
        m.meta_update(tasks)                             # the seeds' meta_update(tasks)
    with pytest.raises(ValueError, match="meta_update needs tasks"):
        m.meta_update(state)
    with pytest.raises(ValueError, match="init takes the model params"):
        m.init(state)


# ------------------------------------------------------------ validation
@pytest.mark.parametrize("kwargs, field", [
    (dict(inner_lr=-0.1), "inner_lr"), (dict(outer_lr=0.0), "outer_lr"),
    (dict(num_inner_steps=-1), "num_inner_steps"), (dict(num_inner_steps=1.5), "num_inner_steps"),
    (dict(grad_clip=-1.0), "grad_clip"), (dict(first_order="yes"), "first_order"),
])
def test_invalid_config_rejected(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MetaMAML(tiny_apply, **kwargs)


def test_bad_tasks_rejected():
    params = tiny_params(jax.random.key(0))
    m = MetaMAML(tiny_apply)
    state = m.init(params)
    tasks = tiny_tasks(jax.random.key(1))
    with pytest.raises(ValueError, match="keys"):
        m.meta_update(state, {"support_x": tasks["support_x"]})
    bad = dict(tasks, query_y=tasks["query_y"][:2])
    with pytest.raises(ValueError, match="leading task axis"):
        m.meta_update(state, bad)


def test_extra_task_keys_without_a_task_axis_are_ignored():
    params = tiny_params(jax.random.key(0))
    m = MetaMAML(tiny_apply, inner_lr=0.1, num_inner_steps=2)
    tasks = tiny_tasks(jax.random.key(1))
    extra = dict(tasks, task_id=jnp.arange(7), name="sines", scale=1.5)
    np.testing.assert_allclose(m.meta_loss(params, extra), m.meta_loss(params, tasks), rtol=1e-6)
    loss, _ = core.meta_loss(params, core.init_inner_lr(params, 0.1), extra, **m._kw(params))
    np.testing.assert_allclose(loss, m.meta_loss(params, tasks), rtol=1e-6)
    s1, _ = m.meta_update(m.init(params), extra)
    s2, _ = m.meta_update(m.init(params), tasks)
    chex.assert_trees_all_close(s1.params, s2.params)


def test_mamlrl_adapt_and_evaluate_rejects_bad_num_inner_steps():
    rl = pytest.importorskip("maml.rl")
    from ssm_jax import MLPPolicy
    algo = rl.MAMLRL(MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=8))
    state = algo.init(jax.random.key(0))
    for bad in (-1, 1.5, None, True):
        with pytest.raises(ValueError, match="num_inner_steps"):
            algo.adapt_and_evaluate(state, None, jax.random.key(1), num_inner_steps=bad, num_envs=2,
                                    num_steps=4)


# ------------------------------------------------------------ no retracing
def test_eager_methods_are_jitted_once_per_object():
    params = tiny_params(jax.random.key(0))
    m = MetaMAML(tiny_apply, inner_lr=0.1, num_inner_steps=2)
    for i in range(3):
        tasks = tiny_tasks(jax.random.key(10 + i))
        x, y = tasks["support_x"][0], tasks["support_y"][0]
        adapted = m.inner_loop(params, x, y)
        m.adapt(params, x, y)
        m.outer_loop(adapted, tasks["query_x"][0], tasks["query_y"][0])
        m.meta_loss(params, tasks)
    for fn in (m._inner_loop_jit, m._outer_loop_jit, m._meta_loss_jit):
        assert fn._cache_size() == 1
    # and each matches the un-jitted reference
    chex.assert_trees_all_close(adapted, manual_adapt(params, x, y, 0.1, 2), rtol=1e-5, atol=1e-6)


def test_meta_update_traces_once():
    params = tiny_params(jax.random.key(0))
    m = MetaMAML(tiny_apply, inner_lr=0.1, num_inner_steps=2, learn_inner_lr=True, grad_clip=1.0)
    state = m.init(params)
    loss = functools.partial(core.meta_loss, **m._kw(params))

    def raw_step(state, tasks):
        return core.meta_update(state, tasks, loss=loss, optimizer=m.optimizer, learn_inner_lr=True)

    step = jax.jit(chex.assert_max_traces(raw_step, n=1))
    s2 = state
    for i in range(3):
        tasks = tiny_tasks(jax.random.key(100 + i))
        state, _ = step(state, tasks)
        s2, metrics = m.meta_update(s2, tasks)
    chex.assert_trees_all_close(state.params, s2.params, rtol=1e-5, atol=1e-6)
    chex.assert_tree_all_finite(metrics)
    assert int(s2.step) == 3
    assert m._meta_update._cache_size() == 1


# ------------------------------------------------------------ sinusoid
class SineMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(40)(x))
        x = nn.relu(nn.Dense(40)(x))
        return nn.Dense(1)(x)


def test_sinusoid_meta_training_beats_pre_adaptation_and_pooled_pretraining():
    model = SineMLP()
    params0 = model.init(jax.random.key(0), jnp.zeros((1, 1)))
    steps, inner, lr = 1500, 5, 0.01
    maml = MetaMAML(model, inner_lr=lr, outer_lr=0.001, num_inner_steps=inner)

    @jax.jit
    def train_maml(key):
        def body(state, k):
            return maml._meta_update_impl(state, sample_sinusoid_tasks(k, 8, 10, 10))[0], None
        return jax.lax.scan(body, maml.init(params0), jax.random.split(key, steps))[0]

    opt = optax.adam(0.001)

    @jax.jit
    def train_pooled(key):
        # same data, same steps, no meta-learning: fit all tasks' points jointly
        def body(carry, k):
            p, o = carry
            t = sample_sinusoid_tasks(k, 8, 10, 10)
            x = jnp.concatenate([t["support_x"], t["query_x"]], 1)
            y = jnp.concatenate([t["support_y"], t["query_y"]], 1)
            g = jax.grad(lambda q: core.mse_loss(model.apply(q, x), y))(p)
            u, o = opt.update(g, o, p)
            return (optax.apply_updates(p, u), o), None
        return jax.lax.scan(body, (params0, opt.init(params0)), jax.random.split(key, steps))[0][0]

    state = train_maml(jax.random.key(1))
    pooled = train_pooled(jax.random.key(1))
    test_tasks = sample_sinusoid_tasks(jax.random.key(99), 200, 10, 50)
    _, m_metrics = maml.meta_loss_and_metrics(state.params, test_tasks)
    _, b_metrics = maml.meta_loss_and_metrics(pooled, test_tasks)
    post, pre, base_post = (float(m_metrics["post_query_loss"]), float(m_metrics["pre_query_loss"]),
                            float(b_metrics["post_query_loss"]))
    assert post < 0.6 * pre, (post, pre)
    assert post < 0.6 * base_post, (post, base_post)
