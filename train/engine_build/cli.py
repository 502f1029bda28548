"""CLI registration for ``hepascope build``. Imports neither TensorRT nor pycuda (nor
onnx): the handler does, when it runs, so ``hepascope --help`` works on any machine and a
missing TensorRT is one error line (exit 2), not an import failure."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hepascope.core.argtypes import positive

DESCRIPTION = (
    "Build a TensorRT plan of MODEL.onnx for this GPU (MODEL.plan beside it, and "
    "MODEL.plan.json: the TensorRT version, GPU, ONNX hash and metadata it was built with; "
    "the engine refuses a plan whose TensorRT, GPU or ONNX differs). Batch 1..N, a timing "
    "cache reused across builds; --fp16, or --int8 calibrated on --calib DATA (frames made "
    "by the model's own preprocessing, with a calibration cache); an explicitly quantised "
    "(QDQ) model needs no --calib.")


def cmd_build(args: argparse.Namespace) -> int:
    from hepascope.engines.plan import sidecar_path
    from hepascope.train.engine_build.build import build_plan, is_qdq, load_onnx

    if args.int8 and args.calib is None and not is_qdq(load_onnx(args.model)):
        args.build_parser.error("--int8 needs --calib DATA (or a QDQ model from "
                                "'python -m hepascope.train.engine_build.quantize')")
    plan = build_plan(args.model, args.out, fp16=args.fp16, int8=args.int8, calib=args.calib,
                      calib_limit=args.calib_limit, max_batch=args.max_batch,
                      workspace_mb=args.workspace_mb, timing_cache=args.timing_cache,
                      device=args.device)
    print(f"built {plan} (sidecar {sidecar_path(plan)})")
    return 0


def add_subcommand(sub: Any) -> None:
    p = sub.add_parser("build", help="build a TensorRT plan for this GPU from an ONNX model",
                       description=DESCRIPTION)
    p.add_argument("model", type=Path, metavar="MODEL.onnx")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true",
                           help="allow fp16 kernels (SimAM's layers stay fp32)")
    precision.add_argument("--int8", action="store_true",
                           help="int8, calibrated on --calib DATA (a QDQ model: as quantised)")
    p.add_argument("--calib", type=Path, metavar="DATA",
                   help="calibration data: an ArraySet .npz, class folders or a .csv")
    p.add_argument("--calib-limit", type=positive(int), default=256, metavar="N",
                   help="frames drawn from DATA for calibration (default 256)")
    p.add_argument("--max-batch", type=positive(int), default=1, metavar="N",
                   help="largest batch the plan accepts (default 1)")
    p.add_argument("--out", type=Path, metavar="PLAN", help="plan path (default MODEL.plan)")
    p.add_argument("--timing-cache", type=Path, metavar="FILE",
                   help="timing cache to reuse and update (default timing.cache beside PLAN)")
    p.add_argument("--workspace-mb", type=positive(int), default=1024, metavar="N",
                   help="builder workspace in MiB (default 1024)")
    p.add_argument("--device", type=int, default=0, metavar="I", help="CUDA device (default 0)")
    p.set_defaults(func=cmd_build, build_parser=p)
