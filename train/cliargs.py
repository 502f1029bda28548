"""Arguments shared by ``hepascope train`` and ``hepascope eval`` (data, model, training),
and turning them into data sets and a ``TrainConfig``. Torch-free at import."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from hepascope.stream.cli import positive
from hepascope.train.demo import cache_dir

LIVE_TASK = "lesion6"  # the live product's classes, from the streaming-faithful phantom set


def add_data_args(p: argparse.ArgumentParser, *, default_task: str | None) -> None:
    g = p.add_argument_group("data (a phantom task, or your own images/clips)")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--task", default=default_task, metavar="NAME",
                     help="phantom data for a task preset: fll5, fll5-s0, hcc, steatosis4, "
                     f"sol2, or {LIVE_TASK} (the live pipeline's classes)"
                     + (f" (default {default_task})" if default_task else ""))
    src.add_argument("--data", type=Path, metavar="PATH",
                     help="class folders (optional patients.csv / manifest.csv) or a CSV "
                     "manifest (path,label,patient_id[,start,stop]); classes = folder names")
    g.add_argument("--config", metavar="YAML",
                   help="layout/preprocessing: a file, or a packaged name (single_view for "
                   "B-mode images of any size); default: the dual-view phantom screen")
    g.add_argument("--patients-per-class", type=positive(int), metavar="N",
                   help=f"phantom patients per class (default 24; {LIVE_TASK}: 64)")
    g.add_argument("--samples-per-patient", type=positive(int), default=3, metavar="K",
                   help="phantom samples (frames or clips) per patient (default 3)")
    g.add_argument("--data-seed", type=int, default=0, help="phantom data seed (default 0)")
    g.add_argument("--image-size", type=positive(int), default=112, metavar="PX",
                   help="B-mode input size, square (default 112, as S3; S2 used 224)")
    g.add_argument("--clip-size", type=positive(int), default=64, metavar="PX",
                   help="CEUS input size for clip and bimodal models (default 64, as S3)")
    g.add_argument("--clip-frames", type=positive(int), default=30, metavar="T",
                   help="clip models: frames per CEUS clip (default 30, as S3)")
    g.add_argument("--clip-interval", type=positive(float), default=2.0, metavar="S",
                   help="clip models: seconds between clip frames (default 2, as S3)")
    g.add_argument("--window", type=positive(int), default=6, metavar="T",
                   help="bimodal models: CEUS frames in the window (default 6)")
    g.add_argument("--window-interval", type=positive(float), default=1 / 3, metavar="S",
                   help="bimodal models: seconds between window frames (default 1/3)")
    g.add_argument("--cache", type=Path, default=cache_dir(), metavar="DIR",
                   help="phantom data cache (default $HEPASCOPE_CACHE or ~/.cache/hepascope)")
    g.add_argument("--workers", type=positive(int), metavar="N",
                   help="processes rendering/decoding data (default: all cores)")


def add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=positive(int), default=14, help="epochs (default 14)")
    g.add_argument("--batch-size", type=positive(int), default=32,
                   help="global batch (default 32; split over DDP ranks)")
    g.add_argument("--lr", type=positive(float), default=2e-3, help="peak lr (default 2e-3)")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="(default 1e-4)")
    g.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw",
                   help="adamw, or sgd with momentum 0.9 as S2 (default adamw)")
    g.add_argument("--patience", type=positive(int), default=3,
                   help="early stopping: epochs without validation-loss gain (default 3)")
    g.add_argument("--monitor", choices=["balanced_accuracy", "loss"],
                   default="balanced_accuracy",
                   help="validation score for best epoch and early stopping (default "
                   "balanced_accuracy, ties to the lower loss)")
    g.add_argument("--val-fraction", type=float, default=0.25,
                   help="share of patients held out for early stopping (default 0.25)")
    g.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    g.add_argument("--max-minutes", type=positive(float), metavar="M",
                   help="time budget per training run; stops cleanly after the current batch")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: CUDA when present (default)")
    g.add_argument("--no-amp", action="store_true", help="no mixed precision on GPU")
    g.add_argument("--no-augment", action="store_true", help="no augmentation")
    g.add_argument("--no-balance", action="store_true", help="no class-balanced sampling")
    g.add_argument("--threads", type=positive(int), help="torch threads (default: all cores)")
    g.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra model constructor argument, repeatable (e.g. width=32)")


def _model_args(pairs: list[str]) -> tuple[tuple[str, Any], ...]:
    """``KEY=VALUE`` strings as constructor kwargs (int, float, true/false or text)."""
    from hepascope.stream.errors import ConfigError

    out: list[tuple[str, Any]] = []
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"--model-arg {pair!r}: expected KEY=VALUE")
        value: Any = text
        for conv in (int, float):
            try:
                value = conv(text)
                break
            except ValueError:
                continue
        if text.lower() in ("true", "false"):
            value = text.lower() == "true"
        out.append((key, value))
    return tuple(out)


def train_config(args: argparse.Namespace, model: str) -> Any:
    from hepascope.train.trainer import TrainConfig

    try:
        return TrainConfig(model=model, epochs=args.epochs, batch_size=args.batch_size,
                           lr=args.lr, weight_decay=args.weight_decay, optimizer=args.optimizer,
                           seed=args.seed, num_threads=args.threads, patience=args.patience,
                           monitor=args.monitor,
                           max_minutes=args.max_minutes, val_fraction=args.val_fraction,
                           balanced=not args.no_balance, augment=not args.no_augment,
                           device=args.device, amp=not args.no_amp,
                           model_args=_model_args(args.model_arg))
    except ValueError as e:
        from hepascope.stream.errors import ConfigError

        raise ConfigError(str(e)) from e


def resolve_config(spec: str | None) -> Any:
    """The config named by ``--config``: a YAML path, a packaged name, or the default."""
    from hepascope.stream.config import load_config

    return load_config(spec)


def _progress(console: Any, what: str) -> tuple[Any, Any]:
    from rich.progress import Progress

    bar = Progress(console=console, transient=True)
    task = bar.add_task(what, total=None)
    return bar, lambda done, total: bar.update(task, completed=done, total=total)


def _live_task_set(args: argparse.Namespace, kind: str, config: Any, workers: int,
                   console: Any) -> Any:
    """The live product's classes from the streaming-faithful phantom set (the demo's)."""
    from hepascope.stream.errors import ConfigError
    from hepascope.train.data import WindowSpec, cached_phantom_set, make_specs, phantom_set_arrays

    if kind == "clip":
        raise ConfigError(f"--task {LIVE_TASK} makes 2-s CEUS windows for the bimodal model; "
                          "clip models want a task preset (e.g. --task hcc)")
    interval = max(1, round(args.window_interval * 30.0))
    bar, progress = _progress(console, f"phantom set {LIVE_TASK}")
    with bar:
        pset = cached_phantom_set(
            args.cache, n_cases_per_class=args.patients_per_class or 64, seconds_per_case=3.0,
            window=WindowSpec(window=args.window, interval_frames=interval),
            specs=make_specs(config, (args.image_size,) * 2, (args.clip_size,) * 2),
            seed=args.data_seed, workers=workers, progress=progress)
    return phantom_set_arrays(pset)


def build_sets(args: argparse.Namespace, kinds: set[str], console: Any) -> dict[str, Any]:
    """One ``ArraySet`` per data kind the models need, all of the same patients: from
    ``--data`` (folders or a manifest) or a phantom ``--task``."""
    from hepascope.stream.errors import ConfigError
    from hepascope.train.datasets.folder import FolderWindow, folder_arrays
    from hepascope.train.datasets.index import index_from
    from hepascope.train.datasets.phantom import (
        BIMODAL_WINDOW,
        CLIP_WINDOW,
        ClipWindow,
        phantom_arrays,
    )

    if args.task is None and args.data is None:
        raise ConfigError("say what to train on: --task NAME (phantom) or --data PATH")
    config = resolve_config(args.config)
    workers = args.workers or os.cpu_count() or 1
    index = index_from(args.data) if args.data is not None else None
    sets: dict[str, Any] = {}
    for kind in sorted(kinds):
        frames, base = ((args.clip_frames, CLIP_WINDOW) if kind == "clip"
                        else (args.window, BIMODAL_WINDOW))
        bsize, csize = (args.image_size, args.image_size), (args.clip_size, args.clip_size)
        if index is not None:
            bar, progress = _progress(console, f"reading {kind} data")
            with bar:
                sets[kind] = folder_arrays(
                    index, config=config, kinds={kind}, bmode_size=bsize, ceus_size=csize,
                    workers=workers,
                    window=None if kind == "image" else FolderWindow(frames, "uniform"),
                    progress=progress)
        elif args.task == LIVE_TASK:
            sets[kind] = _live_task_set(args, kind, config, workers, console)
        else:
            interval = args.clip_interval if kind == "clip" else args.window_interval
            window = None if kind == "image" else ClipWindow(
                frames, interval, base.ceus_speed, base.ceus_start_s)
            bar, progress = _progress(console, f"phantom {args.task} ({kind})")
            with bar:
                sets[kind] = phantom_arrays(
                    args.task, patients_per_class=args.patients_per_class or 24,
                    samples_per_patient=args.samples_per_patient, kinds={kind},
                    bmode_size=bsize, ceus_size=csize,
                    window=window, config=config, seed=args.data_seed, workers=workers,
                    cache_dir=args.cache, progress=progress)
    return sets
