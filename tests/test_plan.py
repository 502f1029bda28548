"""A TensorRT plan's sidecar (engines/plan.py): written beside the plan atomically and
last, read back exactly, and the check that refuses a plan built by another TensorRT, for
another GPU or compute capability, or from another ONNX file, in one line. No GPU needed:
the plan bytes are opaque here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnx
import pytest
from onnx import helper
from support.models import make_classifier

from hepascope.core.errors import ModelError
from hepascope.engines.plan import (
    PlanSidecar,
    check_plan,
    read_sidecar,
    sha256_file,
    sidecar_path,
    write_plan,
)

TRT, GPU, CC = "10.3.0", "NVIDIA H100 80GB HBM3", (9, 0)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_classifier(tmp_path / "model.onnx")


def sidecar_for(model: Path, **changes: object) -> PlanSidecar:
    fields: dict[str, object] = {
        "tensorrt_version": TRT, "gpu_name": GPU, "compute_capability": CC,
        "onnx_sha256": sha256_file(model), "onnx_name": model.name,
        "onnx_metadata": {"hepascope.labels": '["a", "b"]'}, "precision": "fp16",
        "max_batch": 4, "profiles": ({"bmode": ((1, 1, 64, 64), (1, 1, 64, 64),
                                                (4, 1, 64, 64))},),
        "fp32_layers": ("/stages/stages.0/stages.0.0/attn/Sigmoid",),
        "built_at": "2026-11-23T04:00:00+00:00", "hepascope_version": "dev"}
    fields.update(changes)
    return PlanSidecar(**fields)  # type: ignore[arg-type]


def check_here(side: PlanSidecar, model: Path, **here: object) -> None:
    args: dict[str, object] = {"trt_version": TRT, "gpu_name": GPU, "compute_capability": CC,
                               "onnx_path": model, "plan_name": "model.plan"}
    args.update(here)
    check_plan(side, **args)  # type: ignore[arg-type]


def test_write_then_read_round_trips(tmp_path: Path, model: Path) -> None:
    side = sidecar_for(model)
    plan = tmp_path / "model.plan"
    written = write_plan(plan, b"\x00serialized engine\xff", side)
    assert written == sidecar_path(plan) == tmp_path / "model.plan.json"
    assert plan.read_bytes() == b"\x00serialized engine\xff"
    assert read_sidecar(plan) == side
    on_disk = json.loads(written.read_text())
    assert on_disk["compute_capability"] == [9, 0]
    assert on_disk["profiles"][0]["bmode"]["max"] == [4, 1, 64, 64]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.plan",
                                                          "model.plan.json"]


def test_matching_plan_accepted(model: Path) -> None:
    side = sidecar_for(model)
    check_here(side, model)
    check_here(side, model, onnx_path=None, onnx_sha256=sha256_file(model))
    check_here(side, model, onnx_path=None)  # no ONNX beside the plan: model not checked


@pytest.mark.parametrize(("here", "says"), [
    ({"trt_version": "10.5.0"},
     "model.plan was built with TensorRT 10.3.0 for NVIDIA H100 80GB HBM3 (sm_90); this is "
     "TensorRT 10.5.0: rebuild with 'hepascope build model.onnx'"),
    ({"gpu_name": "NVIDIA A100-SXM4-80GB", "compute_capability": (8, 0)},
     "model.plan was built with TensorRT 10.3.0 for NVIDIA H100 80GB HBM3 (sm_90); this is "
     "NVIDIA A100-SXM4-80GB (sm_80): rebuild with 'hepascope build model.onnx'"),
    ({"compute_capability": (9, 1)}, "this is NVIDIA H100 80GB HBM3 (sm_91)"),
    ({"trt_version": "10.5.0", "gpu_name": "NVIDIA L4", "compute_capability": (8, 9)},
     "this is TensorRT 10.5.0 on NVIDIA L4 (sm_89)"),
])
def test_other_tensorrt_or_gpu_refused_in_one_line(model: Path, here: dict[str, object],
                                                   says: str) -> None:
    with pytest.raises(ModelError) as e:
        check_here(sidecar_for(model), model, **here)
    assert says in str(e.value)
    assert "\n" not in str(e.value)


def test_modified_onnx_refused(model: Path) -> None:
    side = sidecar_for(model)
    m = onnx.load(str(model))
    helper.set_model_props(m, {"hepascope.labels": '["a", "c"]'})  # same graph, new labels
    onnx.save(m, str(model))
    with pytest.raises(ModelError, match=r"model.plan was built from another model.onnx "
                       r"\(sha256 [0-9a-f]{12}, now [0-9a-f]{12}\): rebuild with "
                       r"'hepascope build model.onnx'"):
        check_here(side, model)
    with pytest.raises(ModelError, match="built from another"):
        check_here(side, model, onnx_path=None, onnx_sha256="0" * 64)


def test_every_difference_named_together(model: Path) -> None:
    side = sidecar_for(model)
    with pytest.raises(ModelError) as e:
        check_here(side, model, trt_version="10.6.0", onnx_path=None, onnx_sha256="f" * 64)
    text = str(e.value)
    assert "this is TensorRT 10.6.0" in text and "built from another model.onnx" in text
    assert text.count("rebuild with") == 1 and "\n" not in text


def test_missing_sidecar_refused(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine")
    with pytest.raises(ModelError, match=r"model.plan: no sidecar model.plan.json .*"
                       r"'hepascope build model.onnx'"):
        read_sidecar(plan)


@pytest.mark.parametrize(("text", "says"), [
    ("{not json", "not a plan sidecar"),
    ("[1, 2]", "a JSON object"),
    ('{"sidecar_version": 99}', "sidecar version 99"),
])
def test_garbled_sidecar_refused(tmp_path: Path, text: str, says: str) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine")
    sidecar_path(plan).write_text(text)
    with pytest.raises(ModelError, match=says):
        read_sidecar(plan)


@pytest.mark.parametrize(("key", "value", "says"), [
    ("gpu_name", None, "missing 'gpu_name'"),
    ("compute_capability", "sm_90", "compute_capability 'sm_90' is not"),
    ("tensorrt_version", 10, "tensorrt_version is not a string"),
    ("precision", "fp8", "precision must be one of"),
    ("onnx_sha256", "abc", "64 hex digits"),
    ("onnx_metadata", {"k": 1}, "not a string map"),
])
def test_wrong_fields_refused(tmp_path: Path, model: Path, key: str, value: object,
                              says: str) -> None:
    plan = tmp_path / "model.plan"
    write_plan(plan, b"engine", sidecar_for(model))
    d = json.loads(sidecar_path(plan).read_text())
    if value is None:
        del d[key]
    else:
        d[key] = value
    sidecar_path(plan).write_text(json.dumps(d))
    with pytest.raises(ModelError, match=says):
        read_sidecar(plan)


def test_interrupted_rewrite_leaves_no_stale_sidecar(tmp_path: Path, model: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A rewrite that dies while writing the plan (disk full at fsync) leaves the old plan
    whole and no sidecar at all, so the old plan is refused rather than passed off under
    the new build's description; no temporary file is left behind."""
    plan = tmp_path / "model.plan"
    write_plan(plan, b"old engine", sidecar_for(model, precision="fp32"))

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        write_plan(plan, b"new engine", sidecar_for(model, precision="int8"))
    monkeypatch.undo()
    assert plan.read_bytes() == b"old engine"
    assert not sidecar_path(plan).exists()
    with pytest.raises(ModelError, match="no sidecar"):
        read_sidecar(plan)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.plan"]


def test_sidecar_validates_its_fields(model: Path) -> None:
    with pytest.raises(ModelError, match="max_batch must be >= 1"):
        sidecar_for(model, max_batch=0)
    with pytest.raises(ValueError, match="not both"):
        check_here(sidecar_for(model), model, onnx_sha256="0" * 64)
