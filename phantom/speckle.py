"""Fully developed speckle on the polar grid.

Echo = PSF * (complex Gaussian scatterers x tissue amplitude); the envelope of a linear
filter of circular complex Gaussian noise is Rayleigh distributed (mean/std = 1.91), which
is what "fully developed speckle" means. The PSF is separable and anisotropic: short along
depth, wider across beams, and its lateral width in *view pixels* grows with depth (beam
divergence), so it is applied per depth band. The scatterer field evolves as AR(1),
``s_t = rho s_{t-1} + sqrt(1 - rho^2) n_t``, which decorrelates speckle frame to frame while
keeping it stationary; it is larger than the grid so a window can follow tissue motion.
"""

from __future__ import annotations

import itertools
import math

import cv2
import numpy as np

from hepascope.phantom.polar import PolarGrid

AXIAL_SIGMA = 0.9  # depth samples
LATERAL_SIGMA_PX = (1.0, 2.1)  # lateral PSF sigma in view px at the top / bottom of the sector
N_BANDS = 6


def _kernel(sigma: float) -> np.ndarray:
    """Gaussian 1-D kernel with unit *energy* (sum of squares), so blurred unit-variance
    noise keeps unit variance."""
    half = max(1, math.ceil(3 * sigma))
    x = np.arange(-half, half + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= math.sqrt(float(np.sum(k * k)))
    return k.astype(np.float32).reshape(-1, 1)


class SpeckleField:
    """AR(1) complex scatterer field plus the PSF that turns it into an echo.

    ``margin`` (depth, beams) is the extra border the window may move into;
    ``lateral_px`` the lateral PSF sigma (top, bottom) in view pixels.
    """

    def __init__(self, grid: PolarGrid, rho: float, rng: np.random.Generator, *,
                 margin: tuple[int, int] = (16, 8), axial_sigma: float = AXIAL_SIGMA,
                 lateral_px: tuple[float, float] = LATERAL_SIGMA_PX) -> None:
        if not 0.0 <= rho < 1.0:
            raise ValueError(f"rho must be in [0, 1), got {rho}")
        self.grid = grid
        self.rho = float(rho)
        self.innov = math.sqrt(1.0 - self.rho**2)
        self.margin = margin
        d, b = grid.n_depth, grid.n_beams
        shape = (d + 2 * margin[0], b + 2 * margin[1], 2)
        self._noise = np.empty(shape, np.float32)
        self.state = np.empty(shape, np.float32)
        self._ident = np.ones((1, 1), np.float32)
        self._k_ax = _kernel(axial_sigma)
        edges = np.linspace(0, d, N_BANDS + 1).astype(int)
        beam_px = grid.beam_px()
        self._bands: list[tuple[int, int, np.ndarray]] = []
        for a, z in itertools.pairwise(edges):
            mid = (a + z) // 2
            frac = mid / (d - 1)
            sig_px = lateral_px[0] + (lateral_px[1] - lateral_px[0]) * frac
            self._bands.append((int(a), int(z), _kernel(sig_px / float(beam_px[mid]))))
        self.reset(rng)

    def reset(self, rng: np.random.Generator) -> None:
        """Restart the chain from its stationary distribution."""
        self.rng = rng
        rng.standard_normal(out=self.state, dtype=np.float32)
        self.state *= np.float32(math.sqrt(0.5))  # E|s|^2 = 1

    def step(self) -> None:
        """One AR(1) update of the scatterers."""
        self.rng.standard_normal(out=self._noise, dtype=np.float32)
        cv2.addWeighted(self.state, self.rho, self._noise, self.innov * math.sqrt(0.5), 0.0,
                        dst=self.state)

    def echo(self, amp: np.ndarray, shift: tuple[int, int] = (0, 0)) -> np.ndarray:
        """Complex echo (D, B, 2) float32 of tissue amplitude ``amp`` (D, B), with the
        scatterer window displaced by ``shift`` (depth samples, beams) to follow motion."""
        d, b = self.grid.n_depth, self.grid.n_beams
        md, mb = self.margin
        k0 = md - max(-md, min(md, shift[0]))
        b0 = mb - max(-mb, min(mb, shift[1]))
        field = self.state[k0:k0 + d, b0:b0 + b] * amp[:, :, None]
        field = cv2.sepFilter2D(field, -1, self._ident, self._k_ax,
                                borderType=cv2.BORDER_REFLECT)
        for a, z, k_lat in self._bands:
            field[a:z] = cv2.sepFilter2D(field[a:z], -1, k_lat, self._ident,
                                         borderType=cv2.BORDER_REFLECT)
        return field


def power(echo: np.ndarray) -> np.ndarray:
    """|echo|^2 of a (D, B, 2) complex echo."""
    return np.einsum("ijk,ijk->ij", echo, echo)


def envelope(echo: np.ndarray) -> np.ndarray:
    """Envelope |echo| (Rayleigh in homogeneous tissue)."""
    return np.sqrt(power(echo))


_DB_PER_LN = np.float32(10.0 / math.log(10.0))


def log_compress(pw: np.ndarray, offset_db: np.ndarray | float, dynamic_range_db: float,
                 level_db: float) -> np.ndarray:
    """8-bit log compression of echo power: ``10 log10(pw) + offset_db`` mapped so that
    ``-level_db`` is black and ``dynamic_range_db - level_db`` is white."""
    db = cv2.log(np.maximum(pw, np.float32(1e-12)))
    db *= _DB_PER_LN
    db += offset_db
    scale = np.float32(255.0 / dynamic_range_db)
    db += np.float32(level_db)
    db *= scale
    np.clip(db, 0, 255, out=db)
    return db.astype(np.uint8)
