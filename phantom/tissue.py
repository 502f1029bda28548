"""Acoustic constants of liver tissue and the smoothed noise that anatomy and lesions draw
their textures from."""

from __future__ import annotations

import cv2
import numpy as np

ALPHA_LIVER_DB_PX = 0.15  # two-way attenuation of normal liver, dB per view px (TGC undoes it)
FAT_BRIGHT_DB = (0.0, 4.0, 7.0, 10.0)  # echogenicity increase per fatty grade
FAT_ALPHA_GAIN = (0.0, 0.22, 0.45, 0.7)  # relative extra attenuation per fatty grade
# Share of a fatty liver's extra attenuation that the sonographer's depth gain (TGC) takes
# back: a fatty liver still darkens with depth (the steatosis sign) but deep lesions stay
# visible, as on a scan set up for that liver.
FAT_TGC_SHARE = 0.5
ALPHA_FLUID_DB_PX = 0.01


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int],
                 sigma: float | tuple[float, float]) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-smoothed noise (sigma = (x, y) or isotropic)."""
    sx, sy = (sigma, sigma) if isinstance(sigma, (int, float)) else sigma
    raw = rng.standard_normal(shape, dtype=np.float32)
    n = cv2.GaussianBlur(raw, (0, 0), sigmaX=sx, sigmaY=sy, borderType=cv2.BORDER_REFLECT)
    return ((n - n.mean()) / max(float(n.std()), 1e-6)).astype(np.float32)
