"""Calibration of a trained checkpoint (``hepascope train``): the temperature and the
abstention threshold fitted on the patients the run held out for validation, written into
its model.json under ``calibration`` so ``hepascope export`` carries them into the graph's
metadata for the live path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hepascope.stream.errors import DataError
from hepascope.train.checkpoint import atomic_json, load_checkpoint
from hepascope.train.datasets.arrays import ArraySet
from hepascope.train.evaluation.calibration import calibration_fit, calibration_record
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
                         target_accuracy: float) -> dict[str, Any]:
    """Fit temperature and threshold on the checkpoint's validation patients; store them in
    model.json (``calibration``) and return that record."""
    out = Path(out_dir)
    model, meta = load_checkpoint(out)
    va = validation_indices(data, cfg)
    expected = (meta.get("train") or {}).get("n_val_samples")
    if expected is not None and int(expected) != len(va):
        raise DataError(f"{out}: the checkpoint was validated on {expected} samples, the "
                        f"split here has {len(va)}; calibrate with the data it was trained on")
    _, probs = predict(model, ArrayDataset(data, va, model_kind(meta["model"])))
    record = calibration_record(calibration_fit(probs, data.labels[va], target_accuracy))
    meta["calibration"] = record
    atomic_json(out / "model.json", meta)
    return record
