"""Calibration frames from a model's own preprocessing, and static INT8 (QDQ) quantisation
of a real exported model: graph, closeness to float on phantom frames, metadata, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from support.bimodal import tiny_bimodal_export  # noqa: E402
from support.models import make_classifier  # noqa: E402

from hepascope.core.config import load_config  # noqa: E402
from hepascope.core.errors import ConfigError, DataError, ModelError  # noqa: E402
from hepascope.core.preprocess import preprocess_view, spec_from_dict  # noqa: E402
from hepascope.engines.onnxruntime import OnnxRuntimeEngine  # noqa: E402
from hepascope.phantom.patient import make_case  # noqa: E402
from hepascope.phantom.render import Phantom  # noqa: E402
from hepascope.stream.model_loader import open_model  # noqa: E402
from hepascope.train.datasets.phantom import (  # noqa: E402
    phantom_arrays,
    write_task_dataset,
)
from hepascope.train.engine_build.calib import calibration_feeds, load_samples  # noqa: E402
from hepascope.train.engine_build.quantize import main as quantize_main  # noqa: E402
from hepascope.train.engine_build.quantize import quantize_int8  # noqa: E402
from hepascope.train.export import export_single  # noqa: E402
from hepascope.train.models import create_model  # noqa: E402

# INT8 vs float on these frames: max |probability difference| (measured 0.01 on this model)
PROB_TOL = 0.05
# INT8 vs float encoder features: max |difference| relative to the largest (measured 0.026)
FEATURE_TOL = 0.1


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Phantom frames of two disjoint patient sets (64x64 B-mode) and a narrow ResNet-18
    exported at that size with their preprocessing in its metadata."""
    d = tmp_path_factory.mktemp("quant")
    kw: dict[str, Any] = {"patients_per_class": 3, "samples_per_patient": 2,
                          "kinds": {"image"}, "bmode_size": (64, 64), "workers": 1}
    train = phantom_arrays("hcc", seed=0, **kw)
    test = phantom_arrays("hcc", seed=1, **kw)
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=2, in_chans=1, width=8)
    export_single(model, kind="image", labels=list(train.classes),
                  preprocess=train.preprocess["bmode"], window=None, model_name="resnet18",
                  out_dir=d / "onnx")
    return {"dir": d, "model": d / "onnx" / "model.onnx", "train": train.save(d / "train.npz"),
            "test": test.save(d / "test.npz"), "train_set": train}


def test_calibration_feeds_are_the_training_frames(setup: dict[str, Any]) -> None:
    feeds = calibration_feeds(setup["model"], setup["train"], limit=5, seed=3)
    assert len(feeds) == 5 and all(set(f) == {"image"} for f in feeds)
    assert all(f["image"].shape == (1, 1, 64, 64) and f["image"].dtype == np.float32
               for f in feeds)
    bmode = setup["train_set"].bmode.astype(np.float32)
    for f in feeds:  # each feed is one stored training frame, unchanged
        assert min(np.abs(bmode - f["image"]).max(axis=(1, 2, 3))) == 0.0
    again = calibration_feeds(setup["model"], setup["train"], limit=5, seed=3)
    assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(feeds, again, strict=True))
    everything = load_samples(setup["model"], setup["train"])
    assert len(everything.feeds) == 12 and everything.classes == ("non_hcc", "hcc")


def test_calibration_from_class_folders_uses_the_model_preprocessing(
        setup: dict[str, Any]) -> None:
    root = setup["dir"] / "folders"
    write_task_dataset("hcc", root, patients_per_class=1, images_per_patient=2, seed=5,
                       workers=1)
    samples = load_samples(setup["model"], root)
    assert len(samples.feeds) == 4 and set(samples.groups.tolist()) == {
        "hcc_s5_p00000", "hcc_s5_p00001"}
    meta = OnnxRuntimeEngine(setup["model"]).metadata
    spec = spec_from_dict(json.loads(meta["hepascope.preprocess"]))
    first = sorted((root / samples.classes[int(samples.labels[0])]).glob("*.png"))[0]
    import cv2

    want = preprocess_view(cv2.imread(str(first)), spec, "bmode")[None]
    assert any(np.array_equal(f["image"], want) for f in samples.feeds)


def test_calibration_refuses_data_the_model_cannot_take(setup: dict[str, Any],
                                                       tmp_path: Path) -> None:
    other = phantom_arrays("hcc", patients_per_class=1, samples_per_patient=1,
                           kinds={"image"}, bmode_size=(48, 48), workers=1)
    with pytest.raises(DataError, match="another spec"):
        calibration_feeds(setup["model"], other.save(tmp_path / "small.npz"))
    with pytest.raises(DataError, match="no such data"):
        calibration_feeds(setup["model"], tmp_path / "missing")
    with pytest.raises(ConfigError, match="limit"):
        calibration_feeds(setup["model"], setup["train"], limit=0)
    with pytest.raises(ModelError, match="preprocessing metadata"):
        calibration_feeds(make_classifier(tmp_path / "plain.onnx"), setup["train"])


