"""The engine interface every backend meets: ``TensorSpec``, the ``Engine`` protocol, the
feed check, and where an export keeps the checkpoint the torch backend runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from hepascope.core.errors import ModelError
from hepascope.core.export_format import WEIGHTS_FILES

if TYPE_CHECKING:
    from hepascope.engines.cuda import CudaContext

Dim = int | str | None  # a static size, or a symbolic / unknown one


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Name, shape (ints where static) and dtype of one model input or output."""

    name: str
    shape: tuple[Dim, ...]
    dtype: np.dtype

    @property
    def static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def at_batch(self, batch: int = 1, unknown: int | None = None) -> tuple[int, ...]:
        """The shape with ``batch`` as its first size; another size that is not static
        becomes ``unknown``, or raises ``ModelError`` when that is None."""
        dims = []
        for d in self.shape[1:]:
            if not isinstance(d, int):
                if unknown is None:
                    raise ModelError(f"{self.describe()}: a size other than the batch is not "
                                     "static")
                d = unknown
            dims.append(d)
        return (batch, *dims)

    def describe(self) -> str:
        dims = ",".join(str(d) if isinstance(d, int) else "?" for d in self.shape)
        return f"{self.name}[{dims}] {self.dtype}"


@runtime_checkable
class Engine(Protocol):
    """Maps named arrays to named arrays. Buffers are allocated once, by tensor name, when
    the engine is built; ``close()`` releases them explicitly (nothing is left to __del__)."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    metadata: dict[str, str]

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


@runtime_checkable
class DeviceFed(Protocol):
    """An engine (besides ``Engine``) whose inputs can be written on the GPU: a CUDA
    kernel writes ``device_inputs(batch)`` on ``device_stream`` in ``cuda_context``, then
    ``infer_device()`` runs on what the input buffers hold, with no host->device copy of
    inputs (the live path's GPU preprocessing, stream/classifier.py). Optional: an engine
    without it is fed from the host through ``infer``. ``cuda_context`` raises
    ``ModelError`` where the engine cannot be fed on the device (a torch engine on the CPU,
    no pycuda); ``isinstance`` reads properties before Python 3.12, so callers catch it."""

    @property
    def cuda_context(self) -> CudaContext:
        """The CUDA context the engine's buffers live in (the device's primary one)."""
        ...

    @property
    def device_stream(self) -> Any:
        """The pycuda ``Stream`` that ``infer_device`` runs on: queue input writes on it."""
        ...

    def device_inputs(self, batch: int = 1) -> dict[str, int]:
        """Device pointers of the input buffers by tensor name, the engine set to
        ``batch`` (each holds ``spec.at_batch(batch)`` elements, C order, input dtype)."""
        ...

    def infer_device(self) -> dict[str, np.ndarray]:
        """Run on what the input buffers hold (after the work queued on ``device_stream``);
        results are new host arrays, the caller's."""
        ...


def check_feeds(inputs: tuple[TensorSpec, ...], feeds: dict[str, np.ndarray]) -> None:
    """Raise ``ModelError`` unless ``feeds`` has exactly the inputs, with matching shapes."""
    want = {s.name for s in inputs}
    if set(feeds) != want:
        raise ModelError(f"engine inputs are {sorted(want)}, got {sorted(feeds)}")
    for spec in inputs:
        arr = feeds[spec.name]
        if arr.ndim != len(spec.shape) or any(
            isinstance(d, int) and d != n for d, n in zip(spec.shape, arr.shape, strict=True)
        ):
            raise ModelError(f"input {spec.describe()} cannot take an array of shape {arr.shape}")


def weights_dir(path: str | Path) -> Path | None:
    """The directory holding the checkpoint (``model.safetensors`` + ``model.json``) beside
    the graph at ``path`` (a graph file or its export directory), or None: an export made
    before exports kept their weights, or a plain ONNX model."""
    p = Path(path)
    d = p if p.is_dir() else p.parent
    return d if all((d / f).is_file() for f in WEIGHTS_FILES) else None
