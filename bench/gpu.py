"""GPU engines bench: the torch-CUDA engine (fp32, fp16, fp16 + CUDA graph) against ONNX
Runtime on the host CPU, for the models the live path runs, in one run on one machine.

    python -m hepascope.bench.gpu --out DIR [--runs 300] [--batch 32]

Per graph: latency p50/p99 at batch 1 (wall clock around ``infer``: host->device copy,
kernels, device->host copy and the synchronisation, i.e. what the pipeline waits for),
throughput at ``--batch`` (frames/s), FLOPs at batch 1 (torch's flop counter; FLOPs, not
MACs) and the achieved TFLOP/s beside the device's fp16 and fp32 matrix-multiply peaks
measured in the same run; the fp16 engine's max |p16 - p32| on probabilities. Weights are
random (latency does not depend on them; accuracy is the CPU bench's business). The GPU
preprocessing kernel is timed against the CPU function too. Writes results.json and
results.md into DIR. Nothing here is asserted: it reports."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.core.config import load_config
from hepascope.core.errors import ModelError, guard_main
from hepascope.core.export_format import BIMODAL_GRAPHS, HEAD_FILE, META_ROLE, SINGLE_FILE
from hepascope.core.preprocess import PreprocessSpec
from hepascope.engines.onnxruntime import OnnxRuntimeEngine

LABELS = ["normal", "cyst", "hemangioma", "hcc", "metastasis", "fatty_sparing"]
# name -> constructor kwargs (the live models at their paper sizes)
MODELS: dict[str, dict[str, Any]] = {
    "resnet18": {"num_classes": 6, "in_chans": 1},
    "bimodal_resnet18": {"num_classes": 6, "window": 6, "bmode_size": [224, 224],
                         "ceus_size": [112, 112]},
    "c3d": {"num_classes": 2, "in_chans": 1},
}


def require_cuda(what: str) -> None:
    """One ``ModelError`` line where torch sees no CUDA device (a CPU build, no GPU), not
    torch's assertion from deep inside the first measurement."""
    import torch

    if not torch.cuda.is_available():
        raise ModelError(f"{what} needs a CUDA GPU: torch {torch.__version__} sees none")


def matmul_peak(n: int = 8192, reps: int = 10) -> dict[str, float]:
    """fp16 (tensor cores) and fp32 (no TF32) matrix-multiply TFLOP/s: median of ``reps``
    timed with CUDA events after warm-up, on random data."""
    import torch

    out = {}
    torch.backends.cuda.matmul.allow_tf32 = False
    for name, dt in (("fp16", torch.float16), ("fp32", torch.float32)):
        a, b = (torch.randn(n, n, device="cuda", dtype=dt) for _ in range(2))
        for _ in range(3):
            a @ b
        times = []
        for _ in range(reps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            a @ b
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) / 1e3)
        out[f"{name}_tflops"] = 2 * n**3 / statistics.median(times) / 1e12
    return out


def export(name: str, kwargs: dict[str, Any], out: Path,
           specs: tuple[PreprocessSpec, PreprocessSpec] | None = None
           ) -> tuple[list[Path], int]:
    """Export registered model ``name`` (random weights) with its checkpoint beside; return
    the graphs the live path runs per frame, in order, and the model's FLOPs per frame.
    ``specs`` (B-mode, CEUS) replace the config's preprocessing, sizes included (the FAST
    peer's plain resize + normalise over the whole frame, ``bench/peer_section.py``)."""
    import torch

    from hepascope.train.data import make_specs
    from hepascope.train.export import export_checkpoint
    from hepascope.train.models import create_model

    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    m: Any = model
    bsize = tuple(kwargs.get("bmode_size", m.default_input_size[-2:]))
    csize = tuple(kwargs.get("ceus_size", m.default_input_size[-2:]))
    bspec, cspec = specs or make_specs(load_config(), bsize, csize)
    window = int(kwargs.get("window", m.default_input_size[0] if m.input_kind == "clip" else 6))
    meta = {"model": name, "labels": LABELS[: kwargs["num_classes"]], "window": window,
            "interval_s": 0.5, "kwargs": kwargs,
            "preprocess": {"bmode": bspec.to_dict(), "ceus": cspec.to_dict()}}
    export_checkpoint(model, meta, out)
    # per frame the live path encodes the new B-mode and CEUS frames once, then fuses
    paths = ([out / f for f in BIMODAL_GRAPHS]
             if (out / HEAD_FILE).is_file() else [out / SINGLE_FILE])
    return paths, graph_flops(model, paths)


