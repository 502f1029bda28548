"""``hepascope demo``: the whole product in one command, offline, on a CPU.

Makes (or reuses from the cache) three phantom sessions (six patients each, one per class)
and takes the trained, exported bimodal model shipped in the package (``--retrain``: the
same recipe trained again, see ``demo_model``). Replays the first session at its own
30 fps through the full pipeline with the overlay subscribed over loopback, scores every
frame of all three sessions in lockstep (18 patients; ``demo_score``), and leaves
``overlay.mp4``, ``snapshot.png`` and ``report.json`` in the output directory."""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hepascope.core.errors import HepascopeError
from hepascope.core.export_format import HEAD_FILE

SESSION_SEEDS = (7, 8, 9)  # scored sessions; training cases come from a disjoint seed space
SEGMENT_S = 6.0         # one patient every 6 s (training cases match it: data.LIVE_SEGMENT_S)
SEGMENTS = 6            # each lesion class once per session: 36 s at 30 fps
SESSION_CODE = ("phantom", "core.video")  # what makes a session file


def cache_dir() -> Path:
    """``$HEPASCOPE_CACHE``, else ``~/.cache/hepascope``."""
    return Path(os.environ.get("HEPASCOPE_CACHE", Path.home() / ".cache" / "hepascope"))


class ResultLog:
    """Keeps every published result (a pipeline listener)."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []

    def on_result(self, msg: dict[str, Any]) -> None:
        self.results.append(msg)


def _write_session_job(job: tuple[str, int, float]) -> str:
    """Worker: write one session (path, seed, segment seconds)."""
    from hepascope.phantom.session import print_progress, write_session

    path, seed, segment_s = job
    tmp = Path(path).with_name(f".{Path(path).name}.{os.getpid()}.tmp.mp4")
    write_session(tmp, seed=seed, seconds=SEGMENTS * segment_s, segment_s=segment_s,
                  progress=print_progress(f"session seed {seed}"))
    os.replace(tmp.with_suffix(".truth.json"), Path(path).with_suffix(".truth.json"))
    os.replace(tmp, path)
    return path


def ensure_sessions(cache: Path, console: Any, seeds: Sequence[int] = SESSION_SEEDS,
                    segment_s: float = SEGMENT_S) -> list[Path]:
    """One phantom session per seed (SEGMENTS patients, one per class), cached under a key
    of the phantom's and the video writer's source; missing ones written in parallel."""
    from hepascope.train.data import source_digest
    from hepascope.train.datasets.pool import map_pool

    key = source_digest(*SESSION_CODE)[:10]
    paths = [cache / f"session-s{s}-{SEGMENTS}x{segment_s:g}s-{key}.mp4" for s in seeds]
    todo = [(str(p), s, segment_s) for p, s in zip(paths, seeds, strict=True)
            if not (p.is_file() and p.with_suffix(".truth.json").is_file())]
    if todo:  # plain lines (the workers print their progress), no spinner to garble
        t0 = time.monotonic()
        console.print(f"writing {len(todo)} phantom session(s) of {SEGMENTS * segment_s:g} s "
                      "(cached for later runs)...")
        map_pool(_write_session_job, todo, min(len(todo), os.cpu_count() or 1))
        console.print(f"wrote {len(todo)} phantom session(s) in {time.monotonic() - t0:.0f} s")
    return paths


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


def _live_run(session: Path, model: Path, out: Path, console: Any) -> tuple[dict[str, Any],
                                                                          list[dict[str, Any]]]:
    """Replay ``session`` at its own 30 fps through the full pipeline with the overlay
    subscribed over loopback; (pipeline summary + overlay figures, published results)."""
    from hepascope.core.config import load_config
    from hepascope.stream.app import RunRequest, run_pipeline
    from hepascope.stream.overlay import run_overlay

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

    with console.status(f"replaying {session.name} at 30 fps through the pipeline..."):
        summary = run_pipeline(RunRequest(
            source=str(session), model=model, config=load_config(), publish="tcp://127.0.0.1:*",
            listeners=(log,), on_bound=start_overlay))
        time.sleep(0.4)  # a few frames of STALE at the end, as the surgeon would see
        stop_overlay.set()
        thread = overlay_out.pop("_thread", None)
        if thread is not None:
            thread.join(timeout=30)
    if overlay_err:
        raise overlay_err[0]
    summary["overlay"] = {k: v for k, v in overlay_out.items() if k != "out"}
    return summary, log.results


def _lockstep_scores(sessions: Sequence[Path], model: Path, labels: Sequence[str],
                     console: Any) -> tuple[list[Any], dict[str, Any]]:
    """Every frame of every session through the model in lockstep; (all frame scores,
    figures per session)."""
    from hepascope.core.config import load_config
    from hepascope.train.demo_score import frame_scores, load_truth, lockstep_session, score

    rows: list[Any] = []
    per: dict[str, Any] = {}
    for path in sessions:
        with console.status(f"scoring {path.name} in lockstep (every frame)..."):
            res = lockstep_session(path, model, load_config())
        r = frame_scores(res, load_truth(path), path.stem)
        s = score(r, labels)
        per[path.stem] = {k: v for k, v in s.items()
                          if k not in ("per_patient", "confusion", "after_patient_change")}
        rows += r
    return rows, per


def run_demo(out: Path, *, retrain: bool = False, recipe: Any = None,
             session_seeds: Sequence[int] = SESSION_SEEDS,
             segment_s: float = SEGMENT_S, fp32: bool = False) -> dict[str, Any]:
    """The demo: sessions and model (cached or packaged), the first session live through
    the pipeline and overlay, every session scored in lockstep; writes report.json. The
    model runs in the precision its manifest chose (INT8 where it pays), or fp32 with
    ``fp32``."""
    from rich.console import Console

    from hepascope.train.demo_model import ensure_model, verify_model
    from hepascope.train.demo_score import frame_scores, load_truth, score

    console = Console(stderr=True)
    t0 = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    sessions = ensure_sessions(cache, console, session_seeds, segment_s)
    model = ensure_model(cache, console, retrain=retrain, recipe=recipe)
    manifest = verify_model(model)
    precision = _precision(manifest, fp32)
    graph = model / HEAD_FILE if precision["ran"] == "fp32" else model  # a dir: its manifest's
    t_ready = time.monotonic()
    summary, live_results = _live_run(sessions[0], graph, out, console)
    labels = tuple(live_results[0]["labels"]) if live_results else ()
    live = score(frame_scores(live_results, load_truth(sessions[0]), sessions[0].stem), labels)
    t_live = time.monotonic()
    rows, per_session = _lockstep_scores(sessions, graph, labels, console)
    snap = snapshot(out / "overlay.mp4", out / "overlay.mp4.jsonl", out / "snapshot.png")
    report = {
        "frames_in": summary["frames_in"], "frames_out": summary["frames_out"],
        "dropped": summary["dropped"], "source_fps": 30.0,
        "results_per_s": summary["results_per_s"],
        "latency_capture_to_publish_ms": {"p50": summary["latency_p50_ms"],
                                          "p99": summary["latency_p99_ms"],
                                          "max": summary["latency_max_ms"]},
        "stage_mean_ms": summary["stage_mean_ms"],
        "model": summary["model"], "model_dir": str(model), "engine": summary["engine"],
        "model_files_sha256": manifest["files"], "model_recipe": manifest.get("recipe"),
        "precision": precision,
        "scored": {"how": "lockstep replay of every frame (stream.replay), one ORT thread",
                   **score(rows, labels)},
        "per_session": per_session,
        "live_accuracy": {"how": f"the live pipeline's results for {sessions[0].name}",
                          **live},
        "overlay": summary["overlay"], "snapshot_frame": snap,
        "sessions": [str(p) for p in sessions],
        "seconds": {"setup": round(t_ready - t0, 1), "live": round(t_live - t_ready, 1),
                    "total": round(time.monotonic() - t0, 1)},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine()},
        "date": time.strftime("%Y-%m-%d"),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    _print_table(console, report, out)
    return report


def _precision(manifest: dict[str, Any], fp32: bool) -> dict[str, Any]:
    """What the manifest chose (and why), and what runs: fp32 when forced or chosen."""
    block = manifest.get("precision") or {}
    chosen = block.get("precision", "fp32")
    return {"manifest": chosen, "ran": "fp32" if fp32 else chosen,
            "int8_graphs": block.get("int8_graphs", []) if not fp32 else [],
            "reason": "forced (--fp32)" if fp32 and chosen != "fp32"
            else block.get("reason", "no precision step recorded")}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _print_table(console: Any, r: dict[str, Any], out: Path) -> None:
    from rich.table import Table

    t = Table(title=f"hepascope demo -> {out}", show_header=False)
    lat = r["latency_capture_to_publish_ms"]
    sc, live = r["scored"], r["live_accuracy"]
    classes = ", ".join(f"{c} {_pct(v['accuracy_labelled'])}"
                        for c, v in sc["per_class"].items())
    for k, v in (("model / engine", f"{r['model']} / {r['engine']} "
                                    f"({r['precision']['ran']})"),
                 ("frames in / out / dropped", f"{r['frames_in']} / {r['frames_out']} / "
                                               f"{r['dropped']}"),
                 ("results/s (source 30 fps)", f"{r['results_per_s']:.1f}"),
                 ("capture->publish p50 / p99", f"{lat['p50']:.1f} / {lat['p99']:.1f} ms"),
                 ("scored (lockstep)", f"{sc['patients']} patients, {sc['sessions']} sessions, "
                                       f"{sc['frames']} frames"),
                 ("accuracy labelled / all frames", f"{_pct(sc['accuracy_labelled'])} / "
                                                    f"{_pct(sc['accuracy_all'])}"),
                 ("coverage (status ok)", _pct(sc["coverage"])),
                 ("ECE (15 bins)", _pct(sc["ece"])),
                 ("per class (labelled)", classes),
                 ("live path, first session", f"{_pct(live['accuracy_labelled'])} of "
                                              f"{live['frames']} results"),
                 ("seconds (setup / total)", f"{r['seconds']['setup']} / {r['seconds']['total']}")):
        t.add_row(k, v)
    console.print(t)
