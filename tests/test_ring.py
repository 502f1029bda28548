"""The shared-memory frame ring: unit tests, and a multi-process stress test with
checksummed frames (a writer process, readers using next() and latest() concurrently)."""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import queue
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from hepascope.core.errors import RingError
from hepascope.core.frame import Frame
from hepascope.stream.ring import RingReader, RingWriter, slot_bytes_for

pytest.importorskip("hepascope.stream.ring_native", reason="native ring extension not built")


def _unique(tag: str = "t") -> str:
    return f"hepascope-test-{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def name() -> Iterator[str]:
    n = _unique()
    yield n
    with contextlib.suppress(OSError):  # never leave a segment behind, whatever happened
        os.unlink(f"/dev/shm/{n}")


def _frame(seq: int, shape: tuple[int, ...] = (4, 5), pts: float | None = None) -> Frame:
    img = ((np.arange(math.prod(shape), dtype=np.int64) + seq * 13) % 251).astype(np.uint8)
    return Frame(
        image=img.reshape(shape), seq=seq, t_capture_ns=1_000 + seq, source_id="probe", pts_s=pts
    )


# -- unit tests ----------------------------------------------------------------------------


def test_slot_bytes_for() -> None:
    assert slot_bytes_for(600, 800) == 600 * 800 * 3
    assert slot_bytes_for(600, 800, 1) == 600 * 800
    with pytest.raises(ValueError):
        slot_bytes_for(0, 10)


def test_roundtrip_grey_and_bgr_with_metadata(name: str) -> None:
    with RingWriter(name, slots=4, slot_bytes=slot_bytes_for(6, 7)) as w:
        grey = Frame(
            image=np.arange(42, dtype=np.uint8).reshape(6, 7),
            seq=10,
            t_capture_ns=123_456_789_012,
            source_id="us-probe-0",
            pts_s=None,
        )
        bgr = Frame(
            image=np.arange(6 * 7 * 3, dtype=np.uint8).reshape(6, 7, 3),
            seq=11,
            t_capture_ns=123_456_789_999,
            source_id="ünïcode",
            pts_s=0.5,
        )
        with RingReader(name, start="oldest") as r:
            w.write(grey)
            w.write(bgr)
            assert w.written == 2
            got = [r.next(0), r.next(0)]
            assert r.next(0) is None
            for want, f in zip([grey, bgr], got, strict=True):
                assert f is not None
                assert f.image.shape == want.image.shape
                assert f.image.dtype == np.uint8
                np.testing.assert_array_equal(f.image, want.image)
                assert (f.seq, f.t_capture_ns, f.source_id) == (
                    want.seq,
                    want.t_capture_ns,
                    want.source_id,
                )
                assert f.pts_s == want.pts_s
            assert got[0] is not None and got[0].pts_s is None
            # Fresh memory, not a view of shared memory: writable, and changing it
            # changes nothing in the ring.
            img = got[1].image  # type: ignore[union-attr]
            img[:] = 0
            again = r.latest()
            assert again is not None
            np.testing.assert_array_equal(again.image, bgr.image)
            assert r.drops == 0


def test_latest_vs_next(name: str) -> None:
    with RingWriter(name, slots=8, slot_bytes=64) as w:
        with RingReader(name) as empty:
            assert empty.latest() is None
            assert empty.next(0) is None
        for s in range(3):
            w.write(_frame(s))
        newest = RingReader(name)  # start="latest": after frame 2
        oldest = RingReader(name, start="oldest")
        try:
            assert newest.next(0) is None
            latest = newest.latest()
            assert latest is not None and latest.seq == 2
            assert newest.latest().seq == 2  # type: ignore[union-attr]  # same frame again
            w.write(_frame(3))
            w.write(_frame(4))
            f = newest.next(0)
            assert f is not None and f.seq == 3
            latest = newest.latest()
            assert latest is not None and latest.seq == 4
            assert newest.next(0) is None  # latest() moved the cursor past frame 4
            assert [oldest.next(0).seq for _ in range(5)] == [0, 1, 2, 3, 4]  # type: ignore[union-attr]
            assert oldest.next(0) is None
            assert newest.drops == oldest.drops == 0
            assert newest.written == oldest.written == 5
        finally:
            newest.close()
            oldest.close()


def test_overrun_counted_exactly(name: str) -> None:
    with RingWriter(name, slots=4, slot_bytes=64) as w, RingReader(name, start="oldest") as r:
        for s in range(10):
            w.write(_frame(s))
        # Frames 0..5 were overwritten: the reader skips to the oldest one left (6).
        assert [r.next(0).seq for _ in range(4)] == [6, 7, 8, 9]  # type: ignore[union-attr]
        assert r.drops == 6
        assert r.next(0) is None
        # Falling behind again by exactly 3 more than the ring holds.
        for s in range(10, 10 + 4 + 3):
            w.write(_frame(s))
        f = r.next(0)
        assert f is not None and f.seq == 13
        assert r.drops == 6 + 3
        assert r.torn == 0  # nothing was written while reading


