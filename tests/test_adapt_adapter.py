"""The Adapter shell: strategies none/online/hybrid/meta, the seeds' README example,
rollback, replay, clear errors and no retracing."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapt import AdaptationConfig, Adapter, buffer_contents, mse_loss
from adapt import adapter as adapter_module
from ssm_jax import SSM


class MLP(nn.Module):
    out: int = 2

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.out)(nn.tanh(nn.Dense(32)(x)))


def _regression(rng, center, weights, n):
    x = (center + rng.normal(size=(n, weights.shape[0]))).astype(np.float32)
    return {"observations": x, "targets": (np.tanh(x) @ weights).astype(np.float32)}


def _mlp_and_params(out=2, d=2, seed=0):
    model = MLP(out)
    return model, model.init(jax.random.PRNGKey(seed), jnp.zeros((1, d)))


# ---------------------------------------------------------------- the seeds' README
def test_readme_example_translated_to_jax():
    """The seeds' README: SSM(state_dim=10, action_dim=4), batch of observations
    (32, 10) and targets (32, 4), mse, lr=0.01, max_steps_per_call=10. Our SSM
    maps one observation to an output with its one-step call."""
    model = SSM(state_dim=16, input_dim=10, output_dim=4, hidden_dim=64)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 1, 10)))

    def forward(p, obs):  # the seeds' forward(state): (32, 10) -> (32, 4); returns (y, carry)
        return model.apply(p, obs, model.initialize_carry(obs.shape[0]), method="step")

    adapter = Adapter(target=forward, cfg=AdaptationConfig(lr=0.01, max_steps_per_call=10),
                      strategy="online", params=params)
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    batch = {"observations": jax.random.normal(k1, (32, 10)), "targets": jax.random.normal(k2, (32, 4))}
    info = adapter.adapt(batch=batch, loss_fn=mse_loss)
    assert isinstance(info["loss"], float) and np.isfinite(info["loss"])
    assert info["steps"] == 10 and info["rolled_back"] is False
    # the reported losses are the real losses of the old and new params
    y0, _ = forward(params, batch["observations"])
    np.testing.assert_allclose(info["loss_before"], mse_loss(y0, batch["targets"]), rtol=1e-5)
    y1, _ = forward(adapter.params, batch["observations"])
    np.testing.assert_allclose(info["loss"], mse_loss(y1, batch["targets"]), rtol=1e-5)
    assert info["loss"] < info["loss_before"]
    chex.assert_tree_all_finite(adapter.params)


# ---------------------------------------------------------------- strategies
def test_none_leaves_params_bit_identical():
    model, params = _mlp_and_params()
    rng = np.random.default_rng(0)
    before = jax.tree.map(np.array, params)
    adapter = Adapter(model, AdaptationConfig(lr=0.5, max_steps_per_call=5), strategy="none", params=params)
    for _ in range(3):
        batch = _regression(rng, 0.0, rng.normal(size=(2, 2)), 16)
        info = adapter.adapt(batch, mse_loss)
        assert info["steps"] == 0 and info["loss_before"] == info["loss_after"]
        np.testing.assert_allclose(info["loss"], mse_loss(model.apply(params, batch["observations"]),
                                                          batch["targets"]), rtol=1e-6)
    adapter.observe(batch)
    for a, b in zip(jax.tree.leaves(adapter.params), jax.tree.leaves(before)):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), b)


def test_online_lowers_the_loss_after_the_target_shifts():
    rng = np.random.default_rng(1)
    model, params = _mlp_and_params()
    w_old = rng.normal(size=(2, 2))
    w_new = w_old + 1.5 * rng.normal(size=(2, 2))
    # params fitted to the old target first (plain online adaptation, many steps)
    pre = Adapter(model, AdaptationConfig(lr=0.01, max_steps_per_call=20, optimizer="adam"),
                  strategy="online", params=params)
    for _ in range(20):
        pre.adapt(_regression(rng, 0.0, w_old, 64))
    held_out_new = _regression(rng, 0.0, w_new, 512)
    adapter = Adapter(model, AdaptationConfig(lr=0.05, max_steps_per_call=10), strategy="online",
                      params=pre.params)
    start = adapter.loss(held_out_new)
    for _ in range(10):
        info = adapter.adapt(_regression(rng, 0.0, w_new, 32))
        assert not info["rolled_back"]
    assert adapter.loss(held_out_new) < 0.5 * start
    # reset returns to the params it started from
    adapter.reset()
    chex.assert_trees_all_equal(adapter.params, pre.params)
    np.testing.assert_allclose(adapter.loss(held_out_new), start, rtol=1e-6)


def test_hybrid_replay_forgets_the_earlier_task_less_than_online():
    model, params = _mlp_and_params()
    w_a = np.random.default_rng(0).normal(size=(2, 2))
    center_a, center_b, w_b = np.array([2.0, 2.0]), np.array([-2.0, -2.0]), -w_a
    eval_rng = np.random.default_rng(99)
    eval_a = _regression(eval_rng, center_a, w_a, 256)
    eval_b = _regression(eval_rng, center_b, w_b, 256)
    results = {}
    for strategy in ("online", "hybrid"):
        rng = np.random.default_rng(5)  # same data stream for both
        cfg = AdaptationConfig(lr=0.01, max_steps_per_call=5, optimizer="adam",
                               replay_capacity=4096, replay_ratio=0.5)
        adapter = Adapter(model, cfg, strategy=strategy, params=params, key=1)
        for _ in range(40):
            adapter.adapt(_regression(rng, center_a, w_a, 32))
        a_after_a = adapter.loss(eval_a)
        b_before_b = adapter.loss(eval_b)
        for _ in range(40):
            adapter.adapt(_regression(rng, center_b, w_b, 32))
        results[strategy] = dict(a_after_a=a_after_a, b_before=b_before_b,
                                 a=adapter.loss(eval_a), b=adapter.loss(eval_b))
    on, hy = results["online"], results["hybrid"]
    # both learned task B
    assert on["b"] < 0.1 * on["b_before"] and hy["b"] < 0.1 * hy["b_before"]
    # online forgot task A much more than hybrid did
    assert on["a"] > 10 * on["a_after_a"]
    assert hy["a"] < 0.3 * on["a"], results


def test_hybrid_loss_is_the_pooled_mean_with_replay():
    """With one stored sample every replayed sample is that sample, so the pooled
    loss can be computed by hand: (n * L_current + m * L_replayed) / (n + m)."""
    model, params = _mlp_and_params()
    rng = np.random.default_rng(2)
    cfg = AdaptationConfig(lr=0.01, replay_capacity=1, replay_ratio=0.25, store_adapt_batches=False)
    adapter = Adapter(model, cfg, strategy="hybrid", params=params)
    current = _regression(rng, 0.0, np.eye(2), 9)
    # empty buffer: replay has weight zero, the loss is the current batch's
    info = adapter.adapt(current)
    np.testing.assert_allclose(info["loss_before"], mse_loss(model.apply(params, current["observations"]),
                                                             current["targets"]), rtol=1e-6)
    stored = _regression(rng, 3.0, np.eye(2), 1)
    adapter.observe(stored)
    assert adapter.context is not None and int(adapter.buffer.size) == 1
    p = adapter.params
    n, m = 9, cfg.replay_size(9)
    l_cur = mse_loss(model.apply(p, current["observations"]), current["targets"])
    l_rep = mse_loss(model.apply(p, stored["observations"]), stored["targets"])
    info = adapter.adapt(current)
    np.testing.assert_allclose(info["loss_before"], (n * l_cur + m * l_rep) / (n + m), rtol=1e-5)


def _log_target_loss(predictions, targets):
    """Finite for positive targets, NaN on the empty buffer's zero placeholders."""
    return mse_loss(predictions, jnp.log(targets)) + 0.0 * jnp.mean(jnp.log(targets))


