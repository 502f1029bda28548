"""ONNX Runtime session tuning (every setting gives the same outputs, the optimised-graph
cache, dynamic-batch outputs without copies) and a smoke run of the engines bench."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hepascope.bench.engine_compare import FIELDS, KNOBS, LOADED  # noqa: E402
from hepascope.bench.engine_compare import main as bench_main  # noqa: E402
from hepascope.engines.onnxruntime import OnnxRuntimeEngine, OrtTuning  # noqa: E402
from hepascope.train.checkpoint import save_model  # noqa: E402
from hepascope.train.datasets.phantom import phantom_arrays  # noqa: E402
from hepascope.train.export import export_single  # noqa: E402
from hepascope.train.models import create_model  # noqa: E402

KW = {"num_classes": 2, "in_chans": 1, "width": 8}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A narrow ResNet-18 checkpoint (64x64, 2 classes), its ONNX export, and phantom
    train/test array sets of disjoint patients."""
    d = tmp_path_factory.mktemp("tuning")
    kw: dict[str, Any] = {"patients_per_class": 2, "samples_per_patient": 2,
                          "kinds": {"image"}, "bmode_size": (64, 64), "workers": 1}
    train = phantom_arrays("hcc", seed=0, **kw)
    test = phantom_arrays("hcc", seed=1, **kw)
    torch.manual_seed(0)
    model = create_model("resnet18", **KW).eval()
    meta = {"model": "resnet18", "kind": "image", "kwargs": KW, "labels": list(train.classes),
            "window": None, "interval_s": None, "preprocess": train.preprocess,
            "train": {"data": train.source}}
    save_model(d / "ckpt", model, meta)
    export_single(model, kind="image", labels=list(train.classes),
                  preprocess=train.preprocess["bmode"], window=None, model_name="resnet18",
                  out_dir=d / "onnx")
    return {"dir": d, "model": d / "onnx" / "model.onnx", "train": train.save(d / "train.npz"),
            "test": test.save(d / "test.npz"), "x": test.bmode.astype(np.float32)}


def test_every_tuning_gives_the_same_probabilities(setup: dict[str, Any]) -> None:
    x = setup["x"][:1]
    want = OnnxRuntimeEngine(setup["model"], tuning=OrtTuning.plain()).infer({"image": x})
    tunings = [OrtTuning(), *(replace(OrtTuning(), **kw) for _, _, kw in KNOBS)]
    for tuning in tunings:
        got = OnnxRuntimeEngine(setup["model"], tuning=tuning, threads=2).infer({"image": x})
        np.testing.assert_allclose(got["probs"], want["probs"], atol=1e-5, err_msg=str(tuning))


def test_dynamic_batch_outputs_are_bound_buffers(setup: dict[str, Any]) -> None:
    eng = OnnxRuntimeEngine(setup["model"])
    assert eng.outputs[0].shape == (None, 2)  # a symbolic batch axis
    x = setup["x"]
    first = eng.infer({"image": x[:1]})["probs"]
    assert eng.infer({"image": x[1:2]})["probs"] is first  # sized from the input, reused
    three = eng.infer({"image": x[:3]})["probs"]
    assert three.shape == (3, 2)
    single = OnnxRuntimeEngine(setup["model"], tuning=OrtTuning(io_binding=False))
    np.testing.assert_allclose(three, single.infer({"image": x[:3]})["probs"], atol=1e-6)
    eng.close()


def test_optimised_graph_cache(setup: dict[str, Any], tmp_path: Path) -> None:
    tuning = OrtTuning(cache_dir=tmp_path / "cache")
    a = OnnxRuntimeEngine(setup["model"], tuning=tuning)
    (stored,) = (tmp_path / "cache").iterdir()  # written once, atomically, no temp left
    assert stored.name.startswith("model.") and stored.name.endswith(".ort-opt.onnx")
    mtime = stored.stat().st_mtime_ns
    b = OnnxRuntimeEngine(setup["model"], tuning=tuning)
    assert stored.stat().st_mtime_ns == mtime and len(list(stored.parent.iterdir())) == 1
    assert b.metadata == a.metadata and "hepascope.preprocess" in b.metadata
    x = {"image": setup["x"][:1]}
    np.testing.assert_allclose(b.infer(x)["probs"], a.infer(x)["probs"], atol=1e-6)


def test_tuning_refuses_bad_settings(setup: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="optimization"):
        OrtTuning(optimization="max")
    with pytest.raises(ValueError, match="dynamic_block_base"):
        OrtTuning(dynamic_block_base=-1)
    with pytest.raises(ValueError, match="threads"):
        OnnxRuntimeEngine(setup["model"], threads=0)


def test_bench_reports_every_variant(setup: dict[str, Any],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = setup["dir"] / "bench"
    notes = setup["dir"] / "notes.md"
    notes.write_text("## Setup\n\ntrained with a test fixture\n")
    args = ["--checkpoint", str(setup["dir"] / "ckpt"), "--test", str(setup["test"]),
            "--calib", str(setup["train"]), "--runs", "4", "--chunk", "2", "--sessions", "2",
            "--peak-sizes", "128,256", "--methods", "minmax,percentile", "--knobs",
            "--neighbour", "--branches", "bimodal_resnet18_lite", "--notes", str(notes),
            "--out", str(out)]
    assert bench_main(args) == 0
    res = json.loads((out / "results.json").read_text())
    want = ["ort_plain", "ort_tuned", "ort_int8", "ort_int8_percentile", "torch_eager",
            *(n for n, _, _ in KNOBS), "knob_1_thread",
            *(f"{n}+neighbour" for n in LOADED)]
    assert [r["variant"] for r in res["rows"]] == want
    assert all(set(FIELDS) <= set(r) for r in res["rows"])
    assert all(r["n_timed"] == 4 for r in res["rows"])
    assert res["test"]["samples"] == 8 and res["patient_overlap_test_calib"] == 0
    assert res["flops"] > 0 and res["peak"]["peak"] > 0
    with (out / "results.csv").open() as f:
        assert [r["variant"] for r in csv.DictReader(f)] == want
    md = (out / "results.md").read_text()
    assert all(f"| {v} |" in md for v in want) and "trained with a test fixture" in md
    assert set(json.loads(capsys.readouterr().out)) == set(want)
    modes = res["branches"]["rows"]
    assert [r["mode"] for r in modes] == ["sequential", "parallel", "merged"]
    assert all(r["max_abs_dfeat"] < 1e-4 for r in modes)  # the same features, each way
    assert all(f"| {m} |" in md for m in ("sequential", "parallel", "merged"))
