"""The classical baseline every report shows beside the networks, in the same folds:
texture features of each sample's B-mode view (grey-level co-occurrence (GLCM) properties,
local binary pattern (LBP) histograms, a few intensity statistics) and a random forest with
balanced class weights and a fixed seed. It tells how far a network is above what texture
alone gives; scikit-image and scikit-learn load when used."""

from __future__ import annotations

from typing import Any

import numpy as np

from hepascope.core.errors import DataError
from hepascope.train.datasets.arrays import ArraySet

BASELINE = "texture_rf"  # its name in reports
GLCM_LEVELS = 32
GLCM_DISTANCES = (1, 2, 4)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
LBP_SETS = ((8, 1.0), (16, 2.0))  # (points, radius), "uniform": points + 2 bins each
N_TREES = 200  # sklearn defaults to 100; more trees only steady the vote


def grey_images(data: ArraySet) -> np.ndarray:
    """(N, H, W) uint8 of each sample's B-mode view (the newest CEUS frame for clip-only
    data), un-normalised with the preprocessing's mean and std; first channel."""
    if data.bmode is not None:
        arr, spec = data.bmode, data.preprocess.get("bmode", {})
    elif data.ceus is not None:
        arr, spec = data.ceus[:, -1], data.preprocess.get("ceus", {})
    else:  # an ArraySet always has one of them
        raise DataError("no image data for the texture baseline")
    mean, std = float(spec.get("mean", 0.5)), float(spec.get("std", 0.25))
    x = np.asarray(arr[:, 0], np.float32) * std + mean
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _stats(img: np.ndarray) -> list[float]:
    v = img.astype(np.float64).ravel() / 255.0
    mu, sd = float(v.mean()), float(v.std())
    z = (v - mu) / sd if sd > 0 else np.zeros_like(v)
    return [mu, sd, float((z**3).mean()), float((z**4).mean()),
            *np.percentile(v, (10, 50, 90)).tolist()]


def texture_features(img: np.ndarray) -> np.ndarray:
    """Feature vector of one (H, W) uint8 image: GLCM properties (averaged over 4 angles,
    per distance, at 32 grey levels), uniform-LBP histograms, intensity statistics."""
    from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

    if img.ndim != 2 or img.dtype != np.uint8:
        raise DataError(f"texture features need a 2-D uint8 image, got {img.dtype} {img.shape}")
    q = (img // (256 // GLCM_LEVELS)).astype(np.uint8)
    glcm = graycomatrix(q, GLCM_DISTANCES, GLCM_ANGLES, levels=GLCM_LEVELS, symmetric=True,
                        normed=True)
    feats: list[float] = []
    for prop in GLCM_PROPS:
        feats += np.nan_to_num(graycoprops(glcm, prop).mean(1)).tolist()
    for points, radius in LBP_SETS:
        codes = local_binary_pattern(img, points, radius, method="uniform")
        hist, _ = np.histogram(codes, bins=points + 2, range=(0, points + 2))
        feats += (hist / max(1, hist.sum())).tolist()
    return np.array(feats + _stats(img), np.float64)


def feature_matrix(data: ArraySet) -> np.ndarray:
    """(N, F) texture features of every sample of ``data``."""
    return np.stack([texture_features(img) for img in grey_images(data)])


def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, n_classes: int,
                seed: int) -> tuple[np.ndarray, Any]:
    """(probabilities (N_test, n_classes), the fitted forest): a random forest with
    balanced class weights, seeded; a class absent from training gets probability 0."""
    from sklearn.ensemble import RandomForestClassifier

    if not len(y_train):
        raise DataError("no training samples for the texture baseline")
    rf = RandomForestClassifier(n_estimators=N_TREES, class_weight="balanced",
                                random_state=seed, n_jobs=1)
    rf.fit(x_train, y_train)
    probs = np.zeros((len(x_test), n_classes))
    if len(x_test):
        probs[:, rf.classes_.astype(np.int64)] = rf.predict_proba(x_test)
    return probs, rf
