"""Report figures as PNG: confusion matrix, ROC curves, reliability diagram, model comparison.

matplotlib is imported inside each function (importing this module costs nothing) and drawn
through its Agg canvas on a bare ``Figure``: no display, no pyplot global state, so figures
are freed with their objects and the caller's own matplotlib backend is left alone."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.core.errors import DataError
from hepascope.train.evaluation.metrics import (
    check_predictions,
    ece_from_table,
    reliability,
)

DPI = 120
COMPARED = (("accuracy", "Accuracy"), ("sensitivity", "Sensitivity"),
            ("specificity", "Specificity"), ("f1", "F1"), ("auc", "AUC"))


def figure(width: float, height: float, **kw: Any) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained", **kw)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Any, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, metadata={"Software": "hepascope"})
    return out


def colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def plot_confusion(conf: np.ndarray | Sequence[Sequence[int]], classes: Sequence[str],
                   path: str | Path, normalise: bool = True, *, title: str = "Confusion matrix"
                   ) -> Path:
    """Rows = true class (with its count), columns = predicted; each cell shows its count and,
    with ``normalise``, its share of the row (the class's sensitivity on the diagonal)."""
    m = np.asarray(conf, dtype=np.int64)
    c = len(classes)
    if m.shape != (c, c):
        raise DataError(f"confusion matrix {m.shape} does not match {c} classes")
    rows = m.sum(1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros(m.shape), where=rows > 0)
    shade = share if normalise else m / max(int(m.max()), 1)
    size = max(4.8, 1.0 * c + 2.6)
    fig = figure(size + 0.8, size)
    ax = fig.add_subplot()
    im = ax.imshow(shade, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(c):
        for j in range(c):
            text = f"{m[i, j]}\n{100 * share[i, j]:.1f}%" if normalise else f"{m[i, j]}"
            ax.text(j, i, text, ha="center", va="center", fontsize=9,
                    color="white" if shade[i, j] > 0.55 else "black")
    ax.set_xticks(range(c), [str(x) for x in classes], rotation=30, ha="right")
    ax.set_yticks(range(c), [f"{x}\n(n={int(n)})" for x, n in zip(classes, rows[:, 0],
                                                                   strict=True)])
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(f"{title}\nN = {int(m.sum())}" + (", row %" if normalise else ""))
    bar = fig.colorbar(im, ax=ax, shrink=0.8)
    bar.set_label("share of true class" if normalise else "count / max count")
    return save(fig, path)


def _roc_curves(y: np.ndarray, p: np.ndarray, classes: Sequence[str]
                ) -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    from sklearn.metrics import roc_auc_score, roc_curve

    shown = [1] if len(classes) == 2 else range(len(classes))  # binary: the positive class
    curves = []
    for k in shown:
        pos = y == k
        if pos.all() or not pos.any():
            continue  # AUC undefined: nothing to draw
        fpr, tpr, _ = roc_curve(pos, p[:, k])
        name = f"{classes[k]} (n={int(pos.sum())})"
        curves.append((name, fpr, tpr, float(roc_auc_score(pos, p[:, k]))))
    return curves


def plot_roc(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], path: str | Path,
             *, title: str = "ROC curves") -> Path:
    """One-vs-rest ROC curve per class with its AUC, and the macro average (mean TPR over a
    common FPR grid; its AUC is the mean of the class AUCs). Binary tasks: the positive class
    (``classes[1]``) only. Pass the pooled out-of-fold predictions of all folds."""
    y, p = check_predictions(y_true, probs, len(classes))
    curves = _roc_curves(y, p, classes)
    fig = figure(6.4, 6.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="chance, AUC 0.500")
    for (name, fpr, tpr, auc), color in zip(curves, colors(len(curves)), strict=True):
        ax.plot(fpr, tpr, lw=1.6, color=color, label=f"{name}, AUC {auc:.3f}")
    if len(curves) > 1:
        grid = np.unique(np.concatenate([fpr for _, fpr, _, _ in curves]))
        mean_tpr = np.mean([np.interp(grid, fpr, tpr) for _, fpr, tpr, _ in curves], axis=0)
        macro = float(np.mean([auc for *_, auc in curves]))
        ax.plot(grid, mean_tpr, lw=2.6, color="black", label=f"macro average, AUC {macro:.3f}")
    skipped = len(classes) - len(curves) - (len(classes) == 2)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    sub = (f"N = {len(y)}, one-vs-rest" if len(classes) > 2
           else f"N = {len(y)}, positive class {classes[1]} vs {classes[0]}")
    if skipped:
        sub += f"; {skipped} class(es) without positives not drawn"
    ax.set_title(f"{title}\n{sub}")
    ax.legend(loc="lower right", fontsize=8.5)
    return save(fig, path)


def plot_reliability(y_true: np.ndarray, probs: np.ndarray, path: str | Path, *,
                     title: str = "Reliability diagram") -> Path:
    """Top: accuracy of each top-1 confidence bin against the diagonal of perfect calibration,
    with the gap shaded; bottom: how many predictions fall in each bin. ECE in the title."""
    y, p = check_predictions(y_true, probs, np.asarray(probs).shape[-1])
    table = reliability(y, p)
    ece = ece_from_table(table)
    lo = np.array([b["lo"] for b in table])
    width = float(table[0]["hi"] - table[0]["lo"])
    full = [b for b in table if b["count"]]
    fig = figure(6.0, 6.6)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.2]})
    top.plot([0, 1], [0, 1], ls="--", color="0.4", lw=1, label="perfect calibration")
    top.bar([b["lo"] for b in full], [b["accuracy"] for b in full], width=width, align="edge",
            color="#4c72b0", edgecolor="black", lw=0.6, label="accuracy in bin")
    gap_lo = [min(b["accuracy"], b["confidence"]) for b in full]
    gap = [abs(b["accuracy"] - b["confidence"]) for b in full]
    top.bar([b["lo"] for b in full], gap, bottom=gap_lo, width=width, align="edge",
            facecolor="none", edgecolor="#c44e52", hatch="///", lw=0.8,
            label="gap to mean confidence")
    top.hlines([b["confidence"] for b in full], [b["lo"] for b in full],
               [b["lo"] + width for b in full], color="#c44e52", lw=1.8,
               label="mean confidence in bin")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    top.set_ylabel("Accuracy")
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize=8.5)
    top.set_title(f"{title}\nECE = {100 * ece:.1f}% ({len(table)} bins, N = {len(y)})")
    counts = np.array([b["count"] for b in table])
    bottom.bar(lo, counts, width=width, align="edge", color="0.55", edgecolor="black", lw=0.6)
    conf_mean = float(p.max(1).mean())
    acc = float(np.mean(p.argmax(1) == y))
    bottom.axvline(conf_mean, color="#c44e52", ls="--", lw=1.4,
                   label=f"mean confidence {100 * conf_mean:.1f}%")
    bottom.axvline(acc, color="#4c72b0", ls="-", lw=1.4, label=f"accuracy {100 * acc:.1f}%")
    bottom.set_xlabel("Top-1 confidence")
    bottom.set_ylabel("Predictions")
    bottom.legend(loc="upper left", fontsize=8)
    return save(fig, path)


