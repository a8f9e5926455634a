"""Tests of MAML-RL (maml.rl): the jitted meta-step, the LVC estimator's curvature, GAE,
first- vs second-order gradients, no retracing."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import envs
from maml import core
from maml.onpolicy import gae
from maml.rl import MAMLRL, MAMLRLConfig
from ssm_jax import MLPPolicy, SSMPolicy

SMALL = dict(support_envs=2, support_steps=16, query_envs=2, query_steps=12, num_inner_steps=2)


def small_algo(policy=None, **kw):
    policy = MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=8) if policy is None else policy
    return MAMLRL(policy, MAMLRLConfig(**{**SMALL, **kw}))


def collected(algo, state, num_tasks=2, seed=0):
    """Support/query Batches of ``num_tasks`` train tasks, task axis leading."""
    tasks = envs.CartPoleTasks().sample(jax.random.key(seed), num_tasks)
    c = algo.config
    _, support, query = jax.jit(jax.vmap(
        lambda t, k: algo.collect_task(state.params, state.inner_lr, t, k, c.num_inner_steps,
                                       (c.support_envs, c.support_steps), (c.query_envs, c.query_steps))
    ))(tasks, jax.random.split(jax.random.key(seed + 1), num_tasks))
    return support, query


@pytest.fixture(scope="module")
def mlp_data():
    """A second-order algo, its state, and data collected once for several tests."""
    algo = small_algo()
    state = algo.init(jax.random.key(3))
    support, query = collected(algo, state)
    return algo, state, support, query


@pytest.mark.parametrize("policy", [MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=8),
                                    SSMPolicy(obs_dim=4, action_dim=2, core="ssm", state_dim=4, hidden_dim=8)],
                         ids=["mlp", "ssm"])
def test_meta_update_runs_jitted_with_finite_metrics_and_no_retracing(policy):
    algo = small_algo(policy)
    state = algo.init(jax.random.key(0))
    dist = envs.CartPoleTasks()
    p0 = state.params
    # the public, already-jitted meta_update (its cache must hold one executable), and the
    # same function wrapped by chex.assert_max_traces
    checked = jax.jit(chex.assert_max_traces(algo._meta_update, n=1))
    step = algo.meta_update if isinstance(policy, MLPPolicy) else checked
    for i in range(3):
        state, metrics = step(state, dist.sample(jax.random.key(10 + i), 3), jax.random.key(i))
    if step is algo.meta_update:
        assert algo.meta_update._cache_size() == 1
    chex.assert_tree_all_finite(metrics)
    chex.assert_shape(metrics["return_by_step"], (SMALL["num_inner_steps"] + 1,))
    assert int(state.step) == 3
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), p0, state.params)
    assert max(jax.tree.leaves(moved)) > 0
    assert 1.0 <= float(metrics["pre_return"]) <= 500.0


def test_outer_gradient_first_vs_second_order_and_remat_inner(mlp_data):
    _, state, support, query = mlp_data
    # no value loss: the value head's own second-order terms must not be what tells them apart
    so = small_algo(value_coef=0.0)
    fo = small_algo(first_order=True, value_coef=0.0)
    so.init_from_params(state.params)
    fo.init_from_params(state.params)
    # (the second-order gradient of the params and the Meta-SGD step sizes; remat_inner, which
    # checkpoints each recomputed inner step, must give the same)
    meta_grad = lambda algo: jax.jit(jax.grad(  # noqa: E731
        lambda x: algo.outer_loss(x[0], x[1], (support, query))[0]))((state.params, state.inner_lr))
    g_so, g_so_lr = meta_grad(so)
    chex.assert_trees_all_close(meta_grad(small_algo(value_coef=0.0, remat_inner=True)), (g_so, g_so_lr),
                                rtol=1e-4, atol=1e-7)
    assert float(optax.tree.norm(g_so_lr)) > 0
    g_fo = jax.jit(jax.grad(lambda p: fo.outer_loss(p, state.inner_lr, (support, query))[0]))(state.params)
    v_so, v_fo = ravel_pytree(g_so)[0], ravel_pytree(g_fo)[0]
    assert jnp.all(jnp.isfinite(v_so)) and jnp.all(jnp.isfinite(v_fo))
    assert float(jnp.linalg.norm(v_so - v_fo)) > 1e-3 * float(jnp.linalg.norm(v_fo))

    # reference for first order, written from the policy's apply alone: the LVC inner step
    # theta_{k+1} = theta_k - lr * grad(-mean(exp(log pi - log pi_old) * A)), with every inner
    # displacement detached (theta + sg(theta_k - theta)), then the clipped query surrogate
    policy, lrs = so.policy, state.inner_lr

    def log_probs(p, batch):
        out, _ = policy.apply(p, batch.obs, resets=batch.resets)
        return out.dist.log_prob(batch.actions)

    def lvc(p, batch):
        return -jnp.mean(jnp.exp(log_probs(p, batch) - batch.old_log_probs) * batch.advantages)

    def detached_loss(p):
        def one(sup, qry):
            theta = p
            for k in range(SMALL["num_inner_steps"]):
                batch = jax.tree.map(lambda b: b[k], sup)
                new = jax.tree.map(lambda t, l, g: t - l * g, theta, lrs, jax.grad(lvc)(theta, batch))
                theta = jax.tree.map(lambda t, n: t + jax.lax.stop_gradient(n - t), theta, new)
            ratio = jnp.exp(log_probs(theta, qry) - qry.old_log_probs)
            return -jnp.mean(jnp.minimum(ratio * qry.advantages, jnp.clip(ratio, 0.8, 1.2) * qry.advantages))
        return jnp.mean(jax.vmap(one)(support, query))

    assert so.config.value_coef == 0.0 and so.config.entropy_coef == 0.0 and so.config.clip_eps == 0.2
    chex.assert_trees_all_close(g_fo, jax.jit(jax.grad(detached_loss))(state.params), rtol=2e-4, atol=1e-6)


def test_several_outer_epochs_are_adam_steps_on_the_same_data():
    """num_outer_epochs=2: the data are collected once (task i: key i of split(key, N)), then two
    clipped Adam steps on the outer loss, each at the current (params, step sizes); the metrics
    are the first, on-policy epoch's."""
    algo = small_algo(num_inner_steps=1, first_order=True, num_outer_epochs=2)
    state = algo.init(jax.random.key(7))
    tasks = envs.CartPoleTasks().sample(jax.random.key(8), 2)
    key = jax.random.key(9)
    new, metrics = algo.meta_update(state, tasks, key)
    c = algo.config
    data = jax.jit(jax.vmap(lambda t, k: algo.collect_task(
        state.params, state.inner_lr, t, k, 1, (c.support_envs, c.support_steps), (c.query_envs, c.query_steps))[1:]))(
        tasks, jax.random.split(key, 2))
    loss = jax.jit(jax.value_and_grad(lambda x: algo.outer_loss(x[0], x[1], data), has_aux=True))
    x, opt_state = (state.params, state.inner_lr), state.opt_state
    for epoch in range(2):
        (value, parts), g = loss(x)
        updates, opt_state = algo.optimizer.update(g, opt_state, x)
        x = optax.apply_updates(x, updates)
        if epoch == 0:
            first, after_one = parts, x
    chex.assert_trees_all_close((new.params, new.inner_lr), x, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(metrics["policy_loss"], first["policy_loss"], rtol=1e-5, atol=1e-7)
    # the second epoch is a real second step, and the state counts one meta-update
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in
               zip(jax.tree.leaves(after_one), jax.tree.leaves(x))) > 1e-6
    assert int(new.step) == 1