def test_oversize_frame_rejected(name: str) -> None:
    with RingWriter(name, slots=2, slot_bytes=slot_bytes_for(4, 4)) as w:
        with pytest.raises(ValueError, match="slot capacity"):
            w.write(_frame(0, (5, 4, 3)))
        with pytest.raises(ValueError, match="slot capacity"):
            w.write(_frame(0, (5, 10)))
        with pytest.raises(ValueError, match="source_id"):
            w.write(Frame(np.zeros((2, 2), np.uint8), 0, 0, "x" * 64))
        assert w.written == 0
        w.write(_frame(1, (4, 4)))  # still works, nothing was damaged
        with RingReader(name, start="oldest") as r:
            f = r.next(0)
            assert f is not None and f.seq == 1


def test_non_contiguous_image(name: str) -> None:
    with RingWriter(name, slots=2, slot_bytes=100) as w, RingReader(name) as r:
        big = np.arange(200, dtype=np.uint8).reshape(10, 20)
        w.write(Frame(big[:, ::2], 0, 0, "s"))
        f = r.next(0)
        assert f is not None
        np.testing.assert_array_equal(f.image, big[:, ::2])


def test_attach_missing_ring() -> None:
    with pytest.raises(RingError, match=r"no ring named .*is the pipeline"):
        RingReader(_unique("missing"))


def test_bad_arguments(name: str) -> None:
    with pytest.raises(ValueError):
        RingWriter("a/b", slot_bytes=10)
    with pytest.raises(ValueError):
        RingWriter("", slot_bytes=10)
    with pytest.raises(ValueError):
        RingWriter(name, slots=1, slot_bytes=10)
    with pytest.raises(ValueError):
        RingWriter(name, slot_bytes=0)
    with RingWriter(name, slot_bytes=10), RingReader(name) as r:
        with pytest.raises(ValueError):
            r.next(-1)
        with pytest.raises(ValueError):
            RingReader(name, start="newest")  # type: ignore[arg-type]


def test_name_taken_and_replace(name: str) -> None:
    w = RingWriter("/" + name, slot_bytes=16)  # a leading '/' is accepted too
    assert w.name == name
    try:
        with pytest.raises(RingError, match=r"already exists.*replace=True"):
            RingWriter(name, slot_bytes=16)
        # e.g. left over by a crashed grabber: replace=True takes the name over
        with RingWriter(name, slot_bytes=16, slots=3, replace=True) as w2:
            with RingReader(name) as r:
                assert r.slots == 3
            w.close()  # the old writer must not unlink the new writer's ring
            w2.write(_frame(0, (2, 2)))
            with RingReader(name, start="oldest") as r:
                assert r.slots == 3
                f = r.next(0)
                assert f is not None and f.seq == 0
        assert not os.path.exists(f"/dev/shm/{name}")
    finally:
        w.close()


def test_reader_survives_writer_unlink(name: str) -> None:
    w = RingWriter(name, slots=4, slot_bytes=64)
    r = RingReader(name, start="oldest")
    try:
        for s in range(3):
            w.write(_frame(s))
        assert not bool(r.writer_closed)  # (bool(): keep mypy from narrowing the property)
        w.close()
        w.close()  # idempotent
        assert w.closed
        with pytest.raises(RingError):
            w.write(_frame(3))
        assert not os.path.exists(f"/dev/shm/{name}")
        with pytest.raises(RingError, match="no ring named"):
            RingReader(name)
        # The attached reader still has its mapping and every frame written.
        assert r.writer_closed
        assert [r.next(0).seq for _ in range(3)] == [0, 1, 2]  # type: ignore[union-attr]
        assert r.next(0) is None
        latest = r.latest()
        assert latest is not None and latest.seq == 2
        np.testing.assert_array_equal(latest.image, _frame(2).image)
    finally:
        r.close()
    with pytest.raises(RingError, match="closed"):
        r.latest()


def test_next_waits_without_holding_the_gil(name: str) -> None:
    with RingWriter(name, slot_bytes=64) as w, RingReader(name) as r:
        t0 = time.monotonic()
        assert r.next(0.05) is None
        assert time.monotonic() - t0 >= 0.045

        # The writer runs in a Python thread: it can only write while next() waits if the
        # wait released the GIL.
        def later() -> None:
            time.sleep(0.05)
            w.write(_frame(7))

        th = threading.Thread(target=later)
        t0 = time.monotonic()
        th.start()
        f = r.next(5.0)
        waited = time.monotonic() - t0
        th.join()
        assert f is not None and f.seq == 7
        assert waited < 2.0
        # timeout_s=None waits until a frame comes
        th = threading.Thread(target=later)
        th.start()
        f = r.next()
        th.join()
        assert f is not None and f.seq == 7


# -- multi-process stress --------------------------------------------------------------------

N_FRAMES = 20_000
STRESS_SLOTS = 4
MAX_H, MAX_W = 480, 640  # a typical ultrasound frame
STRESS_SLOT_BYTES = MAX_H * MAX_W * 3
POOL_SEED = 1234


def _pool() -> np.ndarray:
    # Random bytes both sides derive identically; frame k is a window of it chosen by k.
    return np.random.default_rng(POOL_SEED).integers(0, 256, 2 * STRESS_SLOT_BYTES, np.uint8)


