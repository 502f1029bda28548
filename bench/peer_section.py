"""``hepascope bench --peer fast``: the live pipeline beside FAST (``bench/peer_fast.py``) on
the same video, model, preprocessing and ONNX Runtime thread count, run alternately (A =
hepascope, B = FAST, ABAB: ``pairs`` pairs per mode) so that both see the same machine
load; the report gives hepascope / FAST ratios per pair and their median.

* video: a 640x480 30 fps H.264 MP4 of the phantom (``soak.make_clip``), or the user's
  ``--video``; both sides decode it with hepascope's ``FileSource`` (PyAV), looped.
* model: registered ``resnet18`` (1 grey channel, 6 classes, random weights) exported
  at 1x112x112 with plain preprocessing (the whole frame, no denoising or CLAHE): grey,
  resize to 112x112, (x / 255 - mean) / std on both sides.
* unpaced: the file decoded as fast as each pipeline takes frames; results/s.
* paced at the video's rate: capture -> result latency p50 / p99; capture = when the
  decoded frame left the source (monotonic clock, same code both sides); result = published
  (hepascope's ``capture_to_publish``) / handed to Python by FAST's ``DataStream``.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import sys
from pathlib import Path
from typing import Any

from hepascope.core.config import LayoutConfig, load_config, view_rect
from hepascope.core.preprocess import PreprocessSpec

log = logging.getLogger(__name__)

PEERS = ("fast",)
PEER_MODEL = "resnet18"
PEER_INPUT = (112, 112)  # H, W
VIDEO_SIZE = (640, 480)  # W, H
VIDEO_FPS = 30
VIDEO_SECONDS = 4.0
UNPACED_GOAL_X = 1.5  # hepascope results/s over FAST's, unpaced
MODES = ("unpaced", "paced")
_FIGURES = ("results_per_s", "p50_ms", "p99_ms", "frames_in", "dropped")
METHOD = (
    "Both sides decode the same file with hepascope's FileSource (PyAV), looped. A: the "
    "live pipeline (bench/pipeline_sections.py pipeline_section, ONNX Runtime). B: FAST's "
    "pipeline, PythonStreamer -> ColorToGrayscale -> ImageResizer (bilinear, "
    "blurOnDownsampling off) -> NeuralNetwork (ONNXRuntime engine), results read with "
    "DataStream, in a child process (bench/peer_fast.py).",
    "Not FAST's MovieStreamer: it plays a file in real time through Qt Multimedia "
    "(GStreamer), so it has no unpaced mode, and its frames carry no presentation time or "
    "frame number (getTimestamp 1, creation time in ms since FAST started; the network's "
    "output 0, as read in pyfast 4.18), so capture -> result cannot be taken from it.",
    "Same preprocessing: grey, resize to the model's input, (x / 255 - mean) / std (FAST: "
    "scaleFactor 1/255, meanIntensity 255 * mean, standardDeviationIntensity std).",
    "Unpaced: every frame decoded once and inferred once, as fast as each pipeline takes "
    "them (hepascope: its unpaced source waits for the model, whose process takes the "
    "frames waiting, up to pipeline.unpaced_batch = 4, in one engine run; FAST: "
    "ProcessAllFrames, one frame per NeuralNetwork run as built here; FAST's "
    "ImagesToBatch was not tried); results per second of the run.",
    "Paced at the video's rate, newest frame wins on both sides (FAST: NewestFrameOnly). "
    "Latency = result time - capture time, on the same monotonic clock; capture = when "
    "FileSource hands the decoded, due frame on (the same code on both sides); result = "
    "hepascope's publish (capture_to_publish) / FAST's DataStream handing the output "
    "tensor to Python.",
    "Both sides are timed from their first result on (start-up, model loading and the "
    "first inference left out): results/s = (results - 1) / (last - first result time).",
    "Ratios: hepascope / FAST per ABAB pair, median over the pairs (a load change on the "
    "shared machine hits both sides of a ratio); for latency below 1 is better.",
)


def peer_specs() -> tuple[PreprocessSpec, PreprocessSpec]:
    """(B-mode, CEUS) specs of the peer model: the whole frame, grey, no denoising or
    CLAHE, resized to ``PEER_INPUT``, normalised with the config's mean and std."""
    cfg = load_config()
    params = dataclasses.replace(cfg.preprocess, gaussian_sigma=0.0, clahe_clip=0.0,
                                 size=PEER_INPUT)
    spec = PreprocessSpec(LayoutConfig((("bmode", view_rect("full")),), None), params,
                          PEER_INPUT, 1, ("bmode",))
    return spec, spec


