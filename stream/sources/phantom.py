"""Live synthetic ultrasound: the phantom's dual-view session as a paced, endless source.

Frames are identical to ``write_session`` for the same seed/fps/segment_s (before H.264),
``pts_s = i / fps``; ``last_truth`` holds the ground truth of the last frame handed on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from hepascope.phantom.session import iter_session
from hepascope.stream.sources.base import Pacer, SourceBase


class PhantomSource(SourceBase):
    """Endless phantom session paced at ``fps`` (``max_rate`` renders as fast as it can)."""

    def __init__(self, seed: int, *, fps: float = 30.0, segment_s: float = 10.0,
                 max_rate: bool = False, source_id: str | None = None) -> None:
        super().__init__(source_id or f"phantom:{seed}")
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if segment_s <= 0:
            raise ValueError(f"segment_s must be > 0, got {segment_s}")
        self.seed, self.fps, self.segment_s = int(seed), float(fps), float(segment_s)
        self.pacer = Pacer(None if max_rate else 1.0)
        self.last_truth: dict[str, Any] | None = None
        self._gen: Iterator[tuple[np.ndarray, dict[str, Any]]] | None = None

    def _open(self) -> None:
        self._gen = iter_session(self.seed, self.fps, self.segment_s, None)
        self.pacer.reset()
        self.last_truth = None

    def _frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        gen = self._gen
        if gen is None:
            return
        for image, truth in gen:
            pts = float(truth["pts_s"])
            self.pacer.wait(pts)
            self.last_truth = truth
            yield image, pts

    def _close(self) -> None:
        if self._gen is not None:
            close = getattr(self._gen, "close", None)
            if close is not None:
                close()
            self._gen = None
