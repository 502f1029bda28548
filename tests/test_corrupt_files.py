"""Damaged video files, for real: real H.264 clips made here, then cut, overwritten,
zero-filled and bit-flipped on disk. Each ends in a typed ``SourceError`` within 1 s of
this process's CPU time (the work the file costs; the wall clock of a loaded machine is not
the file's doing, and the source's own timeouts guard the wall clock), or replays only
frames that are bit-identical to the intact file's: a frame the decoder rejected or
flagged, or one predicted from it, is never handed on."""

from __future__ import annotations

import random
import time
from pathlib import Path

import av
import numpy as np
import pytest
from support.fuzz_sources import write_clip

from hepascope.core.errors import SourceError, SourceFormatError
from hepascope.stream.sources.file import FileSource

BOUND_S = 1.0  # the spec: a typed error within 1 s (of CPU time, see above)
FPS, GOP, N = 30, 10, 60
times: list[float] = []


def _clip(tmp_path: Path, ext: str) -> Path:
    return write_clip(tmp_path / f"clip.{ext}", frames=N, fps=FPS, size=(96, 128), gop=GOP)


def _replay(path: Path) -> tuple[dict[int, np.ndarray] | SourceError, int, float]:
    """(frame index -> image, or the SourceError), corrupt frames skipped, CPU seconds."""
    t0 = time.process_time()
    got: dict[int, np.ndarray] = {}
    src = FileSource(path, max_rate=True)
    try:
        with src:
            for f in src:
                assert f.pts_s is not None
                got[round(f.pts_s * FPS)] = f.image
    except SourceError as e:
        return e, src.corrupt_frames, time.process_time() - t0
    return got, src.corrupt_frames, time.process_time() - t0


def _intact(path: Path) -> dict[int, np.ndarray]:
    got, corrupt, _ = _replay(path)
    assert isinstance(got, dict) and sorted(got) == list(range(N)) and corrupt == 0
    return got


def _packets(path: Path) -> dict[int, tuple[int, int]]:
    """frame index -> (byte offset, size) of its packet in the file."""
    out = {}
    with av.open(str(path)) as c:
        for p in c.demux(video=0):
            if p.size and p.pts is not None:
                out[round(float(p.pts * p.time_base) * FPS)] = (int(p.pos), p.size)
    return out


def _damage(data: bytearray, pos: int, size: int, how: str, rng: random.Random) -> None:
    a, b = pos + size // 4, pos + 3 * size // 4  # the middle half of the packet
    # (scattered bit flips are not used here: H.264 parses many of them as valid data,
    # which no decoder can detect; test_random_bit_flips_... counts those)
    data[a:b] = rng.randbytes(b - a) if how == "overwrite" else bytes(b - a)


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
@pytest.mark.parametrize("how", ["overwrite", "zero"])
def test_damaged_frames_and_their_dependents_are_never_yielded(tmp_path: Path, ext: str,
                                                               how: str) -> None:
    clip = _clip(tmp_path, ext)
    clean = _intact(clip)
    packets = _packets(clip)
    data = bytearray(clip.read_bytes())
    rng = random.Random(f"{ext}{how}")
    damaged = [23, 24]  # inside the GOP 20..29: 25..29 predict from them
    for i in damaged:
        _damage(data, *packets[i], how, rng)
    bad = tmp_path / f"bad.{ext}"
    bad.write_bytes(bytes(data))
    got, corrupt, seconds = _replay(bad)
    times.append(seconds)
    assert isinstance(got, dict), got
    skipped = sorted(set(range(N)) - set(got))
    print(f"\n{ext} {how}: damaged frames {damaged}, skipped {skipped}, counted {corrupt}, "
          f"{seconds:.3f} s")
    assert skipped == list(range(23, 30)) and corrupt == len(skipped)
    for i, image in got.items():  # everything handed on is exactly the intact frame
        assert np.array_equal(image, clean[i]), i


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_truncated_file_fails_typed_or_replays_an_exact_prefix(tmp_path: Path,
                                                                ext: str) -> None:
    clip = _clip(tmp_path, ext)
    clean = _intact(clip)
    data = clip.read_bytes()
    outcomes = []
    for frac in (0.0005, 0.01, 0.1, 0.33, 0.5, 0.9, 0.99):
        cut = tmp_path / f"cut.{ext}"
        cut.write_bytes(data[: int(len(data) * frac)])
        got, _, seconds = _replay(cut)
        times.append(seconds)
        if isinstance(got, SourceError):
            outcomes.append(type(got).__name__)
            assert seconds <= BOUND_S
            continue
        outcomes.append(len(got))
        assert sorted(got) == list(range(len(got)))  # a prefix, no gap
        assert all(np.array_equal(img, clean[i]) for i, img in got.items())
    print(f"\n{ext} cut at 0.05%..99%: {outcomes}")
    if ext == "mp4":  # its index (moov) is written last: any cut loses it
        assert all(o == "SourceFormatError" for o in outcomes)
    else:  # Matroska replays what precedes the cut, more the later the cut
        counts = [o for o in outcomes if isinstance(o, int)]
        assert counts == sorted(counts) and counts and counts[-1] >= N - 2


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_overwritten_header_zeros_and_garbage_fail_typed(tmp_path: Path, ext: str) -> None:
    data = _clip(tmp_path, ext).read_bytes()
    rng = random.Random(ext)
    cases = {"header 64 B": rng.randbytes(64) + data[64:],
             "header 512 B": rng.randbytes(512) + data[512:],
             "all zeros": bytes(len(data)), "random bytes": rng.randbytes(len(data)),
             "empty": b""}
    for name, content in cases.items():
        bad = tmp_path / f"bad.{ext}"
        bad.write_bytes(content)
        got, _, seconds = _replay(bad)
        times.append(seconds)
        print(f"\n{ext} {name}: {got!r:.110} in {seconds:.3f} s")
        assert isinstance(got, SourceFormatError) and seconds <= BOUND_S


