"""The composed live path: ring, newest-frame-wins inference, results and telemetry."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from support.models import make_classifier
from support.runs import ListSink

from hepascope.core.config import PipelineConfig, load_config
from hepascope.core.messages import TOPIC_RESULT, TOPIC_TELEMETRY, encode, validate_result
from hepascope.engines import open_engine
from hepascope.stream.classifier import FrameClassifier
from hepascope.stream.pipeline import compose
from hepascope.stream.publish import Publisher, Subscriber
from hepascope.stream.sources.file import FileSource


def _run(video: Path, model: Path, duration_s: float = 30,
         **source_kw: Any) -> tuple[dict[str, Any], ListSink]:
    clf = FrameClassifier(open_engine(model, threads=1), load_config())
    sink = ListSink()
    pipe = compose(FileSource(video, **source_kw), clf, sink,
                   PipelineConfig(telemetry_period_s=0.5))
    summary = pipe.run(duration_s=duration_s)
    return summary, sink


def test_every_frame_is_inferred_or_counted_as_dropped(video30: Path, small_model: Path) -> None:
    summary, sink = _run(video30, small_model)
    results = sink.of(TOPIC_RESULT)
    assert summary["frames_in"] == 90
    assert summary["frames_out"] == len(results) > 0
    assert summary["frames_out"] + summary["dropped"] == summary["frames_in"]
    seqs = [r["seq"] for r in results]
    assert seqs == sorted(set(seqs))  # strictly increasing
    for r in results:
        validate_result(r)
        lat = r["latency_ms"]
        assert set(lat) >= {"queue", "preprocess", "infer", "publish", "total"}
        assert lat["total"] == pytest.approx(
            (r["t_publish_ns"] - r["t_capture_ns"]) / 1e6, rel=1e-6)
    tel = sink.of(TOPIC_TELEMETRY)
    assert len(tel) >= 3  # 3 s at a 0.5 s period, plus the first
    assert {"fps_in", "fps_out", "dropped", "latency_p50_ms", "latency_p99_ms"} <= set(tel[-1])
    print(f"\nsummary: {summary}")


def test_slow_inference_drops_frames_and_keeps_latency_flat(tmp_path: Path,
                                                            video30: Path) -> None:
    # ~4 convolutions of 64 channels at 128x128: slower than the 33 ms frame interval
    slow = make_classifier(tmp_path / "slow.onnx", heavy=6, shape=(1, 1, 128, 128))
    summary, sink = _run(video30, slow, duration_s=5, loop=True)
    results = sink.of(TOPIC_RESULT)
    infer_ms = float(np.median([r["latency_ms"]["infer"] for r in results]))
    totals = [r["latency_ms"]["total"] for r in results]
    half = len(totals) // 2
    early, late = float(np.median(totals[:half])), float(np.median(totals[half:]))
    print(f"\ninfer {infer_ms:.1f} ms/frame, latency median early {early:.1f} ms, "
          f"late {late:.1f} ms, dropped {summary['dropped']} of {summary['frames_in']}")
    assert summary["dropped"] > 0
    assert summary["frames_out"] + summary["dropped"] == summary["frames_in"]
    # no queue builds up: latency stays bounded by about one frame interval plus one inference
    assert late < early + 2 * infer_ms
    assert max(totals) < 33 + 4 * infer_ms + 100


def test_an_unpaced_replay_decodes_only_as_fast_as_the_model_takes_frames(
        tmp_path: Path, video30: Path) -> None:
    """Unpaced (``max_rate``), a model slower than decoding used to see 80-90 % of the
    decoded frames dropped, their decoding taking the cores inference needs: the grabber
    now waits for the model to take each frame before decoding the next."""
    slower = make_classifier(tmp_path / "slower.onnx", heavy=2, shape=(1, 1, 96, 96))
    summary, sink = _run(video30, slower, duration_s=60, max_rate=True)
    print(f"\nunpaced: decoded {summary['frames_in']}, inferred {summary['frames_out']}, "
          f"dropped {summary['dropped']}, waits {summary['backpressure_waits']}, "
          f"timeouts {summary['backpressure_timeouts']}")
    assert summary["frames_in"] == 90  # the whole file, every frame decoded once
    assert summary["dropped"] == 0 and summary["frames_out"] == 90
    assert summary["backpressure_waits"] > 0 and summary["backpressure_timeouts"] == 0
    assert [r["seq"] for r in sink.of(TOPIC_RESULT)] == list(range(90))


def test_publisher_and_subscriber_on_loopback() -> None:
    ctx = zmq.Context()
    pub = Publisher("tcp://127.0.0.1:*", context=ctx)
    sub = Subscriber(pub.bound, context=ctx)
    try:
        good = {"v": 2, "stream": "s", "seq": 1, "model": "m", "labels": ["a"], "probs": [1.0],
                "status": "ok", "run_id": "r", "t_capture_ns": 1, "t_capture_utc_ns": 1,
                "t_publish_ns": 2, "latency_ms": {"total": 1.0}}
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:  # PUB/SUB joins asynchronously
            pub.send(TOPIC_RESULT, good)
            sub.poll(100)
            got = [m for _, m in sub.drain()]
        assert got and got[0]["seq"] == 1
        raw = ctx.socket(zmq.PUB)
        raw.setsockopt(zmq.LINGER, 0)
        # a second publisher on the same subscriber sends garbage: counted, never raised
        endpoint = "tcp://127.0.0.1:*"
        raw.bind(endpoint)
        sub2 = Subscriber(raw.getsockopt_string(zmq.LAST_ENDPOINT), context=ctx)
        deadline = time.monotonic() + 5
        while sub2.malformed == 0 and time.monotonic() < deadline:
            raw.send_multipart([b"result", b"\xc1junk"])
            raw.send_multipart([b"result", encode({**good, "probs": [2.0]})])
            sub2.poll(100)
            list(sub2.drain())
        assert sub2.malformed >= 1 and sub2.received == 0
        sub2.close()
        raw.close(0)
    finally:
        sub.close()
        pub.close()
        ctx.term()


class NanClassifier:
    """A real classifier whose output turns non-finite from frame ``after`` on: the fault
    (a diverged model, a broken engine), injected from outside the pipeline."""

    def __init__(self, inner: FrameClassifier, after: int) -> None:
        self.inner, self.after = inner, after
        self.labels, self.model_name = inner.labels, inner.model_name

    def predict(self, frame: Any) -> tuple[np.ndarray, dict[str, float]]:
        probs, stages = self.inner.predict(frame)
        return (np.full_like(probs, np.nan) if frame.seq >= self.after else probs), stages

    def close(self) -> None:
        self.inner.close()


def test_non_finite_outputs_are_published_as_model_faults(video30: Path,
                                                          small_model: Path) -> None:
    clf = NanClassifier(FrameClassifier(open_engine(small_model, threads=1), load_config()), 30)
    sink = ListSink()
    # every fault published (the limit of faults in a row is tested in test_model_outputs)
    pipe = compose(FileSource(video30), clf, sink,
                   PipelineConfig(telemetry_period_s=0.2, inference_max_invalid=1000))
    summary = pipe.run(duration_s=30)
    results, tel = sink.of(TOPIC_RESULT), sink.of(TOPIC_TELEMETRY)
    faults = [r for r in results if r["seq"] >= 30]
    print(f"\n{len(results)} results, {len(faults)} of them model faults; telemetry "
          f"invalid_outputs {tel[-1].get('invalid_outputs')}, summary "
          f"{summary.get('invalid_outputs')}")
    assert faults and len(results) > len(faults)
    for r in faults:
        assert r.get("status") == "model_fault" and r["probs"] == [] and "top" not in r
        assert r["fault"] == "non-finite output"
    for r in results:
        validate_result(r)  # every one is a valid message: none is dropped as malformed
        assert r["run_id"] == pipe.run_id == tel[0]["run_id"]
        assert abs(r["t_capture_utc_ns"] - r["t_capture_ns"]
                   - (time.time_ns() - time.monotonic_ns())) < 1e9  # UTC of the capture
    assert all(r["status"] == "ok" and r["top"] in r["labels"] for r in results if r["seq"] < 30)
    # the last heartbeat may precede the last results; the summary has them all
    assert 0 < tel[-1]["invalid_outputs"] <= len(faults) == summary["invalid_outputs"]
    other = compose(FileSource(video30), clf, ListSink(), PipelineConfig())
    assert other.run_id != pipe.run_id and len(other.run_id) == 32
