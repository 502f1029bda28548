"""What ``hepascope run`` and ``hepascope replay`` do, as functions the CLI, the demo and
tests call: build the engine, classifier (and a clip model beside it, if asked), source,
publisher and recorder, compose, run."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hepascope.core.config import Config
from hepascope.core.errors import ConfigError
from hepascope.engines import resolve_backend
from hepascope.stream.batch import open_batch_model
from hepascope.stream.igtl_out import serve_igtl
from hepascope.stream.model_loader import open_clip_model
from hepascope.stream.multi import MultiStream
from hepascope.stream.pipeline import ResultListener, compose
from hepascope.stream.publish import Publisher
from hepascope.stream.record import SessionRecorder
from hepascope.stream.results import SideModel
from hepascope.stream.security import ServerKeys
from hepascope.stream.sources import SourceOptions, open_source
from hepascope.stream.supervisor import open_inference

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunRequest:
    source: str
    model: Path
    config: Config
    options: SourceOptions = field(default_factory=SourceOptions)
    publish: str | None = None          # None: the config's endpoint
    record: Path | None = None
    duration_s: float | None = None
    engine: str = "onnxruntime"  # onnxruntime | tensorrt | torch | auto
    threads: int | None = None
    labels: tuple[str, ...] | None = None
    listeners: tuple[ResultListener, ...] = ()     # told of every published result
    on_bound: Callable[[str], None] | None = None  # called with the bound endpoint
    clip_model: Path | None = None  # a clip export run beside the main model, own thread
    clip_every: int = 30            # the clip model runs on every k-th source frame
    inference: str | None = None    # process | thread; None: the config's pipeline.inference
    igtl_serve: str | None = None   # [HOST:]PORT of an OpenIGTLink results server; None: config


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP set ``stop`` instead of killing mid-write: files are finalised
    and the frame ring (patient images in /dev/shm) is removed. SIGHUP: the terminal or
    ssh session that started the run went away."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = [signal.SIGINT, signal.SIGTERM]
    if hasattr(signal, "SIGHUP"):  # not on Windows
        signals.append(signal.SIGHUP)
    previous = {s: signal.getsignal(s) for s in signals}
    for s in previous:
        signal.signal(s, lambda *_: stop.set())
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_pipeline(req: RunRequest) -> dict[str, Any]:
    """Run the live path once; return its summary (frames in/out/dropped, latencies, and
    last the recording's answer of each model, stream/answer.py).

    Everything opened is closed in reverse order whatever fails (ExitStack); the source is
    opened first so a bad input fails before anything is bound or recorded."""
    engine_name = resolve_backend(req.model, req.engine)  # "auto" decided (and logged) here
    with ExitStack() as stack:
        source = open_source(req.source, req.options)  # not open yet: is it paced?
        # in a supervised child process by default: its model-load errors come back here
        unpaced = getattr(source, "unpaced", False)
        batch = req.config.pipeline.unpaced_batch if unpaced else None
        classifier = open_inference(req.inference or req.config.pipeline.inference, req.model,
                                    req.config, backend=engine_name, threads=req.threads,
                                    labels=req.labels, batch=batch)
        stack.callback(classifier.close)
        side, clip_engine = open_side_models(req, stack)
        source.open()
        stack.callback(source.close)  # the grabber closes it too; close() is idempotent
        pub_cfg = req.config.publish
        publisher = open_publisher(req)
        stack.callback(publisher.close)
        if req.on_bound is not None:
            req.on_bound(publisher.bound)
        listeners: tuple[ResultListener, ...] = req.listeners
        if igtl := serve_igtl(req.igtl_serve or pub_cfg.igtl_serve, pub_cfg.insecure):
            stack.callback(igtl.close)
            listeners = (*listeners, igtl)
        recorder = open_recorder(req, stack, source.source_id, engine_name, clip_engine)
        if recorder is not None:
            listeners = (*listeners, recorder)
        pipeline = compose(source, classifier, publisher, req.config.pipeline, side=side,
                           listeners=listeners, engine_name=engine_name,
                           on_ring=recorder.attach if recorder else None)
        log.info("running %s -> %s%s (%s) -> %s", source.source_id, req.model.name,
                 "".join(f" + {m.model_name}" for m in side), engine_name, publisher.bound)
        with stop_on_signals(pipeline.stop_event):
            summary = pipeline.run(req.duration_s)
        if recorder is not None:
            stack.pop_all().close()  # finalise the recording before reporting on it
            summary["record_dir"] = str(req.record)
            summary["record_dropped"] = recorder.dropped
        if clip_engine is not None:
            summary["clip_engine"] = clip_engine
        summary.update({"source": source.source_id, "model": classifier.model_name,
                        "engine": engine_name, "endpoint": publisher.bound,
                        "published": publisher.sent, "publish_dropped": publisher.dropped,
                        **(igtl.stats() if igtl else {})})
        return answers_last(summary)


def run_streams(req: RunRequest, specs: Sequence[str]) -> dict[str, Any]:
    """Run several sources through one model that batches across them (stream/multi.py),
    in this process; return the summary (each stream's figures under ``streams``). A
    recording, a clip model or the OpenIGTLink output are one stream's: refused here, as is
    a window model (``ModelError``)."""
    if req.record is not None or req.clip_model is not None or req.igtl_serve is not None:
        raise ConfigError("--record, --clip-model and --igtl-serve take one --source")
    engine_name = resolve_backend(req.model, req.engine)
    with ExitStack() as stack:
        model = open_batch_model(req.model, req.config, len(specs), backend=engine_name,
                                 threads=req.threads, labels=req.labels)
        stack.callback(model.close)
        sources = [open_source(spec, req.options) for spec in specs]
        for source in sources:  # a bad input fails before anything is bound
            source.open()
            stack.callback(source.close)
        publisher = open_publisher(req)
        stack.callback(publisher.close)
        if req.on_bound is not None:
            req.on_bound(publisher.bound)
        multi = MultiStream(sources, model, publisher, req.config, engine_name=engine_name,
                            listeners=req.listeners)
        log.info("running %s -> %s (%s, batched) -> %s",
                 ", ".join(s.source_id for s in sources), req.model.name, engine_name,
                 publisher.bound)
        with stop_on_signals(multi.stop_event):
            summary = multi.run(req.duration_s)
        return {**summary, "endpoint": publisher.bound, "published": publisher.sent,
                "publish_dropped": publisher.dropped}


def open_side_models(req: RunRequest, stack: ExitStack
                     ) -> tuple[tuple[SideModel, ...], str | None]:
    """The clip model beside the main one, if asked, closed by ``stack``: (the side
    models, the clip model's engine or None)."""
    if req.clip_model is None:
        return (), None
    clip_engine = resolve_backend(req.clip_model, req.engine)
    # one engine thread: it shares the cores with the main model, never takes them
    clip = open_clip_model(req.clip_model, backend=clip_engine, threads=1,
                           every=req.clip_every)
    stack.callback(clip.close)
    return (clip,), clip_engine


def open_publisher(req: RunRequest) -> Publisher:
    """The results publisher: ``req.publish`` or the config's endpoint, with its CURVE keys
    (if configured)."""
    pub_cfg = req.config.publish
    return Publisher(req.publish or pub_cfg.endpoint, send_hwm=pub_cfg.send_hwm,
                     keys=ServerKeys.from_dir(Path(pub_cfg.keys)) if pub_cfg.keys
                     else None, insecure=pub_cfg.insecure)


def open_recorder(req: RunRequest, stack: ExitStack, source_id: str, engine_name: str,
                  clip_engine: str | None) -> SessionRecorder | None:
    """The session recorder (closed by ``stack``) if ``req.record`` asks for one, its
    metadata naming the source, the models and their engines."""
    if req.record is None:
        return None
    meta = {"source": req.source, "source_id": source_id,
            "model": str(req.model.resolve()), "engine": engine_name}
    if req.clip_model is not None:
        meta["clip_model"] = str(req.clip_model.resolve())
        meta["clip_engine"] = str(clip_engine)
    recorder = SessionRecorder(req.record, meta)
    stack.callback(recorder.close)
    return recorder


def answers_last(summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` with the recording's answers as its last keys (what a reader of the
    JSON, as of the terminal, looks for at the end)."""
    return {**{k: v for k, v in summary.items() if k not in ("answer", "answers")},
            **{k: summary[k] for k in ("answer", "answers") if k in summary}}
