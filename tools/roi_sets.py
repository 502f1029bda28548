"""Evaluation sets from a folder of ultrasound images with lesion masks beside them
(BUSI's layout: ``CLASS/NAME.png`` and ``CLASS/NAME_mask*.png``): the full images, and
small regions of interest cropped around each lesion mask (the image centre where an image
has no mask), each with the ``manifest.csv`` (path,label,patient_id) ``hepascope eval
--data`` reads. The data set names no patients, so each image is its own patient id.

A developer's data preparation script for one public data set (DEVELOPERS.md), not a
``hepascope`` subcommand: the product reads any folder of class folders + manifest.

    python tools/roi_sets.py SRC OUT [--sizes 32 64]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import cv2
import numpy as np


def lesion_centre(img_path: Path, shape: tuple[int, int]) -> tuple[int, int]:
    """(row, col) of the centre of the union of the image's masks' bounding boxes."""
    union = np.zeros(shape, bool)
    for mp in sorted(img_path.parent.glob(img_path.stem + "_mask*.png")):
        mask = cv2.imread(str(mp), cv2.IMREAD_GRAYSCALE)
        if mask is not None and mask.shape == shape:
            union |= mask > 127
    if not union.any():
        return shape[0] // 2, shape[1] // 2
    ys, xs = np.nonzero(union)
    return (int(ys.min() + ys.max()) // 2, int(xs.min() + xs.max()) // 2)


def crop(img: np.ndarray, centre: tuple[int, int], size: int) -> np.ndarray:
    """A square of twice ``size`` around ``centre`` (inside the image), resized to ``size``."""
    h, w = img.shape
    side = min(2 * size, h, w)
    y0 = int(np.clip(centre[0] - side // 2, 0, h - side))
    x0 = int(np.clip(centre[1] - side // 2, 0, w - side))
    return cv2.resize(img[y0:y0 + side, x0:x0 + side], (size, size),
                      interpolation=cv2.INTER_AREA)


def write_set(images: list[Path], root: Path, size: int | None) -> int:
    rows = []
    for p in images:
        img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if img is None:
            print(f"skipped {p}: not a readable image", file=sys.stderr)
            continue
        if size is not None:
            img = crop(img, lesion_centre(p, img.shape), size)
        name = "".join(c for c in p.stem.replace(" ", "_") if c not in "()")
        rel = f"{p.parent.name}/{name}.png"
        (root / p.parent.name).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), img)
        rows.append((rel, p.parent.name, name))
    with (root / "manifest.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "patient_id"), *rows])
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path, help="folder of class folders (images + *_mask*.png)")
    ap.add_argument("out", type=Path, help="where full/ and roi<SIZE>/ are written")
    ap.add_argument("--sizes", type=int, nargs="*", default=[32, 64],
                    help="region-of-interest sides in pixels (default 32 64)")
    args = ap.parse_args(argv)
    images = sorted(p for p in args.src.glob("*/*.png") if "_mask" not in p.name)
    if not images:
        print(f"error: no */*.png images under {args.src}", file=sys.stderr)
        return 2
    for name, size in [("full", None), *((f"roi{s}", s) for s in args.sizes)]:
        n = write_set(images, args.out / name, size)
        print(f"{args.out / name}: {n} images, manifest.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
