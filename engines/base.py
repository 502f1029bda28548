"""The engine interface every backend meets, and the factory that picks one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from hepascope.stream.errors import ModelError

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


def open_engine(path: str | Path, backend: str = "onnxruntime", *,
                threads: int | None = None) -> Engine:
    """Build an engine for the model at ``path``. Backends: ``onnxruntime`` (CPU, default)."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: no such model file")
    if backend in ("onnxruntime", "auto"):
        from hepascope.engines.onnxruntime import OnnxRuntimeEngine

        return OnnxRuntimeEngine(p, threads=threads)
    raise ModelError(f"unknown engine backend {backend!r} (available: onnxruntime)")
