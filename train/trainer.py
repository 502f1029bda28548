"""Training of the bimodal model on a PhantomSet: patient split, class-balanced batches,
AdamW/SGD with warmup + cosine, best-by-val-loss weights, a time budget; the checkpoint is
``model.safetensors`` (weights only, never pickle) + ``model.json`` (everything else)."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich import progress as rp
from rich.console import Console
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from hepascope.train.data import PhantomSet, WindowDataset
from hepascope.train.models import create_model

CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; ``num_threads`` None = all cores, ``max_minutes`` None = no limit."""

    model: str = "bimodal_resnet18_lite"
    epochs: int = 14
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # or "sgd" (momentum 0.9, nesterov)
    warmup_frac: float = 0.05  # of all steps, linear from 1% of lr
    label_smoothing: float = 0.05
    seed: int = 0
    num_threads: int | None = None
    patience: int = 3  # epochs without a val-loss improvement before stopping
    max_minutes: float | None = None
    val_fraction: float = 0.25
    balanced: bool = True
    augment: bool = True

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError("epochs, batch_size and patience must be >= 1")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.label_smoothing < 1:
            raise ValueError("need lr > 0, weight_decay >= 0, 0 <= label_smoothing < 1")
        if not 0 <= self.warmup_frac < 1:
            raise ValueError(f"warmup_frac must be in [0, 1), got {self.warmup_frac}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be > 0, got {self.max_minutes}")


@dataclass
class TrainResult:
    out_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    epochs_run: int = 0
    seconds: float = 0.0
    stopped: str = "epochs"  # "epochs" | "early" | "time"


class BalancedSampler(Sampler[int]):
    """Every class equally often per epoch, without replacement where the class has enough
    samples: each class's indices are permuted and cycled up to the largest class's count."""

    def __init__(self, labels: np.ndarray, seed: int) -> None:
        self.by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        self.n_max = max(len(ix) for ix in self.by_class)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.n_max * len(self.by_class)

    def __iter__(self) -> Iterator[int]:
        picks = [np.resize(self.rng.permutation(ix), self.n_max) for ix in self.by_class]
        return iter(self.rng.permutation(np.concatenate(picks)).tolist())


