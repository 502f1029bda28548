"""Drawing of the overlay: pure functions from (background, what to show) to an image, so
they are tested without sockets and reused by any display.

The panel goes *beside* the ultrasound (a column on the right), never over it: nothing the
surgeon looks at in the image is covered."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# BGR colours: green live, amber stale, grey no data; for a fresh result that is not a
# class: red model fault, magenta uncertain, blue warming up.
STATUS_COLOURS = {"LIVE": (60, 200, 60), "STALE": (0, 170, 255), "NO DATA": (150, 150, 150),
                  "MODEL FAULT": (40, 40, 220), "UNCERTAIN": (200, 80, 200),
                  "WARMING UP": (220, 150, 40)}
PANEL_W = 260
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_WHITE, _GREY = (235, 235, 235), (170, 170, 170)


@dataclass(frozen=True, slots=True)
class OverlayView:
    """What the overlay shows in one displayed frame."""

    status: str                      # a key of STATUS_COLOURS
    labels: tuple[str, ...] = ()
    probs: tuple[float, ...] = ()
    model: str = ""
    fps_out: float | None = None
    latency_ms: float | None = None  # capture -> publish of the shown result
    p99_ms: float | None = None
    age_ms: float | None = None      # since the shown result's frame was captured
    extras: tuple[str, ...] = ()     # lines about side models' results (the clip model)
    detail: str = ""                 # in place of the class: why there is none (a fault)

    def __post_init__(self) -> None:
        if self.status not in STATUS_COLOURS:
            raise ValueError(f"unknown status {self.status!r}")
        if len(self.labels) != len(self.probs):
            raise ValueError("labels and probs differ in length")


def status_badge_rect(width: int) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the status badge in an overlay image ``width`` wide (panel top)."""
    return width - PANEL_W + 12, 12, PANEL_W - 24, 36


def _text(img: np.ndarray, s: str, org: tuple[int, int], scale: float,
          colour: tuple[int, int, int], thick: int = 1) -> None:
    cv2.putText(img, s, org, _FONT, scale, colour, thick, cv2.LINE_AA)


def _pretty(label: str) -> str:
    return label.replace("_", " ")


def _wrap(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` characters, broken at spaces."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word[:width])
    return lines


def draw_overlay(background: np.ndarray, view: OverlayView) -> np.ndarray:
    """``background`` (BGR or grey) with the classification panel added on its right."""
    bg = background if background.ndim == 3 else cv2.cvtColor(background, cv2.COLOR_GRAY2BGR)
    h, w = bg.shape[:2]
    img = np.zeros((h, w + PANEL_W, 3), np.uint8)
    img[:, :w] = bg
    img[:, w:] = (32, 28, 24)
    colour = STATUS_COLOURS[view.status]
    x, y, bw, bh = status_badge_rect(img.shape[1])
    cv2.rectangle(img, (x, y), (x + bw, y + bh), colour, -1)
    _text(img, view.status, (x + 10, y + 26), 0.8, (0, 0, 0), 2)
    if view.status != "LIVE":
        cv2.rectangle(img, (0, 0), (w - 1, h - 1), colour, 3)  # the image itself is not fresh
    left, top = w + 12, y + bh + 34
    if view.labels:
        i = int(np.argmax(view.probs))
        head = _WHITE if view.status == "LIVE" else colour
        _text(img, _pretty(view.labels[i]), (left, top), 0.8, head, 2)
        _text(img, f"{view.probs[i] * 100:.0f}%", (left, top + 28), 0.7, head, 2)
        room = h - top - 90 - 20 * len(view.extras)
        row = min(24, max(14, room // max(len(view.labels), 1)))
        for k, (label, p) in enumerate(zip(view.labels, view.probs, strict=True)):
            yy = top + 44 + k * row
            _text(img, _pretty(label)[:14], (left, yy + row - 8), 0.42, _WHITE)
            bar_x = left + 122
            cv2.rectangle(img, (bar_x, yy + 4), (bar_x + 80, yy + row - 4), (70, 70, 70), -1)
            cv2.rectangle(img, (bar_x, yy + 4), (bar_x + int(80 * p), yy + row - 4),
                          (80, 180, 255) if k == i else _GREY, -1)
            _text(img, f"{p * 100:.0f}", (bar_x + 86, yy + row - 8), 0.38, _GREY)
    elif view.detail:
        for k, part in enumerate(_wrap(view.detail, 26)[:3]):
            _text(img, part, (left, top + 24 * k), 0.55, colour, 1 + (k == 0))
    else:
        _text(img, "waiting for results", (left, top), 0.55, colour)
    lines = []
    if view.fps_out is not None:
        lines.append(f"{view.fps_out:.1f} results/s")
    if view.latency_ms is not None:
        p99 = f" (p99 {view.p99_ms:.0f})" if view.p99_ms is not None else ""
        lines.append(f"latency {view.latency_ms:.0f} ms{p99}")
    if view.age_ms is not None:
        lines.append(f"frame age {view.age_ms:.0f} ms" if view.age_ms < 1000
                     else f"frame age {view.age_ms / 1000:.1f} s")
    if view.model:
        lines.append(view.model[:30])
    lines = [*view.extras, *lines]  # side models above the main model's figures
    for k, s in enumerate(reversed(lines)):
        _text(img, s, (left, h - 14 - 20 * k), 0.45, _GREY if k else _WHITE)
    return img
