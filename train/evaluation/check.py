"""Recompute a report's figures from its ``predictions.csv`` alone and list where
``report.json`` disagrees: that the per-sample file holds the whole evaluation (issue 20).
Its own arithmetic on the CSV's columns, not the report's functions; torch- and
sklearn-free, so it runs on any report directory (``hepascope eval --check DIR``).

Per model and fold: sample count, top-1 accuracy, confusion matrix, per class accuracy
(one-vs-rest), sensitivity, specificity, PPV, NPV and F1; the fold's temperature and
threshold; coverage and selective accuracy at the threshold (and the ``status`` column
against it); per patient (the mean of its samples' probabilities, the majority vote with
ties to the higher mean) the count, accuracy, vote accuracy, coverage and selective
accuracy. Over folds: the mean top-1 accuracy and vote accuracy, the pooled coverage and
the sample count. A sample's coverage is its ``status`` (written from the full-precision
confidence), itself checked against ``confidence >= threshold`` wherever the two are not
within ``_EDGE``. The CSV keeps 9 significant digits and the report 6 decimals: figures
agree within ``TOL``."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.core.errors import DataError

TOL = 2e-6
_EDGE = 1e-8  # a confidence this close to the threshold: its status is not checked


@dataclass(frozen=True)
class Mismatch:
    """One figure of report.json that predictions.csv does not give back."""

    where: str  # e.g. "resnet18 fold 2 per_class.cyst.sensitivity"
    report: Any
    recomputed: Any

    def __str__(self) -> str:
        return f"{self.where}: report {self.report!r}, predictions.csv {self.recomputed!r}"


@dataclass
class _Fold:
    y: np.ndarray        # (N,) true class index
    p: np.ndarray        # (N, C) calibrated probabilities
    patients: np.ndarray  # (N,) patient ids
    ok: np.ndarray       # (N,) the status column says ok
    temperature: float
    threshold: float


def read_predictions(path: Path, classes: list[str]) -> dict[str, dict[int, _Fold]]:
    """predictions.csv as arrays per model and fold (``DataError`` if unreadable)."""
    rows: dict[tuple[str, int], list[dict[str, str]]] = defaultdict(list)
    try:
        with path.open(newline="") as f:
            for r in csv.DictReader(f):
                rows[(r["model"], int(r["fold"]))].append(r)
        out: dict[str, dict[int, _Fold]] = defaultdict(dict)
        for (model, fold), rs in rows.items():
            out[model][fold] = _Fold(
                np.array([classes.index(r["true_label"]) for r in rs]),
                np.array([[float(r[f"p_{c}"]) for c in classes] for r in rs]),
                np.array([r["patient"] or f"#{i}" for i, r in enumerate(rs)]),  # "": its own
                np.array([r["status"] == "ok" for r in rs]),
                float(rs[0]["temperature"]), float(rs[0]["threshold"]))
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"{path}: cannot read it as predictions.csv ({e})") from e
    return dict(out)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _per_class(y: np.ndarray, pred: np.ndarray, c: int) -> dict[str, float | None]:
    tp = float(np.sum((y == c) & (pred == c)))
    fp = float(np.sum((y != c) & (pred == c)))
    fn = float(np.sum((y == c) & (pred != c)))
    tn = len(y) - tp - fp - fn
    return {"accuracy": (tp + tn) / len(y), "sensitivity": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp), "ppv": _ratio(tp, tp + fp),
            "npv": _ratio(tn, tn + fn), "f1": _ratio(2 * tp, 2 * tp + fp + fn)}


def _selective(p: np.ndarray, y: np.ndarray, keep: np.ndarray) -> tuple[float, float | None]:
    """Coverage (share kept) and the accuracy of the kept samples."""
    right = p.argmax(1) == y
    return float(keep.mean()), (float(right[keep].mean()) if keep.any() else None)


class OneOf(tuple):
    """The values a figure may have: a CSV of 9 significant digits cannot tell on which
    side of the threshold a confidence within ``_EDGE`` of it fell."""

    def __repr__(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self)


def _edge_selective(conf: np.ndarray, right: np.ndarray, thr: float) -> tuple[Any, Any]:
    """Coverage and selective accuracy at ``thr``; ``OneOf`` them when some confidences
    are within ``_EDGE`` of it (each may count as kept or not)."""
    edge = np.abs(conf - thr) <= _EDGE
    sure = (conf >= thr) & ~edge
    n, kept, good = len(conf), int(sure.sum()), int((sure & right).sum())
    ce, we = int((edge & right).sum()), int((edge & ~right).sum())
    pairs = {(kept + a + b, good + a) for a in range(ce + 1) for b in range(we + 1)}
    cov = sorted({k / n for k, _ in pairs})
    sel = sorted({g / k for k, g in pairs if k}) + ([None] if (0, 0) in pairs else [])
    return (cov[0] if len(cov) == 1 else OneOf(cov)), (sel[0] if len(sel) == 1 else OneOf(sel))


def _patients(f: _Fold) -> dict[str, Any]:
    """A fold's per-patient figures: a patient's probabilities are the mean of its
    samples' (summed in row order, as the report sums them)."""
    ids = sorted(set(f.patients.tolist()))
    mean = np.array([f.p[f.patients == i].sum(0) / np.sum(f.patients == i) for i in ids])
    truth = np.array([f.y[f.patients == i][0] for i in ids])
    votes = np.array([np.bincount(f.p[f.patients == i].argmax(1), minlength=f.p.shape[1])
                      for i in ids])
    vote = np.where(votes == votes.max(1, keepdims=True), mean, -1.0).argmax(1)
    coverage, sel = _edge_selective(mean.max(1), mean.argmax(1) == truth, f.threshold)
    return {"patients": len(ids),
            "metrics.macro.accuracy": float(np.mean(mean.argmax(1) == truth)),
            "vote_accuracy": float(np.mean(vote == truth)), "coverage": coverage,
            "selective_accuracy": sel}


