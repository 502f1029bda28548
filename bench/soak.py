"""Soak: replay a recording over RTSP for a long time, killing the server every N seconds,
and check that nothing grows without bound::

    python -m hepascope.bench.soak --minutes 60 --kill-every 60 --out DIR [--clip F] [--model M]

The clip (made from the phantom if not given) is served by ``hepascope.stream.rtsp_serve``
in a child process; the pipeline runs in this process (reconnecting RTSP source -> frame ring
-> ONNX classifier -> ZeroMQ publisher) so its own memory, descriptors and threads are what
is measured. Every ``kill_every`` seconds the server gets SIGKILL and is restarted on the
same port ``outage_s`` later. Once a second it samples VmRSS, open descriptors, Python
threads and OS threads (``/proc/self/task``). It writes ``soak.json`` (every sample and the
verdict) and appends one markdown line to ``soak.md``.

The rule (``Limits``): after a warm-up (the first result), the RSS least-squares slope over
the second half of the run must stay under ``rss_mb_per_min``, and descriptors and OS
threads at the end must not exceed their value at the start by more than ``fd_margin`` /
``thread_margin``. A breach is printed and the exit status is 1.

Without ``--model`` a tiny random ONNX classifier is built (needs the ``onnx`` package):
the soak tests the plumbing, not the accuracy; pass a trained export to soak it instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hepascope.core.errors import guard_main
from hepascope.core.export_format import META_LABELS
from hepascope.core.logs import configure as configure_logging

if TYPE_CHECKING:
    from hepascope.stream.pipeline import Pipeline

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Limits:
    """What counts as unbounded growth."""

    rss_mb_per_min: float = 2.0  # RSS slope over the second half of the run (MB/min)
    fd_margin: int = 8
    thread_margin: int = 4


@dataclass(frozen=True, slots=True)
class Sample:
    t_s: float
    rss_mb: float
    fds: int
    threads: int  # Python threads
    tasks: int    # OS threads (native ones of FFmpeg, ONNX Runtime and ZeroMQ included)


def sample(t0: float) -> Sample:
    rss_kb = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
                break
    return Sample(round(time.monotonic() - t0, 3), rss_kb / 1024.0,
                  len(os.listdir("/proc/self/fd")), threading.active_count(),
                  len(os.listdir("/proc/self/task")))


def slope_per_h(ts: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` over ``ts`` (seconds), per hour; 0 with < 2 points."""
    if len(ts) < 2 or max(ts) == min(ts):
        return 0.0
    return float(np.polyfit(np.asarray(ts), np.asarray(ys), 1)[0]) * 3600.0


def judge(samples: list[Sample], limits: Limits) -> tuple[dict[str, Any], list[str]]:
    """Growth figures of ``samples`` (taken after the warm-up) and the breaches of ``limits``."""
    if len(samples) < 4:
        return {}, ["too few samples to judge growth"]
    half = samples[len(samples) // 2:]
    first, last = samples[0], samples[-1]
    fig = {
        "rss_mb_start": round(first.rss_mb, 1), "rss_mb_end": round(last.rss_mb, 1),
        "rss_mb_max": round(max(s.rss_mb for s in samples), 1),
        "rss_slope_mb_per_h": round(slope_per_h([s.t_s for s in samples],
                                                [s.rss_mb for s in samples]), 2),
        "rss_slope_2nd_half_mb_per_h": round(slope_per_h([s.t_s for s in half],
                                                         [s.rss_mb for s in half]), 2),
        **{f"{k}_{w}": v for k in ("fds", "threads", "tasks")
           for w, v in (("start", getattr(first, k)), ("end", getattr(last, k)),
                        ("max", max(getattr(s, k) for s in samples)))},
    }
    bad = []
    if fig["rss_slope_2nd_half_mb_per_h"] > limits.rss_mb_per_min * 60:
        bad.append(f"RSS grows {fig['rss_slope_2nd_half_mb_per_h'] / 60:.2f} MB/min over the "
                   f"second half (limit {limits.rss_mb_per_min} MB/min)")
    if last.fds > first.fds + limits.fd_margin:
        bad.append(f"open descriptors {first.fds} -> {last.fds} (limit +{limits.fd_margin})")
    if last.tasks > first.tasks + limits.thread_margin:
        bad.append(f"OS threads {first.tasks} -> {last.tasks} (limit +{limits.thread_margin})")
    if last.threads > first.threads + limits.thread_margin:
        bad.append(f"Python threads {first.threads} -> {last.threads} "
                   f"(limit +{limits.thread_margin})")
    return fig, bad


def make_clip(path: Path, *, seconds: float = 4.0, fps: int = 30, gop: int = 15,
              seed: int = 0, size: tuple[int, int] | None = None) -> Path:
    """An H.264 MP4 of the phantom's dual-view session (768x384, the default layout), or
    of its frames resized to ``size`` (W, H; the FAST peer's 640x480 single view)."""
    import av
    import cv2

    from hepascope.stream.sources.phantom import PhantomSource

    path.parent.mkdir(parents=True, exist_ok=True)
    n = max(1, round(seconds * fps))
    with av.open(str(path), "w") as out, PhantomSource(seed, fps=fps, max_rate=True) as src:
        stream = out.add_stream("libx264", rate=fps, options={
            "preset": "ultrafast", "tune": "zerolatency", "crf": "28", "g": str(gop),
            "bf": "0"})
        for i, frame in zip(range(n), src, strict=False):
            bgr = frame.bgr() if size is None else cv2.resize(frame.bgr(), size,
                                                              interpolation=cv2.INTER_AREA)
            if i == 0:
                stream.height, stream.width = bgr.shape[:2]
                stream.pix_fmt = "yuv420p"
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(bgr, np.uint8), format="bgr24")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(vf))
        out.mux(stream.encode())
    return path


