"""``hepascope bench``: every section in one run on one machine, written by ``report``.

    python -m hepascope.bench.run [--device cpu|cuda] [--models a,b] [--model DIR]
        [--streams 1,2,4] [--seconds N] [--quick] [--out DIR]

Sections: the peak (a large matmul, measured first, in the same run); the models (see
``bench/model_section.py``); the live pipeline, a naive loop, their ratio, stream scaling and a
slow model (``bench/pipeline_sections.py``: "not available" where that module is missing); the seed
paper's figures beside ours. Results go to ``bench/results/<machine>/<date>/`` by default,
with the command, library versions and the CPU / GPU model."""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from hepascope.bench.headline import headline
from hepascope.bench.model_section import LIVE_MODELS, Budget, Graphs, export_random, from_export
from hepascope.core.errors import guard_main
from hepascope.core.export_format import HEAD_FILE
from hepascope.core.logs import configure as configure_logging
from hepascope.core.logs import error_line
from hepascope.engines.onnxruntime import cpu_budget

log = logging.getLogger(__name__)

PIPELINE_FPS = 30.0  # the scaling and slow-model sections; pipeline and naive also at 60
FAST_FPS = 60.0
QUICK: dict[str, Any] = {"runs": 60, "batch_s": 0.4, "peak_sizes": (1024, 2048), "seconds": 8.0}
FULL: dict[str, Any] = {"runs": 300, "batch_s": 2.0, "peak_sizes": (2048, 4096), "seconds": 30.0}
SEED_PAPER = {"label": "S1 (bimodal ResNet18, their hardware)", "frames_per_s": 245.0,
              "end_to_end_delay_ms": 723.0}


def machine_slug(device: str, gpu: str | None = None) -> str:
    """A short name for the results folder: ``cpu-2core``, or the GPU's model (``h100``)."""
    if device == "cuda" and gpu:
        words = [w for w in re.split(r"[^a-z0-9]+", gpu.lower())
                 if w and w not in ("nvidia", "geforce", "tesla", "rtx", "quadro")]
        return words[0] if words else "gpu"
    return f"cpu-{cpu_budget()}core"


def facts(device: str, command: str, quick: bool) -> dict[str, Any]:
    """Date, command, machine (CPU model, cores, GPU) and library versions."""
    import platform

    import matplotlib
    import onnx

    from hepascope.bench.engine_compare_md import machine_facts

    m = machine_facts()
    out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": command,
                           "quick": quick, "device": device, "cpu": m["cpu"], "isa": m["isa"],
                           "cores": m["cores"], "platform": platform.platform(),
                           "versions": {"python": m["python"], "numpy": m["numpy"],
                                        "onnxruntime": m["onnxruntime"], "torch": m["torch"],
                                        "onnx": onnx.__version__,
                                        "matplotlib": matplotlib.__version__}}
    if device == "cuda":
        import torch

        out["gpu"] = torch.cuda.get_device_name(0)
        out["versions"]["cuda"] = torch.version.cuda
        try:
            import tensorrt

            out["versions"]["tensorrt"] = tensorrt.__version__
        except ImportError:
            out["versions"]["tensorrt"] = None
    out["machine"] = machine_slug(device, out.get("gpu"))
    return out


def peaks(device: str, sizes: tuple[int, ...]) -> dict[str, Any]:
    """The CPU's fp32 matmul peak (torch's and numpy's sgemm, ``measure_peak``, and ONNX
    Runtime's MatMul: the best), its INT8 peak (ONNX Runtime's MatMulInteger, in GOP/s)
    and, on CUDA, the GPU's fp16 / fp32 matmul peaks (``bench.gpu.matmul_peak``), in
    GFLOP/s: all measured here, none nominal."""
    from hepascope.bench.engine_compare import measure_peak
    from hepascope.bench.ort_peak import ort_matmul_peak

    cpu = measure_peak(cpu_budget(), sizes, reps=3)
    ort_pk = ort_matmul_peak(cpu_budget(), sizes, reps=3)
    cpu["ort"] = ort_pk["ort_fp32"]
    cpu["peak"] = max(cpu["peak"], cpu["ort"])
    out: dict[str, Any] = {"cpu_gflops": cpu, "cpu_int8_gops": ort_pk["ort_int8"],
                           "cpu_sizes": list(sizes)}
    if device == "cuda":
        from hepascope.bench.gpu import matmul_peak

        gpu = matmul_peak()
        out["gpu_gflops"] = {k.replace("_tflops", ""): v * 1e3 for k, v in gpu.items()}
    return out