def test_second_order_meta_gradient_matches_explicit_score_function_formula():
    """One inner step, fixed step size alpha, no value loss. With theta' = theta + alpha grad J_s,
    the meta-gradient of the query objective must be (I + alpha H_s)^T g_q, where

      g_q = -mean_t grad log pi_{theta'}(a_t|s_t) A_t                  (query score function: the
            query data are sampled by theta', so their distribution depends on theta through it)
      H_s = mean_t (hess log pi_theta + grad log pi_theta grad log pi_theta^T) A_t
            (support curvature with the sampling-distribution term),

    built here from explicit per-sample Jacobians and Hessians instead of autodiff through the
    inner loop. The naive policy-gradient Hessian (without the outer-product term) must not match."""
    with jax.enable_x64(True):
        alpha = 0.5
        algo = small_algo(num_inner_steps=1, learn_inner_lr=False, inner_lr=alpha, value_coef=0.0,
                          first_order=False)
        params = jax.tree.map(lambda x: x.astype(jnp.float64), algo.init(jax.random.key(4)).params)
        task = jax.tree.map(lambda x: x[0], envs.CartPoleTasks().sample(jax.random.key(5), 1))
        lrs = core.init_inner_lr(params, alpha)
        _, support, query = jax.jit(lambda p: algo.collect_task(
            p, lrs, task, jax.random.key(6), 1, (2, 16), (2, 12)))(params)
        support = jax.tree.map(lambda b: b[0], support)          # the one support batch
        flat, unravel = ravel_pytree(params)

        def logps(v, batch):
            return algo._outputs(unravel(v), batch)[0].ravel()

        adapted = flat + alpha * jax.jit(jax.grad(lambda v: -algo.inner_objective(unravel(v), support)[0]))(flat)
        np.testing.assert_allclose(logps(adapted, query), query.old_log_probs.ravel(), rtol=1e-4, atol=1e-5)

        a_s, a_q = support.advantages.ravel(), query.advantages.ravel()

        @jax.jit
        def explicit(flat, adapted):
            jac_s = jax.jacrev(logps)(flat, support)                     # (n_s, P)
            hess_s = jax.hessian(lambda v: jnp.sum(logps(v, support) * a_s))(flat) / a_s.size
            h_s = hess_s + jac_s.T @ (a_s[:, None] * jac_s) / a_s.size
            g_q = -jax.jacrev(logps)(adapted, query).T @ a_q / a_q.size
            return g_q, hess_s, g_q + alpha * h_s.T @ g_q

        g_q, hess_s, expected = explicit(flat, adapted)
        got = jax.jit(jax.grad(lambda v: algo.task_outer_loss(
            unravel(v), lrs, jax.tree.map(lambda b: b[None], support), query)[0]))(flat)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9 * float(jnp.abs(expected).max()))
        naive = g_q + alpha * hess_s.T @ g_q
        assert float(jnp.abs(got - naive).max()) > 1e-3 * float(jnp.abs(got).max())


