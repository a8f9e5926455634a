"""The seeds' calls, as README "Coming from SSM-MetaRL (PyTorch)" maps them, each run here.

Every row of that table has a test below, in the seeds' keyword forms; the README's code
blocks under that heading are executed as written, and its command lines are parsed by the
benchmark's CLI, so the section cannot drift from the code.
"""

import os
import re
import shlex

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
import ssm_jax
from adapt import Adapter, AdaptationConfig, mse_loss
from benchmarks.cli import parse_args
from maml import MAMLRL, MAMLRLConfig, MetaMAML, sample_sinusoid_tasks
from maml.core import MetaState
from ssm_jax import SSM, SSMPolicy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADING = "## Coming from SSM-MetaRL (PyTorch)"


def _section() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    start = text.index(HEADING)
    end = text.find("\n## ", start + len(HEADING))
    return text[start:] if end < 0 else text[start:end]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", _section(), re.S)


def _mse(predictions, targets):
    return jnp.mean((predictions - targets) ** 2)


def _regression(key, n_tasks=None, n=16, input_dim=6, output_dim=3):
    """``(x, y)`` with ``x`` ``(n, 1, input_dim)``: a sequence of one step per sample."""
    lead = () if n_tasks is None else (n_tasks,)
    kx, kw = jax.random.split(key)
    x = jax.random.normal(kx, lead + (n, 1, input_dim))
    w = jax.random.normal(kw, lead + (1, input_dim, output_dim))
    return x, jnp.tanh(x @ w)


def _small_ssm():
    model = SSM(state_dim=8, input_dim=6, output_dim=3, hidden_dim=16)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 1, 6)))
    return model, params


def _ssm_loss(model, params, x, y):
    ys, _ = model.apply(params, x)
    return _mse(ys, y)


def _tree_differs(a, b) -> bool:
    return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ------------------------------------------------------------------------- SSM forward
