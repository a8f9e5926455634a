"""AdaptationConfig: validation with clear errors, frozen, optimisers that do what they say."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapt import OPTIMIZERS, AdaptationConfig, make_optimizer
from maml.core import scale_by_inner_lr


def test_defaults_match_the_seeds():
    cfg = AdaptationConfig()
    assert cfg.lr == 0.001 and cfg.max_steps_per_call == 1
    assert cfg.optimizer == "sgd" and cfg.threshold == math.inf


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(lr=0.0), "lr"),
        (dict(lr=-0.1), "lr"),
        (dict(lr=float("nan")), "lr"),
        (dict(lr=float("inf")), "lr"),
        (dict(lr="0.1"), "lr"),
        (dict(max_steps_per_call=0), "max_steps_per_call"),
        (dict(max_steps_per_call=2.0), "max_steps_per_call"),
        (dict(max_steps_per_call=True), "max_steps_per_call"),
        (dict(optimizer="lbfgs"), "optimizer"),
        (dict(momentum=1.0), "momentum"),
        (dict(grad_clip=0.0), "grad_clip"),
        (dict(grad_clip=-1.0), "grad_clip"),
        (dict(divergence_threshold=float("nan")), "divergence_threshold"),
        (dict(replay_capacity=0), "replay_capacity"),
        (dict(replay_ratio=1.0), "replay_ratio"),
        (dict(replay_ratio=-0.1), "replay_ratio"),
        (dict(monotone=1), "monotone"),
        (dict(store_adapt_batches="yes"), "store_adapt_batches"),
    ],
)
def test_bad_values_raise_value_error_naming_the_field(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AdaptationConfig(**kwargs)


def test_config_is_frozen_and_hashable():
    cfg = AdaptationConfig(lr=0.01)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 0.1
    assert hash(cfg) == hash(AdaptationConfig(lr=0.01))


@pytest.mark.parametrize("n", [1, 7, 32])
@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.8])
def test_replay_size_gives_the_configured_share(n, ratio):
    m = AdaptationConfig(replay_ratio=ratio).replay_size(n)
    assert m >= 1
    # the replayed share of the pooled batch is the closest achievable to `ratio`
    best = min(range(1, 10 * n + 10), key=lambda k: abs(k / (n + k) - ratio))
    assert abs(m / (n + m) - ratio) <= abs(best / (n + best) - ratio) + 1e-9
    assert AdaptationConfig(replay_ratio=0.0).replay_size(n) == 0


def test_sgd_update_is_minus_lr_times_gradient():
    params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
    grads = {"w": jnp.array([0.3, 0.1]), "b": jnp.array(-2.0)}
    opt = AdaptationConfig(lr=0.25).make_optimizer()
    updates, _ = opt.update(grads, opt.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.25 * grads["w"], rtol=1e-6)
    np.testing.assert_allclose(updates["b"], -0.25 * grads["b"], rtol=1e-6)


def test_per_parameter_step_sizes():
    params = {"w": jnp.ones(3), "b": jnp.ones(())}
    lrs = {"w": jnp.array([0.0, 0.1, 1.0]), "b": jnp.array(2.0)}
    grads = {"w": jnp.array([1.0, 2.0, 3.0]), "b": jnp.array(4.0)}
    for opt in (scale_by_inner_lr(lrs), make_optimizer("sgd", lrs)):
        updates, _ = opt.update(grads, opt.init(params), params)
        np.testing.assert_allclose(updates["w"], [0.0, -0.2, -3.0], rtol=1e-6)
        np.testing.assert_allclose(updates["b"], -8.0, rtol=1e-6)


def test_gradient_clipping_bounds_the_update_norm():
    params = {"w": jnp.zeros(4)}
    grads = {"w": jnp.array([30.0, 40.0, 0.0, 0.0])}  # norm 50
    opt = AdaptationConfig(lr=1.0, grad_clip=5.0).make_optimizer()
    updates, _ = opt.update(grads, opt.init(params), params)
    np.testing.assert_allclose(jnp.linalg.norm(updates["w"]), 5.0, rtol=1e-5)
    np.testing.assert_allclose(updates["w"], -grads["w"] / 10.0, rtol=1e-5)


def _reference_steps(name, grads, params, lr, momentum):
    """The optimisers' update rules written out (optax's defaults for their other settings);
    ``grads`` one gradient per step; returns the params after each step."""
    p = np.asarray(params, np.float64)
    m = v = np.zeros_like(p)
    trace = np.zeros_like(p)
    acc = np.full_like(p, 0.1)  # adagrad's initial accumulator
    out = []
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, np.float64)
        if name == "sgd":
            step = lr * g
        elif name == "momentum":
            trace = g + momentum * trace
            step = lr * trace
        elif name in ("adam", "adamw"):
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g ** 2
            step = lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
            if name == "adamw":
                step = step + lr * 1e-4 * p
        elif name == "rmsprop":
            v = 0.9 * v + 0.1 * g ** 2
            step = lr * g / np.sqrt(v + 1e-8)
        elif name == "adagrad":
            acc = acc + g ** 2
            step = lr * g / np.sqrt(acc + 1e-7)
        p = p - step
        out.append(p)
    return out


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_follows_its_update_rule_and_descends_a_quadratic(name):
    """Three steps on a quadratic against the rule written out (float64, so even adamw's weight
    decay shows), with the configured lr and momentum (so a wrong rule, momentum or setting
    fails), then 20 steps descend."""
    target = jnp.array([1.0, -2.0, 3.0])
    loss = lambda p: jnp.sum((p - target) ** 2)  # noqa: E731
    cfg = AdaptationConfig(lr=0.05, optimizer=name, momentum=0.5)
    start = [0.5, 0.0, -1.0]
    with jax.enable_x64(True):
        opt = cfg.make_optimizer()
        p = jnp.array(start, jnp.float64)
        state = opt.init(p)
        grads, iterates = [], []
        for _ in range(3):
            g = 2.0 * (p - jnp.array([1.0, -2.0, 3.0], jnp.float64))
            grads.append(g)
            updates, state = opt.update(g, state, p)
            p = p + updates
            iterates.append(p)
        assert p.dtype == jnp.float64
        for got, want in zip(iterates, _reference_steps(name, grads, start, 0.05, 0.5)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
        if name == "momentum":  # the configured coefficient is the one used
            other = AdaptationConfig(lr=0.05, optimizer=name, momentum=0.9).make_optimizer()
            q = jnp.array(start, jnp.float64)
            s = other.init(q)
            for g in grads[:2]:
                u, s = other.update(g, s, q)
                q = q + u
            assert not np.allclose(q, iterates[1])
    p = jnp.array(start)
    state = opt.init(p)
    for _ in range(20):
        updates, state = opt.update(jax.grad(loss)(p), state, p)
        p = p + updates
    assert loss(p) < 0.9 * loss(jnp.array(start))
