"""Calibration and abstention of a classifier's probabilities, torch-free.

Temperature scaling (Guo et al. 2017) on what a model outputs, probabilities (the exported
graphs end in a softmax): ``calibrate(p, T) = softmax(log(max(p, LOG_FLOOR)) / T)``, the
same function the live path applies to a graph's output. T is fitted on a validation split
by minimising the negative log-likelihood (golden-section search on log T), never on the
data it is then scored on. Abstention: a threshold on the calibrated top-1 confidence,
chosen on validation data as the lowest one whose selective accuracy (accuracy of the
samples at or above it) reaches a target; below it a sample's status is ``uncertain``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hepascope.core.errors import DataError

Sequence_ = tuple[np.ndarray, np.ndarray, float]  # (times s, scene ids, smoothing span s)
LOG_FLOOR = 1e-6  # probabilities below this count as this before the log (random forests give 0)
T_RANGE = (0.05, 20.0)  # searched temperatures
STATUS_OK, STATUS_UNCERTAIN = "ok", "uncertain"  # the results schema's status values
DEFAULT_TARGET_ACCURACY = 0.95
MIN_SUPPORT = 20  # validation samples a threshold must keep for its accuracy to count


def _logits(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, np.float64), LOG_FLOOR, None))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def calibrate(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(max(probs, LOG_FLOOR)) / temperature)``: rows of probabilities."""
    if not temperature > 0 or not math.isfinite(temperature):
        raise DataError(f"temperature must be a positive number, got {temperature!r}")
    p = np.asarray(probs, np.float64)
    if p.ndim != 2:
        raise DataError(f"probs must be (N, C), got shape {p.shape}")
    return _softmax(_logits(p) / temperature)


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes (probabilities floored)."""
    p = np.asarray(probs, np.float64)
    return float(-_logits(p[np.arange(len(y)), np.asarray(y)]).mean())


def fit_temperature(probs: np.ndarray, y: np.ndarray, *, tol: float = 1e-4) -> float:
    """The T in ``T_RANGE`` minimising ``nll(calibrate(probs, T), y)``: a golden-section
    search on log T (the NLL of temperature scaling is unimodal in T). No samples: 1."""
    y = np.asarray(y, np.int64)
    if not len(y):
        return 1.0
    z = _logits(probs)
    rows = np.arange(len(y))

    def loss(log_t: float) -> float:
        s = z / math.exp(log_t)
        s = s - s.max(1, keepdims=True)
        return float((np.log(np.exp(s).sum(1)) - s[rows, y]).mean())

    a, b = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = loss(c), loss(d)
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = loss(d)
    return float(math.exp((a + b) / 2))


def selective(probs: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, Any]:
    """Coverage (share with confidence >= ``threshold``) and the accuracy on those
    (None when none is covered)."""
    p = np.asarray(probs, np.float64)
    y = np.asarray(y, np.int64)
    keep = p.max(1) >= threshold
    n = int(keep.sum())
    acc = float((p[keep].argmax(1) == y[keep]).mean()) if n else None
    return {"threshold": float(threshold), "coverage": n / len(y) if len(y) else 0.0,
            "selective_accuracy": acc, "covered": n, "n": len(y)}


def risk_coverage(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                            np.ndarray]:
    """(coverage, selective accuracy, threshold) at each distinct confidence, most
    confident first: keeping the samples with confidence >= threshold."""
    p = np.asarray(probs, np.float64)
    conf = p.max(1)
    order = np.argsort(-conf, kind="stable")
    correct = (p.argmax(1) == np.asarray(y))[order].astype(np.float64)
    c = conf[order]
    last = np.r_[np.flatnonzero(np.diff(c) != 0), len(c) - 1]  # end of each tie block
    n_kept = last + 1
    acc = np.cumsum(correct)[last] / n_kept
    return n_kept / len(c), acc, c[last]


def choose_threshold(probs: np.ndarray, y: np.ndarray, target: float = DEFAULT_TARGET_ACCURACY,
                     min_support: int = MIN_SUPPORT) -> dict[str, Any]:
    """The lowest confidence threshold whose selective accuracy on (``probs``, ``y``) is at
    least ``target`` (the most coverage meeting it), counting only thresholds that keep at
    least ``min_support`` samples (all of them when there are fewer): three right answers
    say little about 95%. When none qualifies, the threshold is above every confidence
    (abstain on all) and ``met`` is False."""
    if not 0 < target <= 1:
        raise DataError(f"target accuracy must be in (0, 1], got {target!r}")
    y = np.asarray(y, np.int64)
    if not len(y):
        return {"threshold": 0.0, "target": target, "met": False, "coverage": 0.0,
                "selective_accuracy": None, "covered": 0, "n": 0}
    cov, acc, thr = risk_coverage(probs, y)
    kept = np.rint(cov * len(y))
    ok = np.flatnonzero((acc >= target - 1e-12) & (kept >= min(min_support, len(y))))
    t = float(thr[ok[-1]]) if ok.size else float(np.nextafter(1.0, 2.0))
    return {**selective(probs, y, t), "target": float(target), "met": bool(ok.size)}


WARMUP_TOLERANCE = 0.01  # accuracy a partial window may lose against a full one


def choose_warmup(accuracy_by_kept: dict[int, float], frames: int,
                  tolerance: float = WARMUP_TOLERANCE) -> float:
    """The window fill from which a window model's results count (``warming_up`` before).
    Fill is what the live path measures (``window_fill``: the share of the window's span its
    frames cover), so m frames one interval apart are a fill of (m-1)/(T-1), not m/T: m is
    the smallest count of new-scene frames whose validation accuracy (windows cut to their
    newest m frames) is within ``tolerance`` of the full windows' (fill 1.0 when none)."""
    full = accuracy_by_kept[frames]
    for m in sorted(accuracy_by_kept):
        if accuracy_by_kept[m] >= full - tolerance:
            return (m - 1) / (frames - 1) if frames > 1 else 0.0
    return 1.0