def test_lvc_inner_surrogate_has_score_outer_product_curvature(mlp_data):
    """grad and Hessian of the LVC surrogate at the sampling params equal
    mean_t grad log pi_t A_t and mean_t (hess log pi_t + grad log pi_t grad log pi_t^T) A_t."""
    algo, state, support, _ = mlp_data
    batch = jax.tree.map(lambda b: b[0, 0], support)   # task 0, inner step 0: sampled by state.params
    flat, unravel = ravel_pytree(state.params)

    surrogate = lambda v: -algo.inner_objective(unravel(v), batch)[0]
    logps = lambda v: algo._outputs(unravel(v), batch)[0].ravel()
    adv = batch.advantages.ravel()
    # the stored sampling log-probs are those of the params that sampled the batch
    np.testing.assert_allclose(logps(flat), batch.old_log_probs.ravel(), rtol=1e-4, atol=1e-5)

    n = adv.size
    jac = jax.jit(jax.jacrev(logps))(flat)                       # (E*T, P) per-sample scores
    np.testing.assert_allclose(jax.grad(surrogate)(flat), jac.T @ adv / n, rtol=1e-4, atol=1e-6)

    hvp = jax.jit(lambda f, v: jax.jvp(jax.grad(f), (flat,), (v,))[1], static_argnums=0)
    naive = lambda x: jnp.sum(logps(x) * adv) / n      # autodiff of the plain PG loss
    for seed in range(2):
        v = jax.random.normal(jax.random.key(seed), flat.shape)
        expected = hvp(naive, v) + jac.T @ (adv * (jac @ v)) / n
        got = hvp(surrogate, v)
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5 * float(jnp.abs(expected).max()))
        # the naive surrogate misses the score outer-product (sampling-distribution) term
        assert float(jnp.abs(hvp(naive, v) - got).max()) > 1e-2 * float(jnp.abs(got).max())