def confusion_matrix(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                     n_classes: int) -> np.ndarray:
    """``conf[t, p]`` = number of samples of class t predicted as p."""
    conf = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(conf, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return conf


def metrics_from_confusion(conf: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro F1 (over classes seen in truth or prediction), and per-class
    sensitivity (recall) and specificity (None where undefined: no positives/negatives)."""
    n = int(conf.sum())
    tp = np.diag(conf).astype(float)
    fn, fp = conf.sum(1) - tp, conf.sum(0) - tp
    tn = n - tp - fn - fp
    sens = {c: (float(tp[i] / (tp[i] + fn[i])) if tp[i] + fn[i] else None)
            for i, c in enumerate(labels)}
    spec = {c: (float(tn[i] / (tn[i] + fp[i])) if tn[i] + fp[i] else None)
            for i, c in enumerate(labels)}
    denom = 2 * tp + fp + fn
    f1 = [2 * tp[i] / denom[i] for i in range(len(labels)) if denom[i]]
    return {"accuracy": float(tp.sum() / n) if n else 0.0,
            "macro_f1": float(np.mean(f1)) if f1 else 0.0,
            "sensitivity": sens, "specificity": spec, "confusion": conf.tolist(),
            "labels": list(labels), "n_samples": n}


@torch.no_grad()
def _predict(model: nn.Module, dataset: Dataset[Any], batch_size: int
             ) -> tuple[np.ndarray, np.ndarray, float]:
    """(true labels, predicted labels, mean cross-entropy) over ``dataset``."""
    model.eval()
    ys, ps, loss = [], [], 0.0
    for bm, ce, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        logits = model(bm, ce)
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        ys.append(y.numpy())
        ps.append(logits.argmax(1).numpy())
    y_true, y_pred = np.concatenate(ys), np.concatenate(ps)
    return y_true, y_pred, loss / max(1, len(y_true))


def evaluate(model: nn.Module, dataset: Dataset[Any], *, labels: Sequence[str] | None = None,
             batch_size: int = 64) -> dict[str, Any]:
    """Metrics of ``model`` on ``dataset`` of (bmode, ceus, label); see metrics_from_confusion.
    ``labels`` default to the dataset's PhantomSet classes."""
    if labels is None:
        if not isinstance(dataset, WindowDataset):
            raise ValueError("evaluate needs labels= for a dataset that is not a WindowDataset")
        labels = dataset.pset.classes
    y_true, y_pred, loss = _predict(model, dataset, batch_size)
    out = metrics_from_confusion(confusion_matrix(y_true, y_pred, len(labels)), labels)
    out["loss"] = loss
    return out


def _lr_lambda(total: int, warmup: int) -> Any:
    def f(step: int) -> float:
        if step < warmup:
            return 0.01 + 0.99 * step / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return f


def _progress_bar(enabled: bool, console: Console) -> rp.Progress:
    return rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(),
                       rp.MofNCompleteColumn(), rp.TextColumn("loss {task.fields[loss]:.3f}"),
                       rp.TimeElapsedColumn(), rp.TextColumn("ETA"), rp.TimeRemainingColumn(),
                       console=console, disable=not enabled)


def train(pset: PhantomSet, cfg: TrainConfig, out_dir: str | Path,
          progress: bool = True) -> TrainResult:
    """Train ``cfg.model`` on ``pset`` (patient split), keep the best-by-val-loss weights,
    write ``out_dir/model.safetensors`` + ``model.json``."""
    t_start = time.monotonic()
    out = Path(out_dir)
    console = Console()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.set_num_threads(cfg.num_threads or os.cpu_count() or 1)
    tr_idx, va_idx = pset.split_by_patient(cfg.val_fraction, cfg.seed)
    train_ds = WindowDataset(pset, tr_idx, augment=cfg.augment, seed=cfg.seed)
    val_ds = WindowDataset(pset, va_idx, augment=False)
    sampler: Sampler[int] = (BalancedSampler(train_ds.labels(), cfg.seed) if cfg.balanced else
                             torch.utils.data.RandomSampler(
                                 train_ds, generator=torch.Generator().manual_seed(cfg.seed)))
    loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, drop_last=True)
    if len(loader) == 0:
        raise ValueError(f"{len(train_ds)} training samples: fewer than one batch of "
                         f"{cfg.batch_size}")
    kwargs: dict[str, Any] = {"num_classes": len(pset.classes), "window": pset.window.window,
                              "bmode_size": list(pset.preprocess["bmode"]["size"]),
                              "ceus_size": list(pset.preprocess["ceus"]["size"])}
    # channels_last: ~20% faster convolutions on CPU (oneDNN); weights are saved contiguous
    model = create_model(cfg.model, **kwargs)
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    opt: torch.optim.Optimizer = (
        torch.optim.AdamW(groups, lr=cfg.lr) if cfg.optimizer == "adamw"
        else torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True))
    total = cfg.epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, int(cfg.warmup_frac * total)))
    deadline = None if cfg.max_minutes is None else t_start + 60 * cfg.max_minutes
    res = TrainResult(out, {})
    best_loss, best_state = math.inf, None
    with _progress_bar(progress, console) as bar:
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            task = bar.add_task(f"epoch {epoch}/{cfg.epochs}", total=len(loader), loss=0.0)
            run_loss, n_steps, t_ep = 0.0, 0, time.monotonic()
            for bm, ce, y in loader:
                bm = bm.contiguous(memory_format=torch.channels_last)
                loss = F.cross_entropy(model(bm, ce), y, label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                run_loss, n_steps = run_loss + loss.item(), n_steps + 1
                bar.update(task, advance=1, loss=run_loss / n_steps)
                if deadline is not None and time.monotonic() > deadline:
                    res.stopped = "time"
                    break
            m = evaluate(model, val_ds)
            res.history.append({"epoch": epoch, "train_loss": run_loss / n_steps,
                                "val_loss": m["loss"], "val_accuracy": m["accuracy"],
                                "seconds": time.monotonic() - t_ep})
            res.epochs_run = epoch
            if progress:
                console.print(f"epoch {epoch}: train loss {run_loss / n_steps:.3f}  val loss "
                              f"{m['loss']:.3f}  val acc {m['accuracy']:.3f}  "
                              f"({time.monotonic() - t_ep:.0f} s)")
            if m["loss"] < best_loss:
                best_loss, res.best_epoch, res.metrics = m["loss"], epoch, m
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            elif epoch - res.best_epoch >= cfg.patience and epoch < cfg.epochs:
                res.stopped = "early"
            if res.stopped != "epochs":
                break
    assert best_state is not None  # at least one epoch ran
    model.load_state_dict(best_state)
    res.seconds = time.monotonic() - t_start
    _write_checkpoint(out, model, cfg, pset, kwargs, res, va_idx)
    return res


def _write_checkpoint(out: Path, model: nn.Module, cfg: TrainConfig, pset: PhantomSet,
                      kwargs: dict[str, Any], res: TrainResult, va_idx: np.ndarray) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(out / "model.safetensors"))
    val_cases = np.unique(pset.case_index[pset.sample_rows[va_idx]])
    m = res.metrics
    meta = {
        "version": CHECKPOINT_VERSION, "model": cfg.model, "kwargs": kwargs,
        "labels": list(pset.classes), "window": pset.window.window,
        "interval_s": pset.window.interval_s, "preprocess": pset.preprocess,
        "train": {**asdict(cfg), "data": {"seed": pset.seed, **asdict(pset.window),
                                          **{k: v for k, v in pset.params.items()
                                             if k not in ("ceus_t0_s", "ceus_speed")}},
                  "seconds": round(res.seconds, 1), "epochs_run": res.epochs_run,
                  "best_epoch": res.best_epoch, "stopped": res.stopped,
                  "history": res.history},
        "metrics": {"val_accuracy": m["accuracy"], "val_loss": m["loss"],
                    "macro_f1": m["macro_f1"], "sensitivity": m["sensitivity"],
                    "specificity": m["specificity"], "confusion": m["confusion"],
                    "n_val_samples": m["n_samples"], "n_val_patients": len(val_cases)},
    }
    (out / "model.json").write_text(json.dumps(meta, indent=1))


def load_checkpoint(out_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, model.json as a dict) from a directory ``train`` wrote."""
    d = Path(out_dir)
    meta = json.loads((d / "model.json").read_text())
    if meta.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{d}/model.json: checkpoint version {meta.get('version')!r}, "
                         f"expected {CHECKPOINT_VERSION}")
    model = create_model(meta["model"], **meta["kwargs"])
    model.load_state_dict(load_file(str(d / "model.safetensors")))
    return model.eval(), meta
