"""The demo model's precision step (train/demo_precision.py): the decision rule, the
manifest's record of it, and the live loader's choice of graphs. A small random-weight
bimodal export; timings are stubbed (the rule is under test, not this machine)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from support.bimodal import tiny_bimodal_export  # noqa: E402

from hepascope.core.config import load_config  # noqa: E402
from hepascope.core.export_format import (  # noqa: E402
    BIMODAL_GRAPHS,
    INT8_HEAD_FILE,
    MANIFEST_FILE,
    META_PARTS,
    META_QUANTIZATION,
)
from hepascope.core.frame import Frame  # noqa: E402
from hepascope.phantom import Phantom, make_case  # noqa: E402
from hepascope.stream.model_loader import open_model, precision_entry  # noqa: E402
from hepascope.train import demo_precision as dp  # noqa: E402
from hepascope.train.demo_model import verify_model  # noqa: E402

BM, CE, HEAD = BIMODAL_GRAPHS


def test_int8_within_one_point_and_faster() -> None:
    d = dp.decide(0.90, 0.891, {BM: 1.8, CE: 1.3, HEAD: 1.2})
    assert d["precision"] == "int8" and d["int8_graphs"] == sorted([BM, CE, HEAD])
    assert dp.decide(0.90, 0.89, {BM: 1.8})["precision"] == "int8"  # exactly 1 point
    assert dp.decide(0.90, 0.95, {BM: 1.8})["precision"] == "int8"  # better is fine


def test_fp32_when_int8_loses_more_than_one_point() -> None:
    d = dp.decide(0.90, 0.8899, {BM: 1.8, CE: 1.3, HEAD: 1.2})
    assert d["precision"] == "fp32" and d["int8_graphs"] == [] and "points" in d["reason"]


def test_int8_only_where_faster() -> None:
    d = dp.decide(0.90, 0.90, {BM: 1.8, CE: 0.8, HEAD: dp.MIN_SPEEDUP})
    assert d["precision"] == "int8" and d["int8_graphs"] == sorted([BM, HEAD])
    slower = dp.decide(0.90, 0.90, {BM: 0.9, CE: 1.0, HEAD: dp.MIN_SPEEDUP - 0.01})
    assert slower["precision"] == "fp32" and "faster" in slower["reason"]


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A random-weight bimodal export with a manifest, and phantom windows for it."""
    d = tmp_path_factory.mktemp("precision")
    data = tiny_bimodal_export(d / "onnx", patients_per_class=3)
    files = {n: dp.sha256_file(d / "onnx" / n) for n in BIMODAL_GRAPHS}
    (d / "onnx" / MANIFEST_FILE).write_text(json.dumps({"files": files, "temperature": 1.0}))
    return {"dir": d / "onnx", "data": data}


def _apply(export: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
           speedup: dict[str, float], max_drop: float) -> tuple[Path, dict[str, Any]]:
    """The precision step on a copy of the export, with stubbed timings and limit."""
    d = tmp_path / "model"
    shutil.copytree(export["dir"], d)

    def fake_time(fp32: Path, int8: Path, feed: Any, threads: int) -> dict[str, float]:
        return {"fp32_p50_ms": 1.0, "int8_p50_ms": 1.0, "speedup": speedup[fp32.name]}

    monkeypatch.setattr(dp, "time_graph", fake_time)
    n = len(export["data"])
    block = dp.apply_precision(d, export["data"], np.arange(0, n, 2), np.arange(1, n, 2), 1.0,
                               max_drop=max_drop)
    return d, block


def _run_frame(path: Path) -> np.ndarray:
    model = open_model(path, load_config(), backend="onnxruntime", threads=1)
    try:
        frame, _ = Phantom(make_case(5, "hcc"), ceus_t0_s=30).render(0)
        probs, _ = model.predict(Frame(frame, 0, 0, "test", 0.0))
        return np.asarray(probs)
    finally:
        model.close()


