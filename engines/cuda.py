"""CUDA for the GPU engines: the device's primary context, pinned host and device buffers
allocated once by tensor name, one stream, and optional CUDA graph capture.

pycuda (imported lazily: ``import hepascope.engines.cuda`` needs no GPU) does memory,
copies and the stream. pycuda 2026.1 has no stream capture (its ``Stream`` has
``synchronize``, ``is_done``, ``wait_for_event`` and ``handle`` only), so CUDA graphs (and
the context's clean release) use driver entry points of ``libcuda`` through ctypes: the
library pycuda itself links. Every CUDA call goes through ``check``: a pycuda exception or
a non-zero ``CUresult`` becomes a ``CudaError`` naming the call; nothing is printed,
nothing returns None on failure, and nothing is left to ``__del__``: ``close()`` frees.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any, TypeVar

import numpy as np

from hepascope.core.errors import ModelError

T = TypeVar("T")
CAPTURE_THREAD_LOCAL = 1  # CU_STREAM_CAPTURE_MODE_THREAD_LOCAL: other threads may use CUDA
STREAM_NON_BLOCKING = 1  # CU_STREAM_NON_BLOCKING; pycuda's Stream(flags) takes the raw value


class CudaError(ModelError):
    """A CUDA call failed (out of memory, an invalid handle, a capture TensorRT cannot
    record...): the message names the call and CUDA's error."""


def driver() -> ModuleType:
    """``pycuda.driver``, initialised; ``ModelError`` saying why if it cannot be had."""
    try:
        import pycuda.driver as drv
    except ImportError as e:  # also OSError-like failures to load libcuda, raised as such
        raise ModelError(f"CUDA unavailable: pycuda not importable ({e})") from e
    check("cuInit", drv.init)
    return drv


def _pycuda_errors() -> tuple[type[BaseException], ...]:
    try:
        import pycuda.driver as drv
    except ImportError:
        return ()
    return (drv.Error,)


def status_error(what: str, status: int) -> CudaError:
    """The ``CudaError`` for a non-zero ``CUresult`` of call ``what``."""
    name = _error_name(status)
    return CudaError(f"{what} failed: {name} ({status})" if name else
                     f"{what} failed: CUresult {status}")


def check(what: str, call: Callable[..., T], *args: Any) -> T:
    """Run one CUDA call and return its result. A pycuda exception, or a ctypes driver
    call returning a non-zero ``CUresult`` (its ``errcheck`` raises), becomes a
    ``CudaError`` naming ``what``; every CUDA call of the GPU engines goes through here."""
    try:
        return call(*args)
    except CudaError:
        raise
    except _pycuda_errors() as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CudaError(f"{what} failed: {text}") from e


def new_stream(drv: ModuleType) -> Any:
    """A stream that does not wait for the legacy default stream, nor it for this one: no
    serialising with others' work, but synchronous copies must be waited for explicitly."""
    return check("cuStreamCreate", drv.Stream, STREAM_NON_BLOCKING)


# ----------------------------------------------------------------- driver library (ctypes)

_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()


def _errcheck(result: int, func: Any, args: tuple[Any, ...]) -> int:
    if result != 0:
        raise status_error(func.__name__, int(result))
    return result


def _libcuda() -> ctypes.CDLL:
    """libcuda.so.1 with the prototypes used here; ``ModelError`` if there is no driver."""
    global _lib
    with _lib_lock:
        if _lib is None:
            try:
                lib = ctypes.CDLL("libcuda.so.1")
            except OSError as e:
                raise ModelError(f"CUDA unavailable: no driver library libcuda.so.1 ({e})") \
                    from e
            vp, pvp = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
            protos: dict[str, list[Any]] = {
                "cuStreamBeginCapture_v2": [vp, ctypes.c_int],
                "cuStreamEndCapture": [vp, pvp],
                "cuGraphInstantiateWithFlags": [pvp, vp, ctypes.c_ulonglong],
                "cuGraphLaunch": [vp, vp],
                "cuGraphExecDestroy": [vp],
                "cuGraphDestroy": [vp],
                "cuCtxPopCurrent_v2": [pvp],
                "cuDeviceGet": [ctypes.POINTER(ctypes.c_int), ctypes.c_int],
                "cuDevicePrimaryCtxRetain": [pvp, ctypes.c_int],
                "cuDevicePrimaryCtxRelease_v2": [ctypes.c_int],
            }
            for name, argtypes in protos.items():
                fn = getattr(lib, name)
                fn.argtypes, fn.restype, fn.errcheck = argtypes, ctypes.c_int, _errcheck
            lib.cuGetErrorName.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
            lib.cuGetErrorName.restype = ctypes.c_int
            _lib = lib
        return _lib


def _error_name(status: int) -> str | None:
    """CUDA's name for ``status`` ("CUDA_ERROR_INVALID_HANDLE"), when the driver is there."""
    try:
        lib = _libcuda()
    except ModelError:
        return None
    out = ctypes.c_char_p()
    if lib.cuGetErrorName(status, ctypes.byref(out)) != 0 or not out.value:
        return None
    return out.value.decode()


# ----------------------------------------------------------------- context


