"""``hepascope train / eval / export`` through the CLI: every task preset's report, the
patient-leak guarantee, and a folder of real ultrasound images (pydicom's example scans)."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hepascope.cli import main  # noqa: E402
from hepascope.train.crossval import cross_validate  # noqa: E402
from hepascope.train.datasets.phantom import phantom_arrays  # noqa: E402
from hepascope.train.tasks import get_task, list_tasks  # noqa: E402
from hepascope.train.trainer import TrainConfig  # noqa: E402

TINY = ["--folds", "2", "--epochs", "1", "--patients-per-class", "3",
        "--samples-per-patient", "1", "--image-size", "32", "--model-arg", "width=8",
        "--workers", "1", "--threads", "2"]


# two tasks by default (five classes, and two): the others (--slow) are other label sets of
# the same report path
@pytest.mark.parametrize("task", [t if t in ("fll5", "hcc") else
                                  pytest.param(t, marks=pytest.mark.slow) for t in list_tasks()])
def test_eval_every_task_writes_the_full_report(task: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEPASCOPE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "report"
    assert main(["eval", "--task", task, "--models", "resnet18", "--out", str(out),
                 "--cache", str(tmp_path / "cache"), *TINY]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["classes"] == list(get_task(task).classes)
    res = rep["results"]["resnet18"]
    assert res["leakage"]["passed"] is True and len(res["folds"]) == 2
    md = (out / "report.md").read_text()
    for col in ("Sensitivity", "Specificity", "PPV", "NPV", "F1", "AUC"):
        assert col in md
    for fig in ("confusion", "roc", "reliability"):
        img = cv2.imread(str(out / "resnet18" / f"{fig}.png"))
        assert img is not None and img.shape[0] > 300


def test_no_patient_is_in_train_and_test_of_any_fold(tmp_path: Path) -> None:
    data = phantom_arrays("fll5", patients_per_class=3, samples_per_patient=2,
                          kinds={"image"}, bmode_size=(32, 32), workers=1)
    cfg = TrainConfig(epochs=1, batch_size=8, num_threads=2, device="cpu",
                      model_args=(("width", 8),))
    results = cross_validate({"image": data}, ["resnet18"], cfg, folds=3)
    tested: dict[str, list[str]] = {"resnet18": [], "texture_rf": []}  # the baseline too
    for r in results:
        assert not set(r.groups.tolist()) & set(r.train_groups.tolist())
        assert set(r.groups.tolist()) | set(r.train_groups.tolist()) == set(data.groups.tolist())
        tested[r.model] += sorted(set(r.groups.tolist()))
    for seen in tested.values():  # each patient tested once by each model
        assert sorted(seen) == sorted(set(data.groups.tolist()))
    by_fold = {(r.model, r.fold): set(r.groups.tolist()) for r in results}
    assert all(by_fold[("resnet18", f)] == by_fold[("texture_rf", f)] for f in range(3))


def _real_ultrasound_folder(root: Path) -> Path:
    """Class folders of real scanner images from pydicom's examples: a SonoSite cine (30
    frames, JPEG baseline YBR) and a GE scan (JPEG 2000, and the RGB DICOM itself).
    "Patients" are disjoint parts of each scan: cine frames 5 at a time, GE image tiles."""
    from pydicom import examples

    from hepascope.train.datasets.io import read_clip, read_image

    rows = []
    (root / "sonosite").mkdir(parents=True)
    (root / "ge").mkdir()
    for i, frame in enumerate(read_clip(examples.get_path("ybr_color"))):
        rel = f"sonosite/f{i:02d}.png"
        cv2.imwrite(str(root / rel), frame)
        rows.append((rel, f"sono-{i // 5}"))
    ge = read_image(examples.get_path("jpeg2k"))
    h, w = ge.shape[:2]
    for k in range(6):
        y, x = (k // 3) * h // 2, (k % 3) * w // 3
        rel = f"ge/tile{k}.png"
        cv2.imwrite(str(root / rel), ge[y:y + h // 2, x:x + w // 3])
        rows.append((rel, f"ge-{k}"))
    dcm = root / "ge" / "scan.dcm"
    dcm.write_bytes(Path(examples.get_path("rgb_color")).read_bytes())
    rows.append(("ge/scan.dcm", "ge-dicom"))
    with (root / "patients.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("path", "patient_id"), *rows])
    return root


def test_real_ultrasound_folder_trains_evaluates_and_exports(tmp_path: Path) -> None:
    data = _real_ultrasound_folder(tmp_path / "real")
    common = ["--data", str(data), "--config", "single_view", "--image-size", "64",
              "--model-arg", "width=8", "--epochs", "2", "--workers", "1", "--threads", "2"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every file has a patient id: no leak warning
        assert main(["eval", "--models", "resnet18", "--folds", "2",
                     "--out", str(tmp_path / "eval"), *common]) == 0
    rep = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert rep["classes"] == ["ge", "sonosite"]
    assert rep["results"]["resnet18"]["data"]["patients"] == 13
    ck = tmp_path / "ck"
    assert main(["train", "--model", "resnet18", "--out", str(ck), "--quiet", *common]) == 0
    assert main(["export", "--checkpoint", str(ck)]) == 0
    from hepascope.core.config import load_packaged_config
    from hepascope.engines import open_engine
    from hepascope.stream.classifier import FrameClassifier
    from hepascope.train.datasets.io import read_image

    clf = FrameClassifier(open_engine(ck / "onnx" / "model.onnx"),
                          load_packaged_config("single_view"))
    pred = clf.classify(read_image(data / "ge" / "scan.dcm"))
    assert pred.labels == ("ge", "sonosite") and np.isclose(pred.probs.sum(), 1.0)
    clf.close()