def test_ssm_takes_the_seeds_constructor_arguments_and_one_step_is_the_seeds_forward():
    model = SSM(state_dim=128, input_dim=64, output_dim=32, hidden_dim=128)  # 003, no device
    assert (model.state_dim, model.input_dim, model.output_dim, model.hidden_dim) == (128, 64, 32, 128)
    assert SSM(128, 64, 32, 128) == model  # the seeds' positional order
    x = jax.random.normal(jax.random.PRNGKey(0), (32, 64))
    params = jax.jit(model.init)(jax.random.PRNGKey(1), x[:, None])
    out, carry = model.apply(params, x, model.initialize_carry(32), method="step")
    chex.assert_shape(out, (32, 32))
    chex.assert_shape(carry, (32, 128))
    # the seeds' single tensor is our sequence call on one time step
    ys, last = model.apply(params, x[:, None])
    chex.assert_shape(ys, (32, 1, 32))
    np.testing.assert_allclose(out, ys[:, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(carry, last, rtol=1e-5, atol=1e-5)


def test_sequence_call_equals_steps_and_resets_restart_the_state(tmp_path):
    model, params = _small_ssm()
    xs = jax.random.normal(jax.random.PRNGKey(2), (4, 10, 6))
    ys, carry = model.apply(params, xs)
    chex.assert_shape(ys, (4, 10, 3))
    c = model.initialize_carry(4)
    for t in range(10):  # reference: one step at a time
        y, c = model.apply(params, xs[:, t], c, method="step")
        np.testing.assert_allclose(y, ys[:, t], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(c, carry, rtol=1e-4, atol=1e-5)
    # a reset at t = 6 makes the rest equal a fresh run on xs[:, 6:]
    resets = jnp.zeros((4, 10), bool).at[:, 6].set(True)
    ys_reset, _ = model.apply(params, xs, resets=resets)
    fresh, _ = model.apply(params, xs[:, 6:])
    np.testing.assert_allclose(ys_reset[:, 6:], fresh, rtol=1e-5, atol=1e-5)
    assert not np.allclose(ys[:, 6:], fresh, atol=1e-4)
    # save/load of core/ssm.py: ssm_jax.save / ssm_jax.load, bit-exact
    path = tmp_path / "ssm.msgpack"
    ssm_jax.save(path, params)
    loaded = ssm_jax.load(path)
    chex.assert_trees_all_equal(loaded, jax.device_get(params))


def test_the_seeds_policy_form_is_ssm_policy_with_obs_dim_for_their_state_dim():
    policy = SSMPolicy(obs_dim=10, action_dim=4, hidden_dim=64)  # 004's SSM(state_dim=10, action_dim=4)
    params = jax.jit(policy.init)(jax.random.PRNGKey(3), jnp.zeros((1, 1, 10)))
    obs = jax.random.normal(jax.random.PRNGKey(4), (32, 10))
    out, carry = policy.apply(params, obs, policy.initialize_carry(32), method="step")
    chex.assert_shape(out.dist.logits, (32, 4))  # forward(state) -> action logits
    chex.assert_shape(out.value, (32,))
    actions = out.dist.sample(jax.random.PRNGKey(5))
    assert actions.shape == (32,) and int(actions.min()) >= 0 and int(actions.max()) < 4
    np.testing.assert_allclose(jnp.exp(jax.nn.log_softmax(out.dist.logits)).sum(-1), 1.0, rtol=1e-5)


# ---------------------------------------------------------------------------- MetaMAML
def test_metamaml_takes_the_seeds_constructor_keywords():
    model, _ = _small_ssm()
    maml = MetaMAML(model=model, inner_lr=0.01, outer_lr=0.001, num_inner_steps=5, first_order=False)
    c = maml.config
    assert (c.inner_lr, c.outer_lr, c.num_inner_steps, c.first_order) == (0.01, 0.001, 5, False)
    assert maml.model is model


def test_adapt_with_the_seeds_keywords_lowers_the_support_loss():
    """[needs helper A2's MetaMAML keyword forms] 003's ``adapt(task_data, task_labels)``."""
    model, params = _small_ssm()
    x, y = _regression(jax.random.PRNGKey(1))
    maml = MetaMAML(model=model, inner_lr=0.05, outer_lr=0.001, num_inner_steps=5, first_order=False)
    adapted = maml.adapt(params, task_data=x, task_labels=y)
    chex.assert_trees_all_equal_shapes_and_dtypes(adapted, params)
    assert _tree_differs(adapted, params)
    assert float(_ssm_loss(model, adapted, x, y)) < float(_ssm_loss(model, params, x, y))
    # adapt and inner_loop are the same inner loop
    by_inner_loop = maml.inner_loop(params, support_x=x, support_y=y)
    chex.assert_trees_all_close(adapted, by_inner_loop, rtol=1e-6, atol=1e-7)


def test_inner_loop_with_the_seeds_keywords_is_sgd_on_the_support_loss():
    """004's ``inner_loop(support_x, support_y)``: one step is ``params - inner_lr * grad``."""
    model, params = _small_ssm()
    x, y = _regression(jax.random.PRNGKey(2))
    maml = MetaMAML(model=model, inner_lr=0.05, outer_lr=0.001, num_inner_steps=1)
    adapted = maml.inner_loop(params, support_x=x, support_y=y)
    grads = jax.grad(lambda p: _ssm_loss(model, p, x, y))(params)
    by_hand = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
    chex.assert_trees_all_close(adapted, by_hand, rtol=1e-5, atol=1e-6)
    assert float(_ssm_loss(model, adapted, x, y)) < float(_ssm_loss(model, params, x, y))


def test_inner_loop_accepts_the_meta_state_and_uses_its_step_sizes():
    """[needs helper A2's MetaMAML keyword forms] ``inner_loop(state, support_x=, support_y=)``."""
    model, params = _small_ssm()
    x, y = _regression(jax.random.PRNGKey(3))
    maml = MetaMAML(model=model, inner_lr=0.05, outer_lr=0.001, num_inner_steps=1, learn_inner_lr=True)
    state = maml.init(params)
    assert isinstance(state, MetaState)
    chex.assert_trees_all_close(maml.inner_loop(state, support_x=x, support_y=y),
                                maml.inner_loop(params, support_x=x, support_y=y), rtol=1e-6)
    doubled = state.replace(inner_lr=jax.tree.map(lambda lr: 2.0 * lr, state.inner_lr))
    grads = jax.grad(lambda p: _ssm_loss(model, p, x, y))(params)
    by_hand = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    chex.assert_trees_all_close(maml.inner_loop(doubled, support_x=x, support_y=y), by_hand,
                                rtol=1e-5, atol=1e-6)


def test_outer_loop_with_the_seeds_keywords_is_the_query_loss_of_the_adapted_params():
    model, params = _small_ssm()
    (sx, sy), (qx, qy) = _regression(jax.random.PRNGKey(4)), _regression(jax.random.PRNGKey(5))
    maml = MetaMAML(model=model, inner_lr=0.05, outer_lr=0.001, num_inner_steps=3)
    adapted = maml.inner_loop(params, support_x=sx, support_y=sy)
    loss = maml.outer_loop(query_x=qx, query_y=qy, adapted_params=adapted)
    ys, _ = model.apply(adapted, qx)
    by_hand = np.mean((np.asarray(ys, np.float64) - np.asarray(qy, np.float64)) ** 2)
    assert jnp.shape(loss) == ()
    np.testing.assert_allclose(float(loss), by_hand, rtol=1e-5)


def test_the_seeds_training_loop_is_jax_grad_of_inner_loop_then_outer_loop():
    """004's ``meta_loss.backward()``: with ``first_order=True`` the meta-gradient is the query
    gradient at the adapted params (FOMAML); second order adds the inner loop's Jacobian."""
    model, params = _small_ssm()
    (sx, sy), (qx, qy) = _regression(jax.random.PRNGKey(6)), _regression(jax.random.PRNGKey(7))
    grads = {}
    for first_order in (True, False):
        maml = MetaMAML(model=model, inner_lr=0.1, outer_lr=0.001, num_inner_steps=1,
                        first_order=first_order)

        def meta_loss(p, maml=maml):
            adapted = maml.inner_loop(p, support_x=sx, support_y=sy)
            return maml.outer_loop(query_x=qx, query_y=qy, adapted_params=adapted)

        grads[first_order] = jax.grad(meta_loss)(params)
        chex.assert_tree_all_finite(grads[first_order])
    adapted = MetaMAML(model=model, inner_lr=0.1, num_inner_steps=1).inner_loop(
        params, support_x=sx, support_y=sy)
    query_grad_at_adapted = jax.grad(lambda p: _ssm_loss(model, p, qx, qy))(adapted)
    chex.assert_trees_all_close(grads[True], query_grad_at_adapted, rtol=1e-4, atol=1e-6)
    assert _tree_differs(grads[False], grads[True])


def _mlp_maml(**kwargs):
    mlp = nn.Sequential([nn.Dense(40), nn.relu, nn.Dense(40), nn.relu, nn.Dense(1)])
    params = jax.jit(mlp.init)(jax.random.PRNGKey(0), jnp.zeros((1, 1)))
    return MetaMAML(model=mlp, **kwargs), params


def _post_adaptation_query_loss(maml, params, tasks):
    """Mean over tasks of outer_loop(inner_loop(...)), one task at a time."""
    losses = []
    for i in range(tasks["support_x"].shape[0]):
        adapted = maml.inner_loop(params, support_x=tasks["support_x"][i], support_y=tasks["support_y"][i])
        losses.append(float(maml.outer_loop(query_x=tasks["query_x"][i], query_y=tasks["query_y"][i],
                                            adapted_params=adapted)))
    return float(np.mean(losses))


def test_meta_update_with_the_seeds_keyword_lowers_the_post_adaptation_query_loss():
    maml, params = _mlp_maml(inner_lr=0.01, outer_lr=0.01, num_inner_steps=5, first_order=False)
    tasks = sample_sinusoid_tasks(jax.random.PRNGKey(1), 8)  # one fixed batch
    before = _post_adaptation_query_loss(maml, params, tasks)
    state = maml.init(params)
    state, metrics = maml.meta_update(state, tasks=tasks)
    # the reported loss is the one computed by hand at the params the step started from
    np.testing.assert_allclose(float(metrics["post_query_loss"]), before, rtol=1e-4)
    assert int(state.step) == 1 and _tree_differs(state.params, params)
    for _ in range(19):
        state, metrics = maml.meta_update(state, tasks=tasks)
    after = _post_adaptation_query_loss(maml, state.params, tasks)
    assert int(state.step) == 20
    assert after < 0.8 * before, (before, after)


def test_maml_for_rl_replaces_the_seeds_meta_trainer_and_task_batch():
    """001's ``MetaMAMLTrainer(policy, meta_lr, inner_lr)`` / ``TaskBatch`` / ``meta_train``."""
    config = MAMLRLConfig(inner_lr=0.1, outer_lr=1e-3, support_envs=2, support_steps=20,
                          query_envs=2, query_steps=20)
    algo = MAMLRL(SSMPolicy(obs_dim=4, action_dim=2, state_dim=4, hidden_dim=8), config)
    state = algo.init(jax.random.PRNGKey(0))
    tasks = envs.CartPoleTasks().sample(jax.random.PRNGKey(1), 2)
    assert tasks.length.shape == (2,)
    new_state, metrics = algo.meta_update(state, tasks, jax.random.PRNGKey(2))
    assert int(new_state.step) == 1 and _tree_differs(new_state.params, state.params)
    chex.assert_tree_all_finite(new_state.params)
    for name in ("pre_return", "post_return"):
        assert np.isfinite(float(metrics[name])) and float(metrics[name]) > 0.0


# ----------------------------------------------------------------------------- Adapter
def _forward_model():
    model = SSM(state_dim=16, input_dim=10, output_dim=4, hidden_dim=64)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 1, 10)))

    def forward(p, obs):  # 004's forward(state): (batch, 10) -> (batch, 4)
        return model.apply(p, obs, model.initialize_carry(obs.shape[0]), method="step")

    return forward, params


