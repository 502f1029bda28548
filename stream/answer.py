"""A finite recording's answer, from the result messages a run published: what a user
wants of a whole video, not of a frame. Tallied per stream and model (the main model and
each side model get their own answer), in fixed memory (a surgery lasts hours).

An answer is over a model's results on one stream:
- ``label``: the majority class of the ``ok`` results (ties: the higher mean probability,
  then label order); ``"uncertain"`` when no result is ok (``reason`` says why);
- ``confidence``: the mean over the ok results of that label's probability as published
  (calibrated by the export's temperature and smoothed, stream/verdict.py); None when none;
- ``class_shares``: share of the ok results whose top class is each label (sums to 1 when
  any is ok, else all 0);
- ``status_shares``: share of all results per status (ok, uncertain, warming_up,
  model_fault; sums to 1 when there is any result), and ``uncertain_share`` on its own."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hepascope.core.messages import STATUSES

UNCERTAIN = "uncertain"


@dataclass
class _Counts:
    """One (stream, model)'s running counts."""

    labels: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    votes: dict[str, int] = field(default_factory=dict)      # ok results per top class
    prob_sum: dict[str, float] = field(default_factory=dict)  # ok results' probs per label

    def add(self, msg: Mapping[str, Any]) -> None:
        status = str(msg.get("status", "ok"))
        self.statuses[status] = self.statuses.get(status, 0) + 1
        for label in msg.get("labels") or ():
            if label not in self.labels:
                self.labels.append(label)
        if status != "ok":
            return
        top = msg.get("top")
        if top is not None:
            self.votes[top] = self.votes.get(top, 0) + 1
        for label, p in zip(msg.get("labels") or (), msg.get("probs") or (), strict=False):
            self.prob_sum[label] = self.prob_sum.get(label, 0.0) + float(p)


class AnswerTally:
    """Answers of every (stream, model) seen, fed one result message at a time."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], _Counts] = {}

    def add(self, msg: Mapping[str, Any]) -> None:
        key = (str(msg.get("stream", "")), str(msg.get("model", "")))
        self._counts.setdefault(key, _Counts()).add(msg)

    def answers(self, models: Sequence[str] = ()) -> list[dict[str, Any]]:
        """One answer per (stream, model), in the order first seen; with ``models``, those
        models' in their order (one that gave no result: "uncertain", no result)."""
        keys = list(self._counts)
        if models:
            keys = [k for m in models for k in ([k for k in keys if k[1] == m] or [("", m)])]
        return [_answer(s, m, self._counts.get((s, m), _Counts())) for s, m in keys]

    def answer(self, model: str) -> dict[str, Any]:
        """``model``'s answer on the first stream it answered."""
        return self.answers([model])[0]


def recording_answers(results: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The answer of each (stream, model) over ``results`` (result maps, any order)."""
    tally = AnswerTally()
    for msg in results:
        tally.add(msg)
    return tally.answers()


def recording_answer(results: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The answer over ``results`` of one stream and model (``ValueError`` if several)."""
    answers = recording_answers(results)
    if len(answers) != 1:
        raise ValueError(f"results of {len(answers)} (stream, model) pairs; expected 1")
    return answers[0]


def _answer(stream: str, model: str, c: _Counts) -> dict[str, Any]:
    n = sum(c.statuses.values())
    ok = c.statuses.get("ok", 0)
    shares = {s: (k / n if n else 0.0) for s, k in c.statuses.items()}
    labels = c.labels or sorted(c.votes)
    class_shares = {lb: (c.votes.get(lb, 0) / ok if ok else 0.0) for lb in labels}
    out: dict[str, Any] = {"stream": stream, "model": model, "results": n}
    if ok:
        label = max(labels, key=lambda lb: (c.votes.get(lb, 0), c.prob_sum.get(lb, 0.0),
                                            -labels.index(lb)))
        out.update(label=label, confidence=c.prob_sum.get(label, 0.0) / ok, reason=None)
    else:
        seen = ", ".join(f"{k} {s}" for s, k in c.statuses.items() if k) or "no result"
        out.update(label=UNCERTAIN, confidence=None,
                   reason=f"no result was ok ({seen}): no class is given")
    out.update(class_shares=class_shares, status_shares=shares,
               uncertain_share=shares.get(UNCERTAIN, 0.0))
    return out


def answer_line(a: Mapping[str, Any]) -> str:
    """One line for a terminal: the label and confidence first, then the shares."""
    conf = "n/a" if a["confidence"] is None else f"{a['confidence']:.3f}"
    classes = " ".join(f"{k}={v:.3f}" for k, v in a["class_shares"].items())
    status = " ".join(f"{k}={v:.3f}" for k, v in a["status_shares"].items())
    head = f"answer {a['model']} on {a['stream']}: {a['label']} confidence={conf}"
    tail = f" ({a['reason']})" if a.get("reason") else ""
    return (f"{head}  classes[ok]: {classes or '-'}  frames: {status}  "
            f"results={a['results']}{tail}")