def engine_peaks(pk: dict[str, Any]) -> dict[str, float]:
    """Engine name -> the peak its GFLOP/s is a share of: ONNX Runtime and torch eager
    the CPU's fp32, ONNX Runtime INT8 the CPU's INT8 (older results without it: fp32),
    the fp16 GPU engines the GPU's fp16."""
    cpu = float(pk["cpu_gflops"]["peak"])
    out = {"onnxruntime": cpu, "onnxruntime-int8": float(pk.get("cpu_int8_gops", cpu)),
           "torch-eager": cpu}
    if "gpu_gflops" in pk:
        out.update({"torch-cuda-fp16-graph": pk["gpu_gflops"]["fp16"],
                    "tensorrt": pk["gpu_gflops"]["fp16"]})
    return out


class Steps:
    """The bench's progress on stderr (its results go to files and stdout): one line as
    each section starts and one as it ends, with its time, or FAILED and why."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0

    def start(self, name: str) -> float:
        print(f"bench [{self.done + 1}/{self.total}] {name} ...", file=sys.stderr, flush=True)
        return time.perf_counter()

    def end(self, name: str, t0: float, entry: dict[str, Any]) -> None:
        self.done += 1
        dt = time.perf_counter() - t0
        entry["section_s"] = round(dt, 1)
        what = f"FAILED: {entry['error']}" if "error" in entry else "done"
        print(f"bench [{self.done}/{self.total}] {name}: {what} ({dt:.1f} s)", file=sys.stderr,
              flush=True)


def failed_sections(res: dict[str, Any]) -> list[str]:
    """The sections whose entry says ``error`` (``models/NAME`` for a model): a bench with
    any exits non-zero (``not_available``, an engine absent here, is no failure)."""
    failed = [f"models/{n}" for n, m in res.get("models", {}).items() if "error" in m]
    return failed + [k for k, v in res.items() if isinstance(v, dict) and "error" in v]


def pipeline_sections(model: Path, *, device: str, seconds: float, streams: tuple[int, ...],
                      work: Path, steps: Steps | None = None,
                      scaling_model: Path | None = None) -> dict[str, Any]:
    """The live-pipeline sections (``bench/pipeline_sections.py``, the naive baseline of
    ``bench/naive.py``), each {"not_available": why}
    where the module is missing, {"error": ...} where it failed (logged). ``scaling_model``:
    what the scaling section runs (default ``model``): a single-frame classifier, so that
    its batched mode can batch it."""
    names = ("pipeline", "naive", "baseline_ratio", "pipeline_60fps", "naive_60fps",
             "baseline_ratio_60fps", "scaling", "slow_model")
    try:
        from hepascope.bench import naive as nv
        from hepascope.bench import pipeline_sections as pl
    except ImportError as e:
        return {n: {"not_available": f"bench/pipeline_sections.py: {e}"} for n in names}
    engine = "onnxruntime" if device == "cpu" else "auto"
    out: dict[str, Any] = {}
    calls: dict[str, Any] = {
        "pipeline": lambda: pl.pipeline_section(model, source="phantom:7", fps=PIPELINE_FPS,
                                                seconds=seconds, engine=engine),
        "naive": lambda: nv.naive_section(model, source="phantom:7", fps=PIPELINE_FPS,
                                          seconds=seconds),
        "baseline_ratio": lambda: nv.baseline_ratio(out["pipeline"], out["naive"]),
        "pipeline_60fps": lambda: pl.pipeline_section(model, source="phantom:7", fps=FAST_FPS,
                                                      seconds=seconds, engine=engine),
        "naive_60fps": lambda: nv.naive_section(model, source="phantom:7", fps=FAST_FPS,
                                                seconds=seconds),
        "baseline_ratio_60fps": lambda: nv.baseline_ratio(out["pipeline_60fps"],
                                                          out["naive_60fps"]),
        # looped phantom clips: a decode per frame, so the model's sharing is measured
        "scaling": lambda: pl.scaling_section(scaling_model or model, streams=streams,
                                              fps=PIPELINE_FPS, seconds=seconds,
                                              engine=engine, clips_dir=work / "clips"),
        "slow_model": lambda: pl.slow_model_section(fps=PIPELINE_FPS, seconds=seconds,
                                                    work_dir=work / "slow"),
    }
    steps = steps or Steps(len(names))
    for name in names:
        t0 = steps.start(name)
        try:
            out[name] = dict(calls[name]())
        except Exception as e:  # reported in the summary and the exit status; others stand
            log.info("bench section %s failed", name, exc_info=e)
            out[name] = {"error": f"{type(e).__name__}: {e}"}
        steps.end(name, t0, out[name])
    return out


def _model_list(args: argparse.Namespace) -> list[str]:
    if args.models:
        return [m.strip() for m in args.models.split(",") if m.strip()]
    names = list(LIVE_MODELS)
    return names[1:] if args.model else names  # --model stands in for the bimodal one


def run_bench(args: argparse.Namespace, command: str, work: Path) -> dict[str, Any]:
    """Every section; the results dict ``report.write_all`` writes."""
    quick = args.quick
    base = QUICK if quick else FULL
    budget = Budget(runs=args.runs or int(base["runs"]), batch_s=float(base["batch_s"]),
                    batches=args.batches or (1, 2, 4, 8))
    seconds = args.seconds or float(base["seconds"])
    t_start = time.perf_counter()
    names = _model_list(args)
    peer = getattr(args, "peer", None)
    # peak, exports, models, pipeline, peer
    steps = Steps(2 + bool(args.model) + len(names) + 8 + bool(peer))
    res: dict[str, Any] = {"facts": facts(args.device, command, quick)}
    t0 = steps.start("peak")
    res["peak"] = peaks(args.device, args.peak_sizes or tuple(base["peak_sizes"]))
    steps.end("peak", t0, {})
    per_engine = engine_peaks(res["peak"])
    t0 = steps.start(f"export {', '.join(names) or args.model}")
    graphs: list[Graphs] = [from_export(args.model)] if args.model else []
    graphs += [export_random(n, work / n) for n in names]
    steps.end("export", t0, {})
    res["models"] = {}
    for g in graphs:
        t0 = steps.start(f"models/{g.name}")
        res["models"][g.name] = _model_entry(g, args, work, budget, per_engine)
        steps.end(f"models/{g.name}", t0, res["models"][g.name])
    live = _pipeline_model(args.model, graphs, work)
    res["pipeline_model"] = (str(args.model) if args.model
                             else f"{live.name}, random weights")
    res.update(pipeline_sections(live, device=args.device, seconds=seconds,
                                 streams=args.streams, work=work, steps=steps,
                                 scaling_model=_single_frame_model(live, graphs)))
    if peer:
        res["peer"] = _peer_entry(args, work, seconds, steps)
    res["seed_paper"] = seed_paper(res)
    res["headline"] = headline(res)
    res["budget"] = {"runs": budget.runs, "batches": list(budget.batches),
                     "batch_s": budget.batch_s, "pipeline_seconds": seconds,
                     "streams": list(args.streams), "pipeline_fps": PIPELINE_FPS,
                     "fast_fps": FAST_FPS}
    res["total_s"] = round(time.perf_counter() - t_start, 1)
    return res


def _model_entry(g: Graphs, args: argparse.Namespace, work: Path, budget: Budget,
                 per_engine: dict[str, float]) -> dict[str, Any]:
    """One model's section, or its facts and ``error`` when timing it failed."""
    from hepascope.bench.model_section import model_section

    try:
        return model_section(g, device=args.device, work=work / f"{g.name}-q", budget=budget,
                             int8=not args.no_int8, peak_gflops=per_engine)
    except Exception as e:  # reported in the summary and the exit status; others stand
        log.info("bench section models/%s failed", g.name, exc_info=e)
        return {"params": g.params, "flops": g.flops,
                "gmacs": None if g.flops is None else g.flops / 2e9,
                "graphs": [p.name for p in g.paths], "inputs": g.inputs, "engines": {},
                "error": f"{type(e).__name__}: {e}"}