def statuses(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Per sample ``ok`` (confidence >= threshold) or ``uncertain``."""
    conf = np.asarray(probs, np.float64).max(1)
    return np.where(conf >= threshold, STATUS_OK, STATUS_UNCERTAIN)


def calibration_fit(val_probs: np.ndarray, val_y: np.ndarray,
                    target: float = DEFAULT_TARGET_ACCURACY,
                    sequence: Sequence_ | None = None) -> dict[str, Any]:
    """Temperature and abstention threshold fitted on validation predictions, with the
    validation figures they were chosen on (JSON-ready). ``sequence`` (times, scenes,
    span_s): the samples are results in time order, smoothed live over ``span_s``
    (``stream.verdict.smooth_series``), so the threshold is chosen on the calibrated,
    smoothed confidence the live path compares with it."""
    from hepascope.train.evaluation.metrics import expected_calibration_error

    y = np.asarray(val_y, np.int64)
    t = fit_temperature(val_probs, y)
    cal = calibrate(val_probs, t)
    judged = cal
    if sequence is not None:
        from hepascope.stream.verdict import smooth_series

        times, scenes, span_s = sequence
        judged = smooth_series(times, cal, span_s, scenes)
    fit: dict[str, Any] = {"temperature": t, "n_val": len(y),
                           "abstain": choose_threshold(judged, y, target),
                           "smooth_s": None if sequence is None else float(sequence[2])}
    if len(y):
        fit.update(val_nll_before=nll(val_probs, y), val_nll_after=nll(cal, y),
                   val_ece_before=expected_calibration_error(y, _renorm(val_probs)),
                   val_ece_after=expected_calibration_error(y, cal))
    return fit


def _renorm(p: np.ndarray) -> np.ndarray:
    q = np.asarray(p, np.float64)
    return q / q.sum(1, keepdims=True)


def calibration_record(fit: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint's model.json (key ``calibration``) and an exported graph's
    metadata (``export.META_CALIBRATION``, as JSON) carry for the live path: apply
    ``softmax(log(max(p, log_floor)) / temperature)`` to the graph's probabilities, then
    report ``uncertain`` when the top one is below ``abstain_threshold``."""
    ab = fit.get("abstain") or {}
    return {"temperature": float(fit["temperature"]),
            "abstain_threshold": float(ab.get("threshold", 0.0)),
            "target_accuracy": ab.get("target"), "target_met_on_validation": ab.get("met"),
            "val_coverage": ab.get("coverage"),
            "val_selective_accuracy": ab.get("selective_accuracy"),
            "n_val": int(fit.get("n_val", 0)), "log_floor": LOG_FLOOR,
            "smooth_s": fit.get("smooth_s"), "warmup_fraction": fit.get("warmup_fraction"),
            "accuracy_by_kept_frames": fit.get("accuracy_by_kept_frames"),
            "formula": "softmax(log(max(p, log_floor)) / temperature)"}
