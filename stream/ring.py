"""The shared-memory frame ring: one writer, many readers, across processes.

The grabber process owns a :class:`RingWriter`; inference, recorder and viewer processes
each attach a :class:`RingReader` by name. The writer never blocks: when the ring is full
it overwrites the oldest slot. Readers ask either for the newest frame (:meth:`latest`,
what inference wants) or for every frame in order (:meth:`next`, what a recorder wants);
frames a slow reader missed are counted in :attr:`RingReader.drops`. A frame overwritten
while a reader copies it is detected (seqlock) and never returned torn.

The work is done by the native module ``hepascope.stream._ring`` (C++17, nanobind, POSIX
shared memory); this wrapper speaks :class:`~hepascope.stream.frame.Frame` and raises
:class:`~hepascope.stream.errors.RingError`. Every frame a reader returns owns a fresh copy
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
from collections.abc import Callable
from types import TracebackType
from typing import Literal, TypeVar

from hepascope.stream.errors import RingError
from hepascope.stream.frame import Frame

try:
    from hepascope.stream import _ring
except ImportError as exc:  # not built: import still works, using a ring says how to fix
    _ring = None  # type: ignore[assignment]
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
    if _ring is None:
        raise RingError(
            "the native ring extension hepascope.stream._ring is not built "
            f"({_IMPORT_ERROR}); build it with CMake or pip install the package"
        )


class RingWriter:
    """Creates the ring ``name`` in shared memory and writes frames into it.

    ``slots`` frames of up to ``slot_bytes`` pixel bytes each (see :func:`slot_bytes_for`).
    Exactly one writer per name: if a ring of that name already exists (another writer, or
    left over by a crashed run) this raises :class:`RingError` unless ``replace=True``,
    which unlinks the old segment first (readers still attached to it see no new frames
    and must re-attach). :meth:`close` (also on leaving ``with``) removes the name; readers
    already attached keep working on what was written.
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
        self._name = shm[1:]
        try:
            self._w = _ring.Writer(shm, slots, slot_bytes, replace)
        except (RuntimeError, OSError) as exc:
            raise RingError(str(exc)) from None

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
        """Frames written so far."""
        return int(self._w.written)

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

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"written={self.written}"
        return (
            f"RingWriter({self._name!r}, slots={self.slots}, slot_bytes={self.slot_bytes}, {state})"
        )


class RingReader:
    """Attaches to the ring ``name`` (read-only) and reads frames from it.

    ``start="latest"``: :meth:`next` begins with the first frame written after attaching;
    ``start="oldest"``: with the oldest frame still in the ring. Each reader has its own
    cursor and its own counters; readers never slow the writer or each other.
    Raises :class:`RingError` if no such ring exists.
    """

    def __init__(self, name: str, *, start: Literal["latest", "oldest"] = "latest") -> None:
        shm = _shm_name(name)
        if start not in ("latest", "oldest"):
            raise ValueError(f"start must be 'latest' or 'oldest', got {start!r}")
        _require_native()
        self._name = shm[1:]
        try:
            self._r = _ring.Reader(shm, start == "oldest")
        except (RuntimeError, OSError) as exc:
            raise RingError(str(exc)) from None

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
    def drops(self) -> int:
        """Frames :meth:`next` skipped: overrun by the writer (this reader fell more than
        ``slots`` frames behind) or overwritten while being copied. Frames skipped on
        purpose by :meth:`latest` are not drops."""
        return int(self._r.drops)

    @property
    def torn(self) -> int:
        """Copies thrown away because the writer rewrote the slot during the copy (by
        :meth:`next`, where each also counts as a drop, or :meth:`latest`, which retries)."""
        return int(self._r.torn)

    @property
    def written(self) -> int:
        """Frames the writer has written so far."""
        return self._call(lambda: int(self._r.written))

    @property
    def writer_closed(self) -> bool:
        """True once the writer has closed the ring: after :meth:`next` returns None, no
        more frames will come."""
        return self._call(lambda: bool(self._r.writer_closed))

    @property
    def closed(self) -> bool:
        return bool(self._r.closed)

    def latest(self) -> Frame | None:
        """The newest complete frame, or None if nothing was written yet. Never waits.

        May return the same frame again if nothing new arrived (compare ``seq``). Moves
        this reader's :meth:`next` cursor past the returned frame.
        """
        got = self._call(self._r.latest)
        return None if got is None else _to_frame(got)

    def next(self, timeout_s: float | None = None) -> Frame | None:
        """The frame after the last one this reader returned, in write order.

        Waits up to ``timeout_s`` seconds for it (``0``: do not wait; ``None``: wait until
        one comes) and returns None on timeout. If the writer lapped this reader, skips to
        the oldest frame still in the ring and adds the skipped frames to :attr:`drops`.
        """
        if timeout_s is None:
            while True:  # wait in slices so Ctrl-C is handled between them
                got = self._call(lambda: self._r.next(_WAIT_SLICE_S))
                if got is not None:
                    return _to_frame(got)
        if not isinstance(timeout_s, (int, float)) or math.isnan(timeout_s) or timeout_s < 0:
            raise ValueError(f"timeout_s must be None or >= 0, got {timeout_s!r}")
        got = self._call(lambda: self._r.next(float(timeout_s)))
        return None if got is None else _to_frame(got)

    def close(self) -> None:
        """Unmaps the ring. Idempotent. Frames already returned stay valid."""
        self._r.close()

    def _call(self, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except RuntimeError as exc:
            raise RingError(f"ring {self._name!r}: {exc}") from None

    def __enter__(self) -> RingReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"drops={self.drops}"
        return f"RingReader({self._name!r}, slots={self.slots}, {state})"


def _to_frame(got: _ring.FrameTuple) -> Frame:
    image, seq, t_capture_ns, pts, source_id = got
    return Frame(image=image, seq=seq, t_capture_ns=t_capture_ns, source_id=source_id, pts_s=pts)
