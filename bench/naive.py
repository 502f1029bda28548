"""The naive baseline of the bench: the loop a user would write (decode a frame, run the
torch model eagerly on the CPU, print), one thread, timed from each frame's arrival as
``pipeline_section`` is; and the ratio of the live pipeline to it."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import IO, Any

import numpy as np

from hepascope.bench.pipeline_models import open_torch_cpu, source_options
from hepascope.bench.pipeline_probes import Resources, p50_p99, pct
from hepascope.core.config import load_config
from hepascope.core.frame import Frame
from hepascope.stream.classifier import Classifier
from hepascope.stream.sources import open_source

_MS = 1e-6  # ns -> ms


def naive_section(model: Path, *, source: str, fps: float, seconds: float,
                  threads: int | None = None, out: Any = None) -> dict[str, Any]:
    """The naive synchronous loop: take the next frame, preprocess (the one preprocessing
    function), run the torch model eagerly on CPU, print a line; repeat in one thread.

    Frame k *arrives* at ``t0 + k / fps``, as from a device at that rate. Frames that
    arrive while the loop is busy wait in an unbounded FIFO (a driver / demuxer buffer):
    every frame is processed, in order, and none is dropped, so a loop slower than its
    source falls further behind. The phantom's frame k is rendered (a file's decoded) when
    the loop takes it, inside the loop, and is timed from its arrival time. One frame warms
    the model up first, untimed (the pipeline gets no such help). ``out``: the
    stream the lines go to (default: os.devnull; printing is part of the loop)."""
    if fps <= 0 or seconds <= 0:
        raise ValueError(f"fps and seconds must be > 0, got {fps}, {seconds}")
    clf = open_torch_cpu(model, load_config(), threads=threads)
    sink = out if out is not None else open(os.devnull, "w")  # noqa: SIM115 (closed below)
    src = open_source(source, source_options(source, fps, max_rate=True))
    lat_ms: list[float] = []
    stages: dict[str, list[float]] = {"wait": [], "capture_decode": [], "preprocess": [],
                                      "infer": [], "print": []}
    period_ns = int(1e9 / fps)
    res = Resources()
    try:
        with src:
            frames = iter(src)
            first = next(frames, None)  # warm-up, untimed: torch's first call sets up
            if first is not None:
                clf.predict(first)
            t0 = time.monotonic_ns()
            end = t0 + int(seconds * 1e9)
            k = 0
            while (now := time.monotonic_ns()) < end:
                arrival = t0 + k * period_ns
                if arrival > now:
                    time.sleep((arrival - now) / 1e9)
                t_take = time.monotonic_ns()
                frame = next(frames, None)
                if frame is None:
                    break
                t_dec = time.monotonic_ns()
                _naive_step(clf, frame, sink, arrival, t_take, t_dec, lat_ms, stages)
                k += 1
            t_end = time.monotonic_ns()
    finally:
        clf.close()
        if out is None:
            sink.close()
    usage = res.finish()
    wall_s = max((t_end - t0) / 1e9, 1e-9)
    arrived = int((t_end - t0) // period_ns) + 1  # frames that existed by the end
    return {"source": source, "model": clf.model_name, "engine": "torch-cpu-eager",
            "fps_target": fps, "seconds": round(wall_s, 3), "threads": threads,
            **_naive_figures(lat_ms, stages, arrived, k, wall_s), **usage,
            "notes": "frame k arrives at t0 + k/fps; late frames wait in an unbounded FIFO "
                     "(no drops); capture->result = printed - arrival; one untimed warm-up "
                     "frame"}


def _naive_step(clf: Classifier, frame: Frame, sink: IO[str], arrival: int, t_take: int,
                t_dec: int, lat_ms: list[float], stages: dict[str, list[float]]) -> None:
    """One turn of the naive loop after the decode: infer, print the line, and append the
    frame's latency and stage times (``arrival``, ``t_take``, ``t_dec``: monotonic ns when
    it arrived, was taken, was decoded)."""
    probs, times = clf.predict(frame)
    t_inf = time.monotonic_ns()
    i = int(np.argmax(probs))
    print(f"{frame.seq} {clf.labels[i]} {probs[i]:.3f}", file=sink, flush=True)
    t_done = time.monotonic_ns()
    lat_ms.append((t_done - arrival) * _MS)
    stages["wait"].append(max(t_take - arrival, 0) * _MS)
    stages["capture_decode"].append((t_dec - t_take) * _MS)
    stages["preprocess"].append(times.get("preprocess", 0.0))
    stages["infer"].append((t_inf - t_dec) * _MS - times.get("preprocess", 0.0))
    stages["print"].append((t_done - t_inf) * _MS)


def _naive_figures(lat_ms: list[float], stages: dict[str, list[float]], arrived: int,
                   k: int, wall_s: float) -> dict[str, Any]:
    """The naive loop's counts, latencies and per-stage times."""
    half = len(lat_ms) // 2
    return {
        "frames_arrived": arrived, "frames_out": k, "backlog_frames": max(arrived - k, 0),
        "results_per_s": round(k / wall_s, 2),
        "capture_to_result_p50_ms": pct(lat_ms, 50), "capture_to_result_p99_ms": pct(lat_ms, 99),
        "capture_to_result_first_half_p50_ms": pct(lat_ms[:half], 50),
        "capture_to_result_second_half_p50_ms": pct(lat_ms[half:], 50),
        # how late the last result was: grows without bound when the loop is slower
        "behind_end_ms": round(lat_ms[-1], 3) if lat_ms else None,
        "stage_ms": {name: p50_p99(v) for name, v in stages.items()},
    }


def baseline_ratio(pipeline: dict[str, Any], naive: dict[str, Any]) -> dict[str, Any]:
    """The pipeline against the naive loop on the same source and pacing: results/s
    (pipeline / naive: higher is better) and p50 latency (naive capture->result /
    pipeline capture->publish: higher means the pipeline is that many times fresher)."""
    rate = (pipeline["results_per_s"] / naive["results_per_s"]
            if naive["results_per_s"] else math.inf)
    p_lat, n_lat = pipeline["capture_to_publish_p50_ms"], naive["capture_to_result_p50_ms"]
    lat = n_lat / p_lat if p_lat and n_lat is not None else None
    return {"fps_target": pipeline["fps_target"],
            "results_per_s_ratio": round(rate, 2),
            "latency_p50_ratio": None if lat is None else round(lat, 2),
            "at_least_2x_results_per_s": rate >= 2.0,
            "at_least_2x_latency_p50": lat is not None and lat >= 2.0,
            "definition": "results_per_s_ratio = pipeline results/s / naive results/s; "
                          "latency_p50_ratio = naive capture->result p50 / pipeline "
                          "capture->publish p50; same source kind, same fps, same seconds"}
