"""Training curves beside the checkpoint, from the per-epoch history the trainer keeps (in
its result and in ``model.json``): ``curves.png`` (train and validation loss, validation
accuracy, the best epoch marked) and, where ``tensorboard`` is installed, TensorBoard event
files in ``tensorboard/`` (``tensorboard --logdir OUT``). Written after training, so the
training loop stays as it is."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PNG = "curves.png"
TB_DIR = "tensorboard"
SERIES = {"train_loss": "loss/train", "val_loss": "loss/val", "val_accuracy": "accuracy/val"}


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(int(h["epoch"]), float(h[key])) for h in history
           if isinstance(h.get(key), (int, float)) and math.isfinite(float(h[key]))]
    return [e for e, _ in pts], [v for _, v in pts]


def write_png(history: Sequence[dict[str, Any]], path: Path, *, title: str,
              best_epoch: int | None = None) -> Path:
    """Loss (train, val) and validation accuracy per epoch, two panels, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for key, style in (("train_loss", "-o"), ("val_loss", "-s")):
        x, y = _series(history, key)
        ax_loss.plot(x, y, style, ms=3, label=key.replace("_", " "))
    x, y = _series(history, "val_accuracy")
    ax_acc.plot(x, y, "-o", ms=3, color="tab:green", label="val accuracy")
    ax_acc.set_ylim(0, 1)
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"best epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_tensorboard(history: Sequence[dict[str, Any]], out: Path) -> Path | None:
    """Event files of the same scalars, by epoch; None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # an optional extra: said once, at info level
        log.info("no TensorBoard event files: %s", e)
        return None
    writer = SummaryWriter(log_dir=str(out))
    try:
        for key, tag in SERIES.items():
            for epoch, value in zip(*_series(history, key), strict=True):
                writer.add_scalar(tag, value, epoch)
    finally:
        writer.close()
    return out


def write_curves(out: Path, history: Sequence[dict[str, Any]], *, title: str,
                 best_epoch: int | None = None) -> list[Path]:
    """``curves.png`` (and ``tensorboard/`` where it can) in ``out``; the paths written."""
    if not history:
        return []
    written = [write_png(history, out / PNG, title=title, best_epoch=best_epoch)]
    tb = write_tensorboard(history, out / TB_DIR)
    return written + ([tb] if tb is not None else [])
