"""Actor-critic policies over the SSM layers (and an MLP baseline), with the SSM contract.

Both policies map observations to a :class:`PolicyOutput` (an action distribution and a value)
and follow the contract of :mod:`ssm_jax`:

- ``out, carry = policy.apply(params, obs_seq, resets=None, carry=None)``: ``obs_seq``
  ``(batch, time, obs_dim)``; ``out.value`` ``(batch, time)``; ``out.dist`` has batch axes
  ``(batch, time)``.
- ``out, carry = policy.apply(params, obs, carry, reset=None, method="step")``: ``obs``
  ``(batch, obs_dim)``; ``out.value`` ``(batch,)``.
- ``carry = policy.initialize_carry(batch_size)``.

Discrete policies (``discrete=True``) emit a :class:`Categorical` over ``action_dim`` actions;
continuous ones a :class:`Gaussian` with a learned, state-independent ``log_std``.

Non-finite observations or params. An eager call (concrete arrays) refuses them with a
``ValueError`` naming ``obs``/``obs_seq`` or ``params`` and the bad leaf, before computing
anything: a policy never acts on NaN. Inside ``jit``/``vmap``/``grad`` the values cannot be
read, and NaN propagates instead: a NaN observation (or param) makes the logits (or mean) and
the value of the affected rows NaN, so their ``log_prob`` and ``value`` are NaN
(``sample``/``mode`` of NaN logits return action 0, which means nothing); an infinite
observation may instead be squashed by a ``tanh`` into a finite, extreme output.
``envs.rollout`` refuses non-finite params and
tasks when called eagerly; under tracing the NaN log-probs and values reach the losses, and
the training steps built on them (``maml.core.meta_update``, ``adapt.core.adapt_steps``) skip
a step whose loss, gradient or new params are not finite.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from ssm_jax.contract import check_dims, prepare_sequence, prepare_step
from ssm_jax.diagonal import DiagonalSSM
from ssm_jax.distributions import Categorical, Gaussian
from ssm_jax.layers import Dense
from ssm_jax.selective import SelectiveSSM
from ssm_jax.ssm import SSM
from ssm_jax.validation import check_bool, check_choice, check_finite, check_float

CORES = {"ssm": SSM, "diagonal": DiagonalSSM, "selective": SelectiveSSM}


@struct.dataclass
class PolicyOutput:
    """``dist``: a :class:`Categorical` or :class:`Gaussian`; ``value``: state values, batch-shaped."""

    dist: Categorical | Gaussian
    value: jax.Array


def _check_eager_inputs(module: nn.Module, obs, name: str) -> None:
    """Refuse non-finite ``obs`` and params in an eager call (see the module docstring)."""
    check_finite(name, obs)
    if not module.is_initializing():
        check_finite("params", module.variables)


class _Heads(nn.Module):
    """Actor and critic heads on a feature vector."""

    action_dim: int
    discrete: bool
    init_log_std: float

    @nn.compact
    def __call__(self, features: jax.Array) -> PolicyOutput:
        ortho = nn.initializers.orthogonal
        out = Dense(self.action_dim, kernel_init=ortho(0.01), name="actor")(features)
        value = Dense(1, kernel_init=ortho(1.0), name="critic")(features)[..., 0]
        if self.discrete:
            return PolicyOutput(Categorical(out), value)
        log_std = self.param("log_std", nn.initializers.constant(self.init_log_std), (self.action_dim,))
        return PolicyOutput(Gaussian(out, jnp.broadcast_to(log_std, out.shape)), value)


class SSMPolicy(nn.Module):
    """Recurrent actor-critic: an SSM core (``core``: "ssm", "diagonal" or "selective") and heads.

    The core maps each observation (with its memory of the episode) to ``hidden_dim`` features;
    the heads read ``tanh`` of them. With ``num_layers > 1`` the cores are stacked, each reading
    ``tanh`` of the previous one's features (as deep SSMs stack layers with a nonlinearity
    between them). Stacking matters for in-context adaptation: a single linear recurrence
    accumulates functions of each input alone, so it cannot integrate evidence that is a
    product of the current input and an earlier one (the previous action times the change in
    cart velocity reveals CartPole's force direction); a second layer reads the first one's
    memory of the earlier input next to the current one and can.

    Attributes:
      obs_dim, action_dim: observation size; number of actions (discrete) or action size.
      core: which :mod:`ssm_jax` layer carries the memory.
      state_dim, hidden_dim: passed to every core.
      num_layers: stacked cores; the carry is the core's carry for one layer, a tuple of the
        layers' carries for more.
      discrete: categorical (True) or Gaussian (False) actions.
      parallel: associative scan for sequence calls ("diagonal" and "selective" cores only).
      chunk_size: the "ssm" core's ``chunk_size`` (chunked evaluation of its dense recurrence in
        sequence calls; 1, step by step, for the other cores).
      init_log_std: initial log standard deviation of Gaussian actions.
    """

    obs_dim: int
    action_dim: int
    core: str = "ssm"
    state_dim: int = 16
    hidden_dim: int = 64
    discrete: bool = True
    parallel: bool = False
    init_log_std: float = -0.5
    num_layers: int = 1
    chunk_size: int = 1

    def __post_init__(self):
        check_dims(self, "obs_dim", "action_dim", "state_dim", "hidden_dim", "num_layers",
                   "chunk_size")
        check_choice("core", self.core, sorted(CORES))
        check_bool("discrete", self.discrete)
        check_bool("parallel", self.parallel)
        check_float("init_log_std", self.init_log_std)
        if self.parallel and self.core == "ssm":
            raise ValueError("parallel=True needs a diagonal core ('diagonal' or 'selective'), got core='ssm'")
        if self.chunk_size != 1 and self.core != "ssm":
            raise ValueError(f"chunk_size applies to core='ssm' (the diagonal cores have parallel=True), "
                             f"got chunk_size={self.chunk_size!r} with core={self.core!r}")
        super().__post_init__()

    @property
    def input_dim(self) -> int:
        return self.obs_dim

    def _make_core(self, layer: int = 0, **module_kwargs) -> nn.Module:
        input_dim = self.obs_dim if layer == 0 else self.hidden_dim
        kwargs = dict(state_dim=self.state_dim, input_dim=input_dim, output_dim=self.hidden_dim,
                      hidden_dim=self.hidden_dim)
        if self.core == "ssm":
            kwargs["chunk_size"] = self.chunk_size
        else:
            kwargs["parallel"] = self.parallel
        return CORES[self.core](**kwargs, **module_kwargs)

    def setup(self):
        # layer 0 is named "core" for any num_layers: a one-layer policy's params are {core, heads}
        self.cores = [self._make_core(i, name="core" if i == 0 else f"core_{i}")
                      for i in range(self.num_layers)]
        self.heads = _Heads(self.action_dim, self.discrete, self.init_log_std, name="heads")

    def initialize_carry(self, batch_size: int):
        """The cores' zero state for ``batch_size`` rows (a tuple of them if ``num_layers > 1``)."""
        carries = tuple(self._make_core(i, parent=None).initialize_carry(batch_size)
                        for i in range(self.num_layers))
        return carries[0] if self.num_layers == 1 else carries

    def _layers(self, carry):
        return (carry,) if self.num_layers == 1 else tuple(carry)

    def _pack(self, carries):
        return carries[0] if self.num_layers == 1 else tuple(carries)

    def __call__(self, obs_seq, resets=None, carry=None):
        """``obs_seq`` ``(batch, time, obs_dim)`` -> ``(PolicyOutput, final carry)``."""
        prepare_sequence(self, obs_seq, resets, carry, name="obs_seq")  # errors in policy terms
        _check_eager_inputs(self, obs_seq, "obs_seq")
        layer_carries = (None,) * self.num_layers if carry is None else self._layers(carry)
        features, carries = obs_seq, []
        for i, (core, c) in enumerate(zip(self.cores, layer_carries)):
            features, c = core(features if i == 0 else jnp.tanh(features), resets, c)
            carries.append(c)
        return self.heads(jnp.tanh(features)), self._pack(carries)

    def step(self, obs, carry, reset=None):
        """``obs`` ``(batch, obs_dim)`` -> ``(PolicyOutput, carry)``."""
        prepare_step(self, obs, carry, reset, name="obs")
        _check_eager_inputs(self, obs, "obs")
        features, carries = obs, []
        for i, (core, c) in enumerate(zip(self.cores, self._layers(carry))):
            features, c = core.step(features if i == 0 else jnp.tanh(features), c, reset)
            carries.append(c)
        return self.heads(jnp.tanh(features)), self._pack(carries)


