"""Evaluation of ``hepascope eval``, torch-free: patient-level folds, metrics with mean ± SD
over folds, figures and the cross-validation report (report.json, report.md, PNGs).

Importing this package loads numpy only; scikit-learn and matplotlib load when used."""

from hepascope.train.evaluation.folds import (
    PatientLeakWarning,
    check_no_leak,
    holdout_split,
    leak_check,
    patient_folds,
)
from hepascope.train.evaluation.metrics import (
    aggregate,
    classification_metrics,
    expected_calibration_error,
)
from hepascope.train.evaluation.report import FoldResult, write_report

__all__ = [
    "FoldResult",
    "PatientLeakWarning",
    "aggregate",
    "check_no_leak",
    "classification_metrics",
    "expected_calibration_error",
    "holdout_split",
    "leak_check",
    "patient_folds",
    "write_report",
]
