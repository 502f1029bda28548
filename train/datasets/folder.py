"""A hospital's own data as an ``ArraySet``: each image or clip of a ``DatasetIndex`` read,
cut into views by the config's layout and run through ``preprocess_view``, the function the
live pipeline runs, so the model trains on what it will see in the operating room.

Images give B-mode samples only. Clips give ``windows_per_clip`` windows of T frames each
(``interval`` frames apart, or spread uniformly over the clip): the B-mode view of each
window's newest frame and, for clip/bimodal models, the CEUS view of all T frames. A clip
shorter than a window repeats its last frame (``pad_short=True``) or is refused."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from hepascope.core.config import Config
from hepascope.core.errors import ConfigError, DataError
from hepascope.core.preprocess import PreprocessSpec, preprocess_view
from hepascope.train.datasets.arrays import KINDS, ArraySet
from hepascope.train.datasets.index import DatasetIndex, Item
from hepascope.train.datasets.io import clip_length, media_kind, read_frames, read_image
from hepascope.train.datasets.phantom import view_spec
from hepascope.train.datasets.pool import Progress, map_pool


@dataclass(frozen=True)
class FolderWindow:
    """T frames per window, ``interval`` frames apart, or ``"uniform"``: spread evenly over
    the clip (or over its 1/m-th part when a clip gives m windows)."""

    frames: int
    interval: int | Literal["uniform"] = "uniform"

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ConfigError(f"window frames must be >= 1, got {self.frames}")
        if self.interval != "uniform" and (not isinstance(self.interval, int)
                                           or self.interval < 1):
            raise ConfigError(f"window interval must be >= 1 frames or 'uniform', "
                              f"got {self.interval!r}")

    def to_dict(self) -> dict[str, object]:
        return {"frames": self.frames, "interval_frames": self.interval, "interval_s": None}


def window_indices(n: int, win: FolderWindow, count: int, pad_short: bool, where: Path
                   ) -> list[np.ndarray]:
    """Frame indices (oldest first) of up to ``count`` windows of a clip of ``n`` frames.
    Interval windows are spread from the clip's start to its end; a clip too short for one
    window gives a single one, its last frame repeated (or a DataError)."""
    t = win.frames
    if win.interval == "uniform":
        bounds = np.linspace(0, n, min(count, n) + 1).round().astype(np.int64)
        out = []
        for a, b in itertools.pairwise(bounds):
            length = int(b - a)
            if length < t and not pad_short:
                raise DataError(f"{where}: {length} frames per window, fewer than {t}")
            rel = (np.linspace(0, length - 1, t).round().astype(np.int64) if length >= t
                   else np.minimum(np.arange(t), length - 1))
            out.append(a + rel)
        return out
    span = (t - 1) * win.interval + 1
    if n < span:
        if not pad_short:
            raise DataError(f"{where}: {n} frames, a window needs {span}")
        return [np.minimum(np.arange(t) * win.interval, n - 1)]
    ends = np.unique(np.linspace(span - 1, n - 1, count).round().astype(np.int64))
    return [e - (t - 1 - np.arange(t)) * win.interval for e in ends]


@dataclass(frozen=True)
class _Job:
    item: Item
    window: FolderWindow
    count: int
    pad_short: bool
    bmode: PreprocessSpec | None
    ceus: PreprocessSpec | None


def _views(frame: np.ndarray, spec: PreprocessSpec, view: str, where: Path) -> np.ndarray:
    try:
        return preprocess_view(frame, spec, view)
    except ConfigError as e:  # the layout does not fit this file's frames
        raise DataError(f"{where}: {e}") from e


def _clip_frames(item: Item, idx: np.ndarray) -> dict[int, np.ndarray]:
    """The frames ``idx`` (relative to the item's range) of a clip item, each decoded once
    and only those kept."""
    offset = 0 if item.frames is None else item.frames[0]
    need = sorted({int(i) for i in idx})
    return dict(zip(need, read_frames(item.path, [offset + i for i in need]), strict=True))


def _load_item(job: _Job) -> tuple[np.ndarray | None, np.ndarray | None, list[int]]:
    """Worker: (bmode (S, C, H, W), ceus (S, T, C, h, w)) float16 and the newest frame of
    each of the item's samples (-1 for an image)."""
    it, sb, sc = job.item, job.bmode, job.ceus
    if media_kind(it.path) == "image":
        if it.frames is not None:
            raise DataError(f"{it.path}: a frame range on a still image")
        if sc is not None:
            raise DataError(f"{it.path}: a still image; clip and bimodal models need clips")
        assert sb is not None
        return _views(read_image(it.path), sb, "bmode", it.path)[None].astype(np.float16), \
            None, [-1]
    n = clip_length(it.path) if it.frames is None else it.frames[1] - it.frames[0]
    wins = window_indices(n, job.window, job.count, job.pad_short, it.path)
    frames = _clip_frames(it, np.concatenate(wins))
    bm = None if sb is None else np.stack(
        [_views(frames[int(w[-1])], sb, "bmode", it.path) for w in wins]).astype(np.float16)
    ce = None if sc is None else np.stack(
        [np.stack([_views(frames[int(i)], sc, "ceus", it.path) for i in w]) for w in wins]
    ).astype(np.float16)
    return bm, ce, [int(w[-1]) for w in wins]


def folder_arrays(index: DatasetIndex, *, config: Config, kinds: set[str],
                  bmode_size: tuple[int, int] = (112, 112), ceus_size: tuple[int, int] = (64, 64),
                  window: FolderWindow | None = None, channels: int = 1,
                  windows_per_clip: int = 1, pad_short: bool = True, workers: int = 1,
                  progress: Progress | None = None) -> ArraySet:
    """Samples of every item of ``index`` for models of ``kinds``; ``config.layout`` says
    where the views are (B-mode-only data: ``load_packaged_config("single_view")``).
    ``window`` defaults to one frame (image models) or 16 frames spread uniformly."""
    kinds = set(kinds)
    if not kinds or not kinds <= set(KINDS):
        raise ConfigError(f"kinds must be a non-empty subset of {KINDS}, got {sorted(kinds)}")
    if windows_per_clip < 1:
        raise ConfigError(f"windows_per_clip must be >= 1, got {windows_per_clip}")
    need_b, need_c = bool(kinds & {"image", "bimodal"}), bool(kinds & {"clip", "bimodal"})
    views = config.layout.view_names
    for view, needed in (("bmode", need_b), ("ceus", need_c)):
        if needed and view not in views:
            raise DataError(f"{', '.join(sorted(kinds))} models need a {view!r} view; the "
                            f"layout has {', '.join(views)} (B-mode-only data cannot train "
                            "clip or bimodal models)")
    win = window or FolderWindow(16 if need_c else 1)
    sb = view_spec(config, "bmode", bmode_size, channels) if need_b else None
    sc = view_spec(config, "ceus", ceus_size, channels) if need_c else None
    jobs = [_Job(it, win, windows_per_clip, pad_short, sb, sc) for it in index.items]
    results = map_pool(_load_item, jobs, workers, progress)
    counts = [len(r[2]) for r in results]
    labels = np.repeat(index.labels, counts)
    return ArraySet(
        index.classes, labels, np.repeat(index.groups, counts),
        bmode=np.concatenate([r[0] for r in results if r[0] is not None]) if need_b else None,
        ceus=np.concatenate([r[1] for r in results if r[1] is not None]) if need_c else None,
        preprocess={v: s.to_dict() for v, s in (("bmode", sb), ("ceus", sc)) if s is not None},
        window=win.to_dict() if need_c else None,
        source={"kind": "folder", "root": str(index.root), "n_items": len(index),
                "n_samples": int(sum(counts)), "kinds": sorted(kinds),
                "windows_per_clip": windows_per_clip, "pad_short": pad_short,
                "paths": [str(it.path) for it, c in zip(index.items, counts, strict=True)
                          for _ in range(c)],
                "newest_frame": [f for r in results for f in r[2]]})
