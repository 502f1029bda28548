"""Burned-in scanner annotations, drawn only outside the sector, as on screen captures.

The static layer (scanner/probe text, depth scales, grey bar, orientation marker) is the
same for every patient and class and is rendered once; per frame only the CEUS timer
patch changes (cached by its text). Nothing here depends on the case, so annotations
carry no label information.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from hepascope.core.geometry import (
    PHANTOM_BMODE,
    PHANTOM_CEUS,
    PHANTOM_SCREEN_H,
    PHANTOM_SCREEN_W,
    PHANTOM_SECTOR,
)

FONT = cv2.FONT_HERSHEY_SIMPLEX
TEXT = (225, 225, 225)
ACCENT = (120, 215, 235)  # pale yellow (BGR), common on scanner UIs
DEPTH_CM = 16.0
TIMER_BOX = (6, 352, 150, 380)  # x0, y0, x1, y1 inside the CEUS pane, below the sector


def _put(img: np.ndarray, text: str, x: int, y: int, scale: float = 0.36,
         color: tuple[int, int, int] = TEXT) -> None:
    cv2.putText(img, text, (x, y), FONT, scale, color, 1, cv2.LINE_AA)


def _depth_scale(pane: np.ndarray) -> None:
    g = PHANTOM_SECTOR
    y0 = g.apex_y + g.r_min
    px_cm = (g.r_max - g.r_min) / DEPTH_CM
    x = pane.shape[1] - 10
    cv2.line(pane, (x, round(y0)), (x, round(y0 + DEPTH_CM * px_cm)), (150, 150, 150), 1)
    for cm in range(int(DEPTH_CM) + 1):
        y = round(y0 + cm * px_cm)
        tick = 5 if cm % 5 == 0 else 3
        cv2.line(pane, (x, y), (x + tick, y), (200, 200, 200), 1)
        if cm % 5 == 0 and cm:
            _put(pane, str(cm), x - (15 if cm >= 10 else 9), y + 4, 0.3)
    # focus marker
    yf = round(y0 + 9 * px_cm)
    pts = np.array([[x - 2, yf], [x - 8, yf - 4], [x - 8, yf + 4]], np.int32)
    cv2.fillPoly(pane, [pts], ACCENT, cv2.LINE_AA)


def _pane(title: str, lines: list[str], right: list[str], bottom: list[str]) -> np.ndarray:
    pane = np.zeros((PHANTOM_BMODE.h, PHANTOM_BMODE.w, 3), np.uint8)
    _put(pane, title, 6, 14, 0.42, ACCENT)
    for k, s in enumerate(lines):
        _put(pane, s, 6, 30 + 13 * k)
    for k, s in enumerate(right):
        (tw, _), _ = cv2.getTextSize(s, FONT, 0.36, 1)
        _put(pane, s, pane.shape[1] - 8 - tw, 14 + 13 * k)
    for k, s in enumerate(bottom):
        _put(pane, s, 6, 330 + 13 * k)
    _depth_scale(pane)
    # grey map bar on the left edge, below the text block
    bar = np.linspace(255, 0, 80).astype(np.uint8)[:, None]
    pane[170:250, 6:12] = bar[:, :, None]
    # probe orientation marker beside the top-left of the sector
    cv2.circle(pane, (150, 10), 3, ACCENT, -1, cv2.LINE_AA)
    return pane


@functools.lru_cache(maxsize=1)
def static_overlay() -> np.ndarray:
    """(H, W, 3) BGR layer, zero wherever the sector is (read-only)."""
    img = np.zeros((PHANTOM_SCREEN_H, PHANTOM_SCREEN_W, 3), np.uint8)
    b = _pane("HEPASCOPE", ["C5-1  3.5MHz", "Abd / Liver", "THI  Pen"],
              ["FR 30", "D 16.0", "G 52", "DR 60"], ["B", "2D  AO 100%"])
    c = _pane("CEUS", ["C5-1  3.0MHz", "Low MI 0.08", "Contrast"],
              ["FR 30", "D 16.0", "G 60", "DR 45"], ["CPS"])
    PHANTOM_BMODE.crop(img)[:] = b
    PHANTOM_CEUS.crop(img)[:] = c
    mask = PHANTOM_SECTOR.mask(PHANTOM_BMODE.h, PHANTOM_BMODE.w) > 0
    for rect in (PHANTOM_BMODE, PHANTOM_CEUS):
        rect.crop(img)[mask] = 0
    img.setflags(write=False)
    return img


def timer_text(t_s: float) -> str:
    """Contrast timer as the scanner shows it (same format for every class)."""
    t = max(0, int(t_s))
    return f"CEUS  {t // 60:02d}:{t % 60:02d}"


@functools.lru_cache(maxsize=512)
def timer_patch(text: str) -> np.ndarray:
    """Pre-rendered timer box (BGR) for ``text``."""
    x0, y0, x1, y1 = TIMER_BOX
    patch = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
    _put(patch, text, 2, patch.shape[0] - 8, 0.45, ACCENT)
    patch.setflags(write=False)
    return patch


def draw_timer(frame: np.ndarray, t_s: float) -> None:
    """Blit the contrast timer into the CEUS pane of a full frame."""
    x0, y0, x1, y1 = TIMER_BOX
    ox = PHANTOM_CEUS.x
    frame[y0:y1, ox + x0:ox + x1] = timer_patch(timer_text(t_s))