class MLPPolicy(nn.Module):
    """Memoryless actor-critic (two tanh layers of ``hidden_dim``) with the same contract.

    Its carry is a dummy ``(batch, 0)`` array so that code written for :class:`SSMPolicy` runs
    unchanged.
    """

    obs_dim: int
    action_dim: int
    hidden_dim: int = 64
    discrete: bool = True
    init_log_std: float = -0.5

    def __post_init__(self):
        check_dims(self, "obs_dim", "action_dim", "hidden_dim")
        check_bool("discrete", self.discrete)
        check_float("init_log_std", self.init_log_std)
        super().__post_init__()

    @property
    def input_dim(self) -> int:
        return self.obs_dim

    def setup(self):
        self.torso = [Dense(self.hidden_dim, name=f"dense_{i}") for i in range(2)]
        self.heads = _Heads(self.action_dim, self.discrete, self.init_log_std, name="heads")

    def initialize_carry(self, batch_size: int) -> jax.Array:
        return jnp.zeros((batch_size, 0), jnp.float32)

    def _forward(self, obs):
        h = obs
        for layer in self.torso:
            h = jnp.tanh(layer(h))
        return self.heads(h)

    def __call__(self, obs_seq, resets=None, carry=None):
        obs_seq, _, carry = prepare_sequence(self, obs_seq, resets, carry, name="obs_seq")
        _check_eager_inputs(self, obs_seq, "obs_seq")
        return self._forward(obs_seq), carry

    def step(self, obs, carry, reset=None):
        obs, _ = prepare_step(self, obs, carry, reset, name="obs")
        _check_eager_inputs(self, obs, "obs")
        return self._forward(obs), carry
