"""CLI registration of the live path: ``hepascope run``, ``replay`` and ``overlay`` (the
command's root and exit statuses: ``hepascope.cli``). Handlers import what they run."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from hepascope.core.argtypes import positive
from hepascope.core.errors import ConfigError, HepascopeError

log = logging.getLogger("hepascope")

EXIT_RESULTS_LOST = 3  # the source ended while the model was down: frames without result


def _source_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("source pacing")
    g.add_argument("--speed", type=positive(float), default=1.0,
                   help="file replay: play X times real time (default 1)")
    g.add_argument("--max-rate", action="store_true",
                   help="file replay: ignore timestamps, as fast as possible")
    g.add_argument("--loop", action="store_true", help="file replay: start again at the end")
    g.add_argument("--width", type=positive(int), help="capture card: requested width")
    g.add_argument("--height", type=positive(int), help="capture card: requested height")
    g.add_argument("--fps", type=positive(float), help="capture card / phantom: frame rate")
    g.add_argument("--no-reconnect", action="store_true",
                   help="rtsp, igtl: fail when the stream fails instead of reconnecting with "
                   "backoff")
    g.add_argument("--watchdog", type=positive(float), default=2.0, metavar="S",
                   help="capture card: replace a grabber whose read hangs S seconds (default 2)")


def _pipeline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--publish", metavar="ENDPOINT",
                   help="ZeroMQ endpoint to bind (default from config: tcp://127.0.0.1:5555)")
    p.add_argument("--config", type=Path, help="YAML config (default: the packaged one)")
    p.add_argument("--duration", type=positive(float), metavar="S", help="stop after S seconds")
    p.add_argument("--engine", default="onnxruntime",
                   choices=["onnxruntime", "tensorrt", "torch", "auto"],
                   help="inference backend (default onnxruntime, CPU): tensorrt needs the "
                   "plans of 'hepascope build'; torch runs the weights an export keeps (CUDA "
                   "fp16 with CUDA graphs where torch sees a GPU, else CPU eager fp32); auto: "
                   "tensorrt, else torch on CUDA, else onnxruntime, logged with the reason")
    p.add_argument("--threads", type=positive(int), help="inference threads (default: all cores)")
    p.add_argument("--labels", help="comma-separated class names if the model has none")
    p.add_argument("--summary", type=Path, metavar="FILE.json", help="write the run summary here")
    p.add_argument("--inference", choices=["process", "thread"],
                   help="run the model in a supervised child process, restarted if it crashes "
                   "while capture and recording go on, or in a thread (default from config: "
                   "process)")
    p.add_argument("--keys", type=Path, metavar="DIR",
                   help="CURVE: publish encrypted and authenticated; DIR holds server.key_secret "
                   "(this publisher's pair, from 'hepascope keys DIR') and clients/*.key (the "
                   "public keys of the subscribers let in; any other is rejected and logged)")
    p.add_argument("--insecure", action="store_true",
                   help="allow binding a non-loopback address without --keys (warned)")


def _request(args: argparse.Namespace, source: str, model: Path) -> Any:
    from hepascope.core.config import load_config
    from hepascope.stream.app import RunRequest
    from hepascope.stream.sources import SourceOptions

    opts = SourceOptions(speed=args.speed, max_rate=args.max_rate, loop=args.loop,
                         width=args.width, height=args.height, fps=args.fps,
                         reconnect=not args.no_reconnect, watchdog_s=args.watchdog)
    labels = tuple(x.strip() for x in args.labels.split(",")) if args.labels else None
    if getattr(args, "igtl_serve", None) is not None:
        from hepascope.core.config import parse_bind

        parse_bind(args.igtl_serve)  # a bad value fails before anything starts
    config = load_config(args.config)
    if args.keys is not None or args.insecure:
        config = replace(config, publish=replace(
            config.publish, keys=str(args.keys) if args.keys else config.publish.keys,
            insecure=args.insecure or config.publish.insecure))
    return RunRequest(source=source, model=model, config=config, options=opts,
                      publish=args.publish, record=getattr(args, "record", None),
                      duration_s=args.duration, engine=args.engine, threads=args.threads,
                      labels=labels, clip_model=getattr(args, "clip_model", None),
                      clip_every=getattr(args, "clip_every", 30), inference=args.inference,
                      igtl_serve=getattr(args, "igtl_serve", None))


def _report(summary: dict[str, Any], path: Path | None) -> None:
    keys = ("frames_in", "frames_out", "dropped", "fps_in", "results_per_s",
            "latency_p50_ms", "latency_p99_ms")
    print("  ".join(f"{k}={summary[k]}" for k in keys))
    for m in summary.get("models", [])[1:]:  # side models (the clip model), one line each
        print(f"  {m['model']}: " + "  ".join(
            f"{k}={m[k]}" for k in ("frames_seen", "frames_out", "dropped", "results_per_s",
                                    "latency_p50_ms", "latency_p99_ms")))
    _answers(summary.get("answers", []))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2))


def _answers(answers: Sequence[dict[str, Any]]) -> None:
    """The recording's answer, one line per stream and model: the summary's last lines."""
    from hepascope.stream.answer import answer_line

    for a in answers:
        print(answer_line(a))


def _results_lost(summary: dict[str, Any]) -> int:
    """0, or ``EXIT_RESULTS_LOST`` with one line when the source's last frames got no
    result (the model was hung or dead when it ended)."""
    lost = int(summary.get("results_lost", 0))
    if not lost:
        return 0
    print(f"hepascope: error: results lost: the source ended while the model was down; its "
          f"last {lost} frames got no result", file=sys.stderr)
    return EXIT_RESULTS_LOST


def cmd_run(args: argparse.Namespace) -> int:
    from hepascope.stream.app import run_pipeline, run_streams

    if len(args.source) > 1:  # several streams, one model batching across them
        summary = run_streams(_request(args, args.source[0], args.model), args.source)
        _report_streams(summary, args.summary)
        return 0
    summary = run_pipeline(_request(args, args.source[0], args.model))
    _report(summary, args.summary)
    return _results_lost(summary)


def _report_streams(summary: dict[str, Any], path: Path | None) -> None:
    """One line per stream of a multi-stream run (and the summary's JSON to ``path``)."""
    keys = ("frames_in", "frames_out", "dropped", "results_per_s", "latency_p50_ms",
            "latency_p99_ms", "stale")
    for s in summary["streams"]:
        print(f"{s['source']}: " + "  ".join(f"{k}={s[k]}" for k in keys)
              + (f"  error={s['error']}" if s["error"] else ""))
    print(f"batches={summary['batches']}  frames_per_batch={summary['frames_per_batch']}")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2))


