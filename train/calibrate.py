"""Calibration of a trained checkpoint (``hepascope train``): the temperature and the
abstention threshold fitted on the patients the run held out for validation, written into
its model.json under ``calibration`` so ``hepascope export`` carries them into the graph's
metadata for the live path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hepascope.core.errors import DataError
from hepascope.core.export_format import CHECKPOINT_META
from hepascope.train.checkpoint import atomic_json, load_checkpoint
from hepascope.train.datasets.arrays import ArraySet
from hepascope.train.evaluation.calibration import (
    calibration_fit,
    calibration_record,
    choose_warmup,
)
from hepascope.train.evaluation.folds import holdout_split
from hepascope.train.models.registry import model_kind
from hepascope.train.samples import ArrayDataset
from hepascope.train.trainer import TrainConfig, predict


def validation_indices(data: ArraySet, cfg: TrainConfig) -> np.ndarray:
    """The samples ``train`` held out for validation when given no split (same function,
    same seed)."""
    _, va = holdout_split(data.labels, data.groups, cfg.val_fraction, cfg.seed)
    return va


def calibrate_checkpoint(out_dir: str | Path, data: ArraySet, cfg: TrainConfig,
                         target_accuracy: float, *,
                         smooth_s: float | None = None) -> dict[str, Any]:
    """Fit temperature and threshold on the checkpoint's validation patients; store them in
    model.json (``calibration``) and return that record.

    ``smooth_s``: the validation samples of a patient are successive windows of one clip
    (a phantom set, ``--frames-per-clip``), so the threshold is chosen on their calibrated
    confidence smoothed over ``smooth_s`` as live; a window model also gets the window fill
    from which it is as accurate as on full windows (``warmup_fraction``)."""
    out = Path(out_dir)
    model, meta = load_checkpoint(out)
    va = validation_indices(data, cfg)
    expected = (meta.get("train") or {}).get("n_val_samples")
    if expected is not None and int(expected) != len(va):
        raise DataError(f"{out}: the checkpoint was validated on {expected} samples, the "
                        f"split here has {len(va)}; calibrate with the data it was trained on")
    kind = model_kind(meta["model"])
    _, probs = predict(model, ArrayDataset(data, va, kind))
    y = data.labels[va]
    sequence = None if smooth_s is None else (*_clip_times(data, va), smooth_s)
    fit = calibration_fit(probs, y, target_accuracy, sequence)
    if smooth_s is not None and kind == "bimodal" and data.window:
        acc = _accuracy_by_kept_frames(model, data, va, int(data.window["frames"]))
        fit.update(accuracy_by_kept_frames=acc,
                   warmup_fraction=choose_warmup(acc, int(data.window["frames"])))
    record = calibration_record(fit)
    meta["calibration"] = record
    atomic_json(out / CHECKPOINT_META, meta)
    return record


def _clip_times(data: ArraySet, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(times, scene ids) of samples that are successive windows of their patient's clip,
    one window interval apart (a new patient: a new scene, time 0)."""
    groups = data.groups[idx]
    scenes = np.r_[0, np.cumsum(groups[1:] != groups[:-1])] if len(idx) else np.zeros(0)
    step = float((data.window or {}).get("interval_s", 1.0))
    starts = np.r_[0, np.flatnonzero(np.diff(scenes)) + 1] if len(idx) else np.zeros(0, int)
    pos = np.arange(len(idx)) - np.repeat(starts, np.diff(np.r_[starts, len(idx)]))
    return pos * step, scenes


def _accuracy_by_kept_frames(model: Any, data: ArraySet, idx: np.ndarray,
                             frames: int) -> dict[int, float]:
    """Validation accuracy of a bimodal model on windows cut to their newest m frames, the
    older slots repeating the oldest kept one (what the live window holds m frames after a
    scene cut), for m = 1..T."""
    out = {}
    for m in range(1, frames + 1):
        y, p = predict(model, ArrayDataset(data, idx, "bimodal", keep_frames=m))
        out[m] = float(np.mean(p.argmax(1) == y)) if len(y) else 0.0
    return out
