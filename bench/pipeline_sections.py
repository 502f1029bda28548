"""Full-pipeline sections of the benchmark report: the live path against a naive loop,
concurrent streams, and a model slower than its source. Each function returns a JSON-able
dict (units in the key names) that ``hepascope bench`` puts in its report.

* ``pipeline_section``: ``run_pipeline`` on a paced source with a real ZeroMQ subscriber
  (the overlay's receive side) in a thread: per-stage p50/p99, capture->publish and
  capture->overlay, results/s, drops, CPU and RSS.
* the naive baseline (``naive_section``, ``baseline_ratio``) is in ``bench/naive.py``.
* ``scaling_section``: 1, 2, 4 streams at once, one process per stream, and batched: one
  process whose one model takes the newest frame of every stream as one batch.
* ``slow_model_section``: inference slower than the source; latency per window against drops.

One stream's section from a shell (what ``scaling_section`` starts per stream):
``python -m hepascope.bench.pipeline_sections --model DIR --fps 30 --seconds 10``."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hepascope.bench.multistream import (
    batched_section,
    phantom_clips,
    share_table,
    stream_specs,
)
from hepascope.bench.pipeline_models import (
    calibrate_slow_model,
    source_options,
)
from hepascope.bench.pipeline_probes import (
    OverlayProbe,
    Resources,
    ResultLog,
    decode_cost_ms,
    p50_p99,
    pct,
    windows_table,
)
from hepascope.core.config import Config, load_config
from hepascope.core.errors import guard_main
from hepascope.stream.app import RunRequest, run_pipeline

_MS = 1e-6  # ns -> ms


def _stage_table(rows: list[dict[str, Any]], rx: dict[tuple[str, int], int],
                 decode_ms: list[float]) -> dict[str, dict[str, float | None]]:
    """p50/p99 per stage; ``queue`` is reported as ``ring`` (capture -> inference read)."""
    names: list[str] = []
    for r in rows:
        names += [k for k in r["latency_ms"] if k not in names and k != "total"]
    table: dict[str, dict[str, float | None]] = {"capture_decode": p50_p99(decode_ms)}
    for k in names:
        table["ring" if k == "queue" else k] = p50_p99(
            [r["latency_ms"][k] for r in rows if k in r["latency_ms"]])
    table["overlay_receive"] = p50_p99(
        [(rx[(r["model"], r["seq"])] - r["t_publish_ns"]) * _MS
         for r in rows if (r["model"], r["seq"]) in rx])
    return table


def _steady(rows: list[dict[str, Any]], c2p: list[float]) -> dict[str, float | None]:
    """Results/s and capture->publish p50/p99 from the first result on (start-up and the
    first inference left out), as the FAST peer is timed (``bench/peer_section.py``)."""
    span_s = (rows[-1]["t_publish_ns"] - rows[0]["t_publish_ns"]) / 1e9 if rows else 0.0
    return {"steady_results_per_s": round((len(rows) - 1) / span_s, 2) if span_s > 0 else None,
            "steady_capture_to_publish_p50_ms": pct(c2p[1:], 50),
            "steady_capture_to_publish_p99_ms": pct(c2p[1:], 99)}


def pipeline_section(model: Path, *, source: str = "phantom:7", fps: float, seconds: float,
                     engine: str = "onnxruntime", threads: int | None = None,
                     wait_start: Callable[[], None] | None = None,
                     max_rate: bool = False, config: Config | None = None) -> dict[str, Any]:
    """The live path on ``source`` paced at ``fps`` for ``seconds``, with a subscriber
    measuring capture->overlay. ``wait_start`` (scaling) is called once everything is
    open, just before frames flow. ``max_rate``: unpaced (a file decoded as fast as the
    model takes frames; the FAST peer's throughput). ``config``: default the packaged one.
    Figures are the main model's."""
    if fps <= 0 or seconds <= 0:
        raise ValueError(f"fps and seconds must be > 0, got {fps}, {seconds}")
    decode_ms = decode_cost_ms(source, fps)
    listener, probe = ResultLog(), OverlayProbe()

    def bound(endpoint: str) -> None:
        probe.connect(endpoint)
        if wait_start is not None:
            wait_start()

    res = Resources()
    try:
        summary = run_pipeline(RunRequest(
            source=source, model=model, config=config or load_config(),
            publish="tcp://127.0.0.1:*",
            options=source_options(source, fps, max_rate=max_rate), duration_s=seconds,
            engine=engine, threads=threads, listeners=(listener,), on_bound=bound))
    finally:
        probe.close()
    usage = res.finish()
    rows = [r for r in listener.rows if r["model"] == summary["model"]]
    c2p = [(r["t_publish_ns"] - r["t_capture_ns"]) * _MS for r in rows]
    matched = [r for r in rows if (r["model"], r["seq"]) in probe.rx]
    c2o = [(probe.rx[(r["model"], r["seq"])] - r["t_capture_ns"]) * _MS for r in matched]
    c2p_matched = [(r["t_publish_ns"] - r["t_capture_ns"]) * _MS for r in matched]
    return {
        "source": summary["source"], "model": summary["model"], "engine": summary["engine"],
        "fps_target": fps, "seconds": summary["seconds"], "threads": threads,
        "frames_in": summary["frames_in"], "frames_out": summary["frames_out"],
        "dropped": summary["dropped"], "fps_in": summary["fps_in"],
        "results_per_s": summary["results_per_s"],
        "stage_ms": _stage_table(rows, probe.rx, decode_ms),
        "capture_to_publish_p50_ms": pct(c2p, 50), "capture_to_publish_p99_ms": pct(c2p, 99),
        "capture_to_overlay_p50_ms": pct(c2o, 50), "capture_to_overlay_p99_ms": pct(c2o, 99),
        # the same results' capture->publish, so the two can be compared one to one
        "matched_capture_to_publish_p50_ms": pct(c2p_matched, 50),
        "matched_capture_to_publish_p99_ms": pct(c2p_matched, 99),
        **_steady(rows, c2p),
        "overlay_received": probe.received, "overlay_matched": len(matched),
        "publish_dropped": summary["publish_dropped"],
        # unpaced sources only: frames after which decoding waited for the model to take one
        **{k: summary[k] for k in ("backpressure_waits", "backpressure_timeouts")
           if k in summary},
        **usage,
        "notes": "stage_ms.capture_decode is timed unpaced on the same source before the run "
                 "(the grab thread's per-frame cost); ring = capture -> inference read; "
                 "overlay_receive = subscriber receive - publish (same host clock); "
                 "cpu_pct: 100 = one core",
    }


def _cpu_budget() -> int:
    return len(os.sched_getaffinity(0))


def _start_worker(model: Path, source: str, fps: float, seconds: float, engine: str,
                  threads: int) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "hepascope.bench.pipeline_sections", "--worker",
           "--model", str(model), "--source", source, "--fps", str(fps), "--seconds", str(seconds),
           "--engine", engine, "--threads", str(threads)]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _worker_failed(proc: subprocess.Popen[str], what: str) -> RuntimeError:
    proc.kill()
    _, err = proc.communicate()
    return RuntimeError(f"scaling worker {what} (exit {proc.returncode}): {err.strip()[-2000:]}")


