"""Deterministic replay, for real: a recording made here is replayed three times in three
processes (``hepascope replay DIR --deterministic``); the result streams must be the same
bytes, non-trivial, smoothed as the live path smooths, and change (at the results that
frame feeds only) when one recorded frame is changed."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hepascope.core.config import load_config
from hepascope.core.errors import DataError
from hepascope.core.frame import Frame
from hepascope.core.messages import validate_result
from hepascope.stream.model_loader import open_model
from hepascope.stream.record import (
    SESSION_NAME,
    VideoRecorder,
    read_index,
    write_json_atomic,
)
from hepascope.stream.replay import VirtualClock, recorded_frames, replay_deterministic
from hepascope.stream.sources.phantom import PhantomSource

CLI = [sys.executable, "-m", "hepascope.cli"]
FRAMES = 90  # 3 s of phantom at 30 fps
ALTERED = 45
SMOOTH_S = 1.0  # the default config's verdict.smooth_s


def _phantom(seed: int, count: int) -> list[Frame]:
    """``count`` frames as the live source stamps them (real capture times)."""
    with PhantomSource(seed, max_rate=True) as src:
        out = []
        for f in src:
            out.append(f)
            if len(out) == count:
                return out
    raise AssertionError("phantom ended early")


def _record(d: Path, frames: list[Frame], model: Path) -> Path:
    """A recording as ``run --record`` leaves it (video, index, session.json)."""
    d.mkdir(parents=True)
    write_json_atomic(d / SESSION_NAME, {"version": 2, "source_id": frames[0].source_id,
                                         "model": str(model.resolve()), "engine": "onnxruntime",
                                         "complete": True, "frames": len(frames)})
    rec = VideoRecorder(d)
    for f in frames:
        rec.write(f)
    rec.close()
    return d


def _replay(d: Path, out: Path) -> str:
    res = subprocess.run([*CLI, "replay", str(d), "--deterministic", "--results", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    m = re.search(r"sha256=([0-9a-f]{64})", res.stdout)
    assert m, res.stdout
    return m.group(1)


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory, small_model: Path) -> Path:
    return _record(tmp_path_factory.mktemp("rec") / "rec", _phantom(5, FRAMES), small_model)


def test_three_replays_are_bit_identical(recording: Path, tmp_path: Path) -> None:
    outs = [tmp_path / f"run{i}.jsonl" for i in range(3)]
    shas = [_replay(recording, o) for o in outs]
    data = [o.read_bytes() for o in outs]
    assert data[0] == data[1] == data[2]
    assert shas[0] == shas[1] == shas[2] == hashlib.sha256(data[0]).hexdigest()
    msgs = [json.loads(ln) for ln in data[0].splitlines()]
    rows, _ = read_index(recording)
    # lockstep: every recorded frame, in order, at its recorded capture time
    assert [m["seq"] for m in msgs] == [r.seq for r in rows] and len(msgs) == FRAMES
    assert [m["t_capture_ns"] for m in msgs] == [r.t_capture_ns for r in rows]
    assert all(m["t_publish_ns"] == m["t_capture_ns"] for m in msgs)
    assert all(set(m["latency_ms"].values()) == {0.0} for m in msgs)
    assert len({tuple(m["probs"]) for m in msgs}) > FRAMES // 2  # the frames differ
    assert all(validate_result(m) for m in msgs)  # each line is a valid schema-v2 result
    print(f"3 replays in 3 processes: {len(msgs)} results, {len(data[0])} bytes each, "
          f"sha256 {shas[0]}")


def test_one_changed_frame_changes_that_result(recording: Path, small_model: Path,
                                               tmp_path: Path) -> None:
    frames = _phantom(5, FRAMES)
    # the same capture times as the first recording: only the pixels of one frame differ
    times = [r.t_capture_ns for r in read_index(recording)[0]]
    frames = [Frame(f.image, f.seq, t, f.source_id, f.pts_s)
              for f, t in zip(frames, times, strict=True)]
    a = frames[ALTERED]
    frames[ALTERED] = Frame(255 - a.image, a.seq, a.t_capture_ns, a.source_id, a.pts_s)
    altered = _record(tmp_path / "altered", frames, small_model)
    same = replay_deterministic(recording, tmp_path / "same.jsonl")
    other = replay_deterministic(altered, tmp_path / "altered.jsonl")
    print(f"original {same.sha256} ({same.count} results), one frame changed "
          f"{other.sha256} ({other.count})")
    assert same.sha256 != other.sha256 and same.count == other.count == FRAMES
    lines = list(zip(same.results.read_bytes().splitlines(),
                     other.results.read_bytes().splitlines(), strict=True))
    # the changed frame starts a scene, and so does the next; results smoothed over the
    # changed frame or over frames before it differ (a second of media time), none other
    pts = [json.loads(x)["pts_s"] for x, _ in lines]
    feeds = [i for i in range(ALTERED, FRAMES) if pts[i] - pts[ALTERED] < SMOOTH_S - 0.001]
    assert [i for i, (x, y) in enumerate(lines) if x != y] == feeds
    assert load_config().verdict.smooth_s == SMOOTH_S
    print(f"results that changed: {feeds[0]}..{feeds[-1]} ({SMOOTH_S} s of smoothing)")


def test_replay_smooths_with_the_live_function(recording: Path, small_model: Path,
                                              tmp_path: Path) -> None:
    """The replayed probabilities are ``smooth_series`` of the bare model's per-frame
    probabilities on the recorded frames (one scene), to the last bit."""
    from hepascope.stream.verdict import smooth_series

    report = replay_deterministic(recording, tmp_path / "r.jsonl")
    msgs = [json.loads(x) for x in report.results.read_bytes().splitlines()]
    bare = open_model(small_model, load_config(), threads=1, verdicts=False)
    try:
        raw = np.stack([bare.predict(f)[0] for f in recorded_frames(recording, "phantom:5")])
    finally:
        bare.close()
    want = smooth_series([m["pts_s"] for m in msgs], raw, load_config().verdict.smooth_s)
    assert [m["probs"] for m in msgs] == [[float(p) for p in row] for row in want]
    assert [m["probs"] for m in msgs] != [[float(p) for p in row] for row in raw]
    assert {m["status"] for m in msgs} == {"ok"}


def test_virtual_clock_never_goes_back() -> None:
    clock = VirtualClock(10)
    clock.advance_to(20)
    assert clock.now_ns() == 20
    with pytest.raises(DataError):
        clock.advance_to(19)


def test_index_and_video_must_agree(recording: Path, tmp_path: Path) -> None:
    """A frames.csv from another recording (a capture time moved) or cut short: refused."""
    lines = (recording / "frames.csv").read_text().splitlines(keepends=True)
    for name, index, error in (
            ("moved", [*lines[:10], _shifted(lines[10]), *lines[11:]], "frame 9 is at"),
            ("short", lines[:20], "more frames than frames.csv")):
        d = tmp_path / name
        shutil.copytree(recording, d)
        (d / "frames.csv").write_text("".join(index))
        with pytest.raises(DataError, match=error):
            replay_deterministic(d, tmp_path / f"{name}.jsonl")
        assert not (tmp_path / f"{name}.jsonl").exists()  # no partial result stream


def _shifted(row: str) -> str:
    index, seq, t_ns, pts = row.split(",")
    return ",".join([index, seq, str(int(t_ns) + 50_000_000), pts])
