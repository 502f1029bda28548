"""``hepascope eval`` on a folder of real-like videos made here (several per patient): N
frames per clip, predictions.csv from which the report's headline figures are recomputed,
per-patient results, the texture baseline beside the network, the warning when a cap cut
folds short; ``hepascope train`` + ``export`` carry the calibration into the graph."""

from __future__ import annotations

import csv
import itertools
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("skimage")

from support.media import write_video  # noqa: E402

from hepascope.cli import main  # noqa: E402

FRAMES, PER_CLIP = 9, 3  # 9-frame videos, 3 frames each: frames 0, 3 and 6
TINY = ["--model-arg", "width=8", "--workers", "1", "--threads", "2", "--batch-size", "8"]


def video_folder(root: Path) -> Path:
    """Two classes, 3 patients each, 2 videos per patient (mp4 and avi), patients.csv."""
    rows = []
    for c in ("cyst", "solid"):
        (root / c).mkdir(parents=True)
        for p in range(3):
            for v, ext in enumerate((".mp4", ".avi")):
                rel = f"{c}/{c}{p}_v{v}{ext}"
                write_video(root / rel, frames=FRAMES, fps=10, size=(48, 64))
                rows.append((rel, f"{c}-patient{p}"))
    with (root / "patients.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("path", "patient_id"), *rows])
    return root


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    """One eval run: 3 frames per clip, 2 folds, a time budget that stops every fold."""
    root = tmp_path_factory.mktemp("eval")
    data = video_folder(root / "videos")
    out = root / "out"
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["eval", "--data", str(data), "--frames-per-clip", str(PER_CLIP),
                     "--folds", "2", "--epochs", "2", "--max-minutes", "0.00001",
                     "--out", str(out), *TINY])
    assert code == 0
    return out, json.loads((out / "report.json").read_text()), err.getvalue()


def read_predictions(out: Path) -> list[dict[str, str]]:
    with (out / "predictions.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_frames_per_clip_takes_evenly_spaced_frames_with_the_clips_patient(
        evaluated: tuple[Path, dict[str, Any], str]) -> None:
    out, rep, _ = evaluated
    rows = [r for r in read_predictions(out) if r["model"] == "resnet18"]
    assert len(rows) == 2 * 3 * 2 * PER_CLIP  # classes x patients x videos x frames
    frames: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        path, _, frame = r["path"].partition("#")
        frames[path].append(int(frame))
        m = re.fullmatch(r"(\w+)/(\w+)(\d)_v\d\.(mp4|avi)", path)
        assert m is not None, path
        assert r["patient"] == f"{m[1]}-patient{m[3]}"  # the clip's patient
        assert r["true_label"] == m[1] == m[2]
    assert len(frames) == 12 and all(sorted(f) == [0, 3, 6] for f in frames.values())
    assert rep["results"]["resnet18"]["data"]["samples"] == 36
    assert rep["results"]["resnet18"]["data"]["patients"] == 6
    assert rep["meta"]["defaults"]["frames_per_clip"] == PER_CLIP


def test_defaults_come_from_the_data(evaluated: tuple[Path, dict[str, Any], str]) -> None:
    """No --config, --image-size or --patience: B-mode-only files, their size (48x64
    frames), one CLAHE tile (48 px < 2 x 32), grey input."""
    _, rep, _ = evaluated
    d = rep["meta"]["defaults"]
    assert d["config"] == "single_view" and d["input_size"] == [64, 64] and d["channels"] == 1
    assert d["clahe_tiles"] == 1 and d["sizes"]["median_hw"] == [48, 64]
    assert d["patience"] == 3 and "epochs" not in d  # --epochs given: not from the data


def _ece(y: np.ndarray, p: np.ndarray, bins: int = 15) -> float:
    conf, right = p.max(1), p.argmax(1) == y
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        sel = (conf > lo) & (conf <= hi) if lo > 0 else (conf <= hi)
        if sel.any():
            total += sel.mean() * abs(right[sel].mean() - conf[sel].mean())
    return total


def recompute(rows: list[dict[str, str]], classes: list[str]) -> dict[str, Any]:
    """Headline figures per model and fold from predictions.csv alone (its own code: no
    report function), per sample and per patient."""
    from sklearn.metrics import f1_score

    by: dict[tuple[str, int], list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        by[(r["model"], int(r["fold"]))].append(r)
    out: dict[str, Any] = {}
    for (model, fold), rs in by.items():
        y = np.array([classes.index(r["true_label"]) for r in rs])
        p = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rs])
        pred = np.array([classes.index(r["predicted"]) for r in rs])
        ok = np.array([r["status"] == "ok" for r in rs])
        pats: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(rs):
            pats[r["patient"]].append(i)
        pm = np.array([p[ix].mean(0) for ix in pats.values()])
        py = np.array([y[ix[0]] for ix in pats.values()])
        out[f"{model}/{fold}"] = {
            "accuracy": float(np.mean(pred == y)),
            "f1": float(f1_score(y, pred, average="macro", labels=range(len(classes)),
                                 zero_division=0)),
            "ece": _ece(y, p), "coverage": float(ok.mean()),
            "selective_accuracy": float(np.mean(pred[ok] == y[ok])) if ok.any() else None,
            "patient_accuracy": float(np.mean(pm.argmax(1) == py)),
            "argmax_is_predicted": bool((p.argmax(1) == pred).all())}
    return out


