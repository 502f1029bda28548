"""The bimodal model on the live path: ONNX export with metadata, parity, the streaming
feature cache, and refusal of exports whose metadata is missing or does not match."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from hepascope.core.config import load_config  # noqa: E402
from hepascope.core.errors import ModelError, ModelInputError  # noqa: E402
from hepascope.core.frame import Frame  # noqa: E402
from hepascope.core.preprocess import PreprocessSpec, preprocess_view  # noqa: E402
from hepascope.phantom import LESION_CLASSES, Phantom, make_case  # noqa: E402
from hepascope.stream import model_loader  # noqa: E402
from hepascope.stream.model_loader import open_model  # noqa: E402
from hepascope.train.export import export_bimodal  # noqa: E402
from hepascope.train.models import create_model  # noqa: E402

WINDOW, INTERVAL = 4, 5  # frames in the CEUS window, frames between them (at 30 fps)


def _specs() -> tuple[PreprocessSpec, PreprocessSpec]:
    c = load_config()
    return (PreprocessSpec(c.layout, c.preprocess, (112, 112), 1, ("bmode",)),
            PreprocessSpec(c.layout, c.preprocess, (64, 64), 1, ("ceus",)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Any], Path]:
    torch.manual_seed(0)
    model = create_model("bimodal_resnet18_lite", num_classes=6, window=WINDOW, width=16,
                         ceus_width=8).eval()
    bs, cs = _specs()
    meta = {"model": "bimodal_resnet18_lite", "labels": list(LESION_CLASSES),
            "window": WINDOW, "interval_s": INTERVAL / 30,
            "preprocess": {"bmode": bs.to_dict(), "ceus": cs.to_dict()}}
    out = tmp_path_factory.mktemp("export")
    report = export_bimodal(model, meta, out)
    print(f"\nexport parity (max |torch - onnxruntime|): {report['parts']}")
    return model, meta, out


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    ph = Phantom(make_case(11, lesion="hcc"), fps=30.0)
    return [ph.render(i)[0] for i in range(WINDOW * INTERVAL)]


def test_forward_backward(exported: tuple[Any, dict[str, Any], Path]) -> None:
    model = create_model("bimodal_resnet18_lite", num_classes=6, window=WINDOW, width=8,
                         ceus_width=8)
    logits = model(torch.randn(2, 1, 112, 112), torch.randn(2, WINDOW, 1, 64, 64))
    assert logits.shape == (2, 6)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_export_parity_and_metadata(exported: tuple[Any, dict[str, Any], Path]) -> None:
    _, _, out = exported
    report = json.loads((out / "export.json").read_text())
    assert report["max_abs_diff"] < 1e-4
    head = onnx.load(str(out / "head.onnx"))
    meta = {p.key: p.value for p in head.metadata_props}
    assert json.loads(meta["hepascope.labels"]) == list(LESION_CLASSES)
    assert json.loads(meta["hepascope.window"]) == {"frames": WINDOW, "interval_s": INTERVAL / 30}
    enc = {p.key: p.value for p in onnx.load(str(out / "bmode_encoder.onnx")).metadata_props}
    assert json.loads(enc["hepascope.preprocess"])["size"] == [112, 112]


def test_streaming_cache_equals_the_whole_window_at_once(
        exported: tuple[Any, dict[str, Any], Path], frames: list[np.ndarray]) -> None:
    model, _, out = exported
    clf = open_model(out, load_config(), verdicts=False)  # the model's own, unsmoothed
    probs = []
    for i, img in enumerate(frames):
        p, stages = clf.predict(Frame(img, i, 1_000 + i, "phantom:11", i / 30))
        probs.append(p)
    assert set(stages) >= {"preprocess", "infer"}
    bs, cs = _specs()
    last = len(frames) - 1
    window = [last - INTERVAL * (WINDOW - 1 - j) for j in range(WINDOW)]
    with torch.no_grad():
        xb = torch.from_numpy(preprocess_view(frames[last], bs, "bmode")[None])
        xc = torch.from_numpy(np.stack([preprocess_view(frames[i], cs, "ceus")
                                        for i in window])[None])
        want = torch.softmax(model(xb, xc), 1).numpy()[0]
    diff = float(np.abs(probs[-1] - want).max())
    print(f"\nstreamed vs whole-window probabilities: max |diff| {diff:.2e}")
    assert diff < 1e-5
    clf.close()


def test_parallel_encoders_give_the_serial_results(
        exported: tuple[Any, dict[str, Any], Path], frames: list[np.ndarray],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One engine thread each (two fit in two cores): the CEUS encoder runs in a thread of
    its own beside the B-mode one, with the same numbers as one after the other."""
    out = exported[2]
    assert model_loader.parallel_encoders("onnxruntime", 1) == ((os.cpu_count() or 1) >= 2)
    assert not model_loader.parallel_encoders("onnxruntime", None)  # ORT takes every core
    assert model_loader.parallel_encoders("tensorrt", None)  # two GPU streams
    monkeypatch.setattr(model_loader, "parallel_encoders", lambda *_: True)
    par = open_model(out, load_config(), threads=1, verdicts=False)
    monkeypatch.setattr(model_loader, "parallel_encoders", lambda *_: False)
    ser = open_model(out, load_config(), threads=1, verdicts=False)
    assert par.parallel and not ser.parallel  # type: ignore[attr-defined]
    try:
        for i, img in enumerate(frames):
            f = Frame(img, i, 1_000 + i, "phantom:11", i / 30)
            assert np.array_equal(par.predict(f)[0], ser.predict(f)[0])
    finally:
        par.close()
        ser.close()


