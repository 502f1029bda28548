"""Patient-level k-fold cross-validation of several models on the same folds, feeding the
report (``evaluation.report``). Folds are drawn once over patients, so every model, whatever
data kind it reads (single frames, clips, both), is tested on the same patients."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.stream.errors import DataError
from hepascope.train.datasets.arrays import ArraySet
from hepascope.train.evaluation.folds import patient_folds
from hepascope.train.evaluation.report import FoldResult
from hepascope.train.models.registry import model_kind
from hepascope.train.samples import ArrayDataset
from hepascope.train.trainer import TrainConfig, load_checkpoint, predict, train

Log = Callable[[str], None]


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


def cross_validate(sets: Mapping[str, ArraySet], models: Sequence[str], cfg: TrainConfig, *,
                   folds: int = 5, seed: int = 0, keep_dir: Path | None = None,
                   log: Log = lambda s: None, progress: bool = False) -> list[FoldResult]:
    """Train and test every model on every fold; returns out-of-fold predictions.

    ``sets`` maps a data kind (image, clip, bimodal) to the set its models read. Each fold
    trains with an inner patient-level validation split (early stopping) and is tested on
    its held-out patients with the best weights. Checkpoints go to ``keep_dir`` if given,
    else to a temporary directory removed afterwards."""
    ids, labels = patient_table(sets)
    pfolds = patient_folds(labels, ids, k=folds, seed=seed)
    results: list[FoldResult] = []
    tmp = None if keep_dir is not None else Path(tempfile.mkdtemp(prefix="hepascope-cv-"))
    root = keep_dir if keep_dir is not None else tmp
    assert root is not None
    try:
        for name in models:
            kind = model_kind(name)
            if kind not in sets:
                raise DataError(f"model {name} reads {kind} data, which was not prepared")
            data = sets[kind]
            for f, (_, te) in enumerate(pfolds):
                tr_idx, te_idx = fold_indices(data, set(ids[te].tolist()))
                t0 = time.monotonic()
                out = root / name / f"fold{f}"
                res = train(data, replace(cfg, model=name, seed=cfg.seed + f), out,
                            train_idx=tr_idx, progress=progress)
                model, _ = load_checkpoint(out)
                y, p = predict(model, ArrayDataset(data, te_idx, kind))
                results.append(FoldResult(
                    model=name, fold=f, y_true=y, probs=p, groups=data.groups[te_idx],
                    train_groups=data.groups[tr_idx], seconds=time.monotonic() - t0,
                    extra={"epochs_run": res.epochs_run, "best_epoch": res.best_epoch,
                           "stopped": res.stopped, "kind": kind}))
                acc = float((p.argmax(1) == y).mean()) if len(y) else float("nan")
                log(f"{name} fold {f + 1}/{folds}: accuracy {acc:.3f} on {len(y)} samples "
                    f"of {len(te)} patients ({time.monotonic() - t0:.0f} s)")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return results


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