def test_report_figures_recomputed_from_predictions_csv(
        evaluated: tuple[Path, dict[str, Any], str]) -> None:
    out, rep, _ = evaluated
    got = recompute(read_predictions(out), rep["classes"])
    assert {k.split("/")[0] for k in got} == {"resnet18", "texture_rf"}
    for model in ("resnet18", "texture_rf"):
        res = rep["results"][model]
        for f, ab, pt in zip(res["folds"], res["abstention"]["folds"], res["patients"]["folds"],
                             strict=True):
            g = got[f"{model}/{f['fold']}"]
            m = f["metrics"]
            assert g["argmax_is_predicted"]
            assert g["accuracy"] == pytest.approx(m["macro"]["accuracy"], abs=1e-6)
            assert g["f1"] == pytest.approx(m["macro"]["f1"], abs=1e-6)
            assert g["ece"] == pytest.approx(m["ece"], abs=1e-5)
            assert g["coverage"] == pytest.approx(ab["coverage"], abs=1e-6)
            assert g["selective_accuracy"] == pytest.approx(ab["selective_accuracy"], abs=1e-6)
            assert g["patient_accuracy"] == pytest.approx(pt["metrics"]["macro"]["accuracy"],
                                                          abs=1e-6)
        accs = [got[f"{model}/{f['fold']}"]["accuracy"] for f in res["folds"]]
        assert np.mean(accs) == pytest.approx(res["aggregate"]["macro"]["accuracy"]["mean"],
                                              abs=1e-6)


def test_report_shows_baseline_calibration_abstention_and_patients(
        evaluated: tuple[Path, dict[str, Any], str]) -> None:
    out, rep, _ = evaluated
    md = (out / "report.md").read_text()
    assert rep["models"] == ["resnet18", "texture_rf"]
    assert rep["versus_baseline"]["networks"]["resnet18"]["folds"][0]["baseline_accuracy"] \
        == rep["results"]["texture_rf"]["folds"][0]["metrics"]["macro"]["accuracy"]
    for text in ("## Networks against the texture baseline (same folds)",
                 "| Class | resnet18 precision | recall | F1 | texture_rf precision |",
                 "| Fold | Temperature | ECE before | ECE after |", "Test coverage",
                 "Per patient (6 test patients)", "![risk-coverage](resnet18/risk_coverage.png)",
                 "predictions.csv"):
        assert text in md, text
    assert (out / "resnet18" / "risk_coverage.png").stat().st_size > 10_000
    cal = rep["results"]["resnet18"]["calibration"]
    assert cal["temperature"]["n"] == 2 and cal["ece_before"]["mean"] is not None


def test_time_cap_is_a_warning_at_the_end_and_beside_the_figures(
        evaluated: tuple[Path, dict[str, Any], str]) -> None:
    out, rep, err = evaluated
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("warning: resnet18: 2 of 2 folds cut short by a cap"), last
    assert "--max-minutes 1e-05 stopped it after 1 of 2 epochs" in last
    md = (out / "report.md").read_text()
    assert "**⚠ resnet18: 2 of 2 folds cut short" in md and "| 1/2, best 1 (time) ⚠ |" in md
    assert "| resnet18 ⚠ |" in md  # the comparison row
    assert rep["results"]["texture_rf"]["capped"] == []


def test_train_and_export_carry_the_calibration(tmp_path: Path) -> None:
    import onnx

    from hepascope.core.export_format import META_CALIBRATION
    from hepascope.stream.classifier import read_calibration

    data = video_folder(tmp_path / "videos")
    ck = tmp_path / "ck"
    assert main(["train", "--model", "resnet18", "--data", str(data), "--frames-per-clip", "2",
                 "--epochs", "1", "--target-accuracy", "0.9", "--quiet", "--out", str(ck),
                 *TINY]) == 0
    cal = json.loads((ck / "model.json").read_text())["calibration"]
    assert cal["temperature"] > 0 and cal["target_accuracy"] == 0.9
    assert cal["n_val"] > 0 and 0 <= cal["abstain_threshold"] <= 1.0 + 1e-9
    assert main(["export", "--checkpoint", str(ck)]) == 0
    props = {p.key: p.value for p in onnx.load(str(ck / "onnx" / "model.onnx")).metadata_props}
    assert json.loads(props[META_CALIBRATION]) == cal
    # what the live path reads, under the keys it reads them by
    live = read_calibration(props, "model.onnx")
    assert live.temperature == pytest.approx(cal["temperature"])
    assert live.abstain_threshold == pytest.approx(cal["abstain_threshold"])
