"""Random per-case parameters of the phantom, drawn from a seed.

A ``PhantomCase`` is everything that is fixed for one patient/scan: lesion class and
geometry, fatty grade, vessels, gain, breathing, CEUS kinetics. It is a frozen dataclass
so it can be logged, compared and tweaked with ``dataclasses.replace`` (the tests remove
the vessels that way to measure clean lesion contrasts). Nothing here depends on the
class except what the textbook appearance requires: gain, dynamic range, vessels, breathing
and burned-in text are drawn independently of the label so a model cannot shortcut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hepascope.core.geometry import PHANTOM_SECTOR

LESION_CLASSES: tuple[str, ...] = (
    "normal", "cyst", "hemangioma", "hcc", "metastasis", "fatty_sparing",
)
FATTY_GRADES: tuple[str, ...] = ("none", "mild", "moderate", "severe")

# Share of non-sparing cases that still get a fatty liver (grade >= 1), so brightness and
# attenuation alone do not reveal "fatty_sparing".
FATTY_SHARE_OTHERS = 0.35


@dataclass(frozen=True)
class Vessel:
    """A tubular anechoic vessel: a smooth polyline in view pixels, radius in pixels at its
    start, tapering to ``radius * taper`` at its end. ``portal`` veins have bright echogenic
    walls, hepatic veins do not."""

    points: tuple[tuple[float, float], ...]
    radius: float
    portal: bool
    taper: float = 0.5


@dataclass(frozen=True)
class Lesion:
    """Lesion geometry (view pixels, at rest) and appearance parameters.

    ``contrast_db`` is the main echogenicity offset vs parenchyma; ``contrast2_db`` the
    secondary one (HCC halo, metastasis rim, cyst wall brightness); ``rim_frac`` the width of
    the rim/halo as a fraction of the radius; ``lobes`` boundary irregularity; ``mosaic``
    selects the mosaic HCC pattern; ``shape_seed`` seeds the fine shape/texture noise."""

    cx: float
    cy: float
    rx: float
    ry: float
    contrast_db: float
    contrast2_db: float
    rim_frac: float
    lobes: float
    mosaic: bool
    shape_seed: int


@dataclass(frozen=True)
class Ceus:
    """Contrast kinetics of one case (seconds since injection)."""

    arrival_s: float  # parenchymal (portal) arrival
    tau_s: float  # parenchymal rise time constant
    bolus_peak_s: float  # time to peak of arterial bolus after arterial arrival
    bolus_gain: float  # lesion arterial peak relative to parenchymal plateau
    residual: float  # lesion late enhancement relative to parenchyma (HCC washout level)
    fill_s: float  # hemangioma centripetal fill time


@dataclass(frozen=True)
class PhantomCase:
    """All per-patient parameters; ``render.Phantom`` turns it into frames."""

    seed: int
    patient_id: str
    label: str
    fatty_grade: int
    lesion: Lesion | None
    vessels: tuple[Vessel, ...]
    gain_db: float
    dynamic_range_db: float
    wall_px: float  # abdominal wall thickness below the probe face
    texture: float  # low-frequency parenchymal heterogeneity
    diaphragm_r: float | None  # radius (from apex) of the diaphragm, None if out of view
    breath_period_s: float
    breath_amp_px: float
    breath_dir_rad: float
    breath_phase: float
    drift_px: float
    drift_period_s: float
    speckle_rho: float  # AR(1) speckle correlation per frame at 30 fps
    ceus: Ceus

    @property
    def fatty_name(self) -> str:
        return FATTY_GRADES[self.fatty_grade]


def _polar_point(r: float, theta: float) -> tuple[float, float]:
    g = PHANTOM_SECTOR
    return g.apex_x + r * math.sin(theta), g.apex_y + r * math.cos(theta)


def _path(rng: np.random.Generator, x: float, y: float, ang: float, length: float
          ) -> tuple[tuple[float, float], ...]:
    """A gently curving polyline starting at (x, y)."""
    bend = rng.uniform(-0.008, 0.008)
    pts = []
    n = max(2, int(length / 12))
    for k in range(n + 1):
        s = k / n * length
        a = ang + bend * s
        pts.append((x + s * math.cos(a), y + s * math.sin(a)))
    return tuple(pts)


def _make_vessels(rng: np.random.Generator) -> tuple[Vessel, ...]:
    """1-3 tapering trunks with 0-2 branches each, plus 0-3 vessels seen in cross-section."""
    g = PHANTOM_SECTOR
    out: list[Vessel] = []
    for _ in range(int(rng.integers(1, 4))):
        r0 = rng.uniform(g.r_min + 70, g.r_max - 20)
        th0 = rng.uniform(-g.half_angle_rad, g.half_angle_rad) * 1.3
        x, y = _polar_point(r0, th0)
        ang = rng.uniform(0, 2 * math.pi)
        radius = float(rng.uniform(3.0, 7.5))
        portal = bool(rng.random() < 0.5)
        trunk = _path(rng, x, y, ang, rng.uniform(90, 240))
        out.append(Vessel(trunk, radius, portal, float(rng.uniform(0.3, 0.6))))
        for _ in range(int(rng.integers(0, 3))):
            bx, by = trunk[int(rng.integers(2, len(trunk)))]
            ba = ang + rng.choice([-1, 1]) * rng.uniform(0.4, 1.1)
            out.append(Vessel(_path(rng, bx, by, ba, rng.uniform(40, 110)),
                              radius * float(rng.uniform(0.35, 0.6)), portal,
                              float(rng.uniform(0.3, 0.7))))
    for _ in range(int(rng.integers(0, 4))):
        x, y = _polar_point(rng.uniform(g.r_min + 60, g.r_max - 30),
                            rng.uniform(-g.half_angle_rad, g.half_angle_rad) * 0.9)
        out.append(Vessel(_path(rng, x, y, rng.uniform(0, math.pi), rng.uniform(0, 5)),
                          float(rng.uniform(2.0, 5.0)), bool(rng.random() < 0.6), 1.0))
    return tuple(out)


def _make_lesion(rng: np.random.Generator, label: str, wall_px: float,
                 diaphragm_r: float | None) -> Lesion:
    """Random size, position, depth and contrast with the class's textbook ranges."""
    g = PHANTOM_SECTOR
    size = {"cyst": (9, 30), "hemangioma": (10, 34), "hcc": (16, 46), "metastasis": (14, 40),
            "fatty_sparing": (18, 46)}[label]
    rad = float(rng.uniform(*size))
    aspect = float(rng.uniform(0.75, 1.3))
    rx, ry = rad * math.sqrt(aspect), rad / math.sqrt(aspect)
    if label == "fatty_sparing":
        ry *= 0.75
    r_lo = g.r_min + wall_px + ry + 14
    r_hi = (diaphragm_r or g.r_max) - ry - 22
    r = float(rng.uniform(r_lo, max(r_lo + 1, r_hi)))
    # keep the lesion (plus breathing margin) inside the sector laterally
    th_max = g.half_angle_rad - math.asin(min(0.9, (rx + 16) / r))
    th = float(rng.uniform(-th_max, th_max)) if th_max > 0 else 0.0
    cx, cy = _polar_point(r, th)
    c1, c2, rim = {
        "cyst": (rng.uniform(-45, -38), rng.uniform(7, 12), 0.0),
        "hemangioma": (rng.uniform(5, 11), 0.0, 0.0),
        "hcc": (rng.uniform(-10, -4), rng.uniform(-16, -10), rng.uniform(0.08, 0.16)),
        "metastasis": (rng.uniform(3, 9), rng.uniform(-15, -7), rng.uniform(0.3, 0.45)),
        "fatty_sparing": (rng.uniform(-1.5, 0.5), 0.0, 0.0),
    }[label]
    lobes = {"cyst": 0.02, "hemangioma": 0.06, "hcc": 0.08, "metastasis": 0.06,
             "fatty_sparing": 0.3}[label]
    mosaic = bool(label == "hcc" and rng.random() < 0.35)
    return Lesion(float(cx), float(cy), float(rx), float(ry), float(c1), float(c2), float(rim),
                  float(rng.uniform(0.5, 1.0) * lobes), mosaic, int(rng.integers(0, 2**31 - 1)))


