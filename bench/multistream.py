"""The scaling section's batched mode: N phantom streams in one process sharing one model
that batches the newest frame of each stream (stream/multi.py), beside the per-process
mode (one pipeline process per stream, bench/pipeline_sections.py); and the table that
puts both against the goal: each of N streams keeps >= 0.9 of 1/N of the single-stream
results/s.

Run one batched run from a shell (what the scaling section starts, in its own process so
that its CPU time is its own):

    python -m hepascope.bench.multistream --model DIR --source phantom:7 --source phantom:8 \
        --fps 30 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from hepascope.bench.pipeline_models import source_options
from hepascope.bench.pipeline_probes import Resources
from hepascope.core.config import load_config
from hepascope.core.errors import ModelError, guard_main
from hepascope.core.video import Mp4Writer
from hepascope.engines import resolve_backend
from hepascope.stream.batch import open_batch_model
from hepascope.stream.multi import MultiStream
from hepascope.stream.publish import Publisher
from hepascope.stream.sources import open_source

GOAL = 0.9  # each of N streams: at least this share of 1/N of one stream's results/s


def phantom_clips(out_dir: Path, n: int, *, fps: float, seconds: float = 2.0) -> list[str]:
    """``n`` phantom sessions (seeds 7, 8, ...) rendered once into ``seconds``-long MP4
    clips (kept: made once per directory). Replayed in a loop, a frame costs a decode, as
    from a capture card or a network stream, not a phantom render (tens of ms on a CPU):
    the scaling runs then measure the model shared by the streams, not the renderer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        spec, path = f"phantom:{7 + i}", out_dir / f"phantom-{7 + i}.mp4"
        if not path.is_file():
            with open_source(spec, source_options(spec, fps, max_rate=True)) as src:
                frames = iter(src)
                first = next(frames)
                h, w = first.image.shape[:2]
                with Mp4Writer(path, fps, w, h) as out:
                    out.write(first.image)
                    for _, frame in zip(range(int(seconds * fps) - 1), frames, strict=False):
                        out.write(frame.image)
        paths.append(str(path))
    return paths


def stream_specs(n: int, clips: list[str] | None) -> list[str]:
    """The first ``n`` streams' sources: the clips where given, else live phantoms."""
    return clips[:n] if clips is not None else [f"phantom:{7 + i}" for i in range(n)]


def batched_streams(model: Path, specs: list[str], *, fps: float, seconds: float,
                    engine: str = "onnxruntime", threads: int | None = None) -> dict[str, Any]:
    """The streams ``specs`` (phantoms or files) paced at ``fps`` through one batched
    model for ``seconds``, published on a real ZeroMQ socket: each stream's figures, the
    batching, CPU and RSS of this process."""
    config = load_config()
    backend = resolve_backend(model, engine)
    n = len(specs)
    sources = [open_source(s, source_options(s, fps)) for s in specs]
    clf = open_batch_model(model, config, n, backend=backend, threads=threads)
    pub = Publisher("tcp://127.0.0.1:*")
    try:
        for s in sources:
            s.open()
        res = Resources()
        summary = MultiStream(sources, clf, pub, config, engine_name=backend).run(seconds)
        usage = res.finish()
    finally:
        pub.close()
        clf.close()
        for s in sources:
            s.close()
    rows = [{"source": s["source"], "frames_in": s["frames_in"], "frames_out": s["frames_out"],
             "dropped": s["dropped"], "results_per_s": s["results_per_s"],
             "capture_to_publish_p50_ms": s["latency_p50_ms"],
             "capture_to_publish_p99_ms": s["latency_p99_ms"],
             "result_age_end_ms": s.get("result_age_ms")} for s in summary["streams"]]
    return {"streams": n, "threads": threads, "engine": backend,
            "total_results_per_s": summary["results_per_s"],
            "per_stream_results_per_s_min": min(r["results_per_s"] for r in rows),
            "batches": summary["batches"], "frames_per_batch": summary["frames_per_batch"],
            "batchable": summary["batchable"], **usage, "per_stream": rows}


def run_batched(model: Path, specs: list[str], *, fps: float, seconds: float, engine: str,
                threads: int) -> dict[str, Any]:
    """``batched_streams`` in a child process (its JSON on stdout)."""
    cmd = [sys.executable, "-m", "hepascope.bench.multistream", "--model", str(model),
           *(x for s in specs for x in ("--source", s)), "--fps", str(fps),
           "--seconds", str(seconds), "--engine", engine, "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise RuntimeError(f"batched run failed (exit {done.returncode}): "
                           f"{done.stderr.strip()[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def share_table(process: list[dict[str, Any]], batched: list[dict[str, Any]]
                ) -> dict[str, Any]:
    """Each run against the goal: per stream, results/s over 1/N of the single-stream
    results/s (the one-process run with one stream), its minimum and mean over streams."""
    single = next((r["total_results_per_s"] for r in process if r["streams"] == 1), None)

    def rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for r in runs:
            rates = [s["results_per_s"] for s in r["per_stream"]]
            cpu = r.get("cpu_pct", r.get("total_cpu_pct"))
            rss = r.get("rss_peak_mb") or sum(s.get("rss_peak_mb", 0) for s in r["per_stream"])
            row: dict[str, Any] = {"streams": r["streams"], "share_results_per_s": None,
                                   "ratio_min": None, "ratio_mean": None, "meets_goal": False,
                                   "cpu_pct": cpu, "results_per_cpu_s": None,
                                   "rss_peak_mb": round(rss, 1)}
            if cpu:  # on a shared machine the CPU a run gets varies: results per core-second
                row["results_per_cpu_s"] = round(sum(rates) / (cpu / 100.0), 2)
            if single:
                share = single / r["streams"]
                row.update(share_results_per_s=round(share, 2),
                           ratio_min=round(min(rates) / share, 3),
                           ratio_mean=round(sum(rates) / len(rates) / share, 3),
                           meets_goal=min(rates) / share >= GOAL)
            out.append(row)
        return out

    return {"single_stream_results_per_s": single, "goal_ratio": GOAL,
            "process": rows(process), "batched": rows(batched),
            "definition": "ratio = a stream's results/s / (single-stream results/s / N); "
                          "single stream = the per-process run with N = 1; goal: ratio_min "
                          f">= {GOAL}; results_per_cpu_s = all streams' results/s / cores "
                          "busy (cpu_pct / 100: the run's processes, children included); "
                          "rss_peak_mb: the batched process's peak, the per-process ones' sum"}


def batched_section(model: Path, streams: tuple[int, ...], *, fps: float, seconds: float,
                    engine: str, threads: int, clips: list[str] | None = None
                    ) -> dict[str, Any]:
    """The batched runs for each stream count, or ``not_available`` (a window model)."""
    try:
        runs = [run_batched(model, stream_specs(n, clips), fps=fps, seconds=seconds,
                            engine=engine, threads=threads) for n in streams]
    except RuntimeError as e:
        if "ModelError" in str(e) and "cannot be batched" in str(e):
            return {"not_available": str(e).split("ModelError: ")[-1].strip()}
        raise
    return {"threads": threads, "runs": runs}


@guard_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hepascope.bench.multistream",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--source", action="append", required=True, metavar="SPEC",
                   help="a stream's source (phantom:SEED or a file), once per stream")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--engine", default="onnxruntime")
    p.add_argument("--threads", type=int)
    a = p.parse_args(argv)
    try:
        out = batched_streams(a.model, a.source, fps=a.fps, seconds=a.seconds,
                              engine=a.engine, threads=a.threads)
    except ModelError as e:
        print(f"ModelError: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
