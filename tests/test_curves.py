"""Training curves: ``hepascope train`` leaves ``curves.png`` (loss and accuracy per epoch,
from the history it also keeps in ``model.json``) beside the checkpoint, and TensorBoard
event files where tensorboard is installed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")

from hepascope.cli import main
from hepascope.train.curves import write_png


def _folder(root: Path) -> Path:
    """2 classes x 4 patients x 2 grey images, told apart by brightness."""
    rng = np.random.default_rng(0)
    rows = []
    for c, (name, level) in enumerate((("dark", 60), ("bright", 170))):
        (root / name).mkdir(parents=True)
        for p in range(4):
            for k in range(2):
                img = np.clip(rng.normal(level, 25, (48, 48)), 0, 255).astype(np.uint8)
                rel = f"{name}/p{p}-{k}.png"
                cv2.imwrite(str(root / rel), img)
                rows.append((rel, f"{c}-{p}"))
    with (root / "patients.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("path", "patient_id"), *rows])
    return root


def test_train_writes_curves_beside_the_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "ck"
    assert main(["train", "--model", "resnet18", "--data", str(_folder(tmp_path / "d")),
                 "--config", "single_view", "--image-size", "32", "--model-arg", "width=8",
                 "--epochs", "3", "--workers", "1", "--threads", "2", "--quiet",
                 "--out", str(out)]) == 0
    history = json.loads((out / "model.json").read_text())["train"]["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    img = cv2.imread(str(out / "curves.png"))
    assert img is not None and img.shape[1] > 600 and img.std() > 10
    print(f"\ncurves.png {img.shape[1]}x{img.shape[0]}, {len(history)} epochs")
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert not events  # not installed: skipped, nothing half-written
        return
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss/val")] == [1, 2, 3]
    assert acc.Scalars("accuracy/val")[-1].value == pytest.approx(history[-1]["val_accuracy"])


def test_a_history_with_gaps_still_draws(tmp_path: Path) -> None:
    history = [{"epoch": 1, "train_loss": 0.9, "val_loss": float("nan"), "val_accuracy": 0.5},
               {"epoch": 2, "train_loss": 0.7, "val_loss": 0.8, "val_accuracy": 0.6}]
    path = write_png(history, tmp_path / "c.png", title="t", best_epoch=2)
    assert cv2.imread(str(path)) is not None
