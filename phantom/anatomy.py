"""Static per-patient tissue maps: liver parenchyma, vessels, diaphragm, abdominal wall.

Built once per case. The liver lives in *tissue coordinates* (the view plus a margin) so
breathing and probe drift only change where the polar grid samples it; the abdominal wall
is fixed to the probe, so it is built directly on the polar grid and the liver slides
under it, as on a real scan. Channels of ``TissueMaps.t1``: echo amplitude (1 = normal
liver), local attenuation (two-way dB per view pixel), parenchyma weight and vessel weight
for CEUS. ``t2`` holds the lesion channels (see ``lesions.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from hepascope.phantom.lesions import apply_lesion
from hepascope.phantom.patient import PhantomCase
from hepascope.phantom.polar import TISSUE_MARGIN, PolarGrid
from hepascope.phantom.tissue import (
    ALPHA_LIVER_DB_PX,
    FAT_ALPHA_GAIN,
    FAT_BRIGHT_DB,
    smooth_noise,
)


@dataclass
class TissueMaps:
    """Per-patient static maps (float32)."""

    t1: np.ndarray  # (S, S, 4): amp, alpha, liver_w, vessel_w
    t2: np.ndarray  # (S, S, 4): lesion_w, lesion_d, nodular, unused
    wall_amp: np.ndarray  # (Kw, B) amplitude of the abdominal wall rows
    wall_alpha: np.ndarray  # (Kw, B)
    wall_w: np.ndarray  # (Kw, B) 1 = wall, 0 = liver below the capsule


def _vessels(case: PhantomCase, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(lumen weight, bright wall weight) of the case's vessels in tissue coordinates."""
    lumen = np.zeros(size, np.uint8)
    wall = np.zeros(size, np.uint8)
    m = TISSUE_MARGIN
    for v in case.vessels:
        pts = np.array(v.points, np.float64) + m
        seg = np.hypot(*np.diff(pts, axis=0).T)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        n = max(2, int(s[-1]) + 1)
        si = np.linspace(0, s[-1], n)
        px, py = np.interp(si, s, pts[:, 0]), np.interp(si, s, pts[:, 1])
        rad = v.radius * (1 + (v.taper - 1) * si / max(s[-1], 1e-6))
        for x, y, r in zip(px, py, rad, strict=True):
            c = (int(np.rint(x * 16)), int(np.rint(y * 16)))
            if v.portal:
                cv2.circle(wall, c, int(np.rint((r + 1.6) * 16)), 255, -1, cv2.LINE_AA, 4)
            cv2.circle(lumen, c, int(np.rint(r * 16)), 255, -1, cv2.LINE_AA, 4)
    g = case.fatty_grade
    sig = 0.6 + 0.9 * g  # fat blurs vessel walls
    lum = cv2.GaussianBlur(lumen.astype(np.float32) / 255, (0, 0), sig)
    wal = cv2.GaussianBlur(wall.astype(np.float32) / 255, (0, 0), 0.6 + 0.6 * g)
    wal = np.clip(wal - lum, 0, 1)
    return lum, wal


