"""Summary statistics of per-task returns: mean and 95% confidence intervals.

`summarize(returns, inverted)` takes per-task returns `(num_seeds, num_tasks)` (one training
seed per row, its own held-out test tasks along the row) and the task kinds, and returns
plain-Python floats for results.json.

Two sources of variation make a reported mean uncertain: which tasks were drawn, and which
training seed produced the policy (seeds of RL runs differ far more than tasks within a seed).
The unit of replication is therefore the training seed: `return_ci95` is the Student-t
interval over the S per-seed means, `mean +- t(0.975, S - 1) * sd(seed means) / sqrt(S)`. Each
seed mean already averages its tasks, so task noise is inside the spread of the seed means,
and with few seeds the t quantile (4.30 for S = 3) is what keeps the interval honest: a
percentile bootstrap over 3 seeds, or the normal quantile, covers the true mean far less than
95% of the time. With one seed there is no seed-level interval (NaN). The textbook
`1.96 std / sqrt(n)` over all seed x task returns, which treats every task of one policy as
independent evidence, is kept as `task_ci95` (`mean_ci95`): it answers "how well did these
particular policies do", not "how well does the method do".

Non-finite returns (a task where no episode completed, which cannot happen with 500-step
windows) are excluded and counted.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.stats

Z95 = 1.959963984540054


def percent(x) -> str:
    """`x` as a whole percentage, "n/a" for None or a non-finite value (results.json's null)."""
    return f"{x:.0%}" if x is not None and np.isfinite(x) else "n/a"


def mean_ci95(values) -> tuple[float, float, int]:
    """`(mean, half-width of the normal-approximation 95% CI, n)` of the finite entries."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(np.mean(v))
    if n == 1:
        return mean, math.nan, 1
    return mean, float(Z95 * np.std(v, ddof=1) / math.sqrt(n)), n


def seed_t_interval(returns, mask=None) -> tuple[float, float]:
    """Ends of the 95% Student-t interval of the mean over training seeds.

    `returns` `(S, N)`; `mask` `(S, N)` bool selects the entries to use (non-finite entries are
    dropped). Each seed contributes the mean of its selected entries; seeds with none are
    dropped. NaNs if fewer than two seeds remain.
    """
    r = np.asarray(returns, dtype=np.float64)
    r = r.reshape(r.shape[0], -1)
    keep = np.isfinite(r) if mask is None else (np.asarray(mask, bool).reshape(r.shape) & np.isfinite(r))
    seed_means = np.array([r[s][keep[s]].mean() for s in range(r.shape[0]) if keep[s].any()])
    if seed_means.size < 2:
        return math.nan, math.nan
    center = float(seed_means.mean())
    half = float(scipy.stats.t.ppf(0.975, seed_means.size - 1)
                 * seed_means.std(ddof=1) / math.sqrt(seed_means.size))
    return center - half, center + half


def _entry(r, mask) -> dict:
    mean, task_ci, n = mean_ci95(r[mask])
    low, high = seed_t_interval(r, mask)
    return {"mean": mean, "ci95": (high - low) / 2.0, "ci95_low": low, "ci95_high": high,
            "task_ci95": task_ci, "n": n}


def summarize(returns, inverted) -> dict:
    """Summary of per-task returns `(S, N)` with task kinds `inverted` `(S, N)` bool.

    Returns a dict: return_mean, return_ci95 (half-width of the seed-level t interval, centred
    on the mean of the seed means, which equals return_mean when seeds have equally many
    tasks), return_ci95_low/high (its ends), task_ci95 (the normal-approximation half-width
    that treats all S x N returns as independent), n, return_by_task_kind {normal, inverted:
    {mean, ci95, ci95_low, ci95_high, task_ci95, n}}, per_seed_mean (S floats), nonfinite
    (count of excluded returns).
    """
    r = np.asarray(returns, dtype=np.float64)
    inv = np.broadcast_to(np.asarray(inverted, dtype=bool), r.shape)
    if r.ndim == 1:  # one seed
        r, inv = r[None], inv[None]
    r, inv = r.reshape(r.shape[0], -1), inv.reshape(r.shape[0], -1)
    everything = _entry(r, np.ones_like(inv))
    kinds = {name: _entry(r, mask) for name, mask in (("normal", ~inv), ("inverted", inv))}
    per_seed = [mean_ci95(row)[0] for row in r]
    return {"return_mean": everything["mean"], "return_ci95": everything["ci95"],
            "return_ci95_low": everything["ci95_low"], "return_ci95_high": everything["ci95_high"],
            "task_ci95": everything["task_ci95"], "n": everything["n"],
            "return_by_task_kind": kinds, "per_seed_mean": per_seed,
            "nonfinite": int(np.sum(~np.isfinite(r)))}


def paired_difference(returns, baseline, inverted) -> dict:
    """Mean return difference `returns - baseline` on the same tasks, with seed-level intervals.

    `returns`, `baseline` `(S, N)`: two methods' returns on the same held-out tasks of the same
    seeds; `inverted` `(S, N)` bool. Pairing by task removes the task-to-task variation the two
    share, so this answers "is A better than B" more sharply than comparing A's and B's own
    intervals. Returns {all, normal, inverted: {mean, ci95_low, ci95_high}} (the seed-level t
    interval of the per-seed mean differences; NaN ends with one seed).
    """
    a = np.asarray(returns, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"returns and baseline must have the same (seeds, tasks) shape, got "
                         f"{a.shape} and {b.shape}")
    d = (a - b).reshape(a.shape[0] if a.ndim > 1 else 1, -1)
    inv = np.broadcast_to(np.asarray(inverted, dtype=bool).reshape(d.shape), d.shape)
    out = {}
    for name, mask in (("all", np.ones_like(inv)), ("normal", ~inv), ("inverted", inv)):
        low, high = seed_t_interval(d, mask)
        out[name] = {"mean": mean_ci95(d[mask])[0], "ci95_low": low, "ci95_high": high}
    return out
