"""CLI registration of the training room: ``hepascope train``, ``eval`` (handlers in
``jobs``), ``export``, ``demo`` (``commands``), ``build`` (``engine_build.cli``) and
``phantom dataset``.
Torch-free at import: the model names are read from the registry's source, and the handlers
import the training stack only when they run."""

from __future__ import annotations

import argparse
import ast
import time
from pathlib import Path

from hepascope.core.argtypes import above_zero

MODELS_DIR = Path(__file__).resolve().parent / "models"


def registered_models() -> list[str]:
    """Names of every registered model (functions decorated ``@register_model``), from the
    source of ``train/models``: importing the registry would import torch."""
    names = []
    for f in sorted(MODELS_DIR.glob("*.py")):
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.FunctionDef) and any(
                    isinstance(d, ast.Name) and d.id == "register_model"
                    for d in node.decorator_list):
                names.append(node.name)
    return sorted(names)


def bimodal_models() -> list[str]:
    """Names of the registered bimodal models (by the naming convention: ``bimodal*``)."""
    return [n for n in registered_models() if n.startswith("bimodal")]


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``train``, ``eval``, ``export``, ``demo`` and ``build`` on the ``hepascope``
    command's subparsers (the training stack and TensorRT: imported by the handlers)."""
    from hepascope.train.commands import add_subcommands as add_export_demo
    from hepascope.train.engine_build.cli import add_subcommand as add_build
    from hepascope.train.jobs import add_train_eval

    add_train_eval(sub, registered_models())
    add_export_demo(sub)
    add_build(sub)


def _dataset(args: argparse.Namespace) -> int:
    # the task presets and the writer live on the training side (torch-free modules)
    from hepascope.train.datasets.phantom import CLIP_WINDOW, ClipWindow, write_task_dataset

    t0 = time.perf_counter()
    window = ClipWindow(args.clip_frames, args.clip_interval_s, CLIP_WINDOW.ceus_speed,
                        CLIP_WINDOW.ceus_start_s)
    manifest = write_task_dataset(args.task, args.out, patients_per_class=args.patients_per_class,
                                  images_per_patient=args.images_per_patient,
                                  clips_per_patient=args.clips_per_patient, window=window,
                                  seed=args.seed, workers=args.workers)
    print(f"wrote task {args.task}: {args.patients_per_class} patients per class, "
          f"{args.images_per_patient} images and {args.clips_per_patient} clips each, "
          f"manifest {manifest} in {time.perf_counter() - t0:.1f} s")
    return 0


def add_phantom_dataset(ps: argparse._SubParsersAction) -> None:
    """Register ``phantom dataset`` (a task preset's data) on the ``phantom`` subcommands."""
    from hepascope.train.tasks import list_tasks  # torch-free: names and recipes only

    pos_int, pos_float = above_zero(int), above_zero(float)
    d = ps.add_parser("dataset", help="write a task's class-folder dataset (PNG + FFV1 clips)",
                      description="Write a task preset's labelled data in the on-disk format "
                      "of a hospital's own dataset: OUT/<class>/ full-screen PNGs and lossless "
                      "FFV1 .mkv clips, plus manifest.csv (path,label,patient_id,...).")
    d.add_argument("--task", required=True, choices=list_tasks(), help="task preset")
    d.add_argument("--out", required=True, help="output directory")
    d.add_argument("--patients-per-class", type=pos_int, required=True, metavar="N")
    d.add_argument("--images-per-patient", type=int, default=4, metavar="K",
                   help="full-screen PNGs per patient (default 4; 0 for clips only)")
    d.add_argument("--clips-per-patient", type=int, default=0, metavar="M",
                   help="clips per patient (default 0)")
    d.add_argument("--clip-frames", type=pos_int, default=30, metavar="T",
                   help="frames per clip (default 30, S3)")
    d.add_argument("--clip-interval-s", type=pos_float, default=2.0, metavar="S",
                   help="seconds between clip frames (default 2, S3)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    d.add_argument("--workers", type=pos_int, default=2, help="processes (default 2)")
    d.set_defaults(func=_dataset)