def test_gae_matches_python_loop():
    key = jax.random.key(0)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    E, T, g, lam = 3, 20, 0.9, 0.8
    rewards = jax.random.uniform(k1, (E, T))
    values = jax.random.normal(k2, (E, T))
    u = jax.random.uniform(k3, (E, T))
    terminated, truncated = u < 0.1, (u >= 0.1) & (u < 0.15)
    last = jax.random.normal(k4, (E,))
    adv, ret = gae(rewards, values, terminated, truncated, last, g, lam)
    r, v, te, tr, lv = map(np.asarray, (rewards, values, terminated, truncated, last))
    ref = np.zeros((E, T))
    for e in range(E):
        acc = 0.0
        for t in reversed(range(T)):
            if te[e, t]:
                nv, cont = 0.0, 0.0
            elif tr[e, t]:
                nv, cont = v[e, t], 0.0
            else:
                nv, cont = (v[e, t + 1] if t + 1 < T else lv[e]), 1.0
            acc = r[e, t] + g * nv - v[e, t] + g * lam * cont * acc
            ref[e, t] = acc
    np.testing.assert_allclose(adv, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, ref + v, rtol=1e-5, atol=1e-5)


def _hand_mean_return(traj) -> float:
    """Mean of the returns (reward sums) of the episodes that end in the window, NaN if none."""
    returns = []
    for r_row, d_row in zip(np.asarray(traj.rewards), np.asarray(traj.dones)):
        total = 0.0
        for r, d in zip(r_row, d_row):
            total += float(r)
            if d:
                returns.append(total)
                total = 0.0
    return float(np.mean(returns)) if returns else float("nan")


def test_adapt_and_evaluate_equals_rollouts_and_manual_inner_steps(mlp_data):
    """Task i gets key i of split(key, N), step k key k of split(key_i, K + 1); the return after
    k steps is the hand-counted completed episodes of envs.rollout of theta_k with that key
    (theta_0 the meta-params), and theta_{k+1} = theta_k - lr * grad of the inner loss on it."""
    algo, state, _, _ = mlp_data
    tasks = envs.CartPoleTasks().sample(jax.random.key(1), 3, split="test")
    K, E, T = 2, 2, 40
    out = algo.adapt_and_evaluate(state, tasks, jax.random.key(2), num_inner_steps=K, num_envs=E, num_steps=T)
    chex.assert_shape(out["segment_return"], (3, 3))
    chex.assert_shape(out["completed_return"], (3, 3))
    chex.assert_trees_all_equal_shapes(out["params"], jax.tree.map(lambda p: jnp.stack([p] * 3), state.params))
    seg = np.asarray(out["segment_return"])
    assert np.all((seg >= 1) & (seg <= 40))

    rollout = jax.jit(lambda p, k, t: envs.rollout(k, algo.policy, p, t, num_envs=E, num_steps=T))
    collect = jax.jit(lambda p, k, t: algo.collect(p, k, t, E, T))
    inner_grad = jax.jit(jax.grad(lambda p, b: algo.inner_objective(p, b)[0]))
    for i, key_i in enumerate(jax.random.split(jax.random.key(2), 3)):
        task = jax.tree.map(lambda x: x[i], tasks)
        theta = state.params
        for k, key in enumerate(jax.random.split(key_i, K + 1)):
            traj = rollout(theta, key, task)
            np.testing.assert_allclose(out["completed_return"][i, k], _hand_mean_return(traj), rtol=1e-6)
            if k < K:
                theta = jax.tree.map(lambda p, l, g: p - l * g, theta, state.inner_lr,
                                     inner_grad(theta, collect(theta, key, task)))
        chex.assert_trees_all_close(jax.tree.map(lambda x: x[i], out["params"]), theta, rtol=1e-5, atol=1e-6)
        assert max(float(jnp.max(jnp.abs(a - b))) for a, b in
                   zip(jax.tree.leaves(theta), jax.tree.leaves(state.params))) > 1e-4


