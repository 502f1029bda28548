"""The display client: subscribes to results, draws them over a background, and writes an
MP4 (headless, the default) or shows a window.

It never falls behind: each displayed frame first drains every queued message and keeps
only the newest. Freshness is judged by when a result was *received* here, so it holds
across hosts whose monotonic clocks differ: NO DATA before the first result, STALE once the
newest is older than ``stale_ms``."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hepascope.stream.draw import OverlayView, draw_overlay
from hepascope.stream.errors import HepascopeError, RingError
from hepascope.stream.messages import TOPIC_RESULT, TOPIC_TELEMETRY
from hepascope.stream.publish import Subscriber
from hepascope.stream.ring import RingReader
from hepascope.stream.sources.base import Source
from hepascope.stream.video import Mp4Writer

log = logging.getLogger(__name__)

DEFAULT_SIZE = (384, 768)  # H, W of the background canvas before any frame arrives


class OverlayState:
    """Newest result per model and newest telemetry, with local receipt times. The panel
    shows the main model (telemetry's ``model``; before any telemetry, the first to
    arrive), so a side model's results (the clip model) never replace it; they get a line
    each."""

    def __init__(self, stale_ms: float) -> None:
        if stale_ms <= 0:
            raise ValueError("stale_ms must be > 0")
        self.stale_ns = int(stale_ms * 1e6)
        self.results: dict[str, tuple[dict[str, Any], int]] = {}  # model -> (msg, rx ns)
        self.telemetry: dict[str, Any] | None = None

    @property
    def main_model(self) -> str | None:
        named = (self.telemetry or {}).get("model")
        return named if named in self.results else next(iter(self.results), None)

    @property
    def result(self) -> dict[str, Any] | None:
        name = self.main_model
        return None if name is None else self.results[name][0]

    def update(self, topic: bytes, msg: dict[str, Any], now_ns: int) -> None:
        if topic == TOPIC_RESULT:
            old = self.results.get(msg["model"])
            if old is not None and msg["stream"] == old[0]["stream"] \
                    and msg["seq"] <= old[0]["seq"]:
                return  # never replace a result by an older one
            self.results[msg["model"]] = (msg, now_ns)
        elif topic == TOPIC_TELEMETRY:
            self.telemetry = msg

    def view(self, now_ns: int) -> OverlayView:
        tel = self.telemetry or {}
        name = self.main_model
        if name is None:
            return OverlayView("NO DATA", fps_out=tel.get("fps_out"))
        r, rx_ns = self.results[name]
        age_ms = (now_ns - rx_ns) / 1e6
        status = "STALE" if now_ns - rx_ns > self.stale_ns else "LIVE"
        extras = tuple(line for other, (m, rx) in self.results.items() if other != name
                       for line in _side_lines(m, (now_ns - rx) / 1e9))
        return OverlayView(status, tuple(r["labels"]), tuple(float(p) for p in r["probs"]),
                           model=r["model"], fps_out=tel.get("fps_out"),
                           latency_ms=r["latency_ms"].get("total"),
                           p99_ms=tel.get("latency_p99_ms"), age_ms=age_ms, extras=extras)


def _side_lines(msg: dict[str, Any], age_s: float) -> tuple[str, str]:
    """Two panel lines for a side model's newest result: its verdict, then how full its
    window was and how old the result is (it runs every k frames: age, not STALE)."""
    probs = msg["probs"]
    i = max(range(len(probs)), key=probs.__getitem__)
    fill = msg.get("window_fill")
    window = f"window {fill * 100:.0f}%, " if isinstance(fill, (int, float)) else ""
    return (f"{msg['model'][:16]}: {msg['labels'][i][:12]} {probs[i] * 100:.0f}%",
            f"  {window}{age_s:.1f} s ago")


class Background:
    """The newest background image: from a source in a thread, or from the pipeline's
    frame ring (named in its telemetry), or black."""

    def __init__(self, source: Source | None) -> None:
        self._image: np.ndarray | None = None
        self._reader: RingReader | None = None
        self._ring_failed: set[str] = set()
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = None
        if source is not None:
            self._thread = threading.Thread(target=self._pump, args=(source,), daemon=True,
                                            name="hepascope-overlay-bg")
            self._thread.start()

    def _pump(self, source: Source) -> None:
        try:
            with source:
                for frame in source:
                    self._image = frame.bgr()
                    if self._stop.is_set():
                        return
        except HepascopeError as e:
            self.error = e
            log.error("background source failed: %s", e)

    def follow_ring(self, name: str) -> None:
        if self._thread is not None or name in self._ring_failed:
            return
        if self._reader is not None and self._reader.name == name:
            return
        try:
            reader = RingReader(name)
        except RingError as e:  # remote publisher: no shared memory here
            self._ring_failed.add(name)
            log.info("no local frame ring %s (%s): black background", name, e)
            return
        if self._reader is not None:
            self._reader.close()
        self._reader = reader

    def image(self) -> np.ndarray:
        if self._reader is not None:
            frame = self._reader.latest()
            if frame is not None:
                self._image = frame.bgr()
        if self._image is None:
            return np.zeros((*DEFAULT_SIZE, 3), np.uint8)
        return self._image

    def close(self) -> None:
        self._stop.set()
        if self._reader is not None:
            self._reader.close()


def run_overlay(endpoint: str, *, out: Path | None, window: bool, background: Source | None,
                stale_ms: float, fps: float, duration_s: float | None,
                stop: threading.Event) -> dict[str, Any]:
    """Display loop at ``fps`` until ``duration_s`` or ``stop``; returns a summary. With
    ``out``, also writes ``<out>.jsonl``: per displayed frame, status, label, ages."""
    if window:
        try:
            cv2.namedWindow("hepascope", cv2.WINDOW_NORMAL)
        except cv2.error as e:
            raise HepascopeError("--window needs OpenCV built with GUI support "
                                 "(pip install opencv-python instead of -headless)") from e
    sub = Subscriber(endpoint)
    state = OverlayState(stale_ms)
    bg = Background(background)
    writer: Mp4Writer | None = None
    log_file = out.with_suffix(out.suffix + ".jsonl").open("w") if out is not None else None
    counts = {"frames": 0, "LIVE": 0, "STALE": 0, "NO DATA": 0}
    period = 1.0 / fps
    t_end = None if duration_s is None else time.monotonic() + duration_s
    next_tick = time.monotonic()
    try:
        while not stop.is_set() and (t_end is None or time.monotonic() < t_end):
            now = time.monotonic_ns()
            for topic, msg in sub.drain():
                state.update(topic, msg, now)
            if state.telemetry and isinstance(state.telemetry.get("ring"), str):
                bg.follow_ring(state.telemetry["ring"])
            view = state.view(now)
            img = draw_overlay(bg.image(), view)
            counts["frames"] += 1
            counts[view.status] += 1
            if out is not None:
                if writer is None:
                    writer = Mp4Writer(out, fps, img.shape[1], img.shape[0], crf=23)
                writer.write(img)
            if log_file is not None:
                top = view.labels[int(np.argmax(view.probs))] if view.probs else None
                seq = state.result["seq"] if state.result else None
                log_file.write(json.dumps({"frame": counts["frames"] - 1, "status": view.status,
                                           "top": top, "seq": seq, "age_ms": view.age_ms}) + "\n")
            if window:
                cv2.imshow("hepascope", img)
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    break
            next_tick += period
            delay = next_tick - time.monotonic()
            if delay > 0:
                sub.poll(int(delay * 1000))  # wake early only to drain; pacing stays fixed
                rest = next_tick - time.monotonic()
                if rest > 0:
                    time.sleep(rest)
            else:
                next_tick = time.monotonic()  # fell behind: do not try to catch up
    finally:
        if writer is not None:
            writer.close()
        if log_file is not None:
            log_file.close()
        bg.close()
        sub.close()
        if window:
            cv2.destroyAllWindows()
    return {**counts, "received": sub.received, "malformed": sub.malformed,
            "out": str(out) if out else None}
