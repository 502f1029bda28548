"""hepascope.engines: one interface, ``infer(dict[str, ndarray]) -> dict[str, ndarray]``,
over several backends. ONNX Runtime on CPU is the embedded default."""

from hepascope.engines.base import Engine, TensorSpec, open_engine

__all__ = ["Engine", "TensorSpec", "open_engine"]
