"""Small real ONNX classifiers built with onnx.helper, for tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_classifier(path: Path, *, input_name: str = "bmode", shape: tuple = (1, 1, 64, 64),
                    labels: tuple[str, ...] | None = ("normal", "cyst", "hemangioma", "hcc",
                                                      "metastasis", "fatty_sparing"),
                    n_classes: int | None = None, heavy: int = 0, softmax: bool = True,
                    seed: int = 0) -> Path:
    """GlobalAveragePool -> Flatten -> Gemm (-> Softmax). ``heavy`` adds that many 3x3
    convolutions of 64 channels first, to make inference slow on purpose."""
    rng = np.random.default_rng(seed)
    k = n_classes or (len(labels) if labels else 6)
    c = shape[1] if len(shape) == 4 else 1
    nodes, inits = [], []
    x = input_name
    for i in range(heavy):
        cin = c if i == 0 else 64
        w = numpy_helper.from_array(
            rng.normal(0, 0.05, (64, cin, 3, 3)).astype(np.float32), f"w{i}")
        inits.append(w)
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"conv{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]))
        x, c = f"relu{i}", 64
    if len(shape) == 4:
        nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
        nodes.append(helper.make_node("Flatten", ["gap"], ["feat"]))
        feat = c
    else:
        nodes.append(helper.make_node("Identity", [x], ["feat"]))
        feat = shape[-1]
    inits.append(numpy_helper.from_array(rng.normal(0, 1, (feat, k)).astype(np.float32), "W"))
    inits.append(numpy_helper.from_array(rng.normal(0, 0.1, (k,)).astype(np.float32), "b"))
    nodes.append(helper.make_node("Gemm", ["feat", "W", "b"], ["logits"]))
    out = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
        out = "probs"
    dims = list(shape)
    graph = helper.make_graph(
        nodes, "test-classifier",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [shape[0], k])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if labels:
        helper.set_model_props(model, {"hepascope.labels": json.dumps(list(labels))})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def set_metadata(path: Path, **props: object) -> Path:
    """Add or replace metadata of the ONNX model at ``path``: a string value as given,
    anything else as JSON (``set_metadata(p, **{"hepascope.temperature": 2.0})``)."""
    m = onnx.load(str(path))
    meta = {p.key: p.value for p in m.metadata_props}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in props.items()})
    del m.metadata_props[:]
    helper.set_model_props(m, meta)
    onnx.save(m, str(path))
    return path


def _save(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], name: str,
          inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
          meta: dict[str, str], path: Path) -> None:
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def make_bimodal_export(out: Path, *, window: int = 4, interval_s: float = 0.25,
                        labels: tuple[str, ...] = ("normal", "cyst", "hcc"), feat: int = 8,
                        bmode_size: tuple[int, int] = (32, 32),
                        ceus_size: tuple[int, int] = (32, 32), seed: int = 0) -> Path:
    """A bimodal export directory as ``hepascope export`` writes it (two encoders, a head
    over T CEUS features, metadata), built in ONNX: each encoder is GlobalAveragePool ->
    Gemm to ``feat`` features, the head max-pools the CEUS window, concatenates the B-mode
    feature, Gemm -> Softmax ("probs")."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    common = {"hepascope.version": "1", "hepascope.model": "bimodal-test",
              "hepascope.labels": json.dumps(list(labels))}
    for role, view, size, name in (("bmode_encoder", "bmode", bmode_size, "bmode_feat"),
                                   ("ceus_encoder", "ceus", ceus_size, "ceus_feat")):
        inits = [numpy_helper.from_array(rng.normal(0, 1, (1, feat)).astype(np.float32), "W"),
                 numpy_helper.from_array(rng.normal(0, 0.1, (feat,)).astype(np.float32), "b")]
        nodes = [helper.make_node("GlobalAveragePool", ["x"], ["gap"]),
                 helper.make_node("Flatten", ["gap"], ["f"]),
                 helper.make_node("Gemm", ["f", "W", "b"], [name])]
        _save(nodes, inits, role,
              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, *size])],
              [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, feat])],
              {**common, "hepascope.role": role,
               "hepascope.preprocess": json.dumps(preprocess_spec(size, view)),
               "hepascope.inputs": json.dumps({"x": view})}, out / f"{role}.onnx")
    k = len(labels)
    inits = [numpy_helper.from_array(rng.normal(0, 1, (2 * feat, k)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(0, 0.1, (k,)).astype(np.float32), "b")]
    nodes = [helper.make_node("ReduceMax", ["ceus_feats"], ["pooled"], axes=[1], keepdims=0),
             helper.make_node("Concat", ["bmode_feat", "pooled"], ["both"], axis=1),
             helper.make_node("Gemm", ["both", "W", "b"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    _save(nodes, inits, "head",
          [helper.make_tensor_value_info("bmode_feat", TensorProto.FLOAT, [1, feat]),
           helper.make_tensor_value_info("ceus_feats", TensorProto.FLOAT, [1, window, feat])],
          [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, k])],
          {**common, "hepascope.role": "head", "hepascope.output": "probs",
           "hepascope.window": json.dumps({"frames": window, "interval_s": interval_s}),
           "hepascope.parts": json.dumps({"bmode_encoder": "bmode_encoder.onnx",
                                          "ceus_encoder": "ceus_encoder.onnx"})},
          out / "head.onnx")
    return out


def make_clip_model(path: Path, preprocess: dict[str, object], *, frames: int = 4,
                    interval_s: float = 0.5, labels: tuple[str, ...] = ("non_hcc", "hcc"),
                    n_classes: int = 2, rank: int = 5, drop: tuple[str, ...] = (),
                    name: str = "clip3d-test", seed: int = 0) -> Path:
    """A tiny clip model exported from PyTorch (Conv3d -> ReLU -> mean -> Linear ->
    softmax) with the clip-export metadata; ``rank=4`` makes a per-frame Conv2d instead,
    ``drop`` leaves metadata keys out. Needs torch (imported here, not by conftest)."""
    import warnings

    import torch
    from torch import nn

    size = preprocess["size"]
    assert isinstance(size, list)
    h, w = int(size[0]), int(size[1])

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            conv = nn.Conv3d if rank == 5 else nn.Conv2d
            self.conv = conv(1, 4, 3, padding=1)
            self.fc = nn.Linear(4, n_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            feat = torch.relu(self.conv(x)).flatten(2).mean(2)
            return torch.softmax(self.fc(feat), 1)

    torch.manual_seed(seed)
    model = Tiny().eval()
    example = torch.randn(1, 1, frames, h, w) if rank == 5 else torch.randn(1, 1, h, w)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, still exact
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (example,), str(path), input_names=["clip"],
                          output_names=["probs"], opset_version=17, dynamo=False,
                          dynamic_axes={"clip": {0: "n"}, "probs": {0: "n"}})
    meta = {"hepascope.version": "1", "hepascope.model": name, "hepascope.role": "clip",
            "hepascope.labels": json.dumps(list(labels)),
            "hepascope.preprocess": json.dumps(preprocess),
            "hepascope.inputs": json.dumps({"clip": "ceus"}), "hepascope.output": "probs",
            "hepascope.window": json.dumps({"frames": frames, "interval_s": interval_s})}
    m = onnx.load(str(path))
    helper.set_model_props(m, {k: v for k, v in meta.items() if k not in drop})
    onnx.save(m, str(path))
    return path


# Small sizes of every registered model, shared by the tests that build and export them
# (test_models, test_trt_ops). Narrower (and for the 40-block Inception, shallower) weights,
# to keep each to seconds: the code paths (blocks, attention, fusion, heads, the ablations'
# switches) are the registered ones; the registered sizes are checked by the parameter
# counts in test_models and exported, with parity, by the models card. Torch is imported in
# the functions, not here (conftest imports this module).
SMALL = {"image": (64, 64), "clip": (8, 32, 32)}
BIMODAL_SMALL: dict[str, object] = {"window": 2, "bmode_size": (48, 48), "ceus_size": (32, 32)}
LABELS = ["normal", "cyst", "hcc"]
_SHRINK: dict[str, dict[str, object]] = {
    "vgg16": {"fc_dim": 64}, "vgg16_bn": {"fc_dim": 64},
    "se_inception_resnet_v2": {"width": 0.25, "depths": (2, 3, 2)}, "res3d_18": {"width": 16},
    "resnet50": {"width": 16}, "c3d": {"hidden": 64},
}


def shrink_kwargs(name: str) -> dict[str, object]:
    """The constructor kwargs that make registered model ``name`` small."""
    if name.startswith("bimodal"):
        return {"width": 16, "ceus_width": 8}
    return dict(_SHRINK.get(name, {}))


def preprocess_spec(size: tuple[int, int], view: str, chans: int = 1) -> dict[str, object]:
    """The default config's preprocessing spec of ``view`` at ``size``, as a dict."""
    from hepascope.core.config import load_config
    from hepascope.core.preprocess import PreprocessSpec

    c = load_config()
    return PreprocessSpec(c.layout, c.preprocess, size, chans, (view,)).to_dict()


def small_model(name: str) -> tuple[object, object]:
    """Registered model ``name`` (3 classes, grey, small) and a small input size for it
    (None for a bimodal model: its sizes are BIMODAL_SMALL)."""
    from hepascope.train.models import create_model, model_kind

    kind = model_kind(name)
    extra = BIMODAL_SMALL if kind == "bimodal" else {}
    model = create_model(name, num_classes=3, **extra, **shrink_kwargs(name))
    if kind == "bimodal":
        return model, None
    least = getattr(model, "min_input_size", SMALL[kind])
    return model, tuple(max(a, b) for a, b in zip(SMALL[kind], least, strict=True))


def small_export_meta(name: str, size: object) -> dict[str, object]:
    """Checkpoint metadata for exporting ``small_model(name)`` at its ``size``."""
    if size is None:
        hw, frames, ceus_hw = BIMODAL_SMALL["bmode_size"], 2, BIMODAL_SMALL["ceus_size"]
    else:
        assert isinstance(size, tuple)
        hw = ceus_hw = size[-2:]
        frames = size[0] if len(size) == 3 else 2
    return {"model": name, "labels": LABELS, "window": frames, "interval_s": 2.0,
            "preprocess": {"bmode": preprocess_spec(hw, "bmode"),  # type: ignore[arg-type]
                           "ceus": preprocess_spec(ceus_hw, "ceus")}}  # type: ignore[arg-type]