def plot_comparison(table: Mapping[str, Mapping[str, Mapping[str, Any]]], path: str | Path, *,
                    title: str = "Model comparison",
                    ylabel: str = "Macro average over classes (%)") -> Path:
    """Grouped bars of macro metrics (accuracy, sensitivity, specificity, F1, AUC) per model
    with ±SD error bars over folds, as in S2's Figure 5. ``table`` maps model -> metric ->
    {"mean", "sd"} (an ``aggregate(...)["macro"]`` per model), values in 0..1."""
    models = list(table)
    if not models:
        raise DataError("no models to compare")
    metrics = [(k, label) for k, label in COMPARED
               if any(table[m].get(k, {}).get("mean") is not None for m in models)]
    x = np.arange(len(metrics))
    width = 0.8 / len(models)
    fig = figure(max(7.0, 1.1 * len(metrics) * max(2, len(models)) * 0.55 + 2.5), 4.8)
    ax = fig.add_subplot()
    for i, (model, color) in enumerate(zip(models, colors(len(models)), strict=True)):
        stats = [table[model].get(k, {}) for k, _ in metrics]
        mean = np.array([100 * s["mean"] if s.get("mean") is not None else np.nan
                         for s in stats])
        sd = np.array([100 * (s.get("sd") or 0.0) for s in stats])
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, mean, width=width * 0.92, yerr=sd, capsize=3, color=color,
               edgecolor="black", lw=0.5, label=model, error_kw={"lw": 1})
        for xi, mi, si in zip(pos, mean, sd, strict=True):
            if np.isfinite(mi):
                ax.text(xi, min(mi + si, 100) + 1.2, f"{mi:.1f}", ha="center", va="bottom",
                        fontsize=7.5, rotation=90 if len(models) > 3 else 0)
    ax.set_xticks(x, [label for _, label in metrics])
    ax.set_ylim(0, 112)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    folds = [int(s["n"]) for m in models for s in table[m].values()
             if isinstance(s, Mapping) and s.get("n") is not None]
    sub = f"mean ± SD over {max(folds)} folds" if folds else "mean ± SD over folds"
    ax.set_title(f"{title}\n{sub}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=min(len(models), 5),
              fontsize=9, frameon=False)
    return save(fig, path)
