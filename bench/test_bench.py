"""pytest-benchmark suite: one model per registered family (image, clip, bimodal) at batch 1
through the ONNX Runtime engine, at small input sizes, random weights. Run it with

    python -m pytest bench/ --benchmark-only

(not collected by the default ``python -m pytest``: testpaths = ["tests"])."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hepascope.bench.model_section import feeds
from hepascope.engines.onnxruntime import OnnxRuntimeEngine

LABELS = ["a", "b", "c", "d", "e", "f"]
# family -> (registered model, small preprocess size (H, W), clip frames)
FAMILIES = {"image": ("resnet18", (64, 64), None), "clip": ("c3d", (32, 32), 8),
            "bimodal": ("bimodal_resnet18_lite", None, None)}


def _export(family: str, out: Path) -> list[Path]:
    """The family's model exported at its small size: the train stack's own exporters."""
    from hepascope.bench.model_section import export_random
    from hepascope.train.export import export_single
    from hepascope.train.models import create_model

    name, size, frames = FAMILIES[family]
    if family == "bimodal":  # 64x64 B-mode, 32x32 CEUS, window 4
        kw = {"num_classes": 6, "window": 4, "bmode_size": [64, 64], "ceus_size": [32, 32]}
        return export_random(name, out, kw).paths
    model = create_model(name, num_classes=6, in_chans=1)
    window = {"frames": frames, "interval_s": 0.5} if frames else None
    export_single(model, kind=family, labels=LABELS, model_name=name, out_dir=out,
                  preprocess={"size": list(size or ()), "channels": 1}, window=window)
    return [out / "model.onnx"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_batch1_onnxruntime(family: str, tmp_path: Path, benchmark: Any) -> None:
    engines = [OnnxRuntimeEngine(p) for p in _export(family, tmp_path)]
    fs = [feeds(e, 1, i) for i, e in enumerate(engines)]

    def frame() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for e, f in zip(engines, fs, strict=True):
            out = e.infer(f)
        return out

    try:
        probs = next(iter(benchmark(frame).values()))
        assert probs.shape == (1, 6) and abs(float(probs.sum()) - 1.0) < 1e-3
    finally:
        for e in engines:
            e.close()
