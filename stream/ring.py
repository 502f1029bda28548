"""The shared-memory frame ring: one writer, many readers, across processes.

The grabber process owns a :class:`RingWriter`; inference, recorder and viewer processes
each attach a :class:`RingReader` by name. The writer never blocks: when the ring is full
it overwrites the oldest slot. Readers ask either for the newest frame (:meth:`latest`,
what inference wants) or for every frame in order (:meth:`next`, what a recorder wants);
frames a slow reader missed are counted in :attr:`RingReader.drops`. A frame overwritten
while a reader copies it is detected (seqlock) and never returned torn.

A ring has generations: when the frames change size (a scanner switching depth or preset),
the writer starts a new generation sized for them under the same name
(:meth:`RingWriter.new_generation`) and marks the old one superseded. Readers follow by
themselves: :meth:`RingReader.next` finishes the old generation first, then re-opens the
name; nobody has to tell them. A reader that attaches later finds the newest generation.

The writer lives in ``hepascope.stream.ring_writer`` and is re-exported here. The work is
done by the native module ``hepascope.stream.ring_native`` (C++20, nanobind, POSIX
shared memory); this wrapper speaks :class:`~hepascope.core.frame.Frame` and raises
:class:`~hepascope.core.errors.RingError`. Every frame a reader returns owns a fresh copy
of the pixels: it never aliases shared memory, so keeping it is always safe.

Example::

    with RingWriter("probe0", slots=8, slot_bytes=slot_bytes_for(600, 800)) as ring:
        for frame in source:
            ring.write(frame)

    with RingReader("probe0") as ring:          # in another process
        while (frame := ring.next(timeout_s=1.0)) is not None:
            ...
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial
from typing import Literal, TypeVar

from hepascope.core.errors import RingError
from hepascope.core.frame import Frame
from hepascope.stream.ring_owner import owner_alive
from hepascope.stream.ring_writer import MAX_SOURCE_ID_BYTES as MAX_SOURCE_ID_BYTES
from hepascope.stream.ring_writer import (
    RingWriter,
    require_native,
    ring_native,
    shm_name,
    slot_bytes_for,
)

__all__ = ["RingReader", "RingWriter", "slot_bytes_for"]

# Wait slice of ``RingReader.next(timeout_s=None)``: the GIL is released while the native
# code polls, and between slices Python gets to run signal handlers (Ctrl-C).
_WAIT_SLICE_S = 0.1
_T = TypeVar("_T")


class RingReader:
    """Attaches to the ring ``name`` (read-only) and reads frames from it.

    ``start="latest"``: :meth:`next` begins with the first frame written after attaching;
    ``start="oldest"``: with the oldest frame still in the ring. Each reader has its own
    cursor and its own counters; readers never slow the writer or each other. It follows
    the ring's generations by itself (see the module docstring): ``written``, ``drops`` and
    ``torn`` count across them. Raises :class:`RingError` if no such ring exists, and
    whenever the segment is inconsistent (forged or corrupt), never another exception.
    """

    def __init__(self, name: str, *, start: Literal["latest", "oldest"] = "latest") -> None:
        shm = shm_name(name)
        if start not in ("latest", "oldest"):
            raise ValueError(f"start must be 'latest' or 'oldest', got {start!r}")
        require_native()
        self._name, self._shm = shm[1:], shm
        self._r = self._attach(start == "oldest")
        # frames written to earlier generations; drops and torn copies of the generations
        # this reader left behind; _gone: the newest one was removed too
        self._before = int(self._r.frames_before)
        self._drops_before = self._torn_before = 0
        self._gone = False
        self._held: ring_native.FrameTuple | None = None  # see _follow()

    def _attach(self, from_oldest: bool) -> ring_native.Reader:
        try:
            return ring_native.Reader(self._shm, from_oldest)
        except (RuntimeError, OSError) as exc:
            raise RingError(str(exc)) from None

    def _follow(self, drain: bool) -> bool:
        """Attach the next generation if this one was superseded (and, with ``drain``, read
        to its end): True if the reader moved on."""
        r = self._r
        if self._gone or not self._call(lambda: bool(r.superseded)):
            return False
        if drain and int(r.cursor) < self._call(lambda: int(r.written)):
            return False  # frames of the old generation still to hand out, in order
        try:
            new = ring_native.Reader(self._shm, True)
        except ring_native.NotFoundError:  # the newer generation has ended and gone as well
            self._gone = True
            return False
        except (RuntimeError, OSError) as exc:
            raise RingError(str(exc)) from None
        if int(new.generation) <= int(r.generation):
            new.close()
            raise RingError(f"ring {self._name!r} was replaced by another writer (generation "
                            f"{new.generation} after {r.generation}): re-attach")
        # latest() has a newest frame to give until the new generation has one
        self._held = None if drain else self._call(r.latest)
        if drain:  # frames of generations skipped, and of the new one already overwritten
            seen = self._before + self._call(lambda: int(r.written))
            self._drops_before += max(0, int(new.frames_before) - seen) + int(new.cursor)
        self._drops_before += int(r.drops)
        self._before = int(new.frames_before)
        self._torn_before += int(r.torn)
        r.close()
        self._r = new
        return True

    @property
    def name(self) -> str:
        """The ring's name (without the leading '/')."""
        return self._name

    @property
    def slots(self) -> int:
        return int(self._r.slots)

    @property
    def slot_bytes(self) -> int:
        return int(self._r.slot_bytes)

    @property
    def generation(self) -> int:
        """The generation this reader is on (0 until the writer's first new_generation)."""
        return int(self._r.generation)

    @property
    def drops(self) -> int:
        """Frames :meth:`next` skipped: overrun by the writer (this reader fell more than
        ``slots`` frames behind) or overwritten while being copied. Frames skipped on
        purpose by :meth:`latest` are not drops."""
        return self._drops_before + int(self._r.drops)

    @property
    def torn(self) -> int:
        """Copies thrown away because the writer rewrote the slot during the copy (by
        :meth:`next`, where each also counts as a drop, or :meth:`latest`, which retries)."""
        return self._torn_before + int(self._r.torn)

    @property
    def written(self) -> int:
        """Frames the writer has written so far (the generations this reader went through
        and the current one)."""
        return self._before + self._call(lambda: int(self._r.written))

    @property
    def writer_closed(self) -> bool:
        """True once the writer has closed the ring: after :meth:`next` returns None, no
        more frames will come. A generation superseded by a newer one is not closed."""
        if self._gone:
            return True
        r = self._r
        # closed first (acquire): a supersede() before the close is then visible too
        return self._call(lambda: bool(r.writer_closed) and not bool(r.superseded))

    @property
    def writer_alive(self) -> bool:
        """False when the process that created the ring is gone (or its pid was reused),
        whether or not it closed the ring; True when alive or when it cannot be told."""
        pid, start, pidns = self._r.owner
        return owner_alive(int(pid), int(start), int(pidns)) is not False

    @property
    def writer_pid(self) -> int:
        """The pid of the process that created the ring (its current generation)."""
        return int(self._r.owner[0])

    @property
    def closed(self) -> bool:
        return bool(self._r.closed)

    def latest(self) -> Frame | None:
        """The newest complete frame, or None if nothing was written yet. Never waits.

        May return the same frame again if nothing new arrived (compare ``seq``). Moves
        this reader's :meth:`next` cursor past the returned frame.
        """
        self._follow(drain=False)  # the newest frame is in the newest generation
        got = self._call(self._r.latest)
        if got is None:
            got = self._held
        else:
            self._held = None
        return None if got is None else self._frame(got)

    def next(self, timeout_s: float | None = None) -> Frame | None:
        """The frame after the last one this reader returned, in write order.

        Waits up to ``timeout_s`` seconds for it (``0``: do not wait; ``None``: wait until
        one comes; any size, ``inf`` included) and returns None on timeout. If the writer
        lapped this reader, skips to the oldest frame still in the ring and adds the
        skipped frames to :attr:`drops`. The wait goes in slices, so that Python handles
        signals (Ctrl-C) between them and a new generation is followed during it.
        """
        if timeout_s is not None and (not isinstance(timeout_s, (int, float))
                                      or math.isnan(timeout_s) or timeout_s < 0):
            raise ValueError(f"timeout_s must be None or >= 0, got {timeout_s!r}")
        deadline = None if timeout_s is None else time.monotonic() + float(timeout_s)
        while True:
            left = _WAIT_SLICE_S if deadline is None else deadline - time.monotonic()
            wait = max(0.0, min(_WAIT_SLICE_S, left))
            got = self._call(partial(self._r.next, wait))
            if got is not None:
                return self._frame(got)
            if self._follow(drain=True):
                continue
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def close(self) -> None:
        """Unmaps the ring. Idempotent. Frames already returned stay valid."""
        self._r.close()

    def _call(self, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except RuntimeError as exc:
            raise RingError(f"ring {self._name!r}: {exc}") from None

    def _frame(self, got: ring_native.FrameTuple) -> Frame:
        try:
            return _to_frame(got)
        except (TypeError, ValueError) as exc:  # metadata that passed the native bounds
            raise RingError(f"ring {self._name!r} holds a corrupt frame: {exc}") from None

    def __enter__(self) -> RingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"drops={self.drops}"
        return f"RingReader({self._name!r}, slots={self.slots}, {state})"


def _to_frame(got: ring_native.FrameTuple) -> Frame:
    image, seq, t_capture_ns, pts, source_id = got
    return Frame(image=image, seq=seq, t_capture_ns=t_capture_ns, source_id=source_id, pts_s=pts)
