"""Arguments shared by ``hepascope train`` and ``hepascope eval`` (data, model, training),
and turning them into data sets and a ``TrainConfig``. Torch-free at import."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from hepascope.core.argtypes import positive
from hepascope.train.datasets.probe import INPUT_SIZE_RANGE
from hepascope.train.demo import cache_dir

LIVE_TASK = "lesion6"  # the live product's classes, from the streaming-faithful phantom set
PHANTOM_IMAGE_SIZE = 112  # B-mode input side for phantom tasks (S3)


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
                   "B-mode images of any size); default: single_view for --data with image "
                   "models, else the dual-view phantom screen")
    g.add_argument("--patients-per-class", type=positive(int), metavar="N",
                   help=f"phantom patients per class (default 24; {LIVE_TASK}: 64)")
    g.add_argument("--samples-per-patient", type=positive(int), default=3, metavar="K",
                   help="phantom samples (frames or clips) per patient (default 3)")
    g.add_argument("--data-seed", type=int, default=0, help="phantom data seed (default 0)")
    g.add_argument("--image-size", type=positive(int), metavar="PX",
                   help="B-mode input size, square (default: --data: from the data, the "
                   "median frame's side rounded to 16 and clamped to "
                   f"{INPUT_SIZE_RANGE[0]}..{INPUT_SIZE_RANGE[1]}; phantom: "
                   f"{PHANTOM_IMAGE_SIZE}, as S3)")
    g.add_argument("--frames-per-clip", type=positive(int), default=1, metavar="N",
                   help="--data clips (videos, DICOM cines, folders of frames): image models "
                   "take N frames per clip, evenly spaced (the first of each of N equal "
                   "parts), clip and bimodal models N windows; every sample keeps its "
                   "clip's patient id (default 1)")
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
    g.add_argument("--epochs", type=positive(int), metavar="N",
                   help="epochs (default: --data: about 600 optimizer steps for the data's "
                   "size, 8..60; phantom: 14 for train, 8 for eval)")
    g.add_argument("--batch-size", type=positive(int), default=32,
                   help="global batch (default 32; split over DDP ranks)")
    g.add_argument("--lr", type=positive(float), default=2e-3, help="peak lr (default 2e-3)")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="(default 1e-4)")
    g.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw",
                   help="adamw, or sgd with momentum 0.9 as S2 (default adamw)")
    g.add_argument("--patience", type=positive(int), metavar="N",
                   help="early stopping: epochs without a validation gain (default: --data: "
                   "a third of the epochs, at least 3; phantom: 3)")
    g.add_argument("--monitor", choices=["balanced_accuracy", "loss"],
                   default="balanced_accuracy",
                   help="validation score for best epoch and early stopping (default "
                   "balanced_accuracy, ties to the lower loss)")
    g.add_argument("--select-after", type=_share(one=False), metavar="SHARE",
                   help="keep no best weights and stop nothing before this share of the "
                   "epochs (default: --data: 0.5, a small validation set peaks by chance "
                   "early; phantom: 0)")
    g.add_argument("--ema-span", type=_share(), metavar="SHARE", default=0.0,
                   help="validate and keep an average of the weights with this time constant "
                   "(share of all steps; default 0: off)")
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
    g.add_argument("--class-mix", choices=["data", "even"],
                   help="the class mix the saved model's probabilities are for after "
                   "balanced sampling: data (the training labels' shares, so top-1 and "
                   "confidence hold on data like it) or even (default: --data: data; "
                   "phantom: even, its classes are even)")
    g.add_argument("--threads", type=positive(int), help="torch threads (default: all cores)")
    g.add_argument("--target-accuracy", type=_share(zero=False), default=0.95, metavar="A",
                   help="abstention: the calibrated-confidence threshold is the lowest whose "
                   "selective accuracy on the validation patients reaches A; below it a "
                   "result is 'uncertain' (default 0.95)")
    g.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra model constructor argument, repeatable (e.g. width=32)")


def _share(*, zero: bool = True, one: bool = True) -> Any:
    """argparse type: a float in the unit interval, 0 and 1 included as asked."""
    ends = f"{'[' if zero else '('}0, 1{']' if one else ')'}"

    def parse(text: str) -> float:
        value = float(text)
        if not ((value >= 0 if zero else value > 0) and (value <= 1 if one else value < 1)):
            raise argparse.ArgumentTypeError(f"must be in {ends}, got {text}")
        return value

    parse.__name__ = "number"  # argparse: "invalid number value: 'x'"
    return parse


def _model_args(pairs: list[str]) -> tuple[tuple[str, Any], ...]:
    """``KEY=VALUE`` strings as constructor kwargs (int, float, true/false or text)."""
    from hepascope.core.errors import ConfigError

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


def train_config(args: argparse.Namespace, model: str, data: Any = None,
                 share: float = 1.0) -> Any:
    """The ``TrainConfig`` of the arguments; epochs and patience not given come from
    ``data`` (its class counts, ``share`` of it training) for ``--data``."""
    from hepascope.train.trainer import TrainConfig

    epochs, patience = args.epochs, args.patience
    if epochs is None and args.data is not None and data is not None:
        from hepascope.train.datasets.probe import epochs_for

        epochs = epochs_for(list(data.class_counts().values()),
                            share * (1 - args.val_fraction), args.batch_size,
                            not args.no_balance)
        _note(args, "epochs", epochs)
    epochs = epochs or args.phantom_epochs
    if patience is None:
        from hepascope.train.datasets.probe import patience_for

        patience = patience_for(epochs) if args.data is not None else 3
        _note(args, "patience", patience)
    select_after = args.select_after
    if select_after is None:
        from hepascope.train.datasets.probe import SELECT_AFTER

        select_after = SELECT_AFTER if args.data is not None else 0.0
        _note(args, "select_after", select_after)
    class_mix = args.class_mix or ("data" if args.data is not None else "even")
    if args.class_mix is None and not args.no_balance:
        _note(args, "class_mix", class_mix)
    try:
        return TrainConfig(model=model, epochs=epochs, batch_size=args.batch_size,
                           lr=args.lr, weight_decay=args.weight_decay, optimizer=args.optimizer,
                           seed=args.seed, num_threads=args.threads, patience=patience,
                           monitor=args.monitor, ema_span=args.ema_span,
                           select_after=select_after, restore_prior=class_mix == "data",
                           max_minutes=args.max_minutes, val_fraction=args.val_fraction,
                           balanced=not args.no_balance, augment=not args.no_augment,
                           device=args.device, amp=not args.no_amp,
                           model_args=_model_args(args.model_arg))
    except ValueError as e:
        from hepascope.core.errors import ConfigError

        raise ConfigError(str(e)) from e


def _note(args: argparse.Namespace, key: str, value: Any) -> None:
    """Record a default taken from the data (``args.data_defaults``, for the report)."""
    if not hasattr(args, "data_defaults"):
        args.data_defaults = {}
    args.data_defaults[key] = value


def resolve_config(spec: str | None) -> Any:
    """The config named by ``--config``: a YAML path, a packaged name, or the default."""
    from hepascope.core.config import load_config

    return load_config(spec)


def _progress(console: Any, what: str) -> tuple[Any, Any]:
    from rich.progress import Progress

    bar = Progress(console=console, transient=True)
    task = bar.add_task(what, total=None)
    return bar, lambda done, total: bar.update(task, completed=done, total=total)


def _live_task_set(args: argparse.Namespace, kind: str, config: Any, workers: int,
                   console: Any) -> Any:
    """The live product's classes from the streaming-faithful phantom set (the demo's)."""
    from hepascope.core.errors import ConfigError
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
            specs=make_specs(config, (args.image_size or PHANTOM_IMAGE_SIZE,) * 2,
                             (args.clip_size,) * 2),
            seed=args.data_seed, workers=workers, progress=progress)
    return phantom_set_arrays(pset)


def data_config_name(index: Any, kinds: set[str]) -> str | None:
    """The config when ``--config`` is not given: ``single_view`` (each file one whole
    B-mode view) for ``--data`` read by image models only, else the default layout."""
    return "single_view" if index is not None and kinds == {"image"} else None


def data_defaults(args: argparse.Namespace, index: Any, config: Any, console: Any
                  ) -> tuple[Any, int]:
    """(config, B-mode input side) with what the user left unsaid taken from the data
    (``datasets.probe``): the input side from the frames' median size; with no
    ``--config``, CLAHE tiles no smaller than 32 source pixels. Phantom tasks: as given,
    side 112. Each choice is recorded in ``args.data_defaults`` for the report."""
    from dataclasses import replace

    from hepascope.train.datasets.probe import clahe_tiles, input_size, probe_sizes

    if index is None:
        return config, args.image_size or PHANTOM_IMAGE_SIZE
    probe = probe_sizes(index, config)
    _note(args, "sizes", probe.to_dict())
    size = args.image_size or input_size(probe)
    said, flags = [], []
    if not args.image_size:
        said.append(f"input size {size}x{size}")
        flags.append("--image-size")
    if args.config is None:
        tiles = clahe_tiles(probe, config.preprocess.clahe_tiles)
        if tiles != config.preprocess.clahe_tiles:
            config = replace(config, preprocess=replace(config.preprocess, clahe_tiles=tiles))
            said.append(f"CLAHE {tiles}x{tiles} tiles")
            flags.append("--config")
        _note(args, "clahe_tiles", tiles)
    _note(args, "image_size", size)
    if said:
        console.print(f"from the data (median frame {probe.median_hw[0]}x{probe.median_hw[1]}"
                      f" of {len(probe.sizes)} probed): {', '.join(said)} (else "
                      f"{' / '.join(flags)})", highlight=False, soft_wrap=True)
    return config, size


def build_sets(args: argparse.Namespace, kinds: set[str], console: Any) -> dict[str, Any]:
    """One ``ArraySet`` per data kind the models need, all of the same patients: from
    ``--data`` (folders or a manifest) or a phantom ``--task``."""
    from hepascope.core.errors import ConfigError
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
    workers = args.workers or os.cpu_count() or 1
    index = index_from(args.data) if args.data is not None else None
    config = resolve_config(args.config or data_config_name(index, kinds))
    config, image_size = data_defaults(args, index, config, console)
    sets: dict[str, Any] = {}
    for kind in sorted(kinds):
        frames, base = ((args.clip_frames, CLIP_WINDOW) if kind == "clip"
                        else (args.window, BIMODAL_WINDOW))
        bsize, csize = (image_size, image_size), (args.clip_size, args.clip_size)
        if index is not None:
            bar, progress = _progress(console, f"reading {kind} data")
            with bar:
                sets[kind] = folder_arrays(
                    index, config=config, kinds={kind}, bmode_size=bsize, ceus_size=csize,
                    workers=workers, windows_per_clip=args.frames_per_clip,
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
