"""Live-path latency over time: run the pipeline on a looping file at its own frame rate and
report capture->publish latency per 15 s window, frames in/out/dropped.

    python -m hepascope.bench.live --source session.mp4 --model m.onnx --seconds 120
    python -m hepascope.bench.live --source session.mp4 --model DIR --clip-model CLIP \
        --clip-every 30 --seconds 60
    python -m hepascope.bench.live --source session.mp4 --model DIR --engine auto

With inference slower than the source, the windows' percentiles should stay flat while
``dropped`` grows: newest-frame-wins never lets a queue build up. The latency windows are
the main model's; a clip model's figures are in ``models`` (one entry per model)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.core.config import load_config
from hepascope.core.errors import guard_main
from hepascope.core.logs import configure as configure_logging
from hepascope.engines import CHOICES
from hepascope.stream.app import RunRequest, run_pipeline
from hepascope.stream.sources import SourceOptions


class _Latencies:
    def __init__(self) -> None:
        self.rows: list[tuple[str, int, float]] = []

    def on_result(self, msg: dict[str, Any]) -> None:
        self.rows.append((msg["model"], msg["t_publish_ns"], msg["latency_ms"]["total"]))


def measure(source: str, model: Path, seconds: float, window_s: float = 15.0, *,
            clip_model: Path | None = None, clip_every: int = 30,
            engine: str = "onnxruntime", speed: float = 1.0) -> dict[str, Any]:
    lat = _Latencies()
    summary = run_pipeline(RunRequest(source=source, model=model, config=load_config(),
                                      publish="tcp://127.0.0.1:*", duration_s=seconds,
                                      options=SourceOptions(loop=True, speed=speed),
                                      listeners=(lat,), clip_model=clip_model,
                                      clip_every=clip_every, engine=engine))
    main = [r for r in lat.rows if r[0] == summary["model"]]
    t = np.array([r[1] for r in main], dtype=np.float64)
    ms = np.array([r[2] for r in main])
    t = (t - t[0]) / 1e9 if t.size else t
    windows = []
    for start in np.arange(0.0, seconds, window_s):
        sel = (t >= start) & (t < start + window_s)
        if sel.any():
            windows.append({"from_s": float(start), "results": int(sel.sum()),
                            "p50_ms": round(float(np.percentile(ms[sel], 50)), 1),
                            "p99_ms": round(float(np.percentile(ms[sel], 99)), 1)})
    return {**summary, "latency_windows": windows}


@guard_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hepascope.bench.live",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True, help="a video file (looped at its own rate)")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--speed", type=float, default=1.0,
                   help="play the file X times its own rate (default 1): 2 doubles the fps")
    p.add_argument("--clip-model", type=Path, help="a clip export to run beside --model")
    p.add_argument("--clip-every", type=int, default=30, help="clip model cadence (frames)")
    p.add_argument("--engine", default="onnxruntime", choices=CHOICES,
                   help="inference backend (default onnxruntime; auto: tensorrt, else torch "
                   "on CUDA, else onnxruntime, logged)")
    p.add_argument("--out", type=Path, help="write the JSON here too")
    args = p.parse_args(argv)
    configure_logging(logging.INFO)
    result = measure(args.source, args.model, args.seconds, clip_model=args.clip_model,
                     clip_every=args.clip_every, engine=args.engine, speed=args.speed)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
