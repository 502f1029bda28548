"""Calibration, abstention, per-patient answers and the texture baseline, each on its own,
on synthetic data made here (train/evaluation: calibration, patients, baseline)."""

from __future__ import annotations

import numpy as np
import pytest

from hepascope.core.errors import DataError
from hepascope.train.evaluation.calibration import (
    calibrate,
    calibration_fit,
    choose_threshold,
    fit_temperature,
    nll,
    risk_coverage,
    selective,
    statuses,
)
from hepascope.train.evaluation.metrics import expected_calibration_error
from hepascope.train.evaluation.patients import patient_table


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def overconfident(n: int, t_true: float, seed: int, classes: int = 4
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z) and the probabilities of a model that reports
    softmax(z * t_true): miscalibrated by exactly temperature ``t_true``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, (n, classes))
    true_p = _softmax(z)
    y = (rng.random(n)[:, None] > np.cumsum(true_p, 1)).sum(1)
    return _softmax(z * t_true), y


@pytest.mark.parametrize("t_true", [0.5, 1.0, 2.5])
def test_temperature_fit_recovers_a_known_temperature(t_true: float) -> None:
    probs, y = overconfident(20_000, t_true, seed=1)
    t = fit_temperature(probs, y)
    print(f"true T {t_true}, fitted {t:.3f}")
    assert t == pytest.approx(t_true, rel=0.05)
    # the fit is the NLL minimum: a nearby temperature does worse
    best = nll(calibrate(probs, t), y)
    assert best <= nll(calibrate(probs, t * 1.2), y) and best <= nll(calibrate(probs, t / 1.2), y)


def test_ece_is_small_after_calibration_and_large_before() -> None:
    val_p, val_y = overconfident(8_000, 2.5, seed=2)
    test_p, test_y = overconfident(8_000, 2.5, seed=3)
    t = fit_temperature(val_p, val_y)  # fitted on validation, scored on other samples
    before = expected_calibration_error(test_y, test_p)
    after = expected_calibration_error(test_y, calibrate(test_p, t))
    print(f"ECE before {100 * before:.1f}%, after {100 * after:.1f}%")
    assert before > 0.10 and after < 0.02


def test_calibrate_keeps_the_top_class_and_gives_probabilities() -> None:
    probs, _ = overconfident(500, 3.0, seed=4)
    probs[0] = [1.0, 0.0, 0.0, 0.0]  # a random forest's zeros: floored, still finite
    for t in (0.3, 1.0, 4.0):
        cal = calibrate(probs, t)
        assert np.isfinite(cal).all() and np.allclose(cal.sum(1), 1.0)
        assert (cal.argmax(1) == probs.argmax(1)).all()
    with pytest.raises(DataError, match="temperature"):
        calibrate(probs, 0.0)


def test_threshold_meets_the_target_on_validation_with_the_most_coverage() -> None:
    probs, y = overconfident(3_000, 1.0, seed=5)
    for target in (0.8, 0.9, 0.95):
        ch = choose_threshold(probs, y, target)
        got = selective(probs, y, ch["threshold"])
        assert ch["met"] and got["selective_accuracy"] >= target
        assert got["coverage"] == ch["coverage"] and 0 < got["coverage"] < 1
        # the next lower confidence (one more tie block answered) misses the target
        conf = np.sort(np.unique(probs.max(1)))
        below = conf[np.searchsorted(conf, ch["threshold"]) - 1]
        assert selective(probs, y, below)["selective_accuracy"] < target
        print(f"target {target}: threshold {ch['threshold']:.3f}, coverage "
              f"{100 * ch['coverage']:.1f}%")
    assert (statuses(probs, ch["threshold"]) == "ok").mean() == pytest.approx(ch["coverage"])


def test_unreachable_target_abstains_on_everything() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4]])
    ch = choose_threshold(probs, np.array([1, 1, 0]), 0.95)  # the most confident is wrong
    assert not ch["met"] and ch["coverage"] == 0.0 and ch["selective_accuracy"] is None
    assert (statuses(probs, ch["threshold"]) == "uncertain").all()


def test_a_threshold_needs_enough_validation_samples_behind_it() -> None:
    """The 5 most confident are right, then errors: 100% on 5 samples is not evidence of
    95%; with 20 needed, no threshold qualifies."""
    conf = np.linspace(0.99, 0.55, 60)
    probs = np.stack([conf, 1 - conf], 1)
    y = np.r_[np.zeros(5), np.tile([1, 0], 28)[:55]].astype(np.int64)
    assert choose_threshold(probs, y, 0.95, min_support=1)["covered"] == 5
    ch = choose_threshold(probs, y, 0.95)
    assert not ch["met"] and ch["covered"] == 0


def test_risk_coverage_curve_ends_at_full_coverage_and_overall_accuracy() -> None:
    probs, y = overconfident(1_000, 1.0, seed=6)
    cov, acc, thr = risk_coverage(probs, y)
    assert cov[-1] == 1.0 and acc[-1] == pytest.approx(np.mean(probs.argmax(1) == y))
    assert np.all(np.diff(cov) > 0) and np.all(np.diff(thr) < 0)


