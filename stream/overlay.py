"""The display client: subscribes to results, draws them over a background, and writes an
MP4 (headless, the default) or shows a window.

It never falls behind: each displayed frame first drains every queued message and keeps
only the newest. Freshness is the age of the *frame* a result describes: capture ->
publish as the publisher measured it (both on its clock), plus the time since the publish,
mapped onto the local clock (``PublisherClock``), so it holds across hosts whose monotonic
clocks differ, a message that sat in a queue is never taken for a new one, and a slow
model that publishes promptly about an old frame is never LIVE. NO DATA when nothing
(result or telemetry, the heartbeat) was published for ``heartbeat_timeout_ms`` or before
the first result; STALE while the publisher lives but the newest result's frame is older
than ``stale_ms``, whatever the result's status; a fresh result that is not a class (status
model_fault, uncertain, warming_up) shows as MODEL FAULT, UNCERTAIN, WARMING UP."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from hepascope.core.errors import ConfigError, HepascopeError, RingError
from hepascope.core.messages import TOPIC_RESULT, TOPIC_TELEMETRY
from hepascope.core.video import Mp4Writer
from hepascope.stream.draw import STATUS_COLOURS, OverlayView, draw_overlay
from hepascope.stream.publish import Subscriber
from hepascope.stream.ring import RingReader
from hepascope.stream.security import ClientKeys
from hepascope.stream.sources.base import Source

log = logging.getLogger(__name__)

DEFAULT_SIZE = (384, 768)  # H, W of the background canvas before any frame arrives
CLOCK_DRIFT = 1e-4  # how much faster our clock may run than a publisher's (100 ppm)
# a fresh result's status -> what the badge says (a stale one says STALE whatever it is)
SHOWN_STATUS = {"ok": "LIVE", "model_fault": "MODEL FAULT", "uncertain": "UNCERTAIN",
                "warming_up": "WARMING UP"}


class PublisherClock:
    """Maps a publisher's ``t_publish_ns`` onto the local monotonic clock.

    The offset is the least (receipt - publish) seen: the least-delayed message. Queueing
    only makes a message look *older*, so a backlog can never make an old message look new;
    the offset may creep up by ``CLOCK_DRIFT`` so clock drift between hosts never piles up
    into false staleness. A publish time going backwards means another clock (another
    publisher): start again."""

    def __init__(self) -> None:
        self.offset: int | None = None
        self._at = 0
        self._last_pub = 0

    def observe(self, t_pub: int, rx_ns: int) -> bool:
        """Learn from a message received at ``rx_ns``; True if the clock was reset."""
        reset = self.offset is not None and t_pub < self._last_pub
        if reset:
            self.offset = None
        self._last_pub = t_pub
        delay = rx_ns - t_pub
        if self.offset is None:
            self.offset = delay
        else:
            self.offset = min(self.offset + int((rx_ns - self._at) * CLOCK_DRIFT), delay)
        self._at = rx_ns
        return reset

    def local(self, t_pub: int) -> int:
        return t_pub + (self.offset or 0)


class OverlayState:
    """Newest result per model and newest telemetry, with local publish times. The panel
    shows the main model (telemetry's ``model``; before any telemetry, the first to
    arrive), so a side model's results (the clip model) never replace it; they get a line
    each. A new publisher (another ``run_id``, ``pid`` or clock) clears the results of the
    old one; a late message of a run already replaced is ignored."""

    def __init__(self, stale_ms: float, heartbeat_timeout_ms: float = 600.0) -> None:
        if stale_ms <= 0 or heartbeat_timeout_ms <= 0:
            raise ValueError("stale_ms and heartbeat_timeout_ms must be > 0")
        self.stale_ns = int(stale_ms * 1e6)
        self.heartbeat_ns = int(heartbeat_timeout_ms * 1e6)
        # model -> (msg, local time it was published)
        self.results: dict[str, tuple[dict[str, Any], int]] = {}
        self.telemetry: dict[str, Any] | None = None
        self.clock = PublisherClock()
        self.last_heard_ns: int | None = None  # local time the newest message was published
        self.run_id: str | None = None
        self._retired: deque[str] = deque(maxlen=16)  # runs replaced by a newer one

    @property
    def main_model(self) -> str | None:
        named = (self.telemetry or {}).get("model")
        return named if named in self.results else next(iter(self.results), None)

    @property
    def result(self) -> dict[str, Any] | None:
        name = self.main_model
        return None if name is None else self.results[name][0]

    def _new_run(self, msg: dict[str, Any]) -> bool:
        """Follow a new ``run_id`` (clear what the old run said); False for a message of a
        run already replaced."""
        run = msg.get("run_id")
        if not isinstance(run, str) or run == self.run_id:
            return True
        if run in self._retired:
            return False
        if self.run_id is not None:
            self._retired.append(self.run_id)
            self.results.clear()
            self.telemetry = None
            self.clock = PublisherClock()
        self.run_id = run
        return True

    def _published(self, topic: bytes, msg: dict[str, Any], now_ns: int) -> int:
        pid = msg.get("pid") if topic == TOPIC_TELEMETRY else None
        if pid is not None and self.telemetry is not None \
                and self.telemetry.get("pid") not in (None, pid):
            self.clock.offset = None  # another process: another clock, perhaps another host
            self.results.clear()
        t_pub = msg.get("t_publish_ns")
        if not isinstance(t_pub, int):
            return now_ns  # no publish time (not from a pipeline): receipt time
        if self.clock.observe(t_pub, now_ns):
            self.results.clear()
        return min(self.clock.local(t_pub), now_ns)

    def update(self, topic: bytes, msg: dict[str, Any], now_ns: int) -> None:
        """Take a validated message received at ``now_ns`` (local monotonic)."""
        if not self._new_run(msg):
            return
        t_local = self._published(topic, msg, now_ns)
        if self.last_heard_ns is None or t_local > self.last_heard_ns:
            self.last_heard_ns = t_local
        if topic == TOPIC_RESULT:
            old = self.results.get(msg["model"])
            if old is not None and msg["stream"] == old[0]["stream"] \
                    and msg["seq"] <= old[0]["seq"]:
                return  # never replace a result by an older one
            self.results[msg["model"]] = (msg, t_local)
        elif topic == TOPIC_TELEMETRY:
            self.telemetry = msg

    def alive(self, now_ns: int) -> bool:
        """Whether the publisher was heard within the heartbeat timeout."""
        return self.last_heard_ns is not None and now_ns - self.last_heard_ns <= self.heartbeat_ns

    def frame_age_ns(self, model: str, now_ns: int) -> int:
        """How long ago the frame of ``model``'s newest result was captured: capture ->
        publish on the publisher, plus publish -> now here."""
        msg, t_local = self.results[model]
        return max(now_ns - t_local, 0) + max(msg["t_publish_ns"] - msg["t_capture_ns"], 0)

    def view(self, now_ns: int) -> OverlayView:
        if not self.alive(now_ns):
            return OverlayView("NO DATA")  # a dead publisher's figures are not shown either
        tel = self.telemetry or {}
        name = self.main_model
        if name is None:
            return OverlayView("NO DATA", fps_out=tel.get("fps_out"))
        r = self.results[name][0]
        age_ns = self.frame_age_ns(name, now_ns)
        kind = r.get("status", "ok")
        status = "STALE" if age_ns > self.stale_ns else SHOWN_STATUS.get(kind, "STALE")
        extras = tuple(line for other in self.results if other != name
                       for line in _side_lines(self.results[other][0],
                                               self.frame_age_ns(other, now_ns) / 1e9))
        shown = kind == "ok"  # no class, no percentage for any other status
        return OverlayView(status, tuple(r["labels"]) if shown else (),
                           tuple(float(p) for p in r["probs"]) if shown else (),
                           model=r["model"], fps_out=tel.get("fps_out"),
                           latency_ms=r["latency_ms"].get("total"),
                           p99_ms=tel.get("latency_p99_ms"), age_ms=age_ns / 1e6,
                           extras=extras, detail="" if shown else _detail(r))


def _detail(msg: dict[str, Any]) -> str:
    """The panel's line in place of the class for a result that is not one."""
    status = SHOWN_STATUS.get(msg.get("status", ""), "").lower()
    fault = msg.get("fault")
    return f"{status}: {fault}" if isinstance(fault, str) and fault else status


