"""An unpaced replay through the inference process: the child takes every frame, in
capture order (before, it took the newest and dropped 10-13 of 90 frames under load), the
frames waiting in the ring in one engine run (up to ``pipeline.unpaced_batch``), and every
result is the one it gives frame by frame: same frames, same order, same verdicts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.models import make_classifier
from support.runs import ListSink

from hepascope.core.config import load_config
from hepascope.core.messages import TOPIC_RESULT
from hepascope.stream.pipeline import compose
from hepascope.stream.sources.file import FileSource
from hepascope.stream.supervisor import InferenceProcess, open_inference


def _unpaced(video: Path, model: Path, batch: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    cfg = load_config()
    cfg = replace(cfg, pipeline=replace(cfg.pipeline, unpaced_batch=batch))
    clf = open_inference("process", model, cfg, backend="onnxruntime", threads=1, batch=batch)
    assert isinstance(clf, InferenceProcess)
    try:
        sink = ListSink()
        summary = compose(FileSource(video, max_rate=True), clf, sink,
                          cfg.pipeline).run(duration_s=120)
        summary["child_batch"] = clf.batch
    finally:
        clf.close()
    return summary, sink.of(TOPIC_RESULT)


def _read_ns(r: dict[str, Any]) -> int:
    """When the child read the frame: capture time + its queue latency."""
    return round(r["t_capture_ns"] + r["latency_ms"]["queue"] * 1e6, -3)


def test_an_unpaced_replay_batches_waiting_frames_and_changes_no_result(
        tmp_path: Path, video30: Path) -> None:
    model = make_classifier(tmp_path / "m.onnx", shape=("N", 1, 96, 96), heavy=2)
    one, one_rows = _unpaced(video30, model, 1)
    four, rows = _unpaced(video30, model, 4)
    reads = len({_read_ns(r) for r in rows})
    print(f"\nbatch 1: {one['results_per_s']:.1f} results/s; batch 4: "
          f"{four['results_per_s']:.1f} results/s, {reads} engine runs for {len(rows)} frames")
    assert (one["child_batch"], four["child_batch"]) == (1, 4)
    for s in (one, four):  # every frame decoded once, inferred once, none dropped
        assert (s["frames_in"], s["frames_out"], s["dropped"]) == (90, 90, 0)
    assert [r["seq"] for r in rows] == [r["seq"] for r in one_rows] == list(range(90))
    assert len({_read_ns(r) for r in one_rows}) == 90  # batch 1: one frame per run...
    assert reads <= 60  # ...batch 4: frames that waited went in together
    assert [r["status"] for r in rows] == [r["status"] for r in one_rows]
    np.testing.assert_allclose([r["probs"] for r in rows], [r["probs"] for r in one_rows],
                               atol=1e-5)


def test_a_graph_with_a_fixed_batch_of_one_is_run_frame_by_frame(
        tmp_path: Path, video30: Path) -> None:
    model = make_classifier(tmp_path / "b1.onnx", shape=(1, 1, 64, 64))
    summary, rows = _unpaced(video30, model, 4)
    assert summary["child_batch"] == 1
    assert (summary["frames_out"], summary["dropped"]) == (90, 0)
    assert [r["seq"] for r in rows] == list(range(90))


@pytest.mark.parametrize("batch", [0, -1])
def test_a_batch_below_one_is_refused(tmp_path: Path, batch: int) -> None:
    from hepascope.stream.inference_proc import ModelSpec

    with pytest.raises(ValueError, match="batch must be None or >= 1"):
        ModelSpec(tmp_path / "m.onnx", load_config(), batch=batch)
