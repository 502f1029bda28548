"""``hepascope train`` and ``hepascope eval``: any registered model, on a phantom task or
your own data, through the CLI alone. Torch-free at import (registration only)."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from hepascope.stream.cli import positive
from hepascope.train.cliargs import add_data_args, add_train_args, build_sets, train_config
from hepascope.train.commands import needs_torch


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _check_models(names: list[str]) -> list[str]:
    from hepascope.stream.errors import ConfigError
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
    res = train(data, train_config(args, name), args.out, progress=not args.quiet,
                resume=args.resume, stop_after=args.stop_after)
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
    from hepascope.train.crossval import cross_validate, model_facts
    from hepascope.train.evaluation.report import write_report
    from hepascope.train.models.registry import model_kind

    console = _console()
    t0 = time.monotonic()
    models = _check_models([m for m in args.models.split(",") if m])
    kinds = {model_kind(m) for m in models}
    sets = build_sets(args, kinds, console)
    cfg = train_config(args, models[0])
    results = cross_validate(sets, models, cfg, folds=args.folds, seed=args.seed,
                             keep_dir=args.out / "checkpoints" if args.keep_checkpoints else None,
                             log=console.print, progress=False)
    data = next(iter(sets.values()))
    source = {k: v for k, v in data.source.items() if not isinstance(v, list | dict)}
    meta = {"command": "hepascope " + " ".join(sys.argv[1:]), "folds": args.folds,
            "task": args.task, "data": str(args.data) if args.data else None,
            "data_source": source, "models": model_facts(models, sets, cfg.model_args),
            "train": {k: v for k, v in vars(cfg).items() if k != "model"},
            "seconds": round(time.monotonic() - t0, 1), "date": time.strftime("%Y-%m-%d"),
            "machine": {"platform": platform.platform(), "python": platform.python_version()},
            "versions": _versions()}
    report = write_report(results, data.classes, args.out, title=args.title or _title(args),
                          meta=meta)
    _append_next_steps(args, report)
    console.print(f"wrote {args.out}/report.md and report.json "
                  f"({time.monotonic() - t0:.0f} s)")
    print(json.dumps({row["model"]: {"accuracy": row["accuracy"], "auc": row["auc"]}
                      for row in report["comparison"]}, default=float))
    return 0


def _append_next_steps(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """End report.md with the commands that put the best model on the live path."""
    def score(row: dict[str, Any]) -> float:
        f1 = row.get("f1") or {}
        return float(f1.get("mean") or 0.0)

    best = max(report["comparison"], key=score)["model"]
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

    return {"torch": torch.__version__, "numpy": numpy.__version__,
            "scikit-learn": sklearn.__version__}


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
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="cross-validate models by patient and write the report",
                       description="Patient-grouped stratified k-fold CV (StratifiedGroupKFold) "
                       "of each model on the same folds: per class and macro accuracy, "
                       "sensitivity, specificity, PPV, NPV, F1, AUC as mean ± SD; confusion "
                       "matrix, ROC and reliability PNGs; report.md/json; a comparison "
                       f"table. Models: {', '.join(model_names)}.")
    p.add_argument("--models", required=True, metavar="A,B,...",
                   help="comma-separated registered models")
    p.add_argument("--folds", type=positive(int), default=5, help="k (default 5)")
    p.add_argument("--out", type=Path, default=Path("out/eval"), metavar="DIR",
                   help="report directory (default out/eval)")
    p.add_argument("--title", help="report title")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each fold's checkpoint under DIR/checkpoints")
    add_data_args(p, default_task=None)
    add_train_args(p)
    p.set_defaults(func=cmd_eval, epochs=8)
