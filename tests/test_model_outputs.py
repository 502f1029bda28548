"""A model whose output is not finite: a real ONNX model that turns NaN on the bright
frames of a real video (the fault comes with the frames the test feeds) runs through the
real pipeline; its results must say so, be counted, and, repeated, be a fault."""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path

from support.fault_models import BRIGHT, DARK, LABELS, make_tripwire, write_levels
from support.runs import CLI, ListSink, free_port

from hepascope.core.config import load_config
from hepascope.core.messages import TOPIC_RESULT, TOPIC_TELEMETRY
from hepascope.stream.pipeline import compose
from hepascope.stream.sources.file import FileSource
from hepascope.stream.supervisor import open_inference


def test_non_finite_outputs_are_flagged_counted_and_restart_the_child(tmp_path: Path) -> None:
    model = make_tripwire(tmp_path / "nan.onnx", "nan")
    # 1 s dark (answers), 3 s bright (NaN: 30 in a row restart the child), 1 s dark again
    video = write_levels(tmp_path / "levels.mp4", [DARK] * 30 + [BRIGHT] * 90 + [DARK] * 30)
    config = load_config()
    clf = open_inference("process", model, config, backend="onnxruntime", threads=1)
    sink = ListSink()
    try:
        summary = compose(FileSource(video), clf, sink, config.pipeline).run(duration_s=120)
    finally:
        clf.close()
    results = sink.of(TOPIC_RESULT)
    faults = [r for r in results if r.get("status") == "model_fault"]
    good = [r for r in results if r.get("status", "ok") == "ok"]
    telemetry = sink.of(TOPIC_TELEMETRY)
    print(f"\n{len(results)} results: {len(faults)} model_fault, {len(good)} ok; restarts "
          f"{summary['inference_restarts']}; invalid_outputs {summary.get('invalid_outputs')}; "
          f"frames in {summary['frames_in']}, dropped {summary['dropped']}")
    nan = [r for r in results if not all(math.isfinite(p) for p in r["probs"])]
    assert faults, f"no result said model_fault; {len(nan)} had non-finite probs, top " \
        f"{sorted({r.get('top') for r in nan}, key=str)}"
    for r in faults:
        assert r["probs"] == [] and "top" not in r and r["fault"] == "non-finite output"
        assert tuple(r["labels"]) == LABELS
    for r in good:
        assert r["top"] in LABELS and all(math.isfinite(p) for p in r["probs"])
    assert len(faults) + len(good) == len(results)
    assert summary["invalid_outputs"] == len(faults)
    assert summary["models"][0]["invalid_outputs"] == len(faults)
    assert max(t.get("invalid_outputs", 0) for t in telemetry) > 0
    assert any(m.get("invalid_outputs", 0) > 0 for t in telemetry for m in t["models"])
    # repeated invalid outputs are a fault: the child was restarted, and answers again
    assert summary["inference_restarts"] >= 1
    last_fault = max(r["seq"] for r in faults)
    assert any(r["seq"] > last_fault for r in good)
    assert summary["frames_out"] + summary["dropped"] == summary["frames_in"]


def test_repeated_non_finite_outputs_end_a_threaded_run_with_one_line(tmp_path: Path) -> None:
    model = make_tripwire(tmp_path / "nan.onnx", "nan")
    video = write_levels(tmp_path / "levels.mp4", [DARK] * 15 + [BRIGHT] * 75)
    t0 = time.monotonic()
    proc = subprocess.run([*CLI, "run", "--source", str(video), "--model", str(model),
                           "--inference", "thread", "--publish",
                           f"tcp://127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    print(f"\nthreaded run, NaN from frame 15: exit {proc.returncode} after "
          f"{time.monotonic() - t0:.1f} s: {lines[-1] if lines else ''}")
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2, proc.stdout
    n = load_config().pipeline.inference_max_invalid
    assert lines == [f"hepascope: error: model nan gave {n} invalid outputs in a row "
                     "(last: non-finite output)"]