def test_random_bit_flips_yield_only_original_frames(tmp_path: Path) -> None:
    """Flips anywhere in the middle third: typed error or frames at the clip's own
    timestamps. Damage the bitstream still parses as valid (a flipped coefficient) is
    undetectable by any decoder: it is counted here, not asserted away."""
    rng = random.Random(11)
    detected, undetectable, errors = 0, 0, 0
    for ext in ("mp4", "mkv"):
        clip = _clip(tmp_path, ext)
        clean = _intact(clip)
        data = clip.read_bytes()
        for _ in range(8):
            out = bytearray(data)
            for _ in range(rng.choice([3, 10, 30])):
                out[rng.randrange(len(out) // 3, 2 * len(out) // 3)] ^= 1 << rng.randrange(8)
            bad = tmp_path / f"flip.{ext}"
            bad.write_bytes(bytes(out))
            got, corrupt, seconds = _replay(bad)
            times.append(seconds)
            detected += corrupt
            if isinstance(got, SourceError):
                errors += 1
                assert seconds <= BOUND_S
                continue
            assert set(got) <= set(clean)
            undetectable += sum(not np.array_equal(img, clean[i]) for i, img in got.items())
    print(f"\n16 flipped files: {errors} typed errors, {detected} corrupt frames skipped, "
          f"{undetectable} frames damaged undetectably")
    assert detected > 0


def test_garbage_a_demuxer_scans_ends_within_a_second(tmp_path: Path) -> None:
    """20 MB of random bytes behind an MPEG-TS start: untimed, FFmpeg scans it for
    seconds; the open/read timeouts end it. And raw H.264 garbage: no frame decodes."""
    rng = random.Random(5)
    head = write_clip(tmp_path / "c.ts", frames=10).read_bytes()[:3000]
    cases = {"ts": head + rng.randbytes(20_000_000),
             "h264": b"\x00\x00\x00\x01\x67" + rng.randbytes(20_000_000)}
    for ext, content in cases.items():
        bad = tmp_path / f"garbage.{ext}"
        bad.write_bytes(content)
        got, _, seconds = _replay(bad)
        times.append(seconds)
        print(f"\n{ext} + 20 MB garbage: {got!r:.120} in {seconds:.3f} s")
        assert isinstance(got, SourceError) and seconds <= BOUND_S


def test_oversized_picture_is_refused_by_the_decoder(tmp_path: Path) -> None:
    """A picture over MAX_PIXELS (a damaged header can claim one) is never decoded."""
    path = tmp_path / "huge.mkv"
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("mjpeg", rate=30)
        s.width, s.height, s.pix_fmt = 4128, 4096, "yuvj420p"
        frame = av.VideoFrame(4128, 4096, "yuvj420p")
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.pts = 0
        for p in [*s.encode(frame), *s.encode()]:
            c.mux(p)
    got, corrupt, seconds = _replay(path)
    print(f"\n4128x4096 MJPEG: {got!r:.120} in {seconds:.3f} s")
    assert isinstance(got, SourceFormatError) and corrupt == 1


def test_zz_print_max_time_to_outcome() -> None:
    """Runs last in this file: the figure the issue asks for."""
    if not times:
        pytest.skip("run with the other tests of this file")
    print(f"\ncorrupt-file cases: {len(times)}, max CPU s to an error or the end: {max(times):.3f}")