def test_one_program_up_to_max_inner_steps_equals_each_step_counts_own(mlp_data):
    """`max_inner_steps`: one compiled program (traced once) serves every step count up to it,
    with the adapted params and returns of that count's own program (the same keys, data and
    per-slot computation; two programs may round apart in the last bits) and NaN after them; a
    count above it is refused."""
    algo, state, _, _ = mlp_data
    tasks = envs.CartPoleTasks().sample(jax.random.key(4), 2, split="test")
    traces = []
    jitted = algo._adapt_and_evaluate_upto_jit
    algo._adapt_and_evaluate_upto_jit = lambda *a, **kw: (traces.append(kw), jitted(*a, **kw))[1]
    try:
        for k in (0, 2, 3):
            own = algo.adapt_and_evaluate(state, tasks, jax.random.key(5), k, 2, 30)
            upto = algo.adapt_and_evaluate(state, tasks, jax.random.key(5), k, 2, 30, max_inner_steps=3)
            chex.assert_trees_all_close(upto["params"], own["params"], rtol=1e-5, atol=1e-7)
            for name in ("segment_return", "completed_return"):
                chex.assert_shape(upto[name], (2, 4))
                np.testing.assert_allclose(upto[name][:, :k + 1], own[name], rtol=1e-6)
                assert np.all(np.isnan(np.asarray(upto[name][:, k + 1:])))
        assert jitted._cache_size() == 1 and len(traces) == 3
    finally:
        algo._adapt_and_evaluate_upto_jit = jitted
    with pytest.raises(ValueError, match="max_inner_steps"):
        algo.adapt_and_evaluate(state, tasks, jax.random.key(5), 4, 2, 30, max_inner_steps=3)


@pytest.mark.parametrize("kwargs, field", [
    (dict(inner_lr=-1.0), "inner_lr"), (dict(num_inner_steps=-1), "num_inner_steps"),
    (dict(gamma=1.5), "gamma"), (dict(support_envs=0), "support_envs"),
    (dict(obs_mode="weird"), "obs_mode"), (dict(outer_lr=0), "outer_lr"),
    (dict(outer_lr_decay_steps=0), "outer_lr_decay_steps"),
])
def test_invalid_rl_config_rejected(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MAMLRLConfig(**kwargs)


def test_outer_lr_decay_reaches_zero():
    """With outer_lr_decay_steps=2 the second Adam step has step size outer_lr / 2 and every
    later one 0: the params move on meta-updates 1 and 2 and then stay put."""
    algo = small_algo(outer_lr_decay_steps=2, first_order=True)
    state = algo.init(jax.random.key(0))
    tasks = envs.CartPoleTasks().sample(jax.random.key(1), 2)
    history = [state.params]
    for i in range(4):
        state, _ = algo.meta_update(state, tasks, jax.random.key(10 + i))
        history.append(state.params)
    moved = [float(ravel_pytree(jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), b, a))[0].max())
             for a, b in zip(history, history[1:])]
    assert moved[0] > 0 and moved[1] > 0, moved
    assert moved[2] == 0 and moved[3] == 0, moved


def test_policy_obs_dim_mismatch_rejected():
    with pytest.raises(ValueError, match="obs_dim"):
        MAMLRL(MLPPolicy(obs_dim=4, action_dim=2), MAMLRLConfig(obs_mode="partial"))


@pytest.mark.slow
def test_meta_training_improves_post_adaptation_return():
    algo = MAMLRL(MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=32),
                  MAMLRLConfig(num_inner_steps=1, support_envs=4, support_steps=100, query_envs=4,
                               query_steps=100, outer_lr=3e-3, first_order=True))
    state = algo.init(jax.random.key(0))
    dist = envs.CartPoleTasks()
    test_tasks = dist.sample(jax.random.key(123), 16, split="test")
    evaluate = lambda s: float(jnp.mean(algo.adapt_and_evaluate(
        s, test_tasks, jax.random.key(7), num_inner_steps=1, num_envs=4, num_steps=200)["segment_return"][:, 1]))
    before = evaluate(state)

    @jax.jit
    def train(state, key):
        def body(s, k):
            kt, kr = jax.random.split(k)
            return algo._meta_update(s, dist.sample(kt, 8), kr)[0], None
        return jax.lax.scan(body, state, jax.random.split(key, 150))[0]

    state = train(state, jax.random.key(1))
    after = evaluate(state)
    assert after > 2.0 * before, (before, after)


