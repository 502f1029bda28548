"""The demo's labels: a reproducible training run, a data recipe without a fat shortcut,
cache keys that cover the code, the shipped model and its manifest, the scoring and the
report of a quick demo run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from support.arrays import make_arrays  # noqa: E402

from hepascope.core.config import load_config  # noqa: E402
from hepascope.phantom import LESION_CLASSES, Phantom  # noqa: E402
from hepascope.train import data as data_mod  # noqa: E402
from hepascope.train.data import (  # noqa: E402
    DATA_CODE,
    WindowSpec,
    cached_phantom_set,
    case_plan,
    make_specs,
    training_case,
)
from hepascope.train.demo_score import FrameScore, score  # noqa: E402
from hepascope.train.samples import ArrayDataset  # noqa: E402
from hepascope.train.trainer import TrainConfig, train  # noqa: E402

SMALL = (("width", 8), ("ceus_width", 8))


def _step_run(out: Path, steps: int = 7) -> tuple[str, dict]:
    cfg = TrainConfig(model="bimodal_resnet18_lite", steps=steps, batch_size=4, num_threads=2,
                      device="cpu", model_args=SMALL, partial_window=0.5, seed=3)
    res = train(make_arrays(n_patients=8, per_patient=2), cfg, out, progress=False)
    return res.weights_sha256, json.loads((out / "model.json").read_text())["train"]


def test_a_step_budget_trains_to_identical_weights(tmp_path: Path) -> None:
    a, meta = _step_run(tmp_path / "a")
    b, _ = _step_run(tmp_path / "b")
    print(f"\nstep budget 7: weights {a[:16]} / {b[:16]}, epochs {meta['epochs_run']}, "
          f"steps per epoch {[h['step'] for h in meta['history']]}")
    assert a == b
    # the budget, not the epochs, ends the run: the last epoch is cut at step 7
    assert meta["history"][-1]["step"] == 7 and meta["stopped"] == "epochs"
    assert not torch.are_deterministic_algorithms_enabled()  # restored after training


def test_the_schedule_spans_the_steps_taken() -> None:
    from hepascope.train.steps import lr_lambda

    f = lr_lambda(100, 5)
    assert f(0) == pytest.approx(0.01) and f(5) == pytest.approx(1.0)
    assert f(99) < 0.01 and f(100) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=100, max_minutes=5.0)


def test_partial_windows_repeat_the_oldest_kept_frame() -> None:
    data = make_arrays(n_patients=2, per_patient=4)
    ds = ArrayDataset(data, np.arange(len(data)), "bimodal", partial_window=1.0, seed=0)
    full = ArrayDataset(data, np.arange(len(data)), "bimodal")
    cut = 0
    for i in range(len(ds)):
        got, ref = ds[i][0][1].numpy(), full[i][0][1].numpy()
        first = next(k for k in range(len(got)) if np.array_equal(got[k], ref[k]))
        assert first >= 1 and np.array_equal(got[first:], ref[first:])
        assert all(np.array_equal(got[j], ref[first]) for j in range(first))
        cut += 1
    assert cut == len(ds)


def test_the_training_recipe_gives_fat_no_say_on_the_class() -> None:
    """Over the generated cases: within fatty livers every class has grades 1-3 alike, the
    classes that can be fat-free are so equally often, and "fatty" barely moves the odds of
    focal fatty sparing (make_case's default rule: P(sparing | fatty) ~ 0.36)."""
    n = 2400
    grades: dict[str, list[int]] = {c: [] for c in LESION_CLASSES}
    for i in range(n):
        plan = case_plan(0, i, LESION_CLASSES)
        case = training_case(plan)
        assert case.fatty_grade == plan["fatty_grade"] and case.label == plan["label"]
        grades[case.label].append(case.fatty_grade)
    per = n // len(LESION_CLASSES)
    for c, g in grades.items():
        g_arr = np.array(g)
        fatty = g_arr[g_arr >= 1]
        shares = np.bincount(fatty, minlength=4)[1:] / len(fatty)
        print(f"{c:14s} fat-free {np.mean(g_arr == 0):.2f}, grades 1-3 {np.round(shares, 2)}")
        assert np.all(np.abs(shares - 1 / 3) < 0.07), c
        if c != "fatty_sparing":
            assert abs(np.mean(g_arr == 0) - 0.25) < 0.06, c
    fatty_counts = {c: sum(1 for x in g if x >= 1) for c, g in grades.items()}
    p_sparing = fatty_counts["fatty_sparing"] / sum(fatty_counts.values())
    print(f"P(fatty sparing | fatty liver) = {p_sparing:.3f} (classes balanced: {1 / 6:.3f})")
    assert p_sparing < 0.25 and fatty_counts["fatty_sparing"] == per


def test_cache_keys_cover_the_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hepascope.train.demo_model import TRAIN_CODE

    made = {"train.trainer", "train.models", "train.export", "train.samples",
            "train.augment", "core.preprocess", "phantom", "train.data"}
    assert made <= set(DATA_CODE) | set(TRAIN_CODE)
    kw = dict(n_cases_per_class=1, seconds_per_case=1.0, window=WindowSpec(window=2),
              specs=make_specs(load_config(), (32, 32), (16, 16)), seed=0,
              classes=("cyst",), workers=1)
    cached_phantom_set(tmp_path, **kw)
    cached_phantom_set(tmp_path, **kw)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    real = data_mod.source_digest
    monkeypatch.setattr(data_mod, "source_digest", lambda *m: real(*m)[::-1])  # edited code
    cached_phantom_set(tmp_path, **kw)
    assert len(list(tmp_path.glob("*.npz"))) == 2


def _row(label: str, status: str, top: str | None, t: float = 3.0, seg: int = 1,
         conf: float = 0.9) -> FrameScore:
    probs = tuple(conf if c == top else (1 - conf) / 5 for c in LESION_CLASSES) if top else ()
    return FrameScore("s", 0, label, f"p-{label}", 0, seg, t, status, top,
                      conf if top else None, probs)


def test_score_counts_abstentions_in_coverage_not_in_labelled_accuracy() -> None:
    rows = [_row("cyst", "ok", "cyst"), _row("cyst", "ok", "hcc"),
            _row("cyst", "uncertain", None), _row("hcc", "warming_up", None, t=0.2),
            _row("hcc", "ok", "hcc", t=0.7)]
    s = score(rows, LESION_CLASSES)
    assert s["frames"] == 5 and s["coverage"] == 0.6
    assert s["accuracy_labelled"] == pytest.approx(2 / 3, abs=1e-4)
    assert s["accuracy_all"] == 0.4 and s["patients"] == 2
    assert s["statuses"] == {"ok": 3, "uncertain": 1, "warming_up": 1}
    conf = np.array(s["confusion"]["truth_by_shown"])
    assert conf.sum() == 3 and conf[1, 1] == 1 and conf[1, 3] == 1
    first = s["after_patient_change"][0]
    assert first["frames"] == 1 and first["coverage"] == 0.0
    assert {p["patient_id"]: p["coverage"] for p in s["per_patient"]} == {
        "p-cyst": pytest.approx(2 / 3, abs=1e-4), "p-hcc": 0.5}
    assert s["ece"] is not None and 0 <= s["ece"] <= 1


def test_the_shipped_model_loads_and_matches_its_manifest() -> None:
    """The demo model in the package: every graph's SHA-256 is the manifest's (with the
    INT8 configuration where its precision step chose it), the live loader opens it, in
    that precision and in fp32, with the six classes, and a phantom frame gets
    probabilities."""
    from hepascope.core.frame import Frame
    from hepascope.phantom import make_case
    from hepascope.stream.model_loader import open_model
    from hepascope.train.demo_model import GRAPHS, PACKAGED, file_sha256, verify_model

    manifest = verify_model(PACKAGED)
    precision = manifest.get("precision", {}).get("precision", "fp32")
    int8 = {f for f in manifest["files"] if f.endswith(".int8.onnx")}
    assert set(manifest["files"]) == set(GRAPHS) | int8 and bool(int8) == (precision == "int8")
    assert all(file_sha256(PACKAGED / n) == h for n, h in manifest["files"].items())
    size_mb = sum((PACKAGED / n).stat().st_size for n in manifest["files"]) / 2**20
    print(f"\nshipped model {size_mb:.1f} MB ({precision}), recipe {manifest['recipe']}, "
          f"temperature {manifest['temperature']}")
    assert size_mb <= 25 and manifest["command"] == "hepascope demo --retrain"
    frame, _ = Phantom(make_case(5, "cyst"), ceus_t0_s=30).render(0)
    for path in (PACKAGED, PACKAGED / "head.onnx"):  # the manifest's precision; fp32
        model = open_model(path, load_config(), backend="onnxruntime", threads=1)
        try:
            assert tuple(model.labels) == LESION_CLASSES
            probs, _ = model.predict(Frame(frame, 0, 0, "test", 0.0))
            assert probs.shape == (6,) and abs(probs.sum() - 1) < 1e-6
        finally:
            model.close()


def test_a_damaged_shipped_model_is_refused(tmp_path: Path) -> None:
    import shutil

    from hepascope.core.errors import ModelError
    from hepascope.train.demo_model import PACKAGED, verify_model

    copy = tmp_path / "model"
    shutil.copytree(PACKAGED, copy)
    with (copy / "head.onnx").open("r+b") as f:  # one flipped byte, as a bad disk would
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(ModelError, match="SHA-256"):
        verify_model(copy)


def test_a_quick_demo_reports_the_scored_figures(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Two 3-s sessions (0.5-s patients) with the shipped model: the live run and the
    lockstep scoring of 12 patients, with every figure the report promises."""
    import time

    from hepascope.train.demo import run_demo

    monkeypatch.setenv("HEPASCOPE_CACHE", str(tmp_path / "cache"))
    t0 = time.monotonic()
    r = run_demo(tmp_path / "out", session_seeds=(7, 8), segment_s=0.5)
    print(f"\nquick demo {time.monotonic() - t0:.1f} s: {json.dumps(r['seconds'])}")
    sc = r["scored"]
    assert sc["patients"] == 12 and sc["sessions"] == 2 and sc["frames"] == 180
    for k in ("coverage", "accuracy_labelled", "accuracy_all", "ece"):
        assert sc[k] is not None and 0 <= sc[k] <= 1, k
    assert len(sc["per_patient"]) == 12 and set(sc["per_class"]) == set(LESION_CLASSES)
    conf = np.array(sc["confusion"]["truth_by_shown"])
    assert conf.shape == (6, 6) and conf.sum() == round(sc["coverage"] * sc["frames"])
    assert sc["after_patient_change"][0]["from_s"] == 0.0
    assert len(r["per_session"]) == 2 and r["live_accuracy"]["frames"] > 0
    assert (tmp_path / "out" / "report.json").is_file()
    assert (tmp_path / "out" / "snapshot.png").is_file()
