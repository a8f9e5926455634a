"""PNG plots of a benchmark run (matplotlib, Agg backend: no display needed).

`plot_training_curves(curves, path)`: training returns per iteration of every trainer (mean
over seeds, one panel per trainer, one line per series). `plot_returns(methods, path)`: evaluation return per
method, grouped by task kind (normal / inverted force), with 95% CI error bars.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def plot_training_curves(curves: dict, path: str) -> None:
    """`curves`: trainer name -> {label: per-iteration series (mean over seeds)}; trainers with
    no data are left out."""
    names = [n for n in curves if any(len(v) for v in curves[n].values())]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4.2 * max(1, len(names)), 3.2),
                             squeeze=False)
    for ax, name in zip(axes[0], names):
        for label, series in curves[name].items():
            if len(series):
                ax.plot(np.arange(1, len(series) + 1), series, label=label)
        ax.set_title(name)
        ax.set_xlabel("iteration")
        ax.set_ylabel("train return (window)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path)


def plot_returns(methods: dict, path: str) -> None:
    """`methods`: method -> results.json entry (with return_by_task_kind)."""
    names = list(methods)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(names)), 3.6))
    for i, kind in enumerate(("normal", "inverted")):
        means = [methods[n]["return_by_task_kind"][kind]["mean"] for n in names]
        cis = [methods[n]["return_by_task_kind"][kind]["ci95"] for n in names]
        cis = [0.0 if c is None or not np.isfinite(c) else c for c in cis]
        ax.bar(x + (i - 0.5) * 0.38, means, 0.38, yerr=cis, capsize=3, label=f"{kind} force")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("held-out return (max 500)")
    ax.set_ylim(0, 520)
    ax.axhline(500, color="gray", lw=0.5, ls="--")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
