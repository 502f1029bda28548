"""The one preprocessing function, used by training and streaming alike, so the model sees
in the operating room exactly what it saw in training.

Per view: crop by the layout, grey, mask the probe sector, Gaussian denoise (S0), CLAHE
(S4), mask again (CLAHE lifts the black outside the sector at tile borders), resize,
normalise to float32 (C, H, W)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

from hepascope.core.config import LayoutConfig, PreprocessConfig, view_rect, view_value
from hepascope.core.errors import ConfigError
from hepascope.core.geometry import SectorGeometry


@dataclass(frozen=True, slots=True)
class PreprocessSpec:
    """Everything preprocessing depends on; hashable, so per-spec state (masks, CLAHE) is
    built once. ``size`` is (H, W); ``channels`` 1, or 3 for grey replicated (S2: gray->RGB).
    ``views`` picks which layout views to produce (default: all)."""

    layout: LayoutConfig
    params: PreprocessConfig
    size: tuple[int, int]
    channels: int = 1
    views: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.size) != 2 or min(self.size) < 8:
            raise ConfigError(f"size must be (H, W) >= 8, got {self.size}")
        for name in self.views or ():
            self.layout.rect(name)  # raises ConfigError for an unknown view

    @property
    def view_names(self) -> tuple[str, ...]:
        return self.views if self.views is not None else self.layout.view_names

    def to_dict(self) -> dict[str, object]:
        """JSON-able form, stored in exported models' metadata."""
        p = self.params
        sector = self.layout.sector
        return {
            "views": {n: view_value(r) for n, r in self.layout.views},
            "sector": None if sector is None else {
                "apex_x": sector.apex_x, "apex_y": sector.apex_y, "r_min": sector.r_min,
                "r_max": sector.r_max, "half_angle_deg": sector.half_angle_deg},
            "gaussian_sigma": p.gaussian_sigma, "clahe_clip": p.clahe_clip,
            "clahe_tiles": p.clahe_tiles, "mean": p.mean, "std": p.std,
            "size": list(self.size), "channels": self.channels, "use_views": list(self.view_names),
        }


def spec_from_dict(d: Any) -> PreprocessSpec:
    """Inverse of ``PreprocessSpec.to_dict`` (what exported models carry in metadata)."""
    try:
        views = tuple((str(k), view_rect(v)) for k, v in d["views"].items())
        sector = d.get("sector")
        geom = SectorGeometry(**{k: float(v) for k, v in sector.items()}) if sector else None
        size = (int(d["size"][0]), int(d["size"][1]))
        params = PreprocessConfig(
            gaussian_sigma=float(d["gaussian_sigma"]), clahe_clip=float(d["clahe_clip"]),
            clahe_tiles=int(d["clahe_tiles"]), size=size, mean=float(d["mean"]),
            std=float(d["std"]))
        return PreprocessSpec(LayoutConfig(views, geom), params, size, int(d["channels"]),
                              tuple(str(v) for v in d["use_views"]))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise ConfigError(f"invalid preprocessing spec: {e!r}") from e


@lru_cache(maxsize=32)
def _sector_mask(spec: PreprocessSpec, name: str) -> np.ndarray | None:
    sector = spec.layout.sector
    if sector is None:
        return None
    rect = spec.layout.rect(name)
    return sector.mask(rect.h, rect.w)


_local = threading.local()


def _clahe(clip: float, tiles: int) -> cv2.CLAHE:
    """This thread's CLAHE for (clip, tiles): a cv2.CLAHE keeps its working buffers in the
    object, so two threads applying one at once corrupt each other's output (the main and
    the clip model preprocess in their own threads)."""
    cache: dict[tuple[float, int], cv2.CLAHE] = _local.__dict__.setdefault("cache", {})
    if (clip, tiles) not in cache:
        cache[(clip, tiles)] = cv2.createCLAHE(clipLimit=clip, tileGridSize=(tiles, tiles))
    return cache[(clip, tiles)]


def preprocess_view(image: np.ndarray, spec: PreprocessSpec, name: str) -> np.ndarray:
    """One view of a captured BGR (or grey) frame as float32 (C, H, W)."""
    p = spec.params
    view = spec.layout.rect(name).crop(image)
    grey = cv2.cvtColor(view, cv2.COLOR_BGR2GRAY) if view.ndim == 3 else view
    mask = _sector_mask(spec, name)
    if mask is not None:
        grey = cv2.bitwise_and(grey, mask)
    if p.gaussian_sigma > 0:
        grey = cv2.GaussianBlur(grey, (0, 0), p.gaussian_sigma)
    if p.clahe_clip > 0:
        grey = _clahe(p.clahe_clip, p.clahe_tiles).apply(grey)
        if mask is not None:
            grey = cv2.bitwise_and(grey, mask)
    h, w = spec.size
    small = cv2.resize(grey, (w, h), interpolation=cv2.INTER_AREA)
    out = (small.astype(np.float32) * (1.0 / 255.0) - p.mean) * (1.0 / p.std)
    if spec.channels == 3:
        return np.broadcast_to(out, (3, h, w)).copy()
    return out[None]


def preprocess(image: np.ndarray, spec: PreprocessSpec) -> dict[str, np.ndarray]:
    """All requested views of one frame: ``{view name: float32 (C, H, W)}``."""
    if image.ndim not in (2, 3) or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 HxW or HxWx3 frame, got {image.dtype} {image.shape}")
    return {name: preprocess_view(image, spec, name) for name in spec.view_names}
