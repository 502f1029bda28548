"""Focal lesions drawn into the tissue maps with their textbook B-mode appearance.

Everything is computed once per case on the lesion's bounding box in tissue coordinates:
  * cyst: anechoic, sharp thin bright (specular) wall, no attenuation inside -> posterior
    acoustic enhancement falls out of the attenuation integral; faint lateral edge shadows;
  * hemangioma: homogeneous hyperechoic, well defined, slightly lobulated;
  * HCC: hypoechoic or mosaic, thin hypoechoic halo;
  * metastasis: target / bull's-eye (echogenic centre, thick hypoechoic rim);
  * focal fatty sparing: geographic, angular hypoechoic area of normal (non-fatty) liver,
    no mass effect (vessels run through it).
The lesion channels ``t2`` (weight, normalised inward depth 0 at the edge .. 1 at the
centre, nodular pattern) drive the CEUS enhancement patterns.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from hepascope.phantom.patient import Lesion, PhantomCase
from hepascope.phantom.polar import TISSUE_MARGIN, PolarGrid
from hepascope.phantom.tissue import (
    ALPHA_FLUID_DB_PX,
    ALPHA_LIVER_DB_PX,
    FAT_BRIGHT_DB,
    smooth_noise,
)


def _db(x: float | np.ndarray) -> float | np.ndarray:
    return 10 ** (np.asarray(x) / 20)


def _sparing_shape(les: Lesion, rng: np.random.Generator, shape: tuple[int, int],
                   cx: float, cy: float) -> np.ndarray:
    """Angular polygon (geographic outline) rasterised with anti-aliasing, values 0..1."""
    n = int(rng.integers(5, 9))
    ang = np.sort(rng.uniform(0, 2 * math.pi, n))
    rad = rng.uniform(0.6, 1.0, n)
    pts = np.stack([cx + les.rx * rad * np.cos(ang), cy + les.ry * rad * np.sin(ang)], axis=1)
    img = np.zeros(shape, np.uint8)
    cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    w = img.astype(np.float32) / 255
    return cv2.GaussianBlur(w, (0, 0), 0.8)


def _sparing(case: PhantomCase, w: np.ndarray, amp: np.ndarray, alpha: np.ndarray,
             vessel_w: np.ndarray) -> np.ndarray:
    """Focal fatty sparing (weight ``w``) into ``amp`` and ``alpha``: normal liver inside a
    bright fatty one. Returns the depth map (1 at the centre)."""
    les = case.lesion
    assert les is not None
    dist = cv2.distanceTransform((w > 0.5).astype(np.uint8), cv2.DIST_L2, 5)
    d = dist / max(float(dist.max()), 1.0)
    amp *= 1 - w + w * float(_db(les.contrast_db - FAT_BRIGHT_DB[case.fatty_grade]))
    alpha[:] = alpha * (1 - w) + w * np.where(vessel_w > 0.5, alpha, ALPHA_LIVER_DB_PX)
    return d


def _cyst(les: Lesion, beam: tuple[np.ndarray, np.ndarray], d: tuple[np.ndarray, np.ndarray],
          e: np.ndarray, w: np.ndarray, base: np.ndarray, amp: np.ndarray,
          alpha: np.ndarray) -> None:
    """An anechoic cyst into ``amp`` and ``alpha``: its specular wall bright where the beam
    hits it perpendicularly, shadows beside its lateral edges."""
    inner = np.full_like(base, float(_db(les.contrast_db)))
    (bx, by), (dx, dy) = beam, d
    nx, ny = dx / les.rx**2, dy / les.ry**2
    cosang = np.abs(bx * nx + by * ny) / (np.hypot(bx, by) * np.hypot(nx, ny) + 1e-6)
    ring = np.exp(-0.5 * (e / 0.9) ** 2)
    spec = 0.35 + 0.65 * cosang**2
    amp[:] = base * (1 - w) + w * inner
    amp += ring * spec * float(_db(les.contrast2_db)) * float(np.mean(base))
    alpha[:] = alpha * (1 - w) + w * ALPHA_FLUID_DB_PX
    alpha += 0.5 * ring * (1 - cosang) ** 4  # lateral edge (refraction) shadows


def _nodules(rng: np.random.Generator, phi: np.ndarray) -> np.ndarray:
    """A hemangioma's peripheral nodules (CEUS fills them first): 4-7 angular bumps."""
    n = int(rng.integers(4, 8))
    cen = rng.uniform(-math.pi, math.pi, n)
    nod = np.zeros_like(phi)
    for c in cen:
        dphi = np.angle(np.exp(1j * (phi - c)))
        nod = np.maximum(nod, np.exp(-0.5 * (dphi / 0.28) ** 2))
    return nod


