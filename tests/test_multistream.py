"""Many streams, one batched model (stream/multi.py, stream/batch.py): every stream gets
its own results and freshness, a stalled stream leaves the others live, and a batch gives
what the frames give one at a time. No timing thresholds: a poll waits for a state, and
fails only if it never comes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.media import frame_pattern, write_video
from support.models import make_classifier
from support.runs import ListSink

from hepascope.core.config import load_config
from hepascope.core.frame import Frame
from hepascope.core.messages import (
    TOPIC_RESULT,
    TOPIC_TELEMETRY,
    validate_result,
    validate_telemetry,
)
from hepascope.stream.batch import open_batch_model
from hepascope.stream.model_loader import open_model
from hepascope.stream.multi import MultiStream
from hepascope.stream.sources.base import SourceBase

H, W = 384, 768  # the default layout's two views side by side


class Frames(SourceBase):
    """``n`` pattern frames, one every ``period_s``; with ``stall_after`` it stops yielding
    after that many frames (a source that hangs) until interrupted."""

    def __init__(self, source_id: str, n: int, *, offset: int = 0, period_s: float = 0.01,
                 stall_after: int | None = None) -> None:
        super().__init__(source_id)
        self.n, self.offset, self.period_s, self.stall_after = n, offset, period_s, stall_after
        self._wake = threading.Event()

    def _open(self) -> None:
        pass

    def _close(self) -> None:
        pass

    def interrupt(self) -> None:
        self._wake.set()

    def _frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        for i in range(self.n):
            if i == self.stall_after:
                self._wake.wait()  # stalled: nothing more until the run ends
                return
            yield frame_pattern(i + self.offset, H, W), i * self.period_s
            if self._wake.wait(self.period_s):
                return


@pytest.fixture(scope="module")
def batch_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small classifier with a dynamic batch axis (one convolution)."""
    return make_classifier(tmp_path_factory.mktemp("multi") / "batch.onnx",
                           shape=("N", 1, 64, 64), heavy=1)


def _multi(sources: list[Frames], model: Path, sink: ListSink,
           stale_ms: float | None = None) -> MultiStream:
    config = load_config()
    return MultiStream(sources, open_batch_model(model, config, len(sources), threads=1),
                       sink, config, stale_ms=stale_ms)


def test_every_stream_gets_its_results_with_its_id_and_sequence(batch_model: Path) -> None:
    sources = [Frames(f"test:{k}", 12, offset=10 * k) for k in range(3)]
    sink = ListSink()
    summary = _multi(sources, batch_model, sink).run(duration_s=30)
    results = sink.of(TOPIC_RESULT)
    for r in results:
        validate_result(r)
    assert {r["stream"] for r in results} == {"test:0", "test:1", "test:2"}
    assert [s["source"] for s in summary["streams"]] == ["test:0", "test:1", "test:2"]
    for row in summary["streams"]:
        seqs = [r["seq"] for r in results if r["stream"] == row["source"]]
        assert seqs == sorted(set(seqs)) and seqs  # strictly increasing, per stream
        assert row["frames_in"] == 12
        assert row["frames_out"] == len(seqs)
        assert row["frames_out"] + row["dropped"] == row["frames_in"]
        assert row["error"] is None
    assert summary["batches"] >= 1 and summary["frames_per_batch"] >= 1
    for t in sink.of(TOPIC_TELEMETRY):
        validate_telemetry(t)
    assert {t["stream"] for t in sink.of(TOPIC_TELEMETRY)} == {"test:0", "test:1", "test:2"}


def _latest_telemetry(sink: ListSink) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for t in list(sink.messages):
        if t[0] == TOPIC_TELEMETRY:
            out[t[1]["stream"]] = t[1]
    return out


def test_a_stalled_stream_goes_stale_and_the_others_stay_live(batch_model: Path) -> None:
    live = [Frames(f"live:{k}", 100_000, offset=10 * k) for k in range(2)]
    stalled = Frames("stalled", 100_000, stall_after=3)
    sink = ListSink()
    multi = _multi([*live, stalled], batch_model, sink, stale_ms=300)
    box: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: box.update(multi.run()), daemon=True)
    runner.start()
    seen = False
    for _ in range(400):  # until the state shows (a generous bound: it fails only if never)
        tel = _latest_telemetry(sink)
        if len(tel) == 3 and tel["stalled"]["stale"] and "result_age_ms" in tel["stalled"] \
                and not tel["live:0"]["stale"] and not tel["live:1"]["stale"]:
            seen = True
            break
        time.sleep(0.05)
    multi.stop()
    runner.join(timeout=15)
    assert not runner.is_alive()
    assert seen, f"never saw the stalled stream stale and the live ones fresh: {tel}"
    rows = {s["source"]: s for s in box["streams"]}
    stalled_seqs = [r["seq"] for r in sink.of(TOPIC_RESULT) if r["stream"] == "stalled"]
    assert stalled_seqs and max(stalled_seqs) <= 2  # only its 3 frames before the stall
    assert rows["stalled"]["frames_in"] == 3
    for k in range(2):
        assert rows[f"live:{k}"]["frames_out"] > rows["stalled"]["frames_out"]
    assert tel["stalled"]["result_age_ms"] > tel["live:0"]["result_age_ms"]


def _frames(n: int) -> list[Frame]:
    return [Frame(frame_pattern(7 * i, H, W), 0, time.monotonic_ns(), f"test:{i}", 0.0)
            for i in range(n)]


def test_a_batch_gives_what_each_frame_gives_alone(batch_model: Path) -> None:
    config = load_config()
    frames = _frames(4)
    alone = open_model(batch_model, config, threads=1, verdicts=False)
    batch = open_batch_model(batch_model, config, 4, threads=1, verdicts=False)
    judged_batch = open_batch_model(batch_model, config, 4, threads=1)
    try:
        assert batch.batchable
        got = batch.infer(frames)
        assert batch.batches == 1 and batch.batched_frames == 4  # one engine run
        verdicts = judged_batch.predict_batch(frames, [0, 1, 2, 3])
        for f, (probs, _), (judged_probs, _) in zip(frames, got, verdicts, strict=True):
            want, _ = alone.predict(f)
            np.testing.assert_allclose(probs, want, atol=1e-5, rtol=0)
            # a first frame's verdict at temperature 1 is its probabilities
            np.testing.assert_allclose(judged_probs, want, atol=1e-5, rtol=0)
        assert len({round(float(p[0]), 6) for p, _ in got}) > 1  # the frames differ
    finally:
        alone.close()
        batch.close()
        judged_batch.close()


def test_streams_need_distinct_ids(batch_model: Path) -> None:
    with pytest.raises(ValueError, match="distinct"):
        _multi([Frames("same", 1), Frames("same", 1)], batch_model, ListSink())


def test_run_takes_several_sources(tmp_path: Path, batch_model: Path) -> None:
    """``hepascope run --source A --source B``: one process, a line and figures per stream."""
    videos = [write_video(tmp_path / f"v{k}.mp4", frames=10) for k in range(2)]
    out = tmp_path / "summary.json"
    res = subprocess.run([sys.executable, "-m", "hepascope.cli", "run", "--source",
                          str(videos[0]), "--source", str(videos[1]), "--model", str(batch_model),
                          "--publish", "tcp://127.0.0.1:*", "--threads", "1",
                          "--summary", str(out)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    streams = json.loads(out.read_text())["streams"]
    assert len({s["source"] for s in streams}) == 2
    assert all(s["frames_in"] == 10 and s["frames_out"] >= 1 for s in streams)
    assert res.stdout.count("frames_in=10") == 2
