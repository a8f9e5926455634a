"""Summary statistics of per-task returns: mean and a normal-approximation 95% confidence interval.

`summarize(returns, inverted)` takes per-task returns pooled over seeds (`(num_seeds,
num_tasks)`) and the task kinds, and returns plain-Python floats for results.json. The 95%
interval is `mean +- 1.96 * std / sqrt(n)` over the `n` (seed, task) returns: every task is an
independent draw from the test distribution, so n = seeds x tasks (>= 768 in the default run)
is large enough for the normal approximation. Non-finite returns (a task where no episode
completed, which cannot happen with 500-step windows) are excluded and counted.
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054


def mean_ci95(values) -> tuple[float, float, int]:
    """`(mean, half-width of the 95% CI, n)` of the finite entries of `values` (any shape)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(np.mean(v))
    if n == 1:
        return mean, math.nan, 1
    return mean, float(Z95 * np.std(v, ddof=1) / math.sqrt(n)), n


def summarize(returns, inverted) -> dict:
    """Summary of per-task returns `(S, N)` with task kinds `inverted` `(S, N)` bool.

    Returns a dict: return_mean, return_ci95, n, return_by_task_kind {normal, inverted: {mean,
    ci95, n}}, per_seed_mean (list of S floats), nonfinite (count of excluded returns).
    """
    r = np.asarray(returns, dtype=np.float64)
    inv = np.broadcast_to(np.asarray(inverted, dtype=bool), r.shape)
    mean, ci, n = mean_ci95(r)
    kinds = {}
    for name, mask in (("normal", ~inv), ("inverted", inv)):
        m, c, k = mean_ci95(r[mask])
        kinds[name] = {"mean": m, "ci95": c, "n": k}
    per_seed = [mean_ci95(row)[0] for row in r.reshape(r.shape[0], -1)] if r.ndim >= 2 else [mean]
    return {"return_mean": mean, "return_ci95": ci, "n": n, "return_by_task_kind": kinds,
            "per_seed_mean": per_seed, "nonfinite": int(np.sum(~np.isfinite(r)))}
