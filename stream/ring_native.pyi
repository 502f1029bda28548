"""Type stub of the native frame ring ``hepascope.stream.ring_native`` (stream/_native/ring.cpp).

Use it through :mod:`hepascope.stream.ring`, which speaks ``Frame`` and ``RingError``.
Native errors: ``RuntimeError`` (create/attach/closed, a corrupt or inconsistent segment),
``NotFoundError`` (a ``RuntimeError``: no ring of that name), ``ValueError`` (bad
arguments, frame larger than the slot).
"""

from typing import Final

import numpy as np
from numpy.typing import NDArray

LAYOUT_VERSION: Final[int]
SLOT_OVERHEAD: Final[int]
ALIGN: Final[int]

# (image, seq, t_capture_ns, pts or None, source_id); image is a fresh HxW or HxWxC array.
FrameTuple = tuple[NDArray[np.uint8], int, int, float | None, str]

class NotFoundError(RuntimeError): ...

def slot_stride(slot_bytes: int) -> int: ...
def peek(name: str) -> tuple[int, int, int, int] | None:
    """(version, writer_pid, writer_start, writer_pidns) of ring ``name``; None when it is
    not an initialised ring; ``NotFoundError`` when there is no such name."""

class Writer:
    def __init__(
        self,
        name: str,
        slots: int,
        slot_bytes: int,
        replace: bool = False,
        generation: int = 0,
        frames_before: int = 0,
        owner_start: int = 0,
        owner_pidns: int = 0,
    ) -> None:
        """Creates the ring ``name`` (must start with '/'); O_EXCL unless ``replace``;
        reserves its memory (a full /dev/shm is a RuntimeError saying how much is free)."""
    def write(
        self,
        image: NDArray[np.uint8],
        seq: int,
        t_capture_ns: int,
        pts: float | None,
        source_id: str,
    ) -> None:
        """Copies one frame into the next slot (GIL released). Never blocks."""
    def close(self) -> None:
        """Marks closed, unmaps and unlinks (in the creating process). Idempotent."""
    def supersede(self) -> None:
        """Marks superseded (a newer generation holds the name), then closes."""
    @property
    def name(self) -> str: ...
    @property
    def slots(self) -> int: ...
    @property
    def slot_bytes(self) -> int: ...
    @property
    def written(self) -> int: ...
    @property
    def closed(self) -> bool: ...

class Reader:
    def __init__(self, name: str, from_oldest: bool = False) -> None:
        """Attaches read-only to the ring ``name`` (must start with '/')."""
    def latest(self) -> FrameTuple | None:
        """The newest complete frame, or None if none was written yet."""
    def next(self, timeout_s: float = 0.0) -> FrameTuple | None:
        """The frame after the cursor, waiting up to ``timeout_s`` (GIL released)."""
    def close(self) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def slots(self) -> int: ...
    @property
    def slot_bytes(self) -> int: ...
    @property
    def generation(self) -> int: ...
    @property
    def frames_before(self) -> int:
        """Frames the writer wrote to earlier generations of the ring."""
    @property
    def owner(self) -> tuple[int, int, int]:
        """(pid, start time, pid namespace) of the process that created the segment."""
    @property
    def drops(self) -> int: ...
    @property
    def torn(self) -> int: ...
    @property
    def cursor(self) -> int: ...
    @property
    def written(self) -> int: ...
    @property
    def writer_closed(self) -> bool: ...
    @property
    def superseded(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
