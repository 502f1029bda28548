"""What the overlay marks LIVE describes a frame captured at most ``stale_ms`` ago: a slow
model that publishes promptly is never LIVE, a publisher restarted with the same pid is
followed, and a result that is not a class (a model fault, an uncertain answer) is shown
as such. Real pipeline, real publishers, real loopback sockets, the real overlay loop."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.wire import MS
from support.wire import fault as _fault
from support.wire import result as _result
from support.wire import telemetry as _telemetry

from hepascope.core.config import PipelineConfig, load_config
from hepascope.core.frame import Frame
from hepascope.core.messages import TOPIC_RESULT, TOPIC_TELEMETRY
from hepascope.engines import open_engine
from hepascope.stream.classifier import FrameClassifier
from hepascope.stream.overlay import OverlayState, run_overlay
from hepascope.stream.pipeline import compose
from hepascope.stream.publish import Publisher
from hepascope.stream.sources.file import FileSource

STALE_MS = 250.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _overlay_thread(endpoint: str, out: Path, stop: threading.Event,
                    summary: dict[str, Any]) -> threading.Thread:
    """The overlay's display loop (30 fps, MP4 and log to ``out``) until ``stop``."""
    def body() -> None:
        summary.update(run_overlay(endpoint, out=out, window=False, background=None,
                                   stale_ms=STALE_MS, fps=30, duration_s=60, stop=stop))

    t = threading.Thread(target=body, name="test-overlay")
    t.start()
    return t


def _log(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.with_suffix(".mp4.jsonl").read_text().splitlines()]


# --- a slow model is never LIVE -------------------------------------------------------------

SLOW_S = 0.6  # per frame: more than twice stale_ms


