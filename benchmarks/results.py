"""results.json's method entries, the printed table, and the environment a run ran in.

`method_results(config, trainers, measurement)`: one entry per configured method, in order:
`benchmarks.stats.summarize` of its per-task returns, `episodes` (how they were measured),
`trained_model` (its trainer), its registry entry's extra fields, on a suite whose tasks switch
`around_switch` (`switch_report`: the return before and after the switch), on a suite with a
hidden goal `final_goal_distance` (`summarize` of the final |x - x*| per task, in m, its keys
without "return_"), on runs that hold the goal oracle `of_goal_oracle` (`oracle_fraction`: the
method's return as a fraction of the oracle's), and `vs_<reference>`, the
paired per-task difference to each non-adaptive baseline of `REFERENCES` the run holds (but
the baseline itself): non_adaptive, and non_adaptive_ssm.
`print_table(entries)` prints them; `json_safe` and `versions` prepare the rest of results.json.
`per_task_rows(config, measurement)` / `write_csv(path, rows)`: per_task.csv, one row per
(method, seed, test task) with the task's physics and the returns after each adaptation step.
`suite_summary(results by suite)` / `print_suite_summary`: `--suite all`'s summary.json and table.
"""

from __future__ import annotations

import csv
import os
import platform
import sys
from importlib import metadata as importlib_metadata

import jax
import numpy as np

from benchmarks import evaluation as ev
from benchmarks.methods import GOAL_METHODS, METHODS_BY_NAME, REFERENCE, REFERENCES, TASK_FIELDS, Measurement
from benchmarks.rundir import atomic_write
from benchmarks.stats import paired_difference, percent, summarize

PACKAGES = ("jax", "jaxlib", "flax", "optax", "gymnax", "chex", "orbax-checkpoint", "numpy",
            "matplotlib")


def method_results(config, trainers: dict, measurement: Measurement, registry=METHODS_BY_NAME) -> dict:
    """results.json's "methods": method name -> entry (see the module docstring)."""
    m = measurement
    out = {}
    for name in config.methods:
        method = registry[name]
        returns = m.returns[name]
        entry = summarize(returns, m.kinds)
        entry["episodes"] = {"num_seeds": config.num_seeds, "tasks_per_seed": config.evaluation.num_tasks,
                             "envs_per_task": config.evaluation.num_envs, "episode_limit": config.episode_steps}
        entry["trained_model"] = method.trainer
        entry.update(method.report(m.series[name], m.kinds, config, trainers[method.trainer]))
        around = method.measured(ev.AROUND_SWITCH, m.series[name], config)
        if around is not None:
            entry["around_switch"] = switch_report(around, m.kinds)
        distance = method.measured(ev.GOAL_DISTANCE, m.series[name], config)
        if distance is not None:
            entry["final_goal_distance"] = {k.removeprefix("return_"): v
                                            for k, v in summarize(distance, m.kinds).items()}
        for oracle in GOAL_METHODS:
            if name != oracle and oracle in m.returns:
                entry[f"of_{oracle}"] = oracle_fraction(returns, m.returns[oracle])
        for reference in REFERENCES:
            if name != reference and reference in m.returns:
                entry[f"vs_{reference}"] = paired_difference(returns, m.returns[reference], m.kinds)
        out[name] = entry
    return out


def oracle_fraction(returns, oracle) -> dict:
    """A method's return as a fraction of an oracle's on the same `(S, N)` tasks: "mean" is the
    ratio of the two `summarize` return means (over seeds x tasks, finite returns only),
    "per_seed" the ratio of each seed's (`per_seed_mean`); NaN where the oracle's mean is not
    positive (the ratio then means nothing)."""
    returns, oracle = np.asarray(returns, np.float64), np.asarray(oracle, np.float64)
    if returns.shape != oracle.shape or returns.ndim != 2:
        raise ValueError(f"returns and oracle must both be (seeds, tasks), got {returns.shape} and {oracle.shape}")
    kinds = np.zeros(returns.shape, bool)
    a, b = summarize(returns, kinds), summarize(oracle, kinds)
    ratio = lambda x, y: float(x / y) if y > 0 else float("nan")  # noqa: E731
    return {"mean": ratio(a["return_mean"], b["return_mean"]),
            "per_seed": [ratio(x, y) for x, y in zip(a["per_seed_mean"], b["per_seed_mean"])]}


