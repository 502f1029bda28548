"""Readers for a hospital's own data: still images (PNG/JPEG/BMP/TIFF, DICOM) and clips
(video files, DICOM multi-frame cines, folders of images), all returned as the frames the
live pipeline captures: uint8 HxW grey or HxWx3 BGR. Anything unreadable is a
``DataError`` naming the file, so a bad item in a 10 000-file dataset is found at once.

DICOM: YBR is converted to RGB (pydicom 3 does it by default), then the one rule the live
DICOM source uses too (``stream/dicom_pixels.py``): palette applied, modality LUT, the
first VOI transform, else the range of Bits Stored, to 8 bits; MONOCHROME1 inverted."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hepascope.core.errors import DataError
from hepascope.stream.dicom_pixels import to_uint8

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
DICOM_EXTS = frozenset({".dcm", ".dicom"})
VIDEO_EXTS = frozenset({".mp4", ".mkv", ".avi", ".mov", ".m4v", ".webm", ".mpg", ".mpeg",
                        ".wmv"})
Frames = tuple[int, int] | None


def _exists(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: no such file")


def is_dicom(path: str | Path) -> bool:
    """A DICOM file by extension or by its 'DICM' magic (PACS exports often have no
    extension)."""
    p = Path(path)
    if p.suffix.lower() in DICOM_EXTS:
        return True
    if p.suffix or not p.is_file():
        return False
    with p.open("rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM"


def _natural_key(path: Path) -> list[Any]:
    # frame2.png before frame10.png; equals the plain order for zero-padded names
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def folder_frames(folder: str | Path) -> list[Path]:
    """Image files of a frame folder in frame order (sorted by name, numbers numerically)."""
    d = Path(folder)
    files = [f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS]
    return sorted(files, key=_natural_key)


def media_kind(path: str | Path) -> str:
    """``"image"`` or ``"clip"``: by extension, a DICOM's NumberOfFrames, or a folder of
    images (a clip); DataError for anything else."""
    p = Path(path)
    _exists(p)
    if p.is_dir():
        if not folder_frames(p):
            raise DataError(f"{p}: folder holds no images ({', '.join(sorted(IMAGE_EXTS))})")
        return "clip"
    ext = p.suffix.lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "clip"
    if is_dicom(p):
        return "clip" if _dicom_frames(_dcmread(p, header_only=True)) > 1 else "image"
    raise DataError(f"{p}: not an image, video or DICOM file")


def is_clip(path: str | Path) -> bool:
    return media_kind(path) == "clip"


def is_media(path: str | Path) -> bool:
    """Whether ``path`` looks like something the readers take (no decoding)."""
    p = Path(path)
    if p.name.startswith("."):
        return False
    ext = p.suffix.lower()
    return ext in IMAGE_EXTS or ext in VIDEO_EXTS or is_dicom(p)


# -- still images -----------------------------------------------------------------------
def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """8-bit as is; wider data by min-max (it has no window to go by)."""
    if arr.dtype == np.uint8:
        return arr
    lo, hi = float(arr.min()), float(arr.max())
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip((arr.astype(np.float32) - lo) * scale + 0.5, 0, 255).astype(np.uint8)


def _decode_raster(p: Path, data: np.ndarray) -> np.ndarray:
    if data.size == 0:
        raise DataError(f"{p}: empty file")
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        raise DataError(f"{p}: cannot decode as an image ({e})") from e
    if img is None or img.size == 0:
        raise DataError(f"{p}: cannot decode as an image (corrupt or not {p.suffix[1:]})")
    if p.suffix.lower() in (".jpg", ".jpeg") and not bytes(data[-64:]).rstrip(b"\0").endswith(
            b"\xff\xd9"):
        # OpenCV 4 returns a grey-filled partial image for a truncated JPEG; refuse it
        raise DataError(f"{p}: truncated JPEG (no end-of-image marker)")
    if img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    elif img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    return np.ascontiguousarray(_to_uint8(img))


def read_image(path: str | Path) -> np.ndarray:
    """One still image as uint8 HxW or HxWx3 BGR (PNG/JPEG/BMP/TIFF, single-frame DICOM)."""
    p = Path(path)
    _exists(p)
    if is_dicom(p):
        frames = _read_dicom(p, None)
        if len(frames) != 1:
            raise DataError(f"{p}: a DICOM cine of {len(frames)} frames, not an image; "
                            "read it with read_clip")
        return frames[0]
    if p.suffix.lower() not in IMAGE_EXTS:
        raise DataError(f"{p}: unsupported image type (use {', '.join(sorted(IMAGE_EXTS))} "
                        "or DICOM)")
    # bytes + imdecode: cv2.imread cannot open non-ASCII paths on every platform
    return _decode_raster(p, np.fromfile(p, dtype=np.uint8))


# -- DICOM ------------------------------------------------------------------------------
def _dcmread(p: Path, header_only: bool = False) -> Any:
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError as e:
        raise DataError(f"{p}: reading DICOM needs pydicom: pip install 'pydicom>=3'") from e
    if int(pydicom.__version__.split(".")[0]) < 3:  # pydicom.pixels, YBR->RGB by default
        raise DataError(f"{p}: reading DICOM needs pydicom>=3 (found {pydicom.__version__})")

    try:
        return pydicom.dcmread(p, stop_before_pixels=header_only)
    except (InvalidDicomError, OSError, ValueError, EOFError) as e:
        raise DataError(f"{p}: not a readable DICOM file ({e})") from e


def _dicom_frames(ds: Any) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as e:
        raise DataError(f"invalid NumberOfFrames {ds.get('NumberOfFrames')!r}") from e


def _dicom_pixels(p: Path, ds: Any) -> np.ndarray:
    """(F, H, W[, 3]) as pydicom decodes it (YBR already converted to RGB)."""
    if "PixelData" not in ds:
        raise DataError(f"{p}: DICOM has no pixel data (a report or structured document?)")
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        arr = ds.pixel_array
    except (RuntimeError, NotImplementedError, ValueError, AttributeError) as e:
        name = getattr(ts, "name", str(ts))
        why = " ".join(str(e).split())  # pydicom lists the plugins on several lines
        raise DataError(
            f"{p}: cannot decode its {name} pixel data: {why}. Install a decoder, e.g. "
            "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg (or python-gdcm)"
        ) from e
    n = _dicom_frames(ds)
    samples = int(ds.get("SamplesPerPixel", 1))
    if n == 1:
        arr = arr[None]
    if arr.ndim != (4 if samples == 3 else 3):
        raise DataError(f"{p}: unexpected pixel array shape {arr.shape} for {n} frame(s), "
                        f"{samples} sample(s) per pixel")
    return arr


def _pick(p: Path, n: int, want: Sequence[int] | None) -> Sequence[int]:
    """``want`` checked against a clip of ``n`` frames (all of them when None)."""
    if want is None:
        return range(n)
    if want and max(want) >= n:
        raise DataError(f"{p}: frame {max(want)} asked for, beyond its {n} frames")
    return want


def _read_dicom(p: Path, want: Sequence[int] | None) -> list[np.ndarray]:
    ds = _dcmread(p)
    arr = _dicom_pixels(p, ds)
    out = to_uint8(ds, arr)  # the live DICOM source's rule: the same pixels in training
    idx = _pick(p, len(out), want)
    if out.ndim == 4:
        return [np.ascontiguousarray(out[i][..., ::-1]) for i in idx]  # RGB -> BGR
    return [np.ascontiguousarray(out[i]) for i in idx]


def _read_video(p: Path, want: Sequence[int] | None) -> list[np.ndarray]:
    import av

    wanted = None if want is None else set(want)
    last = None if not wanted else max(wanted)
    got: dict[int, np.ndarray] = {}
    n = 0
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise DataError(f"{p}: no video stream")
            for n, frame in enumerate(container.decode(video=0), start=1):
                if wanted is None or n - 1 in wanted:
                    got[n - 1] = frame.to_ndarray(format="bgr24")
                if last is not None and n > last:
                    break  # stop decoding early: the rest of the clip is not needed
    except av.error.FFmpegError as e:
        raise DataError(f"{p}: cannot decode video ({e})") from e
    if not n:
        raise DataError(f"{p}: no frames decoded")
    return [got[i] for i in _pick(p, n, want)]  # n: frames decoded (all, or up to last)


def _read_folder(p: Path, want: Sequence[int] | None) -> list[np.ndarray]:
    files = folder_frames(p)
    if not files:
        raise DataError(f"{p}: folder holds no images")
    idx = _pick(p, len(files), want)
    cache = {i: read_image(files[i]) for i in sorted(set(idx))}
    if len({im.shape for im in cache.values()}) != 1:
        raise DataError(f"{p}: frames differ in size or channels")
    return [cache[i] for i in idx]


def _check_range(p: Path, frames: tuple[int, int]) -> range:
    start, stop = int(frames[0]), int(frames[1])
    if start < 0 or stop <= start:
        raise DataError(f"{p}: bad frame range [{start}, {stop}): need 0 <= start < stop")
    return range(start, stop)


def read_frames(path: str | Path, indices: Sequence[int] | None = None) -> list[np.ndarray]:
    """Frames ``indices`` of a clip (any order, repeats allowed; all when None) as uint8
    HxW or HxWx3 BGR: a video file (PyAV), a DICOM cine, a folder of images (sorted by
    name; only the files needed are read) or a still image (one frame). A video is decoded
    up to the last frame needed, and only the frames needed are kept."""
    p = Path(path)
    _exists(p)
    if indices is not None and any(i < 0 for i in indices):
        raise DataError(f"{p}: negative frame index in {list(indices)[:8]}")
    if p.is_dir():
        return _read_folder(p, indices)
    if p.suffix.lower() in VIDEO_EXTS:
        return _read_video(p, indices)
    if is_dicom(p):
        return _read_dicom(p, indices)
    if p.suffix.lower() in IMAGE_EXTS:
        img = read_image(p)
        return [img for _ in _pick(p, 1, indices)]
    raise DataError(f"{p}: not a video, DICOM cine or folder of images")


def read_clip(path: str | Path, frames: Frames = None) -> list[np.ndarray]:
    """Frames of a clip, oldest first (see ``read_frames`` for the kinds of clip);
    ``frames=(start, stop)`` keeps frames ``start <= k < stop``, decoding stops at stop."""
    p = Path(path)
    return read_frames(p, None if frames is None else _check_range(p, frames))


def clip_length(path: str | Path) -> int:
    """Number of frames of a clip (container metadata where it has it, else packets)."""
    p = Path(path)
    _exists(p)
    if p.is_dir():
        return len(folder_frames(p))
    if is_dicom(p):
        return _dicom_frames(_dcmread(p, header_only=True))
    if p.suffix.lower() in IMAGE_EXTS:
        return 1
    import av

    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise DataError(f"{p}: no video stream")
            n = int(container.streams.video[0].frames or 0)
            # Matroska stores no frame count: one packet per frame, counted without decoding
            return n or sum(1 for pk in container.demux(video=0) if pk.size)
    except av.error.FFmpegError as e:
        raise DataError(f"{p}: cannot read video ({e})") from e


# -- writers ----------------------------------------------------------------------------
def write_image(path: str | Path, image: np.ndarray) -> Path:
    """A PNG (lossless), via imencode so non-ASCII paths work."""
    p = Path(path)
    ok, buf = cv2.imencode(p.suffix or ".png", image)
    if not ok:
        raise DataError(f"{p}: cannot encode image {image.dtype} {image.shape}")
    buf.tofile(p)
    return p


def write_clip(path: str | Path, frames: list[np.ndarray], fps: float) -> Path:
    """A lossless clip: FFV1 in Matroska (.mkv), BGR frames of one size, read back
    bit-exact by ``read_clip``."""
    from fractions import Fraction

    import av

    p = Path(path)
    if not frames or len({f.shape for f in frames}) != 1:
        raise DataError(f"{p}: need frames of one size")
    h, w = frames[0].shape[:2]
    with av.open(str(p), "w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = w, h, "bgr0"
        for f in frames:
            bgr = (f if f.ndim == 3 else cv2.cvtColor(f, cv2.COLOR_GRAY2BGR)).astype(
                np.uint8, copy=False)
            for packet in stream.encode(av.VideoFrame.from_ndarray(bgr, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return p