def test_hybrid_with_an_empty_buffer_never_evaluates_the_placeholders():
    model, params = _mlp_and_params()
    rng = np.random.default_rng(8)
    batch = _regression(rng, 0.0, np.eye(2), 16)
    batch["targets"] = np.exp(batch["targets"])  # positive
    adapter = Adapter(model, AdaptationConfig(lr=0.05, max_steps_per_call=3), strategy="hybrid",
                      params=params)
    info = adapter.adapt(batch, _log_target_loss)
    assert info["steps"] == 3 and not info["rolled_back"] and np.isfinite(info["loss"])
    # same numbers as online on the same batch (the replayed term is absent)
    online = Adapter(model, AdaptationConfig(lr=0.05, max_steps_per_call=3), strategy="online",
                     params=params)
    assert online.adapt(batch, _log_target_loss)["loss"] == pytest.approx(info["loss"], rel=1e-6)
    chex.assert_trees_all_close(adapter.params, online.params, rtol=1e-6)


def test_hybrid_stores_adapt_batches_after_using_them():
    model, params = _mlp_and_params()
    rng = np.random.default_rng(3)
    adapter = Adapter(model, AdaptationConfig(replay_capacity=50), strategy="hybrid", params=params)
    batches = [_regression(rng, 0.0, np.eye(2), 20) for _ in range(3)]
    for b in batches:
        adapter.adapt(b)
    assert int(adapter.buffer.size) == 50
    expected = np.concatenate([b["targets"] for b in batches])[-50:]
    np.testing.assert_array_equal(buffer_contents(adapter.buffer)["targets"], expected)
    adapter.reset()
    assert adapter.buffer is None and adapter.context is None


