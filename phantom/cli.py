"""``hepascope phantom ...``: write demo sessions and image/clip datasets from the phantom
(``phantom dataset``, a training task's data, is registered by ``hepascope.train.cli``)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from hepascope.core.argtypes import above_zero
from hepascope.core.errors import guard_main


def _session(args: argparse.Namespace) -> int:
    from hepascope.phantom.session import print_progress, sidecar_path, write_session

    t0 = time.perf_counter()
    path = write_session(args.out, seed=args.seed, seconds=args.seconds, fps=args.fps,
                         segment_s=args.segment_seconds, progress=print_progress("session"))
    n = round(args.seconds * args.fps)
    print(f"wrote {path} ({n} frames, {args.fps:g} fps) and {sidecar_path(path)} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


def _images(args: argparse.Namespace) -> int:
    from hepascope.phantom.datasets import write_image_dataset

    t0 = time.perf_counter()
    manifest = write_image_dataset(args.out, n_patients=args.patients,
                                   frames_per_patient=args.frames_per_patient, seed=args.seed)
    n = args.patients * args.frames_per_patient
    print(f"wrote {n} images of {args.patients} patients, manifest {manifest} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


def _clips(args: argparse.Namespace) -> int:
    from hepascope.phantom.datasets import write_clip_dataset

    t0 = time.perf_counter()
    manifest = write_clip_dataset(args.out, n_patients=args.patients,
                                  clips_per_patient=args.clips_per_patient, frames=args.frames,
                                  interval=args.interval, seed=args.seed)
    n = args.patients * args.clips_per_patient
    print(f"wrote {n} clips of {args.frames} frames, manifest {manifest} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Register ``phantom`` (with ``session``, ``images``, ``clips``) on ``sub``; returns
    its subcommands, where the CLI root adds train's ``dataset``."""
    p = sub.add_parser(
        "phantom", help="synthetic liver ultrasound (B-mode + CEUS): demo videos and datasets",
        description="Generate synthetic dual-view liver ultrasound screen captures with "
                    "ground truth: a demo session video, or labelled image/clip datasets.")
    ps = p.add_subparsers(dest="phantom_cmd", required=True,
                          metavar="{session,images,clips,dataset}")  # dataset: train's
    pos_int, pos_float = above_zero(int), above_zero(float)

    s = ps.add_parser("session", help="write a dual-view H.264 MP4 and its .truth.json sidecar",
                      description="Write a session video cycling through all lesion classes "
                                  "(one patient per segment) plus per-frame ground truth.")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--seconds", type=pos_float, default=60.0, help="length (default 60)")
    s.add_argument("--fps", type=pos_float, default=30.0, help="frame rate (default 30)")
    s.add_argument("--segment-seconds", type=pos_float, default=10.0,
                   help="seconds per patient segment (default 10)")
    s.add_argument("--out", required=True, help="output FILE.mp4 (sidecar FILE.truth.json)")
    s.set_defaults(func=_session)

    im = ps.add_parser("images", help="write a labelled PNG image dataset with manifest.csv",
                       description="Write full 768x384 dual-view frames in class folders.")
    im.add_argument("--out", required=True, help="output directory")
    im.add_argument("--patients", type=pos_int, required=True, help="number of patients")
    im.add_argument("--frames-per-patient", type=pos_int, default=8,
                    help="frames per patient (default 8)")
    im.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    im.set_defaults(func=_images)

    c = ps.add_parser("clips", help="write a labelled MP4 clip dataset with manifest.csv",
                      description="Write short dual-view clips (T frames, every K-th source "
                                  "frame) in class folders.")
    c.add_argument("--out", required=True, help="output directory")
    c.add_argument("--patients", type=pos_int, required=True, help="number of patients")
    c.add_argument("--clips-per-patient", type=pos_int, default=2,
                   help="clips per patient (default 2)")
    c.add_argument("--frames", type=pos_int, default=16, help="frames per clip T (default 16)")
    c.add_argument("--interval", type=pos_int, default=15,
                   help="source frames between clip frames K (default 15)")
    c.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    c.set_defaults(func=_clips)
    return ps


@guard_main
def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry: ``python -m hepascope.phantom.cli session --out x.mp4``."""
    parser = argparse.ArgumentParser(prog="hepascope")
    add_subcommands(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(["phantom", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
