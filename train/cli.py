"""``hepascope train``: build (or reuse) the cached phantom set, train, report. Torch-free at
import: registration reads the model names from the registry's source, the handler imports
the training stack only when it runs."""

from __future__ import annotations

import argparse
import ast
import os
from pathlib import Path

from hepascope.stream.cli import positive
from hepascope.train.commands import needs_torch
from hepascope.train.demo import cache_dir

MODELS_DIR = Path(__file__).resolve().parent / "models"


def bimodal_models() -> list[str]:
    """Names of the registered bimodal models, from the source of ``train/models`` (importing
    the registry would import torch)."""
    names = []
    for f in sorted(MODELS_DIR.glob("*.py")):
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("bimodal") and any(
                    isinstance(d, ast.Name) and d.id == "register_model"
                    for d in node.decorator_list):
                names.append(node.name)
    return sorted(names)


@needs_torch
def cmd_train(args: argparse.Namespace) -> int:
    """Handler of ``hepascope train``."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from hepascope.stream.config import load_config
    from hepascope.train.data import WindowSpec, cached_phantom_set, make_specs
    from hepascope.train.trainer import TrainConfig, train

    console = Console()
    cfg = TrainConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, optimizer=args.optimizer, seed=args.seed,
                      max_minutes=args.max_minutes)
    with Progress(console=console) as bar:
        task = bar.add_task("phantom set", total=None)
        pset = cached_phantom_set(
            args.cache, n_cases_per_class=args.cases_per_class,
            seconds_per_case=args.seconds_per_case, window=WindowSpec(),
            specs=make_specs(load_config()), seed=args.data_seed, workers=os.cpu_count() or 1,
            progress=lambda done, total: bar.update(task, completed=done, total=total))
    console.print(f"phantom set: {pset.n_cases} patients, {len(pset.sample_rows)} samples")
    res = train(pset, cfg, args.out, progress=True)
    m = res.metrics
    table = Table(title=f"{cfg.model}: val accuracy {m['accuracy']:.3f} "
                  f"(macro F1 {m['macro_f1']:.3f}, {m['n_samples']} samples)")
    for col in ("class", "sensitivity", "specificity"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c in pset.classes:
        s, p = m["sensitivity"][c], m["specificity"][c]
        table.add_row(c, "-" if s is None else f"{s:.3f}", "-" if p is None else f"{p:.3f}")
    console.print(table)
    console.print(f"{res.epochs_run} epochs ({res.stopped}), best {res.best_epoch}, "
                  f"{res.seconds:.0f} s; wrote {args.out}/model.safetensors and model.json")
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``train`` on the ``hepascope`` command's subparsers."""
    p = sub.add_parser("train", help="train the bimodal model on phantom patients",
                       description="Build (or reuse from the cache) the phantom training set, "
                       "train with a patient-level validation split, write "
                       "model.safetensors + model.json and print validation metrics.")
    p.add_argument("--out", type=Path, default=Path("out/model"), metavar="DIR",
                   help="checkpoint directory (default out/model)")
    p.add_argument("--model", default="bimodal_resnet18_lite", choices=bimodal_models(),
                   help="registered model (default bimodal_resnet18_lite)")
    p.add_argument("--cases-per-class", type=positive(int), default=64, metavar="N",
                   help="phantom patients per class (default 64)")
    p.add_argument("--seconds-per-case", type=positive(float), default=3.0, metavar="S",
                   help="seconds rendered per patient, a random stretch of a 10 s live "
                   "segment (default 3: many short patients generalise better than few long)")
    p.add_argument("--epochs", type=positive(int), default=14, help="epochs (default 14)")
    p.add_argument("--batch-size", type=positive(int), default=32, help="batch (default 32)")
    p.add_argument("--lr", type=positive(float), default=2e-3, help="peak lr (default 2e-3)")
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw",
                   help="optimizer (default adamw)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--data-seed", type=int, default=0,
                   help="phantom set seed, 0..9999 (default 0)")
    p.add_argument("--max-minutes", type=positive(float), metavar="M",
                   help="training time budget; stops cleanly after the current batch")
    p.add_argument("--cache", type=Path, default=cache_dir(), metavar="DIR",
                   help="phantom set cache (default $HEPASCOPE_CACHE or ~/.cache/hepascope)")
    p.set_defaults(func=cmd_train)
