"""Properties of the three SSM layers under the shared sequence/step contract."""

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from ssm_jax import SSM, DiagonalSSM, SelectiveSSM

DIMS = dict(state_dim=6, input_dim=3, output_dim=2, hidden_dim=8)
BATCH, TIME = 4, 25

# (model class, extra attributes); the diagonal layers are tested with both scans, the dense one
# step by step and in chunks (4 steps: TIME is not a multiple, so the padded last chunk is too).
VARIANTS = [
    (SSM, {}),
    (SSM, {"chunk_size": 4}),
    (DiagonalSSM, {"parallel": False}),
    (DiagonalSSM, {"parallel": True}),
    (SelectiveSSM, {"parallel": False}),
    (SelectiveSSM, {"parallel": True}),
]
IDS = ["ssm", "ssm-chunked", "diagonal-seq", "diagonal-par", "selective-seq", "selective-par"]
# Expensive properties (long sequences, second-order gradients) run for two variants by default and
# for all of them in the slow pass.
SLOW_VARIANTS = [
    pytest.param(cls, extra, id=i, marks=() if i in ("ssm", "selective-par") else pytest.mark.slow)
    for (cls, extra), i in zip(VARIANTS, IDS)
]


def make(cls, extra, **dims):
    return cls(**{**DIMS, **dims, **extra})


def data(seed=0, batch=BATCH, time=TIME, p_reset=0.15):
    kx, kr = jax.random.split(jax.random.PRNGKey(seed))
    xs = jax.random.normal(kx, (batch, time, DIMS["input_dim"]))
    resets = jax.random.bernoulli(kr, p_reset, (batch, time))
    return xs, resets


def init(model, xs, seed=1):
    return model.init(jax.random.PRNGKey(seed), xs)


def step_loop(model, params, xs, resets, carry):
    """Reference: the step method called in a Python loop."""
    ys = []
    for t in range(xs.shape[1]):
        y, carry = model.apply(params, xs[:, t], carry, resets[:, t], method="step")
        ys.append(y)
    return jnp.stack(ys, axis=1), carry


@pytest.mark.parametrize("cls,extra", VARIANTS, ids=IDS)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_shapes_and_dtypes(cls, extra, jit):
    model = make(cls, extra)
    xs, resets = data()
    params = init(model, xs)
    seq = jax.jit(model.apply) if jit else model.apply
    step = jax.jit(lambda p, x, c: model.apply(p, x, c, method="step")) if jit else (
        lambda p, x, c: model.apply(p, x, c, method="step")
    )
    ys, carry = seq(params, xs, resets)
    chex.assert_shape(ys, (BATCH, TIME, DIMS["output_dim"]))
    chex.assert_type(ys, jnp.float32)
    initial = model.initialize_carry(BATCH)
    chex.assert_trees_all_equal_shapes_and_dtypes(carry, initial)
    for leaf in jax.tree.leaves(initial):
        assert leaf.shape[0] == BATCH
        np.testing.assert_array_equal(leaf, 0)
    y, carry1 = step(params, xs[:, 0], initial)
    chex.assert_shape(y, (BATCH, DIMS["output_dim"]))
    chex.assert_type(y, jnp.float32)
    chex.assert_trees_all_equal_shapes_and_dtypes(carry1, initial)


