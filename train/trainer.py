"""Training of any registered model on an ``ArraySet``: patient-level validation split,
class-balanced batches, SGD (momentum, S2) or AdamW with warmup + cosine, mixed precision on
GPU, early stopping on validation loss, resume, DDP under torchrun. Writes
``model.safetensors`` + ``model.json`` (see ``checkpoint``).

Reproducible runs: a step budget (``steps``: the learning-rate schedule spans exactly the
steps taken, no early stop, no clock), fixed seeds, a fixed thread count and torch's
deterministic algorithms give the same weights on the same machine every time. A time
budget (``max_minutes``) cuts a run wherever the clock says: not reproducible."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich import progress as rp
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hepascope.core.errors import DataError
from hepascope.core.export_format import CHECKPOINT_META
from hepascope.train import distributed as ddp
from hepascope.train.augment import Augment
from hepascope.train.checkpoint import (
    atomic_json,
    load_checkpoint,
    load_resume,
    save_model,
    save_resume,
)
from hepascope.train.datasets.arrays import ArraySet
from hepascope.train.evaluation.metrics import confusion as confusion_matrix
from hepascope.train.models import create_model
from hepascope.train.models.registry import model_kind
from hepascope.train.samples import ArrayDataset, BalancedSampler, ShuffleSampler
from hepascope.train.steps import (
    Deterministic,
    WeightAverage,
    gather_states,
    lr_lambda,
    make_optimizer,
    memory_format,
    prior_shift,
    progress_bar,
    shifted_logits,
    to_device,
)

__all__ = ["TrainConfig", "TrainResult", "confusion_matrix", "evaluate", "load_checkpoint",
           "model_kwargs",
           "predict", "train"]


from hepascope.train.train_config import TrainConfig, TrainResult


def model_kwargs(data: ArraySet, kind: str) -> dict[str, Any]:
    """Constructor arguments a model of ``kind`` needs to read ``data``."""
    kw: dict[str, Any] = {"num_classes": len(data.classes)}
    if kind == "image" and data.bmode is not None:
        kw["in_chans"] = int(data.bmode.shape[1])
    elif kind == "clip" and data.ceus is not None:
        kw["in_chans"] = int(data.ceus.shape[2])
    elif kind == "bimodal" and data.bmode is not None and data.ceus is not None:
        kw.update(window=int(data.ceus.shape[1]), bmode_size=list(data.bmode.shape[-2:]),
                  ceus_size=list(data.ceus.shape[-2:]))
    return kw


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
def predict(model: nn.Module, dataset: Dataset[Any], *, batch_size: int = 64,
            device: torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(true labels (N,), softmax probabilities (N, C)) of ``model`` over ``dataset``."""
    model.eval()
    dev = device or torch.device("cpu")
    ys, ps = [], []
    for xs, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        logits = model(*(x.to(dev) for x in xs)).float()
        ys.append(y.numpy())
        ps.append(torch.softmax(logits, 1).cpu().numpy())
    return np.concatenate(ys), np.concatenate(ps)


def evaluate(model: nn.Module, dataset: Dataset[Any], *, labels: Sequence[str] | None = None,
             batch_size: int = 64, device: torch.device | None = None) -> dict[str, Any]:
    """Accuracy, macro F1, per-class sensitivity/specificity and mean cross-entropy."""
    if labels is None:
        if not isinstance(dataset, ArrayDataset):
            raise ValueError("evaluate needs labels= for a dataset that is not an ArrayDataset")
        labels = dataset.data.classes
    y, p = predict(model, dataset, batch_size=batch_size, device=device)
    out = metrics_from_confusion(confusion_matrix(y, p.argmax(1), len(labels)), labels)
    out["loss"] = float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1)).mean()) \
        if len(y) else 0.0
    return out