def _batch(key, n=32):
    k1, k2 = jax.random.split(key)
    return {"observations": jax.random.normal(k1, (n, 10)), "targets": jax.random.normal(k2, (n, 4))}


def test_adaptation_config_and_adapter_defaults_are_the_seeds():
    cfg = AdaptationConfig()
    assert (cfg.lr, cfg.max_steps_per_call) == (0.001, 1)
    forward, params = _forward_model()
    adapter = Adapter(target=forward, cfg=cfg, params=params)
    assert adapter.strategy == "none"
    batch = _batch(jax.random.PRNGKey(1))
    info = adapter.adapt(batch=batch, loss_fn=mse_loss)
    assert info["steps"] == 0 and info["loss_before"] == info["loss"]
    chex.assert_trees_all_equal(adapter.params, params)


def test_online_adapter_with_the_seeds_keywords_lowers_the_loss():
    forward, params = _forward_model()
    adapter = Adapter(target=forward, cfg=AdaptationConfig(lr=0.01, max_steps_per_call=10),
                      strategy="online", params=params)
    batch = _batch(jax.random.PRNGKey(1))
    info = adapter.adapt(batch=batch, loss_fn=mse_loss)
    assert info["steps"] == 10 and info["rolled_back"] is False
    y0, _ = forward(params, batch["observations"])
    y1, _ = forward(adapter.params, batch["observations"])
    np.testing.assert_allclose(info["loss_before"], _mse(y0, batch["targets"]), rtol=1e-5)
    np.testing.assert_allclose(info["loss"], _mse(y1, batch["targets"]), rtol=1e-5)
    assert info["loss"] < info["loss_before"]


