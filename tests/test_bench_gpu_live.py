"""``python -m hepascope.bench.gpu_live``: the live path at 60 fps with the CUDA
preprocessing on and off, ABAB. Here (no GPU path) each "on" run reports the one line that
refused it and the "off" runs stand; on a GPU both run and their ratios are reported."""

from __future__ import annotations

import json
from pathlib import Path

from support.models import make_classifier

from hepascope.bench.gpu_live import main


def test_on_and_off_alternate_and_a_missing_gpu_path_is_reported(tmp_path: Path) -> None:
    model = make_classifier(tmp_path / "m.onnx", input_name="bmode", shape=(1, 1, 32, 32))
    out = tmp_path / "out"
    assert main(["--out", str(out), "--seconds", "1", "--pairs", "1", "--model",
                 str(model)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert len(res["pairs"]) == 1 and res["fps"] == 60
    for pair in res["pairs"]:
        assert pair["on"] == {"mode": "on", "error": "ModelError: pipeline.gpu_preprocess "
                              "is on, but engine onnxruntime has no device inputs"}
        off = pair["off"]
        assert off["engine"] == "onnxruntime" and off["frames_out"] > 0
        assert 0 < off["capture_to_publish_p50_ms"] <= off["capture_to_publish_p99_ms"]
        assert not any(k.endswith("_on_over_off") for k in pair)
    md = (out / "results.md").read_text()
    assert "| 1 | on | ModelError: pipeline.gpu_preprocess is on" in md
    assert "--pairs 1" in res["command"]