def _side_lines(msg: dict[str, Any], age_s: float) -> tuple[str, str]:
    """Two panel lines for a side model's newest result: its verdict, then how full its
    window was and how old its frame is (it runs every k frames: age, not STALE)."""
    fill = msg.get("window_fill")
    window = f"window {fill * 100:.0f}%, " if isinstance(fill, (int, float)) else ""
    probs = msg["probs"]
    if msg.get("status", "ok") != "ok" or not probs:
        verdict = SHOWN_STATUS.get(msg.get("status", ""), "?")
    else:
        i = max(range(len(probs)), key=probs.__getitem__)
        verdict = f"{msg['labels'][i][:12]} {probs[i] * 100:.0f}%"
    return f"{msg['model'][:16]}: {verdict}", f"  {window}{age_s:.1f} s ago"


class Redial:
    """When to reconnect while nothing is heard: after 1 s, then doubling up to 30 s (a
    rejected CURVE client must not flood the publisher's log); reset once heard again."""

    def __init__(self, first_s: float = 1.0, max_s: float = 30.0) -> None:
        self._first, self._max = int(first_s * 1e9), int(max_s * 1e9)
        self._wait = self._first
        self._since: int | None = None

    def due(self, alive: bool, now_ns: int) -> bool:
        if alive:
            self._since, self._wait = None, self._first
            return False
        if self._since is None:
            self._since = now_ns
        if now_ns - self._since < self._wait:
            return False
        self._since, self._wait = now_ns, min(2 * self._wait, self._max)
        return True


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
        except (RingError, ValueError) as e:  # remote publisher: no shared memory here
            if len(self._ring_failed) >= 256:  # a flood of names: forget, do not grow
                self._ring_failed.clear()
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


