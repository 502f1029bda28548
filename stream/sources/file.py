"""Replay of a recorded video file through PyAV, paced by the file's own timestamps.

Damaged files: frames the decoder rejects or flags corrupt, and the frames predicted from
them up to the next key frame, are skipped and counted (``corrupt_frames``), never handed
on; a file damaged beyond that (no decodable frame within the decode budget, more than
``max_corrupt_run`` skipped frames in a row, an unreadable container) ends in
``SourceFormatError`` within about a second, whatever PyAV raised underneath. A file cut
short (a killed recording) replays up to the cut and ends normally."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.core.errors import (
    SourceFormatError,
    SourceNotFoundError,
    SourceTimeoutError,
)
from hepascope.stream.sources.base import Pacer, SourceBase
from hepascope.stream.sources.pyav_io import (
    MAX_PIXELS,
    READ_FAILURES,
    STARVED_FACTOR,
    STARVED_SHARE,
    CheckedDecoder,
    open_container,
    video_stream,
)

log = logging.getLogger(__name__)

# PyAV applies the open timeout to probing and to stream analysis in turn, so opening
# fails at up to twice this; each read of a packet fails after READ_TIMEOUT_S. A local
# file opens and reads in milliseconds: these only stop a demuxer that scans garbage (20 MB
# of random bytes named .ts: 2.6 s to open, untimed), so that it ends within ~0.9 s.
OPEN_TIMEOUT_S = 0.3
READ_TIMEOUT_S = 0.3
DECODE_BUDGET_S = 0.9  # decoding (pacing excluded) allowed without a frame to hand on


class FileSource(SourceBase):
    """Frames of a video file in presentation order.

    ``speed`` scales the file's timestamps (2.0 plays twice as fast); ``max_rate`` ignores
    them and decodes as fast as possible; ``loop`` starts again at the end.
    ``max_corrupt_run`` and ``decode_budget_s`` bound how much damage is skipped before the
    file is given up (see the module docstring).
    """

    def __init__(self, path: str | Path, *, speed: float = 1.0, max_rate: bool = False,
                 loop: bool = False, source_id: str | None = None,
                 max_corrupt_run: int = 30, decode_budget_s: float = DECODE_BUDGET_S) -> None:
        self.path = Path(path)
        super().__init__(source_id or f"file:{self.path.name}")
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        if max_corrupt_run < 0:
            raise ValueError(f"max_corrupt_run must be >= 0, got {max_corrupt_run}")
        if decode_budget_s <= 0:
            raise ValueError(f"decode_budget_s must be > 0, got {decode_budget_s}")
        self.pacer = Pacer(None if max_rate else speed)
        self.loop = loop
        self.max_corrupt_run = max_corrupt_run
        self.decode_budget_s = decode_budget_s
        self._container: Any = None
        self._stream: Any = None
        self._decoder: CheckedDecoder | None = None
        self.fps: float | None = None

    @property
    def corrupt_frames(self) -> int:
        """Frames skipped as corrupt (or predicted from corrupt ones) so far."""
        return self._decoder.corrupt_frames if self._decoder is not None else 0

    def _open(self) -> None:
        if not self.path.is_file():
            raise SourceNotFoundError(f"{self.path}: no such file")
        t0, c0 = time.monotonic(), time.process_time()
        self._container = self._open_container(t0, c0)
        self._stream = video_stream(self._container, str(self.path))
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else None
        self._decoder = CheckedDecoder(self._container, self._stream, str(self.path),
                                       max_corrupt_run=self.max_corrupt_run,
                                       budget_s=self.decode_budget_s)
        self._decoder.restart(t0, c0)  # the first frame's budget includes opening

    def _open_container(self, t0: float, c0: float) -> Any:
        """The container, opened within the timeouts; once more with ``STARVED_FACTOR`` times
        them when the first try timed out while this process got little CPU (a loaded
        machine), since garbage keeps a demuxer busy and a starved open is merely slow."""
        # max_pixels here too: stream analysis while opening decodes a frame as well
        options = {"max_pixels": str(MAX_PIXELS)}
        try:
            return open_container(str(self.path), timeout=(OPEN_TIMEOUT_S, READ_TIMEOUT_S),
                                  options=options)
        except SourceTimeoutError:
            wall, cpu = time.monotonic() - t0, time.process_time() - c0
            if cpu >= STARVED_SHARE * wall:
                raise  # busy all along: a demuxer scanning garbage
            log.warning("%s: opening got %.2f s of CPU in %.2f s (a loaded machine); trying "
                        "again with %g s", self.path, cpu, wall, STARVED_FACTOR * OPEN_TIMEOUT_S)
        return open_container(str(self.path), options=options,
                              timeout=(STARVED_FACTOR * OPEN_TIMEOUT_S, READ_TIMEOUT_S))

    def _frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        assert self._decoder is not None  # _open ran
        index = 0
        while True:
            for image, pts in self._decoder.frames():
                if pts is None:  # no timestamps: fall back to the nominal rate
                    pts = index / (self.fps or 30.0)
                self.pacer.wait(pts)
                index += 1
                yield image, pts
            if not self.loop or index == 0:
                return
            self._rewind()

    def _rewind(self) -> None:
        try:
            self._container.seek(0)
        except READ_FAILURES as e:
            raise SourceFormatError(f"{self.path}: cannot loop: seek failed ({e})") from e
        assert self._decoder is not None
        self._decoder.restart()
        self.pacer.reset()

    def _close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
