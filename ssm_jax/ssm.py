"""The seeds' State Space Model: dense A, B, C, D with an input MLP, stable by construction.

    u_t = tanh(W_in x_t + b_in)                       (input MLP, width hidden_dim)
    h_t = A h_{t-1} + B u_t + b_B                     (state_dim)
    y_t = C h_t + b_C + D x_t                         (output_dim)

``A = U diag(s) V^T`` where ``U`` and ``V`` are orthogonal (products of Householder reflections
built from the rows of free square matrices, evaluated in compact WY form with matrix products
only: no linear solve and no custom call, so it vmaps over tasks and differentiates twice on any
backend) and ``s = max_radius * tanh(logits)`` (signed, so ``det A`` may take either sign and
reflecting or oscillating modes are reachable). Every singular value of ``A``, ``|s_i|``, is
below ``max_radius < 1``, so the spectral radius is too, whatever values training gives the free
parameters: the recurrence is a contraction and the state stays bounded over any horizon.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssm_jax.contract import check_dims, prepare_sequence, prepare_step
from ssm_jax.layers import Dense
from ssm_jax.scan import matrix_recurrence, reset_carry
from ssm_jax.validation import check_float


#: Largest ``n`` whose unit triangular inverse is the series by repeated squaring (fewer ops and
#: a shorter compile at ``n = 16``); above it the blocked recursion (fewer flops; measured faster
#: from ``n = 32`` up in a second-order MAML update on a 2-core CPU, both differentiated by
#: autodiff; with its closed-form derivative it stays as fast as the series at 32).
SERIES_MAX_N = 16

#: Precision of every product in the orthogonal factors' maths: orthogonality needs full float32
#: products on any backend.
_HIGHEST = jax.lax.Precision.HIGHEST


def _unit_upper_inverse(p: jax.Array) -> jax.Array:
    """``(I - P)^{-1}`` of a strictly upper triangular ``(n, n)`` ``P``, with no solve or custom call.

    Matrix products (and, above ``SERIES_MAX_N``, pads, gathers and concatenations) only. Only
    the strict upper triangle of ``P`` may be non-zero: the blocked branch reads nothing else,
    and derivatives are defined with respect to those entries only (with respect to the others
    the series' autodiff and the blocked branch's rule, which gives zero, differ).

    For ``n <= SERIES_MAX_N`` the series: ``P`` is nilpotent (``P^n = 0``), so
    ``(I - P)^{-1} = sum_{j<n} P^j = (I + P)(I + P^2)(I + P^4) ... (I + P^{2^{k-1}})`` with
    ``2^k >= n``, ``2 (k - 1)`` products of ``n x n`` matrices, differentiated by autodiff.

    Above it, blocked recursion (as LAPACK's ``trtri``): ``P`` is padded with zeros to
    ``m = 2^k >= n`` (the padded block of ``I - P`` is the identity, so the leading ``n x n``
    block of the padded inverse is the inverse), the ``1 x 1`` diagonal blocks' inverses are
    ones, and each of the ``k`` levels joins every pair of neighbouring diagonal blocks, batched:

        [[I - P11, -P12], [0, I - P22]]^{-1} = [[X11, X11 P12 X22], [0, X22]],

    with ``X11``, ``X22`` the halves' inverses: about ``2 m^3 / 3`` flops in all, against
    ``4 (k - 1) n^3`` for the series. Its derivative is the closed form
    ``d(I - P)^{-1} = X striu(dP) X`` (``X = (I - P)^{-1}``; two products, themselves
    differentiated the same way at any order) instead of autodiff through the ``k`` levels.
    """
    return _series_inverse(p) if p.shape[0] <= SERIES_MAX_N else _blocked_inverse(p)


def _series_inverse(p: jax.Array) -> jax.Array:
    """``_unit_upper_inverse``'s series branch (any ``n``; used up to ``SERIES_MAX_N``)."""
    n = p.shape[0]
    eye = jnp.eye(n, dtype=p.dtype)
    inverse, power, span = eye + p, p, 2
    while span < n:  # static: ceil(log2 n) - 1 trips, unrolled at trace time
        power = jnp.matmul(power, power, precision=_HIGHEST)
        inverse = jnp.matmul(inverse, eye + power, precision=_HIGHEST)
        span *= 2
    return inverse


@jax.custom_jvp
def _blocked_inverse(p: jax.Array) -> jax.Array:
    """``_unit_upper_inverse``'s blocked branch (any ``n``; used above ``SERIES_MAX_N``)."""
    n = p.shape[0]
    m = 1 << (n - 1).bit_length()  # the power of two >= n
    p = jnp.pad(p, ((0, m - n), (0, m - n)))
    inverse = jnp.ones((m, 1, 1), p.dtype)  # (blocks, b, b): the diagonal blocks' inverses
    b = 1
    while b < m:  # static: log2(m) levels, unrolled at trace time
        k = m // (2 * b)
        pairs = jnp.arange(k)
        upper = p.reshape(k, 2 * b, k, 2 * b)[pairs, :b, pairs, b:]  # (k, b, b): each P12
        x11, x22 = inverse[0::2], inverse[1::2]
        x12 = jnp.matmul(jnp.matmul(x11, upper, precision=_HIGHEST), x22, precision=_HIGHEST)
        inverse = jnp.concatenate([jnp.concatenate([x11, x12], axis=2),
                                   jnp.concatenate([jnp.zeros_like(x12), x22], axis=2)], axis=1)
        b *= 2
    return inverse[0, :n, :n]


@_blocked_inverse.defjvp
def _blocked_inverse_jvp(primals, tangents):
    """``d(I - P)^{-1} = X striu(dP) X``: only the strict upper triangle of ``P`` is read."""
    (p,), (dp,) = primals, tangents
    x = _blocked_inverse(p)
    dx = jnp.matmul(jnp.matmul(x, jnp.triu(dp, 1), precision=_HIGHEST), x, precision=_HIGHEST)
    return x, dx


def householder_product(w: jax.Array) -> jax.Array:
    """Orthogonal ``(n, n)`` matrix ``H(w_1) H(w_2) ... H(w_n)`` of the rows of ``w`` (``(n, n)``).

    ``H(v) = I - 2 v v^T / |v|^2`` is the reflection across the hyperplane orthogonal to ``v``;
    every orthogonal ``n x n`` matrix is a product of at most ``n`` of them. A zero row is the
    identity (the normalisation is guarded by ``1e-12``).

    Evaluated in compact WY form (Schreiber & Van Loan, 1989; Joffrain et al., 2006): with the
    rows ``w_i`` as reflection vectors,

        H(w_1) ... H(w_n) = I - W^T S^{-1} W,   S = striu(W W^T) + diag(|w_i|^2 / 2),

    so the product costs one Gram matrix and a few matrix products, with no sequential loop over
    the ``n`` reflections. ``S^{-1} = (I - P)^{-1} D^{-1}`` with ``D = diag(S)`` and
    ``P = -D^{-1} striu(W W^T)`` strictly upper triangular, inverted by ``_unit_upper_inverse``:
    matrix products only (no triangular solve, no custom call), which differentiate to any order
    under ``vmap`` and ``jax.checkpoint`` on every backend.
    """
    gram = jnp.matmul(w, w.T, precision=_HIGHEST)
    inv_diag = 2.0 / (jnp.diagonal(gram) + 1e-12)
    p = -jnp.triu(gram, 1) * inv_diag[:, None]
    x = jnp.matmul(_unit_upper_inverse(p), w * inv_diag[:, None], precision=_HIGHEST)
    return jnp.eye(w.shape[1], dtype=w.dtype) - jnp.matmul(w.T, x, precision=_HIGHEST)


def _atanh_uniform(low: float, high: float):
    """Initialiser for logits whose ``tanh`` is uniform in ``[low, high]``."""

    def init(key, shape, dtype=jnp.float32):
        return jnp.arctanh(jax.random.uniform(key, shape, dtype, low, high))

    return init


class SSM(nn.Module):
    """Dense linear state space model (the seeds' ``SSM(state_dim, input_dim, output_dim, hidden_dim)``).

    Attributes:
      state_dim: size of the recurrent state ``h``.
      input_dim: size of each input ``x_t``.
      output_dim: size of each output ``y_t``.
      hidden_dim: width of the input MLP.
      max_radius: bound on the singular values of ``A``, in ``(0, 1)``.
      chunk_size: how sequence calls evaluate the recurrence (``ssm_jax.scan.matrix_recurrence``):
        1 steps through time; ``L > 1`` in chunks of ``L`` steps, faster on long sequences
        (e.g. 32 for 1000 steps). The states are the same up to float rounding; ``step`` is
        unaffected.

    Shapes: ``xs`` ``(batch, time, input_dim)`` -> ``ys`` ``(batch, time, output_dim)``; the carry
    is ``(batch, state_dim)`` float32, zero initially.
    """

    state_dim: int
    input_dim: int
    output_dim: int
    hidden_dim: int = 64
    max_radius: float = 0.999
    chunk_size: int = 1

    def __post_init__(self):
        check_dims(self, "state_dim", "input_dim", "output_dim", "hidden_dim", "chunk_size")
        check_float("max_radius", self.max_radius, minimum=0.0, maximum=1.0, strict_min=True,
                    strict_max=True)
        super().__post_init__()

    def setup(self):
        n = self.state_dim
        self.encoder = Dense(self.hidden_dim, name="encoder")
        self.B = Dense(n, name="B")
        self.C = Dense(self.output_dim, name="C")
        self.D = Dense(self.output_dim, use_bias=False, name="D")
        ortho_init = nn.initializers.normal(1.0)
        self.A_left = self.param("A_left", ortho_init, (n, n))
        self.A_right = self.param("A_right", ortho_init, (n, n))
        self.A_logits = self.param("A_logits", _atanh_uniform(0.5, 0.95), (n,))

    def transition(self) -> jax.Array:
        """The ``(state_dim, state_dim)`` state matrix ``A`` (largest singular value < max_radius)."""
        s = self.max_radius * jnp.tanh(self.A_logits)
        # both factors in one batched call (half the ops of two separate products)
        u, v = jax.vmap(householder_product)(jnp.stack([self.A_left, self.A_right]))
        return u @ (s[:, None] * v.T)

    def initialize_carry(self, batch_size: int) -> jax.Array:
        """Zero state, ``(batch_size, state_dim)``."""
        return jnp.zeros((batch_size, self.state_dim), jnp.float32)

    def _drive(self, x: jax.Array) -> jax.Array:
        return self.B(jnp.tanh(self.encoder(x)))

    def __call__(self, xs, resets=None, carry=None):
        """Run over a sequence; returns ``(ys (batch, time, output_dim), final carry)``."""
        no_resets = resets is None
        xs, resets, carry = prepare_sequence(self, xs, resets, carry)
        drive = self._drive(xs)
        # without resets, skip the (all-false) per-step select and the masks it saves for AD
        hs = matrix_recurrence(self.transition().T, drive, carry, None if no_resets else resets,
                               self.chunk_size)
        return self.C(hs) + self.D(xs), hs[:, -1]

    def step(self, x, carry, reset=None):
        """One time step; ``x`` ``(batch, input_dim)`` -> ``(y (batch, output_dim), carry)``."""
        x, reset = prepare_step(self, x, carry, reset)
        if reset is not None:
            carry = reset_carry(carry, reset)
        h = carry @ self.transition().T + self._drive(x)
        return self.C(h) + self.D(x), h
