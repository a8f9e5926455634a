"""Summary statistics of per-task returns: mean and 95% confidence intervals.

`summarize(returns, inverted)` takes per-task returns `(num_seeds, num_tasks)` (one training
seed per row, its own held-out test tasks along the row) and the task kinds, and returns
plain-Python floats for results.json.

Two sources of variation make a reported mean uncertain: which tasks were drawn, and which
training seed produced the policy (seeds of RL runs differ far more than tasks within a seed).
`return_ci95` therefore comes from a two-level (hierarchical) bootstrap: resample the seeds
with replacement, then each chosen seed's tasks (through the normal approximation of a
resampled task mean), and take the mean of the resampled returns. The interval is the
2.5-97.5 percentile range of that mean over `NUM_RESAMPLES` resamples (fixed RNG, so the same
returns always give the same interval), reported as its half-width and its ends. With only a
few seeds this is itself rough, and two-level resampling is conservative when seeds do not
differ (task-level noise enters twice); but unlike the textbook `1.96 std / sqrt(n)` over all
seed x task returns (`mean_ci95`, kept as `task_ci95`) it does not treat the tasks of one
policy as independent evidence about every seed.

Non-finite returns (a task where no episode completed, which cannot happen with 500-step
windows) are excluded and counted.
"""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054
NUM_RESAMPLES = 10000


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


def hierarchical_bootstrap(returns, mask=None, num_resamples: int = NUM_RESAMPLES,
                           seed: int = 0) -> tuple[float, float]:
    """2.5 and 97.5 percentiles of the seed-then-task bootstrap distribution of the mean.

    `returns` `(S, N)`; `mask` `(S, N)` bool selects the entries to use (and non-finite entries
    are dropped). Seeds left with no entries are dropped; NaNs if none remain. Each resample
    picks S seeds with replacement and, for each pick, resamples that seed's n_s returns; the
    mean of n_s resampled returns is drawn from its normal approximation
    N(mean_s, var_s / n_s) (n_s is in the hundreds here), which keeps the cost O(resamples x S).
    The statistic is the mean over all resampled returns (picks weighted by n_s).
    """
    r = np.asarray(returns, dtype=np.float64)
    r = r.reshape(r.shape[0], -1)
    keep = np.isfinite(r) if mask is None else (np.asarray(mask, bool).reshape(r.shape) & np.isfinite(r))
    rows = [r[s][keep[s]] for s in range(r.shape[0]) if keep[s].any()]
    if not rows:
        return math.nan, math.nan
    n = np.array([v.size for v in rows], np.float64)
    mean = np.array([v.mean() for v in rows])
    sem = np.array([v.std(ddof=1) / math.sqrt(v.size) if v.size > 1 else 0.0 for v in rows])
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(rows), size=(num_resamples, len(rows)))    # (B, S) seed picks
    slot_means = mean[picks] + sem[picks] * rng.standard_normal(picks.shape)
    means = (n[picks] * slot_means).sum(axis=1) / n[picks].sum(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def _entry(r, mask) -> dict:
    mean, task_ci, n = mean_ci95(r[mask])
    low, high = hierarchical_bootstrap(r, mask)
    return {"mean": mean, "ci95": (high - low) / 2.0, "ci95_low": low, "ci95_high": high,
            "task_ci95": task_ci, "n": n}


def summarize(returns, inverted) -> dict:
    """Summary of per-task returns `(S, N)` with task kinds `inverted` `(S, N)` bool.

    Returns a dict: return_mean, return_ci95 (half-width of the hierarchical bootstrap
    interval), return_ci95_low/high (its ends), task_ci95 (the normal-approximation half-width
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
