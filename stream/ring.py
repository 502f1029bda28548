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

The work is done by the native module ``hepascope.stream.ring_native`` (C++20, nanobind, POSIX
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

import atexit
import math
import time
import weakref
from collections.abc import Callable
from functools import partial
from typing import Literal, TypeVar

from hepascope.core.errors import RingError
from hepascope.core.frame import Frame
from hepascope.stream.ring_owner import owner_alive, this_process

try:
    from hepascope.stream import ring_native
except ImportError as exc:  # not built: import still works, using a ring says how to fix
    ring_native = None
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None

__all__ = ["RingReader", "RingWriter", "slot_bytes_for"]

#: Longest ``Frame.source_id`` a ring slot stores (UTF-8 bytes).
MAX_SOURCE_ID_BYTES = 63
# Wait slice of ``RingReader.next(timeout_s=None)``: the GIL is released while the native
# code polls, and between slices Python gets to run signal handlers (Ctrl-C).
_WAIT_SLICE_S = 0.1


def slot_bytes_for(height: int, width: int, channels: int = 3) -> int:
    """Pixel bytes one slot needs to hold a ``height`` x ``width`` x ``channels`` frame."""
    for label, v in (("height", height), ("width", width), ("channels", channels)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{label} must be a positive int, got {v!r}")
    return height * width * channels


def _shm_name(name: str) -> str:
    """``name`` as shm_open wants it: exactly one leading '/', no other '/'."""
    if not isinstance(name, str):
        raise TypeError(f"ring name must be a str, got {type(name).__name__}")
    bare = name[1:] if name.startswith("/") else name
    if not bare or "/" in bare or "\0" in bare or len(bare.encode()) > 250:
        raise ValueError(
            f"invalid ring name {name!r}: use 1-250 characters without '/' (e.g. 'probe0')"
        )
    return "/" + bare


_T = TypeVar("_T")


def _require_native() -> None:
    if ring_native is None:
        raise RingError(
            "the native ring extension hepascope.stream.ring_native is not built "
            f"({_IMPORT_ERROR}); build it with CMake or pip install the package"
        )


_OPEN_WRITERS: weakref.WeakSet[RingWriter] = weakref.WeakSet()


@atexit.register
def _close_open_writers() -> None:
    """Last resort at interpreter exit (a pipeline thread that did not finish in time):
    remove the segments this process still owns. Idempotent, like close()."""
    for writer in list(_OPEN_WRITERS):
        writer.close()


class RingWriter:
    """Creates the ring ``name`` in shared memory and writes frames into it.

    ``slots`` frames of up to ``slot_bytes`` pixel bytes each (see :func:`slot_bytes_for`).
    Exactly one writer per name: if a ring of that name already exists (another writer, or
    left over by a crashed run) this raises :class:`RingError` unless ``replace=True``,
    which unlinks the old segment first (readers still attached to it see no new frames
    and must re-attach). :meth:`close` (also on leaving ``with``) removes the name; readers
    already attached keep working on what was written. A writer still open when the
    interpreter exits is closed then (its segment holds patient images).

    The segment's memory is reserved up front: a /dev/shm too small for it is a
    :class:`RingError` here that says how much is needed and how much is free.
    """

    def __init__(
        self, name: str, *, slots: int = 8, slot_bytes: int, replace: bool = False
    ) -> None:
        shm = _shm_name(name)
        if isinstance(slots, bool) or not isinstance(slots, int) or not 2 <= slots <= 65536:
            raise ValueError(f"slots must be an int in [2, 65536], got {slots!r}")
        if isinstance(slot_bytes, bool) or not isinstance(slot_bytes, int) or slot_bytes <= 0:
            raise ValueError(f"slot_bytes must be a positive int, got {slot_bytes!r}")
        _require_native()
        self._name, self._shm, self._generation, self._before = shm[1:], shm, 0, 0
        self._w = self._create(slots, slot_bytes, replace, 0)
        _OPEN_WRITERS.add(self)

    def _create(self, slots: int, slot_bytes: int, replace: bool, gen: int) -> ring_native.Writer:
        start, pidns = this_process()
        before = self.written if gen else 0
        try:
            return ring_native.Writer(self._shm, slots, slot_bytes, replace, gen, before, start,
                                pidns)
        except (RuntimeError, OSError) as exc:
            raise RingError(str(exc)) from None

    def new_generation(self, slot_bytes: int) -> None:
        """Replace the ring by a new generation of ``slot_bytes`` slots under the same name
        (the frames changed size). Readers finish the old generation and follow; the old
        segment's name goes to the new one, so nothing of it stays in /dev/shm."""
        if isinstance(slot_bytes, bool) or not isinstance(slot_bytes, int) or slot_bytes <= 0:
            raise ValueError(f"slot_bytes must be a positive int, got {slot_bytes!r}")
        if self.closed:
            raise RingError(f"ring {self._name!r}: ring writer is closed")
        new = self._create(self.slots, slot_bytes, True, self._generation + 1)  # takes the name
        old, self._w = self._w, new
        self._generation += 1
        self._before += int(old.written)
        try:
            old.supersede()  # after the new one exists: a reader that follows finds it
        except RuntimeError as exc:
            raise RingError(f"ring {self._name!r}: {exc}") from None

    @property
    def generation(self) -> int:
        """How many times the ring was replaced by a new generation (0 at first)."""
        return self._generation

    @property
    def name(self) -> str:
        """The ring's name (without the leading '/')."""
        return self._name

    @property
    def slots(self) -> int:
        """Number of slots: how many frames a reader may fall behind before it drops."""
        return int(self._w.slots)

    @property
    def slot_bytes(self) -> int:
        """Pixel capacity of one slot in bytes."""
        return int(self._w.slot_bytes)

    @property
    def written(self) -> int:
        """Frames written so far (all generations)."""
        return self._before + int(self._w.written)

    @property
    def closed(self) -> bool:
        return bool(self._w.closed)

    def write(self, frame: Frame) -> None:
        """Copies ``frame`` into the next slot, overwriting the oldest. Never blocks.

        Raises ``ValueError`` if the image is larger than the slot capacity or the
        source id is longer than 63 UTF-8 bytes, :class:`RingError` after :meth:`close`.
        """
        sid = frame.source_id
        if len(sid.encode("utf-8")) > MAX_SOURCE_ID_BYTES:
            raise ValueError(f"source_id {sid!r} is longer than {MAX_SOURCE_ID_BYTES} UTF-8 bytes")
        image = frame.image
        if image.nbytes > self._w.slot_bytes:
            raise ValueError(
                f"frame {frame.seq} of shape {image.shape} ({image.nbytes} bytes) does not "
                f"fit ring {self._name!r}: slot capacity is {self._w.slot_bytes} bytes"
            )
        if not image.flags.c_contiguous:
            image = image.copy(order="C")
        try:
            self._w.write(image, int(frame.seq), int(frame.t_capture_ns), frame.pts_s, sid)
        except RuntimeError as exc:
            raise RingError(f"ring {self._name!r}: {exc}") from None

    def close(self) -> None:
        """Marks the ring closed for readers, unmaps it and removes its name. Idempotent."""
        self._w.close()

    def __enter__(self) -> RingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"written={self.written}"
        return f"RingWriter({self._name!r}, slots={self.slots}, slot_bytes={self.slot_bytes}, " \
            f"{state})"


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
        shm = _shm_name(name)
        if start not in ("latest", "oldest"):
            raise ValueError(f"start must be 'latest' or 'oldest', got {start!r}")
        _require_native()
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
