"""The cross-validation report of ``hepascope eval``: per model and fold metrics, their mean ±
SD, the patient-leakage check, data counts and figures, written as report.json (everything),
report.md (tables in the form of S2's Table 1 and S3's Table 1) and PNGs.

The caller trains and predicts; this module only needs each fold's out-of-fold predictions as
``FoldResult``s. Output is deterministic for the same inputs: sorted JSON keys, floats rounded
to 6 decimals, tables with fixed formatting."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.core.errors import DataError
from hepascope.train.evaluation import summaries
from hepascope.train.evaluation.baseline_compare import versus_baseline
from hepascope.train.evaluation.folds import leak_check
from hepascope.train.evaluation.markdown import render_markdown
from hepascope.train.evaluation.metrics import (
    METRICS,
    aggregate,
    check_predictions,
    classification_metrics,
    mean_sd,
)

FIGURES = ("confusion", "roc", "reliability", "risk_coverage")


@dataclass
class FoldResult:
    """Out-of-fold predictions of one model on one fold's test patients."""

    model: str
    fold: int
    y_true: np.ndarray  # (N,) int class index
    probs: np.ndarray  # (N, C) softmax probabilities
    groups: np.ndarray  # (N,) test patient ids ("" = unknown)
    train_groups: np.ndarray  # patient ids the model was trained (and early-stopped) on
    seconds: float = 0.0  # wall time of the fold (training + evaluation)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. epochs, params, flops
    raw_probs: np.ndarray | None = None  # (N, C) before calibration; None: probs are raw
    calibration: dict[str, Any] | None = None  # calibration_fit() on the fold's validation
    paths: np.ndarray | None = None  # (N,) each sample's source (predictions.csv)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise DataError(f"FoldResult needs a model name, got {self.model!r}")
        self.y_true = np.asarray(self.y_true)
        self.probs = np.asarray(self.probs, dtype=np.float64)
        self.groups = np.asarray(self.groups).astype(str)
        self.train_groups = np.asarray(self.train_groups).astype(str)
        n = len(self.y_true)
        if self.probs.ndim != 2 or len(self.probs) != n or self.groups.shape != (n,):
            raise DataError(f"{self.model} fold {self.fold}: {n} labels, probs "
                            f"{self.probs.shape}, {self.groups.size} patient ids; need (N,), "
                            "(N, C), (N,)")
        if self.train_groups.ndim != 1:
            raise DataError(f"{self.model} fold {self.fold}: train_groups must be 1-D")
        if not math.isfinite(self.seconds) or self.seconds < 0:
            raise DataError(f"{self.model} fold {self.fold}: seconds must be >= 0")
        if self.raw_probs is not None:
            self.raw_probs = np.asarray(self.raw_probs, dtype=np.float64)
            if self.raw_probs.shape != self.probs.shape:
                raise DataError(f"{self.model} fold {self.fold}: raw_probs "
                                f"{self.raw_probs.shape}, probs {self.probs.shape}")
        if self.paths is not None:
            self.paths = np.asarray(self.paths).astype(str)
            if self.paths.shape != (n,):
                raise DataError(f"{self.model} fold {self.fold}: {self.paths.size} paths "
                                f"for {n} samples")

    @property
    def threshold(self) -> float:
        """The abstention threshold fitted on validation (0: no abstention fitted)."""
        return float(((self.calibration or {}).get("abstain") or {}).get("threshold", 0.0))


def _dir_name(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model.strip()).strip("._") or "model"


def _by_model(results: Sequence[FoldResult]) -> dict[str, list[FoldResult]]:
    """Results per model in first-seen order, each sorted by fold; checks fold numbers and
    directory names are unique."""
    if not results:
        raise DataError("no fold results to report")
    models: dict[str, list[FoldResult]] = {}
    for r in results:
        models.setdefault(r.model, []).append(r)
    dirs: dict[str, str] = {}
    for name, rs in models.items():
        rs.sort(key=lambda r: r.fold)
        folds = [r.fold for r in rs]
        if len(set(folds)) != len(folds):
            raise DataError(f"model {name!r} has fold numbers repeated: {folds}")
        d = _dir_name(name)
        if d in dirs:
            raise DataError(f"models {dirs[d]!r} and {name!r} would share the folder {d!r}")
        dirs[d] = name
    return models


def _data_counts(rs: Sequence[FoldResult], classes: Sequence[str]) -> dict[str, Any]:
    """Samples and patients per class over the union of the test folds (= the dataset)."""
    y = np.concatenate([r.y_true for r in rs])
    g = np.concatenate([r.groups for r in rs])
    per_class = {}
    for c, name in enumerate(classes):
        sel = y == c
        known = g[sel & (g != "")]
        per_class[name] = {"samples": int(sel.sum()), "patients": len(np.unique(known)),
                           "unknown_patient_samples": int((sel & (g == "")).sum())}
    return {"per_class": per_class, "samples": len(y), "patients": len(np.unique(g[g != ""])),
            "unknown_patient_samples": int((g == "").sum())}


def _size(rs: Sequence[FoldResult], meta: dict[str, Any], model: str) -> dict[str, Any]:
    """Params / FLOPs: ``meta["models"][model]`` first, then the first fold's ``extra``."""
    given = dict((meta.get("models") or {}).get(model) or {})
    return {k: given.get(k, rs[0].extra.get(k)) for k in ("params", "flops")}


