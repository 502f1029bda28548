"""From per-frame probabilities to verdicts (stream/verdict.py), each part on its own:
scene cuts on real phantom sessions (the CEUS window resets at each patient change and
nowhere else), smoothing, temperature and abstention read from a model's metadata.
Real ONNX models built in code, real videos written by the ``hepascope`` CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.models import make_bimodal_export, make_classifier, set_metadata
from support.runs import START_S, Watcher, kill_run, start_run, stop_run

from hepascope.core.config import load_config
from hepascope.core.errors import ModelError
from hepascope.core.frame import Frame
from hepascope.core.messages import RunStamp, validate_result
from hepascope.engines import open_engine
from hepascope.phantom.session import iter_session
from hepascope.stream.classifier import FrameClassifier
from hepascope.stream.model_loader import open_model
from hepascope.stream.overlay import run_overlay
from hepascope.stream.replay import VirtualClock, lockstep_message
from hepascope.stream.sources.file import FileSource

CLI = [sys.executable, "-m", "hepascope.cli"]
TEMPERATURE, ABSTAIN = "hepascope.temperature", "hepascope.abstain_threshold"
WINDOW, INTERVAL_S = 4, 0.25  # the bimodal test export: its window spans 0.75 s


def _phantom_frames(seed: int, n: int, segment_s: float = 2.0) -> list[Frame]:
    return [Frame(img, i, 1_000 + i, f"phantom:{seed}", i / 30)
            for i, (img, _) in enumerate(iter_session(seed, 30.0, segment_s, n))]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return np.asarray(e / e.sum())


def _messages(clf: Any, frames: list[Frame]) -> list[dict[str, Any]]:
    """Each frame's result map, as the pipeline makes it (lockstep, virtual clock)."""
    clock, stamp = VirtualClock(), RunStamp("verdict-test", 0)
    return [lockstep_message(clf, f, clock, stamp) for f in frames]


# --- temperature ------------------------------------------------------------------------------


@pytest.mark.parametrize("softmax", [False, True], ids=["logits", "probs"])
def test_a_temperature_in_the_metadata_tempers_the_probabilities(tmp_path: Path,
                                                                 softmax: bool) -> None:
    """softmax(z / T) of the graph's own logits z (read from the bare engine), or, for a
    graph that ends in a softmax, of its log-probabilities."""
    frames = _phantom_frames(3, 3)
    cfg = load_config()
    for t in (0.5, 2.5):
        path = set_metadata(make_classifier(tmp_path / f"m{t}.onnx", shape=(1, 1, 64, 64),
                                            softmax=softmax, seed=4), **{TEMPERATURE: t})
        bare = FrameClassifier(open_engine(path, "onnxruntime"), cfg)
        clf = open_model(path, cfg)
        try:
            for i, f in enumerate(frames):
                out = np.asarray(bare.engine.infer(bare.feeds(f.image))[bare.output_name],
                                 np.float64).reshape(-1)
                z = np.log(out) if softmax else out
                # media time going back starts a new scene: nothing smooths this result
                got, _ = clf.predict(Frame(f.image, i, f.t_capture_ns, f.source_id, 9.0 - i))
                want = _softmax(z / t)
                print(f"T={t} frame {i}: untempered {np.round(_softmax(z), 4)}, tempered "
                      f"{np.round(got, 4)}")
                assert np.allclose(got, want, atol=1e-6), (got, want)
                assert (got.max() > _softmax(z).max()) == (t < 1)  # sharper below 1
        finally:
            clf.close()
            bare.close()


@pytest.mark.parametrize(("key", "value", "match"), [
    (TEMPERATURE, "0", "must be > 0"), (TEMPERATURE, "-1.5", "must be > 0"),
    (TEMPERATURE, '"2"', "finite number"), (TEMPERATURE, "NaN", "finite number"),
    (TEMPERATURE, "true", "finite number"), (ABSTAIN, "1.5", r"in \[0, 1\]"),
    (ABSTAIN, "[0.5]", "finite number"), (ABSTAIN, "x", "not a JSON number")])
