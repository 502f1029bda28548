"""Patient-level k-fold cross-validation of several models on the same folds, feeding the
report (``evaluation.report``). Folds are drawn once over patients, so every model, whatever
data kind it reads (single frames, clips, both), is tested on the same patients; so is the
texture baseline (``evaluation.baseline``).

Inside each fold the training patients are split once more (patient-grouped, stratified):
the model learns on one part, and the other, its validation part, serves early stopping,
the temperature (calibration) and the abstention threshold. The test fold is only scored."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.core.errors import DataError
from hepascope.core.export_format import CHECKPOINT_META
from hepascope.train.checkpoint import atomic_json
from hepascope.train.datasets.arrays import ArraySet
from hepascope.train.evaluation.calibration import (
    DEFAULT_TARGET_ACCURACY,
    calibrate,
    calibration_fit,
    calibration_record,
)
from hepascope.train.evaluation.folds import holdout_split, patient_folds
from hepascope.train.evaluation.report import FoldResult
from hepascope.train.models.registry import model_kind
from hepascope.train.samples import ArrayDataset
from hepascope.train.trainer import TrainConfig, load_checkpoint, predict, train

Log = Callable[[str], None]
Split = tuple[np.ndarray, np.ndarray, np.ndarray]  # (learn, validation, test) sample indices


def patient_table(sets: Mapping[str, ArraySet]) -> tuple[np.ndarray, np.ndarray]:
    """(patient ids, label per patient) shared by every set; refuses sets whose patients or
    labels differ, or a patient with two labels (one patient, one diagnosis)."""
    table: dict[str, int] | None = None
    for kind, data in sets.items():
        t: dict[str, int] = {}
        for g, y in zip(data.groups.tolist(), data.labels.tolist(), strict=True):
            if t.setdefault(g, y) != y:
                raise DataError(f"patient {g!r} has samples of two classes "
                                f"({data.classes[t[g]]}, {data.classes[y]})")
        if table is not None and t != table:
            raise DataError(f"the {kind} data holds other patients or labels than the rest")
        table = t
    if table is None:
        raise DataError("no data")
    ids = np.array(sorted(table), dtype=str)
    return ids, np.array([table[i] for i in ids], np.int64)


def fold_indices(data: ArraySet, test_patients: set[str]) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) sample indices of ``data`` for one fold's test patients."""
    is_test = np.isin(data.groups, np.array(sorted(test_patients), dtype=str))
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def inner_split(data: ArraySet, train_idx: np.ndarray, val_fraction: float,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(learn, validation) sample indices: the fold's training patients split by patient
    (``holdout_split``), as ``train`` would split them itself."""
    tr, va = holdout_split(data.labels[train_idx], data.groups[train_idx], val_fraction, seed)
    return train_idx[tr], train_idx[va]


def sample_names(data: ArraySet) -> np.ndarray:
    """Each sample's source for predictions.csv: its file (and ``#frame`` for a clip
    sample), or ``#index`` for data without files (phantom sets)."""
    paths = data.source.get("paths")
    if not isinstance(paths, list) or len(paths) != len(data):
        return np.array([f"#{i}" for i in range(len(data))], dtype=str)
    root = str(data.source.get("root") or "").rstrip("/") + "/"
    if root != "/":  # relative to the dataset's folder, as a manifest names them
        paths = [p[len(root):] if p.startswith(root) else p for p in paths]
    frames = data.source.get("newest_frame")
    if isinstance(frames, list) and len(frames) == len(data):
        return np.array([p if f < 0 else f"{p}#{f}" for p, f in zip(paths, frames, strict=True)],
                        dtype=str)
    return np.array(paths, dtype=str)


def _result(name: str, f: int, data: ArraySet, idx: Split,
            val_p: np.ndarray, test_p: np.ndarray, target: float, seconds: float,
            extra: dict[str, Any]) -> FoldResult:
    """A fold's result with its calibration fitted on the validation predictions."""
    tr, va, te = idx
    fit = calibration_fit(val_p, data.labels[va], target)
    return FoldResult(
        model=name, fold=f, y_true=data.labels[te], probs=calibrate(test_p, fit["temperature"]),
        groups=data.groups[te], train_groups=data.groups[np.r_[tr, va]], seconds=seconds,
        extra=extra, raw_probs=test_p, calibration=fit, paths=sample_names(data)[te])


def _network_fold(name: str, f: int, data: ArraySet, idx: Split, cfg: TrainConfig, out: Path,
                  target: float, progress: bool) -> FoldResult:
    tr, va, te = idx
    kind = model_kind(name)
    t0 = time.monotonic()
    res = train(data, replace(cfg, model=name, seed=cfg.seed + f), out, train_idx=tr,
                val_idx=va, progress=progress)
    model, meta = load_checkpoint(out)
    _, val_p = predict(model, ArrayDataset(data, va, kind))
    _, test_p = predict(model, ArrayDataset(data, te, kind))
    r = _result(name, f, data, idx, val_p, test_p, target, time.monotonic() - t0,
                {"epochs_run": res.epochs_run, "best_epoch": res.best_epoch,
                 "stopped": res.stopped, "epochs": cfg.epochs,
                 "max_minutes": cfg.max_minutes, "kind": kind})
    # a kept fold's checkpoint exports with the calibration its test figures were scored
    # with (as ``hepascope train`` stores its own): the live path then answers as the report
    meta["calibration"] = calibration_record(r.calibration or {})
    atomic_json(out / CHECKPOINT_META, meta)
    return r


