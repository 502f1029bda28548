"""Patient-level splits: k-fold cross-validation folds and the train/validation holdout used
for early stopping inside a fold.

Every split is made on patient ids (``groups``) so that no patient's images are on both sides:
images of one patient are near-duplicates, and a split that ignores this overstates accuracy.
An empty id ("") means the patient is unknown; such samples become their own group and a
``PatientLeakWarning`` says the split may leak."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from hepascope.core.errors import ConfigError, DataError
from hepascope.train.datasets.index import PatientLeakWarning

Fold = tuple[np.ndarray, np.ndarray]  # (train indices, test indices)

_UNKNOWN_PREFIX = "\x00unknown-"  # cannot collide with a real id read from a manifest


def resolve_groups(groups: np.ndarray | Sequence[str] | None, n: int) -> np.ndarray:
    """Patient ids as a (n,) str array; unknown ("") ids become one group per sample, with a
    ``PatientLeakWarning``. ``None`` or a length mismatch is a ``DataError``."""
    if groups is None:
        raise DataError("no patient ids (groups) given: patient-level splits need one id per "
                        "sample ('' where unknown)")
    g = np.asarray(groups).astype(str)
    if g.shape != (n,):
        raise DataError(f"{g.size} patient ids for {n} samples; need exactly one per sample")
    unknown = g == ""
    if unknown.any():
        what = "all" if unknown.all() else f"{int(unknown.sum())} of {n}"
        warnings.warn(f"patient id unknown for {what} samples: each becomes its own group, so "
                      "images of one patient may be split across train and test (splits may "
                      "leak; accuracy may be overstated)", PatientLeakWarning, stacklevel=3)
        g = g.copy().astype(object)
        g[unknown] = [f"{_UNKNOWN_PREFIX}{i}" for i in np.flatnonzero(unknown)]
        g = g.astype(str)
    return g


def _check_labels(labels: np.ndarray | Sequence[int]) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"labels must be a 1-D integer array, got shape {y.shape} {y.dtype}")
    if not y.size:
        raise DataError("no samples to split")
    if y.min() < 0:
        raise DataError("labels must be class indices >= 0")
    return y


def _class_name(c: int, classes: Sequence[str] | None) -> str:
    return f"'{classes[c]}'" if classes is not None and c < len(classes) else f"{c}"


def patients_per_class(labels: np.ndarray, groups: np.ndarray) -> dict[int, int]:
    """Distinct patients having at least one sample of each class present in ``labels``."""
    return {int(c): len(np.unique(groups[labels == c])) for c in np.unique(labels)}


def patient_folds(labels: np.ndarray, groups: np.ndarray | None, k: int = 5, seed: int = 0, *,
                  classes: Sequence[str] | None = None) -> list[Fold]:
    """``k`` stratified folds with every patient's samples on one side of each split
    (scikit-learn's ``StratifiedGroupKFold``, shuffled with ``seed``). Raises ``DataError``
    when a class has fewer patients than ``k``; ``classes`` only names classes in messages."""
    from sklearn.model_selection import StratifiedGroupKFold

    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ConfigError(f"--folds must be an integer >= 2, got {k!r}")
    y = _check_labels(labels)
    g = resolve_groups(groups, len(y))
    counts = patients_per_class(y, g)
    short = {c: n for c, n in counts.items() if n < k}
    if short:
        worst = min(short.values())
        names = ", ".join(f"class {_class_name(c, classes)} has {n} patient{'s' * (n != 1)}"
                          for c, n in sorted(short.items()))
        hint = (f"use --folds {worst} or fewer" if worst >= 2
                else "add patients of that class or leave the class out")
        raise DataError(f"{k}-fold cross-validation needs at least {k} patients per class: "
                        f"{names}; {hint}")
    splitter = StratifiedGroupKFold(n_splits=int(k), shuffle=True, random_state=seed)
    folds = [(np.sort(tr), np.sort(te)) for tr, te in splitter.split(np.zeros(len(y)), y, g)]
    for i, (tr, te) in enumerate(folds):
        if not len(tr) or not len(te):  # cannot happen with >= k patients; never silently
            raise DataError(f"fold {i} has an empty {'test' if not len(te) else 'train'} set")
    check_no_leak(folds, g)
    return folds


def leak_check(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Check (train patient ids, test patient ids) pairs, one per fold: raises ``DataError``
    naming the folds and patients that are on both sides. Unknown ids ("") cannot be checked;
    they are counted. Returns a summary for the report."""
    leaks: list[str] = []
    patients: set[str] = set()
    unknown = 0
    folds = 0
    for i, (train, test) in enumerate(pairs):
        tr, te = np.asarray(train).astype(str), np.asarray(test).astype(str)
        unknown += int((te == "").sum())
        shared = np.intersect1d(tr[tr != ""], te[te != ""])
        if shared.size:
            shown = ", ".join(repr(s) for s in shared[:5]) + (" ..." if shared.size > 5 else "")
            leaks.append(f"fold {i}: {shared.size} patient(s) in train and test ({shown})")
        patients.update(te[te != ""].tolist())
        folds += 1
    if leaks:
        raise DataError("patient leakage between train and test: " + "; ".join(leaks))
    return {"passed": True, "folds": folds, "test_patients": len(patients),
            "unknown_test_samples": unknown, "complete": unknown == 0}


def check_no_leak(folds: Sequence[Fold], groups: np.ndarray) -> dict[str, Any]:
    """Raise ``DataError`` if any patient is on both sides of any fold; see ``leak_check``."""
    g = np.asarray(groups).astype(str)
    return leak_check((g[tr], g[te]) for tr, te in folds)


def holdout_split(labels: np.ndarray, groups: np.ndarray | None, val_fraction: float = 0.2,
                  seed: int = 0) -> Fold:
    """(train, validation) indices with about ``val_fraction`` of the patients in validation,
    stratified by class: one fold of ``StratifiedGroupKFold(round(1 / val_fraction))``.
    Classes too small to split keep all their patients in train (a model must see every
    class); validation then lacks them, which only weakens early stopping."""
    from sklearn.model_selection import StratifiedGroupKFold

    if not 0.0 < float(val_fraction) < 1.0:
        raise ConfigError(f"validation fraction must be in (0, 1), got {val_fraction!r}")
    y = _check_labels(labels)
    g = resolve_groups(groups, len(y))
    n_patients = len(np.unique(g))
    if n_patients < 2:
        raise DataError(f"a validation split needs at least 2 patients, got {n_patients}")
    # sklearn refuses more splits than the largest class has patients
    most = max(len(np.unique(g[y == c])) for c in np.unique(y))
    if most < 2:
        raise DataError("a validation split needs a class with at least 2 patients; "
                        "every class here has 1")
    n_splits = int(min(max(2, round(1.0 / float(val_fraction))), n_patients, most))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # tiny classes are handled below, not worth a warning
        warnings.filterwarnings("ignore", message="The least populated class")
        _, val = next(iter(splitter.split(np.zeros(len(y)), y, g)))
    in_val = np.zeros(len(y), dtype=bool)
    in_val[val] = True
    for c in np.unique(y):
        if not np.any((y == c) & ~in_val):  # class only in validation: give it back to train
            in_val[np.isin(g, g[(y == c) & in_val])] = False
    if not in_val.any():  # every class too small: still hold out one patient
        in_val[g == g[val[0]]] = True
    return np.flatnonzero(~in_val), np.flatnonzero(in_val)