def test_invalid_calibration_metadata_is_refused(tmp_path: Path, key: str, value: str,
                                                 match: str) -> None:
    path = set_metadata(make_classifier(tmp_path / "bad.onnx"), **{key: value})
    with pytest.raises(ModelError, match=match) as err:
        open_model(path, load_config())
    assert key in str(err.value) and "\n" not in str(err.value)


# --- abstention -------------------------------------------------------------------------------


def test_an_abstain_threshold_in_the_metadata_makes_unsure_results_uncertain(
        tmp_path: Path) -> None:
    """The threshold sits among the model's confidences on these frames: results whose
    smoothed confidence is below it are ``uncertain`` (probabilities and class still
    published), the others ``ok``."""
    frames = _phantom_frames(6, 90, segment_s=1.0)  # 3 patients
    path = make_classifier(tmp_path / "m.onnx", shape=(1, 1, 64, 64), seed=2)
    plain = _messages(open_model(path, load_config()), frames)
    threshold = float(np.median([max(m["probs"]) for m in plain]))
    set_metadata(path, **{ABSTAIN: threshold})
    clf = open_model(path, load_config())
    try:
        msgs = _messages(clf, frames)
    finally:
        clf.close()
    statuses = [m["status"] for m in msgs]
    conf = [max(m["probs"]) for m in msgs]
    print(f"\nthreshold {threshold:.4f}: {statuses.count('uncertain')} uncertain, "
          f"{statuses.count('ok')} ok; confidence {min(conf):.4f}..{max(conf):.4f}")
    assert "uncertain" in statuses and "ok" in statuses
    for m, c in zip(msgs, conf, strict=True):
        assert m["status"] == ("uncertain" if c < threshold else "ok")
        assert m["top"] == m["labels"][int(np.argmax(m["probs"]))]
        assert validate_result(m)
    # the same frames, the same probabilities: the threshold changes only the status
    assert [m["probs"] for m in msgs] == [m["probs"] for m in plain]


# --- smoothing --------------------------------------------------------------------------------


def test_smoothing_is_the_mean_over_the_last_span_of_one_scene() -> None:
    from hepascope.stream.verdict import smooth_series

    p = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.2, 0.8], [1.0, 0.0]])
    t = np.array([0.0, 0.5, 1.0, 1.2, 1.3])
    out = smooth_series(t, p, 1.0)
    assert np.allclose(out[0], [1.0, 0.0])
    assert np.allclose(out[1], [0.5, 0.5])
    assert np.allclose(out[2], [0.25, 0.75])  # t=0.0 is a full second back: left out
    assert np.allclose(out[4], (p[1] + p[2] + p[3] + p[4]) / 4)  # 0.5 s back: in
    scenes = [0, 0, 1, 1, 1]  # a cut before row 2: nothing of scene 0 in its rows
    cut = smooth_series(t, p, 1.0, scenes)
    assert np.allclose(cut[2], p[2]) and np.allclose(cut[4], (p[2] + p[3] + p[4]) / 3)
    assert np.array_equal(smooth_series(t, p, 0.0), p)  # 0 s: no smoothing
    with pytest.raises(ValueError, match="time goes back"):
        smooth_series([0.0, 1.0, 0.5], p[:3], 1.0)


def test_the_live_path_smooths_with_the_same_function_bit_for_bit(tmp_path: Path) -> None:
    """Live results of a phantom session with two patient changes == smooth_series of the
    bare model's per-frame probabilities over the same scenes: the same numbers, exactly."""
    from hepascope.stream.verdict import smooth_series, verdict_time

    frames = _phantom_frames(7, 75, segment_s=1.0)
    path = make_classifier(tmp_path / "m.onnx", shape=(1, 1, 64, 64), seed=5)
    bare = open_model(path, load_config(), verdicts=False)
    clf = open_model(path, load_config())
    try:
        raw = np.stack([bare.predict(f)[0] for f in frames])
        live, scenes = [], []
        for f in frames:
            live.append(clf.predict(f)[0])
            scenes.append(clf.scene_starts)
    finally:
        bare.close()
        clf.close()
    times = [verdict_time(f) for f in frames]
    assert scenes[-1] == 3  # the first frame and two patient changes
    want = smooth_series(times, raw, load_config().verdict.smooth_s, scenes)
    assert np.array_equal(np.stack(live), want)
    assert not np.array_equal(want, raw)
    same = np.diff(scenes) == 0  # frame-to-frame changes within a scene
    jitter = [float(np.abs(np.diff(x, axis=0))[same].max()) for x in (raw, want)]
    print(f"\nlargest frame-to-frame change of a probability within a scene: raw "
          f"{jitter[0]:.5f}, smoothed {jitter[1]:.5f}")


