"""The phantom renderer: a case in, dual-view (B-mode | CEUS) screen frames out.

Per patient (constructor): tissue maps, wall, speckle fields. Per frame (``render``):
motion-shifted sampling of the tissue maps onto the polar grid (one ``cv2.remap`` per 4
channels), attenuation integral + TGC, AR(1) speckle update, PSF blur, envelope/log
compression, scan conversion (``cv2.remap`` with precomputed maps) and the overlay blit.

Frames are generated sequentially: calling ``render(i)`` right after ``render(i - 1)``
continues the speckle chain; any other ``i`` restarts it deterministically at ``i``, so the
output depends only on (case, fps, CEUS clock, call sequence).
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from hepascope.phantom.anatomy import build_tissue
from hepascope.phantom.annotations import draw_timer, static_overlay
from hepascope.phantom.ceus import ceus_phase, enhancement
from hepascope.phantom.patient import PhantomCase
from hepascope.phantom.polar import TISSUE_MARGIN, polar_grid
from hepascope.phantom.speckle import SpeckleField, log_compress, power
from hepascope.phantom.tissue import ALPHA_LIVER_DB_PX, FAT_ALPHA_GAIN, FAT_TGC_SHARE

BMODE_LEVEL_DB = 25.0  # normal parenchyma lands around grey 105-115
CEUS_LEVEL_DB = 21.5  # parenchymal plateau lands around grey 140
CEUS_RANGE_DB = 36.0
CEUS_TISSUE = 0.15  # residual tissue signal in the contrast-specific image (-16 dB)
BUBBLE_RHO = 0.55  # microbubbles flow: their speckle decorrelates fast


class Phantom:
    """Renders frames of one case. ``ceus_t_s(i) = ceus_t0_s + ceus_speed * i / fps``."""

    def __init__(self, case: PhantomCase, fps: float = 30.0, ceus_t0_s: float = 20.0,
                 ceus_speed: float = 1.0) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.case, self.fps = case, float(fps)
        self.ceus_t0_s, self.ceus_speed = float(ceus_t0_s), float(ceus_speed)
        self.grid = grid = polar_grid()
        self.tissue = build_tissue(case, grid)
        self._has_lesion = case.lesion is not None
        rho = case.speckle_rho ** (30.0 / self.fps)
        self._bspeckle = SpeckleField(grid, rho, self._rng(0))
        self._cspeckle = SpeckleField(grid, BUBBLE_RHO ** (30.0 / self.fps), self._rng(0, 1),
                                      margin=(0, 0), lateral_px=(0.9, 1.8))
        self._next = 0
        self._beam_px_mid = float(grid.beam_px()[grid.n_depth // 2])
        # TGC undoes normal-liver attenuation and part of a fatty liver's extra attenuation
        # (FAT_TGC_SHARE); slight near-field roll-off as on scanners
        depth_px = (grid.r - grid.r[0]).astype(np.float32)
        alpha_tgc = ALPHA_LIVER_DB_PX * (1 + FAT_TGC_SHARE * FAT_ALPHA_GAIN[case.fatty_grade])
        tgc = alpha_tgc * depth_px - 3.0 * np.exp(-depth_px / 25.0)
        self._tgc = (tgc + case.gain_db).astype(np.float32)[:, None]
        self._overlay = static_overlay()
        self.last_envelope: np.ndarray | None = None  # B-mode polar envelope (before log)

    def _rng(self, i: int, stream: int = 0) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(
            [self.case.seed & 0xFFFFFFFF, 0x5BEC, stream, i]))

    # -- motion ---------------------------------------------------------
    def motion(self, i: int) -> tuple[float, float]:
        """Tissue displacement (dx, dy) in view px at frame ``i``: breathing + drift."""
        c, t = self.case, i / self.fps
        w = 0.5 - 0.5 * math.cos(2 * math.pi * (t / c.breath_period_s + c.breath_phase))
        b = c.breath_amp_px * (w**1.5 - 0.4)
        ph = 2 * math.pi * t / c.drift_period_s
        dx = b * math.cos(c.breath_dir_rad) + c.drift_px * math.sin(ph + c.seed % 7)
        dy = b * math.sin(c.breath_dir_rad) + 0.5 * c.drift_px * math.sin(1.7 * ph + c.seed % 5)
        return dx, dy

    def ceus_time(self, i: int) -> float:
        return self.ceus_t0_s + self.ceus_speed * i / self.fps

    # -- rendering ------------------------------------------------------
    def render(self, i: int, ceus_t_s: float | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """(BGR frame 384x768 uint8, truth dict) of frame ``i``; ``ceus_t_s`` overrides the
        CEUS clock (datasets sample contrast times freely)."""
        if i != self._next:  # jump: restart the speckle chains at i
            self._bspeckle.reset(self._rng(i))
            self._cspeckle.reset(self._rng(i, 1))
        else:
            self._bspeckle.step()
            self._cspeckle.step()
        self._next = i + 1
        t_ceus = self.ceus_time(i) if ceus_t_s is None else float(ceus_t_s)
        dx, dy = self.motion(i)
        g, tis, m = self.grid, self.tissue, TISSUE_MARGIN
        mx, my = g.x + np.float32(m - dx), g.y + np.float32(m - dy)
        t1 = cv2.remap(tis.t1, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        les = (cv2.remap(tis.t2, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
               if self._has_lesion else None)
        amp, alpha = t1[..., 0], t1[..., 1]
        liver_w, vessel_w = t1[..., 2], t1[..., 3]
        kw = tis.wall_w.shape[0]
        ww = tis.wall_w
        amp[:kw] = ww * tis.wall_amp + (1 - ww) * amp[:kw]
        alpha[:kw] = ww * tis.wall_alpha + (1 - ww) * alpha[:kw]
        att = np.cumsum(alpha, axis=0, dtype=np.float32)
        att *= np.float32(-g.dr)
        att += self._tgc
        shift = (round(dy / g.dr), round(dx / self._beam_px_mid))
        echo = self._bspeckle.echo(amp, shift)
        pw = power(echo)
        self.last_envelope = pw
        c = self.case
        bmode = log_compress(pw, att, c.dynamic_range_db, BMODE_LEVEL_DB)
        # CEUS: bubbles where enhanced, plus faint residual tissue signal
        e = enhancement(c, t_ceus, liver_w, vessel_w, les)
        e[:kw] *= 1 - ww * 0.9
        camp = cv2.sqrt(e + (np.float32(CEUS_TISSUE) * amp) ** 2)
        cpw = power(self._cspeckle.echo(camp))
        ceus = log_compress(cpw, att, CEUS_RANGE_DB, CEUS_LEVEL_DB)
        vb = cv2.remap(bmode, g.scan_x, g.scan_y, cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        vc = cv2.remap(ceus, g.scan_x, g.scan_y, cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        frame = cv2.cvtColor(np.concatenate((vb, vc), axis=1), cv2.COLOR_GRAY2BGR)
        cv2.bitwise_or(frame, self._overlay, dst=frame)
        draw_timer(frame, t_ceus)
        return frame, self.truth(i, t_ceus, dx, dy)

    def truth(self, i: int, t_ceus: float, dx: float, dy: float) -> dict[str, Any]:
        """Ground truth of frame ``i`` (lesion ellipse in B-mode view px, moved with it)."""
        c, les = self.case, self.case.lesion
        lesion = None if les is None else {
            "cx": round(les.cx + dx, 2), "cy": round(les.cy + dy, 2),
            "rx": round(les.rx, 2), "ry": round(les.ry, 2)}
        return {"index": i, "pts_s": i / self.fps, "label": c.label,
                "fatty_grade": c.fatty_grade, "patient_id": c.patient_id,
                "ceus_t_s": round(t_ceus, 3), "ceus_phase": ceus_phase(t_ceus), "lesion": lesion}

    def __iter__(self) -> Any:
        i = 0
        while True:
            yield self.render(i)
            i += 1


__all__ = ["Phantom"]