def _strip(path: Path, key: str) -> None:
    m = onnx.load(str(path))
    keep = [(p.key, p.value) for p in m.metadata_props if p.key != key]
    del m.metadata_props[:]
    onnx.helper.set_model_props(m, dict(keep))
    onnx.save(m, str(path))


@pytest.mark.parametrize(("part", "key"), [("head.onnx", "hepascope.labels"),
                                           ("ceus_encoder.onnx", "hepascope.preprocess"),
                                           ("head.onnx", "hepascope.window")])
def test_missing_metadata_is_refused(exported: tuple[Any, dict[str, Any], Path], tmp_path: Path,
                                     part: str, key: str) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(exported[2], bad)
    _strip(bad / part, key)
    with pytest.raises(ModelError, match=key):
        open_model(bad, load_config())


def test_an_encoder_whose_input_does_not_match_is_refused(
        exported: tuple[Any, dict[str, Any], Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(exported[2], bad)
    m = onnx.load(str(bad / "ceus_encoder.onnx"))
    props = {p.key: p.value for p in m.metadata_props}
    spec = json.loads(props["hepascope.preprocess"])
    spec["size"] = [96, 96]  # says 96x96 but the graph takes 64x64
    props["hepascope.preprocess"] = json.dumps(spec)
    del m.metadata_props[:]
    onnx.helper.set_model_props(m, props)
    onnx.save(m, str(bad / "ceus_encoder.onnx"))
    with pytest.raises(ModelInputError, match="does not match"):
        open_model(bad, load_config())
    with pytest.raises(ModelError, match="pass its directory"):
        open_model(exported[2] / "bmode_encoder.onnx", load_config())


def test_cli_refuses_a_bad_export_with_one_line(exported: tuple[Any, dict[str, Any], Path],
                                                tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(exported[2], bad)
    _strip(bad / "head.onnx", "hepascope.labels")
    res = subprocess.run([sys.executable, "-m", "hepascope.cli", "run", "--source",
                          "phantom:1", "--model", str(bad), "--publish", "tcp://127.0.0.1:*"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "hepascope.labels" in lines[0]
