"""DICOM pixels to the 8 bits the pipeline takes: ONE rule for the live DICOM source
(``stream/sources/dicom.py``, a frame at a time) and the training readers
(``train/datasets/io.py``, a whole cine at once), so training and live see the same pixels.

The rule is per file, never per frame or per clip (a frame needs no other frame, and the
frames of a cine stay comparable), and follows the DICOM display pipeline through pydicom:

- PALETTE COLOR: the palette applied (``apply_color_lut``), its entries cut to 8 bits.
- Colour (RGB; YBR already converted by pydicom): 8 bits as they are; wider ones shifted
  down to their top 8 stored bits.
- Grey, 8 bits allocated: as they are (an ultrasound scanner's display-ready image).
- Grey, wider: the modality LUT (``apply_modality_lut``: Rescale Slope/Intercept or the
  Modality LUT Sequence), then the first VOI transform (``apply_voi_lut``: the VOI LUT
  Sequence or Window Center/Width with its VOI LUT Function), then the output range of
  that step (pydicom's: the stored bits' range after the rescale, or the LUT's bit depth)
  mapped linearly onto 0..255. Without a VOI transform that range is the whole of Bits
  Stored. A VOI transform pydicom refuses (a window width < 1) is passed over.
- MONOCHROME1 inverted last, so that high is bright.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def is_colour(ds: Any) -> bool:
    """Whether decoded frames carry 3 samples (RGB, YBR converted, or a palette)."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    return photometric == "PALETTE COLOR" or int(ds.get("SamplesPerPixel", 1) or 1) == 3


def _modality_range(ds: Any) -> tuple[float, float]:
    """The values the stored bits can take after the modality LUT (as pydicom's
    ``apply_windowing`` computes its output range)."""
    seq = ds.get("ModalityLUTSequence")
    if seq:
        return 0.0, float(2 ** int(seq[0].LUTDescriptor[2]) - 1)
    stored = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        lo, hi = -(2 ** (stored - 1)), 2 ** (stored - 1) - 1
    else:
        lo, hi = 0, 2**stored - 1
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        ends = sorted((lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)))
        return ends[0], ends[1]
    return float(lo), float(hi)


def _voi(ds: Any, values: np.ndarray) -> tuple[np.ndarray, tuple[float, float]] | None:
    """The first VOI transform and its output range, or None when the file has none (or
    one pydicom refuses)."""
    from pydicom.pixels import apply_voi_lut

    seq = ds.get("VOILUTSequence")
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    if not seq and not has_window:
        return None
    try:
        out = apply_voi_lut(values, ds, index=0, prefer_lut=True)
    except (ValueError, TypeError, IndexError, AttributeError, KeyError):
        return None  # e.g. a window width < 1: the stored range instead
    if seq:
        return out, (0.0, float(2 ** int(seq[0].LUTDescriptor[2]) - 1))
    return out, _modality_range(ds)


def to_uint8(ds: Any, arr: np.ndarray) -> np.ndarray:
    """Decoded pixels of ``ds`` (one frame or a stack of frames, as pydicom's
    ``pixel_array`` gives them) as uint8: grey, or RGB in a last axis of 3."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return (rgb >> (bits - 8)).astype(np.uint8) if bits > 8 else rgb.astype(np.uint8)
    if is_colour(ds):
        if arr.dtype == np.uint8:
            return arr
        shift = max(int(ds.get("BitsStored", 16)) - 8, 0)
        return np.clip(arr.astype(np.int64) >> shift, 0, 255).astype(np.uint8)
    if arr.dtype == np.uint8:
        out = arr
    else:
        values = apply_modality_lut(arr, ds)
        mapped = _voi(ds, values)
        values, (lo, hi) = mapped if mapped is not None else (values, _modality_range(ds))
        scale = 255.0 / max(hi - lo, 1e-6)
        out = np.clip((np.asarray(values, np.float64) - lo) * scale + 0.5, 0, 255
                      ).astype(np.uint8)
    if photometric == "MONOCHROME1":  # high values are dark: invert to the usual sense
        out = 255 - out
    return out
