"""hepascope.train.evaluation: patient-level folds, metrics, report files and figures."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from sklearn import metrics as skm

from hepascope.core.errors import DataError
from hepascope.train.evaluation import (
    FoldResult,
    PatientLeakWarning,
    aggregate,
    check_no_leak,
    classification_metrics,
    expected_calibration_error,
    holdout_split,
    patient_folds,
    write_report,
)

CLASSES5 = ("non-FLL", "cyst", "hemangioma", "FFS", "HCC")


def layout(seed: int, n_classes: int = 4, k: int = 5, mixed: bool = False
           ) -> tuple[np.ndarray, np.ndarray]:
    """Random patients with unbalanced classes (each >= k patients) and 1-8 samples each; one
    label per patient unless ``mixed`` (then some patients have lesions of several classes)."""
    rng = np.random.default_rng(seed)
    per_class = rng.integers(k, 4 * k, n_classes)
    plabels = np.repeat(np.arange(n_classes), per_class)
    sizes = rng.integers(1, 9, len(plabels))
    labels = np.repeat(plabels, sizes)
    ids = rng.permutation(len(plabels))  # ids unrelated to class order
    groups = np.repeat(np.array([f"P{i:04d}" for i in ids]), sizes)
    if mixed:
        flip = rng.random(len(labels)) < 0.15
        labels = np.where(flip, rng.integers(0, n_classes, len(labels)), labels)
    order = rng.permutation(len(labels))
    return labels[order], groups[order]


def assert_patient_disjoint(folds: list[tuple[np.ndarray, np.ndarray]], groups: np.ndarray
                            ) -> None:
    n = len(groups)
    seen = np.zeros(n, dtype=int)
    for tr, te in folds:
        assert len(tr) and len(te)
        assert not np.intersect1d(tr, te).size
        assert np.union1d(tr, te).size == n
        assert not set(groups[tr]) & set(groups[te])
        seen[te] += 1
    assert (seen == 1).all()  # every sample tested exactly once


# ---------------------------------------------------------------- folds


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("mixed", [False, True])
def test_patient_folds_never_leak(seed: int, mixed: bool) -> None:
    k = 3 + seed % 3
    labels, groups = layout(seed, n_classes=2 + seed % 4, k=k, mixed=mixed)
    folds = patient_folds(labels, groups, k=k, seed=seed)
    assert len(folds) == k
    assert_patient_disjoint(folds, groups)
    summary = check_no_leak(folds, groups)
    assert summary["passed"] and summary["folds"] == k
    assert summary["test_patients"] == len(np.unique(groups))
    again = patient_folds(labels, groups, k=k, seed=seed)
    assert all((a[1] == b[1]).all() for a, b in zip(folds, again, strict=True))


@pytest.mark.parametrize("seed", range(5))
def test_one_label_per_patient_puts_every_class_in_every_test_fold(seed: int) -> None:
    # One label per patient (our data) and >= k patients per class: the greedy stratification
    # spreads each class's first k patients over k different folds.
    labels, groups = layout(100 + seed, n_classes=5, k=5)
    for g in np.unique(groups):
        assert len(np.unique(labels[groups == g])) == 1
    for _, te in patient_folds(labels, groups, k=5, seed=seed):
        assert set(labels[te]) == set(range(5))


def test_different_seeds_give_different_folds() -> None:
    labels, groups = layout(7, n_classes=3, k=5)
    a = patient_folds(labels, groups, k=5, seed=0)
    b = patient_folds(labels, groups, k=5, seed=1)
    assert any(not np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=True))


def test_too_few_patients_in_a_class_is_a_clear_error() -> None:
    labels = np.array([0] * 12 + [1] * 6 + [2] * 10)
    groups = np.array([f"a{i}" for i in range(12)] + ["b0", "b0", "b1", "b1", "b2", "b2"]
                      + [f"c{i}" for i in range(10)])
    with pytest.raises(DataError, match=r"'cyst' has 3 patients.*--folds 3"):
        patient_folds(labels, groups, k=5, classes=("normal", "cyst", "HCC"))
    assert len(patient_folds(labels, groups, k=3)) == 3  # the suggestion works


def test_missing_groups_are_a_data_error() -> None:
    labels = np.array([0, 1] * 10)
    with pytest.raises(DataError, match="patient ids"):
        patient_folds(labels, None, k=2)
    with pytest.raises(DataError, match="19 patient ids for 20 samples"):
        patient_folds(labels, np.array(["p"] * 19), k=2)


def test_unknown_patients_warn_and_fall_back_to_samples() -> None:
    labels = np.array([0, 1, 2] * 7)
    groups = np.array([""] * len(labels))
    with pytest.warns(PatientLeakWarning, match="may leak"):
        folds = patient_folds(labels, groups, k=5, seed=3)
    assert len(folds) == 5
    assert_patient_disjoint(folds, np.arange(len(labels)).astype(str))
    summary = check_no_leak(folds, groups)  # "" cannot be checked: counted, not a leak
    assert summary["unknown_test_samples"] == len(labels) and summary["test_patients"] == 0


def test_check_no_leak_names_the_leaking_patient() -> None:
    groups = np.array(["p1", "p1", "p2", "p3", "p4", "p4"])
    folds = [(np.array([0, 2, 3]), np.array([1, 4, 5])), (np.array([1, 4, 5]), np.array([2, 3]))]
    with pytest.raises(DataError, match=r"fold 0: 1 patient\(s\).*'p1'"):
        check_no_leak(folds, groups)


def test_holdout_split_is_patient_level_and_stratified() -> None:
    labels, groups = layout(11, n_classes=3, k=5)
    tr, va = holdout_split(labels, groups, val_fraction=0.2, seed=0)
    assert np.union1d(tr, va).size == len(labels) and not np.intersect1d(tr, va).size
    assert not set(groups[tr]) & set(groups[va])
    share = len(np.unique(groups[va])) / len(np.unique(groups))
    assert 0.1 < share < 0.3
    assert set(labels[va]) == set(labels[tr]) == {0, 1, 2}
    _, va2 = holdout_split(labels, groups, val_fraction=0.2, seed=0)
    assert np.array_equal(va, va2)


def test_holdout_split_keeps_a_one_patient_class_in_train() -> None:
    labels = np.array([0] * 10 + [1] * 10 + [2, 2])
    groups = np.array([f"a{i}" for i in range(10)] + [f"b{i}" for i in range(10)] + ["c", "c"])
    for seed in range(6):
        tr, va = holdout_split(labels, groups, val_fraction=0.25, seed=seed)
        assert 2 in set(labels[tr]) and 2 not in set(labels[va]) and len(va)
        assert not set(groups[tr]) & set(groups[va])
    with pytest.raises(DataError, match="at least 2 patients"):
        holdout_split(np.array([0, 1]), np.array(["p", "p"]), 0.2)


# ---------------------------------------------------------------- metrics


def probs_for(pred: np.ndarray, n_classes: int, conf: float = 0.8) -> np.ndarray:
    p = np.full((len(pred), n_classes), (1 - conf) / (n_classes - 1))
    p[np.arange(len(pred)), pred] = conf
    return p


def test_metrics_by_hand_with_a_class_never_predicted() -> None:
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    pred = np.array([0, 0, 2, 0, 0, 2, 2, 0])  # class b is never predicted
    m = classification_metrics(y, probs_for(pred, 3), ("a", "b", "c"))
    assert m["confusion"] == [[2, 0, 1], [2, 0, 0], [1, 0, 2]]
    a, b, c = (m["per_class"][k] for k in "abc")
    assert a == pytest.approx({"accuracy": 0.5, "sensitivity": 2 / 3, "specificity": 2 / 5,
                               "ppv": 2 / 5, "npv": 2 / 3, "f1": 0.5, "auc": a["auc"]})
    assert b["sensitivity"] == 0 and b["specificity"] == 1 and b["ppv"] is None
    assert b["npv"] == pytest.approx(6 / 8) and b["f1"] == 0 and b["accuracy"] == 0.75
    assert c == pytest.approx({"accuracy": 0.75, "sensitivity": 2 / 3, "specificity": 4 / 5,
                               "ppv": 2 / 3, "npv": 4 / 5, "f1": 2 / 3, "auc": c["auc"]})
    assert m["counts"]["a"] == {"tp": 2, "fp": 3, "fn": 1, "tn": 2}
    assert m["macro"]["accuracy"] == 0.5  # top-1
    assert m["macro"]["sensitivity"] == pytest.approx(4 / 9)
    assert m["macro"]["ppv"] == pytest.approx((2 / 5 + 2 / 3) / 2)  # undefined PPV left out
    assert m["support"] == [3, 2, 3] and m["n"] == 8 and "auc_positive" not in m


def test_absent_class_has_no_auc_or_sensitivity() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)  # class 2 never occurs
    p = rng.dirichlet(np.ones(3), 40)
    m = classification_metrics(y, p, ("a", "b", "c"))
    assert m["per_class"]["c"]["auc"] is None and m["per_class"]["c"]["sensitivity"] is None
    aucs = [skm.roc_auc_score(y == k, p[:, k]) for k in (0, 1)]
    assert m["per_class"]["a"]["auc"] == pytest.approx(aucs[0])
    assert m["macro"]["auc"] == pytest.approx(np.mean(aucs))


@pytest.mark.parametrize("n_classes", [3, 5])
def test_metrics_agree_with_sklearn(n_classes: int) -> None:
    rng = np.random.default_rng(n_classes)
    y = rng.integers(0, n_classes, 300)
    logits = rng.normal(size=(300, n_classes))
    logits[np.arange(300), y] += 1.0
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    names = CLASSES5[:n_classes]
    m = classification_metrics(y, p, names)
    pred = p.argmax(1)
    labels = list(range(n_classes))
    f1 = skm.f1_score(y, pred, labels=labels, average=None)
    prec = skm.precision_score(y, pred, labels=labels, average=None)
    rec = skm.recall_score(y, pred, labels=labels, average=None)
    for k, name in enumerate(names):
        assert m["per_class"][name]["f1"] == pytest.approx(f1[k])
        assert m["per_class"][name]["ppv"] == pytest.approx(prec[k])
        assert m["per_class"][name]["sensitivity"] == pytest.approx(rec[k])
    assert m["macro"]["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["macro"]["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["macro"]["sensitivity"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro"]["auc"] == pytest.approx(
        skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["confusion"] == skm.confusion_matrix(y, pred, labels=labels).tolist()


def test_binary_reports_both_classes_and_positive_auc() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 200)
    p1 = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, 200), 0, 1)
    m = classification_metrics(y, np.c_[1 - p1, p1], ("non-HCC", "HCC"))
    assert set(m["per_class"]) == {"non-HCC", "HCC"} and m["positive_class"] == "HCC"
    assert m["auc_positive"] == pytest.approx(skm.roc_auc_score(y, p1))
    hcc, other = m["per_class"]["HCC"], m["per_class"]["non-HCC"]
    assert hcc["sensitivity"] == pytest.approx(other["specificity"])


def test_logits_are_rejected() -> None:
    with pytest.raises(DataError, match="softmax"):
        classification_metrics(np.array([0, 1]), np.array([[2.0, -1.0], [0.5, 3.0]]), ("a", "b"))
    with pytest.raises(DataError, match="shape"):
        classification_metrics(np.array([0, 1]), np.eye(3)[:2], ("a", "b"))


def test_ece_by_hand() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.9, 0.1]] * 4)  # 0.9 confident, 50% right
    assert expected_calibration_error(y, p) == pytest.approx(0.4)


def test_ece_of_calibrated_predictions_is_near_zero_and_overconfident_is_not() -> None:
    rng = np.random.default_rng(0)
    n = 20000
    q = rng.uniform(0, 1, n)
    y = (rng.uniform(0, 1, n) < q).astype(int)  # P(y = 1 | q) = q: calibrated
    calibrated = np.c_[1 - q, q]
    assert expected_calibration_error(y, calibrated) < 0.02
    sharp = np.clip((q - 0.5) * 4 + 0.5, 0, 1)  # same ranking, pushed towards 0 and 1
    assert expected_calibration_error(y, np.c_[1 - sharp, sharp]) > 0.1
    m = classification_metrics(y, calibrated, ("a", "b"))
    assert sum(b["count"] for b in m["reliability"]) == n and len(m["reliability"]) == 15


def test_aggregate_mean_sd_and_pooled_confusion() -> None:
    y1, pred1 = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 1, 2, 0])
    y2, pred2 = np.array([0, 1, 1, 2]), np.array([0, 1, 0, 2])
    f1 = classification_metrics(y1, probs_for(pred1, 3), ("a", "b", "c"))
    f2 = classification_metrics(y2, probs_for(pred2, 3), ("a", "b", "c"))
    agg = aggregate([f1, f2])
    acc = [4 / 6, 3 / 4]
    assert agg["macro"]["accuracy"] == pytest.approx(
        {"mean": np.mean(acc), "sd": np.std(acc, ddof=1), "n": 2})
    assert agg["confusion"] == (np.array(f1["confusion"]) + f2["confusion"]).tolist()
    assert agg["n"] == 10 and agg["support"] == [3, 4, 3] and agg["folds"] == 2
    assert agg["per_class"]["b"]["f1"]["sd"] == pytest.approx(
        np.std([f1["per_class"]["b"]["f1"], f2["per_class"]["b"]["f1"]], ddof=1))
    single = aggregate([f1])
    assert single["macro"]["f1"]["sd"] == 0.0 and single["ece"]["mean"] == pytest.approx(f1["ece"])
    # an undefined value in one fold is left out, not counted as 0
    f3 = classification_metrics(np.array([0, 0, 1]), probs_for(np.array([0, 1, 1]), 3),
                                ("a", "b", "c"))
    assert aggregate([f1, f3])["per_class"]["c"]["auc"]["n"] == 1


# ---------------------------------------------------------------- report


def synthetic_results(classes: tuple[str, ...], models: dict[str, float], k: int = 3,
                      seed: int = 0) -> list[FoldResult]:
    labels, groups = layout(seed, n_classes=len(classes), k=k)
    rng = np.random.default_rng(seed)
    out = []
    for model, skill in models.items():
        for i, (tr, te) in enumerate(patient_folds(labels, groups, k=k, seed=seed)):
            y = labels[te]
            logits = rng.normal(size=(len(te), len(classes)))
            logits[np.arange(len(te)), y] += skill
            p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
            out.append(FoldResult(model, i + 1, y, p, groups[te], groups[tr], 10.0 + i,
                                  {"epochs": 5}))
    return out


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("report")
    meta = {"dataset": "synthetic", "task": "fll5", "command": "hepascope eval --folds 3",
            "versions": {"hepascope": "0.1.0"},
            "models": {"resnet18": {"params": 11_689_512, "flops": 1.82e9}}}
    results = synthetic_results(CLASSES5, {"resnet18": 2.5, "vgg16": 1.0})
    return out, write_report(results, CLASSES5, out, title="Synthetic FLL", meta=meta)


def test_report_writes_every_file_and_figures_decode(report_dir: tuple[Path, Any]) -> None:
    out, report = report_dir
    expected = ["report.json", "report.md", "predictions.csv", "comparison.png"] + [
        f"{m}/{f}.png" for m in ("resnet18", "vgg16")
        for f in ("confusion", "roc", "reliability", "risk_coverage")]
    assert sorted(report["files"]) == sorted(expected)
    for name in expected:
        assert (out / name).is_file(), name
        if name.endswith(".png"):
            img = cv2.imread(str(out / name))
            assert img is not None, name
            h, w = img.shape[:2]
            assert 400 <= h <= 2000 and 500 <= w <= 2500, (name, img.shape)
            assert img.std() > 20  # not blank


def test_report_json_holds_folds_aggregates_and_leak_check(report_dir: tuple[Path, Any]
                                                           ) -> None:
    out, report = report_dir
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == report and on_disk["models"] == ["resnet18", "vgg16"]
    assert on_disk["meta"]["dataset"] == "synthetic"
    r18 = on_disk["results"]["resnet18"]
    assert [f["fold"] for f in r18["folds"]] == [1, 2, 3]
    assert r18["leakage"]["passed"] and r18["leakage"]["folds"] == 3
    accs = [f["metrics"]["macro"]["accuracy"] for f in r18["folds"]]
    assert r18["aggregate"]["macro"]["accuracy"]["mean"] == pytest.approx(np.mean(accs), abs=1e-6)
    assert r18["aggregate"]["macro"]["accuracy"]["sd"] == pytest.approx(
        np.std(accs, ddof=1), abs=1e-6)
    assert r18["params"] == 11_689_512 and on_disk["results"]["vgg16"]["params"] is None
    data = r18["data"]
    assert data["samples"] == sum(sum(row) for row in r18["aggregate"]["confusion"])
    assert sum(v["patients"] for v in data["per_class"].values()) == data["patients"]
    # strong model beats weak model in the comparison rows
    rows = {r["model"]: r for r in on_disk["comparison"]}
    assert rows["resnet18"]["accuracy"]["mean"] > rows["vgg16"]["accuracy"]["mean"]


def test_report_md_has_the_tables(report_dir: tuple[Path, Any]) -> None:
    out, report = report_dir
    md = (out / "report.md").read_text()
    agg = report["results"]["resnet18"]["aggregate"]
    sens = agg["per_class"]["cyst"]["sensitivity"]
    assert f"| cyst | {100 * agg['per_class']['cyst']['accuracy']['mean']:.1f} ± " in md
    assert f"{100 * sens['mean']:.1f} ± {100 * sens['sd']:.1f}" in md
    # per model: the per-sample and the per-patient table
    assert md.count("| **Macro** |") == 4 and md.count("| **Average** |") == 2
    assert "| Class | Accuracy | Sensitivity | Specificity | PPV | NPV | F1 | AUC |" in md
    assert "| resnet18 | 11.69 M | 1.82 G |" in md and "| vgg16 | n/a | n/a |" in md
    assert "no patient is in both train and test" in md
    assert "| **Total** |" in md and "![model comparison](comparison.png)" in md
    assert "`hepascope eval --folds 3`" in md


def test_report_is_deterministic(report_dir: tuple[Path, Any], tmp_path: Path) -> None:
    out, report = report_dir
    results = synthetic_results(CLASSES5, {"resnet18": 2.5, "vgg16": 1.0})
    again = write_report(results, CLASSES5, tmp_path, title="Synthetic FLL",
                         meta=report["meta"])
    assert again == report
    for name in ("report.json", "report.md"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()


def test_binary_report_uses_the_positive_class(tmp_path: Path) -> None:
    results = synthetic_results(("non-HCC", "HCC"), {"3D-CNN": 2.0}, k=3, seed=4)
    report = write_report(results, ("non-HCC", "HCC"), tmp_path, title="HCC", meta={})
    md = (tmp_path / "report.md").read_text()
    assert "Positive class (HCC) AUC:" in md and "of the positive class HCC" in md
    row = report["comparison"][0]
    agg = report["results"]["3D-CNN"]["aggregate"]
    assert row["sensitivity"] == agg["per_class"]["HCC"]["sensitivity"]
    assert not (tmp_path / "comparison.png").exists()  # one model: nothing to compare
    assert cv2.imread(str(tmp_path / "3D-CNN" / "roc.png")) is not None


def test_report_refuses_leaky_folds_and_writes_nothing(tmp_path: Path) -> None:
    results = synthetic_results(("a", "b"), {"m": 1.0}, k=3, seed=2)
    r = results[1]
    r.train_groups = np.concatenate([r.train_groups, r.groups[:1]])  # one test patient leaks
    with pytest.raises(DataError, match="leakage"):
        write_report(results, ("a", "b"), tmp_path / "out", title="t", meta={})
    assert not (tmp_path / "out").exists()


def test_fold_result_checks_shapes() -> None:
    with pytest.raises(DataError, match="probs"):
        FoldResult("m", 0, np.array([0, 1]), np.ones((3, 2)) / 2, np.array(["a", "b"]),
                   np.array(["c"]))
    with pytest.raises(DataError, match="model name"):
        FoldResult("", 0, np.array([0]), np.ones((1, 2)) / 2, np.array(["a"]), np.array(["c"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a valid result warns about nothing
        FoldResult("m", 0, np.array([0]), np.ones((1, 2)) / 2, np.array(["a"]), np.array(["c"]))


def test_report_says_when_leakage_cannot_be_checked(tmp_path: Path) -> None:
    y = np.array([0, 1] * 9)
    unknown = np.array([""] * len(y))
    with pytest.warns(PatientLeakWarning):
        folds = patient_folds(y, unknown, k=3)
    rng = np.random.default_rng(0)
    results = [FoldResult("m", i, y[te], rng.dirichlet([1, 1], len(te)), unknown[te],
                          unknown[tr]) for i, (tr, te) in enumerate(folds)]
    report = write_report(results, ("a", "b"), tmp_path, title="t", meta={})
    assert report["results"]["m"]["leakage"]["complete"] is False
    assert "**not verifiable**" in (tmp_path / "report.md").read_text()
