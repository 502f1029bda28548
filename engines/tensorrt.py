"""TensorRT on an NVIDIA GPU: a plan built by ``hepascope build`` run through the Engine
interface, written against the TensorRT 10 Python API (still TensorRT 11's for what is
used here).

Loading checks the plan's sidecar against the running TensorRT, the GPU and the ONNX file
beside it (``engines/plan.py``), then allocates pinned host and device buffers once by
tensor name at the largest batch, sets every tensor address once, and runs each ``infer``
as async copies in, ``execute_async_v3``, async copies out, on one CUDA stream, optionally
replayed as a CUDA graph captured per batch size. It is also ``DeviceFed``
(engines/interface.py): a CUDA kernel (the live path's GPU preprocessing) may write the
input buffers on its stream, and ``infer_device`` runs without the inputs' copies.
``tensorrt`` and ``pycuda`` are imported when an engine is made, so that
``import hepascope.engines.tensorrt`` works anywhere; a missing one is a
``ModelError("TensorRT engine unavailable: ...")``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from hepascope.core.errors import ModelError
from hepascope.engines.cuda import BufferSpec, CudaContext, CudaError, CudaGraph, DeviceBuffers
from hepascope.engines.cuda import check as cuda_check
from hepascope.engines.interface import Dim, TensorSpec, check_feeds
from hepascope.engines.plan import check_plan, read_sidecar

log = logging.getLogger("hepascope.tensorrt")
PLAN_SUFFIX = ".plan"


def import_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or ``ModelError`` with the reason it cannot be had."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ModelError(f"TensorRT engine unavailable: tensorrt is not importable ({e})") \
            from e
    return trt


def make_logger(trt: ModuleType) -> Any:
    """A TensorRT logger that sends TensorRT's messages to Python logging (not stderr)
    and keeps its errors, so a failure can be reported in the error that ends the call."""

    class Logger(trt.ILogger):  # type: ignore[name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg.strip())
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

        def last_error(self) -> str:
            return self.errors[-1].splitlines()[0] if self.errors else "no error logged"

    return Logger()


def plan_for(path: str | Path) -> tuple[Path, Path | None]:
    """(plan, the ONNX file to check it against) for a ``.plan`` or an ``.onnx`` path: an
    ONNX model's plan is ``MODEL.plan`` beside it, made by ``hepascope build``."""
    p = Path(path)
    if p.suffix == ".onnx":
        plan = p.with_suffix(PLAN_SUFFIX)
        if not plan.is_file():
            raise ModelError(f"{p.name}: no TensorRT plan {plan.name} beside it; build one "
                             f"with 'hepascope build {p}'")
        return plan, p
    if not p.is_file():
        raise ModelError(f"{p}: no such TensorRT plan")
    onnx = p.with_suffix(".onnx")
    return p, onnx if onnx.is_file() else None


def numpy_dtype(trt: ModuleType, dtype: Any, name: str) -> np.dtype:
    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError as e:  # bf16, fp8, int4: no numpy type
        raise ModelError(f"tensor {name!r} has type {dtype}, which numpy cannot hold") from e