def switch_report(around, kinds) -> dict:
    """results.json's "around_switch" of a method: `around` `(S, N, 2 * W)` rewards around the
    switch (`Method.measured(evaluation.AROUND_SWITCH, ...)`; entry `W + d` is the reward `d` steps after it, `d` in
    `[-W, W)`). "before" / "after": `summarize` of each task's reward sum over the `W` steps
    before / from the switch; "after_minus_before": their paired difference; "recovery":
    mean after / mean before (the fraction of the pre-switch return kept after it);
    "reward_by_offset": the mean over seeds x tasks at each offset, and per seed."""
    around = np.asarray(around, np.float64)
    w = around.shape[-1] // 2
    before, after = around[..., :w].sum(-1), around[..., w:].sum(-1)
    b, a = summarize(before, kinds), summarize(after, kinds)
    return {"window": w, "first_offset": -w,
            "before": b, "after": a,
            "after_minus_before": paired_difference(after, before, kinds)["all"],
            "recovery": a["return_mean"] / b["return_mean"] if b["return_mean"] > 0 else float("nan"),
            "reward_by_offset": around.mean(axis=(0, 1)).tolist(),
            "reward_by_offset_per_seed": around.mean(axis=1).tolist()}


def print_table(entries: dict, log=print, registry=METHODS_BY_NAME) -> None:
    """The results table: one row per method, then its per-seed means, its registry entry's
    lines and its paired differences to the non-adaptive baselines."""
    log("\nmean return over seeds x held-out tasks; +- is the half-width of a 95% interval from a "
        "Student-t over the training seeds' means (benchmarks.stats)")
    head = f"{'method':20s} {'return (95% CI)':>20s} {'normal force':>18s} {'inverted force':>18s}"
    log(head + "\n" + "-" * len(head))
    indent = f"{'':20s}   "
    for name, m in entries.items():
        k = m["return_by_task_kind"]
        fmt = lambda mean, ci: f"{mean:7.1f} +- {ci:5.1f}" if np.isfinite(ci) else f"{mean:7.1f}"  # noqa: E731
        log(f"{name:20s} {fmt(m['return_mean'], m['return_ci95']):>20s} "
            f"{fmt(k['normal']['mean'], k['normal']['ci95']):>18s} "
            f"{fmt(k['inverted']['mean'], k['inverted']['ci95']):>18s}")
        log(indent + "per training seed: " + ", ".join(f"{x:.1f}" for x in m["per_seed_mean"]))
        for line in registry[name].lines(m):
            log(indent + line)
        sw = m.get("around_switch")
        if sw is not None:
            log(f"{indent}return over the {sw['window']} steps before / after the switch: "
                f"{sw['before']['return_mean']:.1f} / {sw['after']['return_mean']:.1f} "
                f"(recovery {percent(sw['recovery'])})")
        for oracle in GOAL_METHODS:
            fraction = m.get(f"of_{oracle}")
            if fraction is not None:
                log(f"{indent}of {oracle}'s return: {percent(fraction['mean'])} (per seed "
                    + ", ".join(percent(f) for f in fraction["per_seed"]) + ")")
        distance = m.get("final_goal_distance")
        if distance is not None:
            ci = f" +- {distance['ci95']:.2f}" if np.isfinite(distance["ci95"]) else ""
            log(f"{indent}final |x - x*| of each env's first episode: {distance['mean']:.2f}{ci} m")
        for reference in REFERENCES:
            versus = m.get(f"vs_{reference}")
            if versus is not None:
                span = lambda d: f"{d['mean']:+.1f} [{d['ci95_low']:+.1f}, {d['ci95_high']:+.1f}]"  # noqa: E731
                log(f"{indent}minus {reference}, paired by task (95% CI): {span(versus['all'])}; "
                    f"inverted force {span(versus['inverted'])}")


