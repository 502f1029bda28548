"""Contrast-enhanced ultrasound: time-intensity curves and enhancement maps.

Times are seconds since injection. Curves are relative microbubble concentrations
(1 = parenchymal plateau):
  * parenchyma: arrives ~12-18 s (mostly portal supply), rises gradually, sustained;
  * HCC: arterial bolus peaking ~15-25 s well above parenchyma, then washout to a fraction
    of it (hypoenhancing after ~60 s);
  * metastasis: arterial rim enhancement, early washout (< 60 s), non-enhancing core;
  * hemangioma: peripheral nodular enhancement that fills in centripetally, sustained;
  * cyst: none; focal fatty sparing: iso (it *is* parenchyma); normal: parenchyma only.
"""

from __future__ import annotations

import math

import numpy as np

from hepascope.phantom.patient import PhantomCase

CEUS_PHASES: tuple[str, ...] = ("pre", "arterial", "portal", "late")
ARTERIAL_START_S = 10.0
PORTAL_START_S = 35.0
LATE_START_S = 120.0


def ceus_phase(t_s: float) -> str:
    """EFSUMB-style phase name of contrast time ``t_s``."""
    if t_s < ARTERIAL_START_S:
        return "pre"
    if t_s < PORTAL_START_S:
        return "arterial"
    if t_s < LATE_START_S:
        return "portal"
    return "late"


def bolus(t: float, t_arrival: float, t_peak: float) -> float:
    """Gamma-variate first pass, 0 before ``t_arrival``, peak 1 at ``t_arrival + t_peak``."""
    tau = (t - t_arrival) / t_peak
    if tau <= 0:
        return 0.0
    return float(tau**3 * math.exp(3 * (1 - tau)))


def parenchyma(case: PhantomCase, t: float) -> float:
    """Parenchymal time-intensity curve."""
    c = case.ceus
    if t <= c.arrival_s - 4:
        return 0.0
    rise = 1 - math.exp(-max(0.0, t - c.arrival_s) / c.tau_s)
    return (rise * math.exp(-max(0.0, t - 90.0) / 500.0)
            + 0.15 * bolus(t, c.arrival_s - 4, 8.0))


def curves(case: PhantomCase, t: float) -> dict[str, float]:
    """All scalar curves at ``t``: parenchyma ``P``, vessels ``V``, lesion ``L`` (uniform
    part), metastasis ``rim``/``core``, hemangioma ``S`` and fill ``front``."""
    c = case.ceus
    p = parenchyma(case, t)
    art = c.arrival_s - 5
    out = {"P": p, "V": 1.6 * bolus(t, art, 5.0) + 1.3 * p, "L": 0.0}
    if case.label == "hcc":
        out["L"] = c.bolus_gain * bolus(t, art, c.bolus_peak_s) + c.residual * p
    elif case.label == "metastasis":
        out["rim"] = 0.8 * c.bolus_gain * bolus(t, art, 0.8 * c.bolus_peak_s) + 0.2 * p
        out["core"] = 0.08 * p
    elif case.label == "hemangioma":
        tt = t - (c.arrival_s - 3)
        out["S"] = (1.3 * (1 - math.exp(-max(0.0, tt) / (0.5 * c.tau_s)))
                    + bolus(t, art, c.bolus_peak_s))
        out["front"] = min(1.0, max(0.0, tt) / c.fill_s) ** 0.7
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))


def enhancement(case: PhantomCase, t: float, liver_w: np.ndarray, vessel_w: np.ndarray,
                lesion: np.ndarray | None) -> np.ndarray:
    """Relative bubble concentration map (same shape as ``liver_w``); ``lesion`` is the
    polar-sampled lesion channels (..., 4) or None."""
    k = curves(case, t)
    e = liver_w * np.float32(k["P"]) + vessel_w * np.float32(k["V"])
    if lesion is None or case.label in ("normal", "cyst", "fatty_sparing"):
        return e  # cyst: lesion_w already removed from liver_w, nothing added
    w, d = lesion[..., 0], lesion[..., 1]
    if case.label == "hcc":
        e += w * np.float32(k["L"])
    elif case.label == "metastasis":
        rim = np.clip((case.lesion.rim_frac - d) / 0.08 + 0.5, 0, 1) if case.lesion else d
        e += w * (rim * np.float32(k["rim"]) + (1 - rim) * np.float32(k["core"]))
    elif case.label == "hemangioma":
        nod = lesion[..., 2]
        front = k["front"]
        fill = _sigmoid((front + 0.12 - d) / 0.05)
        e += w * np.float32(k["S"]) * fill * (nod + (1 - nod) * np.float32(front))
    return e
