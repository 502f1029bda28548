"""The models section of ``hepascope bench``: per model and engine, parameters, FLOPs at the
model's input size, latency p50/p95/p99 at batch 1, throughput at batch 1..N and achieved
GFLOP/s with its share of a matrix-multiply peak measured in the same run.

Models are exported with random weights by ``bench/gpu.py``'s ``export`` (latency does not
depend on the weights), or taken from an existing export (``--model DIR``). One "frame"
is every graph of the export once, in order: a bimodal export's B-mode encoder, CEUS
encoder and head, as the live path runs them per frame."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.bench.engine_compare import time_variants
from hepascope.bench.gpu import feeds, graph_flops
from hepascope.bench.variant import Variant
from hepascope.core.errors import HepascopeError
from hepascope.engines.onnxruntime import OnnxRuntimeEngine

# name -> constructor kwargs: the live models at the sizes the live path runs them
LIVE_MODELS: dict[str, dict[str, Any]] = {
    "bimodal_resnet18_lite": {"num_classes": 6, "window": 6, "bmode_size": [112, 112],
                              "ceus_size": [64, 64]},  # the demo's
    "resnet18": {"num_classes": 6, "in_chans": 1},  # 1 x 224 x 224
    "c3d": {"num_classes": 2, "in_chans": 1},  # 1 x 30 x 64 x 64
}
CALIB_FEEDS = 8  # random calibration frames for the INT8 variant (latency only)


@dataclass
class Graphs:
    """An export to time: its graphs in per-frame order, parameters and FLOPs per frame."""

    name: str
    paths: list[Path]
    params: int | None
    flops: int | None
    inputs: list[str] = field(default_factory=list)


def export_random(name: str, out: Path, kwargs: dict[str, Any] | None = None) -> Graphs:
    """Export registered model ``name`` with random weights (``bench.gpu.export``)."""
    from hepascope.bench.gpu import export
    from hepascope.train.flops import count_params
    from hepascope.train.models import create_model

    kw = dict(LIVE_MODELS.get(name, {"num_classes": 6}) if kwargs is None else kwargs)
    paths, flops = export(name, kw, out)
    return Graphs(name, paths, count_params(create_model(name, **kw)), flops, _describe(paths))


def from_export(path: Path) -> Graphs:
    """An existing export (a directory, or one graph); params and FLOPs from the checkpoint
    kept beside it, when there is one (else unknown: None)."""
    from hepascope.core.export_format import BIMODAL_GRAPHS
    from hepascope.engines.interface import weights_dir

    d = path if path.is_dir() else path.parent
    if path.is_file():
        paths = [path]
    elif (d / BIMODAL_GRAPHS[-1]).is_file():
        paths = [d / n for n in BIMODAL_GRAPHS]
    else:
        paths = sorted(d.glob("*.onnx"))
    if not paths:
        raise HepascopeError(f"{path}: no ONNX graph")
    params = flops = None
    ckpt = weights_dir(d) or (d.parent if weights_dir(d.parent) else None)
    name = d.name
    if ckpt is not None:
        from hepascope.train.checkpoint import load_checkpoint
        from hepascope.train.flops import count_params

        model, meta = load_checkpoint(ckpt)
        name, params = str(meta["model"]), count_params(model)
        flops = graph_flops(model, paths)
    return Graphs(name, paths, params, flops, _describe(paths))


def _describe(paths: list[Path]) -> list[str]:
    out = []
    for p in paths:
        eng = OnnxRuntimeEngine(p, threads=1)
        out += [f"{p.stem}:{s.describe()}" for s in eng.inputs]
        eng.close()
    return out


def _int8_paths(g: Graphs, work: Path) -> list[Path]:
    """Each graph quantised (static QDQ, minmax) on random calibration frames."""
    from hepascope.train.engine_build.quantize import quantize_int8

    out = []
    for i, p in enumerate(g.paths):
        eng = OnnxRuntimeEngine(p, threads=1)
        calib = [feeds(eng, 1, 1000 + k) for k in range(CALIB_FEEDS)]
        eng.close()
        out.append(quantize_int8(p, work / f"{i}-{p.stem}.int8.onnx", calib))
    return out


def engine_makers(device: str, int8: bool, work: Path, g: Graphs
                  ) -> dict[str, tuple[str, Callable[[Path], Any] | None, str]]:
    """engine name -> (description, factory for one graph or None, why not available)."""
    from hepascope.engines.select import probe_tensorrt

    makers: dict[str, tuple[str, Callable[[Path], Any] | None, str]] = {
        "onnxruntime": ("ONNX Runtime CPU fp32, OrtTuning() defaults",
                        lambda p: OnnxRuntimeEngine(p), "")}
    if int8 and device == "cpu":
        makers["onnxruntime-int8"] = ("ONNX Runtime CPU, static INT8 QDQ (minmax, "
                                      f"{CALIB_FEEDS} random calibration frames)",
                                      lambda p: OnnxRuntimeEngine(p), "")
    elif device == "cpu":
        makers["onnxruntime-int8"] = ("", None, "skipped (--no-int8)")
    if device == "cpu":
        makers["torch-eager"] = ("PyTorch eager fp32 on CPU (engines/torch.py)",
                                 lambda p: _torch(p, "cpu"), "")
        return makers
    makers["torch-cuda-fp16-graph"] = ("PyTorch CUDA fp16, channels_last, CUDA graph",
                                       lambda p: _torch(p, "cuda"), "")
    why = probe_tensorrt()
    makers["tensorrt"] = (("TensorRT fp16 plan (built here)", _trt, "") if why is None
                          else ("", None, why))
    return makers


def _torch(path: Path, device: str) -> Any:
    from hepascope.engines.torch import TorchEngine

    return TorchEngine(path, device=device)


def _trt(path: Path) -> Any:
    from hepascope.engines.tensorrt import TrtEngine
    from hepascope.train.engine_build.build import build_plan

    return TrtEngine(build_plan(path, fp16=True, max_batch=8))


@dataclass
class Budget:
    """How much timing each engine gets."""

    runs: int = 200  # timed batch-1 calls
    batches: tuple[int, ...] = (1, 2, 4, 8)
    batch_s: float = 1.0  # seconds of calls per throughput point (at least 3 calls)


def _chain(engines: list[Any], batch: int) -> Callable[[np.ndarray], np.ndarray]:
    fs = [feeds(e, batch, i) for i, e in enumerate(engines)]

    def frame(_: np.ndarray) -> np.ndarray:
        out: dict[str, np.ndarray] = {}
        for e, f in zip(engines, fs, strict=True):
            out = e.infer(f)
        return next(iter(out.values()))

    return frame


def _throughput(frame: Callable[[np.ndarray], np.ndarray], batch: int, seconds: float
                ) -> float:
    dummy = np.zeros(1, np.float32)
    frame(dummy)  # a new batch size: new shapes, arenas, graphs
    times: list[float] = []
    t_end = time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        frame(dummy)
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def model_section(g: Graphs, *, device: str, work: Path, budget: Budget, int8: bool,
                  peak_gflops: dict[str, float]) -> dict[str, Any]:
    """One model's entry: params, FLOPs, and per engine latency, throughput, GFLOP/s and
    its share of the peak (``peak_gflops``: engine name -> GFLOP/s of the matching peak)."""
    res: dict[str, Any] = {"params": g.params, "flops": g.flops,
                           "gmacs": None if g.flops is None else g.flops / 2e9,
                           "graphs": [p.name for p in g.paths], "inputs": g.inputs,
                           "engines": {}}
    opened: dict[str, list[Any]] = {}
    for name, (desc, make, why) in engine_makers(device, int8, work, g).items():
        if make is None:
            res["engines"][name] = {"not_available": why}
            continue
        try:
            paths = _int8_paths(g, work) if name.endswith("int8") else g.paths
            opened[name] = [make(p) for p in paths]
            res["engines"][name] = {"description": desc}
        except (HepascopeError, ImportError, RuntimeError, OSError) as e:
            res["engines"][name] = {"not_available": f"{type(e).__name__}: {e}"}
    try:
        variants = [Variant(n, res["engines"][n]["description"], [_chain(es, 1)],
                            lambda: None, 0.0) for n, es in opened.items()]
        lat = time_variants(variants, np.zeros(1, np.float32), budget.runs,
                            chunk=min(10, budget.runs), warmup=3) if variants else {}
        for n, es in opened.items():
            res["engines"][n].update(_figures(lat[n], g.flops, peak_gflops.get(n)))
            res["engines"][n]["throughput_fps"] = {
                str(b): _throughput(_chain(es, b), b, budget.batch_s) for b in budget.batches}
    finally:
        for es in opened.values():
            for eng in es:
                eng.close()
    return res


def _figures(t: np.ndarray, flops: int | None, peak: float | None) -> dict[str, Any]:
    p50 = float(np.percentile(t, 50))
    out: dict[str, Any] = {
        "latency_ms": {"p50": p50, "p95": float(np.percentile(t, 95)),
                       "p99": float(np.percentile(t, 99)), "min": float(t.min()),
                       "n": int(t.size)},
        "samples_ms": [round(float(x), 4) for x in t]}
    if flops is not None:
        out["gflops_per_s"] = flops / (p50 / 1e3) / 1e9
        out["peak_share"] = out["gflops_per_s"] / peak if peak else None
    return out