def _peer_entry(args: argparse.Namespace, work: Path, seconds: float,
                steps: Steps) -> dict[str, Any]:
    """The ``--peer`` section (``bench/peer_section.py``), or its ``error`` (logged)."""
    from hepascope.bench.peer_section import peer_section

    t0 = steps.start(f"peer {args.peer}")
    try:
        entry = peer_section(args.peer, work=work / "peer", seconds=seconds,
                             pairs=args.pairs, video=args.video)
    except Exception as e:  # reported in the summary and the exit status; others stand
        log.info("bench section peer failed", exc_info=e)
        entry = {"peer": args.peer, "error": f"{type(e).__name__}: {e}"}
    steps.end(f"peer {args.peer}", t0, entry)
    return entry


def _pipeline_model(given: Path | None, graphs: list[Graphs], work: Path) -> Path:
    """The export the pipeline sections run: ``--model``, else the first bimodal export
    timed, else a random-weights bimodal_resnet18_lite exported for them."""
    if given is not None:
        return given
    for g in graphs:
        if g.paths[-1].name == HEAD_FILE:
            return g.paths[0].parent
    return export_random("bimodal_resnet18_lite", work / "bimodal_resnet18_lite").paths[0].parent


def _single_frame_model(live: Path, graphs: list[Graphs]) -> Path:
    """What the scaling section runs: the pipeline model if it is one graph, else (a
    bimodal export, whose per-stream window cache does not batch across streams) the
    single-frame ``resnet18`` export timed here, if any."""
    bimodal = live.name == HEAD_FILE or (live.is_dir() and (live / HEAD_FILE).is_file())
    if not bimodal:
        return live
    return next((g.paths[0] for g in graphs if g.name == "resnet18"), live)


