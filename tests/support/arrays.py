"""Small learnable ``ArraySet``s made in code: class c draws a disk of brightness c on
noise, in the B-mode frame and in every CEUS frame (growing over the window for class 1)."""

from __future__ import annotations

import numpy as np

from hepascope.train.datasets.arrays import ArraySet

SPEC = {"mean": 0.5, "std": 0.25}


def _disk(size: int, value: float, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    c = size / 2 + rng.uniform(-2, 2, 2)
    img = rng.uniform(0.2, 0.4, (size, size))
    img[(yy - c[0]) ** 2 + (xx - c[1]) ** 2 < (size / 4) ** 2] = value
    return (img - SPEC["mean"]) / SPEC["std"]


def make_arrays(n_patients: int = 8, per_patient: int = 3, classes: tuple[str, ...] = ("a", "b"),
                bmode: int = 32, ceus: int = 16, frames: int = 4, seed: int = 0) -> ArraySet:
    rng = np.random.default_rng(seed)
    labels, groups, bm, ce = [], [], [], []
    for p in range(n_patients):
        y = p % len(classes)
        for _ in range(per_patient):
            v = 0.5 + 0.5 * y / max(1, len(classes) - 1)
            labels.append(y)
            groups.append(f"pt{p:03d}")
            bm.append(_disk(bmode, v, rng)[None])
            ce.append(np.stack([_disk(ceus, v * (0.5 + 0.5 * t / frames), rng)[None]
                                for t in range(frames)]))
    spec = {"views": {"bmode": [0, 0, 64, 64]}, **SPEC}
    return ArraySet(classes, np.array(labels, np.int64), np.array(groups, dtype=str),
                    np.array(bm, np.float16), np.array(ce, np.float16),
                    preprocess={"bmode": spec, "ceus": spec},
                    window={"frames": frames, "interval_s": 0.5}, source={"synthetic": seed})