# ---------------------------------------------------------------- safety
def test_nan_batch_triggers_rollback_with_finite_unchanged_params():
    model, params = _mlp_and_params()
    rng = np.random.default_rng(4)
    for strategy in ("online", "hybrid"):
        adapter = Adapter(model, AdaptationConfig(lr=0.01, max_steps_per_call=3), strategy=strategy,
                          params=params)
        batch = _regression(rng, 0.0, np.eye(2), 16)
        batch["observations"][2, 0] = np.nan
        info = adapter.adapt(batch)
        assert info["rolled_back"] and info["steps"] == 0
        chex.assert_trees_all_equal(adapter.params, params)
        if strategy == "hybrid":  # the bad batch was not stored for replay
            assert adapter.buffer is not None and int(adapter.buffer.size) == 0
            adapter.observe(batch)
            assert int(adapter.buffer.size) == 0
        # and it keeps working on good data afterwards
        info = adapter.adapt(_regression(rng, 0.0, np.eye(2), 16))
        assert not info["rolled_back"] and info["steps"] == 3
        chex.assert_tree_all_finite(adapter.params)


def test_huge_learning_rate_triggers_rollback_with_finite_params():
    model, params = _mlp_and_params()
    batch = _regression(np.random.default_rng(5), 0.0, np.eye(2), 16)
    adapter = Adapter(model, AdaptationConfig(lr=1e30, max_steps_per_call=5), strategy="online",
                      params=params)
    info = adapter.adapt(batch)
    assert info["rolled_back"] and info["steps"] == 0
    chex.assert_tree_all_finite(adapter.params)
    # a large but finite blow-up is caught by the divergence threshold
    adapter = Adapter(model, AdaptationConfig(lr=1e3, max_steps_per_call=5, divergence_threshold=1e3),
                      strategy="online", params=params)
    info = adapter.adapt(batch)
    assert info["rolled_back"] and info["loss"] <= 1e3
    chex.assert_tree_all_finite(adapter.params)


# ---------------------------------------------------------------- meta
def test_meta_strategy_runs_the_meta_learned_inner_rule():
    maml = pytest.importorskip("maml")
    model, params = _mlp_and_params()
    rng = np.random.default_rng(6)
    batch = _regression(rng, 0.0, np.eye(2), 16)
    x, y = jnp.asarray(batch["observations"]), jnp.asarray(batch["targets"])
    # Meta-SGD: per-parameter step sizes (set to distinct values so they matter)
    meta = maml.MetaMAML(model, inner_lr=0.05, num_inner_steps=3, learn_inner_lr=True)
    state = meta.init(params)
    lrs = jax.tree.map(lambda p: jnp.asarray(rng.uniform(0.01, 0.2, size=p.shape), jnp.float32), params)
    state = state.replace(inner_lr=lrs)
    adapter = Adapter(None, AdaptationConfig(lr=123.0, max_steps_per_call=3), strategy="meta",
                      params=state, meta=meta)
    info = adapter.adapt(batch)
    assert info["steps"] == 3
    expected = meta.inner_loop(state.params, x, y, inner_lr=state.inner_lr)
    chex.assert_trees_all_close(adapter.params, expected, rtol=1e-5, atol=1e-6)

    # ANIL: only the head adapts; plain params mean MetaMAML's fixed inner_lr
    anil = maml.MetaMAML(model, inner_lr=0.1, num_inner_steps=2, adapt_filter=["Dense_1"])
    adapter = Adapter(model, AdaptationConfig(max_steps_per_call=2), strategy="meta", params=params, meta=anil)
    adapter.adapt(batch)
    chex.assert_trees_all_equal(adapter.params["params"]["Dense_0"], params["params"]["Dense_0"])
    chex.assert_trees_all_close(adapter.params, anil.inner_loop(params, x, y), rtol=1e-5, atol=1e-6)


