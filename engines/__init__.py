"""hepascope.engines: one interface, ``infer(dict[str, ndarray]) -> dict[str, ndarray]``,
over several backends: ONNX Runtime on CPU (the embedded default), TensorRT, and torch
(CUDA: fp16, channels_last, CUDA graphs; CPU: the eager fp32 baseline). ``auto`` picks
the fastest the machine has and logs why (``choose_backend``). Runs what the export step
wrote; building engines (quantisation, TensorRT plans) is ``hepascope.train.engine_build``."""

from hepascope.engines.interface import Engine, TensorSpec, weights_dir
from hepascope.engines.select import (
    BACKENDS,
    CHOICES,
    Probes,
    choose_backend,
    open_engine,
    resolve_backend,
)

__all__ = ["BACKENDS", "CHOICES", "Engine", "Probes", "TensorSpec", "choose_backend",
           "open_engine", "resolve_backend", "weights_dir"]
