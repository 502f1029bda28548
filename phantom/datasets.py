"""Labelled training data from the phantom: full dual-view frames (PNG) and short clips
(MP4), each with a ``manifest.csv``, plus ``iter_samples`` for in-memory generation.

Patients are balanced over ``classes`` (patient ``p`` gets ``classes[p % len(classes)]``)
and every frame of a patient comes from one case at a different time: breathing phase,
probe drift, speckle realisation and CEUS time (uniform over 0-180 s, so all phases occur)
differ. Split train/validation by ``patient_id``, never by frame. No torch here.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hepascope.core.geometry import PHANTOM_SCREEN_H, PHANTOM_SCREEN_W
from hepascope.core.video import Mp4Writer
from hepascope.phantom.patient import LESION_CLASSES, PhantomCase, make_case
from hepascope.phantom.render import Phantom

CEUS_RANGE_S = (0.0, 180.0)
MOTION_RANGE_S = 60.0  # frame times are drawn from this much of a patient's scan
IMAGE_COLUMNS = ("path", "label", "patient_id", "fatty_grade", "frame_index", "ceus_t_s")
CLIP_COLUMNS = ("path", "label", "patient_id", "fatty_grade", "frames", "interval", "ceus_t0_s")


def _check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    cls = tuple(classes)
    bad = [c for c in cls if c not in LESION_CLASSES]
    if not cls or bad:
        raise ValueError(f"classes must be a non-empty subset of {LESION_CLASSES}, got {cls}")
    return cls


def patient_case(seed: int, p: int, classes: Sequence[str] = LESION_CLASSES,
                 prefix: str = "p") -> PhantomCase:
    """Case of dataset patient ``p`` (deterministic in seed and p)."""
    cls = _check_classes(classes)
    ss = np.random.SeedSequence([seed & 0xFFFFFFFF, 0xDA7A, p])
    return make_case(int(ss.generate_state(1)[0]), lesion=cls[p % len(cls)],
                     patient_id=f"{prefix}{seed}-{p:05d}")


def _rng(seed: int, p: int, kind: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, 0x7133, kind, p]))


def iter_samples(seed: int, *, n_patients: int | None = None, frames_per_patient: int = 8,
                 classes: Sequence[str] = LESION_CLASSES, fps: float = 30.0,
                 ceus_range_s: tuple[float, float] = CEUS_RANGE_S
                 ) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
    """(BGR frame 384x768, truth) pairs, ``frames_per_patient`` per patient, patients in
    order (endless when ``n_patients`` is None). Truth as in the session sidecar."""
    p = 0
    while n_patients is None or p < n_patients:
        case = patient_case(seed, p, classes)
        ph = Phantom(case, fps=fps)
        rng = _rng(seed, p, 0)
        idx = np.sort(rng.choice(int(MOTION_RANGE_S * fps), frames_per_patient, replace=False))
        ts = rng.uniform(*ceus_range_s, frames_per_patient)
        for i, t in zip(idx, ts, strict=True):
            yield ph.render(int(i), ceus_t_s=float(t))
        p += 1


def _write_manifest(path: Path, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        w.writerows(rows)


def write_image_dataset(out_dir: str | Path, *, n_patients: int, frames_per_patient: int,
                        seed: int, classes: Sequence[str] = LESION_CLASSES) -> Path:
    """PNG frames in ``out_dir/<label>/`` and ``out_dir/manifest.csv`` (returned)."""
    out = Path(out_dir)
    cls = _check_classes(classes)
    for c in cls:
        (out / c).mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for img, truth in iter_samples(seed, n_patients=n_patients,
                                   frames_per_patient=frames_per_patient, classes=cls):
        pid = truth["patient_id"]
        k = counts[pid] = counts.get(pid, -1) + 1
        rel = f"{truth['label']}/{pid}_{k:03d}.png"
        if not cv2.imwrite(str(out / rel), img):
            raise OSError(f"could not write {out / rel}")
        rows.append({"path": rel, "label": truth["label"], "patient_id": pid,
                     "fatty_grade": truth["fatty_grade"], "frame_index": truth["index"],
                     "ceus_t_s": truth["ceus_t_s"]})
    manifest = out / "manifest.csv"
    _write_manifest(manifest, IMAGE_COLUMNS, rows)
    return manifest


def iter_clips(seed: int, *, n_patients: int, clips_per_patient: int, frames: int = 16,
               interval: int = 15, classes: Sequence[str] = LESION_CLASSES, fps: float = 30.0,
               ceus_speed: float = 3.5) -> Iterator[tuple[list[np.ndarray], dict[str, Any]]]:
    """(list of ``frames`` BGR frames sampled every ``interval`` source frames, info)."""
    if frames <= 0 or interval <= 0:
        raise ValueError("frames and interval must be > 0")
    for p in range(n_patients):
        case = patient_case(seed, p, classes)
        ph = Phantom(case, fps=fps)
        rng = _rng(seed, p, 1)
        for c in range(clips_per_patient):
            i0 = int(rng.integers(0, int(MOTION_RANGE_S * fps)))
            t0 = float(rng.uniform(0.0, CEUS_RANGE_S[1] - 30.0))
            imgs = [ph.render(i0 + j * interval, ceus_t_s=t0 + ceus_speed * j * interval / fps)[0]
                    for j in range(frames)]
            yield imgs, {"label": case.label, "patient_id": case.patient_id, "clip": c,
                         "fatty_grade": case.fatty_grade, "start_index": i0, "ceus_t0_s": t0}


def write_clip_dataset(out_dir: str | Path, *, n_patients: int, clips_per_patient: int,
                       frames: int = 16, interval: int = 15, seed: int,
                       classes: Sequence[str] = LESION_CLASSES, fps: float = 30.0) -> Path:
    """Clips as MP4 (H.264, ``fps / interval`` frames per second) in ``out_dir/<label>/``
    and ``out_dir/manifest.csv`` (returned)."""
    out = Path(out_dir)
    cls = _check_classes(classes)
    for c in cls:
        (out / c).mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for imgs, info in iter_clips(seed, n_patients=n_patients, clips_per_patient=clips_per_patient,
                                 frames=frames, interval=interval, classes=cls, fps=fps):
        rel = f"{info['label']}/{info['patient_id']}_c{info['clip']:03d}.mp4"
        with Mp4Writer(out / rel, fps / interval, PHANTOM_SCREEN_W, PHANTOM_SCREEN_H) as w:
            for img in imgs:
                w.write(img)
        rows.append({"path": rel, "label": info["label"], "patient_id": info["patient_id"],
                     "fatty_grade": info["fatty_grade"], "frames": frames, "interval": interval,
                     "ceus_t0_s": round(info["ceus_t0_s"], 3)})
    manifest = out / "manifest.csv"
    _write_manifest(manifest, CLIP_COLUMNS, rows)
    return manifest