def _model_report(name: str, rs: Sequence[FoldResult], classes: Sequence[str],
                  meta: dict[str, Any]) -> dict[str, Any]:
    folds: list[dict[str, Any]] = []
    for r in rs:
        m = classification_metrics(r.y_true, r.probs, classes)
        folds.append({"fold": r.fold, "metrics": m, "seconds": float(r.seconds),
                      "extra": r.extra, "test_samples": len(r.y_true),
                      "test_patients": len(np.unique(r.groups[r.groups != ""])),
                      "train_patients": len(np.unique(r.train_groups[r.train_groups != ""]))})
    d = _dir_name(name)
    capped = summaries.capped_folds(rs)
    return {"dir": d, "folds": folds, "aggregate": aggregate([f["metrics"] for f in folds]),
            "seconds": mean_sd([f["seconds"] for f in folds]),
            "leakage": leak_check((r.train_groups, r.groups) for r in rs),
            "data": _data_counts(rs, classes), **_size(rs, meta, name),
            "kind": rs[0].extra.get("kind"),
            "calibration": summaries.calibration_summary(rs),
            "abstention": summaries.abstention_summary(rs),
            "patients": summaries.patient_summary(rs, classes),
            "capped": capped, "caps_warning": summaries.caps_warning(name, capped, len(rs)),
            "figures": {k: f"{d}/{k}.png" for k in FIGURES}}


def comparison_basis(classes: Sequence[str]) -> str:
    """What the comparison's sensitivity, specificity... are: macro averages, or for a binary
    task those of the positive class (``classes[1]``), as S3's Table 1 reports HCC."""
    return f"positive class {classes[1]}" if len(classes) == 2 else "macro average"


def _comparison(models: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model: top-1 accuracy, then sensitivity... AUC on ``comparison_basis``."""
    rows = []
    for name, rep in models.items():
        agg = rep["aggregate"]
        stats = agg["per_class"][agg["positive_class"]] if "positive_class" in agg else agg["macro"]
        row = {"model": name, "params": rep["params"], "flops": rep["flops"],
               "ece": agg["ece"], "seconds": rep["seconds"], "folds": agg["folds"],
               "ece_before": rep["calibration"]["ece_before"],
               "coverage": rep["abstention"]["coverage"],
               "selective_accuracy": rep["abstention"]["selective_accuracy"],
               "capped": len(rep["capped"])}
        row.update({m: stats[m] for m in METRICS})
        row["accuracy"] = agg["macro"]["accuracy"]
        rows.append(row)
    return rows


def _plain(x: Any) -> Any:
    """JSON-ready copy: numpy scalars/arrays to Python, floats rounded to 6 decimals, NaN and
    infinity to None (JSON has neither)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return round(float(x), 6) if math.isfinite(x) else None
    if x is None or isinstance(x, str):
        return x
    return str(x)  # Path, version objects...


def _figures(name: str, rs: Sequence[FoldResult], rep: dict[str, Any],
             classes: Sequence[str], out: Path) -> None:
    from hepascope.train.evaluation import plots
    from hepascope.train.evaluation.plot_risk import plot_risk_coverage

    y = np.concatenate([r.y_true for r in rs])
    p = np.concatenate([r.probs for r in rs])
    k = len(rs)
    pooled = f"{name}, pooled over {k} fold{'s' * (k != 1)}"
    plots.plot_confusion(np.asarray(rep["aggregate"]["confusion"]), classes,
                         out / rep["figures"]["confusion"], title=f"Confusion matrix: {pooled}")
    plots.plot_roc(y, p, classes, out / rep["figures"]["roc"], title=f"ROC: {pooled}")
    plots.plot_reliability(y, p, out / rep["figures"]["reliability"],
                           title=f"Reliability (calibrated): {pooled}")
    plot_risk_coverage([(r.y_true, r.probs, r.threshold) for r in rs],
                       out / rep["figures"]["risk_coverage"], title=f"Risk-coverage: {name}",
                       target=rep["abstention"]["target"])


def write_report(results: Sequence[FoldResult], classes: tuple[str, ...], out_dir: str | Path,
                 *, title: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Write report.json, report.md, ``<model>/{confusion,roc,reliability}.png`` and, with
    several models, comparison.png into ``out_dir``; return the report.json content. Raises
    ``DataError`` (and writes nothing) if a patient is in both train and test of a fold."""
    classes = tuple(str(c) for c in classes)
    grouped = _by_model(results)
    for rs in grouped.values():
        for r in rs:
            check_predictions(r.y_true, r.probs, len(classes))
    models = {name: _model_report(name, rs, classes, meta) for name, rs in grouped.items()}
    report: dict[str, Any] = {
        "title": title, "meta": meta, "classes": list(classes), "models": list(models),
        "results": models, "comparison": _comparison(models),
        "comparison_basis": comparison_basis(classes),
        "versus_baseline": versus_baseline(models, classes),
        "caps_warnings": [m["caps_warning"] for m in models.values() if m["caps_warning"]],
        "predictions": summaries.PREDICTIONS}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries.write_predictions(grouped, classes, out / summaries.PREDICTIONS)
    files = ["report.json", "report.md", summaries.PREDICTIONS]
    for name, rs in grouped.items():
        _figures(name, rs, models[name], classes, out)
        files += list(models[name]["figures"].values())
    if len(models) > 1:
        from hepascope.train.evaluation.plots import plot_comparison

        basis = report["comparison_basis"]
        plot_comparison({row["model"]: row for row in report["comparison"]},
                        out / "comparison.png", title=f"Model comparison: {title}",
                        ylabel=f"{basis[0].upper()}{basis[1:]} (%)")
        report["comparison_figure"] = "comparison.png"
        files.append("comparison.png")
    report["files"] = files
    report = _plain(report)
    (out / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    (out / "report.md").write_text(render_markdown(report))
    return report
