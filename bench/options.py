"""The bench's command-line options, shared by ``hepascope bench`` (``bench/cli.py``) and
``python -m hepascope.bench.run``."""

from __future__ import annotations

import argparse
from pathlib import Path

from hepascope.core.argtypes import positive


def _ints(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from e
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"need integers >= 1, got {text!r}")
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The bench's options (shared by ``hepascope bench`` and ``python -m
    hepascope.bench.run``)."""
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where the models run (default cpu); cuda: torch fp16 + CUDA graph "
                   "and TensorRT where importable, ONNX Runtime on the host CPU beside them")
    p.add_argument("--models", help="comma-separated registered model names (default: the "
                   "live ones: bimodal_resnet18_lite, resnet18, c3d)")
    p.add_argument("--model", type=Path, metavar="DIR", help="an export (e.g. the demo's) "
                   "to time instead of a random-weights bimodal_resnet18_lite; the pipeline "
                   "sections run it too")
    p.add_argument("--streams", type=_ints, default=(1, 2, 4), metavar="1,2,4",
                   help="stream counts for the scaling section (default 1,2,4)")
    p.add_argument("--seconds", type=positive(float), metavar="N",
                   help="seconds per pipeline section (default 30; --quick 8)")
    p.add_argument("--quick", action="store_true",
                   help="small budgets: every section, in under 5 minutes on 2 cores")
    p.add_argument("--no-int8", action="store_true", help="skip the ONNX Runtime INT8 variant")
    p.add_argument("--peer", choices=["fast"], help="also run a peer framework beside the "
                   "live pipeline on the same video and model, alternating (fast: FAST via "
                   "pyfast, needs an OpenCL platform); the report gives the ratios")
    p.add_argument("--video", type=Path, metavar="FILE", help="the peer section's video "
                   "(default: a 640x480 30 fps phantom clip made in the run)")
    p.add_argument("--pairs", type=positive(int), default=3, metavar="N",
                   help="ABAB pairs per peer mode, unpaced and paced (default 3)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="results directory (default bench/results/<machine>/<date>)")
    # budgets for tests and quick looks
    p.add_argument("--runs", type=int, help=argparse.SUPPRESS)
    p.add_argument("--batches", type=_ints, help=argparse.SUPPRESS)
    p.add_argument("--peak-sizes", type=_ints, help=argparse.SUPPRESS)
