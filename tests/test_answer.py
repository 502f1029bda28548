"""The recording's answer (stream/answer.py): the pure tally on hand-made result maps, then
the real runs: ``hepascope run`` (main + clip model), ``replay`` and ``replay
--deterministic`` of the recording it made, whose summaries (the last stdout lines and the
``--summary`` JSON) end with the answer tallied from the results they published."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import onnx
import pytest
from support.models import make_clip_model
from support.runs import free_port

from hepascope.cli import main
from hepascope.core.config import load_config
from hepascope.core.preprocess import PreprocessSpec
from hepascope.stream.answer import recording_answer, recording_answers
from hepascope.stream.record import RESULTS_NAME, read_results

LABELS = ["cyst", "solid"]


def result(status: str, probs: list[float] | None = None, *, model: str = "m",
           stream: str = "s") -> dict[str, Any]:
    """A result map as the pipeline publishes it (the fields the answer reads)."""
    msg: dict[str, Any] = {"stream": stream, "model": model, "labels": LABELS,
                           "status": status, "probs": probs or []}
    if probs:
        msg["top"] = LABELS[max(range(len(probs)), key=probs.__getitem__)]
    return msg


def test_answer_is_the_majority_of_ok_results_with_their_mean_probability() -> None:
    rs = [result("ok", [0.9, 0.1]), result("ok", [0.7, 0.3]), result("ok", [0.8, 0.2]),
          result("ok", [0.4, 0.6]), result("uncertain", [0.55, 0.45]),
          result("uncertain", [0.5, 0.5]), result("warming_up", [0.1, 0.9]),
          result("model_fault")]
    a = recording_answer(rs)
    assert a["label"] == "cyst" and a["reason"] is None and a["results"] == 8
    assert a["confidence"] == pytest.approx((0.9 + 0.7 + 0.8 + 0.4) / 4)  # over the ok ones
    assert a["class_shares"] == {"cyst": 0.75, "solid": 0.25}
    assert a["status_shares"] == {"ok": 0.5, "uncertain": 0.25, "warming_up": 0.125,
                                  "model_fault": 0.125}
    assert a["uncertain_share"] == 0.25


def test_no_ok_result_answers_uncertain_and_says_why() -> None:
    a = recording_answer([result("uncertain", [0.6, 0.4]), result("uncertain", [0.3, 0.7]),
                          result("warming_up", [0.9, 0.1])])
    assert a["label"] == "uncertain" and a["confidence"] is None
    assert a["reason"] == "no result was ok (2 uncertain, 1 warming_up): no class is given"
    assert a["class_shares"] == {"cyst": 0.0, "solid": 0.0}
    assert sum(a["status_shares"].values()) == pytest.approx(1.0)


def test_a_tied_vote_goes_to_the_higher_mean_probability() -> None:
    a = recording_answer([result("ok", [0.55, 0.45]), result("ok", [0.1, 0.9])])
    assert a["label"] == "solid" and a["confidence"] == pytest.approx((0.45 + 0.9) / 2)


def test_each_stream_and_model_gets_its_own_answer() -> None:
    rs = [result("ok", [0.9, 0.1], stream="a"), result("ok", [0.2, 0.8], stream="b"),
          result("ok", [0.3, 0.7], stream="a", model="clip")]
    got = {(a["stream"], a["model"]): a["label"] for a in recording_answers(rs)}
    assert got == {("a", "m"): "cyst", ("b", "m"): "solid", ("a", "clip"): "solid"}
    with pytest.raises(ValueError, match="3 \\(stream, model\\) pairs"):
        recording_answer(rs)


def _abstaining(small_model: Path, out: Path, threshold: float) -> Path:
    """``small_model`` whose export says: uncertain below ``threshold`` (its confidence
    on ``video30`` goes from 0.3675 to 0.3765 and back: some frames of each)."""
    m = onnx.load(str(small_model))
    m.metadata_props.add(key="hepascope.abstain_threshold", value=str(threshold))
    onnx.save(m, str(out))
    return out


def _cli(argv: list[str]) -> tuple[int, list[str]]:
    """``hepascope ARGV`` in this process: (exit code, stdout lines)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue().splitlines()


def _check(summary: dict[str, Any], lines: list[str], results: list[dict[str, Any]],
           models: list[str]) -> None:
    """The summary ends with the answer of each model tallied from ``results``."""
    want = sorted(recording_answers(results), key=lambda a: models.index(a["model"]))
    assert [a["model"] for a in want] == models
    assert list(summary)[-2:] == ["answer", "answers"]
    assert summary["answers"] == want and summary["answer"] == want[0]
    assert lines[-len(models):] == [ln for ln in lines if ln.startswith("answer ")]
    for a, line in zip(want, lines[-len(models):], strict=True):
        assert line.startswith(f"answer {a['model']} on {a['stream']}: {a['label']} ")
        assert sum(a["status_shares"].values()) == pytest.approx(1.0)
        if a["status_shares"]["ok"]:
            assert sum(a["class_shares"].values()) == pytest.approx(1.0)
    print(*lines[-len(models):], sep="\n")


def test_run_and_replays_end_with_the_recordings_answer(tmp_path: Path, video30: Path,
                                                        small_model: Path) -> None:
    model = _abstaining(small_model, tmp_path / "abstaining.onnx", 0.372)
    c = load_config()
    clip = make_clip_model(tmp_path / "clip.onnx", PreprocessSpec(
        c.layout, c.preprocess, (32, 32), 1, ("ceus",)).to_dict(), frames=4, interval_s=0.5)
    rec, s = tmp_path / "rec", tmp_path / "run.json"
    code, lines = _cli(["run", "--source", str(video30), "--model", str(model),
                        "--clip-model", str(clip), "--clip-every", "10", "--record", str(rec),
                        "--max-rate",
                        "--publish", f"tcp://127.0.0.1:{free_port()}", "--summary", str(s)])
    assert code == 0
    summary = json.loads(s.read_text())
    published = read_results(rec)[0]  # every published result, as the recorder got it
    assert len(published) == summary["frames_out"] + summary["models"][1]["frames_out"]
    _check(summary, lines, published, ["abstaining", "clip3d-test"])
    statuses = summary["answer"]["status_shares"]
    assert statuses["ok"] > 0 and statuses["uncertain"] > 0  # the threshold bites
    clip_answer = summary["answers"][1]  # its own line, over its own results
    assert clip_answer["results"] == summary["models"][1]["frames_out"] > 0
    assert clip_answer["label"] in ("non_hcc", "hcc")

    s = tmp_path / "replay.json"
    code, lines = _cli(["replay", str(rec), "--max-rate", "--summary", str(s),
                        "--publish", f"tcp://127.0.0.1:{free_port()}"])
    assert code == 0
    # the replayed results: the recording's own file is not rewritten, so tally them anew
    summary = json.loads(s.read_text())
    assert summary["answer"]["results"] == summary["frames_out"]
    assert list(summary)[-2:] == ["answer", "answers"] and lines[-1].startswith("answer ")

    s, out = tmp_path / "det.json", tmp_path / "det.jsonl"
    code, lines = _cli(["replay", str(rec), "--deterministic", "--results", str(out),
                        "--summary", str(s)])
    assert code == 0
    replayed = [json.loads(x) for x in out.read_text().splitlines()]
    _check(json.loads(s.read_text()), lines, replayed, ["abstaining"])
    assert (rec / RESULTS_NAME).exists()