class CudaContext:
    """Device ``ordinal``'s primary context: the one the CUDA runtime, and so TensorRT,
    uses. ``with ctx:`` makes it current on the calling thread for the block (re-entrant):
    the pipeline may call an engine from another thread than the one that built it.
    ``close()`` leaves the calling thread's context stack as it found it (see there)."""

    def __init__(self, ordinal: int = 0) -> None:
        if ordinal < 0:
            raise ValueError(f"device ordinal must be >= 0, got {ordinal}")
        drv = driver()
        count = check("cuDeviceGetCount", drv.Device.count)
        if ordinal >= count:
            raise ModelError(f"CUDA unavailable: no GPU {ordinal} ({count} found)")
        self.ordinal = ordinal
        self.device = check("cuDeviceGet", drv.Device, ordinal)
        self.name: str = check("cuDeviceGetName", self.device.name)
        major, minor = check("cuDeviceComputeCapability", self.device.compute_capability)
        self.compute_capability: tuple[int, int] = (int(major), int(minor))
        self._ctx: Any = check("cuDevicePrimaryCtxRetain", self.device.retain_primary_context)
        self._local = threading.local()
        self._drv = drv
        self._thread = threading.get_ident()  # pycuda's context remembers its thread

    @property
    def closed(self) -> bool:
        return self._ctx is None

    def __enter__(self) -> CudaContext:
        if self._ctx is None:
            raise CudaError("CUDA context used after close()")
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            check("cuCtxPushCurrent", self._ctx.push)
        self._local.depth = depth + 1
        return self

    def __exit__(self, *exc: object) -> None:
        depth = getattr(self._local, "depth", 0)  # 0: close() in the block popped it
        if depth > 0:
            self._local.depth = depth - 1
            if depth == 1:
                check("cuCtxPopCurrent", self._drv.Context.pop)

    def close(self) -> None:
        """Release the primary context (idempotent; close buffers made in it first),
        popping this thread's push of a ``with`` block still open. From another thread
        than its maker's, pycuda releases nothing: it stays retained until the exit."""
        if self._ctx is None:
            return
        ctx, self._ctx = self._ctx, None
        if getattr(self._local, "depth", 0):
            self._local.depth = 0
            check("cuCtxPopCurrent", self._drv.Context.pop)
        if threading.get_ident() == self._thread:
            self._detach(ctx)
        else:
            check("cuDevicePrimaryCtxRelease", ctx.detach)

    def _detach(self, ctx: Any) -> None:
        """``ctx.detach()`` leaving the thread's context stack as it was: pycuda's detach of
        a context not current pushes it and calls ``cuDevicePrimaryCtxRelease``, which never
        pops. That push is popped here, under a retain of our own: the pop comes before the
        last release (which resets the context), as the driver API pairs them."""
        lib = _libcuda()
        dev, held, popped = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_void_p()
        check("cuDeviceGet", lib.cuDeviceGet, ctypes.byref(dev), self.ordinal)
        check("cuDevicePrimaryCtxRetain", lib.cuDevicePrimaryCtxRetain, ctypes.byref(held), dev)
        try:
            check("cuDevicePrimaryCtxRelease", ctx.detach)
            check("cuCtxPopCurrent", lib.cuCtxPopCurrent_v2, ctypes.byref(popped))
            if popped.value != held.value:
                raise CudaError(f"cuCtxPopCurrent after releasing context "
                                f"{held.value or 0:#x} popped {popped.value or 0:#x}")
        finally:
            check("cuDevicePrimaryCtxRelease", lib.cuDevicePrimaryCtxRelease_v2, dev)


# ----------------------------------------------------------------- buffers


