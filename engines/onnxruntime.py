"""ONNX Runtime on CPU: the embedded default engine."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from hepascope.engines.base import Dim, TensorSpec, check_feeds
from hepascope.stream.errors import ModelError

_ORT_TYPES: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(bool)": np.dtype(np.bool_),
}


def cpu_budget() -> int:
    """Cores this process may run on (affinity and cgroup-style limits seen by the OS)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _spec(arg: ort.NodeArg) -> TensorSpec:
    dtype = _ORT_TYPES.get(arg.type)
    if dtype is None:
        raise ModelError(f"tensor {arg.name!r} has unsupported type {arg.type}")
    shape: tuple[Dim, ...] = tuple(d if isinstance(d, int) else None for d in arg.shape)
    return TensorSpec(arg.name, shape, dtype)


class OnnxRuntimeEngine:
    """An ONNX model on ONNX Runtime's CPU provider.

    Static-shaped outputs are written into arrays allocated once, by tensor name, through
    I/O binding; the returned dict holds those arrays, so a caller keeping a result past the
    next ``infer`` must copy it.
    """

    name = "onnxruntime"

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        self.path = Path(path)
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or cpu_budget()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # No spin-waiting after each run: the cores are shared with capture, decoding and
        # the other engines of a chain, which spinning threads would starve.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own unrelated exception classes
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(f"{self.path}: not a loadable ONNX model ({msg})") from e
        self.inputs = tuple(_spec(a) for a in self._session.get_inputs())
        self.outputs = tuple(_spec(a) for a in self._session.get_outputs())
        meta = self._session.get_modelmeta()
        self.metadata: dict[str, str] = dict(meta.custom_metadata_map)
        self.graph_name: str = meta.graph_name
        self._binding = self._session.io_binding()
        self._out: dict[str, np.ndarray] = {}
        for spec in self.outputs:
            if spec.static:
                shape = tuple(int(d) for d in spec.shape)  # type: ignore[arg-type]
                self._out[spec.name] = np.empty(shape, spec.dtype)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(self.inputs, feeds)
        b = self._binding
        # bind_cpu_input keeps a pointer, not a reference: hold the arrays until run returns.
        held = [np.ascontiguousarray(feeds[s.name], dtype=s.dtype) for s in self.inputs]
        for spec, arr in zip(self.inputs, held, strict=True):
            b.bind_cpu_input(spec.name, arr)
        for spec in self.outputs:
            buf = self._out.get(spec.name)
            if buf is None:
                b.bind_output(spec.name, "cpu")
            else:
                b.bind_output(spec.name, "cpu", 0, buf.dtype, buf.shape, buf.ctypes.data)
        self._session.run_with_iobinding(b)
        del held
        if len(self._out) == len(self.outputs):
            return self._out
        values = b.copy_outputs_to_cpu()
        return {s.name: self._out.get(s.name, v) for s, v in zip(self.outputs, values, strict=True)}

    def close(self) -> None:
        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()
        self._out.clear()
