"""CLI registration for ``export`` and ``demo``. Torch-free at import: handlers import the
training stack only when they run, so ``hepascope --help`` stays fast on inference boxes."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hepascope.core.errors import HepascopeError


def needs_torch(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn a missing training stack into one clear error line."""

    def run(args: argparse.Namespace) -> int:
        try:
            import torch  # noqa: F401
        except ImportError as e:
            raise HepascopeError("this command needs the training extras: "
                                 "pip install torch==2.13.0 'hepascope[train]'") from e
        return fn(args)

    return run


@needs_torch
def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint for the live pipeline: the streaming split of a bimodal model
    (three graphs), or one graph for an image or clip model."""
    from hepascope.train.checkpoint import load_checkpoint
    from hepascope.train.export import export_checkpoint

    model, meta = load_checkpoint(args.checkpoint)
    if meta.get("kind") == "clip" and meta.get("interval_s") is None:
        raise HepascopeError(f"{args.checkpoint}: this clip model was trained on clips of "
                             "unknown frame rate; the live window needs seconds between frames")
    out = args.out or args.checkpoint / "onnx"
    report = export_checkpoint(model, meta, out)
    parts = ", ".join(f"{r}: {p['max_abs_diff']:.1e}" for r, p in report["parts"].items())
    print(f"exported {meta['model']} to {out}; max |torch - onnxruntime| {parts}")
    return 0


@needs_torch
def cmd_demo(args: argparse.Namespace) -> int:
    from hepascope.train.demo import run_demo
    from hepascope.train.demo_model import Recipe

    recipe = Recipe(**{k: v for k, v in (("steps", args.steps),
                                         ("cases_per_class", args.cases_per_class))
                       if v is not None})
    report: dict[str, Any] = run_demo(args.out, retrain=args.retrain, recipe=recipe,
                                      fp32=args.fp32)
    sc = report["scored"]
    print(json.dumps({"results_per_s": report["results_per_s"],
                      "latency_capture_to_publish_ms": report["latency_capture_to_publish_ms"],
                      **{k: sc[k] for k in ("patients", "accuracy_labelled", "coverage",
                                            "accuracy_all", "ece")}}))
    return 0


def add_subcommands(sub: Any) -> None:
    p = sub.add_parser("export", help="export a trained checkpoint as the pipeline's ONNX graphs",
                       description="A bimodal model: bmode_encoder.onnx, ceus_encoder.onnx and "
                       "head.onnx; an image or clip model: model.onnx; labels, input spec, "
                       "window and preprocessing in their metadata; parity with PyTorch "
                       "checked (ONNX Runtime).")
    p.add_argument("--checkpoint", type=Path, default=Path("out/model"), metavar="DIR",
                   help="directory with model.safetensors + model.json (default out/model)")
    p.add_argument("--out", type=Path, metavar="DIR", help="output (default CHECKPOINT/onnx)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="the whole product in one command, offline, on a CPU",
                       description="Make (or reuse) three phantom sessions, take the trained "
                       "model shipped in the package (or --retrain it), replay the first "
                       "session at 30 fps through the pipeline with the overlay, score every "
                       "frame of all three in lockstep (18 patients), and write overlay.mp4, "
                       "snapshot.png and report.json.")
    p.add_argument("--out", type=Path, default=Path("out/demo"), metavar="DIR",
                   help="output directory (default out/demo)")
    p.add_argument("--retrain", action="store_true",
                   help="train the demo model again from its recipe (a step budget, fixed "
                   "seeds and threads: the same weights on the same machine) into the cache "
                   "and use it instead of the packaged one")
    p.add_argument("--steps", type=int, default=None,
                   help="with --retrain: optimizer steps (default: the recipe's)")
    p.add_argument("--cases-per-class", type=int, default=None,
                   help="with --retrain: phantom patients per class (default: the recipe's)")
    p.add_argument("--fp32", action="store_true",
                   help="run the fp32 graphs even where the model's manifest chose INT8 "
                   "(INT8 is chosen at export only where faster and within 1 point of "
                   "fp32's validation accuracy)")
    p.set_defaults(func=cmd_demo)
