"""A stand-in for ``pycuda.driver`` (and the ``libcuda`` driver calls hepascope makes
through ctypes) over one ``GpuState``: see ``support.fake_gpu`` for what is modelled, and
from where."""

from __future__ import annotations

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