def json_safe(x):
    """`x` with numpy scalars as Python numbers and non-finite floats as None."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def versions() -> dict:
    """Python, platform, jax backend and the versions of the packages a run depends on."""
    out = {"python": sys.version.split()[0], "platform": platform.platform(),
           "machine": platform.machine(), "cpu_count": os.cpu_count(),
           "jax_backend": jax.default_backend()}
    for p in PACKAGES:
        try:
            out[p] = importlib_metadata.version(p)
        except importlib_metadata.PackageNotFoundError:  # pragma: no cover
            out[p] = None
    return out


def per_task_columns(task_fields=TASK_FIELDS) -> tuple:
    """per_task.csv's columns before the `return_after_<k>` ones, with the task columns
    `task_fields` (the suite's varied fields, `envs.Suite.task_fields`)."""
    return ("method", "seed", "seed_index", "task_index") + tuple(task_fields) + (
        "inverted", "return", "adaptation_unit")


#: per_task.csv's columns before the `return_after_<k>` ones on CartPole.
PER_TASK_COLUMNS = per_task_columns(TASK_FIELDS)


def per_task_rows(config, measurement: Measurement, registry=METHODS_BY_NAME) -> list:
    """per_task.csv's rows: one dict per (method, seed, test task), methods in config order.

    Columns: `per_task_columns(fields)`, `fields` the measured tasks' varied fields
    (`Measurement.tasks`: CartPole's `TASK_FIELDS`, Acrobot's link lengths and masses,
    Pendulum's m, l, g, max_torque; and the goal suite's hidden target `goal_x`) (seed is the
    training seed `config.seed + seed_index`, task_index the task's position in that seed's test
    tasks, `benchmarks.evaluation.test_tasks`; CartPole force_mag and Pendulum m are negative on
    inverted tasks; `return` is the method's per-task return, the one results.json summarises),
    then `return_after_<k>` for k = 0..K: the return after k units of
    `adaptation_unit` (`Method.by_adaptation`; empty beyond a method's own K, and `return_after_0`
    alone for a method that does not adapt). A NaN return (no completed episode) is "nan".
    """
    m = measurement
    rows = []
    for name in config.methods:
        method = registry[name]
        by = method.by_adaptation(m.series[name])  # (S, N, K + 1)
        ret = m.returns[name]
        for s in range(ret.shape[0]):
            for i in range(ret.shape[1]):
                row = {"method": name, "seed": config.seed + s, "seed_index": s, "task_index": i}
                row.update({f: float(v[s, i]) for f, v in m.tasks.items()})
                row.update({"inverted": bool(m.kinds[s, i]), "return": float(ret[s, i]),
                            "adaptation_unit": method.adaptation_unit})
                row.update({f"return_after_{k}": float(by[s, i, k]) for k in range(by.shape[-1])})
                rows.append(row)
    return rows


def write_csv(path: str, rows: list, columns=None) -> None:
    """Write `rows` (dicts) as CSV with a header (`benchmarks.rundir.atomic_write`: never
    half-written, a failed write leaves the previous file); columns default to every key in
    order of first appearance; missing values are empty."""
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_write(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), restval="")
        writer.writeheader()
        writer.writerows(rows)


def suite_summary(results: dict) -> dict:
    """summary.json of `--suite all`: suite -> method -> its return (`return_mean`,
    `return_ci95`, `per_seed_mean`) and, but for the reference method, `vs_<reference>` (the
    paired difference over all tasks: mean, ci95_low, ci95_high), from each suite's
    results.json dict (`results`: suite name -> results)."""
    out = {}
    for suite, res in results.items():
        rows = {}
        for name, entry in res["methods"].items():
            row = {k: entry[k] for k in ("return_mean", "return_ci95", "per_seed_mean")}
            versus = entry.get(f"vs_{REFERENCE}")
            if versus is not None:
                row[f"vs_{REFERENCE}"] = {k: versus["all"][k] for k in ("mean", "ci95_low", "ci95_high")}
            rows[name] = row
        out[suite] = rows
    return json_safe(out)


def print_suite_summary(summary: dict, log=print) -> None:
    """One table for `--suite all`: a row per method, a column per suite; each cell the mean
    return +- its seed-level 95% half-width, and under it the paired difference to the
    reference method with its 95% interval."""
    suites = list(summary)
    methods = list(dict.fromkeys(m for s in suites for m in summary[s]))
    width = 24
    log("\nsummary over suites: mean return +- 95% CI over training seeds; below it, minus "
        f"{REFERENCE} paired by task [95% CI]")
    head = f"{'method':20s}" + "".join(f"{s:>{width}s}" for s in suites)
    log(head + "\n" + "-" * len(head))

    def cell(row, fmt):
        return f"{fmt(row):>{width}s}" if row is not None else f"{'-':>{width}s}"

    def ret(row):
        mean, ci = row["return_mean"], row["return_ci95"]
        if mean is None:
            return "nan"
        return f"{mean:.1f} +- {ci:.1f}" if ci is not None else f"{mean:.1f}"

    def diff(row):
        d = row.get(f"vs_{REFERENCE}")
        if d is None or d["mean"] is None:
            return ""
        low = "nan" if d["ci95_low"] is None else f"{d['ci95_low']:+.1f}"
        high = "nan" if d["ci95_high"] is None else f"{d['ci95_high']:+.1f}"
        return f"{d['mean']:+.1f} [{low}, {high}]"

    for m in methods:
        rows = [summary[s].get(m) for s in suites]
        log(f"{m:20s}" + "".join(cell(r, ret) for r in rows))
        if any(r is not None and r.get(f"vs_{REFERENCE}") for r in rows):
            log(f"{'':20s}" + "".join(cell(r, diff) for r in rows))
