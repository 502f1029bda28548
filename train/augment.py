"""Augmentation that respects ultrasound: what a probe and a scanner vary between scans
(position, mirror, a few degrees of rotation, overall gain, depth gain (TGC), offset) and
nothing that changes speckle statistics (no blur, noise, elastic warps or colour jitter).

Works on preprocessed, normalised float arrays; every view of a sample (B-mode frame and
CEUS window) gets the same geometric change, so the two stay registered."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Augment:
    """Ranges: shift as a fraction of the view size, rotation in degrees, gain and TGC as
    relative changes (TGC: linear over depth, top to bottom), offset in normalised units."""

    max_shift: float = 0.04
    flip: bool = True
    rotate_deg: float = 5.0
    gain: float = 0.1
    tgc: float = 0.1
    offset: float = 0.1

    def __post_init__(self) -> None:
        if not (0 <= self.max_shift < 0.5 and 0 <= self.rotate_deg <= 45):
            raise ValueError("need 0 <= max_shift < 0.5 and 0 <= rotate_deg <= 45")
        if min(self.gain, self.tgc, self.offset) < 0 or max(self.gain, self.tgc) >= 1:
            raise ValueError("gain, tgc must be in [0, 1) and offset >= 0")

    def draw(self, rng: np.random.Generator) -> dict[str, float]:
        """One sample's geometric parameters (shared by its views)."""
        fy, fx = rng.uniform(-self.max_shift, self.max_shift, 2)
        return {"flip": float(self.flip and rng.random() < 0.5), "fy": float(fy),
                "fx": float(fx), "angle": float(rng.uniform(-self.rotate_deg, self.rotate_deg))}

    def apply(self, x: np.ndarray, geom: dict[str, float], rng: np.random.Generator,
              black: float, white: float) -> np.ndarray:
        """``x`` (..., H, W) float: warp every plane alike, then per-view intensity jitter
        inside the image (pixels above ``black``, the normalised value of 0)."""
        h, w = x.shape[-2:]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), geom["angle"], 1.0)
        m[0, 2] += geom["fx"] * w
        m[1, 2] += geom["fy"] * h
        planes = np.ascontiguousarray(x, np.float32).reshape(-1, h, w)
        out = np.empty_like(planes)
        for i, p in enumerate(planes):
            out[i] = cv2.warpAffine(p, m, (w, h), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=float(black))
        if geom["flip"]:
            out = out[..., ::-1]
        gain = 1.0 + rng.uniform(-self.gain, self.gain)
        ramp = 1.0 + rng.uniform(-self.tgc, self.tgc) * (np.linspace(-0.5, 0.5, h)[:, None])
        off = rng.uniform(-self.offset, self.offset)
        inside = out > black + 1e-3
        out = np.where(inside, (out - black) * (gain * ramp) + black + off, out)
        return np.clip(out, black, white).reshape(x.shape).astype(np.float32)
