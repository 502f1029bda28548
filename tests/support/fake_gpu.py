"""Stand-ins for the ``pycuda.driver`` and ``tensorrt`` modules (and the ``libcuda`` driver
calls hepascope makes through ctypes), put into ``sys.modules`` by a test, so that
the build and CUDA code paths run without TensorRT or a GPU.

They model the module boundary only: the calls hepascope makes, with the behaviour of the
real libraries that the tests depend on, taken from their sources and documentation:
pycuda's context stack (``src/cpp/cuda.hpp``: ``context::detach`` of a context that is not
current pushes it and calls ``cuDevicePrimaryCtxRelease``, which "does not pop the context
from stack in any circumstances"), pinned memory whose ``.base`` is the allocation that
``free()`` releases, and TensorRT calling an INT8 calibrator's ``get_batch`` until it
returns None and then ``write_calibration_cache``; TensorRT's runtime (tensor addresses set
once, ``execute_async_v3`` on device memory) and CUDA graphs (a capture records the async
copies and executes, a launch replays them). Kernels do nothing (their launches are
recorded: name, stream, arguments) and nothing here
makes a number hepascope reports: freed host memory is poisoned so a dangling view shows.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.fake_pycuda import FakeLibcuda, GpuState, make_pycuda
from support.fake_tensorrt import TrtState, calibration_table, make_tensorrt

__all__ = ["FakeGpu", "calibration_table", "install"]


@dataclass
class FakeGpu:
    """The installed fakes: ``gpu`` (driver state) and ``trt`` (TensorRT's)."""

    gpu: GpuState
    trt: TrtState
    pycuda: types.ModuleType


def install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeGpu:
    """Put the fakes in ``sys.modules`` (and the ctypes driver library in
    ``hepascope.engines.cuda``'s cache) for one test; a dummy kernel fatbin too."""
    import hepascope.engines.cuda as cuda

    gpu = GpuState()
    trt_state = TrtState(gpu=gpu)
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
