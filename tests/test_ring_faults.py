"""The ring's reader against what it cannot trust: segments forged from outside (bytes
written into /dev/shm/<name> by this test), huge timeouts, and a writer hammering while
readers copy. Anything that could hang or crash the reader runs in a child process."""

from __future__ import annotations

import contextlib
import math
import os
import struct
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import zlib
from collections.abc import Iterator

import numpy as np
import pytest

from hepascope.core.errors import RingError
from hepascope.core.frame import Frame
from hepascope.stream.ring import RingReader, RingWriter, slot_bytes_for

pytest.importorskip("hepascope.stream.ring_native", reason="native ring extension not built")

SEQ_MARK = 0x0123456789ABCDEF  # frame_seq of the frame whose slot the tests forge
T_MARK = 0x1122334455667788    # its t_capture_ns: together they locate the slot's metadata


@pytest.fixture
def name() -> Iterator[str]:
    n = f"hepascope-test-forge-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield n
    with contextlib.suppress(OSError):
        os.unlink(f"/dev/shm/{n}")


def _find(buf: bytes, value: int, fmt: str = "<Q", end: int | None = None) -> int:
    """The one offset where ``value`` is stored (asserted unique): the test locates the
    fields it forges by content, so it does not depend on the layout's offsets."""
    needle = struct.pack(fmt, value)
    hits = [i for i in range(0, (end or len(buf)) - len(needle) + 1, 4)
            if buf[i:i + len(needle)] == needle]
    assert len(hits) == 1, f"{value:#x} found at {hits}"
    return hits[0]


def _reader_outcome(name: str, call: str, timeout_s: float = 10.0) -> str:
    """Attach ``name`` in a child process and run ``call`` on the reader; the child prints
    what came out (a frame's checksum, or the exception's type and text). A hang or a crash
    of the child is the outcome too."""
    code = textwrap.dedent(f"""
        from hepascope.stream.ring import RingReader
        try:
            r = RingReader({name!r}, start="oldest")
            f = {call}
            print("OK", None if f is None else (f.image.shape, int(f.image.sum())))
        except Exception as e:
            print("RAISED", type(e).__name__, str(e).splitlines()[0])
    """)
    try:
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"HUNG for {timeout_s} s"
    if res.returncode != 0:
        return f"CRASHED rc={res.returncode} {res.stderr.strip().splitlines()[-1:]}"
    return res.stdout.strip()


def _forge_dims(name: str, h: int, w: int, c: int, nbytes: int) -> None:
    """Write one real frame, then overwrite its dimensions in the segment's bytes. The
    writer stays open (closed after the test) so that the child can attach."""
    w_ = RingWriter(name, slots=2, slot_bytes=48)
    _WRITERS.append(w_)
    w_.write(Frame(np.ones((4, 4, 3), np.uint8), SEQ_MARK, T_MARK, "probe"))
    with open(f"/dev/shm/{name}", "r+b") as f:
        buf = f.read()
        meta = _find(buf, SEQ_MARK)
        assert struct.unpack_from("<Q", buf, meta + 8)[0] == T_MARK
        # SlotMeta: frame_seq, t_capture_ns, pts, height, width, channels, reserved, nbytes
        assert struct.unpack_from("<IIIIQ", buf, meta + 24) == (4, 4, 3, 0, 48)
        f.seek(meta + 24)
        f.write(struct.pack("<IIIIQ", h, w, c, 0, nbytes))


_WRITERS: list[RingWriter] = []


@pytest.fixture(autouse=True)
def _close_writers() -> Iterator[None]:
    yield
    while _WRITERS:
        _WRITERS.pop().close()


# (h, w, c, nbytes): each passes a check the base reader made, or slips between two
FORGED = {
    # 3062868337 * 2007567422 * 3 = 26 (mod 2**64): a 26-byte copy described as ~18 EB
    "product_wraps_64_bits": (3062868337, 2007567422, 3, 26),
    "two_channels": (4, 2, 2, 16),
    "five_channels": (2, 2, 5, 20),
    "larger_than_the_slot": (100, 100, 3, 30000),
    "zero_height": (0, 16, 3, 0),
    "negative_height": (2**32 - 4, 4, 3, 48),
}


@pytest.mark.parametrize("case", FORGED)
@pytest.mark.parametrize("call", ["r.latest()", "r.next(0)"])
def test_forged_dimensions_give_a_ring_error(name: str, case: str, call: str) -> None:
    # seen failing on 0ecf5bd: product_wraps_64_bits passed the reader's checks and made
    # numpy raise "ValueError array is too big"; two_channels and five_channels raised
    # ValueError (Frame.image must have 3 channels); the others were RingErrors already
    _forge_dims(name, *FORGED[case])
    outcome = _reader_outcome(name, call)
    print(f"\n{case} {call}: {outcome}")
    assert outcome.startswith("RAISED RingError"), outcome
    assert "corrupt" in outcome


