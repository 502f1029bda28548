"""Host side of GPU preprocessing: every number OpenCV derives on the CPU (in double, or
from the installed cv2) that the CUDA kernels (kernels/preprocess.cu) need to reproduce
``core.preprocess.preprocess`` bit for bit. Pure numpy: no GPU, no pycuda.

- grey: cv2's fixed-point BGR2GRAY coefficients (OpenCV 4 rounds at 14 bits, 5 at 15);
- INTER_AREA: which of cv::resize's paths applies, and its per-axis weight tables;
- Gaussian: cv2's 8-bit Q8 taps (error-diffused quantisation);
- CLAHE: padded tile size, clip limit in pixels, LUT scale, 1/tile for interpolation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from hepascope.core.errors import ConfigError, ModelError
from hepascope.core.preprocess import PreprocessSpec

# (blue, green, red, shift) of cv2's fixed-point BGR2GRAY: OpenCV 5, then OpenCV 4
GREY_CANDIDATES = ((3735, 19235, 9798, 15), (1868, 9617, 4899, 14))


@lru_cache(maxsize=1)
def grey_coefficients() -> tuple[int, int, int, int]:
    """The installed cv2's BGR2GRAY as ``(b, g, r, shift)``: y = (b*B + g*G + r*R +
    2**(shift-1)) >> shift, checked exactly on 65536 random pixels."""
    bgr = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    want = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    px = bgr.astype(np.int64)
    for cb, cg, cr, shift in GREY_CANDIDATES:
        got = (px[..., 0] * cb + px[..., 1] * cg + px[..., 2] * cr + (1 << (shift - 1))) >> shift
        if np.array_equal(got, want):
            return cb, cg, cr, shift
    raise ModelError(f"cv2 {cv2.__version__}: BGR2GRAY matches no known fixed-point formula, "
                     "so GPU preprocessing would differ from training")


def area_mode(src: int, dst: int, src_y: int, dst_y: int) -> tuple[int, int, int, float]:
    """cv::resize INTER_AREA's path for src -> dst (x) and src_y -> dst_y (y):
    ``(mode, sx, sy, 1/area)``; mode 1 integer blocks, 2 the 2x2 case, 0 weight tables."""
    scale_x, scale_y = 1.0 / (dst / src), 1.0 / (dst_y / src_y)  # OpenCV's double steps
    ix, iy = round(scale_x), round(scale_y)
    if abs(scale_x - ix) < np.finfo(float).eps and abs(scale_y - iy) < np.finfo(float).eps:
        mode = 2 if (ix, iy) == (2, 2) else 1
        return mode, ix, iy, float(np.float32(1.0) / np.float32(ix * iy))
    return 0, 0, 0, 0.0


def area_table(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's computeResizeAreaTab for one axis: offsets (dst + 1), source indices and
    float32 weights; entries ofs[d]:ofs[d + 1] are output d's sources, ascending."""
    scale = 1.0 / (dst / src)
    ofs, idx, wts = [0], [], []
    for d in range(dst):
        f1 = d * scale
        f2 = f1 + scale
        cell = min(scale, src - f1)
        s2 = min(math.floor(f2), src - 1)
        s1 = min(math.ceil(f1), s2)
        if s1 - f1 > 1e-3:
            idx.append(s1 - 1)
            wts.append((s1 - f1) / cell)
        for s in range(s1, s2):
            idx.append(s)
            wts.append(1.0 / cell)
        if f2 - s2 > 1e-3:
            idx.append(s2)
            wts.append(min(min(f2 - s2, 1.0), cell) / cell)
        ofs.append(len(idx))
    return (np.array(ofs, np.int32), np.array(idx, np.int32), np.array(wts, np.float32))


def gaussian_taps(sigma: float) -> np.ndarray:
    """cv2.GaussianBlur's 8-bit taps for ``sigma`` (ksize from sigma as cv2 does for
    uint8): Q8 integers summing to 256, quantised by OpenCV's error diffusion."""
    n = int(np.rint(sigma * 6 + 1)) | 1
    if n == 1:
        return np.array([256], np.int32)
    half = (n - 1) // 2
    values = [math.exp(float((1 - n + 2 * i) ** 2) * (-0.125 / (sigma * sigma)))
              for i in range(half)]
    norm = 1.0 / (2.0 * sum(values) + 1.0)
    taps, err = [0] * n, 0.0
    for i, v in enumerate(values):
        adj = v * norm * 256.0 + err
        q = int(np.rint(adj))
        err = adj - q
        taps[i] = taps[n - 1 - i] = q
    taps[half] = 256 - 2 * sum(taps[:half])
    return np.array(taps, np.int32)


@dataclass(frozen=True)
class Clahe:
    """cv2 CLAHE's derived numbers for an h x w image: tile size of the image padded to
    tile multiples, clip limit in pixels, LUT scale and the interpolation's 1/tile."""

    tiles: int
    tile_w: int
    tile_h: int
    limit: int
    lut_scale: float
    inv_tw: float
    inv_th: float

    @classmethod
    def of(cls, h: int, w: int, clip: float, tiles: int) -> Clahe:
        if h % tiles or w % tiles:  # OpenCV pads both (a whole tile where divisible)
            h, w = h + tiles - h % tiles, w + tiles - w % tiles
        tw, th = w // tiles, h // tiles
        limit = max(int(clip * (tw * th) / 256), 1) if clip > 0 else 0
        f = np.float32
        return cls(tiles, tw, th, limit, float(f(255) / f(tw * th)), float(f(1) / f(tw)),
                   float(f(1) / f(th)))


@dataclass(frozen=True)
class ViewPlan:
    """Everything the kernels need for one view, computed on the host."""

    name: str
    x0: int
    y0: int
    w: int
    h: int
    mask: np.ndarray | None
    mode: int
    sx: int
    sy: int
    inv_area: float
    xtab: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    ytab: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    clahe: Clahe | None


def plan_views(spec: PreprocessSpec, frame_shape: tuple[int, ...]) -> list[ViewPlan]:
    """One ``ViewPlan`` per requested view of frames of ``frame_shape``."""
    fh, fw = frame_shape[:2]
    out_h, out_w = spec.size
    p = spec.params
    plans = []
    for name in spec.view_names:
        r = spec.layout.rect(name)
        x0, y0, w, h = (0, 0, fw, fh) if r.is_full else (r.x, r.y, r.w, r.h)
        if y0 + h > fh or x0 + w > fw:
            raise ConfigError(f"view [{x0}, {y0}, {w}, {h}] does not fit in a {fw}x{fh} "
                              "frame: set layout.views in --config")
        if w < out_w or h < out_h:
            raise ConfigError(f"view {name!r} ({w}x{h}) is smaller than the model input "
                              f"({out_w}x{out_h}): GPU preprocessing only downscales")
        mode, sx, sy, inv_area = area_mode(w, out_w, h, out_h)
        tabs = (area_table(w, out_w), area_table(h, out_h)) if mode == 0 else (None, None)
        clahe = Clahe.of(h, w, p.clahe_clip, p.clahe_tiles) if p.clahe_clip > 0 else None
        sector = spec.layout.sector  # the same mask as the CPU function's
        mask = None if sector is None else sector.mask(h, w)
        plans.append(ViewPlan(name, x0, y0, w, h, mask, mode, sx, sy, inv_area, tabs[0],
                              tabs[1], clahe))
    return plans