def test_calibration_fit_reports_what_it_chose() -> None:
    probs, y = overconfident(2_000, 2.0, seed=7)
    fit = calibration_fit(probs, y, 0.9)
    assert fit["temperature"] == pytest.approx(2.0, rel=0.1) and fit["n_val"] == 2_000
    assert fit["val_ece_after"] < fit["val_ece_before"]
    assert fit["abstain"]["target"] == 0.9 and fit["abstain"]["selective_accuracy"] >= 0.9


def test_patient_answers_mean_vote_and_abstention() -> None:
    groups = np.array(["A", "A", "A", "B", "B", "", ""])
    y = np.array([0, 0, 0, 1, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.45, 0.55],  # A: vote 1, mean 0.58 -> 0
                      [0.3, 0.7], [0.2, 0.8],  # B: sure of 1
                      [0.5, 0.5], [0.6, 0.4]])  # unknown ids: each its own patient
    t = patient_table(y, probs, groups, threshold=0.7)
    assert t["patients"].tolist() == ["#5", "#6", "A", "B"]
    assert t["samples"].tolist() == [1, 1, 3, 2] and t["y_true"].tolist() == [1, 0, 0, 1]
    a = 2
    assert np.allclose(t["probs"][a], [0.5833333, 0.4166667])
    assert t["pred"][a] == 0 and t["vote"][a] == 1
    assert t["status"].tolist() == ["uncertain", "uncertain", "uncertain", "ok"]


def textures(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 48x48 uint8 images of two textures with the same mean and spread: fine speckle
    (independent pixels) and coarse blobs (smoothed noise, rescaled)."""
    import cv2

    rng = np.random.default_rng(seed)
    imgs, labels = [], []
    for i in range(n):
        noise = rng.normal(0, 1, (48, 48)).astype(np.float32)
        if i % 2:
            noise = cv2.GaussianBlur(noise, (0, 0), 2.5)
        noise = (noise - noise.mean()) / noise.std()
        imgs.append(np.clip(128 + 35 * noise, 0, 255).astype(np.uint8))
        labels.append(i % 2)
    return np.stack(imgs), np.array(labels)


def test_baseline_features_separate_two_textures() -> None:
    pytest.importorskip("skimage")
    from hepascope.train.evaluation.baseline import fit_predict, texture_features

    x_img, y = textures(40, seed=8)
    x = np.stack([texture_features(im) for im in x_img])
    assert x.shape[0] == 40 and np.isfinite(x).all()
    probs, _ = fit_predict(x[:20], y[:20], x[20:], 2, seed=0)
    acc = float(np.mean(probs.argmax(1) == y[20:]))
    print(f"texture baseline on held-out textures: accuracy {acc:.2f}")
    assert acc >= 0.95
    # intensity alone cannot tell them apart: the separation comes from texture
    assert abs(x_img[y == 0].mean() - x_img[y == 1].mean()) < 2


# --- window models: warm-up and a threshold on the smoothed confidence ---------------------

def test_warmup_is_the_least_fill_as_accurate_as_a_full_window() -> None:
    """The fill is the live ``window_fill``, the share of the span covered: m frames one
    interval apart cover (m-1)/(T-1) of it (one frame: 0). A fill of m/T (what this was
    before) kept every new scene warming up an interval too long."""
    from hepascope.train.evaluation.calibration import choose_warmup

    assert choose_warmup({1: 0.70, 2: 0.85, 3: 0.905, 4: 0.91}, 4) == pytest.approx(2 / 3)
    assert choose_warmup({1: 0.905, 2: 0.90, 3: 0.91}, 3) == 0.0
    assert choose_warmup({1: 0.5, 2: 0.91}, 2, tolerance=0.0) == 1.0
    assert choose_warmup({1: 0.9}, 1) == 0.0


def test_the_threshold_of_a_clip_is_chosen_on_its_smoothed_confidence() -> None:
    """Each patient's clip: successive results alternate between a sure right answer and
    a wrong or unsure one. Alone, a 95% threshold keeps only the sure half; smoothed over a
    second (as live) every result is a mix and right: the smoothed fit keeps everything
    the live path will show, the per-sample fit would abstain on half."""
    from hepascope.train.evaluation.calibration import calibration_fit

    n_patients, per = 40, 6
    y = np.repeat(np.arange(n_patients) % 2, per)
    probs = np.empty((len(y), 2))
    for i, c in enumerate(y):
        sure = i % 2 == 0
        p_right = 0.97 if sure else 0.55 if i % 4 == 1 else 0.4  # every 4th is sure and wrong
        probs[i, c], probs[i, 1 - c] = p_right, 1 - p_right
    times = np.tile(np.arange(per) / 3.0, n_patients)  # 3 results a second
    scenes = np.repeat(np.arange(n_patients), per)
    alone = calibration_fit(probs, y, 0.95)
    smoothed = calibration_fit(probs, y, 0.95, (times, scenes, 1.0))
    print(f"\ncoverage at 95%: per sample {alone['abstain']['coverage']:.3f}, "
          f"smoothed {smoothed['abstain']['coverage']:.3f}")
    assert smoothed["smooth_s"] == 1.0 and alone["smooth_s"] is None
    assert alone["abstain"]["coverage"] <= 0.55
    assert smoothed["abstain"]["met"] and smoothed["abstain"]["coverage"] >= 0.95
