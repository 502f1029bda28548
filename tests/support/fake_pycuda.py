"""A stand-in for ``pycuda.driver`` (and the ``libcuda`` driver calls hepascope makes
through ctypes) over one ``GpuState``: see ``support.fake_gpu`` for what is modelled, and
from where."""

from __future__ import annotations

import functools
import threading
import types
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
    htod: list[int] = field(default_factory=list)  # destination of every host->device copy
    launches: list[tuple[str, Any, tuple[Any, ...]]] = field(default_factory=list)  # kernel,
    # stream, arguments (nothing runs)
    popped_reset: bool = False  # a context was popped after its last release
    fail: dict[str, int] = field(default_factory=dict)  # call name -> fail at that count
    capture: list[Any] | None = None  # a stream capture: async work recorded, not run
    graphs: dict[int, list[Any]] = field(default_factory=dict)  # graph handle -> its work

    def issue(self, work: Any) -> None:
        """Run async work now, or record it into the capture under way."""
        if self.capture is None:
            work()
        else:
            self.capture.append(work)

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


class DriverError(Exception):
    """pycuda.driver.Error."""


def _current(state: GpuState, except_: Any = None) -> Any:
    """pycuda's ``context::current_context``: the top valid context of its stack."""
    while state.pycuda_stack:
        top = state.pycuda_stack[-1]
        if top is not except_ and top.valid:
            return top
        state.pycuda_stack.pop()
    return None


class _Bound:
    """A fake pycuda class; ``make_pycuda`` subclasses it with one test's ``state``."""

    state: GpuState
    drv: Any


class Context(_Bound):
    def __init__(self) -> None:
        self.valid, self.thread = True, threading.get_ident()
        self.handle = self.state.handle

    def push(self) -> None:
        if self.state.pycuda_stack:  # prepare_context_switch
            self.state.driver_stack.pop()
        self.state.driver_stack.append(self.handle)
        self.state.pycuda_stack.append(self)

    @classmethod
    def pop(cls) -> None:
        state = cls.state
        if not state.pycuda_stack:
            raise DriverError("context::pop failed: cannot pop non-current context")
        state.driver_stack.pop()
        state.pycuda_stack.pop()
        now = _current(state)
        if now is not None:
            state.driver_stack.append(now.handle)

    def detach(self) -> None:
        state = self.state
        if not self.valid:
            raise DriverError("context::detach failed: cannot detach from invalid context")
        active = _current(state) is self
        if active or self.thread == threading.get_ident():
            if not active:
                state.driver_stack.append(self.handle)  # "pop is implicit": not here
            state.retained -= 1  # cuDevicePrimaryCtxRelease: no pop
        self.valid = False
        if active:
            now = _current(state, self)
            if now is not None:
                state.driver_stack.append(now.handle)

    @classmethod
    def synchronize(cls) -> None:
        cls.state.call("cuCtxSynchronize")


class Device(_Bound):
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
        self.state.retained += 1
        return self.drv.Context()


class Stream(_Bound):
    def __init__(self, flags: int = 0) -> None:
        self.state.call("cuStreamCreate")
        self.flags = flags
        self.handle = id(self)
        self.state.streams.append(weakref.ref(self))

    def synchronize(self) -> None:
        self.state.call("cuStreamSynchronize")


class Event(_Bound):
    def __init__(self, flags: int = 0) -> None:
        self.flags = flags
        self.state.events.append(weakref.ref(self))

    def record(self, stream: Any = None) -> Event:
        return self

    def synchronize(self) -> Event:
        return self


class Function(_Bound):
    def __init__(self, module: Module, name: str = "") -> None:
        self.module = module  # pycuda: with_custodian_and_ward, the module lives on
        self.name = name

    def prepare(self, fmt: str) -> None:
        pass

    def prepared_async_call(self, grid: Any, block: Any, stream: Any, *args: Any) -> None:
        self.state.call("cuLaunchKernel")
        self.state.launches.append((self.name, stream, args))


class Module(_Bound):
    def __init__(self, path: str = "") -> None:
        self.state.modules.append(weakref.ref(self))

    def get_function(self, name: str) -> Function:
        return self.drv.Function(self, name)