def make_model(path: Path) -> Path:
    """A tiny random ONNX classifier over a 64x64 B-mode view (mean pool -> linear ->
    softmax) with the labels the pipeline reads from its metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    labels = ["normal", "cyst", "hemangioma", "hcc", "metastasis", "fatty_sparing"]
    nodes = [helper.make_node("GlobalAveragePool", ["bmode"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["feat"]),
             helper.make_node("Gemm", ["feat", "W", "b"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    inits = [numpy_helper.from_array(rng.normal(0, 1, (1, 6)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(0, 0.1, (6,)).astype(np.float32), "b")]
    graph = helper.make_graph(
        nodes, "soak-classifier",
        [helper.make_tensor_value_info("bmode", TensorProto.FLOAT, [1, 1, 64, 64])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {META_LABELS: json.dumps(labels)})
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


class _Count:
    """A result listener that counts results."""

    def __init__(self) -> None:
        self.n = 0
        self.first = threading.Event()

    def on_result(self, msg: dict[str, Any]) -> None:
        self.n += 1
        self.first.set()


def _kill_cycle(server: Any, runner: threading.Thread, count: _Count, box: dict[str, Any], *,
                minutes: float, kill_every_s: float, outage_s: float, sample_s: float
                ) -> tuple[list[Sample], int, float, int]:
    """Wait for the first result, then SIGKILL the server every ``kill_every_s`` (restarted
    ``outage_s`` later) for ``minutes``, sampling every ``sample_s``: (samples, kills, run
    seconds, results counted)."""
    samples: list[Sample] = []
    kills = 0
    if not count.first.wait(30.0):
        raise RuntimeError(f"no result within 30 s of starting: {box.get('error')!r}")
    t0 = time.monotonic()
    n0 = count.n
    samples.append(sample(t0))
    next_kill, next_sample, restart_at = t0 + kill_every_s, t0 + sample_s, None
    end = t0 + minutes * 60.0
    while runner.is_alive() and (now := time.monotonic()) < end:
        if now >= next_kill:
            server.kill()  # SIGKILL: the camera loses power
            kills += 1
            restart_at, next_kill = now + outage_s, next_kill + kill_every_s
        if restart_at is not None and now >= restart_at:
            server.start()  # same port
            restart_at = None
        if now >= next_sample:
            samples.append(sample(t0))
            next_sample += sample_s
        time.sleep(max(0.0, min(next_sample, next_kill, restart_at or end, end)
                       - time.monotonic()))
    return samples, kills, time.monotonic() - t0, count.n - n0


def _runner(pipe: Pipeline, box: dict[str, Any]) -> threading.Thread:
    """The thread (not started) that runs ``pipe`` until stopped: its summary goes into
    ``box["summary"]``, or what it raised into ``box["error"]``."""

    def run() -> None:
        try:
            box["summary"] = pipe.run(None)
        except BaseException as e:  # re-raised by run_soak, in the caller's thread
            box["error"] = e

    return threading.Thread(target=run, name="soak-pipeline", daemon=True)


def run_soak(*, minutes: float, kill_every_s: float, out: Path, clip: Path | None = None,
             model: Path | None = None, outage_s: float = 1.0, limits: Limits | None = None,
             sample_s: float = 1.0) -> dict[str, Any]:
    """Run the soak (module docstring); write ``soak.json`` and a ``soak.md`` line to ``out``
    and return the report (``ok`` False when a limit was breached, listed in ``breaches``)."""
    from hepascope.core.config import load_config
    from hepascope.stream.model_loader import open_model
    from hepascope.stream.pipeline import compose
    from hepascope.stream.publish import Publisher
    from hepascope.stream.rtsp_serve import RtspServer
    from hepascope.stream.sources.reconnect import Reconnecting
    from hepascope.stream.sources.rtsp import RtspSource

    if minutes <= 0 or kill_every_s <= outage_s or sample_s <= 0:
        raise ValueError("need minutes > 0, kill_every_s > outage_s and sample_s > 0")
    limits = limits or Limits()
    out.mkdir(parents=True, exist_ok=True)
    clip = clip or make_clip(out / "soak-clip.mp4")
    model = model or make_model(out / "soak-model.onnx")
    cfg = load_config()
    server = RtspServer(clip, loop=True, max_lifetime=kill_every_s + 120).start()
    url = server.url
    classifier = open_model(model, cfg)
    publisher = Publisher("tcp://127.0.0.1:*", send_hwm=cfg.publish.send_hwm)
    source = Reconnecting(lambda: RtspSource(url, open_timeout_s=2.0, read_timeout_s=1.0),
                          backoff_initial_s=0.1, backoff_max_s=1.0)
    count = _Count()
    pipe = compose(source, classifier, publisher, cfg.pipeline, listeners=(count,))
    box: dict[str, Any] = {}
    runner = _runner(pipe, box)
    try:
        runner.start()
        samples, kills, run_s, results = _kill_cycle(
            server, runner, count, box, minutes=minutes, kill_every_s=kill_every_s,
            outage_s=outage_s, sample_s=sample_s)
    finally:
        pipe.stop()
        source.close()  # cuts a reconnect backoff short
        runner.join(15.0)
        server.stop()
        publisher.close()
        classifier.close()
    if "error" in box:
        raise box["error"]
    fig, breaches = judge(samples, limits)
    report = {
        "minutes": minutes, "kill_every_s": kill_every_s, "outage_s": outage_s,
        "clip": str(clip), "model": str(model), "run_s": round(run_s, 1), "kills": kills,
        "results": results, "results_per_s": round(results / run_s, 2), **fig,
        "source": source.stats(), "pipeline": box.get("summary", {}),
        "limits": asdict(limits), "breaches": breaches, "ok": not breaches,
        "samples": [asdict(s) for s in samples],
    }
    (out / "soak.json").write_text(json.dumps(report, indent=1, default=str))
    _append_md(out / "soak.md", report)
    return report


def _append_md(path: Path, r: dict[str, Any]) -> None:
    head = ("| minutes | kill every s | kills | reconnects | frames lost | results/s | "
            "RSS MB start/end | RSS slope MB/h (2nd half) | fds start/end/max | "
            "OS threads start/end/max | verdict |\n" + "|---" * 11 + "|\n")
    s = r["source"]
    line = (f"| {r['minutes']:g} | {r['kill_every_s']:g} | {r['kills']} | {s['reconnects']} | "
            f"{s['frames_lost']} | {r['results_per_s']} | {r.get('rss_mb_start')}/"
            f"{r.get('rss_mb_end')} | {r.get('rss_slope_mb_per_h')} "
            f"({r.get('rss_slope_2nd_half_mb_per_h')}) | {r.get('fds_start')}/"
            f"{r.get('fds_end')}/{r.get('fds_max')} | {r.get('tasks_start')}/"
            f"{r.get('tasks_end')}/{r.get('tasks_max')} | "
            f"{'ok' if r['ok'] else 'FAIL: ' + '; '.join(r['breaches'])} |\n")
    with path.open("a") as f:
        if f.tell() == 0:
            f.write(head)
        f.write(line)


@guard_main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hepascope.bench.soak",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="run time (default 60)")
    ap.add_argument("--kill-every", type=float, default=60.0, metavar="S",
                    help="SIGKILL the RTSP server every S seconds (default 60)")
    ap.add_argument("--outage", type=float, default=1.0, metavar="S",
                    help="restart the server S seconds after each kill (default 1)")
    ap.add_argument("--out", type=Path, required=True, metavar="DIR")
    ap.add_argument("--clip", type=Path, help="H.264 MP4 to serve (default: a phantom clip)")
    ap.add_argument("--model", type=Path, help="ONNX model or export (default: a tiny one)")
    ap.add_argument("--rss-mb-per-min", type=float, default=Limits().rss_mb_per_min,
                    help="RSS slope limit over the second half (default %(default)s)")
    a = ap.parse_args(argv)
    configure_logging(logging.WARNING, name="soak")
    r = run_soak(minutes=a.minutes, kill_every_s=a.kill_every, out=a.out, clip=a.clip,
                 model=a.model, outage_s=a.outage,
                 limits=Limits(rss_mb_per_min=a.rss_mb_per_min))
    print(f"soak {r['run_s']} s, {r['kills']} kills, reconnects {r['source']['reconnects']}, "
          f"{r['results_per_s']} results/s, RSS {r['rss_mb_start']} -> {r['rss_mb_end']} MB "
          f"(slope {r['rss_slope_mb_per_h']} MB/h), fds {r['fds_start']} -> {r['fds_end']}, "
          f"OS threads {r['tasks_start']} -> {r['tasks_end']}: "
          f"{'ok' if r['ok'] else 'FAIL'}")
    for b in r["breaches"]:
        print(f"  breach: {b}")
    print(f"wrote {a.out / 'soak.json'}")
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
