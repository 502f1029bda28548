"""The demo's model: the trained, exported lite bimodal model shipped in the package
(``train/demo_model/``, with a manifest of its files' SHA-256 and the recipe that made it),
or, with ``--retrain``, the same recipe trained again into the cache.

Training is reproducible: a step budget (no clock), fixed seeds, a fixed thread count and
deterministic algorithms give the same weights on the same machine (same torch build and
CPU kind; another ISA may round differently). The cache key covers the recipe and the
source of every module that made the artifact (data, phantom, preprocessing, trainer,
models, export), so a code change retrains instead of reusing a stale model."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.core.errors import ModelError
from hepascope.core.export_format import (
    BIMODAL_GRAPHS,
    CHECKPOINT_META,
    CHECKPOINT_WEIGHTS,
    MANIFEST_FILE,
)
from hepascope.engines.plan import sha256_file as file_sha256  # the one file hash

PACKAGED = Path(__file__).resolve().parent / "demo_model"
MANIFEST = MANIFEST_FILE
MANIFEST_VERSION = 1
GRAPHS = BIMODAL_GRAPHS
TRAIN_CODE = ("train.trainer", "train.steps", "train.samples", "train.augment", "train.models",
              "train.export", "train.checkpoint", "train.demo_model", "train.datasets")
RETRAIN_COMMAND = "hepascope demo --retrain"


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the demo model's weights (with the code and torch build)."""

    cases_per_class: int = 720
    seconds_per_case: float = 3.0
    data_seed: int = 0
    model: str = "bimodal_resnet18_lite"
    steps: int = 7200
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    threads: int = 2
    partial_window: float = 0.3
    val_fraction: float = 0.25
    # selective accuracy the abstention threshold is chosen for (validation windows)
    target_accuracy: float = 0.97


def verify_model(directory: Path) -> dict[str, Any]:
    """The manifest of an exported demo model, after checking that every graph it lists is
    there with the SHA-256 it records (``ModelError`` otherwise)."""
    try:
        manifest: dict[str, Any] = json.loads((directory / MANIFEST).read_text())
        files: dict[str, str] = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{directory}: no readable {MANIFEST} ({e!r})") from e
    for name in (*GRAPHS, *(n for n in files if n not in GRAPHS)):  # + an INT8 configuration
        path = directory / name
        if name not in files or not path.is_file():
            raise ModelError(f"{directory}: {name} missing (manifest lists {sorted(files)})")
        got = file_sha256(path)
        if got != files[name]:
            raise ModelError(f"{path}: SHA-256 {got[:12]}... differs from the manifest's "
                             f"{files[name][:12]}...: the file was changed or damaged")
    return manifest


def model_key(recipe: Recipe) -> str:
    """Cache key of a trained demo model: recipe, code of everything that made it, torch."""
    import torch

    from hepascope.train.data import DATA_CODE, DATA_VERSION, source_digest

    src = {"recipe": asdict(recipe), "code": source_digest(*DATA_CODE, *TRAIN_CODE),
           "data_version": DATA_VERSION, "torch": torch.__version__}
    return hashlib.sha256(json.dumps(src, sort_keys=True).encode()).hexdigest()[:16]


def _training_arrays(recipe: Recipe, cache: Path) -> Any:
    """The recipe's phantom set (cached) as the trainer's windows (the frame set itself is
    dropped on return: the windows are what training holds in memory)."""
    from hepascope.core.config import load_config
    from hepascope.train.data import (
        WindowSpec,
        cached_phantom_set,
        make_specs,
        phantom_set_arrays,
    )

    pset = cached_phantom_set(cache, n_cases_per_class=recipe.cases_per_class,
                              seconds_per_case=recipe.seconds_per_case, window=WindowSpec(),
                              specs=make_specs(load_config()), seed=recipe.data_seed,
                              workers=os.cpu_count() or 1)
    return phantom_set_arrays(pset)