class SleepyClassifier:
    """A real classifier that really takes ``SLOW_S`` more per frame: the fault, injected
    from outside the overlay (an overloaded or huge model)."""

    def __init__(self, inner: FrameClassifier, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s
        self.labels, self.model_name = inner.labels, inner.model_name

    def predict(self, frame: Frame) -> tuple[np.ndarray, dict[str, float]]:
        time.sleep(self.delay_s)
        return self.inner.predict(frame)

    def close(self) -> None:
        self.inner.close()


def test_a_slow_model_that_publishes_promptly_is_never_live(tmp_path: Path, video30: Path,
                                                           small_model: Path) -> None:
    clf = SleepyClassifier(FrameClassifier(open_engine(small_model, threads=1), load_config()),
                           SLOW_S)
    pub = Publisher(f"tcp://127.0.0.1:{_free_port()}")
    out, stop = tmp_path / "o.mp4", threading.Event()
    summary: dict[str, Any] = {}
    overlay = _overlay_thread(pub.bound, out, stop, summary)
    try:
        pipe = compose(FileSource(video30, loop=True), clf, pub,
                       PipelineConfig(telemetry_period_s=0.2))
        run = pipe.run(duration_s=4.5)
    finally:
        stop.set()
        overlay.join(30)
        pub.close()
        clf.close()
    frames = _log(out)
    shown = [f for f in frames if f["seq"] is not None]
    ages = [f["age_ms"] for f in shown]
    statuses = {s: sum(f["status"] == s for f in frames) for s in {f["status"] for f in frames}}
    print(f"\nmodel at {SLOW_S * 1000:.0f} ms/frame: {run['frames_out']} results, publish "
          f"latency p50 {run['latency_p50_ms']:.0f} ms; overlay views {statuses}; shown frame "
          f"age p50 {_pct(ages, 50):.0f} ms, p99 {_pct(ages, 99):.0f} ms, "
          f"min {min(ages, default=0):.0f} ms")
    assert run["frames_out"] >= 3 and len(shown) > 10  # results did reach the overlay
    assert statuses.get("LIVE", 0) == 0, "a result about a frame > stale_ms old shown LIVE"
    assert min(ages) >= SLOW_S * 1000 * 0.9  # the age shown is the frame's, not the message's


# --- a publisher restarted with the same pid ------------------------------------------------


def _publish_for(endpoint: str, seconds: float, first_seq: int, run_id: str) -> int:
    """Bind ``endpoint`` (retrying while the previous socket lets go of the port) and send
    results at 30 Hz and telemetry at 5 Hz, all with pid 4242; the last seq sent."""
    deadline = time.monotonic() + 5
    while True:
        try:
            pub = Publisher(endpoint)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    seq, next_tel = first_seq, 0.0
    t_end = time.monotonic() + seconds
    try:
        while time.monotonic() < t_end:
            pub.send(TOPIC_RESULT, _result(seq, run_id))
            if time.monotonic() >= next_tel:
                pub.send(TOPIC_TELEMETRY, _telemetry(run_id))
                next_tel = time.monotonic() + 0.2
            seq += 1
            time.sleep(1 / 30)
    finally:
        pub.close()
    return seq - 1


def test_a_publisher_restarted_with_the_same_pid_is_followed(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    out, stop = tmp_path / "o.mp4", threading.Event()
    summary: dict[str, Any] = {}
    overlay = _overlay_thread(endpoint, out, stop, summary)
    try:
        time.sleep(0.3)
        old_last = _publish_for(endpoint, 1.2, 1000, uuid.uuid4().hex)  # a long run
        time.sleep(0.2)  # the container restarts: same pid, seq from 0 again
        new_last = _publish_for(endpoint, 1.5, 0, uuid.uuid4().hex)
    finally:
        stop.set()
        overlay.join(30)
    frames = _log(out)
    tail = frames[-10:]  # the last third of a second: the second run
    firsts = [i for i, f in enumerate(frames) if f["seq"] is not None and f["seq"] < 1000]
    print(f"\nold run up to seq {old_last}, new run 0..{new_last}; overlay "
          f"{summary}; last frames {[(f['status'], f['seq']) for f in tail]}")
    assert any(f["seq"] is not None and f["seq"] >= 1000 for f in frames)  # the old run shown
    assert firsts, "the overlay never showed the restarted run's results"
    assert all(f["status"] == "LIVE" and f["seq"] is not None and f["seq"] < 1000
               for f in tail)


# --- results that are not a class -----------------------------------------------------------


def test_model_fault_and_uncertain_results_are_shown_as_such(tmp_path: Path) -> None:
    pub = Publisher(f"tcp://127.0.0.1:{_free_port()}")
    out, stop = tmp_path / "o.mp4", threading.Event()
    summary: dict[str, Any] = {}
    overlay = _overlay_thread(pub.bound, out, stop, summary)
    run_id = uuid.uuid4().hex
    seq = 0
    try:
        time.sleep(0.3)  # the overlay subscribes
        for kind in ("model_fault", "uncertain"):
            t_end = time.monotonic() + 1.0
            while time.monotonic() < t_end:
                msg = _fault(seq, run_id) if kind == "model_fault" else \
                    _result(seq, run_id, status="uncertain")
                pub.send(TOPIC_RESULT, msg)
                if seq % 6 == 0:
                    pub.send(TOPIC_TELEMETRY, _telemetry(run_id, invalid_outputs=seq))
                seq += 1
                time.sleep(1 / 30)
    finally:
        stop.set()
        overlay.join(30)
        pub.close()
    frames = _log(out)
    statuses = {s: sum(f["status"] == s for f in frames) for s in {f["status"] for f in frames}}
    print(f"\noverlay views {statuses}; summary {summary}")
    assert summary["malformed"] == 0
    assert statuses.get("MODEL FAULT", 0) > 5 and statuses.get("UNCERTAIN", 0) > 5
    assert "LIVE" not in statuses  # never shown as a class
    assert all(f["top"] is None for f in frames if f["status"] != "LIVE")


# --- the view, unit by unit -----------------------------------------------------------------


def test_view_judges_the_age_of_the_frame_not_of_the_message() -> None:
    state = OverlayState(STALE_MS, 600.0)
    run = uuid.uuid4().hex
    t0 = 10_000 * MS
    state.update(TOPIC_TELEMETRY, {**_telemetry(run), "t_publish_ns": t0}, t0)
    # captured 100 ms before its publish, received at once: 100 ms old, then 200 ms
    state.update(TOPIC_RESULT, _result(1, run, t_capture_ns=t0, t_publish_ns=t0 + 100 * MS),
                 t0 + 100 * MS)
    v = state.view(t0 + 100 * MS)
    assert v.status == "LIVE" and v.age_ms == pytest.approx(100.0)
    assert state.view(t0 + 200 * MS).age_ms == pytest.approx(200.0)
    assert state.view(t0 + 249 * MS).status == "LIVE"
    assert state.view(t0 + 251 * MS).status == "STALE"  # 251 ms after its capture
    # published at once but about a frame 6 s old: STALE from the first moment, 6 s old
    state.update(TOPIC_RESULT, _result(2, run, t_capture_ns=t0 + 200 * MS,
                                       t_publish_ns=t0 + 6200 * MS), t0 + 6200 * MS)
    v = state.view(t0 + 6200 * MS)
    assert v.status == "STALE" and v.age_ms == pytest.approx(6000.0)
    assert v.labels == ("non_hcc", "hcc")  # a stale result still shows what it said, greyed


def test_view_shows_non_ok_statuses_without_a_class() -> None:
    state = OverlayState(STALE_MS, 600.0)
    run = uuid.uuid4().hex
    t0 = 10_000 * MS
    want = {"model_fault": "MODEL FAULT", "uncertain": "UNCERTAIN", "warming_up": "WARMING UP",
            "ok": "LIVE"}
    for seq, (status, shown) in enumerate(want.items()):
        t = t0 + seq * 10 * MS
        msg = _fault(seq, run) if status == "model_fault" else _result(seq, run, status=status)
        state.update(TOPIC_RESULT, {**msg, "t_capture_ns": t, "t_publish_ns": t}, t)
        v = state.view(t + MS)
        assert v.status == shown
        assert (v.probs == ()) == (status != "ok")  # no class, no percentage
        if status != "ok":  # old enough: STALE whatever its status
            assert state.view(t + int(STALE_MS) * MS + MS).status == "STALE"


def test_a_new_run_id_resets_the_view() -> None:
    state = OverlayState(STALE_MS, 600.0)
    a, b = uuid.uuid4().hex, uuid.uuid4().hex
    t0 = 10_000 * MS
    state.update(TOPIC_TELEMETRY, {**_telemetry(a), "t_publish_ns": t0}, t0)
    state.update(TOPIC_RESULT, _result(500, a, t_publish_ns=t0), t0)
    t1 = t0 + 300 * MS
    state.update(TOPIC_TELEMETRY, {**_telemetry(b), "t_publish_ns": t1}, t1)  # same pid
    assert state.result is None  # the old run's result is gone with it
    state.update(TOPIC_RESULT, _result(0, b, t_publish_ns=t1), t1)
    assert state.result is not None and state.result["seq"] == 0
    assert state.view(t1 + MS).status == "LIVE"
    # a straggler of the old run changes nothing
    state.update(TOPIC_RESULT, _result(501, a, t_publish_ns=t1 + MS), t1 + MS)
    assert state.result["seq"] == 0

