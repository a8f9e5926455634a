"""S5/S4D-style layer: a diagonal complex state matrix discretised by zero-order hold.

    u_t = W_in x_t + b_in                                   (hidden_dim channels)
    h_t = exp(dt * Lambda) * h_{t-1} + Bbar u_t             (state_dim complex modes)
    z_t = Re(C h_t) + D * u_t
    y_t = W_out gelu(z_t) + b_out                           (output_dim)

with ``Lambda = -exp(log_neg_real) + i * imag`` (real part strictly negative, so
``|exp(dt * Lambda)| < 1`` for every positive step size), ``dt = exp(log_step)`` learnable per
mode, and the zero-order-hold input matrix ``Bbar = (exp(dt Lambda) - 1) / Lambda * B``.
Initialisation follows S4D-Lin (a diagonal approximation of HiPPO-LegS): ``Lambda_n = -1/2 + i pi n``,
with ``dt`` log-uniform in ``[dt_min, dt_max]``.

Because the state matrix is diagonal, the sequence can also be evaluated with
``jax.lax.associative_scan`` (``parallel=True``), resets included.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssm_jax.contract import check_dims, check_dt_range, prepare_sequence, prepare_step
from ssm_jax.layers import Dense
from ssm_jax.scan import linear_recurrence, reset_carry
from ssm_jax.validation import check_bool


def _log_uniform(low: float, high: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, math.log(low), math.log(high))

    return init


def _as_complex(u: jax.Array) -> jax.Array:
    """``u`` as the complex type of its precision: complex64 for float32, complex128 for float64."""
    return u.astype(jnp.result_type(u.dtype, jnp.complex64))


class DiagonalSSM(nn.Module):
    """Diagonal complex SSM with a learnable ZOH step size.

    Attributes:
      state_dim: number of complex modes ``P``.
      input_dim: size of each input ``x_t``.
      output_dim: size of each output ``y_t``.
      hidden_dim: number of channels ``H`` the SSM mixes (input projection width).
      parallel: evaluate sequences with ``jax.lax.associative_scan`` instead of ``jax.lax.scan``.
      dt_min, dt_max: range of the initial step sizes.

    Shapes: ``xs`` ``(batch, time, input_dim)`` -> ``ys`` ``(batch, time, output_dim)``; the carry
    is ``(batch, state_dim)`` complex64, zero initially.
    """

    state_dim: int
    input_dim: int
    output_dim: int
    hidden_dim: int = 64
    parallel: bool = False
    dt_min: float = 1e-3
    dt_max: float = 1e-1

    def __post_init__(self):
        check_dims(self, "state_dim", "input_dim", "output_dim", "hidden_dim")
        check_dt_range(self)
        check_bool("parallel", self.parallel)
        super().__post_init__()

    def setup(self):
        p, h = self.state_dim, self.hidden_dim
        self.encoder = Dense(h, name="encoder")
        self.decoder = Dense(self.output_dim, name="decoder")
        self.log_neg_real = self.param("log_neg_real", nn.initializers.constant(math.log(0.5)), (p,))
        self.imag = self.param("imag", lambda k, s: math.pi * jnp.arange(s[0], dtype=jnp.float32), (p,))
        self.log_step = self.param("log_step", _log_uniform(self.dt_min, self.dt_max), (p,))
        self.B_re = self.param("B_re", nn.initializers.normal(1.0 / math.sqrt(2 * h)), (p, h))
        self.B_im = self.param("B_im", nn.initializers.normal(1.0 / math.sqrt(2 * h)), (p, h))
        self.C_re = self.param("C_re", nn.initializers.normal(1.0 / math.sqrt(2 * p)), (h, p))
        self.C_im = self.param("C_im", nn.initializers.normal(1.0 / math.sqrt(2 * p)), (h, p))
        self.D = self.param("D", nn.initializers.normal(1.0), (h,))

    def discretize(self) -> tuple[jax.Array, jax.Array]:
        """Zero-order hold: ``(Abar (state_dim,), Bbar (state_dim, hidden_dim))``, complex64
        (complex128 with float64 params)."""
        lam = -jnp.exp(self.log_neg_real) + 1j * self.imag
        dt = jnp.exp(self.log_step)
        a_bar = jnp.exp(lam * dt)
        b = self.B_re + 1j * self.B_im
        return a_bar, ((a_bar - 1.0) / lam)[:, None] * b

    def initialize_carry(self, batch_size: int) -> jax.Array:
        """Zero state, ``(batch_size, state_dim)`` complex64."""
        return jnp.zeros((batch_size, self.state_dim), jnp.complex64)

    def _readout(self, h: jax.Array, u: jax.Array) -> jax.Array:
        c = self.C_re + 1j * self.C_im
        z = (h @ c.T).real + self.D * u
        return self.decoder(nn.gelu(z))

    def __call__(self, xs, resets=None, carry=None):
        """Run over a sequence; returns ``(ys (batch, time, output_dim), final carry)``."""
        xs, resets, carry = prepare_sequence(self, xs, resets, carry)
        a_bar, b_bar = self.discretize()
        u = self.encoder(xs)
        drive = _as_complex(u) @ b_bar.T
        decay = jnp.broadcast_to(a_bar, drive.shape)
        hs = linear_recurrence(decay, drive, carry, resets, parallel=self.parallel)
        return self._readout(hs, u), hs[:, -1]

    def step(self, x, carry, reset=None):
        """One time step; ``x`` ``(batch, input_dim)`` -> ``(y (batch, output_dim), carry)``."""
        x, reset = prepare_step(self, x, carry, reset)
        if reset is not None:
            carry = reset_carry(carry, reset)
        a_bar, b_bar = self.discretize()
        u = self.encoder(x)
        h = a_bar * carry + _as_complex(u) @ b_bar.T
        return self._readout(h, u), h
