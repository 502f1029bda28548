"""Stand-ins for the ``pycuda.driver`` and ``tensorrt`` modules (and the two ``libcuda``
driver calls hepascope makes through ctypes), put into ``sys.modules`` by a test, so that
the build and CUDA code paths run without TensorRT or a GPU.

They model the module boundary only: the calls hepascope makes, with the behaviour of the
real libraries that the tests depend on, taken from their sources and documentation:
pycuda's context stack (``src/cpp/cuda.hpp``: ``context::detach`` of a context that is not
current pushes it and calls ``cuDevicePrimaryCtxRelease``, which "does not pop the context
from stack in any circumstances"), pinned memory whose ``.base`` is the allocation that
``free()`` releases, and TensorRT calling an INT8 calibrator's ``get_batch`` until it
returns None and then ``write_calibration_cache``. Kernels do nothing and nothing here
makes a number hepascope reports: freed host memory is poisoned so a dangling view shows.
"""

from __future__ import annotations

import threading
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

POISON = 0xAB  # what freed pinned memory is overwritten with


@dataclass
class GpuState:
    """What the fake driver holds: the calling thread's CUDA context stack (handles),
    pycuda's own stack, retains, device memory, live streams/events/modules, faults."""

    handle: int = 0x7000
    driver_stack: list[int] = field(default_factory=list)
    pycuda_stack: list[Any] = field(default_factory=list)
    retained: int = 0
    memory: dict[int, np.ndarray] = field(default_factory=dict)
    next_addr: int = 0x10000
    streams: list[Any] = field(default_factory=list)  # weak references
    events: list[Any] = field(default_factory=list)
    modules: list[Any] = field(default_factory=list)
    host_allocs: list[Any] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    popped_reset: bool = False  # a context was popped after its last release
    fail: dict[str, int] = field(default_factory=dict)  # call name -> fail at that count

    def call(self, name: str) -> None:
        self.calls.append(name)
        if self.fail.get(name) == self.calls.count(name):
            raise self.Error(f"{name}: an illegal memory access was encountered")

    def find(self, ptr: int, nbytes: int) -> np.ndarray:
        for start, mem in self.memory.items():
            if start <= ptr and ptr + nbytes <= start + mem.size:
                return mem[ptr - start:ptr - start + nbytes]
        raise self.Error(f"no device allocation holds {nbytes} B at {ptr:#x}")

    def live(self, refs: list[Any]) -> list[Any]:
        return [r() for r in refs if r() is not None]

    Error: type[Exception] = Exception