def _run_streams(model: Path, specs: list[str], fps: float, seconds: float, engine: str,
                 threads: int) -> list[dict[str, Any]]:
    """One one-stream process per source in ``specs``, each with its own endpoint; all
    open their model and source first, then start together (each says READY, waits for
    GO)."""
    procs = [_start_worker(model, spec, fps, seconds, engine, threads) for spec in specs]
    try:
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "READY":
                raise _worker_failed(p, "did not get ready")
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("GO\n")
            p.stdin.flush()
        out = []
        for p in procs:
            text, err = p.communicate(timeout=seconds + 120)
            if p.returncode != 0:
                raise RuntimeError(f"scaling worker failed (exit {p.returncode}): "
                                   f"{err.strip()[-2000:]}")
            out.append(json.loads(text.strip().splitlines()[-1]))
        return out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def scaling_section(model: Path, *, streams: tuple[int, ...] = (1, 2, 4), fps: float = 30,
                    seconds: float, engine: str = "onnxruntime", batched: bool = True,
                    clips_dir: Path | None = None) -> dict[str, Any]:
    """N concurrent streams: one process per stream (as separate devices would be), each
    with ``cpu_cores // N`` engine threads (at least 1); ``batched``: also N streams in one
    process, one model batching across them on every core (bench/multistream.py); both
    against 1/N of one stream. Live phantoms, or phantom clips looped (``clips_dir``)."""
    if not streams or min(streams) < 1:
        raise ValueError(f"streams must be counts >= 1, got {streams}")
    budget = _cpu_budget()
    clips = None if clips_dir is None else phantom_clips(clips_dir, max(streams), fps=fps)
    runs = _process_runs(model, streams, fps, seconds, engine, budget, clips)
    out: dict[str, Any] = {
        "fps_target": fps, "seconds": seconds, "engine": engine, "cpu_cores": budget,
        "model": f"{model.parent.name}/{model.name}" if model.is_file() else model.name,
        "sources": "live phantom (a render per frame)" if clips is None
        else "phantom clips replayed in a loop (a decode per frame)", "runs": runs}
    if batched:
        out["batched"] = batched_section(model, streams, fps=fps, seconds=seconds,
                                         engine=engine, threads=budget, clips=clips)
        out["share_of_single"] = share_table(runs, out["batched"].get("runs", []))
    return out