def test_observe_adds_the_context_samples_to_the_next_adapt_call():
    forward, params = _forward_model()
    adapter = Adapter(target=forward, cfg=AdaptationConfig(lr=0.01, max_steps_per_call=2),
                      strategy="online", params=params)
    context = _batch(jax.random.PRNGKey(2), n=4)
    batch = _batch(jax.random.PRNGKey(3))
    adapter.observe(context=context)
    assert adapter.context.keys() == context.keys()  # the last context is kept
    info = adapter.adapt(batch=batch, loss_fn=mse_loss)
    joined = {k: jnp.concatenate([context[k], batch[k]]) for k in batch}
    y0, _ = forward(params, joined["observations"])
    np.testing.assert_allclose(info["loss_before"], _mse(y0, joined["targets"]), rtol=1e-5)
    # consumed: the next call adapts on the batch alone
    start = adapter.params
    info = adapter.adapt(batch=batch, loss_fn=mse_loss)
    y1, _ = forward(start, batch["observations"])
    np.testing.assert_allclose(info["loss_before"], _mse(y1, batch["targets"]), rtol=1e-5)


def test_hybrid_adapter_replays_observed_experience():
    """002's hybrid adapter with its experience buffer: ``strategy="hybrid"``."""
    forward, params = _forward_model()
    adapter = Adapter(target=forward, cfg=AdaptationConfig(lr=0.01, max_steps_per_call=5),
                      strategy="hybrid", params=params)
    adapter.observe(context=_batch(jax.random.PRNGKey(4), n=8))
    assert int(adapter.buffer.size) == 8
    info = adapter.adapt(batch=_batch(jax.random.PRNGKey(5)), loss_fn=mse_loss)
    assert info["steps"] == 5 and info["loss"] < info["loss_before"]
    assert int(adapter.buffer.size) == 8 + 32