def make_pycuda(state: GpuState) -> types.ModuleType:
    """A ``pycuda.driver`` module over ``state`` (see the module doc)."""
    drv = types.ModuleType("pycuda.driver")

    class Error(Exception):
        pass

    state.Error = Error

    def current(except_: Any = None) -> Any:  # pycuda's context::current_context
        while state.pycuda_stack:
            top = state.pycuda_stack[-1]
            if top is not except_ and top.valid:
                return top
            state.pycuda_stack.pop()
        return None

    class Context:
        def __init__(self) -> None:
            self.valid, self.thread = True, threading.get_ident()
            self.handle = state.handle

        def push(self) -> None:
            if state.pycuda_stack:  # prepare_context_switch
                state.driver_stack.pop()
            state.driver_stack.append(self.handle)
            state.pycuda_stack.append(self)

        @staticmethod
        def pop() -> None:
            if state.pycuda_stack:
                state.driver_stack.pop()
            else:
                raise Error("context::pop failed: cannot pop non-current context")
            state.pycuda_stack.pop()
            now = current()
            if now is not None:
                state.driver_stack.append(now.handle)

        def detach(self) -> None:
            if not self.valid:
                raise Error("context::detach failed: cannot detach from invalid context")
            active = current() is self
            if active or self.thread == threading.get_ident():
                if not active:
                    state.driver_stack.append(self.handle)  # "pop is implicit": not here
                state.retained -= 1  # cuDevicePrimaryCtxRelease: no pop
            self.valid = False
            if active:
                now = current(self)
                if now is not None:
                    state.driver_stack.append(now.handle)

        @staticmethod
        def synchronize() -> None:
            state.call("cuCtxSynchronize")

    class Device:
        def __init__(self, ordinal: int) -> None:
            self.ordinal = ordinal

        @staticmethod
        def count() -> int:
            return 1

        def name(self) -> str:
            return "Fake GPU"

        def compute_capability(self) -> tuple[int, int]:
            return (9, 0)

        def retain_primary_context(self) -> Context:
            state.retained += 1
            return Context()

    class Stream:
        def __init__(self, flags: int = 0) -> None:
            state.call("cuStreamCreate")
            self.flags = flags
            self.handle = id(self)
            state.streams.append(weakref.ref(self))

        def synchronize(self) -> None:
            state.call("cuStreamSynchronize")

    class Event:
        def __init__(self, flags: int = 0) -> None:
            self.flags = flags
            state.events.append(weakref.ref(self))

        def record(self, stream: Any = None) -> Event:
            return self

        def synchronize(self) -> Event:
            return self

    class Function:
        def __init__(self, module: Module) -> None:
            self.module = module  # pycuda: with_custodian_and_ward, the module lives on

        def prepare(self, fmt: str) -> None:
            pass

        def prepared_async_call(self, *args: Any) -> None:
            state.call("cuLaunchKernel")

    class Module:
        def __init__(self) -> None:
            state.modules.append(weakref.ref(self))

        def get_function(self, name: str) -> Function:
            return Function(self)

    class HostAllocation:  # pycuda's PagelockedHostAllocation: an array's .base
        def __init__(self, shape: Any, dtype: Any) -> None:
            self.mem = np.zeros(shape, dtype)
            self.__array_interface__ = self.mem.__array_interface__
            self.freed = False
            state.host_allocs.append(self)

        def free(self) -> None:
            if self.freed:
                raise Error("cuMemFreeHost: already freed")
            self.freed = True
            self.mem.view(np.uint8).reshape(-1)[:] = POISON

    class DeviceAllocation:
        def __init__(self, nbytes: int) -> None:
            self.addr = state.next_addr
            state.next_addr += (nbytes + 0xFFF) & ~0xFFF
            state.memory[self.addr] = np.zeros(nbytes, np.uint8)

        def __int__(self) -> int:
            return self.addr

        def free(self) -> None:
            if state.memory.pop(self.addr, None) is None:
                raise Error("cuMemFree: not allocated")

    def htod(dst: Any, src: np.ndarray, stream: Any = None) -> None:
        raw = np.ascontiguousarray(src).view(np.uint8).reshape(-1)
        state.find(int(dst), raw.size)[:] = raw

    def dtoh(dst: np.ndarray, src: Any, stream: Any = None) -> None:
        out = dst.view(np.uint8).reshape(-1)
        out[:] = state.find(int(src), out.size)

    def htod_async(dst: Any, src: np.ndarray, stream: Any) -> None:
        state.call("memcpy_htod_async")
        htod(dst, src)

    def dtoh_async(dst: np.ndarray, src: Any, stream: Any) -> None:
        state.call("memcpy_dtoh_async")
        dtoh(dst, src)

    ns: dict[str, Any] = {
        "Error": Error, "Context": Context, "Device": Device, "Stream": Stream,
        "Event": Event, "init": lambda: None, "memcpy_htod": htod, "memcpy_dtoh": dtoh,
        "memcpy_htod_async": htod_async, "memcpy_dtoh_async": dtoh_async,
        "mem_alloc": DeviceAllocation, "module_from_file": lambda path: Module(),
        "pagelocked_empty": lambda shape, dtype: np.asarray(HostAllocation(shape, dtype)),
    }
    for name, value in ns.items():
        setattr(drv, name, value)
    return drv


class FakeLibcuda:
    """The ctypes ``libcuda.so.1`` driver calls hepascope makes beyond pycuda, over the
    same context stack (the real library's ``errcheck`` raises on a non-zero result)."""

    def __init__(self, state: GpuState) -> None:
        self.state = state

    def cuCtxPopCurrent_v2(self, out: Any) -> int:  # out: ctypes.byref(c_void_p)
        if not self.state.driver_stack:
            raise AssertionError("cuCtxPopCurrent on an empty context stack")
        if self.state.retained == 0:  # released to 0: the primary context was reset
            self.state.popped_reset = True
        out._obj.value = self.state.driver_stack.pop()
        return 0

    def cuDeviceGet(self, out: Any, ordinal: int) -> int:
        out._obj.value = ordinal
        return 0

    def cuDevicePrimaryCtxRetain(self, out: Any, dev: Any) -> int:
        self.state.retained += 1
        out._obj.value = self.state.handle
        return 0

    def cuDevicePrimaryCtxRelease_v2(self, dev: Any) -> int:
        if self.state.retained == 0:
            raise AssertionError("cuDevicePrimaryCtxRelease of a context not retained")
        self.state.retained -= 1
        return 0


# ----------------------------------------------------------------- TensorRT


@dataclass
class TrtState:
    """What the fake TensorRT does: its version, whether a timing cache can be made from
    given bytes, whether a build fails after calibrating, and what it saw."""

    version: str = "10.9.0.34"
    timing_cache: Callable[[bytes], bool] = lambda data: True
    build_fails: bool = False
    batches: int = 0
    cache_read: bytes | None = None