def peer_model(work: Path) -> Path:
    """The peer's ONNX graph (``bench.gpu.export`` of ``PEER_MODEL``, random weights)."""
    from hepascope.bench.gpu import export

    paths, _ = export(PEER_MODEL, {"num_classes": 6, "in_chans": 1}, work / "peer-model",
                      specs=peer_specs())
    return paths[0]


def peer_video(work: Path, video: Path | None = None) -> Path:
    """``video`` as given, else a ``VIDEO_SIZE`` phantom clip at ``VIDEO_FPS``."""
    from hepascope.bench.soak import make_clip

    if video is not None:
        return video
    return make_clip(work / "peer-640x480.mp4", seconds=VIDEO_SECONDS, fps=VIDEO_FPS,
                     size=VIDEO_SIZE)


def video_facts(video: Path) -> dict[str, Any]:
    """Size and frame rate of ``video`` (the rate the paced runs play it at)."""
    from hepascope.stream.sources.file import FileSource

    src = FileSource(video)
    with src:
        first = next(iter(src))
        fps = src.fps or float(VIDEO_FPS)
    h, w = first.image.shape[:2]
    return {"path": str(video), "width": w, "height": h, "fps": round(fps, 3)}


def _hepascope_run(model: Path, video: Path, *, fps: float, seconds: float, unpaced: bool,
                   threads: int) -> dict[str, Any]:
    """One hepascope run (``pipeline_section``) reduced to the figures compared."""
    from hepascope.bench.pipeline_sections import pipeline_section

    r = pipeline_section(model, source=str(video), fps=fps, seconds=seconds,
                         engine="onnxruntime", threads=threads, max_rate=unpaced)
    return {"results_per_s": r["steady_results_per_s"],
            "p50_ms": r["steady_capture_to_publish_p50_ms"],
            "p99_ms": r["steady_capture_to_publish_p99_ms"], "frames_in": r["frames_in"],
            "dropped": r["dropped"]}


def _fast_run(model: Path, video: Path, *, seconds: float, unpaced: bool) -> dict[str, Any]:
    """One FAST run (``peer_fast.run_fast``) reduced to the figures compared."""
    from hepascope.bench.peer_fast import run_fast

    spec = peer_specs()[0]
    r = run_fast(video, model, seconds=seconds, unpaced=unpaced, size=spec.size,
                 mean=spec.params.mean, std=spec.params.std,
                 timeout_s=max(120.0, 4 * seconds + 60.0))
    if "error" in r or "not_available" in r:
        return r
    return {"results_per_s": r["results_per_s"], "p50_ms": r["capture_to_result_p50_ms"],
            "p99_ms": r["capture_to_result_p99_ms"], "frames_in": r["frames_in"],
            "dropped": r["dropped"]}


def session_check(model: Path, threads: int, calls: int = 40) -> dict[str, Any]:
    """The model call alone, batch 1, in this process: hepascope's tuned ONNX Runtime
    session against ONNX Runtime's defaults (what FAST's engine opens; pyfast exposes no
    session options), interleaved in chunks after pauses (``engine_compare.time_variants``:
    the default session's spinning threads park before the other's turn); medians. How
    much of the pipelines' ratio the session settings alone account for."""
    import numpy as np
    import onnxruntime as ort

    from hepascope.bench.engine_compare import time_variants
    from hepascope.bench.variant import Variant
    from hepascope.engines.onnxruntime import OnnxRuntimeEngine

    tuned = OnnxRuntimeEngine(model, threads=threads)
    plain = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    spec = tuned.inputs[0]
    x = np.zeros(spec.at_batch(1, unknown=1), np.float32)
    first = tuned.outputs[0].name
    variants = [Variant("hepascope", "tuned session",
                        [lambda a: tuned.infer({spec.name: a})[first]], tuned.close, 0.0),
                Variant("ort_defaults", "ONNX Runtime's defaults",
                        [lambda a: plain.run(None, {spec.name: a})[0]], lambda: None, 0.0)]
    try:
        ms = time_variants(variants, x, calls, warmup=3)
    finally:
        tuned.close()
    a, b = (round(float(np.median(ms[k])), 3) for k in ("hepascope", "ort_defaults"))
    return {"hepascope_session_p50_ms": a, "ort_default_session_p50_ms": b,
            "default_over_hepascope_x": _ratio(b, a), "threads": threads}


def _ratio(a: Any, b: Any) -> float | None:
    return round(a / b, 3) if isinstance(a, int | float) and isinstance(b, int | float) \
        and b > 0 else None