class HostAllocation(_Bound):
    """pycuda's PagelockedHostAllocation: the ``.base`` of a pinned array."""

    def __init__(self, shape: Any, dtype: Any) -> None:
        self.mem = np.zeros(shape, dtype)
        self.__array_interface__ = self.mem.__array_interface__
        self.freed = False
        self.state.host_allocs.append(self)

    def free(self) -> None:
        if self.freed:
            raise DriverError("cuMemFreeHost: already freed")
        self.freed = True
        self.mem.view(np.uint8).reshape(-1)[:] = POISON


class DeviceAllocation(_Bound):
    def __init__(self, nbytes: int) -> None:
        self.addr = self.state.next_addr
        self.state.next_addr += (nbytes + 0xFFF) & ~0xFFF
        self.state.memory[self.addr] = np.zeros(nbytes, np.uint8)

    def __int__(self) -> int:
        return self.addr

    def free(self) -> None:
        if self.state.memory.pop(self.addr, None) is None:
            raise DriverError("cuMemFree: not allocated")


def _htod(state: GpuState, dst: Any, src: np.ndarray, stream: Any = None) -> None:
    state.htod.append(int(dst))
    raw = np.ascontiguousarray(src).view(np.uint8).reshape(-1)
    state.find(int(dst), raw.size)[:] = raw


def _dtoh(state: GpuState, dst: np.ndarray, src: Any, stream: Any = None) -> None:
    out = dst.view(np.uint8).reshape(-1)
    out[:] = state.find(int(src), out.size)


def make_pycuda(state: GpuState) -> types.ModuleType:
    """A ``pycuda.driver`` module over ``state`` (see ``support.fake_gpu``)."""
    drv = types.ModuleType("pycuda.driver")
    state.Error = DriverError
    for cls in (Context, Device, Stream, Event, Function, Module, HostAllocation,
                DeviceAllocation):
        setattr(drv, cls.__name__, type(cls.__name__, (cls,), {"state": state, "drv": drv}))

    def htod_async(dst: Any, src: np.ndarray, stream: Any) -> None:
        state.call("memcpy_htod_async")
        state.issue(functools.partial(_htod, state, dst, src))

    def dtoh_async(dst: np.ndarray, src: Any, stream: Any) -> None:
        state.call("memcpy_dtoh_async")
        state.issue(functools.partial(_dtoh, state, dst, src))

    ns: dict[str, Any] = {
        "Error": DriverError, "init": lambda: None,
        "memcpy_htod": functools.partial(_htod, state),
        "memcpy_dtoh": functools.partial(_dtoh, state),
        "memcpy_htod_async": htod_async, "memcpy_dtoh_async": dtoh_async,
        "mem_alloc": drv.DeviceAllocation, "module_from_file": drv.Module,
        "pagelocked_empty": lambda shape, dtype: np.asarray(drv.HostAllocation(shape, dtype)),
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

    def cuStreamBeginCapture_v2(self, stream: Any, mode: int) -> int:
        if self.state.capture is not None:
            raise AssertionError("cuStreamBeginCapture during a capture")
        self.state.capture = []
        return 0

    def cuStreamEndCapture(self, stream: Any, out: Any) -> int:
        work, self.state.capture = self.state.capture or [], None
        out._obj.value = handle = id(work)
        self.state.graphs[handle] = work
        return 0

    def cuGraphInstantiateWithFlags(self, out: Any, graph: Any, flags: int) -> int:
        out._obj.value = graph.value + 0x100000  # the executable graph replays the same work
        self.state.graphs[out._obj.value] = self.state.graphs[graph.value]
        return 0

    def cuGraphLaunch(self, exe: Any, stream: Any) -> int:
        self.state.call("cuGraphLaunch")
        for work in self.state.graphs[exe.value]:
            work()
        return 0

    def cuGraphExecDestroy(self, exe: Any) -> int:
        del self.state.graphs[exe.value]
        return 0

    def cuGraphDestroy(self, graph: Any) -> int:
        del self.state.graphs[graph.value]
        return 0

    def cuDevicePrimaryCtxRelease_v2(self, dev: Any) -> int:
        if self.state.retained == 0:
            raise AssertionError("cuDevicePrimaryCtxRelease of a context not retained")
        self.state.retained -= 1
        return 0
