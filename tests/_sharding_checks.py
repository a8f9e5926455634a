"""The equality checks of tests/test_sharding.py, in one process with 8 forced CPU devices.

Run as `python tests/_sharding_checks.py [CHECK ...]` (default: every check of `CHECKS`) with `XLA_FLAGS=--xla_force_host_platform_device_count=8`
set before JAX starts (tests/test_sharding.py does, once per session); prints one JSON object:
for each check the largest absolute and relative differences between the sharded and the
single-device results, whether the outputs carry the expected shardings, and the errors of the
bad inputs. The reference of every check is the same library call without a mesh (one device),
computed in the same process.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np


def diff(a, b) -> dict:
    """Largest |a - b| and |a - b| / (|b| + 1e-6) over every leaf of two pytrees, and whether
    they compare equal under rtol 1e-5 / atol 1e-6 (numpy.allclose) leaf by leaf."""
    la, lb = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
    assert len(la) == len(lb), (len(la), len(lb))
    abs_d = rel_d = 0.0
    close = True
    for x, y in zip(la, lb):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        assert x.shape == y.shape, (x.shape, y.shape)
        d = np.abs(x - y)
        d = np.where(np.isnan(x) & np.isnan(y), 0.0, d)
        if d.size:
            abs_d = max(abs_d, float(np.max(d)))
            rel_d = max(rel_d, float(np.max(d / (np.abs(y) + 1e-6))))
        close = close and bool(np.allclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True))
    return {"max_abs": abs_d, "max_rel": rel_d, "close": close, "leaves": len(la)}


def error_of(fn) -> str:
    try:
        fn()
    except ValueError as err:
        return str(err)
    return ""


def all_sharded(tree, mesh, axis=0) -> bool:
    from ssm_jax import sharding

    return all(sharding.is_sharded(x, mesh, axis) for x in jax.tree.leaves(tree) if np.ndim(x) > axis)


def all_replicated(tree, mesh) -> bool:
    from ssm_jax import sharding

    return all(sharding.is_replicated(x, mesh) for x in jax.tree.leaves(tree))


def check_meta_maml(out: dict) -> None:
    import flax.linen as nn

    from maml import MetaMAML, sample_sinusoid_tasks
    from ssm_jax import sharding

    mlp = nn.Sequential([nn.Dense(16), nn.relu, nn.Dense(1)])
    params = mlp.init(jax.random.key(0), jnp.zeros((1, 1)))
    tasks = sample_sinusoid_tasks(jax.random.key(1), 8)
    kw = dict(inner_lr=0.01, outer_lr=0.001, num_inner_steps=1, first_order=False)
    single = MetaMAML(mlp, **kw)
    state = single.init(params)
    first_state, ref_metrics = single.meta_update(state, tasks)
    ref_state, ref_metrics2 = single.meta_update(first_state, tasks)
    for n in (8,):
        mesh = sharding.make_mesh(n)
        algo = MetaMAML(mlp, **kw, mesh=mesh)
        s, m = algo.meta_update(algo.init(params), tasks)
        s, m2 = algo.meta_update(s, tasks)
        out[f"meta_maml_{n}"] = {"state": diff(s, ref_state), "metrics": diff((m, m2), (ref_metrics, ref_metrics2)),
                                 "replicated": all_replicated((s, m2), mesh),
                                 "devices": len(s.params["params"]["layers_0"]["kernel"].sharding.device_set)}
    # one update per further mesh size (2 and 4 devices: other splits of the same 8 tasks)
    for n in (2, 4):
        mesh = sharding.make_mesh(n)
        algo = MetaMAML(mlp, **kw, mesh=mesh)
        s, m = algo.meta_update(algo.init(params), tasks)
        out[f"meta_maml_{n}"] = {"state": diff(s, first_state), "metrics": diff(m, ref_metrics),
                                 "replicated": all_replicated((s, m), mesh),
                                 "devices": len(s.params["params"]["layers_0"]["kernel"].sharding.device_set)}
    mesh = sharding.make_mesh(4)
    algo = MetaMAML(mlp, **kw, mesh=mesh)
    out["meta_maml_indivisible"] = error_of(
        lambda: algo.meta_update(algo.init(params), sample_sinusoid_tasks(jax.random.key(2), 6)))
    placed = sharding.shard_batch(tasks, mesh)
    out["shard_batch_sharded"] = all_sharded(placed, mesh)
    # placing again keeps every leaf (the same objects) without calling jax.device_put; a tree
    # mixing placed and host leaves gets the host ones placed in ONE device_put, values unchanged
    calls = []
    device_put = jax.device_put

    def counted(*args, **kwargs):
        calls.append(1)
        return device_put(*args, **kwargs)

    rep = sharding.replicate(params, mesh)
    jax.device_put = counted
    try:
        again = sharding.shard_batch(placed, mesh)
        rep_again = sharding.replicate(rep, mesh)
        out["placed_device_puts"] = len(calls)
        mixed = sharding.replicate({"placed": rep, "host": params}, mesh)
        out["mixed_device_puts"] = len(calls) - out["placed_device_puts"]
    finally:
        jax.device_put = device_put
    out["shard_batch_again_same"] = all(a is b for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(placed)))
    out["replicate_again_same"] = all(a is b for a, b in zip(jax.tree.leaves(rep_again), jax.tree.leaves(rep)))
    # `place` with a sharding of any mesh (typed keys included) and `to_host` back: the values
    keys = jax.random.split(jax.random.key(3), 8)
    grid = jax.sharding.Mesh(np.asarray(jax.devices()[:4]).reshape(2, 2), ("seed", "batch"))
    spread = sharding.place(keys, jax.sharding.NamedSharding(grid, jax.sharding.PartitionSpec("seed")))
    back = sharding.to_host({"tasks": placed, "keys": spread, "n": 3})
    out["place_to_host"] = {
        "keys_spread": len(spread.sharding.device_set) == 4 and spread.dtype == keys.dtype,
        "keys": back["keys"].dtype == keys.dtype and bool(np.array_equal(
            np.asarray(jax.random.key_data(back["keys"])), np.asarray(jax.random.key_data(keys)))),
        "tasks": all(isinstance(a, np.ndarray) and np.array_equal(a, np.asarray(b))
                     for a, b in zip(jax.tree.leaves(back["tasks"]), jax.tree.leaves(tasks))),
        "scalar_kept": back["n"] == 3}
    out["replicate_mixed"] = {"replicated": all_replicated(mixed, mesh),
                              "kept": all(a is b for a, b in zip(jax.tree.leaves(mixed["placed"]), jax.tree.leaves(rep))),
                              "equal": all(bool(np.array_equal(a, b)) for a, b in
                                           zip(jax.tree.leaves(mixed["host"]), jax.tree.leaves(params)))}


def check_maml_rl(out: dict) -> None:
    import envs
    from maml import MAMLRL, MAMLRLConfig
    from ssm_jax import MLPPolicy, sharding

    policy = MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=16)
    # the value baseline: the linear one's ridge solve (collinear time features, condition number
    # ~1e5) amplifies ulp-level differences of any recompilation to ~1e-2 relative in the
    # meta-gradient norm, so it cannot show reassociation alone (README, scale-out)
    config = MAMLRLConfig(num_inner_steps=1, first_order=False, baseline="value", support_envs=2,
                          support_steps=16, query_envs=2, query_steps=16, num_outer_epochs=2)
    tasks = envs.CartPoleTasks().sample(jax.random.key(3), 8)
    key = jax.random.key(4)
    single = MAMLRL(policy, config)
    state = single.init(jax.random.key(5))
    ref_state, ref_metrics = single.meta_update(state, tasks, key)
    for n in (8,):
        mesh = sharding.make_mesh(n)
        algo = MAMLRL(policy, config, mesh=mesh)
        s, m = algo.meta_update(algo.init(jax.random.key(5)), tasks, key)
        out[f"maml_rl_{n}"] = {"state": diff(s, ref_state), "metrics": diff(m, ref_metrics),
                               "replicated": all_replicated((s, m), mesh)}
    mesh = sharding.make_mesh(4)
    algo = MAMLRL(policy, config, mesh=mesh)
    out["maml_rl_indivisible"] = error_of(
        lambda: algo.meta_update(state, envs.CartPoleTasks().sample(jax.random.key(6), 6), key))


def check_rollout(out: dict) -> None:
    import envs
    from ssm_jax import SSMPolicy, sharding

    policy = SSMPolicy(obs_dim=4, action_dim=2, state_dim=4, hidden_dim=8)
    params = policy.init(jax.random.key(7), jnp.zeros((1, 1, 4)))
    dist = envs.CartPoleTasks()
    task = jax.tree.map(lambda x: x[0], dist.sample(jax.random.key(8), 1))
    tasks = dist.sample(jax.random.key(9), 4)
    kw = dict(num_envs=8, num_steps=32)
    ref = envs.rollout(jax.random.key(10), policy, params, task, **kw)
    mesh = sharding.make_mesh(8)
    traj = envs.rollout(jax.random.key(10), policy, params, task, **kw, mesh=mesh)
    out["rollout_8"] = {"traj": diff(traj, ref), "sharded": all_sharded(traj, mesh)}
    ref_t = envs.rollout_tasks(jax.random.key(11), policy, params, tasks, num_envs=2, num_steps=32)
    mesh4 = sharding.make_mesh(4)
    traj_t = envs.rollout_tasks(jax.random.key(11), policy, params, tasks, num_envs=2, num_steps=32, mesh=mesh4)
    out["rollout_tasks_4"] = {"traj": diff(traj_t, ref_t), "sharded": all_sharded(traj_t, mesh4)}
    out["rollout_indivisible"] = error_of(
        lambda: envs.rollout(jax.random.key(10), policy, params, task, num_envs=6, num_steps=8, mesh=mesh4))


def check_ppo(out: dict) -> None:
    from maml import PPO, PPOConfig
    from ssm_jax import MLPPolicy, sharding

    policy = MLPPolicy(obs_dim=4, action_dim=2, hidden_dim=16)
    config = PPOConfig(num_tasks=4, num_envs=2, num_steps=16, num_minibatches=2, update_epochs=2,
                       total_iterations=10)
    single = PPO(policy, config)
    state = single.init(jax.random.key(12))
    update = jax.jit(single.update)
    ref_state, ref_metrics = update(state, jax.random.key(13))
    ref_state, ref_metrics = update(ref_state, jax.random.key(14))
    mesh = sharding.make_mesh(4)
    algo = PPO(policy, config, mesh=mesh)
    update = jax.jit(algo.update)
    s, m = update(algo.init(jax.random.key(12)), jax.random.key(13))
    s, m = update(s, jax.random.key(14))
    out["ppo_4"] = {"state": diff(s, ref_state), "metrics": diff(m, ref_metrics),
                    "replicated": all_replicated((s, m), mesh)}
    out["ppo_indivisible"] = error_of(lambda: PPO(policy, PPOConfig(num_tasks=6), mesh=mesh))


CHECKS = {"meta_maml": check_meta_maml, "maml_rl": check_maml_rl, "rollout": check_rollout, "ppo": check_ppo}


def main() -> None:
    import time

    out = {"device_count": jax.device_count(), "seconds": {}}
    names = sys.argv[1:] or list(CHECKS)
    for check in (CHECKS[n] for n in names):
        t0 = time.perf_counter()
        check(out)
        out["seconds"][check.__name__] = time.perf_counter() - t0
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