# --- scene cuts -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bimodal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bimodal_export(tmp_path_factory.mktemp("bimodal"), window=WINDOW,
                               interval_s=INTERVAL_S)


@pytest.mark.parametrize("seed", [3, 8])
def test_the_ceus_window_resets_at_each_patient_change_of_a_phantom_session(
        tmp_path: Path, bimodal: Path, seed: int) -> None:
    """A real session (``hepascope phantom session``, H.264) through a bimodal export:
    the window holds only frames of the patient on screen, restarts exactly at each
    segment's first frame, and results are ``warming_up`` until it spans half of itself."""
    video = tmp_path / "session.mp4"
    subprocess.run([*CLI, "phantom", "session", "--seed", str(seed), "--seconds", "4",
                    "--segment-seconds", "1", "--out", str(video)], check=True,
                   capture_output=True, timeout=120)
    truth = json.loads(video.with_suffix(".truth.json").read_text())
    fps = truth["fps"]
    starts = [s["start_frame"] for s in truth["segments"]]
    segment = [f["segment"] for f in truth["frames"]]
    clf = open_model(bimodal, load_config())
    inner = getattr(clf, "inner", clf)  # the bimodal streamer and its CEUS feature cache
    scenes = getattr(clf, "scenes", None)  # the cut detector, for the figures printed
    restarts, changes, msgs = [], {True: [0.0], False: [0.0]}, []
    clock, stamp = VirtualClock(), RunStamp("scene-test", 0)
    try:
        with FileSource(video, max_rate=True) as src:
            for i, frame in enumerate(src):
                msgs.append(lockstep_message(clf, frame, clock, stamp))
                oldest = min(t for t, _ in inner._cache)
                assert oldest >= starts[segment[i]] / fps - 1e-9, \
                    f"frame {i} (segment {segment[i]}) has a feature from {oldest:.3f} s"
                if len(inner._cache) == 1:
                    restarts.append(i)
                if scenes is not None:
                    changes[i > 0 and i in starts].append(scenes.change)
    finally:
        clf.close()
    print(f"\nseed {seed}: restarts at {restarts}, segments start at {starts}; thumbnail "
          f"change within segments max {max(changes[False]):.4f}, at changes min "
          f"{min(changes[True][1:], default=0):.4f}")
    assert restarts == starts and len(msgs) == len(segment)
    warm_s = load_config().verdict.warmup_fraction * (WINDOW - 1) * INTERVAL_S
    for i, m in enumerate(msgs):
        since = m["pts_s"] - starts[segment[i]] / fps
        assert m["status"] == ("warming_up" if since < warm_s - 1e-6 else "ok"), (i, m)
    fills = [m["window_fill"] for m in msgs]
    assert all(fills[s] == 0.0 for s in starts) and max(fills) == 1.0