def test_int8_is_qdq_close_to_float_and_opens_like_the_float_model(
        setup: dict[str, Any]) -> None:
    feeds = calibration_feeds(setup["model"], setup["train"])
    out = quantize_int8(setup["model"], setup["dir"] / "model.int8.onnx", feeds)
    graph = onnx.load(str(out))
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    weights = {i.name: i.data_type for i in graph.graph.initializer}
    assert onnx.TensorProto.INT8 in weights.values()  # weights stored as int8
    softmax = next(n for n in graph.graph.node if n.op_type == "Softmax")
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == softmax.output[0]
                   for n in graph.graph.node)  # probabilities stay float
    f32, i8 = OnnxRuntimeEngine(setup["model"]), OnnxRuntimeEngine(out)
    meta = dict(i8.metadata)
    info = json.loads(meta.pop("hepascope.quantization"))
    assert meta == f32.metadata and info["format"] == "QDQ" and info["calibration_samples"] == 12
    assert info["reduce_range"] is True  # 7-bit weights: no U8S8 saturation without VNNI
    test = load_samples(setup["model"], setup["test"])  # other patients than calibration
    a = np.concatenate([f32.infer(f)["probs"].copy() for f in test.feeds])
    b = np.concatenate([i8.infer(f)["probs"].copy() for f in test.feeds])
    assert np.abs(a - b).max() <= PROB_TOL
    clf = open_model(out, load_config(), verdicts=False)
    case = make_case(7, lesion="hcc", fatty_grade=1, patient_id="q")
    frame, _ = Phantom(case, fps=30.0).render(0, ceus_t_s=10.0)
    direct = i8.infer({"image": preprocess_view(
        frame, spec_from_dict(json.loads(meta["hepascope.preprocess"])), "bmode")[None]})
    probs = clf.probabilities(clf.engine.infer(clf.feeds(frame)))
    assert np.allclose(probs, direct["probs"][0], atol=1e-6)
    clf.close()


@pytest.mark.parametrize(("feeds", "match"), [
    ([], "no calibration feeds"),
    ([{"bmode": np.zeros((1, 1, 64, 64), np.float32)}], "inputs are"),
    ([{"image": np.zeros((1, 1, 32, 64), np.float32)}], "cannot take"),
    ([{"image": np.full((1, 1, 64, 64), np.nan, np.float32)}], "finite float32"),
    ([{"image": np.zeros((1, 1, 64, 64), np.float64)}], "finite float32"),
])
def test_bad_calibration_feeds_are_data_errors(setup: dict[str, Any], tmp_path: Path,
                                               feeds: list[dict[str, np.ndarray]],
                                               match: str) -> None:
    with pytest.raises(DataError, match=match):
        quantize_int8(setup["model"], tmp_path / "q.onnx", feeds)
    assert not (tmp_path / "q.onnx").exists()


def test_quantize_cli(setup: dict[str, Any], tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.int8.onnx"
    assert quantize_main([str(setup["model"]), "--calib", str(setup["train"]), "--out",
                          str(out), "--method", "percentile", "--limit", "6"]) == 0
    assert json.loads(capsys.readouterr().out)["calibration_samples"] == 6
    info = json.loads(OnnxRuntimeEngine(out).metadata["hepascope.quantization"])
    assert info["method"] == "percentile"
    assert quantize_main([str(setup["model"]), "--calib", str(tmp_path / "none.npz"),
                          "--out", str(tmp_path / "x.onnx")]) == 2
    assert "cannot load array set" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="method"):
        quantize_int8(setup["model"], out, calibration_feeds(setup["model"], setup["train"]),
                      method="kl")


def test_bimodal_encoders_calibrate_and_quantise(tmp_path: Path) -> None:
    """Each encoder of a bimodal export gets its own view's frames (the CEUS encoder the
    newest frame of each window); the head, fed features, is refused. With 8-bit weights
    (the old default) the CEUS encoder's features were 12.1 % off on an AVX2-only CPU
    (U8S8 saturation without VNNI) and this failed there; 7-bit weights: 3.4 %."""
    data = tiny_bimodal_export(tmp_path / "onnx", patients_per_class=2)
    npz = data.save(tmp_path / "bimodal.npz")
    newest = {"bmode_encoder": data.bmode, "ceus_encoder": data.ceus[:, -1]}
    for part, name in (("bmode_encoder", "bmode"), ("ceus_encoder", "ceus")):
        path = tmp_path / "onnx" / f"{part}.onnx"
        feeds = calibration_feeds(path, npz)
        assert len(feeds) == 8 and [set(f) for f in feeds] == [{name}] * 8
        assert np.array_equal(np.concatenate([f[name] for f in feeds]),
                              newest[part].astype(np.float32))
        q = quantize_int8(path, tmp_path / f"{part}.int8.onnx", feeds)
        f32, i8 = OnnxRuntimeEngine(path), OnnxRuntimeEngine(q)
        out = f32.outputs[0].name
        a = np.concatenate([f32.infer(f)[out].copy() for f in feeds])
        b = np.concatenate([i8.infer(f)[out].copy() for f in feeds])
        assert np.abs(a - b).max() <= FEATURE_TOL * np.abs(a).max()
    with pytest.raises(ModelError, match="role 'head'"):
        calibration_feeds(tmp_path / "onnx" / "head.onnx", npz)