def _median(values: list[Any]) -> float | None:
    xs = [v for v in values if isinstance(v, int | float)]
    return round(statistics.median(xs), 3) if xs else None


def summarize(pairs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per mode: each side's median figures over its runs and the median over pairs of
    the per-pair ratio hepascope / FAST (so that a load change hits both sides of a
    ratio); the unpaced results/s goal and the paced latency goal, met or not."""
    out: dict[str, Any] = {}
    for mode, rows in pairs.items():
        m: dict[str, Any] = {}
        for side in ("hepascope", "fast"):
            m[side] = {k: _median([r[side].get(k) for r in rows]) for k in _FIGURES}
        m["ratio_x"] = {k: _median([_ratio(r["hepascope"].get(k), r["fast"].get(k))
                                    for r in rows]) for k in ("results_per_s", "p50_ms",
                                                               "p99_ms")}
        out[mode] = m
    up = out.get("unpaced", {}).get("ratio_x", {}).get("results_per_s")
    pa = out.get("paced", {}).get("ratio_x", {})
    out["goals"] = {
        "unpaced_results_per_s_ratio_x": up, "unpaced_goal_x": UNPACED_GOAL_X,
        "unpaced_met": None if up is None else up >= UNPACED_GOAL_X,
        "paced_latency_below_fast": None if pa.get("p50_ms") is None or pa.get("p99_ms") is None
        else pa["p50_ms"] < 1 and pa["p99_ms"] < 1,
        # pairs where both hepascope's p50 and p99 were below FAST's, of all paced pairs
        "paced_pairs_below": [sum(_below(r, "p50_ms") and _below(r, "p99_ms")
                                  for r in pairs.get("paced", [])), len(pairs.get("paced", []))],
        "unpaced_pairs_met": [sum((_ratio(r["hepascope"].get("results_per_s"),
                                          r["fast"].get("results_per_s")) or 0) >= UNPACED_GOAL_X
                                  for r in pairs.get("unpaced", [])),
                              len(pairs.get("unpaced", []))]}
    return out


def _below(row: dict[str, Any], key: str) -> bool:
    """Whether hepascope's figure ``key`` is below FAST's in a pair."""
    r = _ratio(row["hepascope"].get(key), row["fast"].get(key))
    return r is not None and r < 1


def _progress(text: str) -> None:
    print(f"bench peer: {text}", file=sys.stderr, flush=True)


def measure_pairs(model: Path, video: Path, *, fps: float, seconds: float, pairs: int,
                  threads: int) -> dict[str, list[dict[str, Any]]]:
    """``pairs`` ABAB pairs per mode (hepascope, then FAST); each row both sides' figures,
    a side's ``error`` in its place when a run failed; cut short where FAST does not load."""
    out: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for mode in MODES:
        unpaced = mode == "unpaced"
        for i in range(pairs):
            _progress(f"{mode} pair {i + 1}/{pairs}: hepascope")
            try:
                hep = _hepascope_run(model, video, fps=fps, seconds=seconds, unpaced=unpaced,
                                     threads=threads)
            except Exception as e:  # the row says so; the section reports it as an error
                log.info("peer: hepascope run failed", exc_info=e)
                hep = {"error": f"{type(e).__name__}: {e}"}
            _progress(f"{mode} pair {i + 1}/{pairs}: FAST")
            fast = _fast_run(model, video, seconds=seconds, unpaced=unpaced)
            out[mode].append({"pair": i + 1, "hepascope": hep, "fast": fast})
            if "not_available" in fast:
                return out
    return out


def peer_section(peer: str, *, work: Path, seconds: float, pairs: int,
                 video: Path | None = None) -> dict[str, Any]:
    """The ``--peer`` section: ``{"not_available": why}`` where the peer cannot run here
    (one line, no traceback), else the runs, their summary and how they were made;
    ``error`` names the first failed run."""
    from hepascope.bench.peer_fast import availability
    from hepascope.engines.onnxruntime import cpu_budget

    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r} (known: {', '.join(PEERS)})")
    avail = availability()
    if "not_available" in avail:
        return {"peer": peer, **avail}
    model, clip = peer_model(work), peer_video(work, video)
    facts = {**video_facts(clip), "made_in_run": video is None}
    threads = cpu_budget()
    runs = measure_pairs(model, clip, fps=facts["fps"], seconds=seconds, pairs=pairs,
                         threads=threads)
    skipped = [r["fast"]["not_available"] for rows in runs.values() for r in rows
               if "not_available" in r["fast"]]
    if skipped:  # installed, with OpenCL, yet FAST does not load (a system library missing)
        return {"peer": peer, "not_available": skipped[0]}
    import onnxruntime

    out: dict[str, Any] = {
        "peer": peer, "fast_version": avail["fast"], "opencl_platforms": avail["opencl"],
        "video": facts, "model": f"{PEER_MODEL}, random weights, 1x{PEER_INPUT[0]}x"
        f"{PEER_INPUT[1]} grey, 6 classes", "seconds_per_run": seconds, "pairs": pairs,
        "threads": {"hepascope_ort_intra_op": threads,
                    "fast_ort_intra_op": f"ONNX Runtime's default (one per physical core; "
                    f"pyfast sets none); {cpu_budget()} cores here"},
        "onnxruntime": {"hepascope": onnxruntime.__version__,
                        "fast": "the build bundled with pyfast"},
        "summary": summarize(_ok_rows(runs)),
        "model_call": session_check(model, threads), "runs": runs}
    failed = [f"{mode} pair {r['pair']} {side}: {r[side]['error']}"
              for mode, rows in runs.items() for r in rows for side in ("hepascope", "fast")
              if "error" in r[side]]
    if failed:
        out["error"] = failed[0]
    return out


