"""From a folder of real-like videos to per-patient answers (issue 20), through the CLI
alone: MP4s made here with PyAV (one class per folder, several videos per patient, three
textures a tiny network tells apart) and manifest.csv -> ``hepascope eval
--frames-per-clip`` (per-patient results, one predictions.csv row per frame) -> one fold's
checkpoint exported -> ``hepascope run`` on a video of that fold's held-out patients ->
the summary ends with the recording's answer."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from support.media import write_video  # noqa: E402
from support.runs import free_port  # noqa: E402

from hepascope.cli import main  # noqa: E402

FRAMES, PER_CLIP, PATIENTS, VIDEOS = 12, 6, 3, 2  # per class: patients, videos per patient
SIZE = (64, 64)
FOLD = 0


def texture(kind: str, seed: int):  # type: ignore[no-untyped-def]
    """A frame pattern (i, h, w) -> BGR of a class: fine speckle, coarse blobs or stripes,
    moving from frame to frame, all mid grey (CLAHE leaves texture, not brightness)."""
    rng = np.random.default_rng(seed)

    def frame(i: int, h: int, w: int) -> np.ndarray:
        if kind == "speckle":
            g = rng.normal(128, 50, (h, w))
        elif kind == "blobs":
            coarse = rng.normal(128, 60, (h // 16, w // 16))
            g = np.kron(coarse, np.ones((16, 16))) + rng.normal(0, 5, (h, w))
        else:  # stripes, drifting
            x = np.arange(w)[None, :] + i
            g = 128 + 80 * np.sign(np.sin(2 * np.pi * x / 12)) + rng.normal(0, 5, (h, w))
        grey = np.clip(g, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)

    return frame


def video_folder(root: Path) -> tuple[Path, list[tuple[str, str, str]]]:
    """Class folders of MP4s and manifest.csv (path,label,patient_id)."""
    rows = []
    for c, kind in enumerate(("speckle", "blobs", "stripes")):
        for p in range(PATIENTS):
            for v in range(VIDEOS):
                rel = f"{kind}/{kind}{p}_v{v}.mp4"
                write_video(root / rel, frames=FRAMES, fps=10, size=SIZE,
                            pattern=texture(kind, 100 * c + 10 * p + v))
                rows.append((rel, kind, f"{kind}-p{p}"))
    with (root / "manifest.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "patient_id"), *rows])
    return root, rows


def _cli(argv: list[str]) -> tuple[int, list[str], str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue().splitlines(), err.getvalue()


def test_videos_to_per_patient_results_and_a_recordings_answer(tmp_path: Path) -> None:
    data, rows = video_folder(tmp_path / "videos")
    out = tmp_path / "eval"
    code, _, err = _cli(["eval", "--data", str(data), "--frames-per-clip", str(PER_CLIP),
                         "--models", "resnet18", "--model-arg", "width=8", "--image-size",
                         "32", "--epochs", "6", "--folds", "2", "--target-accuracy", "0.6",
                         "--keep-checkpoints", "--no-baseline", "--workers", "1",
                         "--threads", "1", "--batch-size", "8", "--out", str(out)])
    assert code == 0, err
    rep = json.loads((out / "report.json").read_text())
    pts = rep["results"]["resnet18"]["patients"]
    assert sum(f["patients"] for f in pts["folds"]) == 3 * PATIENTS  # every patient once
    assert pts["vote_accuracy"]["n"] == 2 and pts["aggregate"]["macro"]["accuracy"]["n"] == 2

    with (out / "predictions.csv").open(newline="") as f:
        preds = list(csv.DictReader(f))
    assert len(preds) == len(rows) * PER_CLIP  # one row per frame taken
    patient_of = {rel: pid for rel, _, pid in rows}
    assert Counter(r["path"].partition("#")[0] for r in preds) == dict.fromkeys(patient_of,
                                                                                PER_CLIP)
    assert all(r["patient"] == patient_of[r["path"].partition("#")[0]] for r in preds)
    print(f"\neval: fold accuracy {[f['metrics']['macro']['accuracy'] for f in rep['results']['resnet18']['folds']]}"  # noqa: E501
          f", patient vote accuracy {[f['vote_accuracy'] for f in pts['folds']]}")

    ck = out / "checkpoints" / "resnet18" / f"fold{FOLD}"
    code, _, err = _cli(["export", "--checkpoint", str(ck)])
    assert code == 0, err
    # the fold's export carries the calibration the report scored that fold with
    import onnx

    props = {p.key: p.value for p in onnx.load(str(ck / "onnx" / "model.onnx")).metadata_props}
    cal = rep["results"]["resnet18"]["calibration"]["folds"][FOLD]
    assert float(props.get("hepascope.temperature", "nan")) == pytest.approx(
        cal["temperature"], abs=1e-6)
    threshold = rep["results"]["resnet18"]["abstention"]["folds"][FOLD]["threshold"]
    assert float(props.get("hepascope.abstain_threshold", "nan")) == pytest.approx(
        min(threshold, 1.0), abs=1e-6)
    held = next(r for r in preds if r["fold"] == str(FOLD))  # a test patient of that fold
    video = data / held["path"].partition("#")[0]
    summary_path = tmp_path / "s.json"
    code, lines, err = _cli(["run", "--source", str(video), "--model",
                             str(ck / "onnx" / "model.onnx"), "--config", "single_view",
                             "--publish", f"tcp://127.0.0.1:{free_port()}",
                             "--summary", str(summary_path)])
    assert code == 0, err
    summary = json.loads(summary_path.read_text())
    a = summary["answer"]
    assert list(summary)[-2:] == ["answer", "answers"] and len(summary["answers"]) == 1
    assert a["results"] == summary["frames_out"] > 0
    assert a["label"] in (*rep["classes"], "uncertain")
    assert sum(a["status_shares"].values()) == pytest.approx(1.0)
    if a["label"] == "uncertain":
        assert a["confidence"] is None and a["status_shares"]["ok"] == 0
    else:
        assert sum(a["class_shares"].values()) == pytest.approx(1.0)
        assert 0 < a["confidence"] <= 1
    assert lines[-1].startswith(f"answer {a['model']} on file:{video.name}: {a['label']} ")
    print(f"held-out {held['path'].partition('#')[0]} (truth {held['true_label']}): "
          f"{lines[-1]}")
