"""Per-patient answers from per-sample predictions: what a surgeon gets for a recording or
a patient, not for a frame. A patient's probability is the mean of its samples' calibrated
probabilities, its label that mean's top class; the majority vote over its samples' top
classes is reported beside it (ties go to the class with the higher mean probability).
Abstention applies per patient: the mean's top probability below the threshold makes the
patient ``uncertain``."""

from __future__ import annotations

from typing import Any

import numpy as np

from hepascope.train.evaluation.calibration import statuses


def patient_table(y: np.ndarray, probs: np.ndarray, groups: np.ndarray,
                  threshold: float) -> dict[str, Any]:
    """Per patient (sorted by id): its true class, mean probabilities, mean's top class,
    majority vote, sample count and status. ``groups`` "" (unknown) counts each sample as
    its own patient."""
    g = np.asarray(groups).astype(str)
    y = np.asarray(y, np.int64)
    p = np.asarray(probs, np.float64)
    keys = np.where(g == "", np.char.add("#", np.arange(len(g)).astype(str)), g)
    ids, inverse = np.unique(keys, return_inverse=True)
    n_cls = p.shape[1]
    counts = np.bincount(inverse, minlength=len(ids)).astype(np.float64)
    mean = np.zeros((len(ids), n_cls))
    np.add.at(mean, inverse, p)
    mean /= counts[:, None]
    votes = np.zeros((len(ids), n_cls))
    np.add.at(votes, (inverse, p.argmax(1)), 1.0)
    top_votes = votes == votes.max(1, keepdims=True)
    vote = np.where(top_votes, mean, -1.0).argmax(1)
    truth = np.zeros(len(ids), np.int64)
    truth[inverse] = y  # one patient, one diagnosis (crossval checks it)
    return {"patients": ids, "y_true": truth, "probs": mean, "pred": mean.argmax(1),
            "vote": vote, "samples": counts.astype(np.int64),
            "status": statuses(mean, threshold)}
