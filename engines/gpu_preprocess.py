"""GPU preprocessing: ``core.preprocess.preprocess`` as CUDA kernels (kernels/preprocess.cu)
writing each view straight into an engine's input buffer on the device.

The kernels reproduce OpenCV bit for bit (grey, Gaussian, CLAHE, INTER_AREA, then the same
float32 normalisation), so a model sees on the GPU what it was trained on. What OpenCV
computes on the host (area weights, Gaussian taps, CLAHE limits, grey coefficients) comes
from ``gpu_plan`` and is uploaded once per preprocessor.

Kernels come from ``preprocess.fatbin`` (built by CMake where nvcc exists: installed
beside this module in ``kernels/``, or in the directory ``HEPASCOPE_CUDA_KERNELS`` names),
else pycuda compiles ``kernels/preprocess.cu`` with nvcc. Without pycuda or a GPU the
constructor raises ``ModelError``; ``import`` needs neither.

    python -m hepascope.bench.preprocess_gpu --bench   # per-frame GPU vs CPU time
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hepascope.core.errors import ModelError, ModelInputError
from hepascope.core.preprocess import PreprocessSpec
from hepascope.engines.cuda import CudaContext, check, driver, new_stream
from hepascope.engines.gpu_plan import ViewPlan, gaussian_taps, grey_coefficients, plan_views

KERNELS = Path(__file__).parent / "kernels"
FATBIN = "preprocess.fatbin"
NVCC_OPTIONS = ["-O3", "--fmad=false", "-std=c++17"]
BLOCK = (32, 8, 1)


def _load_kernels(drv: Any) -> tuple[Any, str]:
    """The kernels' module: a CMake-built fatbin, else pycuda compiling the source."""
    tried = []
    env = os.environ.get("HEPASCOPE_CUDA_KERNELS")
    for folder in ([Path(env)] if env else []) + [KERNELS]:
        path = folder / FATBIN
        if not path.is_file():
            tried.append(f"{path}: missing")
            continue
        try:
            return drv.module_from_file(str(path)), f"fatbin {path}"
        except drv.Error as e:  # e.g. no code for this GPU: fall back to compiling
            tried.append(f"{path}: {e}")
    try:
        from pycuda.compiler import SourceModule

        source = (KERNELS / "preprocess.cu").read_text()
        return SourceModule(source, options=NVCC_OPTIONS, no_extern_c=True), "nvcc"
    except (ImportError, OSError, drv.Error) as e:
        raise ModelError(f"CUDA preprocessing kernels unavailable: {'; '.join(tried)}; "
                         f"compiling kernels/preprocess.cu failed: {e}") from e


def probe_kernels(context: CudaContext) -> str:
    """Where the kernels come from ("fatbin PATH" or "nvcc"), loaded in ``context`` and
    dropped again: what a caller checks before relying on a ``GpuPreprocessor`` built
    later (the live path builds one on its first frame). ``ModelError`` says why not."""
    drv = driver()
    with context:
        module, source = _load_kernels(drv)
        del module  # unloaded with the context current
    return source


_SIGNATURES = {  # pycuda prepare formats (P pointer, i int, f float), kernel argument order
    "hs_area_frame": "P iiii P i iiii iiif PPPPPP P iiii fff",
    "hs_area_plane": "P i iiif PPPPPP P iiii fff",
    "hs_grey_mask": "P iiii P ii iiii P",
    "hs_gauss_rows": "P ii P i P",
    "hs_gauss_cols": "P ii P i P",
    "hs_clahe_lut": "P ii iii i f P",
    "hs_clahe_apply": "P ii P ii ff P",
}


def _grid(w: int, h: int) -> tuple[int, int]:
    return (w + BLOCK[0] - 1) // BLOCK[0], (h + BLOCK[1] - 1) // BLOCK[1]


