"""Defaults read from the data: the frame sizes of a dataset (a sample of its items), the
square input size they suggest, and whether the default dual-view layout fits them or the
files are plain B-mode images (``single_view``). ``hepascope train/eval --data`` use these
when the user does not say, so a folder of 28x28 regions of interest and one of full
screen captures each get a sensible input size without tuning to either."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # light at import: the CLI reads INPUT_SIZE_RANGE when it registers
    from hepascope.core.config import Config
    from hepascope.train.datasets.index import DatasetIndex

PROBE_ITEMS = 48  # items read to learn the sizes (evenly spread over the index)
INPUT_SIZE_RANGE = (64, 128)  # px: the smallest keeps the ResNet stages' maps >= 2x2; the
#                               largest bounds CPU cost and overfitting of small data sets
SIZE_MULTIPLE = 16


@dataclass(frozen=True)
class SizeProbe:
    sizes: tuple[tuple[int, int], ...]  # (H, W) of each probed frame (the B-mode view)
    median_hw: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        hs = [h for h, _ in self.sizes]
        ws = [w for _, w in self.sizes]
        return {"probed": len(self.sizes), "median_hw": list(self.median_hw),
                "min_hw": [min(hs), min(ws)], "max_hw": [max(hs), max(ws)]}


def _first_frame(item: Any) -> np.ndarray:
    from hepascope.train.datasets.io import media_kind, read_frames, read_image

    if media_kind(item.path) == "image":
        return read_image(item.path)
    start = 0 if item.frames is None else item.frames[0]
    return read_frames(item.path, [start])[0]


def probe_sizes(index: DatasetIndex, config: Config | None = None,
                limit: int = PROBE_ITEMS) -> SizeProbe:
    """Sizes of the B-mode view of up to ``limit`` items (evenly spaced through the
    index): the layout's B-mode rectangle where it gives pixels, else the whole frame."""
    picks = np.unique(np.linspace(0, len(index) - 1, min(limit, len(index))).round()
                      .astype(np.int64))
    sizes = []
    for i in picks:
        frame = _first_frame(index.items[int(i)])
        h, w = frame.shape[:2]
        if config is not None and "bmode" in config.layout.view_names:
            rect = config.layout.rect("bmode")
            if not rect.is_full:
                h, w = rect.h, rect.w
        sizes.append((int(h), int(w)))
    med = np.median(np.array(sizes), axis=0)
    return SizeProbe(tuple(sizes), (int(med[0]), int(med[1])))


def input_size(probe: SizeProbe, lo: int = INPUT_SIZE_RANGE[0],
               hi: int = INPUT_SIZE_RANGE[1]) -> int:
    """Square input side: the median frame's geometric-mean side, rounded to a multiple
    of 16 and clamped to [lo, hi] (small ROIs are upsampled to ``lo``)."""
    h, w = probe.median_hw
    side = float(np.sqrt(h * w))
    return int(np.clip(SIZE_MULTIPLE * round(side / SIZE_MULTIPLE), lo, hi))


def stem_stride(side: int) -> int:
    """A ResNet's stem stride for a square input of ``side``: the paper's 4 where the last
    stage (8x below the stem) still gets maps of >= 3x3, else 2 or 1 (a CIFAR-style stem):
    a 64x64 region of interest then ends at 4x4 instead of 2x2."""
    return next((s for s in (4, 2) if side / (8 * s) >= 3), 1)


CLAHE_TILE_PX = 32  # CLAHE tiles at least this many source pixels wide
TARGET_STEPS = 600  # optimizer steps a from-scratch model gets on a small data set
EPOCH_RANGE = (8, 60)


def clahe_tiles(probe: SizeProbe, configured: int) -> int:
    """CLAHE tiles per side for frames of the probed size: the configured count, fewer
    when tiles would be under ``CLAHE_TILE_PX`` source pixels (on a 32x32 region of
    interest, 8x8 tiles of 4 pixels equalise speckle grain by grain)."""
    side = min(probe.median_hw)
    return int(np.clip(side // CLAHE_TILE_PX, 1, configured))


def epochs_for(class_counts: list[int], share: float, batch_size: int, balanced: bool) -> int:
    """Epochs giving about ``TARGET_STEPS`` optimizer steps when ``share`` of the samples
    (class counts as given) train, in ``EPOCH_RANGE``: small data sets get more epochs."""
    per_epoch = (max(class_counts) * len(class_counts) if balanced else sum(class_counts))
    steps = max(1, int(per_epoch * share) // max(1, batch_size))
    return int(np.clip(-(-TARGET_STEPS // steps), *EPOCH_RANGE))


SELECT_AFTER = 0.5  # weights are kept from the schedule's second half (the rate has come down)


def patience_for(epochs: int) -> int:
    """Early-stopping patience: a third of the epochs, at least 3 (a validation set of a
    few dozen patients makes single epochs noisy)."""
    return max(3, epochs // 3)
