"""What a training run is asked for (``TrainConfig``, checked when built) and what it
reports (``TrainResult``): plain records, apart from the trainer that uses them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; ``num_threads`` None = the process's share of the cores,
    ``max_minutes`` None = no limit, ``device`` auto = CUDA when present."""

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
    patience: int = 3  # epochs without a validation improvement before stopping
    # what "improvement" means: balanced accuracy (mean per-class sensitivity; ties go to
    # the lower loss) or the loss alone. Validation sets of a few dozen patients make the
    # loss swing with one over-confident mistake while the model is still improving.
    monitor: str = "balanced_accuracy"
    # share of the scheduled epochs before which validation keeps no weights for good and
    # stops nothing: selection restarts at that epoch. A validation set of a few dozen
    # patients peaks by chance while the rate is still high; a model kept from such an early
    # epoch (and a run stopped a patience later) is what made the worst folds on real data
    select_after: float = 0.0
    max_minutes: float | None = None
    # step budget: optimizer steps in all (epochs = as many as that takes, the last one
    # partial); the schedule spans exactly these steps and there is no early stopping
    steps: int | None = None
    deterministic: bool = True  # torch.use_deterministic_algorithms while training
    partial_window: float = 0.0  # share of training windows cut short (samples.ArrayDataset)
    val_fraction: float = 0.25
    balanced: bool = True
    # the saved weights' logits get the log class shares of the training labels back
    # (steps.prior_shift) when ``balanced`` sampling hid them: probabilities and top-1 then
    # hold at the data's class mix instead of an even one (selection is unchanged: it
    # monitors balanced accuracy on the weights as trained)
    restore_prior: bool = False
    augment: bool = True
    device: str = "auto"
    amp: bool = True  # mixed precision (fp16 autocast + grad scaling), GPU only
    model_args: tuple[tuple[str, Any], ...] = ()  # extra constructor kwargs (e.g. width)
    # validate and keep an average of the weights (steps.WeightAverage) whose time constant
    # is this share of all optimizer steps; 0: the weights as they are
    ema_span: float = 0.0

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
        if self.steps is not None and (self.steps < 1 or self.max_minutes is not None):
            raise ValueError(f"steps must be >= 1 and exclude max_minutes (a step budget is "
                             f"reproducible, a clock is not); got steps={self.steps}, "
                             f"max_minutes={self.max_minutes}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.monitor not in ("balanced_accuracy", "loss"):
            raise ValueError(f"monitor must be balanced_accuracy or loss, got {self.monitor!r}")
        if not 0 <= self.select_after < 1:
            raise ValueError(f"select_after must be in [0, 1), got {self.select_after}")
        if not 0 <= self.ema_span <= 1:
            raise ValueError(f"ema_span must be in [0, 1], got {self.ema_span}")
        if not 0 <= self.partial_window <= 1:
            raise ValueError(f"partial_window must be in [0, 1], got {self.partial_window}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")


@dataclass
class TrainResult:
    out_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    epochs_run: int = 0
    seconds: float = 0.0
    stopped: str = "epochs"  # "epochs" | "early" | "time" | "paused"
    weights_sha256: str = ""
