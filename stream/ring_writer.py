"""The writing end of the shared-memory frame ring (``hepascope.stream.ring``, which
re-exports it): the :class:`RingWriter` a grabber process owns, and the writers still open
closed at exit. Also the checks both ends share: ring names, slot sizes, the native module."""

from __future__ import annotations

import atexit
import weakref

from hepascope.core.errors import RingError
from hepascope.core.frame import Frame
from hepascope.stream.ring_owner import this_process

try:
    from hepascope.stream import ring_native
except ImportError as exc:  # not built: import still works, using a ring says how to fix
    ring_native = None  # type: ignore[assignment]
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None

__all__ = ["MAX_SOURCE_ID_BYTES", "RingWriter", "require_native", "shm_name",
           "slot_bytes_for"]

#: Longest ``Frame.source_id`` a ring slot stores (UTF-8 bytes).
MAX_SOURCE_ID_BYTES = 63


def slot_bytes_for(height: int, width: int, channels: int = 3) -> int:
    """Pixel bytes one slot needs to hold a ``height`` x ``width`` x ``channels`` frame."""
    for label, v in (("height", height), ("width", width), ("channels", channels)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{label} must be a positive int, got {v!r}")
    return height * width * channels


def shm_name(name: str) -> str:
    """``name`` as shm_open wants it: exactly one leading '/', no other '/'."""
    if not isinstance(name, str):
        raise TypeError(f"ring name must be a str, got {type(name).__name__}")
    bare = name[1:] if name.startswith("/") else name
    if not bare or "/" in bare or "\0" in bare or len(bare.encode()) > 250:
        raise ValueError(
            f"invalid ring name {name!r}: use 1-250 characters without '/' (e.g. 'probe0')"
        )
    return "/" + bare


def require_native() -> None:
    """A :class:`RingError` that says how to build the native module, if it is missing."""
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
        shm = shm_name(name)
        if isinstance(slots, bool) or not isinstance(slots, int) or not 2 <= slots <= 65536:
            raise ValueError(f"slots must be an int in [2, 65536], got {slots!r}")
        if isinstance(slot_bytes, bool) or not isinstance(slot_bytes, int) or slot_bytes <= 0:
            raise ValueError(f"slot_bytes must be a positive int, got {slot_bytes!r}")
        require_native()
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