def _split(data: ArraySet, cfg: TrainConfig, train_idx: np.ndarray | None,
           val_idx: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if train_idx is not None and val_idx is not None:
        return np.asarray(train_idx, np.int64), np.asarray(val_idx, np.int64)
    from hepascope.train.evaluation.folds import holdout_split

    base = np.arange(len(data)) if train_idx is None else np.asarray(train_idx, np.int64)
    tr, va = holdout_split(data.labels[base], data.groups[base], cfg.val_fraction, cfg.seed)
    return base[tr], base[va]


@dataclass
class _Run:
    """What one training invocation works with (built by ``_setup``)."""

    ctx: ddp.DistContext
    kind: str
    net: nn.Module
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    loader: DataLoader[Any]
    sampler: BalancedSampler
    train_ds: ArrayDataset
    val_ds: ArrayDataset
    total: int  # optimizer steps of the whole run
    n_epochs: int
    meta: dict[str, Any]
    use_amp: bool
    avg: WeightAverage | None  # the averaged weights, validated and kept when on
    shift: np.ndarray | None  # added to the saved logits (cfg.restore_prior), else None

    @property
    def kept(self) -> nn.Module:
        """The weights that are validated and saved."""
        return self.net if self.avg is None else self.avg.module


def _setup(data: ArraySet, cfg: TrainConfig, train_idx: np.ndarray | None,
           val_idx: np.ndarray | None) -> _Run:
    ctx = ddp.init_distributed(cfg.device)
    kind = model_kind(cfg.model)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.set_num_threads(cfg.num_threads or max(1, (os.cpu_count() or 1) // ctx.world))
    tr_idx, va_idx = _split(data, cfg, train_idx, val_idx)
    train_ds = ArrayDataset(data, tr_idx, kind, augment=Augment() if cfg.augment else None,
                            seed=cfg.seed + 7919 * ctx.rank, partial_window=cfg.partial_window)
    val_ds = ArrayDataset(data, va_idx, kind)
    sampler_cls = BalancedSampler if cfg.balanced else ShuffleSampler
    sampler = sampler_cls(train_ds.labels(), cfg.seed, rank=ctx.rank, world=ctx.world)
    # cfg.batch_size is the global batch; a set smaller than one batch trains in one step
    per_rank = max(1, min(cfg.batch_size // ctx.world, len(sampler)))
    loader = DataLoader(train_ds, batch_size=per_rank, sampler=sampler, drop_last=True)
    if len(loader) == 0:
        raise DataError(f"{len(train_ds)} training samples: nothing to train on")
    kwargs = {**model_kwargs(data, kind), **dict(cfg.model_args)}
    net = create_model(cfg.model, **kwargs).to(ctx.device)
    net.to(memory_format=memory_format(kind))  # type: ignore[call-overload]
    opt = make_optimizer(net, cfg)
    total = cfg.steps if cfg.steps is not None else cfg.epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, int(cfg.warmup_frac * total)))
    use_amp = cfg.amp and ctx.device.type == "cuda"
    avg = WeightAverage(net, max(1.0, cfg.ema_span * total)) if cfg.ema_span > 0 else None
    shift = _shift(cfg, data.labels[tr_idx], len(data.classes))
    meta = _meta(cfg, kind, kwargs, data, tr_idx, va_idx, ctx)
    meta["train"]["logit_shift"] = None if shift is None else [float(v) for v in shift]
    return _Run(ctx, kind, net, ddp.wrap(net, ctx), opt, sched,
                torch.amp.GradScaler("cuda", enabled=use_amp), loader, sampler, train_ds,
                val_ds, total, math.ceil(total / len(loader)), meta, use_amp, avg, shift)


def _shift(cfg: TrainConfig, labels: np.ndarray, n_classes: int) -> np.ndarray | None:
    """The logit shift the saved weights get: the training labels' log class shares when a
    balanced sampler hid them and ``restore_prior`` asks for them back; None when classes
    are even (a shift of zero) or not asked."""
    if not (cfg.balanced and cfg.restore_prior):
        return None
    shift = prior_shift(labels, n_classes)
    return None if np.allclose(shift, 0.0) else shift


def _train_epoch(run: _Run, cfg: TrainConfig, bar: rp.Progress, epoch: int,
                 deadline: float | None) -> tuple[float, bool]:
    """One pass over the loader (cut at the step budget); (mean loss, out of time)."""
    run.model.train()
    steps = min(len(run.loader), run.total - run.sched.last_epoch)
    task = bar.add_task(f"epoch {epoch}/{run.n_epochs}", total=steps, loss=0.0)
    run_loss, n_steps = 0.0, 0
    for xs, y in run.loader:
        xs = tuple(to_device(x, run.kind, run.ctx.device) for x in xs)
        with torch.autocast(run.ctx.device.type, torch.float16, enabled=run.use_amp):
            loss = F.cross_entropy(run.model(*xs), y.to(run.ctx.device),
                                   label_smoothing=cfg.label_smoothing)
        run.opt.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.opt)
        run.scaler.update()
        run.sched.step()
        if run.avg is not None:
            run.avg.update(run.net)
        run_loss, n_steps = run_loss + loss.item(), n_steps + 1
        bar.update(task, advance=1, loss=run_loss / n_steps)
        if deadline is not None and ddp.any_rank(time.monotonic() > deadline, run.ctx):
            return run_loss / n_steps, True
        if run.sched.last_epoch >= run.total:
            break
    return run_loss / n_steps, False


def train(data: ArraySet, cfg: TrainConfig, out_dir: str | Path, *,
          train_idx: np.ndarray | None = None, val_idx: np.ndarray | None = None,
          progress: bool = True, resume: bool = False,
          stop_after: int | None = None) -> TrainResult:
    """Train ``cfg.model`` on ``data[train_idx]`` (default: all but a patient-level
    validation split), keep the best-by-validation weights in ``out_dir``.

    ``resume`` continues from ``out_dir/resume``; ``stop_after`` ends this invocation after
    that many epochs (a job under a wall-time limit), resumable to the same weights. Under
    torchrun each rank trains on its shard of every epoch; rank 0 writes."""
    with Deterministic(cfg.deterministic):
        return _train(data, cfg, Path(out_dir), train_idx, val_idx, progress, resume,
                      stop_after)


def _train(data: ArraySet, cfg: TrainConfig, out: Path, train_idx: np.ndarray | None,
           val_idx: np.ndarray | None, progress: bool, resume: bool,
           stop_after: int | None) -> TrainResult:
    t_start, console = time.monotonic(), Console()
    run = _setup(data, cfg, train_idx, val_idx)
    ctx = run.ctx
    res = TrainResult(out, {})
    best_score, first = (-math.inf, -math.inf), 1
    if resume:
        st = load_resume(out, model=run.net, optimizer=run.opt, scheduler=run.sched,
                         average=run.avg)
        first, best_score = st["epoch"] + 1, tuple(st["best_score"])
        res.history, res.best_epoch = st["history"], st["best_epoch"]
        run.sampler.rng.bit_generator.state = st["sampler_rng"]
        run.train_ds.rng.bit_generator.state = st["augment_rng"][ctx.rank]
    deadline = None if cfg.max_minutes is None else t_start + 60 * cfg.max_minutes
    last = run.n_epochs if stop_after is None else min(run.n_epochs, first + stop_after - 1)
    select_from = max(1, math.ceil(cfg.select_after * run.n_epochs))
    with progress_bar(progress and ctx.is_main, console) as bar:
        for epoch in range(first, last + 1):
            t_ep = time.monotonic()
            train_loss, late = _train_epoch(run, cfg, bar, epoch, deadline)
            if late:
                res.stopped = "time"
            ddp.sync_buffers(run.net, ctx)
            m = evaluate(run.kept, run.val_ds, device=ctx.device)
            res.history.append({"epoch": epoch, "step": run.sched.last_epoch,
                                "train_loss": train_loss, "val_loss": m["loss"],
                                "val_accuracy": m["accuracy"],
                                "seconds": time.monotonic() - t_ep})
            res.epochs_run = epoch
            if progress and ctx.is_main:
                console.print(f"epoch {epoch} (step {run.sched.last_epoch}/{run.total}): train "
                              f"loss {train_loss:.3f}  val loss {m['loss']:.3f}  val acc "
                              f"{m['accuracy']:.3f}  ({time.monotonic() - t_ep:.0f} s)")
            score = _score(m, cfg.monitor)
            if epoch == select_from:  # earlier epochs only held a fallback
                best_score = (-math.inf, -math.inf)
            if score > best_score:
                best_score, res.best_epoch = score, epoch
                with shifted_logits(run.kept, run.shift) as kept:  # the weights as saved
                    res.metrics = m if run.shift is None else evaluate(
                        kept, run.val_ds, device=ctx.device)
                    if ctx.is_main:
                        save_model(out, kept, {**run.meta, "metrics": _val_metrics(
                            res.metrics, data, run.val_ds.indices)})
            elif (cfg.steps is None and epoch - res.best_epoch >= cfg.patience
                  and res.best_epoch >= select_from and epoch < run.n_epochs):
                res.stopped = "early"
            _save_state(out, run, epoch, best_score, res)
            if res.stopped != "epochs":
                break
    if res.stopped == "epochs" and last < run.n_epochs:
        res.stopped = "paused"
    res.seconds = time.monotonic() - t_start
    res.weights_sha256 = ddp.weights_digest(run.net)
    _finish(out, res, ctx)
    return res


def _save_state(out: Path, run: _Run, epoch: int, best_score: tuple[float, float],
                res: TrainResult) -> None:
    """The resume point after ``epoch`` (rank 0 writes; every rank joins the gather)."""
    states = gather_states(run.train_ds.rng, run.ctx)
    if run.ctx.is_main:
        save_resume(out, model=run.net, optimizer=run.opt, scheduler=run.sched,
                    average=run.avg, extra={
            "epoch": epoch, "best_score": list(best_score), "best_epoch": res.best_epoch,
            "history": res.history, "sampler_rng": run.sampler.rng.bit_generator.state,
            "augment_rng": states})


def _score(m: dict[str, Any], monitor: str) -> tuple[float, float]:
    """Validation score to maximise, compared as a tuple: (balanced accuracy, -loss) or
    (-loss, 0)."""
    if monitor == "loss":
        return (-m["loss"], 0.0)
    sens = [v for v in m["sensitivity"].values() if v is not None]
    return (float(np.mean(sens)) if sens else 0.0, -m["loss"])


def _meta(cfg: TrainConfig, kind: str, kwargs: dict[str, Any], data: ArraySet,
          tr_idx: np.ndarray, va_idx: np.ndarray, ctx: ddp.DistContext) -> dict[str, Any]:
    win = data.window or {}
    return {"model": cfg.model, "kind": kind, "kwargs": kwargs, "labels": list(data.classes),
            "window": int(win["frames"]) if kind != "image" and win else None,
            "interval_s": float(win["interval_s"]) if kind != "image" and win else None,
            "preprocess": data.preprocess,
            "train": {**asdict(cfg), "data": data.source, "world_size": ctx.world,
                      "n_train_samples": len(tr_idx), "n_val_samples": len(va_idx),
                      "n_train_patients": len(set(data.groups[tr_idx].tolist())),
                      "n_val_patients": len(set(data.groups[va_idx].tolist()))}}


def _val_metrics(m: dict[str, Any], data: ArraySet, va_idx: np.ndarray) -> dict[str, Any]:
    return {"val_accuracy": m["accuracy"], "val_loss": m["loss"], "macro_f1": m["macro_f1"],
            "sensitivity": m["sensitivity"], "specificity": m["specificity"],
            "confusion": m["confusion"], "n_val_samples": m["n_samples"],
            "n_val_patients": len(set(data.groups[va_idx].tolist()))}


def _finish(out: Path, res: TrainResult, ctx: ddp.DistContext) -> None:
    """Record how the run ended in model.json; under DDP every rank leaves its weights'
    digest (``rank<k>.sha256``) so identical replicas can be checked."""
    if ctx.enabled:
        (out / f"rank{ctx.rank}.sha256").write_text(res.weights_sha256 + "\n")
        torch.distributed.barrier()
    if ctx.is_main:
        meta = json.loads((out / CHECKPOINT_META).read_text())
        meta["train"].update(seconds=round(res.seconds, 1), epochs_run=res.epochs_run,
                             best_epoch=res.best_epoch, stopped=res.stopped,
                             history=res.history, final_weights_sha256=res.weights_sha256)
        atomic_json(out / CHECKPOINT_META, meta)
    ddp.shutdown(ctx)
