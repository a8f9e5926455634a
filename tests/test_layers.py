"""ssm_jax.layers.Dense: flax.linen.Dense's parameters and values, computed as 2-D products."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_jax.layers import Dense


@pytest.mark.parametrize("shape", [(5,), (7, 5), (3, 11, 5), (2, 3, 4, 5), (0, 5), (2, 0, 5)])
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_equals_flax_dense_values_and_gradients(shape, use_bias):
    """Same parameter tree and initial values as flax's Dense (checkpoints stay loadable); the
    same outputs, and gradients with respect to kernel, bias and inputs, up to float rounding,
    on inputs of rank 1 to 4 (zero-size axes included)."""
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    ours, flax_dense = Dense(3, use_bias=use_bias), nn.Dense(3, use_bias=use_bias)
    params = ours.init(jax.random.PRNGKey(1), x)
    chex.assert_trees_all_equal(params, flax_dense.init(jax.random.PRNGKey(1), x))
    target = jax.random.normal(jax.random.PRNGKey(2), shape[:-1] + (3,))

    def loss(module):
        return lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)) * target)

    y = ours.apply(params, x)
    chex.assert_shape(y, shape[:-1] + (3,))
    chex.assert_trees_all_close(y, flax_dense.apply(params, x), atol=1e-6, rtol=1e-6)
    # a NumPy float64 reference for the values too
    expected = np.asarray(x, np.float64) @ np.asarray(params["params"]["kernel"], np.float64)
    if use_bias:
        expected = expected + np.asarray(params["params"]["bias"], np.float64)
    np.testing.assert_allclose(np.asarray(y), expected, atol=1e-5, rtol=1e-5)
    grads = jax.grad(loss(ours), argnums=(0, 1))(params, x)
    chex.assert_trees_all_close(grads, jax.grad(loss(flax_dense), argnums=(0, 1))(params, x),
                                atol=1e-5, rtol=1e-5)


def test_dense_kernel_gradient_is_a_matrix_product():
    """The point of the layer: on a (batch, time, features) input every dot in the gradient
    program contracts 2-D operands, where flax's Dense contracts over both leading axes."""
    x = jnp.ones((4, 6, 5))
    params = Dense(3).init(jax.random.PRNGKey(0), x)

    def dot_ranks(module):
        grad = jax.grad(lambda p: jnp.sum(module.apply(p, x) ** 2))
        jaxpr = jax.make_jaxpr(grad)(params)
        return {tuple(v.aval.ndim for v in eqn.invars)
                for eqn in jaxpr.eqns if eqn.primitive.name == "dot_general"}

    assert dot_ranks(Dense(3)) == {(2, 2)}
    assert (3, 3) in dot_ranks(nn.Dense(3))  # the 3-D contraction the layer avoids