def _process_runs(model: Path, streams: tuple[int, ...], fps: float, seconds: float,
                  engine: str, budget: int, clips: list[str] | None) -> list[dict[str, Any]]:
    """The per-process mode: for each count N, N one-stream pipeline processes at once."""
    runs = []
    for n in streams:
        threads = max(1, budget // n)
        per = _run_streams(model, stream_specs(n, clips), fps, seconds, engine, threads)
        keep = ("source", "frames_in", "frames_out", "dropped", "results_per_s",
                "capture_to_publish_p50_ms", "capture_to_publish_p99_ms",
                "capture_to_overlay_p50_ms", "capture_to_overlay_p99_ms", "cpu_pct",
                "rss_peak_mb")
        rows = [{k: s[k] for k in keep} for s in per]
        rates = [r["results_per_s"] for r in rows]
        p99s = [r["capture_to_publish_p99_ms"] for r in rows
                if r["capture_to_publish_p99_ms"] is not None]
        runs.append({"streams": n, "threads_per_stream": threads,
                     "total_results_per_s": round(sum(rates), 2),
                     "per_stream_results_per_s_mean": round(sum(rates) / n, 2),
                     "per_stream_results_per_s_min": min(rates),
                     "worst_capture_to_publish_p99_ms": max(p99s) if p99s else None,
                     "total_cpu_pct": round(sum(r["cpu_pct"] for r in rows), 1),
                     "per_stream": rows})
    return runs


def slow_model_section(*, fps: float, seconds: float, work_dir: Path,
                       source: str = "phantom:7", windows: int = 4,
                       slowdown: float = 3.0) -> dict[str, Any]:
    """A model ``slowdown`` times slower than the frame period (calibrated here, one engine
    thread) on a source at ``fps``: with newest-frame-wins the latency per window stays
    flat (about one inference) while the frames dropped keep rising."""
    if windows < 1 or slowdown <= 0:
        raise ValueError(f"windows must be >= 1 and slowdown > 0, got {windows}, {slowdown}")
    period_ms = 1000.0 / fps
    path, convs, ms = calibrate_slow_model(work_dir, slowdown * period_ms)
    listener = ResultLog()
    summary = run_pipeline(RunRequest(
        source=source, model=path, config=load_config(), publish="tcp://127.0.0.1:*",
        options=source_options(source, fps), duration_s=seconds, threads=1,
        listeners=(listener,)))
    table = windows_table(listener.rows, seconds, windows)
    filled = [w for w in table if w["results"]]
    return {
        "fps_target": fps, "seconds": summary["seconds"], "frame_period_ms": round(period_ms, 3),
        "model_convs": convs, "model_infer_ms": round(ms, 3),
        "frames_in": summary["frames_in"], "frames_out": summary["frames_out"],
        "dropped": summary["dropped"], "results_per_s": summary["results_per_s"],
        "latency_p50_ms": summary["latency_p50_ms"], "latency_p99_ms": summary["latency_p99_ms"],
        "first_window_p50_ms": filled[0]["latency_p50_ms"] if filled else None,
        "last_window_p50_ms": filled[-1]["latency_p50_ms"] if filled else None,
        "windows": table,
    }


def _worker_main(args: argparse.Namespace) -> int:
    """One stream of ``scaling_section``: READY once open, GO on stdin, JSON on stdout."""

    def gate() -> None:
        print("READY", flush=True)
        if sys.stdin.readline().strip() != "GO":
            raise RuntimeError("scaling worker: no GO on stdin")

    result = pipeline_section(args.model, source=args.source, fps=args.fps,
                              seconds=args.seconds, engine=args.engine, threads=args.threads,
                              wait_start=gate if args.worker else None)
    print(json.dumps(result), flush=True)
    return 0


@guard_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hepascope.bench.pipeline_sections",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--source", default="phantom:7")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--engine", default="onnxruntime")
    p.add_argument("--threads", type=int)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return _worker_main(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
