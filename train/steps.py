"""The mechanics of a training step, apart from what is trained: learning-rate schedule,
optimizer, memory format, the progress bar, deterministic algorithms, per-rank generator
states for resume."""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from rich import progress as rp
from rich.console import Console
from torch import nn

from hepascope.train import distributed as ddp


def lr_lambda(total: int, warmup: int) -> Any:
    def f(step: int) -> float:
        if step < warmup:
            return 0.01 + 0.99 * step / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return f


def progress_bar(enabled: bool, console: Console) -> rp.Progress:
    return rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(),
                       rp.MofNCompleteColumn(), rp.TextColumn("loss {task.fields[loss]:.3f}"),
                       rp.TimeElapsedColumn(), rp.TextColumn("ETA"), rp.TimeRemainingColumn(),
                       console=console, disable=not enabled)


def make_optimizer(model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)


def memory_format(kind: str) -> torch.memory_format:
    # channels_last: ~20% faster 2-D convolutions on CPU (oneDNN) and tensor cores on GPU
    return torch.channels_last_3d if kind == "clip" else torch.channels_last


def to_device(x: torch.Tensor, kind: str, device: torch.device) -> torch.Tensor:
    """Convolution inputs in the model's memory format (a bimodal CEUS window (B,T,C,h,w)
    is flattened to frames inside the model: it stays contiguous)."""
    if (x.ndim == 4 and kind != "clip") or (x.ndim == 5 and kind == "clip"):
        return x.to(device, memory_format=memory_format(kind))
    return x.to(device)


class Deterministic:
    """``torch.use_deterministic_algorithms`` (warn-only where an op has no deterministic
    kernel) for the block, restored after it."""

    def __init__(self, on: bool) -> None:
        self.on = on
        self.before = (torch.are_deterministic_algorithms_enabled(),
                       torch.is_deterministic_algorithms_warn_only_enabled(),
                       torch.backends.cudnn.benchmark)

    def __enter__(self) -> None:
        if self.on:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False

    def __exit__(self, *exc: object) -> None:
        torch.use_deterministic_algorithms(self.before[0], warn_only=self.before[1])
        torch.backends.cudnn.benchmark = self.before[2]


def gather_states(rng: np.random.Generator, ctx: ddp.DistContext) -> list[Any]:
    """Every rank's augmentation generator state (for resume), collected on all ranks."""
    state = rng.bit_generator.state
    if not ctx.enabled:
        return [state]
    states: list[Any] = [None] * ctx.world
    torch.distributed.all_gather_object(states, state)
    return states


class WeightAverage:
    """Exponential moving average of a model's weights and buffers (Polyak averaging), the
    model that is validated and kept when on. On a small data set each epoch's weights
    swing with a few batches, so early stopping on a few dozen validation patients picks an
    epoch by luck; the average is smoother and usually better. ``span`` is the average's
    time constant in optimizer steps; the first steps weigh in faster (as timm's ModelEma)."""

    def __init__(self, model: nn.Module, span: float) -> None:
        if span < 1:
            raise ValueError(f"span must be >= 1 optimizer step, got {span}")
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.updates = 1.0 - 1.0 / span, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current state in (call after each optimizer step)."""
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        src = model.state_dict()
        for k, v in self.module.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(src[k].detach(), alpha=1.0 - d)
            else:
                v.copy_(src[k])


def prior_shift(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Log class shares of the training labels, centred (a class absent counts once): what
    a class-balanced sampler hid from the model. Added to its logits they turn its
    class-balanced posteriors back into those of the data (Menon et al. 2021, logit
    adjustment), so top-1 accuracy and confidences hold at the data's class mix."""
    counts = np.maximum(np.bincount(labels, minlength=n_classes)[:n_classes], 1)
    log_share = np.log(counts / counts.sum())
    return log_share - log_share.mean()


@contextmanager
def shifted_logits(model: nn.Module, shift: np.ndarray | None) -> Iterator[nn.Module]:
    """``model`` with ``shift`` added to its classifier's bias (``get_classifier``) inside
    the block, restored bit for bit after; None: unchanged."""
    head = None if shift is None else model.get_classifier()  # type: ignore[operator]
    bias = getattr(head, "bias", None)
    if shift is None or bias is None:
        if shift is not None:
            raise ValueError(f"{type(model).__name__}'s classifier has no bias to shift")
        yield model
        return
    kept = bias.detach().clone()
    with torch.no_grad():
        bias.add_(torch.as_tensor(shift, dtype=bias.dtype, device=bias.device))
    try:
        yield model
    finally:
        with torch.no_grad():
            bias.copy_(kept)
