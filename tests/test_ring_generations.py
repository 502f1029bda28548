"""Ring generations: the writer replaces the ring when the frames change size, and readers
(next and latest, attached before or after) follow by themselves, in order, counting
across generations, with nothing of the old generation left in /dev/shm."""

from __future__ import annotations

import contextlib
import glob
import os
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from hepascope.core.errors import RingError
from hepascope.core.frame import Frame
from hepascope.stream.ring import RingReader, RingWriter

pytest.importorskip("hepascope.stream.ring_native", reason="native ring extension not built")


@pytest.fixture
def name() -> Iterator[str]:
    n = f"hepascope-test-gen-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield n
    with contextlib.suppress(OSError):
        os.unlink(f"/dev/shm/{n}")


def _frame(seq: int, shape: tuple[int, ...]) -> Frame:
    return Frame(np.full(shape, seq % 251, np.uint8), seq, 1000 + seq, "probe")


SMALL, BIG, GREY = (4, 5, 3), (10, 12, 3), (10, 12)


def test_a_next_reader_finishes_the_old_generation_then_follows(name: str) -> None:
    with RingWriter(name, slots=4, slot_bytes=60) as w, \
            RingReader(name, start="oldest") as r:
        for s in range(3):
            w.write(_frame(s, SMALL))
        w.new_generation(360)
        assert w.generation == 1 and w.slot_bytes == 360
        for s in range(3, 6):
            w.write(_frame(s, BIG))
        assert w.written == 6
        got = [r.next(0) for _ in range(6)]
        assert [f.seq for f in got if f is not None] == list(range(6))
        assert [f.image.shape for f in got if f is not None] == [SMALL] * 3 + [BIG] * 3
        assert r.next(0) is None
        assert (r.generation, r.written, r.drops, r.slot_bytes) == (1, 6, 0, 360)
        assert not r.writer_closed  # superseded is not closed
        # one name, one segment: the old generation's memory went with its name
        assert glob.glob(f"/dev/shm/{name}*") == [f"/dev/shm/{name}"]
        w.close()
        assert r.writer_closed
    assert glob.glob(f"/dev/shm/{name}*") == []


def test_latest_follows_and_a_late_reader_attaches_the_newest(name: str) -> None:
    with RingWriter(name, slots=2, slot_bytes=60) as w, RingReader(name) as r:
        w.write(_frame(0, SMALL))
        assert r.latest().seq == 0
        w.new_generation(120)
        assert r.latest().seq == 0  # nothing newer yet
        w.write(_frame(1, GREY))
        f = r.latest()
        assert f is not None and f.seq == 1 and f.image.shape == GREY
        assert r.generation == 1
        with RingReader(name, start="oldest") as late:
            assert late.generation == 1 and late.next(0).seq == 1


def test_a_reader_skips_generations_it_was_too_slow_to_see(name: str) -> None:
    with RingWriter(name, slots=2, slot_bytes=60) as w, \
            RingReader(name, start="oldest") as r:
        w.write(_frame(0, SMALL))
        w.new_generation(360)
        w.write(_frame(1, BIG))
        w.new_generation(120)
        w.write(_frame(2, GREY))
        seqs = [f.seq for f in iter(lambda: r.next(0), None)]
        # generation 1 was gone (its name taken by 2) before this reader looked: its
        # frame is counted as a drop, and the counts go on across generations
        assert seqs == [0, 2] and r.generation == 2
        assert (r.drops, r.written) == (1, 3)
        with RingReader(name) as late:
            assert late.written == 3


def test_the_last_generation_closing_ends_a_reader_left_behind(name: str) -> None:
    w = RingWriter(name, slots=2, slot_bytes=60)
    r = RingReader(name, start="oldest")
    try:
        w.write(_frame(0, SMALL))
        w.new_generation(360)
        w.write(_frame(1, BIG))
        w.close()  # the run ends before the reader looked again
        assert [f.seq for f in iter(lambda: r.next(0), None)] == [0]
        assert r.writer_closed
    finally:
        w.close()
        r.close()


def test_a_name_taken_by_another_writer_is_not_followed(name: str) -> None:
    w = RingWriter(name, slots=2, slot_bytes=60)
    r = RingReader(name, start="oldest")
    try:
        w.write(_frame(0, SMALL))
        w.new_generation(360)  # generation 1 ...
        with RingWriter(name, slots=2, slot_bytes=60, replace=True):  # ... replaced: gen 0
            assert r.next(0).seq == 0
            with pytest.raises(RingError, match="replaced by another writer"):
                r.next(0)
    finally:
        w.close()
        r.close()


def test_the_grabbers_ring_counts_size_and_pixel_format_changes() -> None:
    """The pipeline's lazily created ring (stream/grab.py): BGR -> grey of the same size
    (a pixel-format change) and back, then a new size; a reader sees every frame."""
    from hepascope.stream.grab import LazyRing

    name = f"hepascope-test-grab-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    ring = LazyRing(name, slots=8, on_ring=None)
    shapes = [BIG, BIG, GREY, GREY, BIG, SMALL]
    try:
        ring.write(_frame(0, shapes[0]))
        got = []
        with RingReader(name, start="oldest") as r:
            for seq, shape in enumerate(shapes[1:], 1):
                ring.write(_frame(seq, shape))
                got += [(f.seq, f.image.shape) for f in iter(lambda: r.next(0), None)]
        assert got == list(enumerate(shapes))
        assert ring.geometry_changes == 3
    finally:
        ring.close()
    assert glob.glob(f"/dev/shm/{name}*") == []
