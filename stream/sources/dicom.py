"""Replay of DICOM cines (ultrasound clips exported from PACS) through pydicom, paced by
the file's own frame timing, like ``FileSource`` for video files.

Timing, first found wins: the attribute the Frame Increment Pointer (0028,0009) names,
Frame Time Vector (0018,1065, ms since the previous frame), Frame Time (0018,1063, ms),
Cine Rate (0018,0040, frames/s), Recommended Display Frame Rate (0008,2144), else
``DEFAULT_FPS``. An attribute that is malformed (a vector of the wrong length, a rate <= 0)
is passed over for the next. ``timing`` says which one was used.

Pixels: MONOCHROME1/2 give grey frames (MONOCHROME1 inverted, so that high is bright);
RGB, YBR_FULL, YBR_FULL_422 and PALETTE COLOR give BGR frames (YBR converted to RGB by
pydicom's ``convert_color_space``). To 8 bits by the one rule the training readers use too
(``stream/dicom_pixels.py``: modality LUT, first VOI transform, else the range of Bits
Stored), fixed for the whole file, so that its frames stay comparable and no frame needs
to be seen in advance. Compressed transfer syntaxes decode when a pydicom decoder plugin
is installed (Pillow covers JPEG baseline and JPEG 2000), else ``SourceFormatError`` says
which transfer syntax and which plugins would do.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.core.errors import SourceError, SourceFormatError, SourceNotFoundError
from hepascope.stream.dicom_pixels import to_uint8
from hepascope.stream.sources.base import Pacer, SourceBase

DEFAULT_FPS = 30.0  # when the file states no timing at all
PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422",
                "PALETTE COLOR")
FRAME_TIME, FRAME_TIME_VECTOR = 0x00181063, 0x00181065
# What pydicom raises on a damaged file besides its own InvalidDicomError: short reads, bad
# lengths, values that do not parse, pixel data that does not match its description.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError,
    OverflowError, struct.error, NotImplementedError, RuntimeError, MemoryError)


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError as e:
        raise SourceFormatError("DICOM replay needs pydicom: pip install 'pydicom>=3'") from e
    if int(pydicom.__version__.split(".")[0]) < 3:  # pydicom.pixels is new in 3.0
        raise SourceFormatError(f"DICOM replay needs pydicom>=3 (found {pydicom.__version__})")
    return pydicom


def _positive(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) and x > 0 else None


def frame_times(ds: Any, n: int) -> tuple[list[float], str]:
    """Presentation time (s) of each of ``n`` frames, and the attribute it came from."""
    pointer = ds.get("FrameIncrementPointer")
    pointed = [int(t) for t in (pointer if isinstance(pointer, Sequence) else [pointer])
               if t is not None]
    order = [FRAME_TIME_VECTOR, FRAME_TIME]
    order.sort(key=lambda tag: tag not in pointed)  # the pointed one first
    for tag in order:
        if tag not in ds:
            continue
        value = ds[tag].value
        if tag == FRAME_TIME:
            ms = _positive(value)
            if ms is not None:
                return [i * ms / 1000.0 for i in range(n)], "FrameTime"
            continue
        steps = [value] if not isinstance(value, Sequence) else list(value)
        try:
            ms_steps = [float(v) for v in steps]
        except (TypeError, ValueError):
            continue
        if len(ms_steps) == n and all(math.isfinite(v) and v >= 0 for v in ms_steps):
            # each entry is the time since the previous frame; the first frame is at 0
            return [float(t) / 1000.0 for t in np.cumsum([0.0, *ms_steps[1:]])], "FrameTimeVector"
    for name in ("CineRate", "RecommendedDisplayFrameRate"):
        fps = _positive(ds.get(name))
        if fps is not None:
            return [i / fps for i in range(n)], name
    return [i / DEFAULT_FPS for i in range(n)], "default"


class DicomCineSource(SourceBase):
    """Frames of a DICOM cine (or single image) in order, paced by its frame timing.

    ``speed`` scales the timing (2.0 plays twice as fast); ``max_rate`` ignores it;
    ``loop`` starts again after the last frame. Frames are decoded one at a time.
    """

    def __init__(self, path: str | Path, *, speed: float = 1.0, max_rate: bool = False,
                 loop: bool = False, source_id: str | None = None) -> None:
        self.path = Path(path)
        super().__init__(source_id or f"dicom:{self.path.name}")
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.pacer = Pacer(None if max_rate else speed)
        self.loop = loop
        self._ds: Any = None
        self._errors: tuple[type[BaseException], ...] = _READ_ERRORS
        self.frames_total = 0
        self.times: list[float] = []
        self.timing = ""
        self.photometric = ""
        self.transfer_syntax = ""

    def _open(self) -> None:
        if not self.path.is_file():
            raise SourceNotFoundError(f"{self.path}: no such file")
        pydicom = _pydicom()
        # pydicom parses elements lazily: any access to the dataset may meet the damage
        self._errors = (pydicom.errors.InvalidDicomError,
                        pydicom.errors.BytesLengthException, *_READ_ERRORS)
        try:
            self._ds = pydicom.dcmread(self.path)
            self._check(self._ds)
            self.frames_total = self._count(self._ds)
            self.times, self.timing = frame_times(self._ds, self.frames_total)
            self._image(0)  # decode one frame now: a file that cannot replay fails at open
        except SourceError:
            raise
        except self._errors as e:
            raise SourceFormatError(f"{self.path}: not a readable DICOM image "
                                    f"({type(e).__name__}: {' '.join(str(e).split())})"
                                    ) from e

    def _count(self, ds: Any) -> int:
        try:
            n = int(ds.get("NumberOfFrames", 1) or 1)
        except (TypeError, ValueError) as e:
            raise SourceFormatError(f"{self.path}: invalid NumberOfFrames "
                                    f"{ds.get('NumberOfFrames')!r}") from e
        if n < 1:
            raise SourceFormatError(f"{self.path}: NumberOfFrames is {n}")
        return n

    def _check(self, ds: Any) -> None:
        """Refuse what cannot be replayed, saying why, before touching the pixels."""
        if "PixelData" not in ds:
            kind = getattr(ds.get("SOPClassUID"), "name", None) or "no SOP class"
            raise SourceFormatError(f"{self.path}: DICOM without pixel data ({kind}): "
                                    "not an image or cine")
        meta = getattr(ds, "file_meta", None)
        ts = meta.get("TransferSyntaxUID") if meta is not None else None
        if ts is None:
            raise SourceFormatError(f"{self.path}: DICOM without a transfer syntax in its "
                                    "file meta information")
        self.transfer_syntax = f"{ts.name} ({ts})"
        self._check_decoder(ts)
        self.photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
        if self.photometric not in PHOTOMETRICS:
            raise SourceFormatError(f"{self.path}: photometric interpretation "
                                    f"{self.photometric or 'missing'} is not supported "
                                    f"({', '.join(PHOTOMETRICS)})")
        bits = ds.get("BitsAllocated")
        if bits not in (8, 16):
            raise SourceFormatError(f"{self.path}: {bits} bits allocated; 8 or 16 supported")

    def _check_decoder(self, ts: Any) -> None:
        from pydicom.pixels import get_decoder

        try:
            decoder = get_decoder(ts)
        except NotImplementedError as e:
            raise SourceFormatError(f"{self.path}: pixel data in transfer syntax "
                                    f"{self.transfer_syntax}, which pydicom cannot decode "
                                    "with any plugin") from e
        if not decoder.is_available:
            plugins = "; ".join(decoder.missing_dependencies)
            raise SourceFormatError(
                f"{self.path}: pixel data compressed as {self.transfer_syntax} and no "
                f"installed decoder plugin can decode it; install one of: {plugins} "
                "(e.g. pip install pylibjpeg pylibjpeg-libjpeg)")

    def _image(self, index: int) -> np.ndarray:
        """Frame ``index`` as uint8 grey or BGR."""
        from pydicom.pixels import pixel_array

        try:  # as_rgb (the default): YBR is converted with convert_color_space
            arr = pixel_array(self._ds, index=index)
        except self._errors as e:
            raise SourceFormatError(f"{self.path}: cannot decode frame {index} "
                                    f"({self.transfer_syntax}): {' '.join(str(e).split())}"
                                    ) from e
        return to_display(self._ds, arr)

    def _frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        while True:
            for i in range(self.frames_total):
                image = self._image(i)
                self.pacer.wait(self.times[i])
                yield image, self.times[i]
            if not self.loop:
                return
            self.pacer.reset()

    def _close(self) -> None:
        self._ds = None


def to_display(ds: Any, arr: np.ndarray) -> np.ndarray:
    """One decoded frame as the pipeline takes it: uint8 grey, or BGR from RGB, by the one
    DICOM pixel rule (``stream/dicom_pixels.py``) the training readers use too."""
    out = to_uint8(ds, arr)
    return np.ascontiguousarray(out[..., ::-1] if out.ndim == 3 else out)