class TrtEngine:
    """A TensorRT plan on the GPU (see the module doc). Results are new arrays, copied
    from the pinned output buffers (class scores: a few bytes), so they stay valid after
    the next ``infer`` and after ``close``, which frees those buffers."""

    name = "tensorrt"

    def __init__(self, path: str | Path, *, cuda_graph: bool = False,
                 max_batch: int | None = None, device: int = 0) -> None:
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        trt = import_tensorrt()
        self.plan, onnx = plan_for(path)
        sidecar = read_sidecar(self.plan)
        self._ctx = CudaContext(device)
        self._buffers: DeviceBuffers | None = None
        self._graphs: dict[tuple[int, bool], CudaGraph] = {}  # (batch, with input copies)
        self._context: Any = None
        self._engine: Any = None
        try:
            check_plan(sidecar, trt_version=trt.__version__, gpu_name=self._ctx.name,
                       compute_capability=self._ctx.compute_capability, onnx_path=onnx,
                       plan_name=self.plan.name)
            self.metadata: dict[str, str] = dict(sidecar.onnx_metadata)
            self.precision = sidecar.precision
            self.cuda_graph = cuda_graph
            with self._ctx:
                self._load(trt, max_batch)
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- loading

    def _load(self, trt: ModuleType, max_batch: int | None) -> None:
        self._logger = make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if engine is None:
            raise ModelError(f"{self.plan.name}: TensorRT cannot deserialize it "
                             f"({self._logger.last_error()})")
        self._engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        ins = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if n not in ins]
        self.inputs = tuple(self._spec(trt, n) for n in ins)
        self.outputs = tuple(self._spec(trt, n) for n in outs)
        self.max_batch = self._max_batch(max_batch)
        self._context = engine.create_execution_context()
        if self._context is None:
            raise ModelError(f"{self.plan.name}: TensorRT could not create an execution "
                             f"context ({self._logger.last_error()})")
        self._set_batch(self.max_batch)  # output shapes at the largest batch: buffer sizes
        specs = [BufferSpec(s.name, self._shapes[s.name], s.dtype)
                 for s in self.inputs + self.outputs]
        self._buffers = DeviceBuffers(specs, self._ctx)
        for s in specs:  # once: the buffers never move
            if not self._context.set_tensor_address(s.name, self._buffers.device_ptr(s.name)):
                raise ModelError(f"{self.plan.name}: TensorRT refused the address of "
                                 f"{s.name!r} ({self._logger.last_error()})")

    def _spec(self, trt: ModuleType, name: str) -> TensorSpec:
        shape: tuple[Dim, ...] = tuple(
            int(d) if d >= 0 else None for d in self._engine.get_tensor_shape(name))
        return TensorSpec(name, shape, numpy_dtype(trt, self._engine.get_tensor_dtype(name),
                                                   name))

    def _max_batch(self, wanted: int | None) -> int:
        """The largest batch every input's optimisation profile (0) accepts, or ``wanted``
        if it is no larger."""
        most = min(int(self._engine.get_tensor_profile_shape(s.name, 0)[2][0])
                   for s in self.inputs)
        if wanted is not None and wanted > most:
            raise ModelError(f"{self.plan.name}: built for batches up to {most}, asked for "
                             f"{wanted}; rebuild with 'hepascope build --max-batch {wanted}'")
        return wanted or most

    def _set_batch(self, batch: int) -> None:
        """Set every input's shape at ``batch`` and read the outputs' shapes."""
        shapes: dict[str, tuple[int, ...]] = {}
        for s in self.inputs:
            shape = s.at_batch(batch)
            if not self._context.set_input_shape(s.name, shape):
                raise ModelError(f"{self.plan.name}: TensorRT refused input {s.name!r} of "
                                 f"shape {shape} ({self._logger.last_error()})")
            shapes[s.name] = shape
        for s in self.outputs:
            shape = tuple(int(d) for d in self._context.get_tensor_shape(s.name))
            if any(d < 0 for d in shape):
                raise ModelError(f"{self.plan.name}: output {s.name!r} has a data-dependent "
                                 "shape, which this engine does not support")
            shapes[s.name] = shape
        self._shapes, self._batch = shapes, batch

    # ---------------------------------------------------------------- running

    def _batch_of(self, feeds: dict[str, np.ndarray]) -> int:
        batches = {feeds[s.name].shape[0] for s in self.inputs}
        if len(batches) != 1:
            raise ModelError(f"inputs have different batch sizes {sorted(batches)}")
        batch = batches.pop()
        if not 1 <= batch <= self.max_batch:
            raise ModelError(f"batch {batch} is outside this plan's 1..{self.max_batch}")
        return int(batch)

    def _count(self, name: str) -> int:
        return int(np.prod(self._shapes[name]))

    def _enqueue(self, copy_inputs: bool = True) -> None:
        """Copies in (unless the inputs are on the device already), execute, copies out:
        all async on the one stream."""
        assert self._buffers is not None
        for s in self.inputs if copy_inputs else ():
            self._buffers.to_device(s.name, self._count(s.name))
        ok = cuda_check("execute_async_v3", self._context.execute_async_v3,
                        self._buffers.stream_handle)
        if not ok:
            raise ModelError(f"{self.plan.name}: TensorRT execute_async_v3 failed "
                             f"({self._logger.last_error()})")
        for s in self.outputs:
            self._buffers.to_host(s.name, self._count(s.name))

    def _graph(self, copy_inputs: bool = True) -> CudaGraph:
        """The graph of ``_enqueue(copy_inputs)`` at the current batch, captured on first
        use. ``infer_device`` has graphs of its own, without the input copies: replaying
        ``infer``'s would copy the pinned host inputs over what a kernel wrote on the
        device. Its own capture (rather than a plain enqueue) keeps the graph's one launch
        instead of TensorRT's per-layer launches on the live path."""
        key = (self._batch, copy_inputs)
        graph = self._graphs.get(key)
        if graph is None:
            assert self._buffers is not None
            # TensorRT defers some work after a shape change to the next enqueue, which
            # must not be the captured one: run once outside the capture first.
            self._enqueue(copy_inputs)
            self._buffers.synchronize()
            try:
                graph = CudaGraph(self._buffers.stream_handle,
                                  lambda: self._enqueue(copy_inputs))
            except CudaError as e:
                raise ModelError(f"{self.plan.name}: CUDA graph capture failed ({e}); run "
                                 "without the CUDA graph") from e
            self._graphs[key] = graph
        return graph

    def _run(self, copy_inputs: bool) -> dict[str, np.ndarray]:
        """Enqueue (or replay) at the current batch, wait, and copy the outputs out of the
        pinned buffers; the context is current."""
        assert self._buffers is not None
        if self.cuda_graph:
            self._graph(copy_inputs).launch()
        else:
            self._enqueue(copy_inputs)
        self._buffers.synchronize()
        return {s.name: self._buffers.view(s.name, self._shapes[s.name]).copy()
                for s in self.outputs}

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._buffers is None:
            raise ModelError(f"{self.plan.name}: engine used after close()")
        check_feeds(self.inputs, feeds)
        batch = self._batch_of(feeds)
        with self._ctx:
            if batch != self._batch:
                self._set_batch(batch)
            for s in self.inputs:
                np.copyto(self._buffers.view(s.name, self._shapes[s.name]), feeds[s.name],
                          casting="same_kind")
            return self._run(copy_inputs=True)

    # ---------------------------------------------------------------- DeviceFed

    @property
    def cuda_context(self) -> CudaContext:
        return self._ctx

    @property
    def device_stream(self) -> Any:
        """The pycuda stream of every copy and ``execute_async_v3`` (None after close)."""
        return None if self._buffers is None else self._buffers.stream

    def device_inputs(self, batch: int = 1) -> dict[str, int]:
        """The input buffers' device pointers, the engine set to ``batch`` (the addresses
        TensorRT was given once: the buffers hold the largest batch, a smaller one is
        their prefix)."""
        if self._buffers is None:
            raise ModelError(f"{self.plan.name}: engine used after close()")
        if not 1 <= batch <= self.max_batch:
            raise ModelError(f"batch {batch} is outside this plan's 1..{self.max_batch}")
        with self._ctx:
            if batch != self._batch:
                self._set_batch(batch)
        return {s.name: self._buffers.device_ptr(s.name) for s in self.inputs}

    def infer_device(self) -> dict[str, np.ndarray]:
        """``infer`` on what the input device buffers hold at the batch ``device_inputs``
        set, after the work queued on ``device_stream``: no host->device copy of inputs."""
        if self._buffers is None:
            raise ModelError(f"{self.plan.name}: engine used after close()")
        with self._ctx:
            return self._run(copy_inputs=False)

    def close(self) -> None:
        """Free the graphs, the execution context, the engine, the buffers and the stream,
        then release the CUDA context (idempotent)."""
        if self._ctx.closed:
            return
        try:
            with self._ctx:
                for graph in self._graphs.values():
                    graph.close()
                self._graphs.clear()
                # TensorRT's Python objects have no destroy(): dropping the last
                # reference destroys them now, with the context current.
                self._context = None
                self._engine = None
                if self._buffers is not None:
                    self._buffers.close()
                    self._buffers = None
        finally:
            self._ctx.close()
