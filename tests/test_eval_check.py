"""``hepascope eval --check DIR`` (train/evaluation/check.py) on a report made here from a
small synthetic image set: every figure of report.json (per fold and class, per patient
with the majority vote, coverage at the threshold) comes back from predictions.csv; a
figure changed in either file from outside is named."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("skimage")

from hepascope.cli import main  # noqa: E402
from hepascope.train.evaluation.check import recompute_report  # noqa: E402

CLASSES = {"dark": 60, "mid": 128, "bright": 200}  # mean grey level per class
TINY = ["--model-arg", "width=8", "--workers", "1", "--threads", "2", "--batch-size", "8",
        "--image-size", "32", "--folds", "2", "--epochs", "2"]


def image_folder(root: Path, patients: int = 4, per_patient: int = 3) -> Path:
    """Class folders of 32x32 PNGs (speckle around the class's grey level) and
    patients.csv: several images per patient."""
    rng = np.random.default_rng(20)
    rows = []
    for c, level in CLASSES.items():
        (root / c).mkdir(parents=True)
        for p in range(patients):
            for k in range(per_patient):
                rel = f"{c}/p{p}_{k}.png"
                img = np.clip(rng.normal(level, 25, (32, 32)), 0, 255).astype(np.uint8)
                cv2.imwrite(str(root / rel), img)
                rows.append((rel, f"{c}-{p}"))
    with (root / "patients.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("path", "patient_id"), *rows])
    return root


def _cli(argv: list[str]) -> tuple[int, list[str]]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue().splitlines()


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("check")
    out = root / "report"
    code, _ = _cli(["eval", "--data", str(image_folder(root / "images")), "--out", str(out),
                    *TINY])
    assert code == 0
    return out


def test_every_figure_comes_back_from_predictions_csv(report: Path) -> None:
    rep = json.loads((report / "report.json").read_text())
    assert rep["models"] == ["resnet18", "texture_rf"]
    assert recompute_report(report) == []
    code, lines = _cli(["eval", "--check", str(report)])
    assert code == 0 and lines == [f"{report}: every figure checked agrees with "
                                   "predictions.csv"]
    pt = rep["results"]["resnet18"]["patients"]["folds"]
    print(f"\nresnet18 per fold: accuracy "
          f"{[f['metrics']['macro']['accuracy'] for f in rep['results']['resnet18']['folds']]}"
          f", patient vote accuracy {[f['vote_accuracy'] for f in pt]}")


def _copy(report: Path, to: Path) -> Path:
    shutil.copytree(report, to)
    return to


def test_a_changed_prediction_is_named(report: Path, tmp_path: Path) -> None:
    """One row of predictions.csv moved to another class: its fold's accuracy, confusion,
    class figures and patient figures no longer come back."""
    d = _copy(report, tmp_path / "r")
    path = d / "predictions.csv"
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    row = next(r for r in rows if r["model"] == "resnet18" and r["predicted"] == r["true_label"])
    other = next(c for c in CLASSES if c != row["true_label"])
    for c in CLASSES:
        row[f"p_{c}"] = "0.98" if c == other else "0.01"
    row["predicted"], row["confidence"] = other, "0.98"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    bad = [str(m) for m in recompute_report(d)]
    fold = row["fold"]
    assert any(m.startswith(f"resnet18 fold {fold} metrics.macro.accuracy: ") for m in bad), bad
    assert any(m.startswith(f"resnet18 fold {fold} metrics.confusion: ") for m in bad)
    assert any(m.startswith("resnet18 aggregate.macro.accuracy.mean: ") for m in bad)
    assert not any(m.startswith("texture_rf") for m in bad)
    code, lines = _cli(["eval", "--check", str(d)])
    assert code == 1 and lines[-1] == f"{d}: {len(bad)} figures of report.json differ from " \
        "predictions.csv"
    print(f"\n{len(bad)} mismatches, e.g. {bad[0]}")


def test_a_changed_report_figure_is_named(report: Path, tmp_path: Path) -> None:
    d = _copy(report, tmp_path / "r")
    rep = json.loads((d / "report.json").read_text())
    fold = rep["results"]["texture_rf"]["patients"]["folds"][1]
    fold["vote_accuracy"] = round(fold["vote_accuracy"] - 0.25, 6)
    (d / "report.json").write_text(json.dumps(rep))
    bad = [str(m) for m in recompute_report(d)]
    assert len(bad) == 1, bad  # that figure alone
    assert bad[0].startswith(f"texture_rf fold {fold['fold']} patients.vote_accuracy: ")


def test_a_missing_report_is_one_error_line(tmp_path: Path) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["eval", "--check", str(tmp_path)]) == 2
    assert err.getvalue().count("\n") == 1 and "no readable report.json" in err.getvalue()


def test_confidences_next_to_the_threshold_keep_their_side(tmp_path: Path) -> None:
    """Saturated confidences (a random forest's 1.0, calibrated) a hair either side of the
    threshold: predictions.csv must keep them apart, so that its status column and the
    per-patient coverage come back from its numbers alone."""
    from hepascope.train.evaluation.report import FoldResult, write_report

    thr = 1 - 1e-12
    above, below = 1 - 5e-13, 1 - 5e-12  # both "1" at 9 significant digits
    results = []
    for fold in range(2):
        conf = np.array([above, below, above, below, above, below])
        y = np.array([0, 0, 1, 1, 0, 1])
        top = np.array([0, 0, 1, 0, 1, 1])  # two wrong answers
        probs = np.zeros((6, 2))
        probs[np.arange(6), top] = conf
        probs[np.arange(6), 1 - top] = 1 - conf
        results.append(FoldResult(
            "rf", fold, y, probs, np.array([f"f{fold}p{i}" for i in range(6)]),
            np.array(["x"]), calibration={"temperature": 1.0, "abstain": {"threshold": thr}}))
    out = tmp_path / "edge"
    rep = write_report(results, ("a", "b"), out, title="edge", meta={})
    with (out / "predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["ok", "uncertain"] * 6
    assert [r["status"] == "ok" for r in rows] == [
        float(r["confidence"]) >= float(r["threshold"]) for r in rows]
    assert recompute_report(out) == []
    pt = rep["results"]["rf"]["patients"]["folds"][0]
    assert pt["coverage"] == pytest.approx(0.5)
    conf = np.array([float(r["confidence"]) for r in rows[:6]])
    assert float(np.mean(conf >= float(rows[0]["threshold"]))) == pytest.approx(0.5)
    # a file written before (9 significant digits): those rows may fall either side
    nums = [k for k in rows[0] if k.startswith("p_")] + ["confidence", "threshold"]
    for r in rows:
        r.update({k: f"{float(r[k]):.9g}" for k in nums})
    with (out / "predictions.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert rows[1]["confidence"] == rows[1]["threshold"] == "1"
    assert recompute_report(out) == []
