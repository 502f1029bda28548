"""Defaults read from the data (train/datasets/probe.py): input size, CLAHE tiles, epochs
and patience. ``hepascope eval --data`` using them end to end: tests/test_eval_outputs.py."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from hepascope.train.datasets.index import index_from
from hepascope.train.datasets.io import write_image
from hepascope.train.datasets.probe import (
    SizeProbe,
    clahe_tiles,
    epochs_for,
    input_size,
    patience_for,
    probe_sizes,
    stem_stride,
)


def probe(h: int, w: int) -> SizeProbe:
    return SizeProbe(((h, w),), (h, w))


def test_input_size_follows_the_median_frame_within_bounds() -> None:
    assert input_size(probe(28, 28)) == 64  # tiny ROIs upsampled to the smallest size
    assert input_size(probe(100, 100)) == 96
    assert input_size(probe(256, 256)) == 128
    assert input_size(probe(600, 800)) == 128  # full screen captures: the largest


def test_stem_stride_keeps_the_last_stage_maps_at_least_3x3() -> None:
    assert [stem_stride(s) for s in (128, 112, 96)] == [4, 4, 4]  # the paper's stem
    assert [stem_stride(s) for s in (80, 64, 48)] == [2, 2, 2]  # a region of interest
    assert stem_stride(32) == 1
    for side in (32, 48, 64, 96, 128, 224):
        assert side / (8 * stem_stride(side)) >= 3


def test_eval_takes_the_stem_from_the_data_unless_told() -> None:
    import argparse

    from hepascope.train.jobs import DEFAULT_EVAL_MODEL, _stem_default

    def args(model_arg: list[str]) -> argparse.Namespace:
        return argparse.Namespace(model_arg=model_arg, data_defaults={"image_size": 64})

    a = args(["width=32"])
    _stem_default(a, [DEFAULT_EVAL_MODEL])
    assert a.model_arg == ["width=32", "stem_stride=2"] and a.data_defaults["stem_stride"] == 2
    told = args(["stem_stride=4"])
    _stem_default(told, [DEFAULT_EVAL_MODEL])
    assert told.model_arg == ["stem_stride=4"]  # what the user said wins
    other = args([])
    _stem_default(other, ["c3d"])
    assert other.model_arg == []  # only the default ResNet has a stem to choose


def test_clahe_tiles_are_never_smaller_than_32_source_pixels() -> None:
    assert clahe_tiles(probe(28, 28), 8) == 1
    assert clahe_tiles(probe(64, 90), 8) == 2
    assert clahe_tiles(probe(480, 640), 8) == 8


def test_epochs_give_small_data_sets_more_passes() -> None:
    # 437/210/133 images (BUSI's classes), 60% training, balanced batches of 32
    assert epochs_for([437, 210, 133], 0.6, 32, balanced=True) == 25
    assert epochs_for([20, 20], 0.6, 32, balanced=True) == 60  # capped
    assert epochs_for([5000, 5000], 0.6, 32, balanced=True) == 8  # at least 8
    assert patience_for(25) == 8 and patience_for(8) == 3


def roi_folder(root: Path, n_per_class: int = 4) -> Path:
    """28x28 grey ROIs of two textures, one per patient, manifest.csv with patient ids."""
    import cv2

    rng = np.random.default_rng(0)
    rows = []
    for c, blur in (("fine", 0.0), ("coarse", 1.5)):
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            x = rng.normal(0, 1, (28, 28)).astype(np.float32)
            if blur:
                x = cv2.GaussianBlur(x, (0, 0), blur)
            img = np.clip(120 + 40 * (x - x.mean()) / x.std(), 0, 255).astype(np.uint8)
            write_image(root / c / f"{i}.png", img)
            rows.append((f"{c}/{i}.png", c, f"{c}-{i}"))
    with (root / "manifest.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "patient_id"), *rows])
    return root


def test_probe_reads_the_frame_sizes(tmp_path: Path) -> None:
    p = probe_sizes(index_from(roi_folder(tmp_path / "rois")))
    assert p.median_hw == (28, 28) and len(p.sizes) == 8