# --------------------------------------------------------------------------- env runner
def test_the_gym_wrapper_is_envs_make_and_one_jitted_rollout():
    env, env_params = envs.make("CartPole-v1")
    policy = SSMPolicy(obs_dim=4, action_dim=2, state_dim=4, hidden_dim=8)
    params = jax.jit(policy.init)(jax.random.PRNGKey(0), jnp.zeros((1, 1, 4)))
    traj = envs.rollout(jax.random.PRNGKey(1), policy, params, env_params, num_envs=3,
                        num_steps=50, env=env)
    chex.assert_shape(traj.obs, (3, 50, 4))
    chex.assert_shape(traj.actions, (3, 50))
    assert bool(jnp.all(traj.rewards == 1.0))  # CartPole pays 1 per step, done steps included


# ------------------------------------------------------------------------ command line
SEED_FLAGS = ["--mode", "meta_rl", "--env_name", "CartPole-v1", "--num_epochs", "5",
              "--tasks_per_epoch", "4", "--inner_lr", "0.1", "--outer_lr", "0.003",
              "--num_inner_steps", "1", "--first_order", "--seed", "1"]


def test_cli_accepts_the_seeds_main_py_flags(tmp_path):
    config, options = parse_args(SEED_FLAGS + ["--out", str(tmp_path / "run")])
    assert options.out == str(tmp_path / "run") and not options.eval_only
    config, _ = parse_args(["--mode", "policy_gradient", "--env_name", "CartPole-v1",
                            "--num_episodes", "200", "--out", str(tmp_path / "pg")])
    assert tuple(config.methods) == ("non_adaptive",)
    assert not os.path.exists(tmp_path / "run") and not os.path.exists(tmp_path / "pg")


@pytest.mark.parametrize("bad", [["--mode", "supervised"], ["--num_epochs", "0"],
                                 ["--env_name", "Atari-v5"], ["--inner_lr", "fast"]])
def test_cli_refuses_a_bad_seed_flag_value_with_exit_status_2(tmp_path, bad, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(bad + ["--out", str(tmp_path / "run")])
    assert exc.value.code == 2
    assert bad[0].lstrip("-") in capsys.readouterr().err


def test_readme_command_lines_parse(tmp_path):
    commands = [line for block in _blocks("bash") for line in block.splitlines()
                if line.startswith("python -m benchmarks.cartpole")]
    assert len(commands) == 2
    for i, line in enumerate(commands):
        argv = shlex.split(line)[3:]
        config, _ = parse_args(argv + ["--out", str(tmp_path / f"run{i}")])
        if "policy_gradient" in argv:
            assert tuple(config.methods) == ("non_adaptive",)
        else:
            assert "maml_adapted" in config.methods


# ---------------------------------------------------------------------- README blocks
@pytest.mark.parametrize("index", range(3))
def test_readme_coming_from_blocks_run_as_written(index, capsys):
    """Each block runs as written, in this process (sharing its compilation caches) with globals
    of its own, so nothing leaks between blocks or into the tests; it prints its results and
    leaves jax's configuration as it found it."""
    blocks = _blocks("python")
    assert len(blocks) == 3
    config_before = {k: getattr(jax.config, k) for k in ("jax_enable_x64", "jax_default_matmul_precision")}
    namespace = {"__name__": f"readme_block_{index}"}
    exec(compile(blocks[index], f"README.md, '{HEADING[3:]}' python block {index}", "exec"), namespace)
    assert capsys.readouterr().out.strip()
    assert {k: getattr(jax.config, k) for k in config_before} == config_before
