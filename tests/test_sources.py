"""File replay (PyAV) and capture (OpenCV) sources against videos made here."""

from __future__ import annotations

import glob
import time
from pathlib import Path

import numpy as np
import pytest
from support.media import matches_pattern, write_video

from hepascope.core.errors import (
    ConfigError,
    SourceError,
    SourceFormatError,
    SourceNotFoundError,
)
from hepascope.stream.sources import Source, SourceOptions, open_source
from hepascope.stream.sources.capture import CaptureSource
from hepascope.stream.sources.file import FileSource
from hepascope.stream.sources.watchdog import Watchdog


def test_file_source_decodes_every_frame_in_order(video30: Path) -> None:
    with FileSource(video30, max_rate=True) as src:
        assert isinstance(src, Source)
        frames = list(src)
    assert len(frames) == 90
    assert [f.seq for f in frames] == list(range(90))
    assert all(f.image.shape == (384, 768, 3) for f in frames)
    assert frames[10].pts_s == pytest.approx(10 / 30, abs=1e-3)
    assert matches_pattern(frames[0].image, 0) and matches_pattern(frames[57].image, 57)
    times = [f.t_capture_ns for f in frames]
    assert times == sorted(times)


def test_file_source_is_paced_by_timestamps(tmp_path: Path) -> None:
    clip = write_video(tmp_path / "c.mp4", frames=16, fps=30, size=(64, 96))
    t0 = time.monotonic()
    n = sum(1 for _ in FileSource(clip))
    paced = time.monotonic() - t0
    t0 = time.monotonic()
    sum(1 for _ in FileSource(clip, speed=4.0))
    fast = time.monotonic() - t0
    assert n == 16
    # 15 frame intervals of 1/30 s: the source must not run ahead of the file's clock
    assert paced >= 15 / 30 * 0.95
    assert fast >= 15 / 120 * 0.95 and fast < paced


def test_file_source_loops(tmp_path: Path) -> None:
    clip = write_video(tmp_path / "c.mp4", frames=5, fps=30, size=(64, 96))
    src = FileSource(clip, max_rate=True, loop=True)
    frames = []
    for f in src:
        frames.append(f)
        if len(frames) == 12:
            break
    src.close()
    assert [f.seq for f in frames] == list(range(12))
    assert matches_pattern(frames[5].image, 0) and matches_pattern(frames[11].image, 1)


def test_file_source_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError), FileSource(tmp_path / "nope.mp4"):
        pass
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 100)
    with pytest.raises(SourceFormatError), FileSource(text):
        pass
    with pytest.raises(ValueError):
        FileSource(text, speed=0)


def test_truncated_file_gives_a_source_error_not_a_crash(video30: Path, tmp_path: Path) -> None:
    data = video30.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])
    try:
        with FileSource(cut, max_rate=True) as src:
            n = sum(1 for _ in src)
        assert n < 90  # moov may be missing (open fails) or frames end early
    except SourceError:
        pass


def test_open_source_parses_specs(video30: Path) -> None:
    assert isinstance(open_source(str(video30)), FileSource)
    cam = open_source("cam:3", SourceOptions(width=640, height=480, fps=30, watchdog_s=None))
    assert isinstance(cam, CaptureSource) and cam.device == 3
    assert isinstance(open_source("v4l2:/dev/video7", SourceOptions(watchdog_s=None)),
                      CaptureSource)
    guarded = open_source("v4l2:/dev/video7")  # by default a watchdog replaces a hung grabber
    assert isinstance(guarded, Watchdog) and guarded.source_id == "v4l2:/dev/video7"
    with pytest.raises(ConfigError):
        open_source("cam:/dev/video0")
    with pytest.raises(ConfigError):
        open_source("http://example.invalid/x")
    with pytest.raises(ConfigError):
        open_source("")


def test_capture_source_reads_through_its_opencv_path(video30: Path) -> None:
    # No capture card here: the same OpenCV VideoCapture path reads a file via FFMPEG.
    with CaptureSource(str(video30), backend="ffmpeg") as src:
        frames = []
        for f in src:
            frames.append(f)
            if len(frames) == 20:
                break
        assert src.granted is not None and src.granted[:2] == (768, 384)
    assert [f.seq for f in frames] == list(range(20))
    assert matches_pattern(frames[19].image, 19)


def test_capture_source_missing_device() -> None:
    with pytest.raises(SourceNotFoundError), CaptureSource("/dev/video-none"):
        pass
    with pytest.raises(ValueError):
        CaptureSource(0, width=-1)


@pytest.mark.device
@pytest.mark.skipif(not glob.glob("/dev/video*"), reason="no V4L2 capture device on this machine")
def test_capture_card_delivers_frames() -> None:
    dev = sorted(glob.glob("/dev/video*"))[0]
    with CaptureSource(dev, width=640, height=480, fps=30) as src:
        frame = next(iter(src))
    assert frame.image.ndim == 3


def test_ring_source_reads_another_pipelines_frames() -> None:
    import threading
    import uuid

    from hepascope.core.frame import Frame
    from hepascope.stream.ring import RingWriter, slot_bytes_for
    from hepascope.stream.sources.shm import RingSource

    name = f"hs-test-{uuid.uuid4().hex[:8]}"
    writer = RingWriter(name, slots=16, slot_bytes=slot_bytes_for(48, 64))
    src = open_source(f"shm:{name}")
    assert isinstance(src, RingSource)
    src.open()

    errors: list[BaseException] = []

    def produce() -> None:
        try:
            time.sleep(0.2)
            for i in range(10):
                writer.write(Frame(np.full((48, 64, 3), i, np.uint8), i, 1_000 + i, "cam:0"))
                time.sleep(0.01)
        except BaseException as e:
            errors.append(e)
        finally:
            writer.close()

    t = threading.Thread(target=produce)
    t.start()
    frames = list(src)
    t.join()
    src.close()
    assert not errors, errors
    assert [int(f.image[0, 0, 0]) for f in frames] == list(range(10))
    assert [f.t_capture_ns for f in frames] == [1_000 + i for i in range(10)]  # kept
    assert [f.seq for f in frames] == list(range(10)) and src.drops == 0