class GpuPreprocessor:
    """``preprocess(frame, spec)`` on the GPU for frames of ``frame_shape`` (H, W) or
    (H, W, 3|4) uint8. ``run`` uploads a frame and writes every view as ``dtype`` (float32
    or float16) (C, H, W) at a device pointer: the engine's input buffer given by view
    name in ``out``, else this object's own buffer. Work is queued on ``stream`` (a
    pycuda Stream; default: this object's); ``debug=True`` synchronises after every
    launch so a fault names its kernel. Calls are serialised by a lock."""

    def __init__(self, spec: PreprocessSpec, frame_shape: tuple[int, ...], *,
                 dtype: Any = np.float32, context: CudaContext | None = None,
                 debug: bool = False) -> None:
        shape = tuple(int(d) for d in frame_shape)
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (3, 4)) \
                or min(shape[:2]) < 1:
            raise ModelInputError(f"frame_shape must be (H, W) or (H, W, 3|4), got {shape}")
        if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float16)):
            raise ModelError(f"dtype must be float32 or float16, got {np.dtype(dtype)}")
        self.spec, self.frame_shape, self.dtype = spec, shape, np.dtype(dtype)
        self.debug = debug
        self.plans = plan_views(spec, shape)
        self.out_shape = (spec.channels, *spec.size)
        self._grey = grey_coefficients() if len(shape) == 3 else (0, 0, 0, 1)
        self._drv = driver()
        self._own_ctx = context is None
        self._ctx = CudaContext(0) if context is None else context
        self._allocs: list[Any] = []
        self._lock = threading.Lock()
        self._last: dict[str, int] = {}
        self._last_stream: Any = None
        self._module: Any = None
        self._fn: dict[str, Any] = {}
        self._stream: Any = None
        self._uploaded: Any = None
        self._staging: np.ndarray | None = None
        self._closed = False
        try:
            with self._ctx:
                self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        drv = self._drv
        self._module, self.kernel_source = _load_kernels(drv)
        self._fn = {name: check(f"cuModuleGetFunction({name})", self._module.get_function,
                                name) for name in _SIGNATURES}
        for name, fmt in _SIGNATURES.items():
            self._fn[name].prepare(fmt.replace(" ", ""))
        self._stream = new_stream(drv)
        self._uploaded = check("cuEventCreate", drv.Event)
        self._staging = check("cuMemHostAlloc", drv.pagelocked_empty, self.frame_shape, np.uint8)
        self._frame = self._alloc(self._staging.nbytes)
        p = self.spec.params
        self._taps = gaussian_taps(p.gaussian_sigma) if p.gaussian_sigma > 0 else None
        self._taps_dev = self._upload(self._taps) if self._taps is not None else 0
        out_bytes = int(np.prod(self.out_shape)) * self.dtype.itemsize
        self._views = []
        for v in self.plans:
            bufs = {"mask": self._upload(v.mask), "out": self._alloc(out_bytes)}
            for axis, tab in (("x", v.xtab), ("y", v.ytab)):
                for key, arr in zip(("ofs", "si", "w"), tab or (None,) * 3, strict=True):
                    bufs[axis + key] = self._upload(arr)
            if self._taps is not None or v.clahe is not None:
                bufs["plane"] = self._alloc(v.w * v.h)
            if self._taps is not None:
                bufs["tmp"] = self._alloc(v.w * v.h * 2)
            if v.clahe is not None:
                bufs["lut"] = self._alloc(v.clahe.tiles ** 2 * 256)
            self._views.append(bufs)
        # the tables went up by synchronous copies from pageable memory, which may return
        # before the data lands, on the legacy stream our non-blocking one does not wait for
        check("cuCtxSynchronize", drv.Context.synchronize)

    def _alloc(self, nbytes: int) -> int:
        alloc = check(f"cuMemAlloc({nbytes} B)", self._drv.mem_alloc, max(int(nbytes), 1))
        self._allocs.append(alloc)
        return int(alloc)

    def _upload(self, arr: np.ndarray | None) -> int:
        if arr is None:
            return 0
        ptr = self._alloc(arr.nbytes)
        check("cuMemcpyHtoD", self._drv.memcpy_htod, ptr, np.ascontiguousarray(arr))
        return ptr

    @property
    def output_ptrs(self) -> dict[str, int]:
        """This object's own output buffer of each view (what ``run`` uses by default)."""
        return {v.name: bufs["out"] for v, bufs in zip(self.plans, self._views, strict=True)}

    def run(self, frame: np.ndarray, out: dict[str, int] | None = None,
            stream: Any = None) -> dict[str, int]:
        """Queue one frame's preprocessing; returns ``{view: device pointer}`` written
        (after ``stream`` reaches this point: ``synchronize`` or order work after it). This
        object's own pointers are valid until ``close``."""
        if frame.shape != self.frame_shape or frame.dtype != np.uint8:
            raise ModelInputError(f"expected a uint8 frame of {self.frame_shape}, got "
                                  f"{frame.dtype} {frame.shape}")
        out = dict(out or {})
        unknown = set(out) - {v.name for v in self.plans}
        if unknown:
            raise ModelError(f"out names no view of this spec: {sorted(unknown)}")
        with self._lock, self._ctx:
            if not self._allocs or self._staging is None:
                raise ModelError("GpuPreprocessor used after close()")
            s = stream if stream is not None else self._stream
            if self._last_stream is not None and s is not self._last_stream:
                # the frame and scratch buffers are shared: finish the other stream's use
                check("cuStreamSynchronize", self._last_stream.synchronize)
            self._last_stream = s
            check("cuEventSynchronize", self._uploaded.synchronize)  # staging free again
            np.copyto(self._staging, frame)
            check("cuMemcpyHtoDAsync(frame)", self._drv.memcpy_htod_async, self._frame,
                  self._staging, s)
            check("cuEventRecord", self._uploaded.record, s)
            written = {}
            for v, bufs in zip(self.plans, self._views, strict=True):
                written[v.name] = int(out.get(v.name, bufs["out"]))
                self._view(v, bufs, written[v.name], s)
            self._last = written
            return written

    def _launch(self, name: str, grid: tuple[int, int], block: tuple[int, int, int],
                stream: Any, *args: Any) -> None:
        check(name, self._fn[name].prepared_async_call, grid, block, stream, *args)
        if self.debug:
            check(f"{name} (synchronize)", stream.synchronize)

    def _view(self, v: ViewPlan, b: dict[str, int], out: int, s: Any) -> None:
        p, (oh, ow) = self.spec.params, self.spec.size
        frame = (self._frame, self.frame_shape[1] * self._cn, self._cn, v.x0, v.y0, b["mask"])
        area = (v.mode, v.sx, v.sy, v.inv_area, b["xofs"], b["xsi"], b["xw"], b["yofs"],
                b["ysi"], b["yw"], out, ow, oh, self.spec.channels,
                int(self.dtype == np.float16), float(np.float32(1.0 / 255.0)),
                float(np.float32(p.mean)), float(np.float32(1.0 / p.std)))
        if "plane" not in b:  # no blur, no CLAHE: one fused pass
            self._launch("hs_area_frame", _grid(ow, oh), BLOCK, s, *frame, v.w, *self._grey,
                         *area)
            return
        grid, plane = _grid(v.w, v.h), b["plane"]
        self._launch("hs_grey_mask", grid, BLOCK, s, *frame, v.w, v.h, *self._grey, plane)
        if self._taps is not None:
            k = len(self._taps)
            self._launch("hs_gauss_rows", grid, BLOCK, s, plane, v.w, v.h, self._taps_dev, k,
                         b["tmp"])
            self._launch("hs_gauss_cols", grid, BLOCK, s, b["tmp"], v.w, v.h, self._taps_dev,
                         k, plane)
        if v.clahe is not None:
            c = v.clahe
            self._launch("hs_clahe_lut", (c.tiles, c.tiles), (256, 1, 1), s, plane, v.w, v.h,
                         c.tiles, c.tile_w, c.tile_h, c.limit, c.lut_scale, b["lut"])
            self._launch("hs_clahe_apply", grid, BLOCK, s, plane, v.w, v.h, b["lut"], c.tiles,
                         c.tiles, c.inv_tw, c.inv_th, b["mask"])
        self._launch("hs_area_plane", _grid(ow, oh), BLOCK, s, plane, v.w, *area)

    @property
    def _cn(self) -> int:
        return self.frame_shape[2] if len(self.frame_shape) == 3 else 1

    def synchronize(self, stream: Any = None) -> None:
        """Wait for ``stream`` (default: the one the last ``run`` used, else this
        object's)."""
        if self._closed:
            raise ModelError("GpuPreprocessor used after close()")
        s = stream if stream is not None else self._last_stream or self._stream
        with self._ctx:
            check("cuStreamSynchronize", s.synchronize)

    def download(self, stream: Any = None) -> dict[str, np.ndarray]:
        """The last ``run``'s views copied to new host arrays (waits for the stream
        first). They are the caller's, not views of this object's buffers: they stay valid
        after the next ``run`` and after ``close``."""
        self.synchronize(stream)
        result = {}
        with self._ctx:
            for name, ptr in self._last.items():
                host = np.empty(self.out_shape, self.dtype)
                check(f"cuMemcpyDtoH({name})", self._drv.memcpy_dtoh, host, ptr)
                result[name] = host
        return result

    def close(self) -> None:
        """Wait for queued work, then free every buffer and drop the stream, the event and
        the kernels' module, with the context current (pycuda has no destroy calls: the
        last reference going destroys each); release an own context. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._ctx.closed:  # a shared context closed first: nothing can be freed now
            return
        try:
            with self._lock, self._ctx:
                try:
                    if self._stream is not None:
                        check("cuStreamSynchronize", self._stream.synchronize)
                finally:
                    self._release()
        finally:
            if self._own_ctx:
                self._ctx.close()

    def _release(self) -> None:
        allocs, self._allocs = self._allocs, []
        staging, self._staging = self._staging, None
        self._fn, self._module = {}, None  # each function holds the module
        self._stream = self._uploaded = self._last_stream = None
        self._last = {}
        for a in allocs:
            check("cuMemFree", a.free)
        if staging is not None:
            allocation: Any = staging.base  # the PagelockedHostAllocation behind it
            check("cuMemFreeHost", allocation.free)

    def __enter__(self) -> GpuPreprocessor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------- benchmark


def _bench_one(label: str, spec: PreprocessSpec, frame: np.ndarray, n: int) -> str:
    """Median per-frame times: the CPU function, the GPU by CUDA events (upload + kernels)
    and the GPU by wall clock (run + synchronize, Python overhead included)."""
    from hepascope.core.preprocess import preprocess

    cpu, dev, wall = [], [], []
    for _ in range(n):
        t0 = time.perf_counter()
        preprocess(frame, spec)
        cpu.append(time.perf_counter() - t0)
    with GpuPreprocessor(spec, frame.shape) as gpu, gpu._ctx:
        start, end = gpu._drv.Event(), gpu._drv.Event()
        for i in range(n + 10):  # the first 10 warm up
            t0 = time.perf_counter()
            start.record(gpu._stream)
            gpu.run(frame)
            end.record(gpu._stream)
            end.synchronize()
            if i >= 10:
                wall.append(time.perf_counter() - t0)
                dev.append(end.time_since(start) * 1e-3)
        source = gpu.kernel_source
    cpu_ms, dev_ms, wall_ms = (1e3 * float(np.median(x)) for x in (cpu, dev, wall))
    return (f"{label:44s} cpu {cpu_ms:6.3f} ms  gpu {dev_ms:6.3f} ms (events)  "
            f"gpu wall {wall_ms:6.3f} ms  [{source}]")


def bench(frame: np.ndarray, n: int = 200) -> list[str]:
    """CPU function vs GPU on the packaged layouts, ``frame`` resized to each (the bench
    passes a phantom frame: ``hepascope.bench.preprocess_gpu``)."""
    from hepascope.core.config import load_config

    rows = []
    for name, shape in ((None, frame.shape), ("single_view", (768, 1024, 3))):
        cfg = load_config(name)
        spec = PreprocessSpec(cfg.layout, cfg.preprocess, cfg.preprocess.size, channels=3)
        img = cv2.resize(frame, shape[1::-1], interpolation=cv2.INTER_LINEAR)
        label = f"{name or 'default'} {shape[1]}x{shape[0]}, {len(spec.view_names)} view(s)"
        rows.append(_bench_one(f"{label}, blur+CLAHE", spec, img, n))
        fused = replace(cfg.preprocess, gaussian_sigma=0.0, clahe_clip=0.0)
        rows.append(_bench_one(f"{label}, fused", replace(spec, params=fused), img, n))
    return rows
