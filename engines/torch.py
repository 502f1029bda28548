"""PyTorch backend: the ``torch.export`` program the export step wrote beside each ONNX
graph (``<graph>.pt2``), behind the same name-keyed interface (specs and metadata read
from the graph itself). No model definition is needed: nothing from ``train/`` is imported.

* CPU: eager fp32, the "torch eager" baseline.
* CUDA: fp16 (half weights, autocast), channels_last, and one CUDA graph per input shape,
  captured after a warm-up on the engine's own stream and replayed by ``infer``; batch 1
  (the live path's) when the engine is built, so the first frame does not pay for it.
  Inputs go through pinned host buffers into static device tensors (or a CUDA kernel
  writes those: ``DeviceFed``), outputs come back into pinned host tensors: all allocated
  once per input shape, by tensor name.

The programs were exported in fp32 on the CPU with BatchNorm folded (``train/programs.py``);
on CUDA they are moved to the device with ``torch.export.passes.move_to_device_pass``.
fp16 runs the same program with half weights (norms' parameters stay fp32) under autocast,
whose fp32 op list keeps SimAM's squares and sums in fp32 on CUDA (fp16 squares
overflow). Each program carries a record (model, labels, role) checked against the
graph's metadata: a program from another export is refused. The fusion head stays fp32
(a few small matrix products: fp16 saves nothing there). ``FP16_TOL`` is the agreement
with fp32 that ``tests/test_fp16.py`` proves on every model family.

Imported only when the torch backend is asked for: ``stream/`` never imports torch."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from hepascope.core.errors import ModelError
from hepascope.core.export_format import (
    META_LABELS,
    META_MODEL,
    META_ROLE,
    PROGRAM_META,
    ROLE_HEAD,
    ROLES,
    program_file,
)
from hepascope.engines.cuda import CudaContext, driver, new_stream
from hepascope.engines.interface import Dim, TensorSpec, check_feeds

log = logging.getLogger(__name__)

FP16_TOL = 1e-2  # max |fp16 - fp32| on probabilities (and relative to max |feature|)
WARMUP = 3  # eager runs before capture: cuDNN/cuBLAS pick and set up their kernels
_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
                 np.dtype(np.float64): torch.float64, np.dtype(np.int64): torch.int64,
                 np.dtype(np.int32): torch.int32, np.dtype(np.uint8): torch.uint8,
                 np.dtype(np.bool_): torch.bool}


def read_graph(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...],
                                     dict[str, str]]:
    """(inputs, outputs, metadata) of the ONNX graph at ``path``, as ONNX Runtime reports
    them (initializers are not inputs; symbolic dims are None)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise ModelError(f"{path}: not a loadable ONNX model ({e})") from e
    g = model.graph
    inits = {i.name for i in g.initializer}

    def spec(v: Any) -> TensorSpec:
        t = v.type.tensor_type
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))
        except (KeyError, TypeError) as e:
            raise ModelError(f"tensor {v.name!r} has unsupported type {t.elem_type}") from e
        shape: tuple[Dim, ...] = tuple(
            d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
        return TensorSpec(v.name, shape, dtype)

    return (tuple(spec(v) for v in g.input if v.name not in inits),
            tuple(spec(v) for v in g.output),
            {p.key: p.value for p in model.metadata_props})


def load_program(path: Path, role: str, metadata: dict[str, str], *, device: str, fp16: bool,
                 channels_last: bool) -> nn.Module:
    """The module of the program beside the graph at ``path``, on ``device`` (half weights
    with ``fp16``); refused (``ModelError``) if absent, damaged or written for another
    model."""
    if role not in ROLES:
        raise ModelError(f"{path.name}: not a hepascope export graph (role "
                         f"{role or None!r}); the torch engine runs exports only")
    file = program_file(path)
    if not file.is_file():
        raise ModelError(f"{path.name}: no torch.export program ({file.name}) beside it; "
                         "re-export with hepascope export")
    extra = {PROGRAM_META: ""}
    try:
        program = torch.export.load(str(file), extra_files=extra)
        record = json.loads(extra[PROGRAM_META] or "null")
        labels = json.loads(metadata.get(META_LABELS, "null"))
    except Exception as e:  # a damaged archive: zipfile, pickle, JSON errors
        raise ModelError(f"{file.name}: not a loadable torch.export program ({e!r})") from e
    want = (metadata.get(META_MODEL), labels, role)
    got = (None, None, None) if not isinstance(record, dict) else (
        record.get("model"), record.get("labels"), record.get("role"))
    if want != got:
        raise ModelError(f"{file.name}: the program beside it is {got[0]} {got[1]} "
                         f"({got[2]}), the graph is {want[0]} {want[1]} ({want[2]}); "
                         "re-export with hepascope export")
    if device != "cpu":
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, device)
    module: nn.Module = lean_module(program.module())
    if fp16:  # the weights of convolutions and matrix products; norms' parameters stay fp32
        for p in module.parameters():  # (mixed-precision BatchNorm: fp16 in, fp32 parameters)
            if p.dim() >= 2:
                p.data = p.data.half()
    if channels_last:
        for p in module.parameters():
            fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(p.dim())
            if fmt is not None:
                p.data = p.data.contiguous(memory_format=fmt)
    return module


