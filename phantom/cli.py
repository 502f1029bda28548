"""``hepascope phantom ...``: write demo sessions and training datasets from the phantom."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from hepascope.core.errors import guard_main


def _session(args: argparse.Namespace) -> int:
    from hepascope.stream.phantom.session import print_progress, sidecar_path, write_session

    t0 = time.perf_counter()
    path = write_session(args.out, seed=args.seed, seconds=args.seconds, fps=args.fps,
                         segment_s=args.segment_seconds, progress=print_progress("session"))
    n = round(args.seconds * args.fps)
    print(f"wrote {path} ({n} frames, {args.fps:g} fps) and {sidecar_path(path)} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


def _images(args: argparse.Namespace) -> int:
    from hepascope.stream.phantom.datasets import write_image_dataset

    t0 = time.perf_counter()
    manifest = write_image_dataset(args.out, n_patients=args.patients,
                                   frames_per_patient=args.frames_per_patient, seed=args.seed)
    n = args.patients * args.frames_per_patient
    print(f"wrote {n} images of {args.patients} patients, manifest {manifest} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


def _clips(args: argparse.Namespace) -> int:
    from hepascope.stream.phantom.datasets import write_clip_dataset

    t0 = time.perf_counter()
    manifest = write_clip_dataset(args.out, n_patients=args.patients,
                                  clips_per_patient=args.clips_per_patient, frames=args.frames,
                                  interval=args.interval, seed=args.seed)
    n = args.patients * args.clips_per_patient
    print(f"wrote {n} clips of {args.frames} frames, manifest {manifest} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


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


def _positive(kind: type) -> object:
    def conv(s: str) -> object:
        v = kind(s)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {s}")
        return v

    conv.__name__ = kind.__name__
    return conv


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    """Register ``phantom`` (with ``session``, ``images``, ``clips``) on ``sub``."""
    p = sub.add_parser(
        "phantom", help="synthetic liver ultrasound (B-mode + CEUS): demo videos and datasets",
        description="Generate synthetic dual-view liver ultrasound screen captures with "
                    "ground truth: a demo session video, or labelled image/clip datasets.")
    ps = p.add_subparsers(dest="phantom_cmd", required=True,
                          metavar="{session,images,clips,dataset}")
    pos_int, pos_float = _positive(int), _positive(float)

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
    _add_dataset(ps)


def _add_dataset(ps: argparse._SubParsersAction) -> None:
    from hepascope.train.tasks import list_tasks  # torch-free: names and recipes only

    pos_int, pos_float = _positive(int), _positive(float)
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


@guard_main
def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry: ``python -m hepascope.stream.phantom.cli session --out x.mp4``."""
    parser = argparse.ArgumentParser(prog="hepascope")
    add_subcommand(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(["phantom", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