def test_latest_gives_up_on_an_inconsistent_segment(name: str) -> None:
    # write_count says 7 frames, the slots hold frames 1..4: frame 6 is nowhere.
    # seen failing on 0ecf5bd: latest() spins forever (the child hangs)
    with RingWriter(name, slots=4, slot_bytes=48) as w:
        for s in range(5):
            w.write(Frame(np.full((4, 4, 3), s, np.uint8), s, 1000 + s, "probe"))
        path = f"/dev/shm/{name}"
        with open(path, "r+b") as f:
            off = _find(f.read(256), 5)
            f.seek(off)
            f.write(struct.pack("<Q", 7))
        t0 = time.monotonic()
        outcome = _reader_outcome(name, "r.latest()")
        took = time.monotonic() - t0
        print(f"\ninconsistent segment: {outcome} ({took:.2f} s including interpreter start)")
        assert outcome.startswith("RAISED RingError") and "inconsistent" in outcome, outcome
        # next() skips what it cannot find (counted as drops) and never spins
        assert _reader_outcome(name, "r.next(0) and r.next(0) and r.next(0)").startswith("OK")


@pytest.mark.parametrize("timeout", [1e30, 1e300, math.inf, 2.0**63])
@pytest.mark.timeout(60)
def test_huge_timeouts_wait_for_the_frame(name: str, timeout: float) -> None:
    # seen failing on 0ecf5bd: 1e30 / inf overflow the deadline: next() returns None at once
    with RingWriter(name, slots=4, slot_bytes=48) as w, RingReader(name) as r:
        def later() -> None:
            time.sleep(0.3)
            w.write(Frame(np.full((4, 4, 3), 9, np.uint8), 9, 1009, "probe"))

        th = threading.Thread(target=later)
        t0 = time.monotonic()
        th.start()
        f = r.next(timeout_s=timeout)
        took = time.monotonic() - t0
        th.join()
        print(f"\nnext(timeout_s={timeout:g}) -> {None if f is None else f.seq} after "
              f"{took * 1000:.0f} ms")
        assert f is not None and f.seq == 9
        assert 0.25 < took < 10


HAMMER_S = 1.5
HAMMER_SHAPES = [(480, 640, 3), (240, 320), (1, 1), (3, 5, 3), (479, 639)]


def _hammer_frame(seq: int, pool: np.ndarray) -> Frame:
    shape = HAMMER_SHAPES[seq % len(HAMMER_SHAPES)]
    n = math.prod(shape)
    off = (seq * 7919) % (pool.size - n)
    data = pool[off:off + n].reshape(shape)
    return Frame(data, seq, 1_000_000 + seq, f"{zlib.crc32(data.data):08x}", None)


def test_readers_never_see_a_torn_frame_while_the_writer_hammers(name: str) -> None:
    """A writer thread rewrites a 3-slot ring as fast as it can while two readers (next and
    latest) copy; every frame returned must match its checksum. Not seen failing on
    0ecf5bd (x86-64 orders plain stores, so its memcpy seqlock works there in practice);
    kept to guard the atomic word copies that replaced it."""
    pool = np.random.default_rng(7).integers(0, 256, 3 * 480 * 640 * 3, np.uint8)
    stop = threading.Event()
    stats = {"written": 0}
    seen: dict[str, list[int]] = {"next": [0, 0], "latest": [0, 0]}  # [frames, bad]
    errors: list[BaseException] = []

    def write(w: RingWriter) -> None:
        seq = 0
        while not stop.is_set():
            w.write(_hammer_frame(seq, pool))
            seq += 1
        stats["written"] = seq

    def read(mode: str) -> None:
        try:
            with RingReader(name, start="oldest") as r:
                while not stop.is_set():
                    f = r.next(0.01) if mode == "next" else r.latest()
                    if f is None:
                        continue
                    seen[mode][0] += 1
                    if zlib.crc32(f.image.tobytes()) != int(f.source_id, 16) or \
                            f.image.shape != HAMMER_SHAPES[f.seq % len(HAMMER_SHAPES)]:
                        seen[mode][1] += 1
                seen[mode].append(r.torn)
        except BaseException as e:
            errors.append(e)

    with RingWriter(name, slots=3, slot_bytes=slot_bytes_for(480, 640)) as w:
        threads = [threading.Thread(target=write, args=(w,)),
                   *(threading.Thread(target=read, args=(m,)) for m in seen)]
        for t in threads:
            t.start()
        time.sleep(HAMMER_S)
        stop.set()
        for t in threads:
            t.join(10)
    print(f"\nhammer {HAMMER_S} s: written {stats['written']}, [read, bad, torn] {seen}")
    assert not errors, errors
    assert stats["written"] > 100
    for mode, (read_, bad, *_) in seen.items():
        assert read_ > 0, mode
        assert bad == 0, f"{mode}: {bad} torn frames returned"


def test_a_header_too_short_or_lying_about_its_slots_is_refused(name: str) -> None:
    """Regression (not failing on 0ecf5bd, which checked this already): a header whose
    slot count does not fit the segment is a RingError at attach."""
    with RingWriter(name, slots=5, slot_bytes=48):
        path = f"/dev/shm/{name}"
        with open(path, "r+b") as f:
            buf = f.read(256)
            head = _find(buf, 5, "<I", end=64)  # slot_count
            f.seek(head)
            f.write(struct.pack("<I", 60000))
        with pytest.raises(RingError, match="inconsistent header"):
            RingReader(name)