def lean_module(gm: Any) -> Any:
    """``gm`` (an unlifted program's ``GraphModule``) without the Python overhead that made it
    1.28x slower than the eager module on the CPU: the reads of parameters the graph never
    uses (a part of a bimodal model carries the whole model's state) are dropped, and each
    used one is read from one flat attribute instead of a chain of ``getattr`` through the
    submodule tree. Same ops, same tensors (shared, not copied); guards stay."""
    gm.graph.eliminate_dead_code()
    for i, node in enumerate(n for n in gm.graph.nodes if n.op == "get_attr" and "." in n.target):
        obj = gm
        for part in node.target.split("."):
            obj = getattr(obj, part)
        name = f"_flat{i}"
        if isinstance(obj, nn.Parameter):
            gm.register_parameter(name, obj)
        elif isinstance(obj, torch.Tensor):
            gm.register_buffer(name, obj)
        else:
            setattr(gm, name, obj)
        node.target = name
    gm.recompile()
    return gm


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim(),
                                                                   torch.contiguous_format)


@dataclass
class _Plan:
    """Everything allocated for one input shape."""

    out: dict[str, np.ndarray]                                 # what infer returns
    host_in_t: dict[str, torch.Tensor] = field(default_factory=dict)  # pinned (CUDA)
    host_in: dict[str, np.ndarray] = field(default_factory=dict)     # numpy views of those
    dev_in: dict[str, torch.Tensor] = field(default_factory=dict)
    host_out: dict[str, torch.Tensor] = field(default_factory=dict)
    graph: Any = None                                          # torch.cuda.CUDAGraph
    graph_out: tuple[torch.Tensor, ...] = ()


