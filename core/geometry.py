"""Screen layout of a scanner capture: where each view sits and where the probe's sector
is. Shared by the phantom (which draws it) and preprocessing (which masks by it), so the
two cannot drift apart."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hepascope.core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Rect:
    """A view's rectangle inside the captured frame, in pixels. ``Rect.full()`` (all zeros)
    is the whole frame, any size: real images and exports come cropped to one view."""

    x: int
    y: int
    w: int
    h: int

    def __post_init__(self) -> None:
        if self.is_full:
            return
        if self.x < 0 or self.y < 0 or self.w <= 0 or self.h <= 0:
            raise ValueError(f"invalid rect {self}")

    @classmethod
    def full(cls) -> Rect:
        """The whole captured frame (``full`` in YAML)."""
        return cls(0, 0, 0, 0)

    @property
    def is_full(self) -> bool:
        return self.x == 0 and self.y == 0 and self.w == 0 and self.h == 0

    def crop(self, image: np.ndarray) -> np.ndarray:
        if self.is_full:
            return image
        if self.y + self.h > image.shape[0] or self.x + self.w > image.shape[1]:
            raise ConfigError(
                f"view [{self.x}, {self.y}, {self.w}, {self.h}] does not fit in a "
                f"{image.shape[1]}x{image.shape[0]} frame: set layout.views in --config"
            )
        return image[self.y : self.y + self.h, self.x : self.x + self.w]


@dataclass(frozen=True, slots=True)
class SectorGeometry:
    """Convex-probe sector in view coordinates: a virtual apex (may lie above the view),
    inner radius (probe face), outer radius (maximum depth) and half opening angle."""

    apex_x: float
    apex_y: float
    r_min: float
    r_max: float
    half_angle_deg: float

    def __post_init__(self) -> None:
        if not (0 <= self.r_min < self.r_max):
            raise ValueError(f"need 0 <= r_min < r_max, got {self.r_min}, {self.r_max}")
        if not (0 < self.half_angle_deg < 90):
            raise ValueError(f"half_angle_deg must be in (0, 90), got {self.half_angle_deg}")

    def mask(self, h: int, w: int) -> np.ndarray:
        """uint8 mask (255 inside the sector, 0 outside) for an h x w view."""
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        dx, dy = xx - self.apex_x, yy - self.apex_y
        r = np.hypot(dx, dy)
        theta = np.degrees(np.arctan2(dx, dy))  # 0 along the probe axis (straight down)
        inside = (r >= self.r_min) & (r <= self.r_max) & (np.abs(theta) <= self.half_angle_deg)
        return np.where(inside, 255, 0).astype(np.uint8)

    def polar_to_xy(self, r: np.ndarray, theta_rad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """View coordinates of polar samples (theta 0 = probe axis, positive to the right)."""
        return self.apex_x + r * np.sin(theta_rad), self.apex_y + r * np.cos(theta_rad)

    @property
    def half_angle_rad(self) -> float:
        return math.radians(self.half_angle_deg)


# The phantom's screen: 768x384 BGR, B-mode view on the left, CEUS on the right, each
# 384x384 with the same convex sector. Real scanners are configured in the YAML layout.
PHANTOM_SCREEN_W = 768
PHANTOM_SCREEN_H = 384
PHANTOM_BMODE = Rect(0, 0, 384, 384)
PHANTOM_CEUS = Rect(384, 0, 384, 384)
PHANTOM_SECTOR = SectorGeometry(apex_x=192.0, apex_y=-30.0, r_min=50.0, r_max=340.0,
                                half_angle_deg=30.0)