def seed_paper(res: dict[str, Any]) -> dict[str, Any]:
    """S1's published figures (theirs) beside ours from the pipeline section."""
    from hepascope.bench.results_keys import find_value

    pl = res.get("pipeline", {})
    return {"theirs": SEED_PAPER,
            "ours": {"results_per_s": find_value(pl, "results_per_s"),
                     "capture_to_overlay_p99_ms": find_value(pl, "capture_to_overlay_p99"),
                     "capture_to_publish_p99_ms": find_value(pl, "capture_to_publish_p99"),
                     "source": pl.get("not_available", "pipeline section")}}


def default_out(machine: str) -> Path:
    return Path("bench") / "results" / machine / date.today().isoformat()


def run_from_args(args: argparse.Namespace, command: str | None = None) -> Path:
    """Run the bench and write its results; return the results directory."""
    from hepascope.bench.results_report import write_all

    if args.device == "cuda":
        from hepascope.bench.gpu import require_cuda

        require_cuda("hepascope bench --device cuda")
    command = command or "hepascope bench " + " ".join(sys.argv[2:] if len(sys.argv) > 1
                                                       and sys.argv[1] == "bench"
                                                       else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="hepascope-bench-") as tmp:
        res = run_bench(args, command.strip(), Path(tmp))
    out = args.out or default_out(res["facts"]["machine"])
    write_all(res, out)
    return Path(out)


@guard_main
def main(argv: list[str] | None = None) -> int:
    from hepascope.bench.options import add_arguments

    p = argparse.ArgumentParser(prog="python -m hepascope.bench.run",
                                description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    configure_logging()
    arg_text = " ".join(sys.argv[1:] if argv is None else argv)
    return bench_exit(run_from_args(args, f"python -m hepascope.bench.run {arg_text}"))


def bench_exit(out: Path) -> int:
    """Say where the results are (stdout); exit 1 with one line on stderr naming the
    sections that failed (their errors are in the summary), else 0."""
    import json

    print(f"wrote {out}/summary.md")
    failed = failed_sections(json.loads((out / "results.json").read_text()))
    if failed:
        print(error_line(f"bench: {len(failed)} section(s) failed: {', '.join(failed)} (see "
                         f"{out}/summary.md)"), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
