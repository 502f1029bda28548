"""Real DICOM files the tests make for themselves with pydicom: ultrasound multi-frame
cines (native or encapsulated pixel data) and a structured report without pixels."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

US_MULTIFRAME = UID("1.2.840.10008.5.1.4.1.1.3.1")  # Ultrasound Multi-frame Image Storage
COMPREHENSIVE_SR = UID("1.2.840.10008.5.1.4.1.1.88.33")


def us_frames(n: int, h: int = 48, w: int = 64, *, rgb: bool = False,
              dtype: type = np.uint8) -> np.ndarray:
    """(n, h, w[, 3]) frames whose content encodes the index: a bright bar moving right,
    a dark background (RGB: the bar is red, so colour order is checked too)."""
    hi = 255 if dtype == np.uint8 else 4095
    shape = (n, h, w, 3) if rgb else (n, h, w)
    out = np.full(shape, hi // 10, dtype=dtype)
    for i in range(n):
        x = (i * 5) % (w - 8)
        if rgb:
            out[i, h // 4: 3 * h // 4, x: x + 8] = (hi, hi // 5, hi // 5)
        else:
            out[i, h // 4: 3 * h // 4, x: x + 8] = hi
    return out


def _base(sop_class: UID, ts: UID) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ts
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID = "Phantom^Liver", "HS0001"
    ds.Modality = "US" if sop_class == US_MULTIFRAME else "SR"
    return ds


def _ybr422(rgb: np.ndarray) -> bytes:
    """Native YBR_FULL_422: per pair of pixels Y1 Y2 Cb Cr (chroma of the pair averaged)."""
    ybr = convert_color_space(rgb.copy(), "RGB", "YBR_FULL", per_frame=True).astype(np.uint16)
    y = ybr[..., 0]
    cb = ((ybr[..., 0::2, 1] + ybr[..., 1::2, 1] + 1) // 2).astype(np.uint8)
    cr = ((ybr[..., 0::2, 2] + ybr[..., 1::2, 2] + 1) // 2).astype(np.uint8)
    packed = np.stack([y[..., 0::2], y[..., 1::2], cb, cr], axis=-1).astype(np.uint8)
    return packed.tobytes()


def write_cine(path: Path, frames: np.ndarray, *, photometric: str | None = None,
               frame_time_ms: float | None = None,
               frame_time_vector: list[float] | None = None,
               cine_rate: float | None = None,
               window: tuple[float, float] | None = None) -> Path:
    """An uncompressed (Explicit VR Little Endian) Ultrasound Multi-frame file of
    ``frames``: (n, h, w) grey or (n, h, w, 3) RGB, uint8 or uint16 (12 bits stored).
    ``photometric`` for colour: RGB (default), YBR_FULL or YBR_FULL_422 (converted from the
    RGB given); for grey: MONOCHROME2 (default) or MONOCHROME1 (stored inverted)."""
    rgb = frames.ndim == 4
    ds = _base(US_MULTIFRAME, ExplicitVRLittleEndian)
    n, h, w = frames.shape[:3]
    ds.NumberOfFrames, ds.Rows, ds.Columns = n, h, w
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = photometric or ("RGB" if rgb else "MONOCHROME2")
    bits = 8 if frames.dtype == np.uint8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, 8 if bits == 8 else 12, \
        7 if bits == 8 else 11
    ds.PixelRepresentation = 0
    data = frames
    if ds.PhotometricInterpretation == "MONOCHROME1":
        data = (255 if bits == 8 else 4095) - frames
    if rgb:
        ds.PlanarConfiguration = 0
        if ds.PhotometricInterpretation == "YBR_FULL":
            data = convert_color_space(frames.copy(), "RGB", "YBR_FULL", per_frame=True)
    if ds.PhotometricInterpretation == "YBR_FULL_422":
        ds.PixelData = _ybr422(frames)
    else:
        ds.PixelData = np.ascontiguousarray(data).astype(f"<u{bits // 8}").tobytes()
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    _timing(ds, frame_time_ms, frame_time_vector, cine_rate)
    ds.save_as(path, enforce_file_format=True)
    return path


def _timing(ds: Dataset, frame_time_ms: float | None, vector: list[float] | None,
            cine_rate: float | None) -> None:
    if frame_time_ms is not None:
        ds.FrameTime = frame_time_ms
        ds.FrameIncrementPointer = 0x00181063
    if vector is not None:
        ds.FrameTimeVector = vector
        ds.FrameIncrementPointer = 0x00181065
    if cine_rate is not None:
        ds.CineRate = cine_rate


def write_encapsulated(path: Path, fragments: list[bytes], *, ts: UID, h: int, w: int,
                       photometric: str, samples: int = 3, bits: int = 8) -> Path:
    """A compressed (encapsulated, one fragment per frame) Ultrasound Multi-frame file."""
    ds = _base(US_MULTIFRAME, ts)
    ds.NumberOfFrames, ds.Rows, ds.Columns = len(fragments), h, w
    ds.SamplesPerPixel, ds.PhotometricInterpretation = samples, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, \
        bits - 1, 0
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.PixelData = encapsulate(fragments)
    ds["PixelData"].VR = "OB"
    ds.FrameTime = 40.0
    ds.save_as(path, enforce_file_format=True)
    return path


def jpeg_cine(path: Path, rgb: np.ndarray) -> Path:
    """JPEG baseline (Pillow-encoded, 4:2:2 YCbCr) cine of (n, h, w, 3) RGB frames."""
    from PIL import Image

    fragments = []
    for frame in rgb:
        buf = io.BytesIO()
        Image.fromarray(frame, "RGB").save(buf, "JPEG", quality=95, subsampling=1)
        fragments.append(buf.getvalue())
    return write_encapsulated(path, fragments, ts=JPEGBaseline8Bit, h=rgb.shape[1],
                              w=rgb.shape[2], photometric="YBR_FULL_422")


def write_report(path: Path) -> Path:
    """A Comprehensive SR document: valid DICOM, no pixel data."""
    ds = _base(COMPREHENSIVE_SR, ExplicitVRLittleEndian)
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator = "18748-4", "LN"
    concept.CodeMeaning = "Diagnostic Imaging Report"
    ds.ConceptNameCodeSequence = [concept]
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.save_as(path, enforce_file_format=True)
    return path
