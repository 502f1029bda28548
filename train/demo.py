"""``hepascope demo``: the whole product in one command, offline, on a CPU.

Makes (or reuses from the cache) a phantom session and a trained, exported bimodal model,
replays the session at its own 30 fps through the full pipeline with the overlay
subscribed over loopback, and leaves ``overlay.mp4``, ``snapshot.png`` and ``report.json``
in the output directory, with the live results' accuracy against the phantom's ground
truth."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.stream.errors import HepascopeError

SESSION_SEED = 7        # the demo's session; training cases come from a disjoint seed space
SEGMENT_S = 6.0         # one patient every 6 s
SEGMENTS = 6            # each lesion class once: 36 s at 30 fps


def cache_dir() -> Path:
    """``$HEPASCOPE_CACHE``, else ``~/.cache/hepascope``."""
    return Path(os.environ.get("HEPASCOPE_CACHE", Path.home() / ".cache" / "hepascope"))


class ResultLog:
    """Keeps every published result (a pipeline listener)."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []

    def on_result(self, msg: dict[str, Any]) -> None:
        self.results.append(msg)


def ensure_session(cache: Path, console: Any) -> Path:
    from hepascope.stream.phantom.session import write_session

    path = cache / f"session-s{SESSION_SEED}-{SEGMENTS}x{SEGMENT_S:g}s.mp4"
    if not (path.is_file() and path.with_suffix(".truth.json").is_file()):
        with console.status(f"writing the phantom session ({SEGMENTS * SEGMENT_S:g} s)..."):
            write_session(path, seed=SESSION_SEED, seconds=SEGMENTS * SEGMENT_S,
                          segment_s=SEGMENT_S)
    return path


def ensure_model(cache: Path, console: Any, *, cases_per_class: int, epochs: int,
                 max_minutes: float) -> Path:
    """The exported model directory, trained and exported on first use."""
    from hepascope.train.checkpoint import CHECKPOINT_VERSION
    from hepascope.train.data import (
        WindowSpec,
        cached_phantom_set,
        make_specs,
        phantom_set_arrays,
        phantom_version,
    )
    from hepascope.train.export import export_checkpoint
    from hepascope.train.trainer import TrainConfig, load_checkpoint, train

    key = hashlib.sha256(json.dumps([phantom_version(), cases_per_class, epochs, max_minutes,
                                     CHECKPOINT_VERSION],
                                    sort_keys=True).encode()).hexdigest()[:12]
    ckpt = cache / f"model-{key}"
    onnx_dir = ckpt / "onnx"
    if (onnx_dir / "head.onnx").is_file() and (onnx_dir / "model.json").is_file():
        return onnx_dir
    from hepascope.stream.config import load_config

    specs = make_specs(load_config())
    pset = cached_phantom_set(cache, n_cases_per_class=cases_per_class, window=WindowSpec(),
                              specs=specs, seed=0, workers=os.cpu_count() or 1)
    if not (ckpt / "model.json").is_file():
        train(phantom_set_arrays(pset), TrainConfig(epochs=epochs, max_minutes=max_minutes),
              ckpt, progress=True)
    model, meta = load_checkpoint(ckpt)
    with console.status("exporting ONNX graphs and checking parity..."):
        report = export_checkpoint(model, meta, onnx_dir)  # weights too: --engine torch
    console.print(f"exported to {onnx_dir} (max |torch - onnxruntime| "
                  f"{report['max_abs_diff']:.1e})")
    return onnx_dir


def live_accuracy(results: list[dict[str, Any]], truth: dict[str, Any]) -> dict[str, Any]:
    """Share of live results whose top label is the phantom's ground truth for that frame,
    overall and per class."""
    frames = truth["frames"]
    fps = float(truth["fps"])
    per: dict[str, list[bool]] = {}
    for r in results:
        if r.get("pts_s") is None:
            continue
        idx = min(round(r["pts_s"] * fps), len(frames) - 1)
        label = frames[idx]["label"]
        per.setdefault(label, []).append(r["top"] == label)
    hits = [h for v in per.values() for h in v]
    return {"accuracy": round(float(np.mean(hits)), 4) if hits else None,
            "n": len(hits),
            "per_class": {k: round(float(np.mean(v)), 4) for k, v in sorted(per.items())}}


