"""The clip model (a 3D-CNN over a sliding window of CEUS frames) on the live path: the
window it feeds, its every-k schedule, its reset, refusal of bad exports, and a run with
the clip model beside the main one, each publishing its own results."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from support.media import frame_pattern
from support.models import make_clip_model

pytest.importorskip("torch")

from hepascope.core.config import load_config
from hepascope.core.errors import ModelError, ModelInputError
from hepascope.core.frame import Frame
from hepascope.core.messages import TOPIC_RESULT, TOPIC_TELEMETRY
from hepascope.core.preprocess import PreprocessSpec, preprocess_view
from hepascope.stream import clip as clip_module
from hepascope.stream.clip import ClipStreamer
from hepascope.stream.model_loader import open_clip_model, open_model
from hepascope.stream.publish import Subscriber

T, INTERVAL_S, FPS = 4, 0.2, 30  # a kept frame every 6 frames at 30 fps
CLI = [sys.executable, "-m", "hepascope.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spec() -> PreprocessSpec:
    c = load_config()
    return PreprocessSpec(c.layout, c.preprocess, (32, 32), 1, ("ceus",))


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip_model(tmp_path_factory.mktemp("clip") / "model.onnx", _spec().to_dict(),
                           frames=T, interval_s=INTERVAL_S)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return [frame_pattern(i, 384, 768) for i in range(40)]


def _frame(img: np.ndarray, seq: int, pts: float) -> Frame:
    return Frame(img, seq, 1_000 + seq, "test", pts)


def _hand_window(images: list[np.ndarray], kept: list[int]) -> np.ndarray:
    """What the window should be: the last T kept frames, oldest first, the oldest repeated
    in front while fewer than T are held."""
    last = kept[-T:]
    last = [last[0]] * (T - len(last)) + last
    views = [preprocess_view(images[i], _spec(), "ceus") for i in last]
    return np.stack(views, axis=1)[None]  # (1, C, T, h, w)


def test_the_window_fed_is_the_kept_frames_preprocessed(clip_path: Path,
                                                        images: list[np.ndarray]) -> None:
    clf = open_clip_model(clip_path, every=1)
    ref = ort.InferenceSession(str(clip_path), providers=["CPUExecutionProvider"])
    kept: list[int] = []
    step = round(INTERVAL_S * FPS)
    for i, img in enumerate(images):
        out = clf.step(_frame(img, i, i / FPS))
        if i % step == 0:
            kept.append(i)
        assert out is not None  # every=1: a result per frame
        assert clf.held == min(len(kept), T) and clf.window_fill == min(len(kept), T) / T
        want = _hand_window(images, kept)
        assert np.array_equal(clf.clip(), want), f"frame {i}"
        (probs,) = ref.run(["probs"], {"clip": want})
        assert np.allclose(out[0], probs[0], atol=1e-6)
    assert len(kept) > T  # the ring wrapped around at least once
    clf.close()


def test_runs_every_k_frames_and_preprocesses_only_kept_ones(
        clip_path: Path, images: list[np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = clip_module.preprocess_view

    def counting(image: np.ndarray, spec: PreprocessSpec, name: str) -> np.ndarray:
        calls.append(1)
        assert name == "ceus"
        return real(image, spec, name)

    monkeypatch.setattr(clip_module, "preprocess_view", counting)
    clf = open_clip_model(clip_path, every=4)
    ran = [i for i in range(20) if clf.step(_frame(images[i], i, i / FPS)) is not None]
    assert ran == [0, 4, 8, 12, 16] and clf.runs == 5
    assert len(calls) == 4  # frames 0, 6, 12, 18: one slot per 0.2 s
    # frames the caller never saw still count: the cadence stays k source frames (counting
    # the frames given would run at 29, the 4th given, instead)
    ran = [s for s in (22, 23, 27, 29, 31, 33)
           if clf.step(_frame(images[0], s, s / FPS)) is not None]
    assert ran == [22, 27, 31]
    clf.close()


def test_a_timeline_that_goes_back_starts_a_new_window(clip_path: Path,
                                                       images: list[np.ndarray]) -> None:
    clf = open_clip_model(clip_path, every=100)
    for i in range(20):
        clf.step(_frame(images[i], i, i / FPS))
    assert clf.held == T
    out = clf.step(_frame(images[30], 20, 0.0))  # a looping file: media time back to 0
    assert out is not None  # a new window runs at once, flagged as 1/T full
    assert clf.held == 1 and clf.result_fields() == {"window_fill": 1 / T}
    assert np.array_equal(clf.clip(), _hand_window(images, [30]))
    assert clf.step(_frame(images[31], 21, 1 / FPS)) is None
    clf.close()


def test_a_clip_export_directory_opens_as_a_model(clip_path: Path,
                                                  images: list[np.ndarray]) -> None:
    # the directory holding model.onnx; the bare model (open_model's default: verdicts)
    clf = open_model(clip_path.parent, load_config(), verdicts=False)
    assert isinstance(clf, ClipStreamer) and clf.model_name == "clip3d-test"
    probs, stages = clf.predict(_frame(images[0], 0, 0.0))
    assert probs.shape == (2,) and abs(probs.sum() - 1) < 1e-9 and "infer" in stages
    clf.close()


@pytest.mark.parametrize(("kw", "error", "match"), [
    ({"drop": ("hepascope.window",)}, ModelError, "hepascope.window"),
    ({"drop": ("hepascope.output",)}, ModelError, "hepascope.output"),
    ({"rank": 4}, ModelInputError, r"not a float32 clip batch"),
    ({"labels": ("a", "b", "c")}, ModelError, "3 labels"),
    ({"frames": 3}, ModelInputError, "does not match"),
])
def test_bad_clip_exports_are_refused(tmp_path: Path, kw: dict[str, Any],
                                      error: type[Exception], match: str) -> None:
    path = make_clip_model(tmp_path / "bad.onnx", _spec().to_dict(), **kw)
    if "frames" in kw:  # the graph takes 3 frames; the metadata claims 4
        import onnx
        from onnx import helper
        m = onnx.load(str(path))
        props = {p.key: p.value for p in m.metadata_props}
        props["hepascope.window"] = json.dumps({"frames": T, "interval_s": INTERVAL_S})
        del m.metadata_props[:]
        helper.set_model_props(m, props)
        onnx.save(m, str(path))
    with pytest.raises(error, match=match):
        open_clip_model(path)


def test_a_plain_classifier_is_not_a_clip_model(small_model: Path) -> None:
    with pytest.raises(ModelError, match="not a clip model"):
        open_clip_model(small_model)


def test_run_publishes_both_models(tmp_path: Path, video30: Path, small_model: Path,
                                   clip_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sub = Subscriber(endpoint)
    summary_path = tmp_path / "summary.json"
    proc = subprocess.Popen([*CLI, "run", "--source", str(video30), "--model", str(small_model),
                             "--clip-model", str(clip_path), "--clip-every", "10",
                             "--publish", endpoint, "--loop", "--duration", "4",
                             "--summary", str(summary_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    got: list[tuple[bytes, dict[str, Any]]] = []
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            sub.poll(100)
            got.extend(sub.drain())
        sub.poll(200)
        got.extend(sub.drain())
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        sub.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    results = [m for t, m in got if t == TOPIC_RESULT]
    by_model = {name: [r for r in results if r["model"] == name] for name in
                ("small", "clip3d-test")}
    clips = by_model["clip3d-test"]
    print(f"\nresults: small {len(by_model['small'])}, clip {len(clips)}; {stdout.strip()}")
    assert len(by_model["small"]) >= 60 and len(clips) >= 5
    assert len(results) == len(by_model["small"]) + len(clips)
    assert all(r["labels"] == ["non_hcc", "hcc"] and 0 < r["window_fill"] <= 1 for r in clips)
    fills = [r["window_fill"] for r in clips]
    assert fills[0] < 1.0 and max(fills) == 1.0  # partial at first, then full
    assert all(b["seq"] - a["seq"] >= 10 for a, b in pairwise(clips))
    telemetry = [m for t, m in got if t == TOPIC_TELEMETRY]
    last = telemetry[-1]["models"]
    assert [m["model"] for m in last] == ["small", "clip3d-test"]
    assert all(m["frames_out"] > 0 for m in last)
    summary = json.loads(summary_path.read_text())
    side = summary["models"][1]
    assert side["model"] == "clip3d-test" and side["frames_out"] >= len(clips)
    assert side["frames_seen"] + side["dropped"] == summary["frames_in"]
    assert "clip3d-test:" in stdout


def test_the_overlay_keeps_the_main_model_and_lists_the_clip_model() -> None:
    from dataclasses import replace

    from hepascope.stream.draw import draw_overlay
    from hepascope.stream.overlay import OverlayState

    def result(model: str, seq: int, labels: list[str], probs: list[float],
               **extra: Any) -> dict[str, Any]:
        return {"v": 1, "stream": "s", "seq": seq, "model": model, "labels": labels,
                "probs": probs, "t_capture_ns": 1, "t_publish_ns": 2,
                "latency_ms": {"total": 5.0}, **extra}

    state = OverlayState(stale_ms=250)
    state.update(TOPIC_RESULT, result("small", 10, ["a", "b", "c"], [0.2, 0.7, 0.1]), 0)
    state.update(TOPIC_TELEMETRY, {"model": "small", "fps_out": 30.0}, 0)
    # a newer clip result, then an older main one: neither replaces the other
    state.update(TOPIC_RESULT, result("c3d", 12, ["non_hcc", "hcc"], [0.25, 0.75],
                                      window_fill=0.5), 1_000_000)
    state.update(TOPIC_RESULT, result("small", 9, ["a", "b", "c"], [1.0, 0.0, 0.0]), 2_000_000)
    view = state.view(3_000_000)
    assert view.status == "LIVE" and view.model == "small" and view.probs == (0.2, 0.7, 0.1)
    assert view.extras == ("c3d: hcc 75%", "  window 50%, 0.0 s ago")
    bg = np.zeros((384, 768, 3), np.uint8)
    with_clip = draw_overlay(bg, view)
    without = draw_overlay(bg, replace(view, extras=()))
    assert with_clip.shape == without.shape and not np.array_equal(with_clip, without)