def _open_log(out: Path) -> IO[str]:
    """The per-frame log beside ``out`` (``<out>.jsonl``), creating ``out``'s folder."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return out.with_suffix(out.suffix + ".jsonl").open("w")
    except OSError as e:
        raise ConfigError(f"cannot write the overlay to {out}: {e.strerror or e}"
                          f"{f' ({e.filename})' if e.filename else ''}") from e


def _log_line(frame: int, view: OverlayView, state: OverlayState, malformed: int) -> str:
    """One displayed frame in the ``.jsonl`` log: what it showed and about which result."""
    top = view.labels[int(np.argmax(view.probs))] if view.probs else None
    seq = state.result["seq"] if state.result else None
    return json.dumps({"frame": frame, "status": view.status, "top": top, "seq": seq,
                       "age_ms": view.age_ms, "run_id": state.run_id,
                       "malformed": malformed}) + "\n"


def _pace(sub: Subscriber, next_tick: float) -> float:
    """Wait for the next display tick, waking early only to drain (pacing stays fixed);
    the tick after, or now when we fell behind (no catching up)."""
    delay = next_tick - time.monotonic()
    if delay <= 0:
        return time.monotonic()
    sub.poll(int(delay * 1000))
    rest = next_tick - time.monotonic()
    if rest > 0:
        time.sleep(rest)
    return next_tick


def _open_outputs(endpoint: str, *, out: Path | None, window: bool,
                  keys: ClientKeys | None) -> tuple[Subscriber, IO[str] | None]:
    """The window (if asked), the per-frame log (with ``out``) and the subscription, in
    that order; the log is closed again if subscribing fails."""
    if window:
        try:
            cv2.namedWindow("hepascope", cv2.WINDOW_NORMAL)
        except cv2.error as e:
            raise HepascopeError("--window needs OpenCV built with GUI support "
                                 "(pip install opencv-python instead of -headless)") from e
    log_file = _open_log(out) if out is not None else None
    try:
        sub = Subscriber(endpoint, keys=keys)
    except BaseException:
        if log_file is not None:
            log_file.close()
        raise
    return sub, log_file


def run_overlay(endpoint: str, *, out: Path | None, window: bool, background: Source | None,
                stale_ms: float, fps: float, duration_s: float | None,
                stop: threading.Event, heartbeat_timeout_ms: float = 600.0,
                keys: ClientKeys | None = None) -> dict[str, Any]:
    """Display loop at ``fps`` until ``duration_s`` or ``stop``; returns a summary
    (frames per status, messages received, malformed ones dropped). With ``out``, also
    writes ``<out>.jsonl``: per displayed frame, status, label, frame age, run id, malformed
    messages so far (``out``'s folder is created; if it cannot be, one ``ConfigError``).
    With ``keys``, subscribes over CURVE to the pinned publisher key only."""
    sub, log_file = _open_outputs(endpoint, out=out, window=window, keys=keys)
    state = OverlayState(stale_ms, heartbeat_timeout_ms)
    redial = Redial()
    bg = Background(background)
    writer: Mp4Writer | None = None
    counts = {"frames": 0, **dict.fromkeys(STATUS_COLOURS, 0)}
    period = 1.0 / fps  # display ticks, by _pace
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
            if redial.due(state.alive(now), now):
                sub.reconnect()
            img = draw_overlay(bg.image(), view)
            counts["frames"] += 1
            counts[view.status] += 1
            if out is not None:
                if writer is None:
                    writer = Mp4Writer(out, fps, img.shape[1], img.shape[0], crf=23)
                writer.write(img)
            if log_file is not None:  # flushed per line: readable live, kept on a crash
                log_file.write(_log_line(counts["frames"] - 1, view, state, sub.malformed))
                log_file.flush()
            if window:
                cv2.imshow("hepascope", img)
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    break
            next_tick = _pace(sub, next_tick + period)
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
            "reconnects": sub.reconnects, "out": str(out) if out else None}