def _ok_rows(runs: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    return {mode: [r for r in rows if "error" not in r["hepascope"] and "error" not in r["fast"]]
            for mode, rows in runs.items()}


def _num(v: Any) -> str:
    return "n/a" if v is None else f"{v:g}"


def peer_md(sec: dict[str, Any] | None) -> list[str]:
    """The report's peer section: one line where the peer was not available, else the
    ratios (hepascope / FAST, median over ABAB pairs), each side's medians and the method."""
    if not sec:
        return []
    out = [f"## Peer: {sec.get('peer', '?').upper()} (same video, model and machine load)", ""]
    if "not_available" in sec:
        return [*out, f"Not available: {sec['not_available']}", ""]
    s = sec["summary"]
    goals = s["goals"]
    out += [f"FAST {sec['fast_version']} · OpenCL: {'; '.join(sec['opencl_platforms'])} · "
            f"ONNX Runtime threads: hepascope {sec['threads']['hepascope_ort_intra_op']}, "
            f"FAST {sec['threads']['fast_ort_intra_op']} · {sec['pairs']} ABAB pairs of "
            f"{sec['seconds_per_run']:g} s per mode", "",
            "| mode | figure | hepascope | FAST | hepascope / FAST |", "|---|---|---|---|---|"]
    for mode in MODES:
        m = s.get(mode, {})
        for k in ("results_per_s", "p50_ms", "p99_ms"):
            out.append(f"| {mode} | {k} | {_num(m.get('hepascope', {}).get(k))} | "
                       f"{_num(m.get('fast', {}).get(k))} | "
                       f"{_num(m.get('ratio_x', {}).get(k))} |")
    met = {True: "met", False: "not met", None: "n/a"}
    up = _num(goals["unpaced_results_per_s_ratio_x"])
    un, pa = goals.get("unpaced_pairs_met", [0, 0]), goals.get("paced_pairs_below", [0, 0])
    out += ["", f"Unpaced results/s, hepascope / FAST: {up}"
            f" (goal >= {goals['unpaced_goal_x']:g}: {met[goals['unpaced_met']]}, in "
            f"{un[0]} of {un[1]} pairs); paced latency p50 and p99 below FAST's: "
            f"{met[goals['paced_latency_below_fast']]} (medians of the per-pair ratios; "
            f"both below in {pa[0]} of {pa[1]} pairs).", ""]
    if "error" in sec:
        out += [f"A run failed: {sec['error']}", ""]
    mc = sec.get("model_call")
    if mc:
        out += [f"The model call alone, this process's ONNX Runtime, chunks in turn: "
                f"hepascope's tuned session ({mc['threads']} threads) "
                f"{_num(mc['hepascope_session_p50_ms'])} ms, ONNX Runtime's defaults (what "
                "FAST's engine opens) "
                f"{_num(mc['ort_default_session_p50_ms'])} ms: the session settings alone "
                f"make the call {_num(mc['default_over_hepascope_x'])}x faster (part of the "
                "ratios above).", ""]
    v = sec["video"]
    where = "a phantom clip made in the run" if v.get("made_in_run") else v["path"]
    out += [f"Video {v['width']}x{v['height']} at {v['fps']:g} frames/s ({where}); "
            f"model {sec['model']}.", "", *(f"* {line}" for line in METHOD), ""]
    return out