def cmd_replay(args: argparse.Namespace) -> int:
    from hepascope.stream.app import run_pipeline
    from hepascope.stream.record import VIDEO_NAME, read_index, read_session

    if args.deterministic:
        return _replay_lockstep(args)
    meta = read_session(args.dir)
    model = args.model or (Path(meta["model"]) if meta.get("model") else None)
    if model is None:
        raise HepascopeError(f"{args.dir}: recording names no model; pass --model")
    summary = run_pipeline(_request(args, str(args.dir / VIDEO_NAME), model))
    if not meta.get("complete", True):  # killed while recording: say how much replayed
        print(f"recording interrupted: {len(read_index(args.dir)[0])} frames indexed, "
              f"{summary['frames_in']} decodable and replayed")
    _report(summary, args.summary)
    return _results_lost(summary)


def _replay_lockstep(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from hepascope.core.config import load_config
    from hepascope.stream.replay import ENGINE, THREADS, replay_deterministic

    clash = [flag for flag, bad in (
        ("--engine", args.engine != ENGINE), ("--threads", args.threads not in (None, THREADS)),
        ("--loop", args.loop), ("--duration", args.duration is not None),
        ("--publish", args.publish is not None), ("--speed", args.speed != 1.0),
        ("--max-rate", args.max_rate)) if bad]
    if clash:
        raise ConfigError(f"--deterministic replays every frame in lockstep on {ENGINE} with "
                          f"{THREADS} thread; it takes no {', '.join(clash)}")
    if args.results is None:
        raise ConfigError("--deterministic needs --results OUT.jsonl")
    labels = tuple(x.strip() for x in args.labels.split(",")) if args.labels else None
    rep = replay_deterministic(args.dir, args.results, model=args.model,
                               config=load_config(args.config), labels=labels)
    print(f"results={rep.count} frames_indexed={rep.frames_indexed} "
          f"frames_decoded={rep.frames_decoded} complete={str(rep.complete).lower()} "
          f"wall_s={rep.wall_s:.2f}")
    print(f"sha256={rep.sha256}  {rep.results}")
    _answers(rep.answers)
    if args.summary is not None:
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        summary = {**asdict(rep), "results": str(rep.results)}
        summary["answer"] = rep.answers[0]  # one model: the first answer is its own
        summary["answers"] = summary.pop("answers")  # last, as in the live summary
        args.summary.write_text(json.dumps(summary, indent=2))
    return 0


def cmd_overlay(args: argparse.Namespace) -> int:
    from hepascope.core.config import load_config
    from hepascope.stream.app import stop_on_signals
    from hepascope.stream.overlay import run_overlay
    from hepascope.stream.security import ClientKeys
    from hepascope.stream.sources import open_source

    cfg = load_config(args.config)
    server_key = args.server_key or cfg.overlay.server_key
    client_key = args.client_key or cfg.overlay.client_key
    if (server_key is None) != (client_key is None):
        raise ConfigError("--server-key and --client-key go together")
    keys = ClientKeys.from_files(Path(server_key), Path(client_key)) \
        if server_key and client_key else None
    out = args.out
    if out is None and not args.window:
        out = Path("overlay.mp4")  # headless by default
    background = open_source(args.background) if args.background else None
    stop = threading.Event()
    with stop_on_signals(stop):
        summary = run_overlay(args.connect or cfg.publish.endpoint, out=out, window=args.window,
                              background=background, stale_ms=args.stale_ms or cfg.overlay.stale_ms,
                              fps=args.fps or cfg.overlay.fps, duration_s=args.duration, stop=stop,
                              heartbeat_timeout_ms=args.heartbeat_ms
                              or cfg.overlay.heartbeat_timeout_ms, keys=keys)
    print("  ".join(f"{k}={v}" for k, v in summary.items()))
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``run``, ``replay`` and ``overlay`` on the ``hepascope`` command."""
    p = sub.add_parser("run", help="run the live pipeline: source -> model -> results channel",
                       description="Capture frames from SPEC, classify the newest one "
                       "continuously, publish results and telemetry over ZeroMQ.")
    p.add_argument("--source", required=True, action="append", metavar="SPEC",
                   help="a video file, rtsp://..., udp://HOST:PORT, "
                   "igtl://HOST:PORT[?device=NAME], v4l2:/dev/videoN, cam:N, phantom:SEED, "
                   "shm:NAME, FILE.dcm; repeated: several streams in one process, whose one "
                   "single-frame model takes the newest frame of each as one batch")
    p.add_argument("--model", required=True, type=Path, metavar="PATH.onnx", help="ONNX classifier")
    p.add_argument("--record", type=Path, metavar="DIR", help="record frames and results to DIR")
    p.add_argument("--clip-model", type=Path, metavar="PATH",
                   help="a clip export (3D-CNN over a window of CEUS frames) to run beside "
                   "--model, in its own thread; its results carry its own model name")
    p.add_argument("--clip-every", type=positive(int), default=30, metavar="K",
                   help="run the clip model on every K-th source frame (default 30)")
    p.add_argument("--igtl-serve", metavar="[HOST:]PORT",
                   help="also send each result over OpenIGTLink (3D Slicer's OpenIGTLinkIF): "
                   "a STRING of device 'hepascope' with status, label and confidence, stamped "
                   "with the capture time (needs the igtl extra; beyond loopback: --insecure)")
    _pipeline_args(p)
    _source_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("replay", help="feed a recording back through the pipeline",
                       description="Replay DIR (made by run --record) at its recorded pacing.")
    p.add_argument("dir", type=Path, metavar="DIR")
    p.add_argument("--model", type=Path, help="model (default: the one recorded)")
    p.add_argument("--deterministic", action="store_true",
                   help="lockstep replay on a virtual clock: every recorded frame inferred in "
                   "order on onnxruntime with one thread, times from the recording, latencies "
                   "0; the result stream (--results) is bit-identical run after run; prints "
                   "its sha256")
    p.add_argument("--results", type=Path, metavar="OUT.jsonl",
                   help="--deterministic: write the result stream here (sorted-key JSON lines)")
    _pipeline_args(p)
    _source_args(p)
    p.set_defaults(func=cmd_replay)
    _add_overlay(sub)


def _add_overlay(sub: argparse._SubParsersAction) -> None:
    """Register ``overlay``."""
    p = sub.add_parser("overlay", help="draw results over the ultrasound, to MP4 or a window",
                       description="Subscribe to a pipeline's results and draw label, "
                       "probabilities, FPS and latency; NO DATA / STALE when results stop.")
    p.add_argument("--connect", metavar="ENDPOINT", help="results endpoint (default from config)")
    p.add_argument("--background", metavar="SPEC",
                   help="background source spec (default: the pipeline's own frames)")
    p.add_argument("--out", type=Path, metavar="FILE.mp4", help="write the overlay video here")
    p.add_argument("--window", action="store_true", help="show an OpenCV window")
    p.add_argument("--duration", type=positive(float), metavar="S", help="stop after S seconds")
    p.add_argument("--stale-ms", type=positive(float), help="STALE threshold (default 250)")
    p.add_argument("--fps", type=positive(float), help="display rate (default 30)")
    p.add_argument("--heartbeat-ms", type=positive(float), metavar="MS",
                   help="NO DATA when nothing was published for MS (default 600)")
    p.add_argument("--server-key", type=Path, metavar="FILE",
                   help="CURVE: the publisher's public key file (server.key): only it is "
                   "accepted")
    p.add_argument("--client-key", type=Path, metavar="FILE_SECRET",
                   help="CURVE: this overlay's .key_secret (its .key must be in the "
                   "publisher's clients/ allow-list)")
    p.add_argument("--config", type=Path, help="YAML config (default: the packaged one)")
    p.set_defaults(func=cmd_overlay)
