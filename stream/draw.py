"""Drawing of the overlay: pure functions from (background, what to show) to an image, so
they are tested without sockets and reused by any display."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# BGR colours: green live, amber stale, grey no data.
STATUS_COLOURS = {"LIVE": (60, 200, 60), "STALE": (0, 170, 255), "NO DATA": (150, 150, 150)}
_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True, slots=True)
class OverlayView:
    """What the overlay shows in one displayed frame."""

    status: str                      # LIVE | STALE | NO DATA
    labels: tuple[str, ...] = ()
    probs: tuple[float, ...] = ()
    model: str = ""
    fps_out: float | None = None
    latency_ms: float | None = None  # capture -> publish of the shown result
    p99_ms: float | None = None
    age_ms: float | None = None      # since the shown result was received

    def __post_init__(self) -> None:
        if self.status not in STATUS_COLOURS:
            raise ValueError(f"unknown status {self.status!r}")
        if len(self.labels) != len(self.probs):
            raise ValueError("labels and probs differ in length")


def _text(img: np.ndarray, s: str, org: tuple[int, int], scale: float,
          colour: tuple[int, int, int], thick: int = 1) -> None:
    cv2.putText(img, s, org, _FONT, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(img, s, org, _FONT, scale, colour, thick, cv2.LINE_AA)


def status_badge_rect(width: int) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the status badge: top-right corner; tests read its colour."""
    return width - 132, 8, 124, 28


def draw_overlay(background: np.ndarray, view: OverlayView) -> np.ndarray:
    """A copy of ``background`` (BGR) with the classification panel and status drawn on."""
    if background.ndim == 3:
        img = background.copy()
    else:
        img = cv2.cvtColor(background, cv2.COLOR_GRAY2BGR)
    h, w = img.shape[:2]
    colour = STATUS_COLOURS[view.status]
    x, y, bw, bh = status_badge_rect(w)
    cv2.rectangle(img, (x, y), (x + bw, y + bh), colour, -1)
    cv2.putText(img, view.status, (x + 8, y + 20), _FONT, 0.55, (0, 0, 0), 2, cv2.LINE_AA)

    panel_w, row = 250, 18
    n = len(view.labels)
    panel_h = 58 + row * n
    roi = img[h - panel_h - 8 : h - 8, 8 : 8 + panel_w]
    roi[:] = (roi * 0.35).astype(np.uint8)  # darken under the text for legibility
    top = h - panel_h - 8
    if n:
        i = int(np.argmax(view.probs))
        head_colour = (255, 255, 255) if view.status == "LIVE" else colour
        _text(img, f"{view.labels[i]}  {view.probs[i] * 100:.0f}%", (16, top + 22), 0.65,
              head_colour, 2)
        for k, (label, p) in enumerate(zip(view.labels, view.probs, strict=True)):
            yy = top + 34 + k * row
            cv2.rectangle(img, (110, yy + 3), (110 + int(130 * p), yy + row - 3),
                          (80, 180, 255) if k == i else (160, 160, 160), -1)
            _text(img, f"{label[:12]:<12}", (16, yy + row - 5), 0.4, (230, 230, 230))
    else:
        _text(img, "waiting for results", (16, top + 22), 0.55, colour)
    parts = []
    if view.fps_out is not None:
        parts.append(f"{view.fps_out:.1f} res/s")
    if view.latency_ms is not None:
        parts.append(f"lat {view.latency_ms:.0f} ms")
    if view.p99_ms is not None:
        parts.append(f"p99 {view.p99_ms:.0f}")
    if view.age_ms is not None and view.status != "LIVE":
        parts.append(f"age {view.age_ms / 1000:.1f} s")
    _text(img, "  ".join(parts), (16, h - 16), 0.42, (230, 230, 230))
    if view.model:
        _text(img, view.model[:40], (16, top - 6), 0.4, (200, 200, 200))
    return img