def test_int8_is_recorded_and_loaded(export: dict[str, Any], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    d, block = _apply(export, tmp_path, monkeypatch, {BM: 2.0, CE: 2.0, HEAD: 2.0}, 1.0)
    assert block["precision"] == "int8" and block["entry"] == INT8_HEAD_FILE
    manifest = verify_model(d)  # every listed file with its SHA-256
    assert manifest["precision"] == block
    assert set(manifest["files"]) == {*BIMODAL_GRAPHS, INT8_HEAD_FILE,
                                      dp.int8_file(BM), dp.int8_file(CE)}
    val = block["validation"]
    assert {"fp32", "int8", "int8_all_graphs"} <= set(val) and val["windows"] > 0
    assert 0 <= val["int8"]["accuracy"] <= 1 and val["fp32"]["agreement_with_fp32"] == 1
    assert set(block["speed"][BM]) == {f"threads_{t}" for t in dp.thread_counts()}
    assert precision_entry(d) == d / INT8_HEAD_FILE
    head = onnx.load(str(d / INT8_HEAD_FILE))
    meta = {p.key: p.value for p in head.metadata_props}
    assert json.loads(meta[META_PARTS]) == {"bmode_encoder": dp.int8_file(BM),
                                            "ceus_encoder": dp.int8_file(CE)}
    assert META_QUANTIZATION in meta
    p = _run_frame(d)
    assert p.shape == (2,) and abs(p.sum() - 1) < 1e-5


def test_int8_head_only_where_faster(export: dict[str, Any], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A head slower in INT8 stays fp32: head.int8.onnx is its copy naming INT8 encoders."""
    d, block = _apply(export, tmp_path, monkeypatch, {BM: 2.0, CE: 2.0, HEAD: 0.5}, 1.0)
    assert block["int8_graphs"] == sorted([BM, CE])
    meta = {p.key: p.value for p in onnx.load(str(d / INT8_HEAD_FILE)).metadata_props}
    assert META_QUANTIZATION not in meta and dp.int8_file(BM) in meta[META_PARTS]
    assert _run_frame(d).shape == (2,)


def test_fp32_when_int8_loses_accuracy(export: dict[str, Any], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A negative limit fails any INT8: nothing INT8 is left (an earlier INT8
    configuration is removed), the loader runs fp32."""
    d, _ = _apply(export, tmp_path, monkeypatch, {BM: 2.0, CE: 2.0, HEAD: 2.0}, 1.0)
    assert precision_entry(d) is not None
    n = len(export["data"])
    block = dp.apply_precision(d, export["data"], np.arange(0, n, 2), np.arange(1, n, 2),
                               1.0, max_drop=-1.0)
    assert block["precision"] == "fp32" and block["entry"] == "head.onnx"
    manifest = verify_model(d)
    assert set(manifest["files"]) == set(BIMODAL_GRAPHS)
    assert not list(d.glob("*.int8.onnx")) and precision_entry(d) is None
    assert _run_frame(d).shape == (2,)


def test_the_demo_can_force_fp32() -> None:
    from hepascope.train.demo import _precision

    m = {"precision": {"precision": "int8", "int8_graphs": [BM], "reason": "r"}}
    assert _precision(m, False) == {"manifest": "int8", "ran": "int8", "int8_graphs": [BM],
                                    "reason": "r"}
    assert _precision(m, True)["ran"] == "fp32"
    assert _precision({}, False)["ran"] == "fp32"


def test_the_regenerated_validation_set_is_the_training_split() -> None:
    """``demo_int8`` renders only the validation patients the trainer held out (same
    ``holdout_split``), frame for frame as the recipe's phantom set holds them."""
    from hepascope.train.calibrate import validation_indices
    from hepascope.train.data import WindowSpec, build_phantom_set, make_specs, phantom_set_arrays
    from hepascope.train.demo_int8 import pick_per_class, recipe_split, render_cases
    from hepascope.train.demo_model import Recipe
    from hepascope.train.trainer import TrainConfig

    recipe = Recipe(cases_per_class=4, seed=3)
    full = phantom_set_arrays(build_phantom_set(
        n_cases_per_class=4, seconds_per_case=recipe.seconds_per_case, window=WindowSpec(),
        specs=make_specs(load_config()), seed=recipe.data_seed, workers=1))
    va = validation_indices(full, TrainConfig(val_fraction=recipe.val_fraction,
                                              seed=recipe.seed))
    train, val, per = recipe_split(recipe)
    assert per == 4 and np.array_equal(np.unique(va // per), val)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 24
    part = pick_per_class(val, 6, 6)
    got = render_cases(recipe, part, 1)
    rows = np.concatenate([np.arange(c * per, (c + 1) * per) for c in part])
    assert np.array_equal(got.groups, full.groups[rows])
    assert np.array_equal(got.bmode, full.bmode[rows]) and np.array_equal(got.ceus,
                                                                          full.ceus[rows])


def test_a_retrained_demo_model_gets_its_precision_step(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``ensure_model(retrain=True)`` with a tiny recipe: train, calibrate, export, then
    the precision step on the training split's windows, recorded in the manifest."""
    from rich.console import Console

    from hepascope.train.demo_model import Recipe, ensure_model

    def fake_time(fp32: Path, int8: Path, feed: Any, threads: int) -> dict[str, float]:
        return {"fp32_p50_ms": 2.0, "int8_p50_ms": 1.0, "speedup": 2.0}

    monkeypatch.setattr(dp, "time_graph", fake_time)
    recipe = Recipe(cases_per_class=2, steps=2, batch_size=4, threads=1)
    out = ensure_model(tmp_path, Console(stderr=True), retrain=True, recipe=recipe)
    block = verify_model(out)["precision"]
    assert block["validation"]["windows"] > 0 and block["precision"] in ("int8", "fp32")
    assert block["quantization"]["from"] == "training windows"
    assert (precision_entry(out) is not None) == (block["precision"] == "int8")
