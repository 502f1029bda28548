"""Classification metrics of one fold's out-of-fold predictions, and their mean ± SD over folds.

Per class (one-vs-rest, as in S2's Table 1): accuracy, sensitivity (recall), specificity,
PPV (precision), NPV, F1 and ROC AUC. The macro row averages classes without weights, except
its accuracy, which is the top-1 accuracy. A ratio whose denominator is 0 (a class never
predicted has no PPV; an absent class has no sensitivity or AUC) is ``None`` and left out of
averages rather than counted as 0 or 1. Calibration: the expected calibration error (ECE) of
the top-1 confidence over 15 equal-width bins, with its reliability table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hepascope.core.errors import DataError

METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "auc")
ECE_BINS = 15

Stat = dict[str, Any]  # {"mean": float | None, "sd": float | None, "n": folds defined}


def check_predictions(y_true: np.ndarray, probs: np.ndarray, n_classes: int) -> tuple[
        np.ndarray, np.ndarray]:
    """(labels, probabilities) as int64 (N,) and float64 (N, C), or ``DataError``: rows must
    be probabilities (softmax outputs), not logits, for calibration to mean anything."""
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"y_true must be a 1-D integer array, got shape {y.shape} {y.dtype}")
    if p.shape != (len(y), n_classes):
        raise DataError(f"probs has shape {p.shape}; expected ({len(y)}, {n_classes}) for "
                        f"{len(y)} samples and {n_classes} classes")
    if not len(y):
        raise DataError("no predictions to evaluate")
    if y.min() < 0 or y.max() >= n_classes:
        raise DataError(f"y_true has labels outside 0..{n_classes - 1}")
    if not np.isfinite(p).all():
        raise DataError("probs contains NaN or infinity")
    if p.min() < -1e-6 or p.max() > 1 + 1e-6 or not np.allclose(p.sum(1), 1.0, atol=1e-3):
        raise DataError("probs rows must be probabilities summing to 1 (apply softmax to logits)")
    return y.astype(np.int64), p


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts, rows = true class, columns = predicted class."""
    conf = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(conf, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return conf


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def _auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """One-vs-rest ROC AUC; None when only one side is present (undefined)."""
    from sklearn.metrics import roc_auc_score

    if positive.all() or not positive.any():
        return None
    return float(roc_auc_score(positive, score))


def _mean_defined(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def reliability(y_true: np.ndarray, probs: np.ndarray,
                bins: int = ECE_BINS) -> list[dict[str, Any]]:
    """Equal-width bins of top-1 confidence, (lo, hi], the first also holding 0: per bin the
    sample count, mean confidence and accuracy (None when empty)."""
    conf = probs.max(1)
    correct = probs.argmax(1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.digitize(conf, edges[1:-1], right=True)
    table = []
    for b in range(bins):
        sel = idx == b
        n = int(sel.sum())
        table.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": n,
                      "confidence": float(conf[sel].mean()) if n else None,
                      "accuracy": float(correct[sel].mean()) if n else None})
    return table


def ece_from_table(table: Sequence[dict[str, Any]]) -> float:
    """Sum over bins of (bin share of samples) * |accuracy - confidence|."""
    total = sum(b["count"] for b in table)
    if not total:
        raise DataError("no samples in the reliability table")
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"])
                     for b in table if b["count"]))


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """ECE of top-1 confidence (0 = confidences match accuracies)."""
    y, p = check_predictions(y_true, probs, np.asarray(probs).shape[-1])
    return ece_from_table(reliability(y, p, bins))


def classification_metrics(y_true: np.ndarray, probs: np.ndarray,
                           classes: Sequence[str]) -> dict[str, Any]:
    """Every metric of one set of predictions (see the module docstring); JSON-ready."""
    names = [str(c) for c in classes]
    if len(set(names)) != len(names) or len(names) < 2:
        raise DataError(f"need at least 2 distinct class names, got {names}")
    y, p = check_predictions(y_true, probs, len(names))
    pred = p.argmax(1)
    conf = confusion(y, pred, len(names))
    n = len(y)
    per_class: dict[str, dict[str, float | None]] = {}
    counts: dict[str, dict[str, int]] = {}
    for c, name in enumerate(names):
        tp = int(conf[c, c])
        fn = int(conf[c].sum()) - tp
        fp = int(conf[:, c].sum()) - tp
        tn = n - tp - fn - fp
        counts[name] = {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
        per_class[name] = {
            "accuracy": (tp + tn) / n, "sensitivity": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp), "ppv": _ratio(tp, tp + fp),
            "npv": _ratio(tn, tn + fn), "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "auc": _auc(y == c, p[:, c])}
    macro = {m: _mean_defined([per_class[c][m] for c in names]) for m in METRICS}
    macro["accuracy"] = float(np.mean(pred == y))  # top-1, not the mean one-vs-rest accuracy
    table = reliability(y, p)
    out: dict[str, Any] = {
        "classes": names, "n": n, "support": conf.sum(1).tolist(), "confusion": conf.tolist(),
        "per_class": per_class, "counts": counts, "macro": macro,
        "ece": ece_from_table(table), "reliability": table}
    if len(names) == 2:  # binary: class 1 is the positive class (e.g. HCC vs non-HCC)
        out["positive_class"] = names[1]
        out["auc_positive"] = per_class[names[1]]["auc"]
    return out


def mean_sd(values: Sequence[float | None]) -> Stat:
    """Mean and sample SD (ddof=1; 0 for one value) of the defined values."""
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if not v.size:
        return {"mean": None, "sd": None, "n": 0}
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {"mean": float(v.mean()), "sd": sd, "n": int(v.size)}


def _pool_reliability(tables: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    pooled = []
    for bins in zip(*tables, strict=True):
        n = sum(b["count"] for b in bins)
        entry = {"lo": bins[0]["lo"], "hi": bins[0]["hi"], "count": n}
        for key in ("confidence", "accuracy"):
            entry[key] = (float(sum(b["count"] * b[key] for b in bins if b["count"]) / n)
                          if n else None)
        pooled.append(entry)
    return pooled


def aggregate(folds_metrics: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± SD over folds of every scalar of ``classification_metrics`` outputs; counts,
    confusion matrix and reliability table pooled (summed) over folds."""
    if not folds_metrics:
        raise DataError("no folds to aggregate")
    names = folds_metrics[0]["classes"]
    if any(f["classes"] != names for f in folds_metrics):
        raise DataError("folds disagree on the class names")
    tables = [f["reliability"] for f in folds_metrics]
    pooled_table = _pool_reliability(tables)
    out: dict[str, Any] = {
        "classes": names, "folds": len(folds_metrics),
        "n": sum(f["n"] for f in folds_metrics),
        "support": np.sum([f["support"] for f in folds_metrics], axis=0).tolist(),
        "confusion": np.sum([f["confusion"] for f in folds_metrics], axis=0).tolist(),
        "counts": {c: {k: sum(f["counts"][c][k] for f in folds_metrics)
                       for k in ("tp", "fp", "fn", "tn")} for c in names},
        "per_class": {c: {m: mean_sd([f["per_class"][c][m] for f in folds_metrics])
                          for m in METRICS} for c in names},
        "macro": {m: mean_sd([f["macro"][m] for f in folds_metrics]) for m in METRICS},
        "ece": mean_sd([f["ece"] for f in folds_metrics]),
        "reliability": pooled_table, "ece_pooled": ece_from_table(pooled_table)}
    if len(names) == 2:
        out["positive_class"] = names[1]
        out["auc_positive"] = mean_sd([f["auc_positive"] for f in folds_metrics])
    return out