@pytest.mark.parametrize("cls,extra", VARIANTS, ids=IDS)
def test_sequence_equals_step_loop_with_resets(cls, extra):
    model = make(cls, extra)
    xs, resets = data(seed=2)
    params = init(model, xs)
    # Start from a non-zero carry so the incoming state is exercised too.
    _, carry0 = model.apply(params, data(seed=3)[0])
    ys, carry = model.apply(params, xs, resets, carry0)
    ys_ref, carry_ref = step_loop(model, params, xs, resets, carry0)
    chex.assert_trees_all_close(ys, ys_ref, atol=2e-5, rtol=2e-5)
    chex.assert_trees_all_close(carry, carry_ref, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("cls", [DiagonalSSM, SelectiveSSM], ids=["diagonal", "selective"])
def test_parallel_scan_equals_sequential_scan(cls):
    xs, resets = data(seed=4, time=64, p_reset=0.1)
    seq_model, par_model = make(cls, {"parallel": False}), make(cls, {"parallel": True})
    params = init(seq_model, xs)
    _, carry0 = seq_model.apply(params, data(seed=5, time=64)[0])
    ys_seq, c_seq = seq_model.apply(params, xs, resets, carry0)
    ys_par, c_par = par_model.apply(params, xs, resets, carry0)
    chex.assert_trees_all_close(ys_par, ys_seq, atol=2e-5, rtol=2e-5)
    chex.assert_trees_all_close(c_par, c_seq, atol=2e-5, rtol=2e-5)
    # Gradients agree as well.
    def loss(p, m):
        return jnp.sum(m.apply(p, xs, resets, carry0)[0] ** 2)

    grad = lambda m: jax.jit(jax.grad(lambda p: loss(p, m)))(params)  # noqa: E731
    chex.assert_trees_all_close(grad(par_model), grad(seq_model), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("chunk_size", [2, 3, 8, 64])
def test_chunked_ssm_equals_step_by_step(chunk_size):
    """The dense SSM in chunks (any size: dividing the length or not, longer than it) gives the
    step-by-step scan's outputs, final carry and parameter gradients, with and without resets;
    the chunked path is a different program (its sequential scans run chunk_size and
    ceil(T / chunk_size) steps), not the same one renamed."""
    xs, resets = data(seed=4, time=40, p_reset=0.1)
    ref_model, model = make(SSM, {}), make(SSM, {"chunk_size": chunk_size})
    params = init(ref_model, xs)
    _, carry0 = ref_model.apply(params, data(seed=5, time=40)[0])
    for r in (resets, None):
        ys, c = model.apply(params, xs, r, carry0)
        ys_ref, c_ref = ref_model.apply(params, xs, r, carry0)
        chex.assert_trees_all_close(ys, ys_ref, atol=2e-5, rtol=2e-5)
        chex.assert_trees_all_close(c, c_ref, atol=2e-5, rtol=2e-5)

        def grad(m, r=r):
            return jax.jit(jax.grad(lambda p: jnp.sum(m.apply(p, xs, r, carry0)[0] ** 2)))(params)

        chex.assert_trees_all_close(grad(model), grad(ref_model), atol=1e-3, rtol=1e-3)
    trips = sorted(int(eq.params["length"]) for eq in _scans(jax.make_jaxpr(
        lambda p: model.apply(p, xs, resets, carry0))(params).jaxpr))
    # one chunk (chunk_size >= 40) is the step-by-step scan itself
    assert trips == (sorted([chunk_size, -(-40 // chunk_size)]) if chunk_size < 40 else [40]), trips


def _scans(jaxpr):
    """Every ``scan`` equation in a jaxpr, nested ones included."""
    yield from (eq for eq in jaxpr.eqns if eq.primitive.name == "scan")
    for sub in jax.extend.core.subjaxprs(jaxpr):
        yield from _scans(sub)


def test_chunk_size_is_validated():
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="chunk_size must be a positive int"):
            SSM(**DIMS, chunk_size=bad)
    from ssm_jax import SSMPolicy

    with pytest.raises(ValueError, match="chunk_size applies to core='ssm'"):
        SSMPolicy(obs_dim=4, action_dim=2, core="diagonal", chunk_size=8)
    policy = SSMPolicy(obs_dim=4, action_dim=2, chunk_size=8, num_layers=2)
    xs = jnp.zeros((1, 5, 4))
    params = policy.init(jax.random.PRNGKey(0), xs)
    assert all(core.chunk_size == 8 for core in policy.bind(params).cores)


@pytest.mark.parametrize("cls,extra", VARIANTS, ids=IDS)
def test_reset_row_equals_fresh_sequence(cls, extra):
    model = make(cls, extra)
    xs, _ = data(seed=6)
    params = init(model, xs)
    t0 = 11
    resets = jnp.zeros((BATCH, TIME), bool).at[1, t0].set(True)
    ys, _ = model.apply(params, xs, resets)
    fresh, _ = model.apply(params, xs[1:2, t0:])
    chex.assert_trees_all_close(ys[1, t0:], fresh[0], atol=2e-5, rtol=2e-5)
    # Rows without a reset are untouched by another row's reset. The two calls compile to
    # different programs (resets=None skips the select), so float32 rounding may differ.
    ys_plain, _ = model.apply(params, xs)
    chex.assert_trees_all_close(ys[0], ys_plain[0], atol=1e-6, rtol=1e-5)
    chex.assert_trees_all_close(ys[1, :t0], ys_plain[1, :t0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cls,extra", VARIANTS, ids=IDS)
def test_carry_continues_sequence_exactly(cls, extra):
    model = make(cls, extra)
    xs, resets = data(seed=7)
    params = init(model, xs)
    ys, carry = model.apply(params, xs, resets)
    ys_a, carry_a = model.apply(params, xs[:, :10], resets[:, :10])
    ys_b, carry_b = model.apply(params, xs[:, 10:], resets[:, 10:], carry_a)
    chex.assert_trees_all_close(jnp.concatenate([ys_a, ys_b], axis=1), ys, atol=2e-5, rtol=2e-5)
    chex.assert_trees_all_close(carry_b, carry, atol=2e-5, rtol=2e-5)


def _perturb(params, key, scale):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [l + scale * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])


@pytest.mark.parametrize("cls,extra", SLOW_VARIANTS)
def test_long_sequences_stay_finite_even_with_perturbed_params(cls, extra):
    model = make(cls, extra)
    xs = 10.0 * jax.random.normal(jax.random.PRNGKey(8), (2, 1_000, DIMS["input_dim"]))
    params = _perturb(init(model, xs[:, :2]), jax.random.PRNGKey(9), 3.0)
    ys, carry = jax.jit(model.apply)(params, xs)
    chex.assert_tree_all_finite((ys, carry))
    # No growth over time: the last outputs are no larger than the early ones (a recurrence
    # with a mode of modulus 1.01 would grow 7,000-fold over these 900 steps).
    early, late = float(jnp.max(jnp.abs(ys[:, :100]))), float(jnp.max(jnp.abs(ys[:, -100:])))
    assert late <= 10.0 * early


def test_ssm_transition_is_stable_for_any_params():
    model = SSM(**DIMS)
    params = init(model, data()[0])
    for i, scale in enumerate([0.0, 1.0, 10.0, 100.0]):
        p = _perturb(params, jax.random.PRNGKey(10 + i), scale)
        a = model.apply(p, method=model.transition)
        assert float(jnp.max(jnp.abs(jnp.linalg.eigvals(a)))) < 1.0
        assert float(jnp.linalg.norm(a, ord=2)) < 1.0 + 1e-5


def test_diagonal_discretisation_is_stable_and_zero_order_hold():
    model = DiagonalSSM(**DIMS)
    params = init(model, data()[0])
    a_bar, b_bar = model.apply(params, method=model.discretize)
    assert float(jnp.max(jnp.abs(a_bar))) < 1.0
    # ZOH: for a constant input u held over dt, h' = lam h + B u integrates to Bbar u from h=0.
    p = params["params"]
    lam = -jnp.exp(p["log_neg_real"]) + 1j * p["imag"]
    dt = jnp.exp(p["log_step"])
    n = 20_000
    ts = (jnp.arange(n) + 0.5) / n
    integral = jnp.mean(jnp.exp(lam[:, None] * dt[:, None] * (1.0 - ts[None])), axis=1) * dt
    b = p["B_re"] + 1j * p["B_im"]
    chex.assert_trees_all_close(b_bar, integral[:, None] * b, atol=1e-5, rtol=1e-3)


def _to_float64(tree):
    return jax.tree.map(lambda a: a.astype(jnp.complex128 if jnp.iscomplexobj(a) else jnp.float64), tree)


@pytest.mark.parametrize("cls,extra", SLOW_VARIANTS)
def test_second_order_gradient_matches_finite_differences(cls, extra):
    """MAML's one-step-adapted loss through the scan, in float64: its gradient (second order:
    through the inner gradient) equals central finite differences along a random direction, and
    is finite, non-zero and different from the first-order gradient (the Hessian term is real)."""
    with jax.enable_x64(True):
        model = make(cls, extra)
        xs, resets = data(seed=13, time=15)
        xs = xs.astype(jnp.float64)
        targets = jax.random.normal(jax.random.PRNGKey(14), (BATCH, 15, DIMS["output_dim"]), jnp.float64)
        params = _to_float64(init(model, xs))
        carry0 = _to_float64(model.initialize_carry(BATCH))

        def loss(p):
            return jnp.mean((model.apply(p, xs, resets, carry0)[0] - targets) ** 2)

        def adapted_loss(p):  # one inner gradient step, as MAML takes it
            g = jax.grad(loss)(p)
            return loss(jax.tree.map(lambda a, b: a - 0.05 * b, p, g))

        value_and_grad = jax.jit(jax.value_and_grad(adapted_loss))
        direction = _perturb(jax.tree.map(jnp.zeros_like, params), jax.random.PRNGKey(15), 1.0)
        eps = 1e-5
        plus = value_and_grad(jax.tree.map(lambda a, d: a + eps * d, params, direction))[0]
        minus = value_and_grad(jax.tree.map(lambda a, d: a - eps * d, params, direction))[0]
        fd = (plus - minus) / (2 * eps)
        _, g2 = value_and_grad(params)
        chex.assert_trees_all_equal_dtypes(g2, params)  # float64 throughout
        analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(g2), jax.tree.leaves(direction)))
        np.testing.assert_allclose(float(analytic), float(fd), rtol=1e-6, atol=1e-9)

        g1 = jax.jit(jax.grad(loss))(params)
        for grads in (g1, g2):
            chex.assert_tree_all_finite(grads)
            assert sum(float(jnp.sum(jnp.abs(g))) for g in jax.tree.leaves(grads)) > 0.0
        diff = sum(float(jnp.sum(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)))
        assert diff > 0.0


@pytest.mark.parametrize("cls,extra", VARIANTS, ids=IDS)
def test_no_retracing_on_repeated_calls(cls, extra):
    model = make(cls, extra)
    xs, resets = data(seed=16)
    params = init(model, xs)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(p, x, r):
        return model.apply(p, x, r)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(p, x, c):
        return model.apply(p, x, c, method="step")

    carry = model.initialize_carry(BATCH)
    for seed in range(3):
        x, r = data(seed=20 + seed)
        run(params, x, r)
        _, carry = step(params, x[:, 0], carry)


@pytest.mark.parametrize("cls,extra", VARIANTS, ids=IDS)
def test_bad_inputs_raise_clear_errors(cls, extra):
    model = make(cls, extra)
    xs, resets = data()
    params = init(model, xs)
    with pytest.raises(ValueError, match=r"xs must have shape \(batch, time, input_dim=3\)"):
        model.apply(params, xs[0])
    with pytest.raises(ValueError, match=r"xs must have shape"):
        model.apply(params, xs[..., :2])
    with pytest.raises(ValueError, match=r"resets must have shape \(batch=4, time=25\)"):
        model.apply(params, xs, resets[:, :3])
    with pytest.raises(ValueError, match=r"carry"):
        model.apply(params, xs, None, model.initialize_carry(BATCH + 1))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, input_dim=3\)"):
        model.apply(params, xs, model.initialize_carry(BATCH), method="step")
    for field in ("state_dim", "input_dim", "output_dim", "hidden_dim"):
        with pytest.raises(ValueError, match=f"{field} must be a positive int"):
            make(cls, extra, **{field: 0})


def test_householder_product_is_orthogonal_and_reaches_reflections():
    from ssm_jax.ssm import householder_product

    w = jax.random.normal(jax.random.PRNGKey(17), (7, 7))
    q = householder_product(w)
    chex.assert_trees_all_close(q @ q.T, jnp.eye(7), atol=1e-5)
    # A single non-zero row gives exactly that reflection (the other rows are zero vectors,
    # whose "reflection" is the identity because of the guarded normalisation).
    v = jnp.arange(1.0, 8.0)
    single = householder_product(jnp.zeros((7, 7)).at[0].set(v))
    chex.assert_trees_all_close(single, jnp.eye(7) - 2 * jnp.outer(v, v) / jnp.dot(v, v), atol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 9, 16, 17, 24, 32, 64])
def test_unit_upper_inverse_equals_numpy_inverse(n):
    """The inverse of I - P (the series up to SERIES_MAX_N, the blocked recursion above it;
    powers of two and padded sizes) against NumPy's LU-based inverse, and its derivative against
    the closed form d(T^-1) = T^-1 dP T^-1 (T = I - P)."""
    from ssm_jax.ssm import SERIES_MAX_N, _unit_upper_inverse

    assert SERIES_MAX_N == 16  # both branches are among the sizes above

    with jax.enable_x64(True):
        kp, kd = jax.random.split(jax.random.PRNGKey(n))
        p = jnp.triu(jax.random.normal(kp, (n, n), jnp.float64), 1)
        dp = jnp.triu(jax.random.normal(kd, (n, n), jnp.float64), 1)
        expected = np.linalg.inv(np.eye(n) - np.asarray(p))
        got, tangent = jax.jvp(jax.jit(_unit_upper_inverse), (p,), (dp,))
        chex.assert_trees_all_close(got, expected, atol=1e-9, rtol=1e-9)
        chex.assert_trees_all_close(tangent, expected @ np.asarray(dp) @ expected, atol=1e-8,
                                    rtol=1e-8)


@pytest.mark.parametrize("n", [17, 24, 32])
def test_blocked_inverse_derivatives_equal_autodiff_through_its_levels(n):
    """The blocked inverse's closed-form derivative rule against autodiff through the recursion
    itself (the undecorated function), float64: the JVP, the gradient of a non-linear scalar
    (zero outside the strict upper triangle, which the recursion never reads) and its
    Hessian-vector product, with tangents that are non-zero below the diagonal too."""
    from ssm_jax.ssm import _blocked_inverse

    with jax.enable_x64(True):
        kp, kd, kc = jax.random.split(jax.random.PRNGKey(n), 3)
        p = 0.3 * jnp.triu(jax.random.normal(kp, (n, n), jnp.float64), 1)
        dp = jax.random.normal(kd, (n, n), jnp.float64)
        c = jax.random.normal(kc, (n, n), jnp.float64)

        def derivatives(inverse):
            grad = jax.grad(lambda p: jnp.sum(jnp.tanh(inverse(p)) * c))
            return jax.jit(lambda p, dp: (jax.jvp(inverse, (p,), (dp,)), grad(p),
                                          jax.jvp(grad, (p,), (dp,))[1]))

        rule = derivatives(_blocked_inverse)(p, dp)
        autodiff = derivatives(_blocked_inverse.fun)(p, dp)
        chex.assert_trees_all_close(rule, autodiff, atol=1e-9, rtol=1e-9)
        gradient = rule[1]
        assert float(jnp.max(jnp.abs(jnp.tril(gradient)))) == 0.0
        assert float(jnp.max(jnp.abs(jnp.triu(gradient, 1)))) > 0.0

        # reverse over reverse (what second-order MAML runs), rematerialised, vmapped over two P
        def second_order(inverse):
            objective = jax.checkpoint(lambda p: jnp.sum(jnp.tanh(inverse(p)) * c))
            outer = jax.grad(lambda p: jnp.sum(jax.grad(objective)(p) * dp))
            return jax.jit(jax.vmap(outer))

        ps = jnp.stack([p, 0.5 * p])
        chex.assert_trees_all_close(second_order(_blocked_inverse)(ps),
                                    second_order(_blocked_inverse.fun)(ps), atol=1e-9, rtol=1e-9)


def _reflection_loop(w):
    """Reference: the Householder matrices multiplied one by one in a Python loop."""
    n = w.shape[1]
    q = jnp.eye(n, dtype=w.dtype)
    for v in w:
        q = q @ (jnp.eye(n, dtype=w.dtype) - 2.0 * jnp.outer(v, v) / (jnp.dot(v, v) + 1e-12))
    return q


# doubling boundaries 2^k and 2^k + 1; 17 and 32 take the blocked inverse (above SERIES_MAX_N)
@pytest.mark.parametrize("n", [1, 2, 5, 8, 9, 12, 17, 32])
def test_householder_product_equals_reflections_multiplied_in_a_loop(n):
    """The compact WY form is the same matrix, with the same first and second derivatives."""
    from ssm_jax.ssm import householder_product

    with jax.enable_x64(True):
        kw, kc, kd = jax.random.split(jax.random.PRNGKey(n), 3)
        w = jax.random.normal(kw, (n, n), jnp.float64)
        c = jax.random.normal(kc, (n, n), jnp.float64)
        d = jax.random.normal(kd, (n, n), jnp.float64)
        chex.assert_trees_all_close(householder_product(w), _reflection_loop(w), atol=1e-12)

        def objective(fn):  # a non-linear scalar of the product, as a loss would be
            return lambda w: jnp.sum(jnp.sin(fn(w)) * c)

        # gradient and Hessian-vector product (what second-order MAML differentiates through)
        def grad_and_hvp(fn):
            grad = jax.grad(objective(fn))
            return jax.jit(lambda w, d: (grad(w), jax.jvp(grad, (w,), (d,))[1]))

        chex.assert_trees_all_close(grad_and_hvp(householder_product)(w, d),
                                    grad_and_hvp(_reflection_loop)(w, d), atol=1e-9)
    # float32 at the largest size the benchmarks use: same matrix, still orthogonal
    w32 = jax.random.normal(jax.random.PRNGKey(n + 100), (32, 32))
    q32 = householder_product(w32)
    chex.assert_trees_all_close(q32, _reflection_loop(w32), atol=2e-5)
    chex.assert_trees_all_close(q32 @ q32.T, jnp.eye(32), atol=2e-5)


@pytest.mark.parametrize("state_dim", [8, 17])  # the series and the blocked inverse
def test_second_order_ssm_meta_update_compiles_to_no_custom_calls(state_dim):
    """The SSM's maths is XLA ops only: no LAPACK custom call (a triangular solve's hung a
    rematerialised second-order meta-update on multi-threaded XLA:CPU) in the compiled update."""
    from maml import MetaMAML

    model = SSM(state_dim=state_dim, input_dim=3, output_dim=2, hidden_dim=16)
    xs = jax.random.normal(jax.random.PRNGKey(0), (2, 1, 10, 3))
    ys = jax.random.normal(jax.random.PRNGKey(1), (2, 1, 10, 2))
    tasks = {"support_x": xs, "support_y": ys, "query_x": xs, "query_y": ys}
    maml = MetaMAML(model, inner_lr=0.01, outer_lr=1e-3, num_inner_steps=1, remat_inner=True)
    state = maml.init(model.init(jax.random.PRNGKey(2), xs[0]))
    hlo = jax.jit(maml.meta_update).lower(state, tasks).compile().as_text()
    assert "custom_call_target=" not in hlo
    # a LAPACK solve does show up this way (so the check above can fail)
    solve = jax.jit(lambda a, b: jax.scipy.linalg.solve_triangular(a, b)).lower(jnp.eye(3), jnp.ones(3))
    assert jax.default_backend() != "cpu" or "custom_call_target=" in solve.compile().as_text()


def test_sequence_without_resets_equals_all_false_resets():
    """resets=None skips the per-step select: same outputs and gradients as all-false resets."""
    from ssm_jax import sequential_scan

    model = SSM(**DIMS)
    xs, _ = data(seed=21)
    no_resets = jnp.zeros((BATCH, TIME), bool)
    targets = jax.random.normal(jax.random.PRNGKey(22), (BATCH, TIME, DIMS["output_dim"]))
    params = init(model, xs)
    # Different compiled programs: equal up to float32 rounding (XLA may fuse them differently).
    chex.assert_trees_all_close(model.apply(params, xs), model.apply(params, xs, no_resets),
                                atol=1e-6, rtol=1e-5)

    def loss(p, resets):
        return jnp.mean((model.apply(p, xs, resets)[0] - targets) ** 2)

    grad = jax.jit(jax.grad(loss))
    chex.assert_trees_all_close(grad(params, None), grad(params, no_resets), atol=1e-6, rtol=1e-5)

    def step(h, x_t):
        h = 0.5 * h + x_t
        return h, 2.0 * h

    carry0 = jnp.ones((BATCH, 3))
    inputs = xs[..., :3]
    chex.assert_trees_all_close(sequential_scan(step, carry0, inputs, None),
                                sequential_scan(step, carry0, inputs, no_resets),
                                atol=1e-6, rtol=1e-6)


def test_ssm_transition_reaches_both_determinant_signs():
    """Signed singular values: a one-dimensional SSM can learn a negative (oscillating) decay."""
    model = SSM(state_dim=1, input_dim=3, output_dim=2, hidden_dim=8)
    params = init(model, data()[0])
    flipped = jax.tree_util.tree_map_with_path(
        lambda path, a: -a if "A_logits" in jax.tree_util.keystr(path) else a, params
    )
    a_pos = model.apply(params, method=model.transition)
    a_neg = model.apply(flipped, method=model.transition)
    assert float(jnp.linalg.det(a_pos)) * float(jnp.linalg.det(a_neg)) < 0
    assert float(jnp.max(jnp.abs(a_neg))) < 1.0


@pytest.mark.parametrize("cls,extra", VARIANTS, ids=IDS)
def test_empty_sequences_and_wrong_carry_dtype_raise(cls, extra):
    model = make(cls, extra)
    xs, _ = data()
    params = init(model, xs)
    with pytest.raises(ValueError, match="xs must have at least one time step"):
        model.apply(params, xs[:, :0])
    carry = model.initialize_carry(BATCH)
    wrong = jax.tree.map(lambda c: c.real if jnp.iscomplexobj(c) else c.astype(jnp.complex64), carry)
    with pytest.raises(ValueError, match="carry leaves must have dtypes"):
        model.apply(params, xs, None, wrong)