def _baseline_fold(f: int, data: ArraySet, feats: np.ndarray, idx: Split, seed: int,
                   target: float) -> FoldResult:
    from hepascope.train.evaluation.baseline import BASELINE, fit_predict

    tr, va, te = idx
    t0 = time.monotonic()
    both, rf = fit_predict(feats[tr], data.labels[tr], feats[np.r_[va, te]],
                           len(data.classes), seed + f)
    return _result(BASELINE, f, data, idx, both[:len(va)], both[len(va):], target,
                   time.monotonic() - t0, {"kind": "baseline", "features": feats.shape[1],
                                           "trees": rf.n_estimators})


def baseline_set(sets: Mapping[str, ArraySet]) -> ArraySet:
    """The set the texture baseline reads: the image set if any (single frames), else the
    first that has B-mode views, else the first."""
    for kind in ("image", "bimodal", "clip"):
        if kind in sets and (sets[kind].bmode is not None or kind == "clip"):
            return sets[kind]
    return next(iter(sets.values()))


def cross_validate(sets: Mapping[str, ArraySet], models: Sequence[str], cfg: TrainConfig, *,
                   folds: int = 5, seed: int = 0, keep_dir: Path | None = None,
                   log: Log = lambda s: None, progress: bool = False,
                   target_accuracy: float = DEFAULT_TARGET_ACCURACY,
                   baseline: bool = True) -> list[FoldResult]:
    """Train and test every model (and the texture baseline) on every fold; returns
    out-of-fold predictions, calibrated on each fold's validation part.

    ``sets`` maps a data kind (image, clip, bimodal) to the set its models read.
    Checkpoints go to ``keep_dir`` if given, else to a temporary directory removed
    afterwards."""
    ids, labels = patient_table(sets)
    pfolds = patient_folds(labels, ids, k=folds, seed=seed)
    results: list[FoldResult] = []
    tmp = None if keep_dir is not None else Path(tempfile.mkdtemp(prefix="hepascope-cv-"))
    root = keep_dir if keep_dir is not None else tmp
    assert root is not None

    def split(data: ArraySet, f: int, te: np.ndarray) -> Split:
        tr_idx, te_idx = fold_indices(data, set(ids[te].tolist()))
        learn, val = inner_split(data, tr_idx, cfg.val_fraction, cfg.seed + f)
        return learn, val, te_idx

    try:
        for name in models:
            kind = model_kind(name)
            if kind not in sets:
                raise DataError(f"model {name} reads {kind} data, which was not prepared")
            for f, (_, te) in enumerate(pfolds):
                idx = split(sets[kind], f, te)
                r = _network_fold(name, f, sets[kind], idx, cfg, root / name / f"fold{f}",
                                  target_accuracy, progress)
                results.append(r)
                log(_fold_line(r, folds))
        if baseline:
            from hepascope.train.evaluation.baseline import feature_matrix

            data = baseline_set(sets)
            feats = feature_matrix(data)
            for f, (_, te) in enumerate(pfolds):
                r = _baseline_fold(f, data, feats, split(data, f, te), cfg.seed, target_accuracy)
                results.append(r)
                log(_fold_line(r, folds))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return results


def _fold_line(r: FoldResult, folds: int) -> str:
    acc = float((r.probs.argmax(1) == r.y_true).mean()) if len(r.y_true) else float("nan")
    t = (r.calibration or {}).get("temperature", 1.0)
    stop = r.extra.get("stopped")
    how = f", {r.extra.get('epochs_run')} epochs ({stop})" if stop else ""
    return (f"{r.model} fold {r.fold + 1}/{folds}: accuracy {acc:.3f} on {len(r.y_true)} "
            f"samples of {len(set(r.groups.tolist()))} patients, T {t:.2f}{how} "
            f"({r.seconds:.0f} s)")


def model_facts(models: Sequence[str], sets: Mapping[str, ArraySet],
                model_args: Sequence[tuple[str, Any]] = ()) -> dict[str, Any]:
    """Params and FLOPs (batch 1, at the data's input size) of each model, for the report."""
    import torch

    from hepascope.train.flops import count_flops, count_params
    from hepascope.train.models import create_model
    from hepascope.train.trainer import model_kwargs

    facts: dict[str, Any] = {}
    for name in models:
        kind = model_kind(name)
        data = sets[kind]
        model = create_model(name, **model_kwargs(data, kind), **dict(model_args)).eval()
        xs, _ = ArrayDataset(data, [0], kind)[0]
        with torch.no_grad():
            flops = count_flops(model, tuple(x[None] for x in xs))
        facts[name] = {"kind": kind, "params": count_params(model), "flops": flops,
                       "input": [list(x.shape) for x in xs]}
    return facts