def test_a_black_view_is_no_scene(bimodal: Path) -> None:
    """The probe lifted (the B-mode sector goes black for 10 frames): every such result is
    ``warming_up`` with an empty window, and the tissue coming back starts a new scene."""
    cfg = load_config()
    rect = cfg.layout.rect("bmode")
    assert cfg.layout.sector is not None
    sector = cfg.layout.sector.mask(rect.h, rect.w) > 0
    frames = _phantom_frames(4, 50)
    for i in range(20, 30):
        img = frames[i].image.copy()
        img[rect.y:rect.y + rect.h, rect.x:rect.x + rect.w][sector] = 0
        frames[i] = Frame(img, i, frames[i].t_capture_ns, frames[i].source_id, frames[i].pts_s)
    clf = open_model(bimodal, cfg)
    try:
        msgs = _messages(clf, frames)
    finally:
        clf.close()
    statuses = [m["status"] for m in msgs]
    print(f"\nstatuses: {''.join(s[0] for s in statuses)} (w: warming_up, o: ok)")
    assert all(m["status"] == "warming_up" and m["window_fill"] == 0.0 for m in msgs[20:30])
    assert statuses[19] == "ok" and statuses[30] == "warming_up" and statuses[-1] == "ok"
    assert msgs[30]["window_fill"] == 0.0 and not math.isclose(msgs[31]["window_fill"], 0)


# --- the status, end to end -------------------------------------------------------------------


def test_a_run_with_an_unsure_model_shows_uncertain_and_no_class(tmp_path: Path,
                                                                 video30: Path) -> None:
    """``hepascope run`` (inference in its child process) of a model whose metadata
    threshold is above its confidence: every result is ``uncertain`` with its
    probabilities, and the overlay's display loop shows UNCERTAIN, never a class."""
    model = set_metadata(make_classifier(tmp_path / "unsure.onnx", seed=1), **{ABSTAIN: 0.99})
    stale_ms = load_config().overlay.stale_ms
    proc, endpoint = start_run(tmp_path, model, video30)
    out, stop, summary = tmp_path / "overlay.mp4", threading.Event(), {}
    overlay = threading.Thread(target=lambda: summary.update(run_overlay(
        endpoint, out=out, window=False, background=None, stale_ms=stale_ms, fps=30,
        duration_s=120, stop=stop)), name="test-overlay")
    overlay.start()
    watcher = Watcher(endpoint, stale_ms)
    try:
        watcher.pump(lambda _: len(watcher.results) >= 60, START_S, "60 results")
    finally:
        stop.set()
        overlay.join(30)
        watcher.close()
        rc, err = stop_run(proc)
        kill_run(proc)
    results = [m for _, m in watcher.results]
    frames = [json.loads(x) for x in out.with_suffix(".mp4.jsonl").read_text().splitlines()]
    shown = Counter(f["status"] for f in frames)
    conf = [max(r["probs"]) for r in results]
    print(f"\n{len(results)} results, statuses {Counter(r['status'] for r in results)}, "
          f"confidence {min(conf):.3f}..{max(conf):.3f}; overlay frames {dict(shown)}")
    assert rc == 0, err
    assert all(r["status"] == "uncertain" and r["top"] in r["labels"]
               and len(r["probs"]) == len(r["labels"]) for r in results)
    assert shown["UNCERTAIN"] >= 10 and "LIVE" not in shown
    assert all(f["top"] is None for f in frames)


def test_a_model_s_own_warmup_fraction_overrides_the_config() -> None:
    """``hepascope.warmup_fraction`` in a model's metadata (chosen on its validation
    windows) decides when a window model's results count after a scene cut; a model
    without it keeps the config's ``verdict.warmup_fraction``; out of range is refused."""
    from hepascope.core.export_format import META_WARMUP
    from hepascope.stream.classifier import Calibration, read_calibration
    from hepascope.stream.verdict import Judge

    cfg = load_config().verdict
    probs = np.array([0.9, 0.1])
    assert cfg.warmup_fraction == 0.5
    assert Judge(cfg, Calibration()).judge(0.0, probs, 2 / 6)[1] == "warming_up"
    own = read_calibration({META_WARMUP: json.dumps(1 / 6)}, "m")
    assert own.warmup_fraction == pytest.approx(1 / 6)
    assert Judge(cfg, own).judge(0.0, probs, 1 / 6)[1] == "ok"
    assert Judge(cfg, own).judge(0.0, probs, 0.1)[1] == "warming_up"
    with pytest.raises(ModelError, match="warmup_fraction"):
        read_calibration({META_WARMUP: "1.5"}, "m")
