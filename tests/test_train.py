"""Training stack: models, the phantom set, the patient split, a tiny training run, metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hepascope.core.config import load_config  # noqa: E402
from hepascope.core.preprocess import preprocess_view  # noqa: E402
from hepascope.phantom import Phantom, make_case, plan_segment  # noqa: E402
from hepascope.train.cli import bimodal_models  # noqa: E402
from hepascope.train.data import (  # noqa: E402
    PhantomSet,
    WindowSpec,
    build_phantom_set,
    cached_phantom_set,
    case_plan,
    make_specs,
    phantom_set_arrays,
)
from hepascope.train.datasets.arrays import ArraySet  # noqa: E402
from hepascope.train.models import list_models  # noqa: E402
from hepascope.train.samples import ArrayDataset  # noqa: E402
from hepascope.train.trainer import (  # noqa: E402
    TrainConfig,
    confusion_matrix,
    evaluate,
    load_checkpoint,
    metrics_from_confusion,
    train,
)

WIN = WindowSpec(window=3, interval_frames=10)
CLASSES = ("normal", "cyst")


@pytest.fixture(scope="module")
def specs() -> tuple:
    return make_specs(load_config(), bmode_size=(64, 64), ceus_size=(32, 32))


@pytest.fixture(scope="module")
def pset(specs: tuple) -> PhantomSet:
    """2 classes x 3 patients x 6 frames (2 s at 1/3 s), built on 2 worker processes."""
    return build_phantom_set(n_cases_per_class=3, seconds_per_case=2.0, window=WIN,
                             specs=specs, seed=7, classes=CLASSES, workers=2)


def test_cli_model_choices_match_registry() -> None:
    assert bimodal_models() == [m for m in list_models() if m.startswith("bimodal")]


def test_cli_registration_is_torch_free() -> None:
    code = ("import argparse, sys; from hepascope.train.cli import add_subcommands; "
            "add_subcommands(argparse.ArgumentParser().add_subparsers()); "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_phantom_set_shapes_and_preprocessing(pset: PhantomSet, specs: tuple) -> None:
    assert pset.bmode.shape == (36, 1, 64, 64) and pset.bmode.dtype == np.float16
    assert pset.ceus.shape == (36, 1, 32, 32) and pset.ceus.dtype == np.float16
    assert list(pset.labels) == [0, 1, 0, 1, 0, 1] and len(set(pset.patient_ids)) == 6
    assert len(pset.sample_rows) == 6 * (6 - WIN.window + 1)
    # row 10 is case 1, frame position 4: re-render and preprocess it the streaming way
    plan = case_plan(7, 1, CLASSES)
    case = make_case(plan["case_seed"], lesion=plan["label"], fatty_grade=plan["fatty_grade"],
                     patient_id=plan["patient_id"])
    ph = Phantom(case, ceus_t0_s=plan["ceus_t0_s"], ceus_speed=plan["ceus_speed"])
    assert pset.case_index[10] == 1
    frame, truth = ph.render(int(pset.frame_index[10]))
    assert truth["label"] == "cyst" and pset.fatty_grades[1] == case.fatty_grade
    np.testing.assert_array_equal(
        pset.bmode[10], preprocess_view(frame, specs[0], "bmode").astype(np.float16))
    np.testing.assert_array_equal(
        pset.ceus[10], preprocess_view(frame, specs[1], "ceus").astype(np.float16))


def test_training_seeds_disjoint_from_demo_sessions() -> None:
    demo = {plan_segment(0, k).case_seed for k in range(60)}
    assert not demo & {case_plan(0, i, CLASSES)["case_seed"] for i in range(1000)}


def test_save_load_roundtrip(pset: PhantomSet, tmp_path: Path) -> None:
    path = pset.save(tmp_path / "set.npz")
    back = PhantomSet.load(path)
    for k in ("bmode", "ceus", "case_index", "frame_index", "labels", "fatty_grades"):
        np.testing.assert_array_equal(getattr(back, k), getattr(pset, k))
    assert back.patient_ids == pset.patient_ids and back.window == pset.window
    assert back.preprocess == json.loads(json.dumps(pset.preprocess))
    assert back.classes == pset.classes and back.seed == 7


def test_cache_reuses_and_keys_by_params(specs: tuple, tmp_path: Path) -> None:
    kw = dict(n_cases_per_class=1, seconds_per_case=1.0, window=WIN, specs=specs, seed=1,
              classes=("cyst",), workers=1)
    a = cached_phantom_set(tmp_path, **kw)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    np.testing.assert_array_equal(cached_phantom_set(tmp_path, **kw).bmode, a.bmode)
    cached_phantom_set(tmp_path, **{**kw, "seed": 2})
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_bad_arguments_raise(specs: tuple) -> None:
    with pytest.raises(ValueError, match="window"):
        build_phantom_set(n_cases_per_class=1, seconds_per_case=0.5, window=WIN, specs=specs,
                          seed=0)
    with pytest.raises(ValueError, match="classes"):
        build_phantom_set(n_cases_per_class=1, window=WIN, specs=specs, seed=0,
                          classes=("tumour",))
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="adam")


def test_phantom_set_arrays_materialise_windows(pset: PhantomSet) -> None:
    data = phantom_set_arrays(pset)
    assert len(data) == len(pset.sample_rows) and data.window["frames"] == 3
    assert data.ceus is not None and data.bmode is not None
    row = pset.sample_rows[0]  # the window ends at this row, oldest CEUS frame first
    np.testing.assert_array_equal(data.ceus[0], pset.ceus[row - 2:row + 1])
    np.testing.assert_array_equal(data.bmode[0], pset.bmode[row])
    assert data.groups[0] == pset.patient_ids[pset.case_index[row]]
    assert data.labels[0] == pset.labels[pset.case_index[row]]


def test_train_tiny_and_reload(pset: PhantomSet, tmp_path: Path) -> None:
    cfg = TrainConfig(model="bimodal_resnet18_lite", epochs=1, batch_size=4, num_threads=1,
                      val_fraction=0.34, seed=0)
    data = phantom_set_arrays(pset)
    res = train(data, cfg, tmp_path, progress=False)
    assert (tmp_path / "model.safetensors").is_file() and res.epochs_run == 1
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["labels"] == list(CLASSES) and meta["window"] == 3
    assert meta["kwargs"]["num_classes"] == 2 and meta["interval_s"] == pytest.approx(1 / 3)
    assert meta["metrics"]["n_val_patients"] == meta["train"]["n_val_patients"] >= 2
    assert set(meta["preprocess"]) == {"bmode", "ceus"}
    model, meta2 = load_checkpoint(tmp_path)
    assert not model.training and meta2 == meta
    va = np.flatnonzero(np.isin(data.groups, [g for g in set(data.groups.tolist())
                                              if g not in _train_patients(data, meta)]))
    ds = ArrayDataset(data, va, "bimodal")
    bm = torch.stack([ds[i][0][0] for i in range(len(ds))])
    ce = torch.stack([ds[i][0][1] for i in range(len(ds))])
    with torch.no_grad():
        first = model(bm, ce)
        again = load_checkpoint(tmp_path)[0](bm, ce)
    torch.testing.assert_close(first, again)
    assert evaluate(model, ds)["accuracy"] == pytest.approx(meta["metrics"]["val_accuracy"])


def _train_patients(data: ArraySet, meta: dict) -> set[str]:
    """The patients the trainer's holdout split put in training (re-derived)."""
    from hepascope.train.evaluation.folds import holdout_split

    tr, _ = holdout_split(data.labels, data.groups, meta["train"]["val_fraction"],
                          meta["train"]["seed"])
    return set(data.groups[tr].tolist())


def test_metrics_hand_made() -> None:
    conf = confusion_matrix([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 1, 0], 3)
    assert conf.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    m = metrics_from_confusion(conf, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["sensitivity"] == pytest.approx({"a": 2 / 3, "b": 1.0, "c": 0.0})
    assert m["specificity"] == pytest.approx({"a": 2 / 3, "b": 3 / 4, "c": 1.0})
    f1 = [2 * 2 / (4 + 1 + 1), 2 * 2 / (4 + 1 + 0), 0.0]
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3)


def test_evaluate_counts_predictions() -> None:
    class Fixed(torch.nn.Module):
        def forward(self, bmode: torch.Tensor, ceus: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(bmode[:, 0, 0, 0].long(), 2).float()

    data = [((torch.full((1, 8, 8), float(p)), torch.zeros(1, 1, 8, 8)), t)
            for t, p in [(0, 0), (0, 1), (1, 1), (1, 1)]]
    m = evaluate(Fixed(), data, labels=["x", "y"])  # type: ignore[arg-type]
    assert m["confusion"] == [[1, 1], [0, 2]] and m["accuracy"] == 0.75