def _train_and_export(ckpt: Path, recipe: Recipe, cache: Path, console: Any) -> Path:
    """Build the phantom set, train, calibrate on the validation patients, export (the
    temperature and abstention threshold ride in the graphs' metadata), write the manifest."""
    from hepascope.core.config import load_config
    from hepascope.train.calibrate import calibrate_checkpoint
    from hepascope.train.export import export_checkpoint
    from hepascope.train.trainer import TrainConfig, load_checkpoint, train

    data = _training_arrays(recipe, cache)
    cfg = TrainConfig(model=recipe.model, steps=recipe.steps, batch_size=recipe.batch_size,
                      lr=recipe.lr, seed=recipe.seed, num_threads=recipe.threads,
                      partial_window=recipe.partial_window, val_fraction=recipe.val_fraction,
                      device="cpu")
    if not _finished(ckpt):  # a run that ended before its export is not trained again
        # a run cut short (killed) goes on from its last epoch: the same weights as in one go
        resume = (ckpt / "resume" / "state.json").is_file()
        if resume:
            console.print(f"resuming the interrupted training run in {ckpt}")
        train(data, cfg, ckpt, progress=True, resume=resume)
    with console.status("calibrating on the validation patients..."):
        # validation patients are clips of successive windows: threshold on the smoothed
        # confidence, warm-up from the accuracy of partial windows (as live)
        calibration = calibrate_checkpoint(ckpt, data, cfg, recipe.target_accuracy,
                                           smooth_s=load_config().verdict.smooth_s)
    model, meta = load_checkpoint(ckpt)
    onnx_dir = ckpt / "onnx"
    with console.status("exporting ONNX graphs and checking parity..."):
        # the ONNX graphs are what ships (size: no torch.export programs beside them)
        report = export_checkpoint(model, meta, onnx_dir, programs=False)
    (onnx_dir / CHECKPOINT_WEIGHTS).unlink(missing_ok=True)  # the graphs are what ships
    (onnx_dir / CHECKPOINT_META).unlink(missing_ok=True)
    write_manifest(onnx_dir, recipe, meta, calibration, report["max_abs_diff"])
    _choose_precision(onnx_dir, data, cfg, calibration, console)
    return onnx_dir


def _choose_precision(onnx_dir: Path, data: Any, cfg: Any, calibration: dict[str, Any],
                      console: Any) -> None:
    """INT8 graphs beside the fp32 ones when they are faster here and as accurate on the
    validation windows (``demo_precision``); INT8 ranges from training windows only."""
    from hepascope.train.calibrate import validation_indices
    from hepascope.train.demo_precision import apply_precision

    va = validation_indices(data, cfg)
    tr = np.setdiff1d(np.arange(len(data)), va)
    with console.status("INT8: quantising, timing and scoring against fp32..."):
        block = apply_precision(onnx_dir, data, tr, va, float(calibration["temperature"]),
                                seed=cfg.seed)
    console.print(f"precision {block['precision']}: {block['reason']}")


def _finished(ckpt: Path) -> bool:
    """Whether ``ckpt`` holds a training run that used its whole step budget."""
    try:
        return bool(json.loads((ckpt / CHECKPOINT_META).read_text())["train"]["stopped"]
                    == "epochs")
    except (OSError, ValueError, KeyError, TypeError):
        return False


def write_manifest(directory: Path, recipe: Recipe, meta: dict[str, Any],
                   calibration: dict[str, Any], parity: float) -> dict[str, Any]:
    """``manifest.json``: files' SHA-256, recipe, seeds, calibration, the command that
    rebuilds it."""
    import torch

    from hepascope.train.data import DATA_CODE, source_digest

    tr = meta.get("train", {})
    manifest = {
        "version": MANIFEST_VERSION, "command": RETRAIN_COMMAND, "recipe": asdict(recipe),
        "files": {n: file_sha256(directory / n) for n in GRAPHS},
        "torch": torch.__version__, "code": source_digest(*DATA_CODE, *TRAIN_CODE),
        "temperature": round(float(calibration["temperature"]), 6),
        "abstain_threshold": round(float(calibration["abstain_threshold"]), 6),
        "calibration": calibration, "export_max_abs_diff": parity,
        "train": {"seconds": tr.get("seconds"), "best_epoch": tr.get("best_epoch"),
                  "epochs_run": tr.get("epochs_run"), "n_train_patients":
                  tr.get("n_train_patients"), "n_val_patients": tr.get("n_val_patients")},
        "validation": meta.get("metrics", {}),
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def ensure_model(cache: Path, console: Any, *, retrain: bool = False,
                 recipe: Recipe | None = None) -> Path:
    """The demo model's directory: the packaged one (checked against its manifest), or with
    ``retrain`` (or no packaged model) the recipe trained into ``cache/model-<key>``."""
    if not retrain and (PACKAGED / MANIFEST).is_file():
        verify_model(PACKAGED)
        return PACKAGED
    recipe = recipe or Recipe()
    ckpt = cache / f"model-{model_key(recipe)}"
    onnx_dir = ckpt / "onnx"
    if (onnx_dir / MANIFEST).is_file():
        verify_model(onnx_dir)
        return onnx_dir
    console.print(f"training the demo model ({recipe.steps} steps, {recipe.threads} threads, "
                  f"seed {recipe.seed}) into {ckpt}")
    return _train_and_export(ckpt, recipe, cache, console)
