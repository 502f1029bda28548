"""A stand-in for the ``tensorrt`` module over one ``TrtState``: the builder calls
``build_plan`` makes, an ONNX parser that reads the graph's inputs, and INT8 calibration
driven as TensorRT 10 drives it (``get_batch`` until None, then
``write_calibration_cache``); and the runtime calls ``TrtEngine`` makes (``Runtime``,
``ICudaEngine``, ``IExecutionContext``: tensors by name, shapes, addresses set once,
``execute_async_v3``). See ``support.fake_gpu``."""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx


@dataclass
class TrtState:
    """What the fake TensorRT does: its version, whether a timing cache can be made from
    given bytes, whether a build fails after calibrating, and what it saw."""

    version: str = "10.9.0.34"
    timing_cache: Callable[[bytes], bool] = lambda data: True
    build_fails: bool = False
    batches: int = 0
    cache_read: bytes | None = None
    # the engine a plan deserialises to: tensor name -> (is input, shape, -1 the batch)
    tensors: dict[str, tuple[bool, tuple[int, ...]]] = field(default_factory=dict)
    max_batch: int = 4
    gpu: Any = None  # the fake driver's GpuState (device memory), set by fake_gpu.install
    executed: list[dict[str, tuple[int, ...]]] = field(default_factory=list)  # shapes run


def calibration_table(names: list[str]) -> bytes:
    """A calibration cache in TensorRT's format: a header, then ``name: hex scale``."""
    return ("TRT-100900-EntropyCalibration2\n"
            + "".join(f"{n}: 3c010a14\n" for n in names)).encode()


class ILogger:
    Severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3)

    def __init__(self) -> None:
        pass


class IInt8EntropyCalibrator2:
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
    def __init__(self, state: TrtState) -> None:
        self.state = state
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
        return TimingCache() if self.state.timing_cache(bytes(data)) else None

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        if not isinstance(cache, TimingCache):  # pybind11 on ITimingCache const&
            raise TypeError("set_timing_cache(): incompatible function arguments")
        return True


class Builder:
    state: TrtState  # set on make_tensorrt's subclass

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> Network:
        return Network()

    def create_builder_config(self) -> Config:
        return Config(self.state)

    def create_optimization_profile(self) -> Any:
        return types.SimpleNamespace(set_shape=lambda *args: None)

    def build_serialized_network(self, network: Network, config: Config) -> Any:
        """Calibrate as TensorRT 10 does: the cache if the calibrator has one, else
        ``get_batch`` until None and the table offered to ``write_calibration_cache``
        (also when a batch failed: the calibrator reports that only by returning None)."""
        state, cal = self.state, config.int8_calibrator
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


TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")


class ExecutionContext:
    """IExecutionContext: input shapes, tensor addresses, and an ``execute_async_v3``
    whose arithmetic is the fake's (no model runs): row b of every output is the sum of
    row b of every input (read from device memory) plus the class index."""

    def __init__(self, state: TrtState) -> None:
        self.state = state
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        batch = next(iter(self.shapes.values()))[0]
        return tuple(batch if d < 0 else d for d in self.state.tensors[name][1])

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = int(ptr)
        return True

    def _tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        n = int(np.prod(shape)) * 4
        return self.state.gpu.find(self.addresses[name], n).view(np.float32).reshape(shape)

    def execute_async_v3(self, stream_handle: int) -> bool:
        self.state.gpu.call("execute_async_v3")
        self.state.gpu.issue(self._execute)  # or into a CUDA graph being captured
        return True

    def _execute(self) -> None:
        ins = {n: self._tensor(n, s) for n, s in self.shapes.items()}
        total = sum(x.reshape(x.shape[0], -1).sum(axis=1) for x in ins.values())
        for name, (is_input, _) in self.state.tensors.items():
            if not is_input:
                out = self._tensor(name, self.get_tensor_shape(name))
                out[:] = total[:, None] + np.arange(out.shape[-1], dtype=np.float32)
        self.state.executed.append(dict(self.shapes))


class CudaEngine:
    """ICudaEngine over ``state.tensors`` (float32, one optimisation profile: 1..max)."""

    def __init__(self, state: TrtState) -> None:
        self.state = state
        self.names = list(state.tensors)

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> str:
        return TensorIOMode.INPUT if self.state.tensors[name][0] else TensorIOMode.OUTPUT

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.state.tensors[name][1]

    def get_tensor_dtype(self, name: str) -> str:
        return "float32"

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple[tuple[int, ...], ...]:
        shape = self.state.tensors[name][1]
        return tuple((b, *shape[1:]) for b in (1, 1, self.state.max_batch))

    def create_execution_context(self) -> ExecutionContext:
        return ExecutionContext(self.state)


class Runtime:
    state: TrtState  # set on make_tensorrt's subclass

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, data: bytes) -> CudaEngine | None:
        return CudaEngine(self.state) if self.state.tensors else None


def make_tensorrt(state: TrtState) -> types.ModuleType:
    """A ``tensorrt`` module over ``state``: the builder calls ``build_plan`` makes."""
    trt = types.ModuleType("tensorrt")
    ns: dict[str, Any] = {
        "__version__": state.version, "ILogger": ILogger, "OnnxParser": OnnxParser,
        "Builder": type("Builder", (Builder,), {"state": state}),
        "Runtime": type("Runtime", (Runtime,), {"state": state}),
        "TensorIOMode": TensorIOMode, "nptype": lambda dtype: np.dtype(dtype).type,
        "IInt8EntropyCalibrator2": IInt8EntropyCalibrator2,
        "NetworkDefinitionCreationFlag": types.SimpleNamespace(STRONGLY_TYPED=1),
        "BuilderFlag": types.SimpleNamespace(FP16="FP16", INT8="INT8",
                                             OBEY_PRECISION_CONSTRAINTS="OBEY"),
        "MemoryPoolType": types.SimpleNamespace(WORKSPACE=0),
        "float32": "float32", "float16": "float16",
    }
    for name, value in ns.items():
        setattr(trt, name, value)
    return trt