@dataclass(frozen=True)
class BufferSpec:
    """One tensor's buffers: its name, largest shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    def __post_init__(self) -> None:
        if not self.shape or any(int(d) < 1 for d in self.shape):
            raise ValueError(f"buffer {self.name!r}: shape must be positive, got {self.shape}")

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


class DeviceBuffers:
    """A pinned host array and a device allocation per tensor name, allocated once at the
    largest shape, and one non-blocking CUDA stream for all their copies. ``to_device`` /
    ``to_host`` copy a prefix (the first ``count`` elements: a smaller batch) asynchronously
    on the stream; ``synchronize`` waits. A CUDA kernel of another module can write a device
    buffer directly: ``device_ptr(name)``, ordered by ``stream_handle``."""

    def __init__(self, specs: Iterable[BufferSpec], context: CudaContext) -> None:
        self.specs = {s.name: s for s in specs}
        if not self.specs:
            raise ValueError("DeviceBuffers needs at least one buffer spec")
        self._ctx = context
        self._host: dict[str, np.ndarray] = {}
        self._dev: dict[str, Any] = {}
        drv = driver()
        with context:
            try:
                self._stream: Any = new_stream(drv)
                for name, s in self.specs.items():
                    self._host[name] = check(f"cuMemHostAlloc({name})", drv.pagelocked_empty,
                                             s.shape, s.dtype)
                    self._dev[name] = check(f"cuMemAlloc({name}, {s.nbytes} B)",
                                            drv.mem_alloc, s.nbytes)
            except BaseException:
                self._free()
                raise
        self._drv = drv

    @property
    def closed(self) -> bool:
        return not self._dev and not self._host

    @property
    def stream(self) -> Any:
        return self._stream

    @property
    def stream_handle(self) -> int:
        """The ``CUstream`` as an int (what TensorRT's ``execute_async_v3`` takes)."""
        return int(self._stream.handle)

    def _spec(self, name: str) -> BufferSpec:
        if self.closed:
            raise CudaError("device buffers used after close()")
        try:
            return self.specs[name]
        except KeyError:
            raise ModelError(f"no buffer {name!r} (have {sorted(self.specs)})") from None

    def host(self, name: str) -> np.ndarray:
        """The pinned host array of ``name``, at its largest shape."""
        self._spec(name)
        return self._host[name]

    def device_ptr(self, name: str) -> int:
        self._spec(name)
        return int(self._dev[name])

    def _prefix(self, name: str, count: int | None) -> np.ndarray:
        spec = self._spec(name)
        flat = self._host[name].reshape(-1)
        n = flat.size if count is None else count
        if not 0 < n <= flat.size:
            raise ModelError(f"buffer {name!r} holds {flat.size} elements of {spec.shape}, "
                             f"asked for {n}")
        return flat[:n]

    def view(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The first ``prod(shape)`` host elements of ``name`` as an array of ``shape``."""
        return self._prefix(name, int(np.prod(shape))).reshape(shape)

    def to_device(self, name: str, count: int | None = None) -> None:
        """Copy the first ``count`` (all) host elements of ``name`` to the device, async."""
        src = self._prefix(name, count)
        with self._ctx:
            check(f"cuMemcpyHtoDAsync({name})", self._drv.memcpy_htod_async,
                  self._dev[name], src, self._stream)

    def to_host(self, name: str, count: int | None = None) -> None:
        """Copy the first ``count`` (all) device elements of ``name`` to the host, async."""
        dst = self._prefix(name, count)
        with self._ctx:
            check(f"cuMemcpyDtoHAsync({name})", self._drv.memcpy_dtoh_async,
                  dst, self._dev[name], self._stream)

    def synchronize(self) -> None:
        with self._ctx:
            check("cuStreamSynchronize", self._stream.synchronize)

    def _free(self) -> None:
        dev, host = self._dev, self._host
        self._dev, self._host = {}, {}
        for alloc in dev.values():
            check("cuMemFree", alloc.free)
        for arr in host.values():
            allocation: Any = arr.base  # the PagelockedHostAllocation behind the array
            check("cuMemFreeHost", allocation.free)
        self._stream = None  # no stream destroy in pycuda: the last reference going is it

    def close(self) -> None:
        """Wait for pending copies, then free every buffer and the stream (idempotent)."""
        if self.closed:
            return
        with self._ctx:
            try:
                if self._stream is not None:
                    check("cuStreamSynchronize", self._stream.synchronize)
            finally:
                self._free()

    def __enter__(self) -> DeviceBuffers:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# ----------------------------------------------------------------- CUDA graphs


class CudaGraph:
    """Work issued on one stream, recorded once and replayed by ``launch`` with one call.
    The recorded copies and kernels keep the device and pinned addresses they saw: the
    buffers must outlive the graph, and their contents (not addresses) may change."""

    def __init__(self, stream_handle: int, record: Callable[[], None]) -> None:
        """Capture what ``record()`` issues on the stream (the calling thread's work only;
        the calling thread must have the context current) and instantiate it."""
        lib = _libcuda()
        stream = ctypes.c_void_p(stream_handle)
        graph = ctypes.c_void_p()
        check("cuStreamBeginCapture", lib.cuStreamBeginCapture_v2, stream, CAPTURE_THREAD_LOCAL)
        try:
            record()
        except BaseException:
            # End the capture, or the stream stays unusable; the end call's error (the
            # invalidated capture) would hide what record() raised, so it is dropped.
            with contextlib.suppress(CudaError):
                check("cuStreamEndCapture", lib.cuStreamEndCapture, stream,
                      ctypes.byref(graph))
                check("cuGraphDestroy", lib.cuGraphDestroy, graph)
            raise
        check("cuStreamEndCapture", lib.cuStreamEndCapture, stream, ctypes.byref(graph))
        try:
            exe = ctypes.c_void_p()
            check("cuGraphInstantiate", lib.cuGraphInstantiateWithFlags,
                  ctypes.byref(exe), graph, 0)
        finally:
            check("cuGraphDestroy", lib.cuGraphDestroy, graph)
        self._exec: ctypes.c_void_p | None = exe
        self._stream = stream
        self._lib = lib

    def launch(self) -> None:
        if self._exec is None:
            raise CudaError("CUDA graph launched after close()")
        check("cuGraphLaunch", self._lib.cuGraphLaunch, self._exec, self._stream)

    def close(self) -> None:
        """Destroy the executable graph (idempotent); needs the context current."""
        if self._exec is not None:
            exe, self._exec = self._exec, None
            check("cuGraphExecDestroy", self._lib.cuGraphExecDestroy, exe)
