"""The live path at 60 frames/s with its CUDA preprocessing on and off, side by side: issue
18's goal "capture->publish p99 <= 5 ms at 60 fps with the CUDA preprocessing on the live
path" (HoloHub's multi-AI ultrasound app: 5.04 ms mean, 5.84 ms p99, headless).

    python -m hepascope.bench.gpu_live --out DIR [--seconds 10] [--pairs 2] [--fps 60]
        [--model EXPORT]

The single-frame ResNet-18 of the live models at its paper size (random weights: latency
does not depend on them) unless ``--model``; the phantom source paced at ``--fps``; engine
auto (TensorRT where it imports and plans exist, else torch on CUDA, else ONNX Runtime);
``pipeline.gpu_preprocess`` on, then off, alternating (ABAB), each run's capture->publish
p50 / p99 and the on/off ratios of each pair. ``on`` refuses to start without the GPU path,
so on a machine without one those runs report that line and the off runs still stand.
Writes results.json and results.md. Nothing is asserted: it reports."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hepascope.core.argtypes import positive
from hepascope.core.config import load_config
from hepascope.core.errors import guard_main

MODES = ("on", "off")
KEYS = ("capture_to_publish_p50_ms", "capture_to_publish_p99_ms")


def run_once(model: Path, mode: str, fps: float, seconds: float) -> dict[str, Any]:
    """One live run with ``pipeline.gpu_preprocess`` = ``mode``: the pipeline section's
    figures, or {"error": one line} where it could not run."""
    from hepascope.bench.pipeline_sections import pipeline_section

    cfg = load_config()
    cfg = replace(cfg, pipeline=replace(cfg.pipeline, gpu_preprocess=mode))
    try:
        res = pipeline_section(model, fps=fps, seconds=seconds, engine="auto", config=cfg)
    except Exception as e:  # reported as the run's result: the other mode's runs stand
        return {"mode": mode, "error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
    keep = ("engine", "frames_in", "frames_out", "dropped", "results_per_s", *KEYS)
    return {"mode": mode, **{k: res[k] for k in keep}}


def pairs(model: Path, n: int, fps: float, seconds: float) -> list[dict[str, Any]]:
    """``n`` pairs of runs, on then off, each with the on/off ratio of p50 and p99 where
    both ran."""
    out = []
    for _ in range(n):
        on, off = (run_once(model, mode, fps, seconds) for mode in MODES)
        ratios = {f"{k}_on_over_off": round(on[k] / off[k], 3)
                  for k in KEYS if k in on and k in off and off[k]}
        out.append({"on": on, "off": off, **ratios})
    return out


def markdown(res: dict[str, Any]) -> str:
    lines = [f"# Live path at {res['fps']:g} fps, CUDA preprocessing on vs off",
             "", f"{res['date']} · model {res['model']} · {res['seconds']:g} s a run · "
             f"command: `{res['command']}`", "",
             "| pair | mode | engine | results/s | capture->publish p50 / p99 ms | "
             "on/off p50 | on/off p99 |", "|---|---|---|---|---|---|---|"]
    for i, p in enumerate(res["pairs"], 1):
        for mode in MODES:
            r = p[mode]
            if "error" in r:
                lines.append(f"| {i} | {mode} | {r['error']} | | | | |")
                continue
            ratio = [str(p.get(f"{k}_on_over_off", "")) if mode == "on" else ""
                     for k in KEYS]
            lines.append(f"| {i} | {mode} | {r['engine']} | {r['results_per_s']} | "
                         f"{r[KEYS[0]]} / {r[KEYS[1]]} | {ratio[0]} | {ratio[1]} |")
    for k in KEYS:
        vals = [p[f"{k}_on_over_off"] for p in res["pairs"] if f"{k}_on_over_off" in p]
        if vals:
            lines.append(f"\nMedian on/off {k}: {statistics.median(vals):.3f}")
    return "\n".join(lines) + "\n"


@guard_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hepascope.bench.gpu_live",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seconds", type=positive(float), default=10.0)
    p.add_argument("--pairs", type=positive(int), default=2)
    p.add_argument("--fps", type=positive(float), default=60.0)
    p.add_argument("--model", type=Path, help="an export or ONNX classifier (default: "
                   "ResNet-18, random weights)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from hepascope.bench.model_section import export_random

            model = export_random("resnet18", Path(tmp) / "resnet18").paths[0]
        res = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "command": " ".join(["python -m hepascope.bench.gpu_live",
                                    *(sys.argv[1:] if argv is None else argv)]),
               "model": str(args.model or "resnet18, random weights"), "fps": args.fps,
               "seconds": args.seconds,
               "pairs": pairs(model, args.pairs, args.fps, args.seconds)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=2))
    (args.out / "results.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