def test_adapt_filter_honoured_without_init_on_the_same_object():
    """A state built by another object (e.g. restored from a checkpoint in a new process):
    adapt_filter=["heads"] must still freeze the torso in the inner loop."""
    policy = MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=8)
    cfg = MAMLRLConfig(**SMALL)
    state = MAMLRL(policy, cfg).init(jax.random.key(0))   # a different object
    algo = MAMLRL(policy, cfg, adapt_filter=["heads"])     # init never called on it
    tasks = envs.CartPoleTasks().sample(jax.random.key(1), 2)
    out = algo.adapt_and_evaluate(state, tasks, jax.random.key(2), num_inner_steps=2, num_envs=2,
                                  num_steps=20)
    for i in range(2):
        adapted = jax.tree.map(lambda x: x[i], out["params"])
        for name in ("dense_0", "dense_1"):
            chex.assert_trees_all_equal(adapted["params"][name], state.params["params"][name])
        changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), adapted["params"]["heads"],
                               state.params["params"]["heads"])
        assert any(jax.tree.leaves(changed))


def test_inner_step_is_the_masked_sgd_step_with_state_step_sizes(mlp_data):
    _, state, support, _ = mlp_data
    batch = jax.tree.map(lambda b: b[0, 0], support)
    algo = small_algo()
    anil = MAMLRL(algo.policy, algo.config, adapt_filter=["heads"])
    lrs = jax.tree.map(lambda l, p: l * (1.0 + jnp.arange(p.size).reshape(p.shape) / p.size),
                       state.inner_lr, state.params)
    g = jax.grad(lambda p: algo.inner_objective(p, batch)[0])(state.params)
    expected = jax.tree.map(lambda p, l, gi: p - l * gi, state.params, lrs, g)
    new, _ = algo.inner_step(state.params, lrs, batch)
    chex.assert_trees_all_close(new, expected, rtol=1e-6, atol=1e-7)
    new, _ = anil.inner_step(state.params, lrs, batch)
    chex.assert_trees_all_close(new["params"]["heads"], expected["params"]["heads"], rtol=1e-6, atol=1e-7)
    for name in ("dense_0", "dense_1"):   # frozen leaves: the very same arrays
        for a, b in zip(jax.tree.leaves(new["params"][name]), jax.tree.leaves(state.params["params"][name])):
            assert a is b


def test_frozen_inner_lr_is_unchanged_and_learned_state_keeps_its_optimizer_layout():
    tasks = envs.CartPoleTasks().sample(jax.random.key(1), 2)
    frozen = small_algo(learn_inner_lr=False, first_order=True, inner_lr=0.05)
    state = frozen.init(jax.random.key(0))
    lr0 = state.inner_lr
    chex.assert_trees_all_equal(lr0, core.init_inner_lr(state.params, 0.05))
    chex.assert_trees_all_equal_dtypes(lr0, jax.tree.map(lambda p: p.astype(jnp.float32), state.params))
    p0 = state.params
    for i in range(2):
        state, metrics = frozen.meta_update(state, tasks, jax.random.key(10 + i))
    chex.assert_trees_all_equal(state.inner_lr, lr0)
    assert "inner_lr_mean" not in metrics
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(state.params))) > 0
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(frozen.optimizer.init(state.params))

    # learned (Meta-SGD, the benchmark's setting): the optimiser state is over (params, inner_lr),
    # the layout of saved checkpoints, and the step sizes move
    learned = small_algo(first_order=True)
    s = learned.init(jax.random.key(0))
    assert jax.tree.structure(s.opt_state) == jax.tree.structure(learned.optimizer.init((s.params, s.inner_lr)))
    s2, m = learned.meta_update(s, tasks, jax.random.key(10))
    assert "inner_lr_mean" in m
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in
               zip(jax.tree.leaves(s.inner_lr), jax.tree.leaves(s2.inner_lr))) > 0