def _diaphragm(case: PhantomCase, grid: PolarGrid, size: tuple[int, int],
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(bright line weight, beyond-diaphragm weight) of a curved diaphragm."""
    line = np.zeros(size, np.float32)
    beyond = np.zeros(size, np.float32)
    if case.diaphragm_r is None:
        return line, beyond
    g, m = grid.geom, TISSUE_MARGIN
    # a circle flatter than the sector arc, centred below-left/right of the apex
    rad = case.diaphragm_r * rng.uniform(1.3, 2.2)
    tilt = rng.uniform(-0.35, 0.35)
    cx = g.apex_x + m - (rad - case.diaphragm_r) * math.sin(tilt)
    cy = g.apex_y + m - (rad - case.diaphragm_r) * math.cos(tilt)
    yy, xx = np.mgrid[0:size[0], 0:size[1]].astype(np.float32)
    dist = np.hypot(xx - cx, yy - cy) - rad
    thick = rng.uniform(2.0, 3.5)
    line[:] = np.exp(-0.5 * (dist / thick) ** 2)
    beyond[:] = np.clip(dist / 2.0, 0, 1)
    return line, beyond


def _wall(case: PhantomCase, grid: PolarGrid, rng: np.random.Generator
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Skin, subcutaneous fat with septa, muscle with striations, bright capsule: on the
    polar grid, fixed to the probe."""
    b = grid.n_beams
    kw = math.ceil(case.wall_px / grid.dr) + 8
    d = (np.arange(kw, dtype=np.float32) * grid.dr)[:, None]
    beam_px = grid.beam_px()[:kw, None].astype(np.float32)
    sig_lat = (12.0 / float(beam_px.mean()), 0.8)
    wave = np.sin(np.linspace(0, rng.uniform(2, 5), b) + rng.uniform(0, 6))
    wall_b = case.wall_px * (1 + 0.06 * wave)
    wall_b = wall_b[None, :].astype(np.float32)
    fat_end = wall_b * rng.uniform(0.35, 0.55)
    septa = np.clip(smooth_noise(rng, (kw, b), sig_lat) - 0.9, 0, None) * 2.5
    stri = smooth_noise(rng, (kw, b), (sig_lat[0] * 0.6, 0.7)) * 0.25
    amp = np.where(d < fat_end, 0.35 + septa, 0.6 + stri).astype(np.float32)
    amp += 2.0 * np.exp(-0.5 * (d / 1.2) ** 2)  # skin
    amp += 1.6 * np.exp(-0.5 * ((d - fat_end) / 1.0) ** 2)  # fascia
    amp += 2.4 * np.exp(-0.5 * ((d - wall_b) / 1.1) ** 2)  # peritoneum / liver capsule
    w = np.clip((wall_b + 1.5 - d) / 2.0, 0, 1).astype(np.float32)
    alpha = np.full((kw, b), ALPHA_LIVER_DB_PX, np.float32)
    return np.maximum(amp, 0.05).astype(np.float32), alpha, w


def build_tissue(case: PhantomCase, grid: PolarGrid) -> TissueMaps:
    """Parenchyma + vessels + diaphragm (tissue coords) and the wall (polar)."""
    rng = np.random.default_rng(np.random.SeedSequence([case.seed & 0xFFFFFFFF, 0x7155]))
    size = grid.tissue_size
    g = case.fatty_grade
    fat = 10 ** (FAT_BRIGHT_DB[g] / 20)
    amp: np.ndarray = fat * (1 + case.texture * smooth_noise(rng, size, 14.0))
    amp *= 1 + 0.5 * case.texture * smooth_noise(rng, size, 3.0)
    # portal tracts: small echogenic foci, less conspicuous in a fatty liver
    foci: np.ndarray = np.zeros(size, np.float32)
    for _ in range(int(rng.integers(18, 40))):
        c = (float(rng.uniform(0, size[1])), float(rng.uniform(0, size[0])))
        ax = (float(rng.uniform(1.0, 3.5)), float(rng.uniform(0.7, 1.6)))
        cv2.ellipse(foci, (c, ax, float(rng.uniform(0, 180))), float(rng.uniform(0.8, 1.6)), -1,
                    cv2.LINE_AA)
    foci = cv2.GaussianBlur(foci, (0, 0), 0.7)
    amp += fat * foci * (1 - 0.25 * g)
    alpha: np.ndarray = np.full(size, ALPHA_LIVER_DB_PX * (1 + FAT_ALPHA_GAIN[g]), np.float32)
    parenchyma = amp.copy()  # vessel-free, what a mass replaces
    lum, vwall = _vessels(case, size)
    line, beyond = _diaphragm(case, grid, size, rng)
    lum *= 1 - beyond  # vessels end at the diaphragm
    vwall *= 1 - beyond
    lumen_rel = 0.03 + 0.12 * g
    amp = amp * (1 - lum * (1 - lumen_rel)) + vwall * fat * 1.3 * max(0.0, 1 - 0.33 * g)
    alpha = alpha * (1 - 0.5 * lum)  # blood attenuates less: mild enhancement
    amp = amp * (1 - beyond) + beyond * 0.55 * (1 + 0.3 * smooth_noise(rng, size, 2.0)) + 3.5 * line
    liver_w = np.clip(1 - lum - beyond, 0, 1)
    t1 = np.stack([np.maximum(amp, 0.01), alpha, liver_w, lum], axis=2).astype(np.float32)
    t2 = np.zeros((*size, 4), np.float32)
    apply_lesion(case, grid, t1, t2, parenchyma)
    wall_amp, wall_alpha, wall_w = _wall(case, grid, rng)
    return TissueMaps(t1, t2, wall_amp, wall_alpha, wall_w)