def _shape_of(seq: int) -> tuple[int, ...]:
    rng = np.random.default_rng(seq)
    h, w = int(rng.integers(1, MAX_H + 1)), int(rng.integers(1, MAX_W + 1))
    return (h, w) if rng.integers(0, 2) else (h, w, 3)


def _expected_bytes(pool: np.ndarray, seq: int, nbytes: int) -> np.ndarray:
    off = (seq * 7919) % STRESS_SLOT_BYTES
    return pool[off : off + nbytes]


def _stress_writer(name: str, n_readers: int, created: Any, ready: Any, out: Any) -> None:
    pool = _pool()
    with RingWriter(name, slots=STRESS_SLOTS, slot_bytes=STRESS_SLOT_BYTES) as w:
        created.set()
        for _ in range(n_readers):
            ready.acquire(timeout=20)
        t0 = time.perf_counter()
        for seq in range(N_FRAMES):
            # Build and checksum each frame in the loop (like a grabber's per-frame work),
            # then write it: no pacing, as fast as this process goes.
            shape = _shape_of(seq)
            data = _expected_bytes(pool, seq, math.prod(shape)).reshape(shape)
            crc = zlib.crc32(data.data)
            pts = None if seq % 5 == 0 else seq / 30
            w.write(Frame(data, seq, 1_000_000 + seq, f"{crc:08x}", pts))
        dt = time.perf_counter() - t0
        out.put({"role": "writer", "written": w.written, "seconds": round(dt, 2)})


def _check(f: Frame, pool: np.ndarray) -> bool:
    """The frame's pixels match its checksum, its metadata and its seq's content."""
    img = f.image
    ok = zlib.crc32(img.tobytes()) == int(f.source_id, 16)
    ok &= img.shape == _shape_of(f.seq)
    ok &= f.t_capture_ns == 1_000_000 + f.seq
    ok &= f.pts_s == (None if f.seq % 5 == 0 else f.seq / 30)
    ok &= bool(np.array_equal(img.ravel(), _expected_bytes(pool, f.seq, img.size)))
    return bool(ok)


def _stress_reader(name: str, mode: str, created: Any, ready: Any, out: Any) -> None:
    pool = _pool()
    created.wait(20)
    r = RingReader(name, start="oldest")
    ready.release()
    read = bad = out_of_order = 0
    first = last = -1
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline:
        closed = r.writer_closed  # read before trying: a None after this means drained
        f = r.next(0.02) if mode == "next" else r.latest()
        if f is None or (mode == "latest" and f.seq == last):
            if closed:
                break
            if mode == "latest":
                time.sleep(0.0001)
            continue
        if f.seq <= last:
            out_of_order += 1
        if first < 0:
            first = f.seq
        last = f.seq
        read += 1
        if not _check(f, pool):
            bad += 1
    out.put(
        {
            "role": mode,
            "read": read,
            "drops": r.drops,
            "torn": r.torn,
            "bad": bad,
            "out_of_order": out_of_order,
            "first": first,
            "last": last,
            "cursor_start": 0,
        }
    )
    r.close()


@pytest.mark.timeout(60)
def test_stress_writer_and_reader_processes() -> None:
    name = _unique("stress")
    ctx = mp.get_context("spawn")
    created, ready, out = ctx.Event(), ctx.Semaphore(0), ctx.Queue()
    modes = ["next", "next", "latest"]
    readers = [
        ctx.Process(target=_stress_reader, args=(name, m, created, ready, out)) for m in modes
    ]
    writer = ctx.Process(target=_stress_writer, args=(name, len(modes), created, ready, out))
    t0 = time.monotonic()
    writer.start()
    for p in readers:
        p.start()
    results: list[dict[str, Any]] = []
    try:
        for _ in range(len(modes) + 1):
            results.append(out.get(timeout=45))
    except queue.Empty:
        pass
    finally:
        for p in [writer, *readers]:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
        with contextlib.suppress(OSError):
            os.unlink(f"/dev/shm/{name}")
    elapsed = time.monotonic() - t0
    for r in results:
        print(f"ring stress: {r}")
    print(f"ring stress: total {elapsed:.1f} s")
    assert writer.exitcode == 0 and all(p.exitcode == 0 for p in readers)
    assert len(results) == len(modes) + 1

    wres = next(r for r in results if r["role"] == "writer")
    assert wres["written"] == N_FRAMES
    for r in results:
        if r["role"] == "writer":
            continue
        assert r["bad"] == 0, f"{r['bad']} frames failed their checksum: {r}"
        assert r["out_of_order"] == 0, r
        assert r["read"] > 0
        assert r["last"] == N_FRAMES - 1  # every reader saw the final frame
        if r["role"] == "next":
            # every frame number from the cursor's start to the last one seen was either
            # returned or counted as dropped, exactly once
            assert r["read"] + r["drops"] == r["last"] - r["cursor_start"] + 1 == N_FRAMES
            assert r["torn"] <= r["drops"]
        else:
            assert r["drops"] == 0  # latest() never drops, it skips on purpose
