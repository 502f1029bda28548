"""The risk-coverage figure of the abstention: selective risk (error rate of the samples
kept) against coverage (share kept) as the confidence threshold rises, per fold and pooled,
with each fold's chosen threshold marked and the target risk drawn."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hepascope.train.evaluation.calibration import risk_coverage, selective
from hepascope.train.evaluation.plots import colors, figure, save


def plot_risk_coverage(folds: Sequence[tuple[np.ndarray, np.ndarray, float]],
                       path: str | Path, *, title: str = "Risk-coverage",
                       target: float | None = None) -> Path:
    """``folds``: (labels, calibrated probabilities, threshold) of each test fold."""
    fig = figure(6.4, 4.8)
    ax = fig.add_subplot()
    top = 0.05
    for k, ((y, p, t), color) in enumerate(zip(folds, colors(len(folds)), strict=True)):
        cov, acc, _ = risk_coverage(p, y)
        ax.plot(cov, 1 - acc, color=color, lw=1, alpha=0.7, label=f"fold {k}")
        top = max(top, float(np.max(1 - acc)))
        s = selective(p, y, t)
        if s["selective_accuracy"] is not None:
            ax.plot([s["coverage"]], [1 - s["selective_accuracy"]], "o", color=color, ms=6,
                    mec="black")
    y_all = np.concatenate([f[0] for f in folds])
    p_all = np.concatenate([f[1] for f in folds])
    cov, acc, _ = risk_coverage(p_all, y_all)
    ax.plot(cov, 1 - acc, color="black", lw=2.2, label="pooled")
    if target is not None:
        ax.axhline(1 - target, color="#c44e52", ls="--", lw=1.2,
                   label=f"target risk {100 * (1 - target):.0f}%")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, min(1.0, top * 1.05))
    ax.set_xlabel("Coverage (share of samples answered)")
    ax.set_ylabel("Selective risk (error rate of answered)")
    ax.grid(alpha=0.3)
    ax.set_title(f"{title}\ndots: each fold's threshold, chosen on its validation part")
    ax.legend(loc="best", fontsize=8)
    return save(fig, path)
