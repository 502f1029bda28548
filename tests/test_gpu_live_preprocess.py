"""CUDA preprocessing on the live path (``pipeline.gpu_preprocess``): the switch in the
config, the host fallback in this machine's real environment (ONNX Runtime, no pycuda),
and, over the fakes of ``support.fake_gpu`` (the pycuda / TensorRT module boundary; the
code under test is hepascope's own), what the GPU path hands the kernels and the engine.

Not tested here (no GPU): that the kernels' output equals the host's (done on a GPU by
test_gpu_preprocess.py), the timing, and the torch engine (test_torch_device_fed.py).
The fake driver's CUDA graphs replay the copies and executes recorded in a capture."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from support import fake_gpu
from support.models import make_classifier

from hepascope.core.config import config_from_dict, load_config
from hepascope.core.errors import ConfigError, ModelError
from hepascope.core.frame import Frame
from hepascope.engines.interface import DeviceFed
from hepascope.engines.tensorrt import TrtEngine
from hepascope.stream.classifier import FrameClassifier
from hepascope.stream.model_loader import open_model
from hepascope.train.engine_build.build import build_plan

FRAME = (384, 768, 3)  # the default layout's dual view
LOG = "hepascope.stream.classifier"


def frame(seed: int = 0, shape: tuple[int, ...] = FRAME) -> Frame:
    image = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    return Frame(image, 0, 0, "test")


def config(mode: Any) -> Any:
    raw = yaml.safe_load((Path(__file__).parents[1] / "core" / "default.yaml").read_text())
    raw["pipeline"]["gpu_preprocess"] = mode
    return config_from_dict(raw, "c.yaml")


# ----------------------------------------------------------------- 1. the config


def test_gpu_preprocess_defaults_to_auto_in_every_packaged_config() -> None:
    assert load_config(None).pipeline.gpu_preprocess == "auto"
    assert load_config("single_view").pipeline.gpu_preprocess == "auto"
    assert config_from_dict({"version": 1, "layout": {"views": {"b": [0, 0, 8, 8]}}}
                            ).pipeline.gpu_preprocess == "auto"


@pytest.mark.parametrize(("text", "want"), [("auto", "auto"), ("on", "on"), ("off", "off"),
                                            ("'on'", "on"), ("true", "on"), ("false", "off")])
def test_gpu_preprocess_takes_yamls_bare_on_and_off(text: str, want: str) -> None:
    assert config(yaml.safe_load(f"v: {text}")["v"]).pipeline.gpu_preprocess == want


@pytest.mark.parametrize(("value", "msg"), [
    ("gpu", "c.yaml: pipeline.gpu_preprocess must be auto, on or off, got 'gpu'"),
    (1, "c.yaml: pipeline.gpu_preprocess: expected bool | str, got int 1"),
])
def test_a_bad_gpu_preprocess_is_one_config_error(value: Any, msg: str) -> None:
    with pytest.raises(ConfigError) as e:
        config(value)
    assert str(e.value) == msg


# ----------------------------------------------------------------- 2. real: no pycuda here


@pytest.fixture
def onnx_model(tmp_path: Path) -> Path:
    return make_classifier(tmp_path / "m.onnx", input_name="bmode", shape=(1, 1, 32, 32))


def test_auto_falls_back_to_the_host_and_says_why(onnx_model: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=LOG):
        clf = open_model(onnx_model, config("auto"), verdicts=False)
    assert isinstance(clf, FrameClassifier) and clf.preprocess_device == "cpu"
    said = [r.getMessage() for r in caplog.records if "preprocess auto" in r.getMessage()]
    assert said == ["preprocess auto -> cpu: engine onnxruntime has no device inputs"]
    assert caplog.records[-1].levelno == logging.INFO
    clf.predict(frame())
    clf.predict(frame(1))
    said = [r for r in caplog.records if "preprocess auto" in r.getMessage()]
    assert len(said) == 1  # once, not per frame
    clf.close()


def test_on_without_a_gpu_path_is_one_model_error(onnx_model: Path) -> None:
    with pytest.raises(ModelError) as e:
        open_model(onnx_model, config("on"), verdicts=False)
    assert str(e.value) == ("pipeline.gpu_preprocess is on, but engine onnxruntime has no "
                            "device inputs")


def test_auto_and_off_give_the_same_probabilities(onnx_model: Path) -> None:
    auto = open_model(onnx_model, config("auto"), verdicts=False)
    off = open_model(onnx_model, config("off"), verdicts=False)
    try:
        for seed in range(3):
            p_auto, stages = auto.predict(frame(seed))
            p_off, _ = off.predict(frame(seed))
            np.testing.assert_array_equal(p_auto, p_off)
            assert set(stages) == {"preprocess", "infer"}
    finally:
        auto.close()
        off.close()


# ----------------------------------------------------------------- 3. fakes: the GPU path


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> fake_gpu.FakeGpu:
    return fake_gpu.install(monkeypatch, tmp_path)


@pytest.fixture
def plan(fake: fake_gpu.FakeGpu, tmp_path: Path) -> Path:
    """A plan of an 8x8 grey classifier of 3 classes, and the fake engine it loads as."""
    onnx = make_classifier(tmp_path / "model.onnx", input_name="image",
                           shape=("n", 1, 8, 8), labels=("a", "b", "c"))
    fake.trt.tensors = {"image": (True, (-1, 1, 8, 8)), "probs": (False, (-1, 3))}
    return build_plan(onnx)


def put(fake: fake_gpu.FakeGpu, ptr: int, values: np.ndarray) -> None:
    """What a kernel would have written at ``ptr`` (fake kernels write nothing)."""
    raw = np.ascontiguousarray(values, np.float32).view(np.uint8).reshape(-1)
    fake.gpu.find(ptr, raw.size)[:] = raw


def test_infer_results_are_the_callers_after_close(fake: fake_gpu.FakeGpu, plan: Path) -> None:
    engine = TrtEngine(plan)
    x = np.full((2, 1, 8, 8), 0.5, np.float32)
    out = engine.infer({"image": x})["probs"]
    assert engine._buffers is not None
    assert not np.shares_memory(out, engine._buffers.host("probs"))
    engine.close()  # frees the pinned buffers (the fake poisons freed pinned memory)
    np.testing.assert_array_equal(out, np.array([[32, 33, 34]] * 2, np.float32))


def test_infer_device_copies_no_input_to_the_device(fake: fake_gpu.FakeGpu, plan: Path) -> None:
    engine = TrtEngine(plan)
    assert isinstance(engine, DeviceFed)
    engine.infer({"image": np.zeros((3, 1, 8, 8), np.float32)})  # at another batch first
    ptrs = engine.device_inputs(1)
    put(fake, ptrs["image"], np.full(64, 0.25, np.float32))
    fake.gpu.htod.clear()
    out = engine.infer_device()["probs"]
    assert fake.gpu.htod == [] and fake.trt.executed[-1] == {"image": (1, 1, 8, 8)}
    np.testing.assert_array_equal(out, [[16, 17, 18]])  # computed on what the device held
    engine.close()
    np.testing.assert_array_equal(out, [[16, 17, 18]])
    with pytest.raises(ModelError, match="after close"):
        engine.infer_device()


def test_infer_device_under_a_cuda_graph_has_its_own_graph_without_input_copies(
        fake: fake_gpu.FakeGpu, plan: Path) -> None:
    engine = TrtEngine(plan, cuda_graph=True)
    host = engine.infer({"image": np.ones((1, 1, 8, 8), np.float32)})["probs"]
    np.testing.assert_array_equal(host, [[64, 65, 66]])
    dst = engine.device_inputs(1)["image"]
    for value in (0.25, 0.5):  # each launch computes on what the device holds then
        put(fake, dst, np.full(64, value, np.float32))
        fake.gpu.htod.clear()
        out = engine.infer_device()["probs"]
        assert dst not in fake.gpu.htod
        np.testing.assert_array_equal(out, [[64 * value + j for j in range(3)]])
    launches = fake.gpu.calls.count("cuGraphLaunch")
    np.testing.assert_array_equal(engine.infer({"image": np.ones((1, 1, 8, 8), np.float32)}
                                               )["probs"], [[64, 65, 66]])  # its copy is back
    assert fake.gpu.calls.count("cuGraphLaunch") == launches + 1
    assert len(engine._graphs) == 2
    engine.close()
    assert not fake.gpu.graphs and not fake.gpu.memory


def test_classifier_gpu_path_writes_the_engines_input_on_its_stream(
        fake: fake_gpu.FakeGpu, plan: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=LOG):
        clf = FrameClassifier(TrtEngine(plan), load_config(), gpu_preprocess="auto")
    assert clf.preprocess_device == "cuda"
    assert any("preprocess auto -> cuda" in r.getMessage() for r in caplog.records)
    engine = clf.engine
    assert isinstance(engine, DeviceFed)
    dst = engine.device_inputs(1)["image"]
    put(fake, dst, np.full(64, 0.5, np.float32))  # the kernels' result, as far as fakes go
    fake.gpu.htod.clear()
    fake.gpu.launches.clear()
    probs, stages = clf.predict(frame())
    assert fake.gpu.launches and all(s is engine.device_stream for _, s, _ in fake.gpu.launches)
    last, _, args = fake.gpu.launches[-1]  # the view's final pass writes the model input
    assert last == "hs_area_plane" and dst in args
    assert dst not in fake.gpu.htod  # only the frame went up, into the preprocessor's buffer
    logits = np.array([32, 33, 34], np.float64)
    np.testing.assert_allclose(probs, np.exp(logits - 34) / np.exp(logits - 34).sum())
    assert set(stages) == {"preprocess", "infer"}
    fake.gpu.launches.clear()
    clf.predict(frame(1, (384, 768)))  # another shape: preprocessors built again
    assert fake.gpu.launches and dst in fake.gpu.launches[-1][2]
    clf.close()  # the preprocessors first, in the engine's context, then the engine
    assert not fake.gpu.memory and fake.gpu.retained == 0 and fake.gpu.driver_stack == []


def test_no_kernels_auto_falls_back_and_on_refuses(
        fake: fake_gpu.FakeGpu, plan: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("HEPASCOPE_CUDA_KERNELS", str(tmp_path / "none"))
    monkeypatch.setattr("hepascope.engines.gpu_preprocess.KERNELS", tmp_path / "none")
    with caplog.at_level(logging.INFO, logger=LOG):
        clf = FrameClassifier(TrtEngine(plan), load_config(), gpu_preprocess="auto")
    assert clf.preprocess_device == "cpu"
    (said,) = [r.getMessage() for r in caplog.records if "preprocess auto" in r.getMessage()]
    assert said.startswith("preprocess auto -> cpu: CUDA preprocessing kernels unavailable")
    fake.gpu.htod.clear()
    clf.predict(frame())
    assert fake.gpu.htod == [clf.engine.device_inputs(1)["image"]]  # the host path's copy
    clf.close()
    engine = TrtEngine(plan)
    with pytest.raises(ModelError, match=r"^pipeline.gpu_preprocess is on, but CUDA "
                       r"preprocessing kernels unavailable") as e:
        FrameClassifier(engine, load_config(), gpu_preprocess="on")
    assert "\n" not in str(e.value)
    engine.close()
