"""PNG plots of a benchmark run (matplotlib, Agg backend: no display needed), each readable alone.

Every figure is drawn from the files a run stores (`python -m benchmarks.plot DIR` redraws them):

  training_curves.png       training return against env steps per seed (history.json): one
                            panel per trainer, titled with the methods it serves; thin lines are
                            the training seeds, the thick line their mean, the band their range.
  training_curves_wall.png  the same against training run time (s, compilation excluded).
  adaptation.png            held-out return after 0..K inner steps / online updates / context
                            episodes (per_task.csv): mean over seeds x tasks, 95% seed-level t
                            interval as error bars, each seed's mean as a dot.
  per_task_physics.png      every (seed, task) return against pole half-length, pole mass, cart
                            mass and push magnitude (per_task.csv; on another environment its
                            varied fields, the per_task.csv columns between task_index and
                            inverted), normal and inverted tasks marked apart, with binned means.
  switch_recovery.png       on a suite whose tasks switch within an episode: reward against
                            steps since the switch per method (results.json "around_switch"),
                            mean over seeds x tasks with a 95% seed-level t band.
  returns_by_task_kind.png  held-out return per method and task kind (results.json and
                            per_task.csv): bar = mean over seeds x tasks, error bar = 95%
                            seed-level t interval, dots = each seed's mean; the y axis spans every
                            interval (nothing clipped).
"""

from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.stats import percent, seed_t_interval  # noqa: E402

KINDS = (("normal", False, "tab:blue", "o"), ("inverted", True, "tab:red", "x"))
#: per_task.csv physics columns plotted, with axis labels.
PHYSICS = (("length", "pole half-length (m)"), ("masspole", "pole mass (kg)"),
           ("masscart", "cart mass (kg)"), ("force_mag", "push magnitude |force_mag| (N)"))
#: CartPole-v1's largest return (the default `return_range` is `(0, MAX_RETURN)`).
MAX_RETURN = 500


def return_range(env_name: str, episode_steps: int) -> tuple:
    """`(min, max)` of an episode's return on `env_name` over `episode_steps` steps: the
    environment's per-step `reward_range` (`envs.TASK_ENVS`) times the steps."""
    from envs.tasks import get_task_env  # noqa: PLC0415

    lo, hi = get_task_env(env_name).reward_range
    return lo * episode_steps, hi * episode_steps


def _physics_columns(rows: list) -> tuple:
    """(column, axis label) of the physics plotted per task: CartPole's `PHYSICS`, else every
    per_task.csv column between "task_index" and "inverted" (the varied fields)."""
    columns = list(rows[0])
    if all(c in columns for c, _ in PHYSICS):
        return PHYSICS
    fields = columns[columns.index("task_index") + 1:columns.index("inverted")]
    return tuple((c, f"|{c}|") for c in fields)


def _save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def _per_seed_key(history: dict):
    keys = [k for k in history if k.endswith("_per_seed") and len(history[k])]
    return keys[0] if keys else None


_RETURN_LABELS = {"episode_return": "train return (mean episode return of the iteration)",
                  "post_return": "train return after the inner steps (query)"}


def plot_training_curves(histories: dict, labels: dict, path: str, x: str = "env_steps") -> bool:
    """Training return of every trainer against `x` ("env_steps": env steps per seed, or
    "wall_s": training run time) from `histories` (trainer -> history with `<metric>_per_seed`
    and `x`); `labels`: trainer -> panel title. Trainers without the data are left out; returns
    whether anything was drawn (no file is written otherwise)."""
    names = [n for n, h in histories.items() if _per_seed_key(h) and len(h.get(x, ())) == len(h[_per_seed_key(h)])]
    if not names:
        return False
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        h = histories[name]
        key = _per_seed_key(h)
        metric = key[: -len("_per_seed")]
        xs = np.asarray(h[x], np.float64)
        ys = np.asarray(h[key], np.float64)  # (iterations, seeds)
        ok = np.isfinite(xs)
        for s in range(ys.shape[1]):
            ax.plot(xs[ok], ys[ok, s], lw=0.7, alpha=0.6, color="tab:blue",
                    label="one training seed" if s == 0 else None)
        ax.fill_between(xs[ok], ys[ok].min(axis=1), ys[ok].max(axis=1), color="tab:blue", alpha=0.15,
                        label=f"range over {ys.shape[1]} seeds")
        ax.plot(xs[ok], ys[ok].mean(axis=1), lw=2, color="tab:blue", label="mean over seeds")
        if metric == "post_return" and len(h.get("pre_return", ())) == len(xs):
            ax.plot(xs[ok], np.asarray(h["pre_return"])[ok], lw=1.2, ls="--", color="tab:gray",
                    label="mean before the inner steps")
        ax.set_title(labels.get(name, name), fontsize=9)
        ax.set_xlabel("env steps per seed" if x == "env_steps" else "training run time (s, compile excluded)")
        ax.set_ylabel(_RETURN_LABELS.get(metric, metric), fontsize=8)
        ax.grid(alpha=0.3)
    handles, names_ = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names_, loc="lower center", ncol=4, fontsize=8, bbox_to_anchor=(0.5, -0.08))
    fig.suptitle("Training return on the CartPole train split", fontsize=10)
    _save(fig, path)
    return True