def make_case(seed: int, lesion: str | None = None, fatty_grade: int | None = None,
              patient_id: str | None = None) -> PhantomCase:
    """Draw a case from ``seed``. ``lesion``/``fatty_grade`` force the class/grade (else
    random); focal fatty sparing always gets grade >= 1, other classes get grade >= 1 with
    probability 0.35."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x5EED]))
    label = lesion if lesion is not None else LESION_CLASSES[int(rng.integers(len(LESION_CLASSES)))]
    if label not in LESION_CLASSES:
        raise ValueError(f"unknown lesion class {label!r}; expected one of {LESION_CLASSES}")
    # always draw (keeps the stream of later draws independent of the forced arguments)
    g_rand = int(rng.integers(1, 4))
    fat_draw = rng.random()
    if fatty_grade is None:
        fatty_grade = g_rand if (label == "fatty_sparing" or fat_draw < FATTY_SHARE_OTHERS) else 0
    if not 0 <= fatty_grade <= 3:
        raise ValueError(f"fatty_grade must be 0..3, got {fatty_grade}")
    wall_px = float(rng.uniform(14, 34))
    diaphragm_r = float(rng.uniform(0.84, 0.97) * PHANTOM_SECTOR.r_max) \
        if rng.random() < 0.6 else None
    vessels = _make_vessels(rng)
    les = None if label == "normal" else _make_lesion(rng, label, wall_px, diaphragm_r)
    ceus = Ceus(arrival_s=float(rng.uniform(12, 18)), tau_s=float(rng.uniform(15, 28)),
                bolus_peak_s=float(rng.uniform(7, 12)), bolus_gain=float(rng.uniform(2.0, 2.8)),
                residual=float(rng.uniform(0.3, 0.55)), fill_s=float(rng.uniform(50, 130)))
    return PhantomCase(
        seed=int(seed), patient_id=patient_id or f"p{int(seed)}", label=label,
        fatty_grade=int(fatty_grade), lesion=les, vessels=vessels,
        gain_db=float(rng.uniform(-3, 3)), dynamic_range_db=float(rng.uniform(50, 60)),
        wall_px=wall_px, texture=float(rng.uniform(0.05, 0.16)), diaphragm_r=diaphragm_r,
        breath_period_s=float(rng.uniform(3.4, 4.8)), breath_amp_px=float(rng.uniform(3, 11)),
        breath_dir_rad=float(rng.uniform(-0.6, 0.6) + math.pi / 2),
        breath_phase=float(rng.uniform(0, 1)), drift_px=float(rng.uniform(1, 5)),
        drift_period_s=float(rng.uniform(20, 50)), speckle_rho=float(rng.uniform(0.86, 0.95)),
        ceus=ceus,
    )
