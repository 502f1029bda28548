"""The report's figures beyond per-class metrics, from each model's ``FoldResult``s:
calibration (temperature, ECE before and after), abstention (threshold, coverage and
selective accuracy on the test folds), per-patient results, the folds that a time or epoch
cap cut short, and ``predictions.csv`` (one row per test sample and model), from which
every headline figure can be recomputed."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.train.evaluation.calibration import nll, selective, statuses
from hepascope.train.evaluation.metrics import (
    aggregate,
    classification_metrics,
    expected_calibration_error,
    mean_sd,
)
from hepascope.train.evaluation.patients import patient_table

PREDICTIONS = "predictions.csv"


def _raw(r: Any) -> np.ndarray:
    p = r.probs if r.raw_probs is None else r.raw_probs
    return np.asarray(p, np.float64) / np.asarray(p, np.float64).sum(1, keepdims=True)


def calibration_summary(rs: Sequence[Any]) -> dict[str, Any]:
    """Per fold: temperature, test ECE and NLL before and after; their mean ± SD."""
    folds = []
    for r in rs:
        cal = r.calibration or {}
        raw = _raw(r)
        folds.append({"fold": r.fold, "temperature": cal.get("temperature", 1.0),
                      "ece_before": expected_calibration_error(r.y_true, raw),
                      "ece_after": expected_calibration_error(r.y_true, r.probs),
                      "nll_before": nll(raw, r.y_true), "nll_after": nll(r.probs, r.y_true),
                      "n_val": cal.get("n_val", 0)})
    return {"folds": folds, **{k: mean_sd([f[k] for f in folds]) for k in
                               ("temperature", "ece_before", "ece_after", "nll_before",
                                "nll_after")}}


def abstention_summary(rs: Sequence[Any]) -> dict[str, Any]:
    """Per fold: the threshold chosen on validation (and what it gave there), the test
    coverage and selective accuracy at it; their mean ± SD, and pooled."""
    folds = []
    for r in rs:
        ab = (r.calibration or {}).get("abstain") or {}
        test = selective(r.probs, r.y_true, r.threshold)
        folds.append({"fold": r.fold, "threshold": r.threshold, "target": ab.get("target"),
                      "met_on_validation": ab.get("met"), "val_coverage": ab.get("coverage"),
                      "val_selective_accuracy": ab.get("selective_accuracy"),
                      "coverage": test["coverage"],
                      "selective_accuracy": test["selective_accuracy"],
                      "covered": test["covered"], "n": test["n"]})
    covered = sum(f["covered"] for f in folds)
    right = sum(int(np.sum((r.probs.argmax(1) == r.y_true)[r.probs.max(1) >= r.threshold]))
                for r in rs)
    n = sum(f["n"] for f in folds)
    return {"folds": folds, "target": folds[0]["target"] if folds else None,
            "threshold": mean_sd([f["threshold"] for f in folds]),
            "coverage": mean_sd([f["coverage"] for f in folds]),
            "selective_accuracy": mean_sd([f["selective_accuracy"] for f in folds]),
            "pooled": {"coverage": covered / n if n else 0.0,
                       "selective_accuracy": right / covered if covered else None}}


def patient_summary(rs: Sequence[Any], classes: Sequence[str]) -> dict[str, Any]:
    """Per-patient results per fold (mean calibrated probability; majority vote; the
    abstention threshold applied to the patient's mean), and the seeds' per-class table
    (mean ± SD over folds) of the mean-probability answers."""
    folds = []
    for r in rs:
        t = patient_table(r.y_true, r.probs, r.groups, r.threshold)
        sel = selective(t["probs"], t["y_true"], r.threshold)
        folds.append({"fold": r.fold, "patients": len(t["patients"]),
                      "metrics": classification_metrics(t["y_true"], t["probs"], classes),
                      "vote_accuracy": float(np.mean(t["vote"] == t["y_true"])),
                      "coverage": sel["coverage"],
                      "selective_accuracy": sel["selective_accuracy"]})
    return {"folds": folds, "aggregate": aggregate([f["metrics"] for f in folds]),
            **{k: mean_sd([f[k] for f in folds]) for k in
               ("vote_accuracy", "coverage", "selective_accuracy")}}


def capped_folds(rs: Sequence[Any]) -> list[dict[str, Any]]:
    """Folds a cap cut short: stopped by the time budget (``--max-minutes``) or paused
    (``--stop-after``) before the epochs its learning-rate schedule was sized for. A fold
    that ran all its epochs finished its schedule; its best epoch is shown beside it."""
    out = []
    for r in rs:
        x = r.extra
        run, cap, best = x.get("epochs_run"), x.get("epochs"), x.get("best_epoch")
        if x.get("stopped") == "time":
            why = f"--max-minutes {x.get('max_minutes')} stopped it after {run} of {cap} epochs"
        elif x.get("stopped") == "paused":
            why = f"paused after {run} of {cap} epochs"
        else:
            continue
        out.append({"fold": r.fold, "stopped": x.get("stopped"), "epochs_run": run,
                    "epochs": cap, "best_epoch": best, "why": why})
    return out


def caps_warning(model: str, capped: Sequence[dict[str, Any]], folds: int) -> str:
    """One line naming the folds a cap shortened ("" when none)."""
    if not capped:
        return ""
    parts = "; ".join(f"fold {c['fold']}: {c['why']}" for c in capped)
    return f"{model}: {len(capped)} of {folds} folds cut short by a cap ({parts})"


def write_predictions(grouped: Mapping[str, Sequence[Any]], classes: Sequence[str],
                      path: Path) -> None:
    """``predictions.csv``: model, fold, path, patient, true label, the calibrated
    probability of each class, predicted label, confidence, status, and the fold's
    temperature and threshold (per row, so the file stands alone); numbers exact."""
    head = ["model", "fold", "path", "patient", "true_label",
            *(f"p_{c}" for c in classes), "predicted", "confidence", "status",
            "temperature", "threshold"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        for name, rs in grouped.items():
            for r in rs:
                paths = r.paths if r.paths is not None else np.full(len(r.y_true), "")
                status = statuses(r.probs, r.threshold)
                t = (r.calibration or {}).get("temperature", 1.0)
                for i in range(len(r.y_true)):
                    p = r.probs[i]
                    w.writerow([name, r.fold, paths[i], r.groups[i], classes[r.y_true[i]],
                                *(_exact(v) for v in p), classes[int(p.argmax())],
                                _exact(p.max()), status[i], _exact(t),
                                _exact(r.threshold)])


def _exact(v: float) -> str:
    """``v`` to the last bit (the shortest text that reads back the same float): a
    confidence 1e-12 from the threshold stays on its side, so every figure recomputed from
    the file is the report's."""
    return repr(float(v))