def _floats(rows, column) -> np.ndarray:
    return np.array([float(r[column]) if r.get(column, "") != "" else np.nan for r in rows], np.float64)


def _seed_matrix(rows, column) -> np.ndarray:
    """`(S, N)` values of `column` by (seed_index, task_index)."""
    s = 1 + max(int(r["seed_index"]) for r in rows)
    n = 1 + max(int(r["task_index"]) for r in rows)
    out = np.full((s, n), np.nan)
    for r in rows:
        v = r.get(column, "")
        out[int(r["seed_index"]), int(r["task_index"])] = float(v) if v != "" else np.nan
    return out


def _by_method(rows) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(r["method"], []).append(r)
    return out


def _interval(m: np.ndarray) -> tuple:
    lo, hi = seed_t_interval(m)
    return lo, hi


def plot_adaptation(rows: list, path: str, returns: tuple = (0, MAX_RETURN)) -> bool:
    """Held-out return after 0..K units of adaptation per method (per_task.csv rows), one panel
    per unit; a method whose curve repeats an earlier one (maml_zero_shot and maml_adapted share
    one evaluation) is drawn once; `returns` is the `(min, max)` episode return (`return_range`).
    Returns whether anything was drawn."""
    curves: dict = {}
    seen = []  # (list of names drawn as one curve, matrices)
    for method, mrows in _by_method(rows).items():
        unit = mrows[0].get("adaptation_unit", "")
        if not unit:
            continue
        ks = sorted(int(c.rsplit("_", 1)[1]) for c in mrows[0] if c.startswith("return_after_")
                    and mrows[0][c] != "")
        mats = [_seed_matrix(mrows, f"return_after_{k}") for k in ks]
        same = [names for names, seen_m in seen if len(mats) == len(seen_m)
                and all(np.array_equal(a, b, equal_nan=True) for a, b in zip(mats, seen_m))]
        if same:  # one evaluation serves several methods: one curve named after all of them
            same[0].append(method)
            continue
        names = [method]
        seen.append((names, mats))
        curves.setdefault(unit, []).append((names, ks, mats))
    if not curves:
        return False
    fig, axes = plt.subplots(1, len(curves), figsize=(5.4 * len(curves), 3.8), squeeze=False)
    for ax, (unit, items) in zip(axes[0], curves.items()):
        for j, (names, ks, mats) in enumerate(items):
            method = " = ".join(names)
            color = f"C{j}"
            means = [np.nanmean(m) for m in mats]
            ints = [_interval(m) for m in mats]
            err = np.array([[mu - lo, hi - mu] for mu, (lo, hi) in zip(means, ints)]).T
            ax.errorbar(ks, means, yerr=np.nan_to_num(err), color=color, marker="o", capsize=3, label=method)
            for k, m in zip(ks, mats):
                seed_means = np.nanmean(m, axis=1)
                ax.scatter(np.full(seed_means.shape, k) + 0.08 * (j - (len(items) - 1) / 2), seed_means,
                           s=10, color=color, alpha=0.5, zorder=3)
        ax.set_xticks(sorted({k for _, ks, _ in items for k in ks}))
        plural = {"inner step": "inner steps", "update": "online updates (rounds before the measured one)",
                  "context episode": "context episodes (carry kept)"}
        ax.set_xlabel(f"{plural.get(unit, unit)} on the held-out task")
        ax.set_ylabel(f"held-out return (max {returns[1]:g})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Return after adaptation: mean over seeds x tasks, 95% seed-level t interval; dots: "
                 "each training seed's mean", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    _save(fig, path)
    return True


def plot_per_task(rows: list, path: str, returns: tuple = (0, MAX_RETURN)) -> bool:
    """Every (seed, task) return against the task's physics (`_physics_columns`), one row of
    panels per method; `returns` (`return_range`) is the y axis's label range."""
    methods = _by_method(rows)
    if not methods:
        return False
    physics = _physics_columns(rows)
    fig, axes = plt.subplots(len(methods), len(physics), figsize=(3.4 * len(physics), 2.6 * len(methods)),
                             squeeze=False, sharey=True)
    for i, (method, mrows) in enumerate(methods.items()):
        ret = _floats(mrows, "return")
        inv = np.array([r["inverted"] == "True" for r in mrows])
        for j, (column, label) in enumerate(physics):
            ax = axes[i][j]
            x = np.abs(_floats(mrows, column))
            for kind, flag, color, marker in KINDS:
                sel = inv == flag
                ax.scatter(x[sel], ret[sel], s=9, color=color, marker=marker, alpha=0.6,
                           label=f"{kind} (one task)")
                if sel.sum() >= 4:
                    edges = np.quantile(x[sel], np.linspace(0, 1, 5))
                    idx = np.clip(np.searchsorted(edges, x[sel], side="right") - 1, 0, 3)
                    centers = [x[sel][idx == b].mean() for b in range(4) if (idx == b).any()]
                    means = [np.nanmean(ret[sel][idx == b]) for b in range(4) if (idx == b).any()]
                    ax.plot(centers, means, color=color, lw=1.5, label=f"{kind}: mean per quartile bin")
            ax.set_xlabel(label, fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{method}\nheld-out return (max {returns[1]:g})", fontsize=8)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, bbox_to_anchor=(0.5, -0.03))
    fig.suptitle("Held-out return per test task against its physics (each point one seed x task)", fontsize=10)
    fig.tight_layout(rect=(0, 0.02, 1, 0.98))
    _save(fig, path)
    return True


def plot_switch_recovery(methods: dict, path: str) -> bool:
    """Reward against steps since the switch, one curve per method (`methods`: results.json
    entries with "around_switch", `benchmarks.results.switch_report`): the mean over seeds x
    tasks, a band for the 95% seed-level t interval at each step, the recovery (after / before)
    in the legend. Returns whether anything was drawn (False on a suite without a switch)."""
    curves = {n: m["around_switch"] for n, m in methods.items() if m.get("around_switch")}
    if not curves:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for j, (name, sw) in enumerate(curves.items()):
        per_seed = np.asarray(sw["reward_by_offset_per_seed"], np.float64)  # (S, 2W)
        offsets = sw["first_offset"] + np.arange(per_seed.shape[1])
        mean = per_seed.mean(axis=0)
        color = f"C{j % 10}"
        ax.plot(offsets, mean, color=color, lw=1.4, label=f"{name} (recovery {percent(sw['recovery'])})")
        if per_seed.shape[0] > 1:
            band = np.array([seed_t_interval(per_seed[:, [i]]) for i in range(per_seed.shape[1])])
            ax.fill_between(offsets, band[:, 0], band[:, 1], color=color, alpha=0.15, lw=0)
    ax.axvline(0, color="black", lw=0.8, ls="--")
    ax.set_xlabel("steps since the switch (0: the first step with the new physics)")
    ax.set_ylabel("reward per step (fraction of episodes running)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Around the within-episode switch: each env's first measured episode, mean over seeds x "
                 "tasks, 95% seed-level t band", fontsize=9)
    _save(fig, path)
    return True


def plot_returns(methods: dict, rows: list, path: str, returns: tuple = (0, MAX_RETURN)) -> None:
    """Held-out return per method and task kind: bars are means over seeds x tasks
    (`methods`: results.json entries), error bars their 95% seed-level t interval (ends
    `ci95_low`/`ci95_high`, drawn in full), dots each training seed's mean (per_task.csv rows);
    `returns`: the `(min, max)` episode return (`return_range`), a dashed line at the max."""
    names = list(methods)
    per_method = _by_method(rows)
    x = np.arange(len(names))
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(names)), 3.8))
    extremes = [min(0.0, returns[0]) if returns[1] > 0 else returns[1], returns[1]]
    for i, (kind, flag, color, _) in enumerate(KINDS):
        offset = (i - 0.5) * width
        for j, n in enumerate(names):
            k = methods[n]["return_by_task_kind"][kind]
            mean = k["mean"] if k["mean"] is not None else math.nan
            ax.bar(x[j] + offset, mean, width, color=color, alpha=0.75,
                   label=f"{kind}: mean over seeds x tasks" if j == 0 else None)
            lo, hi = k.get("ci95_low"), k.get("ci95_high")
            if lo is not None and hi is not None and np.isfinite([lo, hi]).all():
                ax.errorbar(x[j] + offset, mean, yerr=[[mean - lo], [hi - mean]], color="black", capsize=3,
                            label="95% seed-level t interval" if (i, j) == (0, 0) else None)
                extremes += [lo, hi]
            mrows = [r for r in per_method.get(n, []) if (r["inverted"] == "True") == flag]
            if mrows:
                seed_means = np.nanmean(_seed_matrix(mrows, "return"), axis=1)
                ax.scatter(np.full(seed_means.shape, x[j] + offset), seed_means, s=14, color="black",
                           zorder=3, label="one training seed's mean" if (i, j) == (0, 0) else None)
                extremes += [float(np.nanmin(seed_means)), float(np.nanmax(seed_means))]
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(f"held-out return (episode max {returns[1]:g})")
    lo, hi = min(extremes), max(extremes)
    pad = 0.04 * (hi - lo)
    ax.set_ylim(lo - pad if lo < 0 else 0, hi + pad)
    ax.axhline(returns[1], color="gray", lw=0.5, ls="--")
    ax.set_title("Held-out return by task kind", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
