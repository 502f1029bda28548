"""The precision step (``demo_precision``) for an exported demo model whose checkpoint is
gone (the packaged one keeps only its ONNX graphs): the recipe's phantom cases are rendered
again, only those needed, i.e. the validation patients of the training split (same cases,
same ``holdout_split`` with the recipe's seed and fraction) and a few training patients for
the INT8 ranges.

    python -m hepascope.train.demo_int8 [DIR] [--val-patients N]

``--val-patients N``: a deterministic subset (the first N/6 validation patients of each
class), recorded in the manifest; default all of them."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.core.errors import HepascopeError, guard_main
from hepascope.train.datasets.arrays import ArraySet

CALIB_PATIENTS = 64  # training patients rendered for the INT8 ranges (4 windows each)


def recipe_split(recipe: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """(training case numbers, validation case numbers, windows per case) of the recipe's
    phantom set, split as the trainer split it: ``holdout_split`` over the windows' labels
    and patients, with the recipe's fraction and seed (no frame is rendered)."""
    from hepascope.phantom import LESION_CLASSES
    from hepascope.train.data import WindowSpec, case_plan
    from hepascope.train.evaluation.folds import holdout_split

    win = WindowSpec()
    per = round(recipe.seconds_per_case * win.fps) // win.interval_frames - win.window + 1
    n = recipe.cases_per_class * len(LESION_CLASSES)
    plans = [case_plan(recipe.data_seed, i, LESION_CLASSES) for i in range(n)]
    labels = np.repeat([LESION_CLASSES.index(p["label"]) for p in plans], per)
    groups = np.repeat(np.array([p["patient_id"] for p in plans], dtype=str), per)
    _, va = holdout_split(labels, groups, recipe.val_fraction, recipe.seed)
    val = np.unique(va // per)
    return np.setdiff1d(np.arange(n), val), val, per


def pick_per_class(cases: np.ndarray, n: int | None, n_classes: int) -> np.ndarray:
    """The first ``n / n_classes`` of ``cases`` of each class (case i is class i mod
    ``n_classes``), all with ``n`` None: a deterministic, balanced subset."""
    if n is None or n >= len(cases):
        return cases
    each = max(1, n // n_classes)
    return np.sort(np.concatenate([cases[cases % n_classes == c][:each]
                                   for c in range(n_classes)]))


def render_cases(recipe: Any, cases: np.ndarray, workers: int) -> ArraySet:
    """The recipe's phantom cases ``cases`` (as ``build_phantom_set`` renders them) as the
    trainer's windows."""
    from hepascope.core.config import load_config
    from hepascope.phantom import LESION_CLASSES
    from hepascope.train.data import (
        LIVE_SEGMENT_S,
        PhantomSet,
        WindowSpec,
        case_plan,
        make_specs,
        phantom_set_arrays,
        render_case,
    )
    from hepascope.train.datasets.pool import map_pool

    win, specs = WindowSpec(), make_specs(load_config())
    n_frames = round(recipe.seconds_per_case * win.fps) // win.interval_frames
    max_start = max(0, round(LIVE_SEGMENT_S * win.fps) - (n_frames - 1) * win.interval_frames - 1)
    plans = [case_plan(recipe.data_seed, int(i), LESION_CLASSES, max_start) for i in cases]
    res = map_pool(render_case, [(p, n_frames, win, specs) for p in plans], workers, None)
    pset = PhantomSet(
        bmode=np.concatenate([r[0] for r in res]), ceus=np.concatenate([r[1] for r in res]),
        case_index=np.repeat(np.arange(len(plans), dtype=np.int32), n_frames),
        frame_index=np.concatenate([r[2] for r in res]),
        labels=np.array([LESION_CLASSES.index(p["label"]) for p in plans], np.int64),
        patient_ids=tuple(p["patient_id"] for p in plans),
        fatty_grades=np.array([r[3] for r in res], np.int32), classes=LESION_CLASSES,
        window=win, seed=recipe.data_seed,
        preprocess={"bmode": specs[0].to_dict(), "ceus": specs[1].to_dict()})
    return phantom_set_arrays(pset)


def requantize(directory: Path, val_patients: int | None = None,
               workers: int | None = None) -> dict[str, Any]:
    """``apply_precision`` on the exported demo model in ``directory`` with its recipe's
    validation patients (all, or ``val_patients`` of them) rendered again."""
    from hepascope.phantom import LESION_CLASSES
    from hepascope.train.demo_model import Recipe, verify_model
    from hepascope.train.demo_precision import apply_precision

    manifest = verify_model(directory)
    recipe = Recipe(**manifest["recipe"])
    t0 = time.monotonic()
    train, val, per = recipe_split(recipe)
    val = pick_per_class(val, val_patients, len(LESION_CLASSES))
    calib = pick_per_class(train, CALIB_PATIENTS, len(LESION_CLASSES))
    print(f"rendering {len(val)} validation and {len(calib)} training patients",
          file=sys.stderr)
    data = render_cases(recipe, np.concatenate([calib, val]), workers or os.cpu_count() or 1)
    n_calib = len(calib) * per
    notes = {"validation_set": {
        "how": "the recipe's validation patients rendered again (training split: "
               "holdout_split, recipe seed and val_fraction); no retraining",
        "patients": len(val), "of_patients": int(manifest["train"]["n_val_patients"]),
        "training_patients_for_ranges": len(calib),
        "fp32_accuracy_recorded_at_training": manifest["validation"].get("val_accuracy"),
        "render_seconds": round(time.monotonic() - t0, 1)}}
    return apply_precision(directory, data, np.arange(n_calib), np.arange(n_calib, len(data)),
                           float(manifest["temperature"]), notes=notes,
                           progress=lambda m: print(m, file=sys.stderr))


@guard_main
def main(argv: list[str] | None = None) -> int:
    from hepascope.train.demo_model import PACKAGED

    p = argparse.ArgumentParser(prog="python -m hepascope.train.demo_int8",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("directory", type=Path, nargs="?", default=PACKAGED,
                   help="exported demo model with its manifest (default: the packaged one)")
    p.add_argument("--val-patients", type=int, default=None,
                   help="score this many validation patients (default all)")
    p.add_argument("--workers", type=int, default=None, help="rendering processes")
    args = p.parse_args(argv)
    try:
        block = requantize(args.directory, args.val_patients, args.workers)
    except HepascopeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: block[k] for k in ("precision", "int8_graphs", "reason", "speedup",
                                            "validation")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
