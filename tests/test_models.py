"""Every registered model: forward, backward, FLOPs, ONNX export with ONNX Runtime parity;
published parameter counts; the registry's kinds and example inputs; the bimodal
ablations; the single-graph export's metadata and refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from support.models import (  # noqa: E402
    BIMODAL_SMALL,
    LABELS,
    small_export_meta,
)
from support.models import preprocess_spec as _spec  # noqa: E402
from support.models import small_model as _small  # noqa: E402

from hepascope.core.errors import ModelError  # noqa: E402
from hepascope.train.cli import bimodal_models, registered_models  # noqa: E402
from hepascope.train.engine_build.trt_ops import (  # noqa: E402
    SUPPORTED,
    check_trt_ops,
    graph_ops,
)
from hepascope.train.export import (  # noqa: E402
    export_bimodal,
    export_checkpoint,
    export_single,
    single_graph_kind,
)
from hepascope.train.flops import count_flops, count_params  # noqa: E402
from hepascope.train.models import (  # noqa: E402
    create_model,
    example_inputs,
    list_models,
    model_kind,
)
from hepascope.train.models.card import card_row, format_table  # noqa: E402
from hepascope.train.models.layers import StaticAdaptiveAvgPool  # noqa: E402
from hepascope.train.steps import shifted_logits  # noqa: E402


@pytest.mark.parametrize("name", list_models())
def test_model_trains_counts_and_exports(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, size = _small(name)
    xs = example_inputs(model, batch=2, size=size)
    logits = model(*xs)
    assert logits.shape == (2, 3) and bool(torch.isfinite(logits).all())
    F.cross_entropy(logits, torch.tensor([0, 2])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert count_params(model) == sum(p.numel() for p in model.parameters()) > 0
    assert count_flops(model, example_inputs(model, 1, size)) > 0
    assert model.training  # count_flops restores the mode

    kind = single_graph_kind(model)
    meta = small_export_meta(name, size)
    report = export_checkpoint(model, meta, tmp_path, programs=False)
    assert report["max_abs_diff"] < 1e-4
    assert json.loads((tmp_path / "export.json").read_text()) == report
    files = sorted(p.name for p in tmp_path.glob("*.onnx"))
    assert files == (["bmode_encoder.onnx", "ceus_encoder.onnx", "head.onnx"] if kind is None
                     else ["model.onnx"])
    for path in sorted(tmp_path.glob("*.onnx")):  # TensorRT 10 parses each, no plugin needed
        assert check_trt_ops(path) == [], path.name
        ops = graph_ops(path)
        assert ops <= SUPPORTED and ({"Conv", "Relu"} <= ops or path.name == "head.onnx")


@pytest.mark.parametrize("name", list_models())
def test_get_classifier_makes_the_logits(name: str) -> None:
    """The layer ``get_classifier`` names adds its bias last: a shift of it (the trainer's
    class-mix restore) moves each logit by exactly that much, and is undone bit for bit."""
    torch.manual_seed(0)
    model, size = _small(name)
    xs = example_inputs(model.eval(), batch=2, size=size)
    shift = np.array([0.5, -0.25, -0.25])
    with torch.no_grad():
        before = model(*xs)
        with shifted_logits(model, shift) as m:
            moved = m(*xs)
        after = model(*xs)
    assert torch.allclose(moved - before, torch.tensor(shift, dtype=moved.dtype), atol=1e-5)
    assert torch.equal(after, before)


@pytest.mark.parametrize(("name", "kwargs", "millions", "tol"), [
    ("resnet18", {}, 11.69, 0.01),
    ("resnet50", {}, 25.56, 0.01),
    ("vgg16", {}, 138.36, 0.01),
    ("vgg16_bn", {}, 138.37, 0.01),
    ("res3d_18", {"num_classes": 400}, 33.2, 0.05),  # Hara et al. 2018, one decimal
    ("se_inception_resnet_v2", {"attn_layer": None, "fusion": False}, 55.84, 0.01),
])
def test_published_parameter_counts(name: str, kwargs: dict[str, Any], millions: float,
                                    tol: float) -> None:
    with torch.device("meta"):  # shapes only: no memory, no init
        model = create_model(name, **{"num_classes": 1000, "in_chans": 3, **kwargs})
    assert abs(count_params(model) / 1e6 - millions) < tol


def test_vgg16_parameters_do_not_depend_on_input_size() -> None:
    torch.manual_seed(0)
    model = create_model("vgg16", num_classes=2, fc_dim=16).eval()
    for side in (32, 112):
        assert model(torch.randn(1, 1, side, side)).shape == (1, 2)
    assert model.forward_head(model.forward_features(torch.randn(1, 1, 112, 112)),
                              pre_logits=True).shape == (1, 16)


def test_resnet18_flops_match_published() -> None:
    with torch.device("meta"):
        model = create_model("resnet18", num_classes=1000, in_chans=3)
    gmacs = count_flops(model, example_inputs(model)) / 2e9
    assert abs(gmacs - 1.82) < 0.01  # torchvision: 1.81 "GFLOPS" (multiply-adds) at 224


@pytest.mark.parametrize(("n_in", "n_out"), [(3, 7), (14, 7), (7, 7), (5, 3), (1, 2)])
def test_static_pool_equals_adaptive_pool(n_in: int, n_out: int) -> None:
    x = torch.randn(2, 3, n_in, n_in + 1)
    want = F.adaptive_avg_pool2d(x, (n_out, n_out))
    torch.testing.assert_close(StaticAdaptiveAvgPool((n_out, n_out))(x), want)
    x3 = torch.randn(1, 2, n_in + 2, n_in, 4)
    torch.testing.assert_close(StaticAdaptiveAvgPool((2, n_out, 4))(x3),
                               F.adaptive_avg_pool3d(x3, (2, n_out, 4)))


def test_kinds_sizes_and_example_inputs() -> None:
    for name in list_models():
        with torch.device("meta"):
            model: Any = create_model(name)
        kind = model_kind(name)
        assert kind == model.input_kind and model.in_chans == 1
        shapes = [tuple(x.shape) for x in example_inputs(model, batch=4)]
        size = model.default_input_size
        if kind == "image":
            assert shapes == [(4, 1, *size)] and len(size) == 2
        elif kind == "clip":
            assert shapes == [(4, 1, *size)] == [(4, 1, 30, 64, 64)]
        else:
            assert shapes == [(4, 1, *model.bmode_size), (4, model.window, 1, *model.ceus_size)]
    model = create_model("resnet18", num_classes=2)
    assert [x.shape for x in example_inputs(model, 2, (40, 48))] == [(2, 1, 40, 48)]
    with pytest.raises(ValueError, match="H, W"):
        example_inputs(model, 1, (8, 32, 32))


def test_cli_lists_match_the_registry() -> None:
    assert registered_models() == list_models()
    assert bimodal_models() == [n for n in list_models() if model_kind(n) == "bimodal"]


def test_single_branch_ablations_build_and_read_one_branch() -> None:
    torch.manual_seed(0)
    kw = {"num_classes": 3, **BIMODAL_SMALL, "width": 16, "ceus_width": 8}
    both = create_model("bimodal_resnet18_lite", **kw)
    bmode = create_model("bimodal_resnet18_lite_bmode_only", **kw).eval()
    ceus = create_model("bimodal_resnet18_lite_ceus_only", **kw).eval()
    assert not any(n.startswith("ceus") or n.startswith("temporal")
                   for n, _ in bmode.named_parameters())
    assert not any(n.startswith("bmode") for n, _ in ceus.named_parameters())
    assert count_params(bmode) + count_params(ceus) > count_params(both)
    b, c = example_inputs(both, batch=2)
    b2, c2 = example_inputs(both, batch=2)
    with torch.no_grad():
        torch.testing.assert_close(bmode(b, c), bmode(b, c2))  # CEUS ignored
        torch.testing.assert_close(ceus(b, c), ceus(b2, c))  # B-mode ignored
        assert not torch.allclose(bmode(b, c), bmode(b2, c))
    with pytest.raises(ModelError, match="no ceus branch"):
        bmode.encode_ceus(c[:, 0])
    meta = {"model": "x", "labels": LABELS, "window": 2, "interval_s": 1.0,
            "preprocess": {"bmode": _spec((48, 48), "bmode"), "ceus": _spec((32, 32), "ceus")}}
    with pytest.raises(ModelError, match="export_single"):
        export_bimodal(ceus, meta, "unused")
    assert [single_graph_kind(m) for m in (both, bmode, ceus)] == [None, "image", "clip"]


def _meta(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_export_single_clip_graph_and_metadata(tmp_path: Path) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    model = create_model("dense3d", num_classes=3, growth=8, blocks=(2, 2)).eval()
    spec, window = _spec((32, 32), "ceus"), {"frames": 6, "interval_s": 2.0}
    report = export_single(model, kind="clip", labels=LABELS, preprocess=spec, window=window,
                           model_name="dense3d", out_dir=tmp_path)
    assert report["parts"]["clip"]["file"] == "model.onnx" and report["max_abs_diff"] < 1e-4
    meta = _meta(tmp_path / "model.onnx")
    assert meta == {"hepascope.version": "1", "hepascope.model": "dense3d",
                    "hepascope.role": "clip", "hepascope.labels": json.dumps(LABELS),
                    "hepascope.preprocess": json.dumps(spec),
                    "hepascope.inputs": json.dumps({"clip": "ceus"}),
                    "hepascope.output": "probs", "hepascope.window": json.dumps(window)}
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, inp.shape[1:], out.name) == ("clip", [1, 6, 32, 32], "probs")
    x = torch.randn(4, 1, 6, 32, 32)
    probs = sess.run(None, {"clip": x.numpy()})[0]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(probs, torch.softmax(model(x), 1).numpy(), atol=1e-5)


def test_export_single_image_metadata_and_refusals(tmp_path: Path) -> None:
    model = create_model("resnet18", num_classes=3, width=8)
    spec = _spec((48, 48), "bmode")
    kw: dict[str, Any] = {"labels": LABELS, "preprocess": spec, "window": None,
                          "model_name": "resnet18"}
    export_single(model, kind="image", out_dir=tmp_path, **kw)
    meta = _meta(tmp_path / "model.onnx")
    assert meta["hepascope.role"] == "image" and "hepascope.window" not in meta
    assert json.loads(meta["hepascope.inputs"]) == {"image": "bmode"}
    with pytest.raises(ModelError, match="not exportable as 'clip'"):
        export_single(model, kind="clip", out_dir=tmp_path, **{**kw, "window": {
            "frames": 2, "interval_s": 1.0}})
    with pytest.raises(ModelError, match="channels"):
        export_single(model, kind="image", out_dir=tmp_path,
                      **{**kw, "preprocess": _spec((48, 48), "bmode", chans=3)})
    clip = create_model("c3d", num_classes=3, channels=(8, 16), hidden=16)
    with pytest.raises(ModelError, match="window"):
        export_single(clip, kind="clip", out_dir=tmp_path, **kw)
    both = create_model("bimodal_resnet18_lite", num_classes=3, width=8, ceus_width=8)
    with pytest.raises(ModelError, match="two-branch"):
        export_single(both, kind="image", out_dir=tmp_path, **kw)


def test_models_card_rows() -> None:
    rows = [card_row(n, parity=False) for n in ("resnet18", "dense3d")]
    assert abs(rows[0].published_cfg_m - 11.69) < 0.01 and rows[0].published_m == 11.69
    assert rows[1].published_m is None and rows[1].input_size == "30x64x64"
    # 3.63 GFLOPs at 3 chans and 1000 classes, less the stem's 2 input channels
    # (2 * 49 * 64 * 112 * 112 * 2 = 0.157 G) and 995 classes of the FC (1.0 M)
    assert rows[0].gflops == pytest.approx(3.47, abs=0.01)
    table = format_table(rows, markdown=True).splitlines()
    assert len(table) == 4 and table[2].startswith("| resnet18 | image | 224x224 |")


@pytest.mark.parametrize("stem", [1, 2, 4])
def test_resnet_stem_stride_maps_and_onnx_parity(stem: int, tmp_path: Path) -> None:
    """The small-input stems (eval's default on regions of interest) keep larger maps and
    export like the paper's stem: ONNX Runtime gives torch's probabilities."""
    import onnxruntime as ort

    model = create_model("resnet18", num_classes=3, width=8, stem_stride=stem).eval()
    x = torch.randn(2, 1, 64, 64)
    assert model.forward_features(x).shape[-1] == 64 // (8 * stem)
    kw: dict[str, Any] = {"labels": LABELS, "preprocess": _spec((64, 64), "bmode"),
                          "window": None, "model_name": "resnet18"}
    export_single(model, kind="image", out_dir=tmp_path, **kw)
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = F.softmax(model(x), dim=1).numpy()  # the graph ends in its softmax
    assert np.allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="stem_stride"):
        create_model("resnet18", stem_stride=3)