def _fold_figures(f: _Fold, classes: list[str]) -> Iterator[tuple[str, Any]]:
    """(report.json path under the model's result, recomputed value) of one fold."""
    pred = f.p.argmax(1)
    yield "metrics.n", len(f.y)
    yield "metrics.macro.accuracy", float(np.mean(pred == f.y))
    conf = np.zeros((len(classes), len(classes)), np.int64)
    np.add.at(conf, (f.y, pred), 1)
    yield "metrics.confusion", conf.tolist()
    for c, name in enumerate(classes):
        for k, v in _per_class(f.y, pred, c).items():
            yield f"metrics.per_class.{name}.{k}", v
    coverage, sel = _selective(f.p, f.y, f.ok)  # the status column: checked below
    yield "abstention.coverage", coverage
    yield "abstention.selective_accuracy", sel
    yield "abstention.threshold", f.threshold
    yield "calibration.temperature", f.temperature
    for k, v in _patients(f).items():
        yield f"patients.{k}", v


def _get(d: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(d, dict) or key not in d:
            return KeyError(path)
        d = d[key]
    return d


def _same(a: Any, b: Any) -> bool:
    if isinstance(b, OneOf):
        return any(_same(a, v) for v in b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if a is None or b is None or isinstance(a, Exception):
        return a is b
    return abs(float(a) - float(b)) <= TOL


def _fold_entries(res: dict[str, Any], fold: int) -> dict[str, Any]:
    """The fold's entries of one model's report, under the names ``_fold_figures`` uses."""
    def pick(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return next((r for r in rows if r.get("fold") == fold), {})

    return {"metrics": pick(res["folds"]).get("metrics"),
            "abstention": pick(res["abstention"]["folds"]),
            "calibration": pick(res["calibration"]["folds"]),
            "patients": pick(res["patients"]["folds"])}


def recompute_report(directory: str | Path) -> list[Mismatch]:
    """Every figure of ``directory``'s report.json (listed in the module docstring) that its
    predictions.csv does not give back; [] when all agree. ``DataError`` when a file is
    missing or unreadable."""
    d = Path(directory)
    try:
        report = json.loads((d / "report.json").read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{d}: no readable report.json ({e})") from e
    classes = [str(c) for c in report["classes"]]
    preds = read_predictions(d / report.get("predictions", "predictions.csv"), classes)
    out: list[Mismatch] = []

    def check(where: str, got: Any, want: Any) -> None:
        if not _same(got, want):
            out.append(Mismatch(where, None if isinstance(got, Exception) else got, want))

    for model in report["models"]:
        res, folds = report["results"][model], preds.get(model, {})
        check(f"{model} folds", sorted(f["fold"] for f in res["folds"]), sorted(folds))
        for k, f in folds.items():
            entries = _fold_entries(res, k)
            for path, want in _fold_figures(f, classes):
                check(f"{model} fold {k} {path}", _get(entries, path), want)
            status = f.p.max(1) >= f.threshold
            sure = np.abs(f.p.max(1) - f.threshold) > _EDGE
            check(f"{model} fold {k} status column (rows off the threshold against it)",
                  int(np.sum((status != f.ok) & sure)), 0)
        for path, want in _over_folds(list(folds.values())):
            check(f"{model} {path}", _get(res, path), want)
    return out


def _over_folds(folds: list[_Fold]) -> Iterator[tuple[str, Any]]:
    accs = [float(np.mean(f.p.argmax(1) == f.y)) for f in folds]
    yield "aggregate.macro.accuracy.mean", float(np.mean(accs)) if accs else None
    yield "patients.vote_accuracy.mean", (float(np.mean([_patients(f)["vote_accuracy"]
                                                         for f in folds])) if folds else None)
    n = sum(len(f.y) for f in folds)
    covered = sum(int(np.sum(f.ok)) for f in folds)
    yield "abstention.pooled.coverage", covered / n if n else 0.0
    yield "data.samples", n
