"""The factory that builds an engine (``open_engine``) and the choice
``auto`` makes (TensorRT, else torch on CUDA, else ONNX Runtime), logged with its reason."""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hepascope.core.errors import ModelError
from hepascope.core.export_format import BIMODAL_GRAPHS, program_file
from hepascope.engines.interface import Engine

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "tensorrt", "torch")
CHOICES = (*BACKENDS, "auto")
PLAN_SUFFIX = ".plan"  # a TensorRT engine built for MODEL.onnx lies beside it as MODEL.plan


def _export_graphs(p: Path) -> list[Path]:
    """The graphs of the export at ``p`` (a graph, or its directory): all three of a
    bimodal export, whichever of them ``p`` names."""
    d = p if p.is_dir() else p.parent
    graphs = [d / n for n in BIMODAL_GRAPHS] if (
        p.is_dir() or p.name in BIMODAL_GRAPHS) else [p]
    if p.is_dir() and not (d / BIMODAL_GRAPHS[-1]).is_file():
        graphs = sorted(d.glob("*.onnx"))
    return graphs


def missing_plans(path: str | Path) -> list[str]:
    """Names of the TensorRT plans (``hepascope build``) that the export at ``path`` (a
    graph, or its directory) lacks: all three graphs' for a bimodal export."""
    p = Path(path)
    if p.suffix == PLAN_SUFFIX:
        return [] if p.is_file() else [p.name]
    return [g.with_suffix(PLAN_SUFFIX).name for g in _export_graphs(p)
            if not g.with_suffix(PLAN_SUFFIX).is_file()]


def missing_programs(path: str | Path) -> list[str]:
    """Names of the fp32 ``torch.export`` programs (written by ``hepascope export``) that
    the export at ``path`` (a graph, or its directory) lacks."""
    return [program_file(g).name for g in _export_graphs(Path(path))
            if not program_file(g).is_file()]


def probe_gpu() -> str | None:
    """None when the CUDA driver sees a GPU, else why not. Asks the driver library itself
    (ctypes), so a CPU-only box imports neither torch nor pycuda to find out."""
    lib_name = "nvcuda.dll" if os.name == "nt" else "libcuda.so.1"
    try:
        lib = ctypes.CDLL(lib_name)
    except OSError as e:
        return f"no CUDA driver ({e})"
    rc = lib.cuInit(0)
    if rc != 0:
        return f"CUDA driver present but cuInit failed (error {rc})"
    count = ctypes.c_int(0)
    rc = lib.cuDeviceGetCount(ctypes.byref(count))
    if rc != 0 or count.value < 1:
        return f"no CUDA GPU (driver reports {count.value}, error {rc})"
    return None


def probe_tensorrt() -> str | None:
    """None when ``tensorrt`` and ``pycuda.driver`` import, else the first failure."""
    for module in ("tensorrt", "pycuda.driver"):
        try:
            importlib.import_module(module)
        except Exception as e:  # ImportError, or a binding whose shared libraries fail
            return f"{module.split('.')[0]} not importable ({e})"
    return None


def probe_torch_cuda() -> str | None:
    """None when torch imports and sees CUDA, else why not."""
    try:
        import torch
    except ImportError as e:
        return f"torch not importable ({e})"
    if not torch.cuda.is_available():
        return f"torch CUDA not available (torch {torch.__version__})"
    return None


@dataclass(frozen=True, slots=True)
class Probes:
    """What ``auto`` asks of the machine; each returns None when available, else why not.
    Injectable, so each branch of the choice can be driven in a test."""

    gpu: Callable[[], str | None] = probe_gpu
    tensorrt: Callable[[], str | None] = probe_tensorrt
    torch_cuda: Callable[[], str | None] = probe_torch_cuda


def _why_not_tensorrt(path: Path, pr: Probes, gpu: str | None) -> str | None:
    trt = pr.tensorrt()
    if trt is not None:
        return trt
    if gpu is not None:
        return f"tensorrt: {gpu}"
    plans = missing_plans(path)
    if plans:
        return f"tensorrt: no plan {', '.join(plans)} (build with hepascope build)"
    return None


def _why_not_torch(path: Path, pr: Probes, gpu: str | None) -> str | None:
    if gpu is not None:
        return f"torch CUDA: {gpu}"
    missing = missing_programs(path)  # checked before importing torch: that takes seconds
    if missing:
        return (f"torch: no torch.export program {', '.join(missing)} beside "
                f"{path.name}; re-export with hepascope export")
    return pr.torch_cuda()


def choose_backend(path: str | Path, probes: Probes | None = None) -> tuple[str, str]:
    """(backend, reason) for ``--engine auto`` on the model at ``path``: TensorRT where it and
    pycuda import, a CUDA GPU is present and the export has its plans (``hepascope
    build``); else torch on CUDA where torch sees CUDA and the export has its programs;
    else ONNX Runtime. Depends only on the machine and the export's directory, so the
    graphs of one bimodal export all get the same answer. Logged at INFO."""
    p = Path(path)
    pr = probes or Probes()
    gpu = pr.gpu()
    no_trt = _why_not_tensorrt(p, pr, gpu)
    if no_trt is None:
        backend, reason = "tensorrt", "tensorrt and pycuda importable, CUDA GPU and plans present"
    else:
        no_torch = _why_not_torch(p, pr, gpu)
        if no_torch is None:
            backend, reason = "torch", f"{no_trt}; torch sees CUDA and the export's programs"
        else:
            backend, reason = "onnxruntime", f"{no_trt}; {no_torch}"
    log.info("engine auto -> %s: %s", backend, reason)
    return backend, reason


def resolve_backend(path: str | Path, backend: str, probes: Probes | None = None) -> str:
    """``backend`` checked, with ``auto`` replaced by its choice for ``path``."""
    if backend not in CHOICES:
        raise ModelError(f"unknown engine backend {backend!r} (available: {', '.join(CHOICES)})")
    return choose_backend(path, probes)[0] if backend == "auto" else backend


def open_engine(path: str | Path, backend: str = "onnxruntime", *,
                threads: int | None = None, device: str | None = None) -> Engine:
    """Build an engine for the model at ``path``. Backends: ``onnxruntime`` (CPU, default),
    ``tensorrt`` (H100 / Jetson), ``torch`` (CUDA when ``device`` is None and torch sees
    it, else CPU fp32; runs the ``torch.export`` programs an export writes beside its
    graphs), ``auto`` (see ``choose_backend``). ``device`` applies to torch only."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: no such model file")
    backend = resolve_backend(p, backend)
    if backend == "onnxruntime":
        from hepascope.engines.onnxruntime import OnnxRuntimeEngine

        return OnnxRuntimeEngine(p, threads=threads)
    if backend == "tensorrt":
        from hepascope.engines.tensorrt import TrtEngine

        return TrtEngine(p)
    from hepascope.engines.torch import TorchEngine

    return TorchEngine(p, device=device, threads=threads)