def snapshot(overlay_mp4: Path, states_jsonl: Path, png: Path) -> int:
    """Save a LIVE overlay frame from the middle of the run as PNG; return its index."""
    import av
    import cv2

    states = [json.loads(x) for x in states_jsonl.read_text().splitlines()]
    live = [s["frame"] for s in states if s["status"] == "LIVE"]
    if not live:
        raise HepascopeError("the overlay never showed a LIVE result")
    want = live[len(live) * 3 // 5]
    with av.open(str(overlay_mp4)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i == want:
                cv2.imwrite(str(png), frame.to_ndarray(format="bgr24"))
                return want
    raise HepascopeError(f"{overlay_mp4} has no frame {want}")


def run_demo(out: Path, *, cases_per_class: int = 64, epochs: int = 14,
             max_minutes: float = 5.0) -> dict[str, Any]:
    from rich.console import Console

    from hepascope.stream.app import RunRequest, run_pipeline
    from hepascope.stream.config import load_config
    from hepascope.stream.overlay import run_overlay

    console = Console(stderr=True)
    t0 = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    session = ensure_session(cache, console)
    model = ensure_model(cache, console, cases_per_class=cases_per_class, epochs=epochs,
                         max_minutes=max_minutes)
    t_ready = time.monotonic()
    log = ResultLog()
    stop_overlay = threading.Event()
    overlay_out: dict[str, Any] = {}
    overlay_err: list[BaseException] = []

    def start_overlay(endpoint: str) -> None:
        def body() -> None:
            try:
                overlay_out.update(run_overlay(
                    endpoint, out=out / "overlay.mp4", window=False, background=None,
                    stale_ms=250, fps=30, duration_s=None, stop=stop_overlay))
            except BaseException as e:  # re-raised below
                overlay_err.append(e)

        thread = threading.Thread(target=body, name="hepascope-demo-overlay", daemon=True)
        thread.start()
        overlay_out["_thread"] = thread
        time.sleep(0.5)  # PUB/SUB: let the overlay join before the first result

    config = load_config()
    with console.status(f"replaying {session.name} at 30 fps through the pipeline..."):
        summary = run_pipeline(RunRequest(
            source=str(session), model=model, config=config, publish="tcp://127.0.0.1:*",
            listeners=(log,), on_bound=start_overlay))
        time.sleep(0.4)  # a few frames of STALE at the end, as the surgeon would see
        stop_overlay.set()
        overlay_out.pop("_thread").join(timeout=30)
    if overlay_err:
        raise overlay_err[0]
    truth = json.loads(session.with_suffix(".truth.json").read_text())
    acc = live_accuracy(log.results, truth)
    snap = snapshot(out / "overlay.mp4", out / "overlay.mp4.jsonl", out / "snapshot.png")
    report = {
        "frames_in": summary["frames_in"], "frames_out": summary["frames_out"],
        "dropped": summary["dropped"], "source_fps": truth["fps"],
        "results_per_s": summary["results_per_s"],
        "latency_capture_to_publish_ms": {"p50": summary["latency_p50_ms"],
                                          "p99": summary["latency_p99_ms"],
                                          "max": summary["latency_max_ms"]},
        "stage_mean_ms": summary["stage_mean_ms"],
        "model": summary["model"], "model_dir": str(model), "engine": summary["engine"],
        "live_accuracy": acc, "overlay": {k: v for k, v in overlay_out.items() if k != "out"},
        "snapshot_frame": snap, "session": str(session),
        "seconds": {"setup": round(t_ready - t0, 1), "total": round(time.monotonic() - t0, 1)},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine()},
        "date": time.strftime("%Y-%m-%d"),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    _print_table(console, report, out)
    return report


def _print_table(console: Any, r: dict[str, Any], out: Path) -> None:
    from rich.table import Table

    t = Table(title=f"hepascope demo -> {out}", show_header=False)
    lat = r["latency_capture_to_publish_ms"]
    acc = r["live_accuracy"]
    for k, v in (("model / engine", f"{r['model']} / {r['engine']}"),
                 ("frames in / out / dropped", f"{r['frames_in']} / {r['frames_out']} / "
                                               f"{r['dropped']}"),
                 ("results/s (source 30 fps)", f"{r['results_per_s']:.1f}"),
                 ("capture->publish p50 / p99", f"{lat['p50']:.1f} / {lat['p99']:.1f} ms"),
                 ("live accuracy vs ground truth", f"{acc['accuracy']:.1%} of {acc['n']}"),
                 ("seconds (setup / total)", f"{r['seconds']['setup']} / {r['seconds']['total']}")):
        t.add_row(k, v)
    console.print(t)
