"""One DICOM pixel path: the live DICOM source (a frame at a time) and the training readers
(the whole cine at once) give the same 8-bit pixels, frame for frame, on DICOM files made
here with pydicom (bit depths, windows, rescale, MONOCHROME1, colour models) and on the
ultrasound examples pydicom ships (palette colour, a JPEG baseline YBR cine)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from support.dicom_media import us_frames, write_cine

from hepascope.stream.sources.dicom import DicomCineSource
from hepascope.train.datasets.io import read_frames


def _live(path: Path) -> list[np.ndarray]:
    with DicomCineSource(path, max_rate=True) as src:
        return [f.image for f in src]


def _retag(path: Path, **tags: object) -> Path:
    """The file with ``tags`` set (what a scanner or PACS would have written)."""
    ds = pydicom.dcmread(path)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
    return path


def _ramp(n: int = 4) -> np.ndarray:
    """12-bit frames using part of the stored range (200..3000), as a scanner's do: a rule
    by the image's own min-max and one by the stored range differ on them."""
    base = np.linspace(200, 3000, 48 * 64).reshape(48, 64)
    return np.stack([np.roll(base, 7 * i, axis=1) for i in range(n)]).astype(np.uint16)


CASES: dict[str, Callable[[Path], Path]] = {
    "grey8": lambda d: write_cine(d / "g8.dcm", us_frames(5)),
    "grey8-mono1": lambda d: write_cine(d / "m1.dcm", us_frames(5), photometric="MONOCHROME1"),
    "grey12-no-window": lambda d: write_cine(d / "g12.dcm", _ramp()),
    "grey12-window": lambda d: write_cine(d / "w12.dcm", _ramp(), window=(1200.0, 900.0)),
    "grey12-two-windows": lambda d: _retag(write_cine(d / "ww.dcm", _ramp()),
                                           WindowCenter=[800, 2000], WindowWidth=[400, 3000]),
    "grey12-rescale-mono1": lambda d: _retag(
        write_cine(d / "r.dcm", _ramp(), photometric="MONOCHROME1"),
        RescaleSlope=0.5, RescaleIntercept=-100),
    "grey12-rescale-window": lambda d: _retag(
        write_cine(d / "rw.dcm", _ramp()), RescaleSlope=2, RescaleIntercept=-1024,
        WindowCenter=2000, WindowWidth=3000),
    "grey12-sigmoid": lambda d: _retag(write_cine(d / "s.dcm", _ramp()),
                                       WindowCenter=2000, WindowWidth=1500,
                                       VOILUTFunction="SIGMOID"),
    "grey8-rescale": lambda d: _retag(write_cine(d / "g8r.dcm", us_frames(5)),
                                      RescaleSlope=1, RescaleIntercept=0),
    "rgb8": lambda d: write_cine(d / "rgb.dcm", us_frames(4, rgb=True)),
    "rgb12": lambda d: write_cine(d / "rgb12.dcm", us_frames(4, rgb=True, dtype=np.uint16)),
    "ybr422": lambda d: write_cine(d / "ybr.dcm", us_frames(4, rgb=True),
                                   photometric="YBR_FULL_422"),
    "palette-example": lambda d: Path(str(pydicom.examples.get_path("palette_color"))),
    "jpeg-ybr-cine-example": lambda d: Path(str(pydicom.examples.get_path("ybr_color"))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_live_and_training_see_the_same_pixels(tmp_path: Path, case: str) -> None:
    path = CASES[case](tmp_path)
    live, train = _live(path), read_frames(path)
    assert len(live) == len(train) >= 1
    diff = max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(live, train,
                                                                                 strict=True))
    levels = len(np.unique(live[0]))
    print(f"\n{case}: {len(live)} frames {live[0].shape}, {levels} grey levels, max diff {diff}")
    assert all(a.dtype == np.uint8 and a.shape == b.shape for a, b in zip(live, train,
                                                                          strict=True))
    assert diff == 0


def test_the_rule_is_the_dicom_display_pipeline(tmp_path: Path) -> None:
    """What the one function gives, against DICOM's own definitions (not against itself)."""
    ramp = _ramp(1)
    no_window = _live(write_cine(tmp_path / "a.dcm", ramp))[0]
    assert np.array_equal(no_window, (ramp[0] * (255 / 4095) + 0.5).astype(np.uint8))
    win = _live(write_cine(tmp_path / "b.dcm", ramp, window=(1200.0, 900.0)))[0]
    assert win[ramp[0] <= 750].max() == 0 and win[ramp[0] >= 1650].min() == 255
    assert len(np.unique(win)) == 256
    mono1 = _live(_retag(write_cine(tmp_path / "c.dcm", ramp, photometric="MONOCHROME1"),
                         RescaleSlope=0.5, RescaleIntercept=-100))[0]
    stored = 4095 - ramp[0].astype(float)  # how write_cine stores MONOCHROME1
    lo, hi = -100.0, 4095 * 0.5 - 100
    ref = 255 - ((stored * 0.5 - 100 - lo) * (255 / (hi - lo)) + 0.5).astype(np.uint8)
    assert np.abs(mono1.astype(int) - ref).max() <= 1
