"""The polar acquisition grid (depth samples x beams) of the phantom's convex probe and the
static maps between it, the tissue map and the Cartesian view.

Everything here depends only on ``PHANTOM_SECTOR`` and is computed once per process
(``polar_grid()`` is cached): the scan-conversion maps for ``cv2.remap``, the polar sample
positions in view pixels, and the exact sector mask preprocessing uses.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from hepascope.core.geometry import PHANTOM_BMODE, PHANTOM_SECTOR, SectorGeometry

N_DEPTH = 288  # depth samples from the probe face to maximum depth (~1 view px each)
N_BEAMS = 160  # beams across the opening angle
TISSUE_MARGIN = 24  # tissue map = view + this margin on every side (room for motion)


@dataclass(frozen=True)
class PolarGrid:
    """Static geometry of the acquisition grid and the view."""

    geom: SectorGeometry
    n_depth: int
    n_beams: int
    view_w: int
    view_h: int
    r: np.ndarray  # (D,) radius from the apex of each depth sample, view px
    theta: np.ndarray  # (B,) beam angle, rad (0 = probe axis)
    dr: float  # view px per depth sample
    x: np.ndarray  # (D, B) float32 view x of each polar sample
    y: np.ndarray  # (D, B) float32 view y of each polar sample
    scan_x: np.ndarray  # (H, W) float32 beam index for cv2.remap (-10 outside the sector)
    scan_y: np.ndarray  # (H, W) float32 depth index for cv2.remap (-10 outside the sector)
    mask: np.ndarray  # (H, W) uint8 sector mask of the view (255 inside)

    @property
    def tissue_size(self) -> tuple[int, int]:
        """(height, width) of the tissue map."""
        return self.view_h + 2 * TISSUE_MARGIN, self.view_w + 2 * TISSUE_MARGIN

    def beam_px(self) -> np.ndarray:
        """(D,) lateral view pixels per beam at each depth (arc length of one beam step)."""
        dth = float(self.theta[1] - self.theta[0])
        return self.r * dth


@functools.lru_cache(maxsize=1)
def polar_grid() -> PolarGrid:
    """The phantom's grid, computed once."""
    g = PHANTOM_SECTOR
    h, w = PHANTOM_BMODE.h, PHANTOM_BMODE.w
    r = np.linspace(g.r_min, g.r_max, N_DEPTH).astype(np.float64)
    theta = np.linspace(-g.half_angle_rad, g.half_angle_rad, N_BEAMS)
    px, py = g.polar_to_xy(r[:, None], theta[None, :])
    mask = g.mask(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - g.apex_x, yy - g.apex_y
    rr = np.hypot(dx, dy)
    th = np.arctan2(dx, dy)
    ky = (rr - g.r_min) / (g.r_max - g.r_min) * (N_DEPTH - 1)
    kx = (th + g.half_angle_rad) / (2 * g.half_angle_rad) * (N_BEAMS - 1)
    inside = mask > 0
    scan_y = np.where(inside, np.clip(ky, 0, N_DEPTH - 1), -10).astype(np.float32)
    scan_x = np.where(inside, np.clip(kx, 0, N_BEAMS - 1), -10).astype(np.float32)
    for a in (r, theta, scan_x, scan_y, mask):
        a.setflags(write=False)
    return PolarGrid(
        geom=g, n_depth=N_DEPTH, n_beams=N_BEAMS, view_w=w, view_h=h, r=r, theta=theta,
        dr=float(r[1] - r[0]), x=px.astype(np.float32), y=py.astype(np.float32),
        scan_x=scan_x, scan_y=scan_y, mask=mask,
    )
