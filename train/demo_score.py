"""Scoring the demo against the phantom's ground truth: every result of a session matched
to its frame's truth, then the figures a surgeon's question needs, pooled over sessions
and per session, class and patient.

- coverage: share of frames whose result has status ``ok`` (a class shown); the others
  (``uncertain``, ``warming_up``, ``model_fault``) show no class;
- accuracy on labelled frames: of the ``ok`` results, the share whose class is right;
- accuracy over all frames: right ``ok`` results over all frames (abstaining is not right);
- ECE (15 bins) of the published top-1 confidence over the ``ok`` results;
- after a patient change: accuracy by time since the new patient appeared (segments after
  the first), where a CEUS window that is not reset mixes two patients.
Sessions are replayed in lockstep (``stream.replay``: every frame inferred, one ORT
thread, a virtual clock), so the figures are the same on every run on one machine."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hepascope.core.errors import DataError

OK = "ok"
CUT_BINS_S = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)  # seconds since a patient change


@dataclass(frozen=True)
class FrameScore:
    """One result against its frame's truth."""

    session: str
    frame: int
    label: str
    patient_id: str
    fatty_grade: int
    segment: int
    t_in_segment: float  # seconds since this patient appeared
    status: str
    top: str | None
    confidence: float | None  # published top-1 probability (None without probabilities)
    probs: tuple[float, ...]

    @property
    def shown(self) -> bool:
        return self.status == OK and self.top is not None

    @property
    def right(self) -> bool:
        return self.shown and self.top == self.label


def lockstep_session(session: Path, model: Path, config: Any) -> list[dict[str, Any]]:
    """The result maps of every frame of ``session`` (an MP4), replayed in lockstep with
    ``stream.replay``'s deterministic model (capture times = the frames' pts)."""
    from hepascope.core.frame import Frame
    from hepascope.core.messages import RunStamp
    from hepascope.stream.replay import VirtualClock, lockstep_message, open_deterministic
    from hepascope.stream.sources.file import FileSource

    classifier = open_deterministic(model, config)
    clock, stamp = VirtualClock(), RunStamp(f"demo-lockstep-{session.stem}", 0)
    out: list[dict[str, Any]] = []
    try:
        with FileSource(session, max_rate=True, source_id=f"demo:{session.stem}") as src:
            for i, f in enumerate(src):
                pts = f.pts_s if f.pts_s is not None else i / 30.0
                frame = Frame(f.image, i, round(pts * 1e9), f.source_id, pts)
                out.append(lockstep_message(classifier, frame, clock, stamp))
    finally:
        classifier.close()
    return out


def frame_scores(results: Iterable[dict[str, Any]], truth: dict[str, Any],
                 session: str) -> list[FrameScore]:
    """Each result that has a pts, matched to the truth of its frame."""
    frames, fps = truth["frames"], float(truth["fps"])
    starts = [int(s["start_frame"]) for s in truth["segments"]]
    out = []
    for r in results:
        if r.get("pts_s") is None:
            continue
        idx = min(round(r["pts_s"] * fps), len(frames) - 1)
        fr = frames[idx]
        seg = int(fr["segment"])
        probs = tuple(float(p) for p in r.get("probs") or ())
        out.append(FrameScore(session, idx, fr["label"], fr["patient_id"],
                              int(fr["fatty_grade"]), seg, (idx - starts[seg]) / fps,
                              str(r.get("status", OK)), r.get("top"),
                              max(probs) if probs else None, probs))
    return out


def _rate(xs: Sequence[bool]) -> float | None:
    return round(float(np.mean(xs)), 4) if len(xs) else None


def _figures(rows: Sequence[FrameScore]) -> dict[str, Any]:
    shown = [r for r in rows if r.shown]
    return {"frames": len(rows), "coverage": _rate([r.shown for r in rows]),
            "accuracy_labelled": _rate([r.right for r in shown]),
            "accuracy_all": _rate([r.right for r in rows])}


def _ece(rows: Sequence[FrameScore], labels: Sequence[str]) -> float | None:
    from hepascope.train.evaluation.metrics import expected_calibration_error

    ok = [r for r in rows if r.shown and len(r.probs) == len(labels) and r.label in labels]
    if not ok:
        return None
    y = np.array([labels.index(r.label) for r in ok])
    return round(expected_calibration_error(y, np.array([r.probs for r in ok])), 4)


def _confusion(rows: Sequence[FrameScore], labels: Sequence[str]) -> list[list[int]]:
    """Truth (rows) x shown class (columns), over the labelled frames."""
    m = np.zeros((len(labels), len(labels)), np.int64)
    for r in rows:
        if r.shown and r.label in labels and r.top in labels:
            m[labels.index(r.label), labels.index(str(r.top))] += 1
    return m.tolist()


def _after_cut(rows: Sequence[FrameScore]) -> list[dict[str, Any]]:
    """Figures by seconds since a patient change (segments after each session's first)."""
    later = [r for r in rows if r.segment > 0]
    out = []
    for lo, hi in zip(CUT_BINS_S, (*CUT_BINS_S[1:], float("inf")), strict=True):
        sel = [r for r in later if lo <= r.t_in_segment < hi]
        out.append({"from_s": lo, "to_s": None if hi == float("inf") else hi,
                    **_figures(sel)})
    return out


def score(rows: Sequence[FrameScore], labels: Sequence[str]) -> dict[str, Any]:
    """The demo's figures over ``rows`` (see the module docstring)."""
    if not rows:
        raise DataError("no result could be matched to a frame of the session")
    labels = list(labels)
    per_class = {c: _figures([r for r in rows if r.label == c])
                 for c in labels if any(r.label == c for r in rows)}
    patients: dict[tuple[str, str], list[FrameScore]] = {}
    for r in rows:
        patients.setdefault((r.session, r.patient_id), []).append(r)
    per_patient = [{"session": s, "patient_id": p, "label": rs[0].label,
                    "fatty_grade": rs[0].fatty_grade, **_figures(rs)}
                   for (s, p), rs in patients.items()]
    acc = [p["accuracy_labelled"] for p in per_patient if p["accuracy_labelled"] is not None]
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    return {**_figures(rows), "patients": len(per_patient),
            "sessions": len({r.session for r in rows}),
            "patient_accuracy_min": round(min(acc), 4) if acc else None,
            "ece": _ece(rows, labels), "statuses": statuses, "per_class": per_class,
            "confusion": {"labels": labels, "truth_by_shown": _confusion(rows, labels)},
            "after_patient_change": _after_cut(rows), "per_patient": per_patient}


def load_truth(session: Path) -> dict[str, Any]:
    return dict(json.loads(session.with_suffix(".truth.json").read_text()))