def calibration_table(names: list[str]) -> bytes:
    """A calibration cache in TensorRT's format: a header, then ``name: hex scale``."""
    return ("TRT-100900-EntropyCalibration2\n"
            + "".join(f"{n}: 3c010a14\n" for n in names)).encode()


def make_tensorrt(state: TrtState) -> types.ModuleType:
    """A ``tensorrt`` module that parses the ONNX file's inputs, takes the builder calls
    ``build_plan`` makes and drives an INT8 calibrator as TensorRT 10 does."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = state.version  # type: ignore[attr-defined]

    class ILogger:
        Severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3)

        def __init__(self) -> None:
            pass

    class TimingCache:
        def serialize(self) -> bytes:
            return b"timing"

    class Tensor:
        def __init__(self, name: str, shape: tuple[int, ...]) -> None:
            self.name, self.shape, self.dtype = name, shape, "float32"

    class Network:
        def __init__(self) -> None:
            self.inputs: list[Tensor] = []
            self.num_layers = 0

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

    class OnnxParser:
        num_errors = 0

        def __init__(self, network: Network, logger: Any) -> None:
            self.network = network

        def parse_from_file(self, path: str) -> bool:
            graph = onnx.load(path, load_external_data=False).graph
            inits = {i.name for i in graph.initializer}
            for v in graph.input:
                if v.name not in inits:
                    dims = tuple(d.dim_value if d.HasField("dim_value") else -1
                                 for d in v.type.tensor_type.shape.dim)
                    self.network.inputs.append(Tensor(v.name, dims))
            return True

    class Config:
        def __init__(self) -> None:
            self.int8_calibrator: Any = None
            self.flags: list[str] = []

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            pass

        def add_optimization_profile(self, profile: Any) -> int:
            return 0

        def set_calibration_profile(self, profile: Any) -> None:
            pass

        def set_flag(self, flag: str) -> None:
            self.flags.append(flag)

        def create_timing_cache(self, data: bytes) -> TimingCache | None:
            return TimingCache() if state.timing_cache(bytes(data)) else None

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            if not isinstance(cache, TimingCache):  # pybind11 on ITimingCache const&
                raise TypeError("set_timing_cache(): incompatible function arguments")
            return True

    class Builder:
        def __init__(self, logger: Any) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0) -> Network:
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Any:
            return types.SimpleNamespace(set_shape=lambda *args: None)

        def build_serialized_network(self, network: Network, config: Config) -> Any:
            cal = config.int8_calibrator
            if cal is not None:
                state.cache_read = cal.read_calibration_cache()
                if not state.cache_read:
                    names = [t.name for t in network.inputs]
                    while cal.get_batch(names) is not None:
                        state.batches += 1
                    if state.batches == 0:
                        return None
                    cal.write_calibration_cache(calibration_table([*names, "probs"]))
            return None if state.build_fails else memoryview(b"fake plan")

    ns: dict[str, Any] = {
        "ILogger": ILogger, "Builder": Builder, "OnnxParser": OnnxParser,
        "IInt8EntropyCalibrator2": type("IInt8EntropyCalibrator2", (),
                                        {"__init__": lambda self: None}),
        "NetworkDefinitionCreationFlag": types.SimpleNamespace(STRONGLY_TYPED=1),
        "BuilderFlag": types.SimpleNamespace(FP16="FP16", INT8="INT8",
                                             OBEY_PRECISION_CONSTRAINTS="OBEY"),
        "MemoryPoolType": types.SimpleNamespace(WORKSPACE=0),
        "float32": "float32", "float16": "float16",
    }
    for name, value in ns.items():
        setattr(trt, name, value)
    return trt


@dataclass
class FakeGpu:
    """The installed fakes: ``gpu`` (driver state) and ``trt`` (TensorRT's)."""

    gpu: GpuState
    trt: TrtState
    pycuda: types.ModuleType


def install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeGpu:
    """Put the fakes in ``sys.modules`` (and the ctypes driver library in
    ``hepascope.engines.cuda``'s cache) for one test; a dummy kernel fatbin too."""
    import sys

    import hepascope.engines.cuda as cuda

    gpu, trt_state = GpuState(), TrtState()
    drv = make_pycuda(gpu)
    package = types.ModuleType("pycuda")
    package.driver = drv  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", drv)
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt(trt_state))
    monkeypatch.setattr(cuda, "_lib", FakeLibcuda(gpu))
    kernels = tmp_path / "kernels"
    kernels.mkdir(exist_ok=True)
    (kernels / "preprocess.fatbin").write_bytes(b"fake fatbin")
    monkeypatch.setenv("HEPASCOPE_CUDA_KERNELS", str(kernels))
    return FakeGpu(gpu, trt_state, drv)
