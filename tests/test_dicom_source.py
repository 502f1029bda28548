"""DICOM cine replay against real DICOM files written here with pydicom (Ultrasound
Multi-frame Image Storage, proper file meta): colour models, bit depths, timing, and the
files it must refuse with a clear, typed error."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import JPEGLosslessSV1
from support.dicom_media import (
    jpeg_cine,
    us_frames,
    write_cine,
    write_encapsulated,
    write_report,
)

from hepascope.core.errors import SourceFormatError, SourceNotFoundError
from hepascope.stream.sources import Source, SourceOptions, open_source
from hepascope.stream.sources.dicom import DEFAULT_FPS, DicomCineSource


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _replay(path: Path, **kw: object) -> tuple[list[np.ndarray], list[float], DicomCineSource]:
    src = DicomCineSource(path, max_rate=True, **kw)  # type: ignore[arg-type]
    with src:
        frames = list(src)
    return [f.image for f in frames], [f.pts_s or 0.0 for f in frames], src


def test_grey_cine_replays_every_frame_with_frame_time(tmp_path: Path) -> None:
    grey = us_frames(12)
    images, pts, src = _replay(write_cine(tmp_path / "g.dcm", grey, frame_time_ms=40.0))
    assert isinstance(src, Source) and src.timing == "FrameTime"
    assert len(images) == 12
    assert all(np.array_equal(a, b) for a, b in zip(images, grey, strict=True))
    assert pts == pytest.approx([i * 0.040 for i in range(12)])


def test_monochrome1_is_inverted_to_high_is_bright(tmp_path: Path) -> None:
    grey = us_frames(3)
    images, _, src = _replay(write_cine(tmp_path / "m1.dcm", grey, photometric="MONOCHROME1"))
    assert src.photometric == "MONOCHROME1" and src.timing == "default"
    assert all(np.array_equal(a, b) for a, b in zip(images, grey, strict=True))


@pytest.mark.parametrize("photometric, tol", [("RGB", 0), ("YBR_FULL", 2),
                                               ("YBR_FULL_422", 2)])
def test_colour_cines_come_out_bgr(tmp_path: Path, photometric: str, tol: int) -> None:
    rgb = us_frames(4, h=48, w=64, rgb=True)
    rgb[..., 1] = rgb[..., 0]  # chroma constant over pixel pairs: 4:2:2 loses nothing
    rgb[:, :, 1::2] = rgb[:, :, 0::2]
    images, _, _ = _replay(write_cine(tmp_path / "c.dcm", rgb, photometric=photometric))
    worst = max(int(np.abs(a.astype(int) - b[..., ::-1].astype(int)).max())
                for a, b in zip(images, rgb, strict=True))
    print(f"\n{photometric}: max error {worst} (BGR out)")
    assert len(images) == 4 and images[0].shape == (48, 64, 3) and worst <= tol


def test_frame_time_vector_timing(tmp_path: Path) -> None:
    vector = [0.0, 20.0, 20.0, 60.0, 10.0]
    clip = write_cine(tmp_path / "v.dcm", us_frames(5, rgb=True), frame_time_vector=vector,
                      cine_rate=99.0)
    _, pts, src = _replay(clip)
    assert src.timing == "FrameTimeVector" and pts == pytest.approx([0, .02, .04, .10, .11])
    t0 = time.monotonic()  # paced: 0.11 s of cine at speed 0.5 takes >= 0.22 s
    with DicomCineSource(clip, speed=0.5) as paced:
        assert len(list(paced)) == 5
    assert time.monotonic() - t0 >= 0.22 * 0.95


def test_timing_falls_back_to_cine_rate_then_default(tmp_path: Path) -> None:
    _, pts, src = _replay(write_cine(tmp_path / "r.dcm", us_frames(3), cine_rate=50.0))
    assert src.timing == "CineRate" and pts == pytest.approx([0, 0.02, 0.04])
    bad_vector = write_cine(tmp_path / "b.dcm", us_frames(3), frame_time_vector=[0.0, 5.0])
    _, pts, src = _replay(bad_vector)  # wrong length: passed over
    assert src.timing == "default" and pts == pytest.approx([0, 1 / DEFAULT_FPS, 2 / DEFAULT_FPS])


def test_sixteen_bit_is_windowed_to_eight(tmp_path: Path) -> None:
    wide = us_frames(3, dtype=np.uint16)  # values 409 and 4095 in 12 bits stored
    images, _, _ = _replay(write_cine(tmp_path / "w.dcm", wide))  # no window: 0..4095
    assert images[0].dtype == np.uint8 and set(np.unique(images[0])) == {25, 255}
    images, _, _ = _replay(write_cine(tmp_path / "v.dcm", wide, window=(409.0, 200.0)))
    assert set(np.unique(images[0])) == {128, 255}  # 409 is the window's centre


def test_single_frame_and_loop(tmp_path: Path) -> None:
    one = write_cine(tmp_path / "one.dcm", us_frames(1))
    src = DicomCineSource(one, max_rate=True, loop=True)
    got = []
    for f in src:
        got.append(f)
        if len(got) == 3:
            break
    src.close()
    assert [f.seq for f in got] == [0, 1, 2] and np.array_equal(got[0].image, got[2].image)


def test_jpeg_baseline_decodes_with_an_installed_plugin(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    rgb = us_frames(3, rgb=True)
    images, pts, src = _replay(jpeg_cine(tmp_path / "j.dcm", rgb))
    err = max(float(np.abs(a.astype(int) - b[..., ::-1].astype(int)).mean())
              for a, b in zip(images, rgb, strict=True))
    print(f"\n{src.transfer_syntax}: mean abs error {err:.2f}")
    assert len(images) == 3 and err < 4 and pts == pytest.approx([0, 0.04, 0.08])


def test_compressed_without_a_decoder_names_the_syntax_and_plugin(tmp_path: Path) -> None:
    clip = write_encapsulated(tmp_path / "jl.dcm", [b"\xff\xd8\xff\xc3" + bytes(64)] * 2,
                              ts=JPEGLosslessSV1, h=48, w=64, photometric="MONOCHROME2",
                              samples=1)
    with pytest.raises(SourceFormatError) as e, DicomCineSource(clip):
        pass
    print(f"\n{e.value}")
    assert "JPEG Lossless" in str(e.value) and "1.2.840.10008.1.2.4.70" in str(e.value)
    assert "pylibjpeg" in str(e.value)


def test_non_image_and_non_dicom_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(SourceFormatError, match=r"without pixel data.*Comprehensive SR"), \
            DicomCineSource(write_report(tmp_path / "sr.dcm")):
        pass
    text = tmp_path / "notes.dcm"
    text.write_text("not DICOM\n" * 50)
    with pytest.raises(SourceFormatError, match="not a readable DICOM"), DicomCineSource(text):
        pass
    with pytest.raises(SourceNotFoundError), DicomCineSource(tmp_path / "nope.dcm"):
        pass
    with pytest.raises(ValueError):
        DicomCineSource(text, speed=0)


def test_open_source_dispatches_dicom(tmp_path: Path) -> None:
    clip = write_cine(tmp_path / "clip.dcm", us_frames(2))
    assert isinstance(open_source(str(clip)), DicomCineSource)
    assert isinstance(open_source(f"dicom:{clip}"), DicomCineSource)
    src = open_source(str(tmp_path / "X.DICOM"), SourceOptions(max_rate=True))
    assert isinstance(src, DicomCineSource) and src.pacer.speed is None


def test_cli_runs_a_dicom_cine_end_to_end(tmp_path: Path, small_model: Path) -> None:
    # the default layout's views fit the 768x384 frames of the project's ultrasound feed
    clip = write_cine(tmp_path / "liver.dcm", us_frames(40, h=384, w=768), frame_time_ms=25.0)
    summary = tmp_path / "summary.json"
    res = subprocess.run([sys.executable, "-m", "hepascope.cli", "run", "--source",
                          str(clip), "--model", str(small_model),
                          "--publish", f"tcp://127.0.0.1:{_free_port()}",
                          "--summary", str(summary)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    run = json.loads(summary.read_text())
    print(f"\nrun on a 40-frame DICOM cine (1 s at its FrameTime): {run}")
    assert run["frames_in"] == 40 and run["frames_out"] > 0
    assert run["source"] == "dicom:liver.dcm"
