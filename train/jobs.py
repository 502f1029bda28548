"""``hepascope train`` and ``hepascope eval``: any registered model, on a phantom task or
your own data, through the CLI alone. Torch-free at import (registration only)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from hepascope.core.argtypes import positive
from hepascope.train.cliargs import (
    add_data_args,
    add_train_args,
    build_sets,
    data_config_name,
    train_config,
)
from hepascope.train.commands import needs_torch

EXIT_MISMATCH = 1  # eval --check: report.json and predictions.csv disagree
DEFAULT_EVAL_MODEL = "resnet18"
# half width (2.8 M parameters): from scratch on hundreds of images, as good as full width
# and ~3x cheaper on a CPU (BUSI 32x32 crops, 5 folds: 55.3 vs 53.2% accuracy)
DEFAULT_EVAL_MODEL_ARGS = ("width=32",)


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _check_models(names: list[str]) -> list[str]:
    from hepascope.core.errors import ConfigError
    from hepascope.train.models import list_models

    unknown = [n for n in names if n not in list_models()]
    if unknown:
        raise ConfigError(f"unknown model(s) {', '.join(unknown)}; registered: "
                          f"{', '.join(list_models())}")
    return names


@needs_torch
def cmd_train(args: argparse.Namespace) -> int:
    """Train one model, print validation metrics per class."""
    from rich.table import Table

    from hepascope.train.models.registry import model_kind
    from hepascope.train.trainer import train

    console = _console()
    (name,) = _check_models([args.model])
    kind = model_kind(name)
    data = build_sets(args, {kind}, console)[kind]
    console.print(f"data: {len(data)} samples of {len(set(data.groups.tolist()))} patients, "
                  f"classes {', '.join(f'{c} {n}' for c, n in data.class_counts().items())}")
    cfg = train_config(args, name, data)
    res = train(data, cfg, args.out, progress=not args.quiet, resume=args.resume,
                stop_after=args.stop_after)
    if int(os.environ.get("RANK", "0")) == 0:  # the curves so far, a paused run's too
        from hepascope.train.curves import write_curves

        for path in write_curves(args.out, res.history, best_epoch=res.best_epoch,
                                 title=f"{name}: {res.epochs_run} epochs ({res.stopped})"):
            console.print(f"wrote {path}")
    if res.stopped != "paused" and int(os.environ.get("RANK", "0")) == 0:
        from hepascope.train.calibrate import calibrate_checkpoint

        cal = calibrate_checkpoint(args.out, data, cfg, args.target_accuracy)
        console.print(f"calibration on the validation patients: temperature "
                      f"{cal['temperature']:.3f}; abstain below confidence "
                      f"{cal['abstain_threshold']:.3f} (selective accuracy "
                      f"{_pct(cal['val_selective_accuracy'])} at coverage "
                      f"{_pct(cal['val_coverage'])}, target {_pct(cal['target_accuracy'])})")
    m = res.metrics
    table = Table(title=f"{name}: val accuracy {m['accuracy']:.3f} "
                  f"(macro F1 {m['macro_f1']:.3f}, {m['n_samples']} samples)")
    for col in ("class", "sensitivity", "specificity"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c in data.classes:
        s, p = m["sensitivity"][c], m["specificity"][c]
        table.add_row(c, "-" if s is None else f"{s:.3f}", "-" if p is None else f"{p:.3f}")
    console.print(table)
    console.print(f"{res.epochs_run} epochs ({res.stopped}), best {res.best_epoch}, "
                  f"{res.seconds:.0f} s; wrote {args.out}/model.safetensors and model.json")
    return 0


@needs_torch
def cmd_eval(args: argparse.Namespace) -> int:
    """Patient-grouped k-fold CV of several models on the same folds, and the report."""
    from hepascope.train.crossval import cross_validate
    from hepascope.train.evaluation.report import write_report
    from hepascope.train.models.registry import model_kind

    console = _console()
    t0 = time.monotonic()
    if args.models is None:  # the default model, at the width that suits small data sets
        args.models = DEFAULT_EVAL_MODEL
        if not args.model_arg:
            args.model_arg = list(DEFAULT_EVAL_MODEL_ARGS)
    models = _check_models([m for m in args.models.split(",") if m])
    kinds = {model_kind(m) for m in models}
    sets = build_sets(args, kinds, console)
    _stem_default(args, models)
    cfg = train_config(args, models[0], next(iter(sets.values())), 1 - 1 / args.folds)
    results = cross_validate(sets, models, cfg, folds=args.folds, seed=args.seed,
                             keep_dir=args.out / "checkpoints" if args.keep_checkpoints else None,
                             log=lambda s: console.print(s, soft_wrap=True), progress=False,
                             target_accuracy=args.target_accuracy, baseline=not args.no_baseline)
    data = next(iter(sets.values()))
    report = write_report(results, data.classes, args.out, title=args.title or _title(args),
                          meta=_eval_meta(args, sets, models, cfg, t0))
    _append_next_steps(args, report)
    console.print(f"wrote {args.out}/report.md, report.json and predictions.csv "
                  f"({time.monotonic() - t0:.0f} s)")
    print(json.dumps({row["model"]: {"accuracy": row["accuracy"], "auc": row["auc"],
                                     "coverage": row["coverage"]}
                      for row in report["comparison"]}, default=float))
    for line in report["caps_warnings"]:  # last, where a reader of the run looks
        console.print(f"[bold yellow]warning:[/] {line}", highlight=False, soft_wrap=True)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """``eval --check DIR``: recompute a report's figures from its predictions.csv; one
    line per disagreement and exit 1, else one line and 0. Torch-free."""
    from hepascope.core.errors import ConfigError
    from hepascope.train.evaluation.check import recompute_report

    if args.data is not None or args.task is not None:
        raise ConfigError("--check reads a written report; it takes no --data or --task")
    bad = recompute_report(args.check)
    for m in bad:
        print(f"mismatch: {m}")
    print(f"{args.check}: {len(bad)} figures of report.json differ from predictions.csv"
          if bad else f"{args.check}: every figure checked agrees with predictions.csv")
    return EXIT_MISMATCH if bad else 0


def _stem_default(args: argparse.Namespace, models: list[str]) -> None:
    """With ``--data`` and the default model, its stem stride from the input size the data
    chose (``datasets.probe.stem_stride``) unless ``--model-arg stem_stride=`` says it."""
    size = getattr(args, "data_defaults", {}).get("image_size")
    if (models != [DEFAULT_EVAL_MODEL] or size is None
            or any(a.startswith("stem_stride=") for a in args.model_arg or [])):
        return
    from hepascope.train.datasets.probe import stem_stride

    stride = stem_stride(int(size))
    args.model_arg = [*(args.model_arg or []), f"stem_stride={stride}"]
    args.data_defaults["stem_stride"] = stride


def _eval_or_check(args: argparse.Namespace) -> int:
    return cmd_check(args) if args.check is not None else cmd_eval(args)


def _eval_meta(args: argparse.Namespace, sets: dict[str, Any], models: list[str], cfg: Any,
               t0: float) -> dict[str, Any]:
    from hepascope.train.crossval import model_facts

    data = next(iter(sets.values()))
    source = {k: v for k, v in data.source.items() if not isinstance(v, list | dict)}
    view: dict[str, Any] = (data.preprocess.get("bmode")
                            or next(iter(data.preprocess.values()), {}))
    chosen = {"input_size": view.get("size"), "channels": view.get("channels"),
              "config": args.config or data_config_name(args.data, _kinds(models))
              or "default",
              "balanced_sampling": cfg.balanced, "augment": cfg.augment,
              "target_accuracy": args.target_accuracy,
              "frames_per_clip": args.frames_per_clip,
              **getattr(args, "data_defaults", {})}
    return {"command": "hepascope " + " ".join(sys.argv[1:]), "folds": args.folds,
            "task": args.task, "data": str(args.data) if args.data else None,
            "data_source": source, "models": model_facts(models, sets, cfg.model_args),
            "defaults": chosen,
            "train": {k: v for k, v in vars(cfg).items() if k != "model"},
            "seconds": round(time.monotonic() - t0, 1), "date": time.strftime("%Y-%m-%d"),
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "cpus": os.cpu_count(), "load_avg_1m": _load()},
            "versions": _versions()}


def _kinds(models: list[str]) -> set[str]:
    from hepascope.train.models.registry import model_kind

    return {model_kind(m) for m in models}


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _append_next_steps(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """End report.md with the commands that put the best model on the live path."""
    def score(row: dict[str, Any]) -> float:
        f1 = row.get("f1") or {}
        return float(f1.get("mean") or 0.0)

    networks = [r for r in report["comparison"] if r["model"] in report["meta"]["models"]]
    if not networks:
        return
    best = max(networks, key=score)["model"]
    data = f"--task {args.task}" if args.task else f"--data {args.data}"
    kind = report["meta"]["models"][best]["kind"]
    run = {"image": f"--model out/{best}/onnx/model.onnx",
           "clip": f"--model BIMODAL_EXPORT --clip-model out/{best}/onnx",
           "bimodal": f"--model out/{best}/onnx"}[kind]
    cfg = f" --config {args.config}" if args.config else ""
    cfg += "".join(f" --model-arg {a}" for a in args.model_arg)
    text = (f"\n## Put the best model on the live path\n\nBest by mean F1 "
            f"({report['comparison_basis']}): **{best}**. Train it on all the data, export "
            f"it, run it:\n\n```bash\nhepascope train --model {best} {data}{cfg} "
            f"--out out/{best}\nhepascope export --checkpoint out/{best}\n"
            f"hepascope run --source SPEC {run}\n```\n")
    with (args.out / "report.md").open("a") as f:
        f.write(text)


def _title(args: argparse.Namespace) -> str:
    what = f"phantom task {args.task}" if args.task else f"data {args.data}"
    return f"{args.folds}-fold patient-level cross-validation on {what}"


def _versions() -> dict[str, str]:
    import numpy
    import sklearn
    import torch

    out = {"torch": torch.__version__, "numpy": numpy.__version__,
           "scikit-learn": sklearn.__version__}
    try:
        import skimage

        out["scikit-image"] = str(getattr(skimage, "__version__", "?"))
    except ImportError:
        pass
    return out


def add_train_eval(sub: Any, model_names: list[str]) -> None:
    """Register ``train`` and ``eval`` on the ``hepascope`` command's subparsers."""
    p = sub.add_parser("train", help="train a registered model on a phantom task or your data",
                       description="Train one model with a patient-level validation split, "
                       "class-balanced batches and early stopping; write model.safetensors + "
                       "model.json (then 'hepascope export'). Under torchrun, DDP.")
    p.add_argument("--model", default="bimodal_resnet18_lite", choices=model_names,
                   metavar="NAME", help="registered model (default bimodal_resnet18_lite; "
                   "see 'hepascope eval --help' for the list)")
    p.add_argument("--out", type=Path, default=Path("out/model"), metavar="DIR",
                   help="checkpoint directory (default out/model)")
    p.add_argument("--resume", action="store_true", help="continue from DIR/resume")
    p.add_argument("--stop-after", type=positive(int), metavar="N",
                   help="stop after N epochs in this run (resumable with --resume)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_data_args(p, default_task="lesion6")
    add_train_args(p)
    p.set_defaults(func=cmd_train, phantom_epochs=14)

    p = sub.add_parser("eval", help="cross-validate models by patient and write the report",
                       description="Patient-grouped stratified k-fold CV (StratifiedGroupKFold) "
                       "of each model, and of a texture + random-forest baseline, on the same "
                       "folds: per class and macro accuracy, sensitivity, specificity, PPV, "
                       "NPV, F1, AUC as mean ± SD; a temperature per fold fitted on the "
                       "fold's validation patients (ECE before and after), an abstention "
                       "threshold for --target-accuracy (coverage, selective accuracy, "
                       "risk-coverage PNG), per-patient results; confusion matrix, ROC and "
                       "reliability PNGs; report.md/json and predictions.csv (every test "
                       "sample's calibrated probabilities and status). Folds cut short by "
                       "--max-minutes or the epoch cap are warned about at the end. "
                       f"Models: {', '.join(model_names)}.")
    p.add_argument("--models", metavar="A,B,...",
                   help="comma-separated registered models (default "
                   f"{DEFAULT_EVAL_MODEL} with --model-arg {DEFAULT_EVAL_MODEL_ARGS[0]} unless "
                   "--model-arg is given)")
    p.add_argument("--no-baseline", action="store_true",
                   help="leave out the texture baseline (GLCM + LBP features, random forest) "
                   "that every report otherwise shows beside the networks, in the same folds")
    p.add_argument("--folds", type=positive(int), default=5, help="k (default 5)")
    p.add_argument("--out", type=Path, default=Path("out/eval"), metavar="DIR",
                   help="report directory (default out/eval)")
    p.add_argument("--title", help="report title")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each fold's checkpoint under DIR/checkpoints/MODEL/foldK, "
                   "with the calibration its figures were scored with (export it to run it)")
    p.add_argument("--check", type=Path, metavar="REPORT_DIR",
                   help="evaluate nothing: recompute the figures of REPORT_DIR/report.json "
                   "from its predictions.csv alone (per fold and class, per patient, "
                   "coverage at the threshold) and list any that differ (exit 1 if any)")
    add_data_args(p, default_task=None)
    add_train_args(p)
    p.set_defaults(func=_eval_or_check, phantom_epochs=8)