def graph_flops(model: Any, paths: list[Path]) -> int:
    """FLOPs of one batch-1 pass through each graph of ``paths`` (the part of ``model``
    each graph's role names), summed: the model's FLOPs per frame on the live path."""
    import torch

    from hepascope.train.export import graph_module
    from hepascope.train.flops import count_flops

    flops = 0
    for path in paths:
        eng = OnnxRuntimeEngine(path, threads=1)
        role = eng.metadata[META_ROLE]
        xs = tuple(torch.zeros(s.at_batch(1)) for s in eng.inputs)
        eng.close()
        flops += count_flops(graph_module(model, role), xs)
    return flops


def feeds(engine: Any, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Standard-normal inputs (the preprocessed frames' scale) at ``batch``."""
    rng = np.random.default_rng(seed)
    return {s.name: rng.standard_normal(s.at_batch(batch)).astype(np.float32)
            for s in engine.inputs}


def _timed(fn: Callable[[], Any], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def engines_for(path: Path) -> dict[str, Any]:
    from hepascope.engines.torch import TorchEngine

    return {"onnxruntime-cpu": OnnxRuntimeEngine(path),
            "torch-cuda-fp32": TorchEngine(path, device="cuda", fp16=False, cuda_graph=False),
            "torch-cuda-fp16": TorchEngine(path, device="cuda", fp16=True, cuda_graph=False),
            "torch-cuda-fp16-graph": TorchEngine(path, device="cuda", fp16=True,
                                                  cuda_graph=True)}


def bench_chain(paths: list[Path], runs: int, batch: int) -> dict[str, dict[str, float]]:
    """Each engine variant over the chain of graphs (one frame = every graph once):
    latency percentiles at batch 1, throughput at ``batch``, fp16 agreement."""
    per_graph = [engines_for(p) for p in paths]
    names = list(per_graph[0])
    try:
        one = [feeds(next(iter(g.values())), 1, i) for i, g in enumerate(per_graph)]
        big = [feeds(next(iter(g.values())), batch, i) for i, g in enumerate(per_graph)]
        res: dict[str, dict[str, float]] = {}
        lat: dict[str, list[float]] = {n: [] for n in names}
        for n in names:  # warm-up (graph capture, cuDNN autotuning, ORT arenas)
            for _ in range(5):
                for g, f in zip(per_graph, one, strict=True):
                    g[n].infer(f)
        def frame(n: str, feeds: list[dict[str, np.ndarray]]) -> Callable[[], None]:
            def run() -> None:
                for g, f in zip(per_graph, feeds, strict=True):
                    g[n].infer(f)
            return run

        for _ in range(max(1, runs // 50)):  # interleaved chunks: drift falls on all alike
            for n in names:
                lat[n] += _timed(frame(n, one), 50)
        for n in names:
            frame(n, big)()  # warm-up at this batch (a new shape: a new graph, new arenas)
            t = _timed(frame(n, big), 5 if n.startswith("onnxruntime") else 30)
            res[n] = {"p50_ms": float(np.percentile(lat[n], 50)),
                      "p99_ms": float(np.percentile(lat[n], 99)),
                      "fps_batch": batch / (statistics.median(t) / 1e3)}
        for n in names:  # fp16 vs fp32 on every graph: the head runs fp32, its inputs not
            if "fp16" in n:
                worst = 0.0
                for g in per_graph:
                    for seed in range(4):
                        f = feeds(g[n], 4, 100 + seed)
                        want = {k: v.copy() for k, v in g["torch-cuda-fp32"].infer(f).items()}
                        got = g[n].infer(f)
                        worst = max(worst, *(float(np.abs(got[k] - want[k]).max()
                                                   / max(1.0, float(np.abs(want[k]).max())))
                                             for k in want))
                res[n]["max_rel_diff_vs_fp32"] = worst
        return res
    finally:
        for g in per_graph:
            for e in g.values():
                e.close()


def facts() -> dict[str, Any]:
    import onnxruntime
    import torch

    p = torch.cuda.get_device_properties(0)
    return {"date": date.today().isoformat(), "gpu": p.name,
            "compute_capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine()}


def markdown(res: dict[str, Any], command: str) -> str:
    f, pk = res["facts"], res["peak"]
    lines = [f"# GPU engines bench, {f['gpu']} (sm_{f['compute_capability'].replace('.', '')})",
             "", f"{f['date']}; torch {f['torch']} (CUDA {f['cuda']}), onnxruntime "
             f"{f['onnxruntime']}, Python {f['python']}. Command: `{command}`", "",
             f"Peak measured in the same run (8192^3 matmul, CUDA events, median of 10): "
             f"fp16 {pk['fp16_tflops']:.0f} TFLOP/s, fp32 (no TF32) {pk['fp32_tflops']:.0f} "
             "TFLOP/s.", "",
             "Latency: wall clock around `infer` at batch 1 for one frame through the model's "
             "graphs (copies in and out and the sync included), p50/p99 of "
             f"{res['runs']} runs interleaved between engines. Throughput: frames/s at batch "
             f"{res['batch']}. TFLOP/s: model FLOPs per frame (FLOPs, not MACs) / p50. fp16 vs "
             "fp32: max |fp16 - fp32| over every graph's outputs (probabilities, or encoder "
             "features relative to their largest magnitude), random inputs.", "",
             "| model | GFLOPs/frame | engine | p50 ms | p99 ms | frames/s @batch | "
             "TFLOP/s @p50 | fp16 vs fp32 |",
             "|---|---|---|---|---|---|---|---|"]
    for model, r in res["models"].items():
        for eng, v in r["engines"].items():
            d = v.get("max_rel_diff_vs_fp32")
            lines.append(f"| {model} | {r['flops'] / 1e9:.2f} | {eng} | {v['p50_ms']:.2f} | "
                         f"{v['p99_ms']:.2f} | {v['fps_batch']:.0f} | "
                         f"{r['flops'] / (v['p50_ms'] / 1e3) / 1e12:.3f} | "
                         f"{'' if d is None else f'{d:.1e}'} |")
    if res.get("preprocess"):
        lines += ["", "GPU preprocessing kernel vs the CPU function (median ms per frame; GPU "
                  "with CUDA events, frame upload included):", ""]
        lines += [f"- {row}" for row in res["preprocess"]]
    return "\n".join(lines) + "\n"


@guard_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hepascope.bench.gpu",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--models", default=",".join(MODELS))
    args = p.parse_args(argv)
    require_cuda("python -m hepascope.bench.gpu")
    res: dict[str, Any] = {"facts": facts(), "peak": matmul_peak(), "runs": args.runs,
                           "batch": args.batch, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            paths, flops = export(name, MODELS[name], Path(tmp) / name)
            res["models"][name] = {"graphs": [q.name for q in paths], "flops": flops,
                                   "engines": bench_chain(paths, args.runs, args.batch)}
            print(name, json.dumps(res["models"][name]["engines"]), flush=True)
    try:
        from hepascope.bench.preprocess_gpu import rows as pre_bench

        res["preprocess"] = pre_bench()
    except Exception as e:  # reported, not hidden: the engines' figures stand without it
        res["preprocess_error"] = f"{type(e).__name__}: {e}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=2))
    command = "python -m hepascope.bench.gpu " + " ".join(argv or [])
    (args.out / "results.md").write_text(markdown(res, command.strip()))
    print(markdown(res, command.strip()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