def _outline(les: Lesion, rng: np.random.Generator, t1: np.ndarray
             ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray, np.ndarray]:
    """The lesion's bounding box in the tissue maps (row, column slices), the tissue
    coordinates ``(xx, yy)`` of its pixels, the polar angle ``phi`` about the centre and the
    lobulated normalised radius ``s`` (1 on the edge)."""
    cx, cy = les.cx + TISSUE_MARGIN, les.cy + TISSUE_MARGIN
    half = int(max(les.rx, les.ry) * 1.5 + 12)
    x0, y0 = max(0, int(cx) - half), max(0, int(cy) - half)
    x1, y1 = min(t1.shape[1], int(cx) + half), min(t1.shape[0], int(cy) + half)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    phi = np.arctan2(dy / les.ry, dx / les.rx)
    rho = np.hypot(dx / les.rx, dy / les.ry)
    bnd = np.ones_like(phi)
    for k in range(2, 6):
        bnd += les.lobes / (k - 1) * rng.uniform(-1, 1) * np.cos(k * phi + rng.uniform(0, 6.3))
    return (slice(y0, y1), slice(x0, x1)), np.stack([xx, yy]), phi, rho / bnd


def _mass(les: Lesion, label: str, rng: np.random.Generator, w: np.ndarray, e: np.ndarray,
          d: np.ndarray, base: np.ndarray, fine: np.ndarray, maps: tuple[np.ndarray, ...]
          ) -> None:
    """Hemangioma, HCC or metastasis echogenicity written into ``maps`` = (amp, alpha)."""
    amp, alpha = maps
    r_eff = math.sqrt(les.rx * les.ry)
    if label == "hemangioma":
        level = float(np.mean(base)) * float(_db(les.contrast_db))
        amp[:] = base * (1 - w) + w * level * (1 + 0.1 * fine)
        alpha[:] = alpha * (1 - 0.15 * w)
    elif label == "hcc":
        if les.mosaic:
            mosaic = smooth_noise(rng, w.shape, max(1.5, r_eff / 5))
            inner = base * _db(les.contrast_db + 2.0 + 5.0 * mosaic)
        else:
            inner = base * float(_db(les.contrast_db)) * (1 + 0.15 * fine)
        halo_px = max(2.0, les.rim_frac * r_eff)
        halo = np.clip((halo_px - e) / 1.2, 0, 1) * w
        amp[:] = base * (1 - w) + w * inner
        amp[:] = amp * (1 - halo) + halo * base * float(_db(les.contrast2_db))
    elif label == "metastasis":
        rim = np.clip((les.rim_frac - d) / 0.08 + 0.5, 0, 1)
        inner = base * (rim * float(_db(les.contrast2_db))
                        + (1 - rim) * float(_db(les.contrast_db)) * (1 + 0.15 * fine))
        amp[:] = base * (1 - w) + w * inner


def apply_lesion(case: PhantomCase, grid: PolarGrid, t1: np.ndarray, t2: np.ndarray,
                 parenchyma: np.ndarray) -> None:
    """Draw ``case.lesion`` into ``t1`` (amp, alpha, liver_w, vessel_w) and ``t2``;
    ``parenchyma`` is the vessel-free amplitude a mass replaces."""
    les = case.lesion
    if les is None:
        return
    rng = np.random.default_rng(les.shape_seed)
    m = TISSUE_MARGIN
    cx, cy = les.cx + m, les.cy + m
    box, (xx, yy), phi, s = _outline(les, rng, t1)
    e = (1 - s) * math.sqrt(les.rx * les.ry)  # signed distance to the edge, px, inside > 0
    label = case.label
    t1b, t2b = t1[box], t2[box]  # views: writes land in the maps
    amp, alpha, liver_w, vessel_w = (t1b[..., i] for i in range(4))
    if label == "fatty_sparing":
        w = _sparing_shape(les, rng, phi.shape, cx - box[1].start, cy - box[0].start)
        t2b[..., 0], t2b[..., 1] = w, _sparing(case, w, amp, alpha, vessel_w)
        return
    edge_px = {"cyst": 0.7, "hemangioma": 1.0, "hcc": 1.4, "metastasis": 1.6}[label]
    w = np.clip(e / (2 * edge_px) + 0.5, 0, 1).astype(np.float32)
    d = np.clip(1 - s, 0, 1).astype(np.float32)
    base = parenchyma[box]  # local vessel-free parenchyma the mass replaces
    fine = smooth_noise(rng, phi.shape, 1.5)
    if label == "cyst":
        # the beam's direction at each pixel, from the probe's apex (tissue coordinates)
        beam = (xx - (grid.geom.apex_x + m), yy - (grid.geom.apex_y + m))
        _cyst(les, beam, (xx - cx, yy - cy), e, w, base, amp, alpha)
    else:
        _mass(les, label, rng, w, e, d, base, fine, (amp, alpha))
    # a mass displaces parenchyma and vessels
    liver_w *= 1 - w
    vessel_w *= 1 - w
    t2b[..., 0], t2b[..., 1] = w, d
    if label == "hemangioma":
        t2b[..., 2] = _nodules(rng, phi)