def test_meta_strategy_accepts_the_readmes_unhashable_sequential_model():
    """The README's MetaMAML model, ``nn.Sequential([...])``, holds a list of layers, so it is
    not hashable; the adapter keys its compilations on the model by identity instead (equal
    hashable models still share them). The meta rule runs on it exactly as MetaMAML's own
    inner loop, and a second adapter for the same model object does not retrace."""
    from maml import MetaMAML, sample_sinusoid_tasks

    mlp = nn.Sequential([nn.Dense(40), nn.relu, nn.Dense(40), nn.relu, nn.Dense(1)])
    with pytest.raises(TypeError):
        hash(mlp)
    params = mlp.init(jax.random.PRNGKey(0), jnp.zeros((1, 1)))
    maml = MetaMAML(mlp, inner_lr=0.01, outer_lr=0.001, num_inner_steps=5, first_order=False)
    state = maml.init(params)
    tasks = sample_sinusoid_tasks(jax.random.PRNGKey(1), 2)
    x, y = tasks["support_x"][0], tasks["support_y"][0]
    cfg = AdaptationConfig(max_steps_per_call=5)
    for target in (mlp, None):  # the model given, or taken from the MetaMAML
        adapter = Adapter(target, cfg, strategy="meta", params=state, meta=maml)
        info = adapter.adapt({"observations": x, "targets": y})
        assert info["steps"] == 5 and info["loss"] < info["loss_before"]
        chex.assert_trees_all_close(adapter.params, maml.inner_loop(state, support_x=x, support_y=y),
                                    rtol=1e-5, atol=1e-6)
    traces = adapter.num_traces
    again = Adapter(mlp, cfg, strategy="meta", params=state, meta=maml)
    again.adapt({"observations": tasks["support_x"][1], "targets": tasks["support_y"][1]})
    assert again.num_traces == traces
    # an equal but distinct Sequential is another key: it compiles once and then works the same
    twin = nn.Sequential(list(mlp.layers))
    other = Adapter(twin, cfg, strategy="meta", params=state, meta=maml)
    other.adapt({"observations": x, "targets": y})
    chex.assert_trees_all_close(other.params, maml.inner_loop(state, support_x=x, support_y=y),
                                rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- errors
def test_missing_batch_keys_and_bad_batches_give_clear_errors():
    model, params = _mlp_and_params()
    adapter = Adapter(model, AdaptationConfig(), strategy="online", params=params)
    with pytest.raises(ValueError, match="'targets'"):
        adapter.adapt({"observations": np.zeros((4, 2), np.float32)}, mse_loss)
    with pytest.raises(ValueError, match="'observations'"):
        adapter.adapt({"obs": np.zeros((4, 2)), "targets": np.zeros((4, 2))}, mse_loss)
    with pytest.raises(ValueError, match="mapping"):
        adapter.adapt((np.zeros((4, 2)), np.zeros((4, 2))), mse_loss)
    with pytest.raises(ValueError, match="samples"):
        adapter.adapt({"observations": np.zeros((4, 2)), "targets": np.zeros((5, 2))}, mse_loss)
    with pytest.raises(ValueError, match="shape"):
        adapter.adapt({"observations": np.zeros((4, 2)), "targets": np.zeros((4, 3))}, mse_loss)
    with pytest.raises(ValueError, match="scalar"):
        adapter.adapt({"observations": np.zeros((4, 2)), "targets": np.zeros((4, 2))}, lambda p, t: p - t)
    hybrid = Adapter(model, AdaptationConfig(), strategy="hybrid", params=params)
    with pytest.raises(ValueError, match="'targets'"):
        hybrid.observe({"observations": np.zeros((4, 2))})
    hybrid.observe({"task_id": 3})  # context without samples is only recorded
    assert hybrid.context == {"task_id": 3} and hybrid.buffer is None


def test_bad_constructor_arguments_give_clear_errors():
    model, params = _mlp_and_params()
    with pytest.raises(ValueError, match="strategy"):
        Adapter(model, AdaptationConfig(), strategy="offline", params=params)
    with pytest.raises(ValueError, match="cfg"):
        Adapter(model, {"lr": 0.1}, strategy="online", params=params)
    with pytest.raises(ValueError, match="params"):
        Adapter(model, AdaptationConfig(), strategy="online")
    with pytest.raises(ValueError, match="meta"):
        Adapter(model, AdaptationConfig(), strategy="meta", params=params)
    with pytest.raises(ValueError, match="target"):
        Adapter(42, AdaptationConfig(), strategy="online", params=params)


# ---------------------------------------------------------------- compilation
@pytest.fixture
def cold_adapter_functions():
    """The adapter's jitted functions with empty caches: the next call of any spec traces
    (``num_traces`` is a process-wide count, so the test counts from where it starts)."""
    for fn in (adapter_module._loss_call, adapter_module._adapt_call, adapter_module._hybrid_call):
        fn.clear_cache()


@pytest.mark.parametrize("strategy", ["online", "hybrid"])
def test_repeated_adapt_calls_do_not_retrace(strategy, cold_adapter_functions):
    model, params = _mlp_and_params()
    rng = np.random.default_rng(7)
    cfg = AdaptationConfig(lr=0.0123, max_steps_per_call=4)  # a config no other test uses
    adapter = Adapter(model, cfg, strategy=strategy, params=params)
    start = adapter.num_traces  # 0 unless this test already ran in this process
    for _ in range(5):
        adapter.adapt(_regression(rng, 0.0, np.eye(2), 16), mse_loss)
        if strategy == "hybrid":
            adapter.observe(_regression(rng, 0.0, np.eye(2), 8))
    assert adapter.num_traces == start + 1
    adapter.reset()
    adapter.adapt(_regression(rng, 0.0, np.eye(2), 16), mse_loss)
    # a new adapter (e.g. for the next task) with the same model and config reuses the compilation
    other = Adapter(MLP(2), cfg, strategy=strategy, params=_mlp_and_params(seed=3)[1])
    other.adapt(_regression(rng, 0.0, np.eye(2), 16), mse_loss)
    assert adapter.num_traces == start + 1 and other.num_traces == start + 1


def test_meta_strategy_defaults_to_the_metamamls_own_loss():
    maml = pytest.importorskip("maml")
    model, params = _mlp_and_params()
    batch = _regression(np.random.default_rng(8), 0.0, np.eye(2), 16)
    x, y = jnp.asarray(batch["observations"]), jnp.asarray(batch["targets"])
    l1 = lambda p, t: jnp.mean(jnp.abs(p - t))
    meta = maml.MetaMAML(model, inner_lr=0.1, num_inner_steps=2, loss_fn=l1)
    adapter = Adapter(model, AdaptationConfig(max_steps_per_call=2), strategy="meta", params=params, meta=meta)
    info = adapter.adapt(batch)  # no loss_fn: the MetaMAML's L1 loss
    chex.assert_trees_all_close(adapter.params, meta.inner_loop(params, x, y), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(info["loss_before"], float(l1(model.apply(params, x), y)), rtol=1e-5)
    np.testing.assert_allclose(adapter.loss(batch), float(l1(model.apply(adapter.params, x), y)), rtol=1e-5)
    # other strategies still default to mean squared error
    online = Adapter(model, AdaptationConfig(), strategy="online", params=params)
    np.testing.assert_allclose(online.loss(batch), float(mse_loss(model.apply(params, x), y)), rtol=1e-5)


@pytest.mark.parametrize("strategy", ["online", "meta"])
def test_observed_samples_join_the_next_adapt_batch_then_clear(strategy):
    maml = pytest.importorskip("maml")
    model, params = _mlp_and_params()
    rng = np.random.default_rng(9)
    ctx, batch, later = (_regression(rng, 0.0, np.eye(2), n) for n in (6, 10, 10))
    kw = dict(strategy=strategy, params=params)
    if strategy == "meta":
        kw["meta"] = maml.MetaMAML(model, inner_lr=0.05, num_inner_steps=2)
    cfg = AdaptationConfig(lr=0.05, max_steps_per_call=2)
    observed, pooled = Adapter(model, cfg, **kw), Adapter(model, cfg, **kw)
    observed.observe(ctx)
    info = observed.adapt(batch)
    joined = {k: np.concatenate([ctx[k], batch[k]]) for k in ("observations", "targets")}
    ref = pooled.adapt(joined)
    chex.assert_trees_all_close(observed.params, pooled.params, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(info["loss_before"], ref["loss_before"], rtol=1e-6)
    # the observed samples were used once: the next call adapts on its batch alone
    observed.adapt(later)
    pooled.adapt(later)
    chex.assert_trees_all_close(observed.params, pooled.params, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="per-sample shapes"):
        observed.observe({"observations": np.zeros((3, 5), np.float32), "targets": np.zeros((3, 2), np.float32)})
        observed.adapt(later)