class TorchEngine:
    """The graph at ``path`` run as the PyTorch module it was traced from (module doc).

    ``device``: "cpu" or "cuda" (None: CUDA where torch sees it). ``fp16``,
    ``channels_last``, ``cuda_graph``: default on for CUDA, off for CPU (CUDA graphs need
    CUDA). ``threads``: intra-op threads on CPU, set in each thread that runs ``infer``
    (torch has one pool setting per thread). Results are arrays reused by the next
    ``infer`` with the same input shapes: copy one to keep it."""

    name = "torch"

    def __init__(self, path: str | Path, *, device: str | None = None, fp16: bool | None = None,
                 channels_last: bool | None = None, cuda_graph: bool | None = None,
                 threads: int | None = None) -> None:
        self.path = Path(path)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        cuda = device == "cuda"
        if cuda and not torch.cuda.is_available():
            raise ModelError(f"torch engine: CUDA not available (torch {torch.__version__})")
        if cuda_graph and not cuda:
            raise ValueError("cuda_graph needs device='cuda'")
        self.device = device
        self.inputs, self.outputs, self.metadata = read_graph(self.path)
        self.role = self.metadata.get(META_ROLE, "")
        self.fp16 = cuda if fp16 is None else fp16
        if self.role == ROLE_HEAD:
            self.fp16 = False  # the fusion head stays fp32 (module doc)
        self.channels_last = cuda if channels_last is None else channels_last
        self.cuda_graph = cuda if cuda_graph is None else cuda_graph
        self._threads = threads or torch.get_num_threads()
        self._tls = threading.local()
        self._module: nn.Module | None = load_program(
            self.path, self.role, self.metadata, device=device, fp16=self.fp16,
            channels_last=self.channels_last)
        self._out_dtypes = tuple(_TORCH_DTYPES[s.dtype] for s in self.outputs)
        self._plans: dict[tuple[tuple[int, ...], ...], _Plan] = {}
        self._stream: Any = torch.cuda.Stream() if cuda else None
        self._cuda_ctx: CudaContext | None = None  # DeviceFed, made on first use
        self._py_stream: Any = None
        self._py_ready: Any = None  # torch.cuda.ExternalStream of _py_stream
        self._fed: tuple[tuple[tuple[int, ...], ...], _Plan] | None = None
        self.replays = 0  # CUDA graph replays so far (what a test checks the path by)
        log.info("torch engine: %s on %s (fp16 %s, channels_last %s, CUDA graph %s)",
                 self.path.name, device, self.fp16, self.channels_last, self.cuda_graph)
        if cuda and all(isinstance(d, int) for s in self.inputs for d in s.shape[1:]):
            try:  # the live path's batch 1, warmed up (and captured) now, not on frame one
                self.infer({s.name: np.zeros(s.at_batch(1), s.dtype) for s in self.inputs})
            except BaseException:
                self.close()
                raise

    # ----------------------------------------------------------------- running

    def _forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The module on ``xs`` (cast and laid out as it computes), outputs cast to the
        graph's dtypes. This is what a CUDA graph captures."""
        assert self._module is not None
        dtype = torch.float16 if self.fp16 else torch.float32
        ins = [x.to(dtype=dtype, memory_format=_memory_format(x)) if self.channels_last
               else x.to(dtype) for x in xs]
        # fp16: autocast casts what the program made in fp32 (pooling matrices) to the
        # weights' half, and runs its fp32 list (pow, sum: SimAM) in fp32; no weight cache,
        # as CUDA graphs need
        with torch.autocast(self.device, dtype=torch.float16, enabled=self.fp16,
                            cache_enabled=False):
            ys = self._module(*ins)
        ys = ys if isinstance(ys, tuple) else (ys,)
        if len(ys) != len(self.outputs):
            raise ModelError(f"{self.path.name}: module gives {len(ys)} outputs, the graph "
                             f"{len(self.outputs)}")
        return tuple(y.to(d).contiguous() for y, d in zip(ys, self._out_dtypes, strict=True))

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._module is None:
            raise ModelError(f"{self.path.name}: torch engine is closed")
        check_feeds(self.inputs, feeds)
        key = tuple(tuple(feeds[s.name].shape) for s in self.inputs)
        if self.device == "cpu":
            return self._infer_cpu(feeds, key)
        return self._infer_cuda(feeds, key)

    def _infer_cpu(self, feeds: dict[str, np.ndarray],
                   key: tuple[tuple[int, ...], ...]) -> dict[str, np.ndarray]:
        if getattr(self._tls, "threads", None) != self._threads:
            torch.set_num_threads(self._threads)
            self._tls.threads = self._threads
        xs = [torch.from_numpy(np.ascontiguousarray(feeds[s.name], s.dtype))
              for s in self.inputs]
        with torch.inference_mode():
            ys = self._forward(*xs)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _Plan(out={
                s.name: np.empty(tuple(y.shape), s.dtype)
                for s, y in zip(self.outputs, ys, strict=True)})
        for s, y in zip(self.outputs, ys, strict=True):
            np.copyto(plan.out[s.name], y.numpy())
        return plan.out

    def _cuda_plan(self, key: tuple[tuple[int, ...], ...]) -> _Plan:
        """Pinned host and static device input buffers for ``key``'s shapes."""
        plan = _Plan(out={})
        for s, shape in zip(self.inputs, key, strict=True):
            dt = _TORCH_DTYPES[s.dtype]
            plan.host_in_t[s.name] = torch.empty(shape, dtype=dt, pin_memory=True)
            plan.host_in[s.name] = plan.host_in_t[s.name].numpy()
            plan.dev_in[s.name] = torch.empty(shape, dtype=dt, device=self.device)
        return plan

    def _first_run(self, plan: _Plan) -> tuple[torch.Tensor, ...]:
        """Warm up on the engine's stream (the current one), then with ``cuda_graph``
        capture on that same stream, so no library handle or workspace is first made
        mid-capture; allocate the pinned outputs. Returns this call's outputs (capturing
        computes nothing: the graph is replayed once)."""
        xs = tuple(plan.dev_in.values())
        for _ in range(WARMUP):
            ys = self._forward(*xs)
        if self.cuda_graph:
            self._stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            # thread_local: a clip model's engine may be running in another thread meanwhile
            with torch.cuda.graph(graph, stream=self._stream, capture_error_mode="thread_local"):
                plan.graph_out = self._forward(*xs)
            plan.graph = graph
            ys = self._replay(plan)
        plan.host_out = {s.name: torch.empty(tuple(y.shape), dtype=y.dtype, pin_memory=True)
                         for s, y in zip(self.outputs, ys, strict=True)}
        plan.out = {n: t.numpy() for n, t in plan.host_out.items()}
        return ys

    def _replay(self, plan: _Plan) -> tuple[torch.Tensor, ...]:
        plan.graph.replay()
        self.replays += 1
        return plan.graph_out

    def _infer_cuda(self, feeds: dict[str, np.ndarray],
                    key: tuple[tuple[int, ...], ...]) -> dict[str, np.ndarray]:
        plan = self._plans.get(key) or self._cuda_plan(key)
        for s in self.inputs:
            np.copyto(plan.host_in[s.name], feeds[s.name], casting="unsafe")

        def upload() -> None:
            for name, dev in plan.dev_in.items():
                dev.copy_(plan.host_in_t[name], non_blocking=True)
        return self._run_cuda(key, plan, upload)

    def _run_cuda(self, key: tuple[tuple[int, ...], ...], plan: _Plan,
                  fill: Callable[[], None]) -> dict[str, np.ndarray]:
        """On the engine's stream: ``fill`` (what puts the inputs in ``plan.dev_in``), the
        module (warm-up and capture on the plan's first run, else a replay), the outputs
        into the pinned host tensors; then wait for the stream."""
        new = key not in self._plans
        with torch.no_grad(), torch.cuda.stream(self._stream):
            fill()
            if new:
                ys = self._first_run(plan)
            elif plan.graph is not None:
                ys = self._replay(plan)
            else:
                ys = self._forward(*plan.dev_in.values())
            for s, y in zip(self.outputs, ys, strict=True):
                plan.host_out[s.name].copy_(y, non_blocking=True)
        self._stream.synchronize()
        self._plans[key] = plan
        return plan.out

    # ------------------------------- fed on the device (DeviceFed, engines/interface.py)

    @property
    def cuda_context(self) -> CudaContext:
        """pycuda's handle on the device's primary context, the one torch runs in (so a
        kernel of another module can write a torch tensor), made on first use. On the CPU,
        or without pycuda, ``ModelError``: this engine is then fed through ``infer``."""
        if self.device != "cuda":
            raise ModelError(f"{self.path.name}: the torch engine runs on the cpu: no "
                             "device inputs")
        if self._cuda_ctx is None:
            self._cuda_ctx = CudaContext(torch.cuda.current_device())
        return self._cuda_ctx

    @property
    def device_stream(self) -> Any:
        """A pycuda stream for the input writes, made on first use; ``infer_device`` has
        the engine's own stream wait for it on the GPU (no host wait)."""
        if self._py_stream is None:
            with self.cuda_context:
                self._py_stream = new_stream(driver())
            # torch's handle on the same stream, made once: infer_device waits on it
            self._py_ready = torch.cuda.ExternalStream(int(self._py_stream.handle),
                                                       device=self._stream.device)
        return self._py_stream

    def device_inputs(self, batch: int = 1) -> dict[str, int]:
        """Device pointers of the static input tensors at ``batch`` (contiguous, the
        graph's dtype: the module lays them out channels-last itself, after the write)."""
        if self._module is None:
            raise ModelError(f"{self.path.name}: torch engine is closed")
        if batch < 1:
            raise ModelError(f"batch must be >= 1, got {batch}")
        self.cuda_context  # noqa: B018 (on the CPU: ModelError)
        key = tuple(s.at_batch(batch) for s in self.inputs)
        if self._fed is None or self._fed[0] != key:
            self._fed = (key, self._plans.get(key) or self._cuda_plan(key))
        return {name: int(t.data_ptr()) for name, t in self._fed[1].dev_in.items()}

    def infer_device(self) -> dict[str, np.ndarray]:
        """``infer`` on what the tensors of the last ``device_inputs`` hold, after the work
        queued on ``device_stream``; results are new arrays, the caller's."""
        if self._module is None:
            raise ModelError(f"{self.path.name}: torch engine is closed")
        if self._fed is None:
            raise ModelError(f"{self.path.name}: infer_device before device_inputs")
        key, plan = self._fed
        self.device_stream  # noqa: B018 (made with its torch handle on first use)
        out = self._run_cuda(key, plan, lambda: self._stream.wait_stream(self._py_ready))
        return {name: a.copy() for name, a in out.items()}

    def close(self) -> None:
        """Drop the graphs, buffers and module (their memory goes back to torch's caching
        allocator); ``infer`` refuses afterwards."""
        if self._stream is not None:
            self._stream.synchronize()
        for plan in self._plans.values():
            if plan.graph is not None:
                plan.graph.reset()
        self._plans.clear()
        self._module = None
        self._fed = None
        ctx, self._cuda_ctx = self._cuda_ctx, None
        if ctx is not None:  # the pycuda stream goes with the context current, then it
            with ctx:
                self._py_stream = self._py_ready = None
            ctx.close()
