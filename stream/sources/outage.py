"""How many frames an outage of a live stream cost: an estimate, from the stream's own
timestamps where it has them.

The naive estimate, (arrival of the first frame after the outage - arrival of the last one
before it) x the frame rate, is biased by how late each of those two frames came: the last
one before a server dies is handed on early (the connection's end flushes FFmpeg's H.264
parser, which otherwise holds each frame until the next begins) and the first ones after a
reconnect often come late (a server's preroll, a burst). Measured against frames that carry
their own index (tests/test_rtsp_outage.py, our test server and gst-rtsp-server, outages of
0.5-3 s): it overestimated by up to 4 frames per outage (-1.2% .. +11.1%; +1.3% and +4.0%
overall).

So each frame's arrival is replaced by when it would have arrived with its connection's
usual delay: ``pts + median(arrival - pts)`` over that connection's frames (2 s before the
outage; ``SETTLE_FRAMES`` after it), and the gap is divided by the frame period the pts
show (their median step), not by an arrival rate. The estimate is therefore booked once
``SETTLE_FRAMES`` frames have come after the reconnect (half a second at 30 fps), or at the
next failure or close if fewer came. Without pts (a stream whose packets carry none) it
falls back to arrival times x the rate measured before the outage. Measured the same way,
this estimate was exact in 20 of 20 outages. It cannot know about
frames the camera never made (a camera that stopped capturing while it rebooted counts its
whole downtime as lost): it counts frame periods of the stream's clock.
"""

from __future__ import annotations

import itertools
import statistics
from collections import deque
from dataclasses import dataclass

WINDOW = 60  # frames of the connection kept (2 s at 30 fps)
SETTLE_FRAMES = 15  # frames after a reconnect whose delays set the new connection's


@dataclass(frozen=True, slots=True)
class Arrival:
    t_s: float  # arrival (capture) time, monotonic seconds
    pts: float | None  # the stream's media time of the frame, seconds


def _usual_delay(frames: list[Arrival]) -> float | None:
    """Median of arrival - pts: the connection's usual delay (its media-time origin too)."""
    offsets = [f.t_s - f.pts for f in frames if f.pts is not None]
    return statistics.median(offsets) if offsets else None


def _period(frames: list[Arrival]) -> float | None:
    """Median pts step between consecutive frames, None without two of them."""
    steps = [b.pts - a.pts for a, b in itertools.pairwise(frames)
             if a.pts is not None and b.pts is not None and b.pts > a.pts]
    return statistics.median(steps) if steps else None


class LossEstimator:
    """Feed it every frame (``frame``), the start of each outage (``outage``); ``settle``
    returns the estimate for the last outage once it can be made (then None until the
    next outage)."""

    def __init__(self) -> None:
        self._current: deque[Arrival] = deque(maxlen=WINDOW)
        self._before: list[Arrival] | None = None  # the failed connection's last frames
        self._rate_before: float | None = None
        self.method: str | None = None  # how the last estimate was made: "pts" | "arrival"

    @property
    def pending(self) -> bool:
        """An outage ended (frames came again) and its estimate is not booked yet."""
        return self._before is not None and bool(self._current)

    def frame(self, t_ns: int, pts: float | None) -> int | None:
        """Book a frame; the last outage's estimate when this frame completes it."""
        self._current.append(Arrival(t_ns / 1e9, pts))
        if self._before is not None and len(self._current) >= SETTLE_FRAMES:
            return self.settle()
        return None

    def outage(self, rate_hz: float | None) -> int | None:
        """The connection failed; ``rate_hz`` is the arrival rate measured before it. Returns
        the previous outage's estimate if it was still pending."""
        lost = self.settle() if self.pending else None
        if self._current:  # a connection that failed without a frame keeps the older one
            self._before = list(self._current)
            self._rate_before = rate_hz
        self._current.clear()
        return lost

    def settle(self) -> int | None:
        """The estimate for the outage that ended, from the frames seen so far after it;
        None when there is none pending."""
        if not self.pending or self._before is None:
            return None
        before, after = self._before, list(self._current)
        self._before = None
        lost = self._from_pts(before, after)
        self.method = "pts" if lost is not None else "arrival"
        if lost is None:
            gap = max(0.0, after[0].t_s - before[-1].t_s)
            rate = self._rate_before
            lost = max(0, round(gap * rate) - 1) if rate else 0
        return lost

    @staticmethod
    def _from_pts(before: list[Arrival], after: list[Arrival]) -> int | None:
        last = before[-1]
        first = next((i for i, f in enumerate(after) if f.pts is not None), None)
        delay_b, delay_a = _usual_delay(before), _usual_delay(after)
        period = _period(before) or _period(after)
        if last.pts is None or first is None or delay_b is None or delay_a is None \
                or not period:
            return None
        pts_first = after[first].pts
        assert pts_first is not None
        gap = (pts_first + delay_a) - (last.pts + delay_b)
        # frames received before the first one with pts were not lost: subtract them
        return max(0, round(gap / period) - 1 - first)
