"""The engine interface on ONNX Runtime, and binding a classifier to the frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from support.models import make_classifier

from hepascope.core.config import load_config
from hepascope.core.errors import ConfigError, ModelError, ModelInputError
from hepascope.engines import Engine, open_engine
from hepascope.stream.classifier import FrameClassifier


def test_onnxruntime_engine_meets_the_interface(small_model: Path) -> None:
    engine = open_engine(small_model)
    assert isinstance(engine, Engine)
    assert [s.name for s in engine.inputs] == ["bmode"]
    assert json.loads(engine.metadata["hepascope.labels"])[0] == "normal"
    x = np.random.default_rng(0).normal(size=(1, 1, 64, 64)).astype(np.float32)
    out = engine.infer({"bmode": x})
    assert out["probs"].shape == (1, 6)
    assert out["probs"].sum() == pytest.approx(1.0, abs=1e-5)
    # buffers are allocated once: the same array object comes back each call
    first = out["probs"]
    assert engine.infer({"bmode": x})["probs"] is first
    with pytest.raises(ModelError, match="inputs are"):
        engine.infer({"wrong": x})
    with pytest.raises(ModelError, match="cannot take"):
        engine.infer({"bmode": x[:, :, :32]})
    engine.close()


def test_engine_refuses_missing_and_non_onnx_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such model"):
        open_engine(tmp_path / "none.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a loadable ONNX"):
        open_engine(junk)
    with pytest.raises(ModelError, match="unknown engine"):
        open_engine(make_classifier(tmp_path / "m.onnx"), "tensorflow")


@pytest.mark.parametrize(("shape", "match"), [
    ((1, 64), "not an image batch"),
    ((1, 5, 64, 64), "5 channels"),
    ((4, 1, 64, 64), "batch 4"),
])
def test_classifier_refuses_inputs_frames_cannot_feed(tmp_path: Path, shape: tuple,
                                                      match: str) -> None:
    engine = open_engine(make_classifier(tmp_path / "m.onnx", shape=shape))
    with pytest.raises(ModelInputError, match=match):
        FrameClassifier(engine, load_config())


def test_classifier_binds_views_sizes_and_labels(tmp_path: Path) -> None:
    cfg = load_config()
    engine = open_engine(make_classifier(tmp_path / "m.onnx", input_name="ceus",
                                         shape=(1, 3, 96, 80)))
    clf = FrameClassifier(engine, cfg)
    assert clf.bindings == {"ceus": "ceus"}
    frame = np.random.default_rng(0).integers(0, 255, (384, 768, 3), dtype=np.uint8)
    feeds = clf.feeds(frame)
    assert feeds["ceus"].shape == (1, 3, 96, 80)
    pred = clf.classify(frame)
    assert pred.labels[0] == "normal" and pred.probs.sum() == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="does not fit"):
        clf.classify(np.zeros((100, 100, 3), np.uint8))


def test_logits_become_probabilities_and_label_counts_are_checked(tmp_path: Path) -> None:
    path = make_classifier(tmp_path / "logits.onnx", softmax=False, labels=None, n_classes=4)
    clf = FrameClassifier(open_engine(path), load_config())
    assert clf.labels == ("class0", "class1", "class2", "class3")
    p = clf.probabilities({clf.output_name: np.array([[10.0, -3.0, 0.0, 1.0]], np.float32)})
    assert p.sum() == pytest.approx(1.0) and p.argmax() == 0
    with pytest.raises(ModelError, match="4 outputs but 2 labels"):
        FrameClassifier(open_engine(path), load_config(), labels=("a", "b"))
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {"hepascope.labels": "{not json"})
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match="not valid JSON"):
        FrameClassifier(open_engine(path), load_config())


def test_a_spec_at_a_batch_size_keeps_its_static_sizes_and_refuses_an_unknown_one() -> None:
    from hepascope.engines.interface import TensorSpec

    spec = TensorSpec("bmode", (None, 1, 64, 64), np.dtype(np.float32))
    assert spec.at_batch(8) == (8, 1, 64, 64)
    ragged = TensorSpec("bmode", (None, 1, "h", 64), np.dtype(np.float32))
    assert ragged.at_batch(2, unknown=32) == (2, 1, 32, 64)
    with pytest.raises(ModelError, match="not static"):
        ragged.at_batch(1)
