"""The ``hepascope`` command end to end, in subprocesses, over loopback sockets."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
from support.models import make_classifier

from hepascope.stream.draw import STATUS_COLOURS, status_badge_rect

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "hepascope.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hepascope(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_every_subcommand_has_help() -> None:
    out = hepascope("--help")
    assert out.returncode == 0
    commands = re.search(r"\{([a-z,]+)\}", out.stdout)
    names = commands.group(1).split(",") if commands else ["run", "overlay", "replay", "phantom"]
    assert {"run", "overlay", "replay", "phantom"} <= set(names)
    for name in names:
        res = hepascope(name, "--help")
        assert res.returncode == 0 and "usage:" in res.stdout, name


def _readme_subscriber() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- subscriber-example -->\s*```python\n(.*?)```", text, re.S)
    assert block, "README lost its subscriber example"
    return block.group(1)


def test_run_publishes_what_a_readme_subscriber_receives(tmp_path: Path, video30: Path,
                                                         small_model: Path) -> None:
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    script = tmp_path / "subscriber.py"
    # The subscriber is the README's own example, with only the endpoint changed.
    script.write_text(_readme_subscriber().replace("tcp://127.0.0.1:5555", endpoint))
    sub = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # let the subscriber start; PUB/SUB drops what precedes the join
        res = hepascope("run", "--source", str(video30), "--model", str(small_model),
                        "--publish", endpoint, "--loop", "--duration", "4",
                        "--summary", str(tmp_path / "summary.json"))
        assert res.returncode == 0, res.stderr
    finally:
        time.sleep(0.3)
        sub.terminate()
        printed, _ = sub.communicate(timeout=10)
    results = [ln for ln in printed.splitlines() if ln.startswith("result")]
    telemetry = [ln for ln in printed.splitlines() if ln.startswith("telemetry")]
    summary = json.loads((tmp_path / "summary.json").read_text())
    print(f"\nsubscriber got {len(results)} results, {len(telemetry)} telemetry; run: {summary}")
    assert len(results) >= 60 and len(telemetry) >= 2
    assert summary["frames_in"] >= 100 and summary["results_per_s"] > 20


def _one_error_line(res: subprocess.CompletedProcess[str], pattern: str) -> None:
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("hepascope: error:"), res.stderr
    assert re.search(pattern, lines[0]), lines[0]


def test_bad_inputs_get_one_clear_error_line(tmp_path: Path, video30: Path,
                                             small_model: Path) -> None:
    run = ("run", "--publish", f"tcp://127.0.0.1:{free_port()}", "--model")
    _one_error_line(hepascope(*run, str(small_model), "--source", str(tmp_path / "no.mp4")),
                    "no such file")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01 definitely not a video" * 64)
    _one_error_line(hepascope(*run, str(small_model), "--source", str(junk)), "cannot open")
    t0 = time.monotonic()
    _one_error_line(hepascope(*run, str(small_model), "--source",
                              f"rtsp://127.0.0.1:{free_port()}/live"), "rtsp://127.0.0.1")
    print(f"\nunreachable RTSP refused in {time.monotonic() - t0:.2f} s (process included)")
    five = make_classifier(tmp_path / "five.onnx", shape=(1, 5, 64, 64))
    _one_error_line(hepascope(*run, str(five), "--source", str(video30)), "5 channels")
    _one_error_line(hepascope(*run, str(tmp_path / "none.onnx"), "--source", str(video30)),
                    "no such model")
    small = tmp_path / "small.mp4"
    from support.media import write_video
    write_video(small, frames=5, size=(120, 160))
    _one_error_line(hepascope(*run, str(small_model), "--source", str(small)), "does not fit")


def _badge(img: np.ndarray) -> str:
    x, y, w, _ = status_badge_rect(img.shape[1])
    patch = img[y + 2 : y + 6, x + 2 : x + w - 2].reshape(-1, 3).mean(axis=0)
    dist = {s: float(np.abs(patch - np.array(c)).sum()) for s, c in STATUS_COLOURS.items()}
    return min(dist, key=dist.__getitem__)


def _wait_for_lines(log: Path, done: Callable[[list[str]], bool], timeout_s: float = 60) -> None:
    """Until the overlay's per-frame log (flushed per line) satisfies ``done`` on its
    statuses (a hang guard, not a speed check: fails only after ``timeout_s``)."""
    t_end = time.monotonic() + timeout_s
    while time.monotonic() < t_end:
        lines = log.read_text().splitlines() if log.exists() else []
        if done([json.loads(ln)["status"] for ln in lines[:-1]]):  # the last may be partial
            return
        time.sleep(0.1)
    raise AssertionError(f"overlay log {log} never got there in {timeout_s} s")


def test_overlay_shows_live_then_stale_then_no_data_after_the_publisher_stops(
        tmp_path: Path, video30: Path, small_model: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "overlay.mp4"
    log = tmp_path / "overlay.mp4.jsonl"
    overlay = subprocess.Popen([*CLI, "overlay", "--connect", endpoint, "--out", str(out),
                                "--duration", "60"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    _wait_for_lines(log, lambda seq: len(seq) >= 3)  # NO DATA on screen before the run
    res = hepascope("run", "--source", str(video30), "--model", str(small_model),
                    "--publish", endpoint, "--loop", "--duration", "3")
    assert res.returncode == 0, res.stderr
    # stopped (SIGINT, as Ctrl-C) once NO DATA has held for 10 displayed frames: events,
    # not a fixed duration that a loaded machine can overrun
    _wait_for_lines(log, lambda seq: len(seq) > 10 and set(seq[-10:]) == {"NO DATA"}
                    and "LIVE" in seq)
    overlay.send_signal(signal.SIGINT)
    stdout, stderr = overlay.communicate(timeout=30)
    assert overlay.returncode == 0, stderr
    states = [json.loads(ln) for ln in log.read_text().splitlines()]
    seq = [s["status"] for s in states]
    assert seq[0] == "NO DATA" and "LIVE" in seq and seq[-1] == "NO DATA"
    first_live, last_live = seq.index("LIVE"), len(seq) - 1 - seq[::-1].index("LIVE")
    assert "NO DATA" not in seq[first_live:last_live + 1]
    # after the last result: STALE while the heartbeat may still come, then NO DATA for good
    after = seq[last_live + 1:]
    assert after[0] == "STALE" and "LIVE" not in after
    first_gone = after.index("NO DATA")
    assert set(after[first_gone:]) == {"NO DATA"} and set(after[:first_gone]) == {"STALE"}
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    assert len(frames) == len(states)
    assert _badge(frames[0]) == "NO DATA"
    assert _badge(frames[(first_live + last_live) // 2]) == "LIVE"
    assert _badge(frames[last_live + 1]) == "STALE"
    assert _badge(frames[-1]) == "NO DATA"
    # the background is the pipeline's own frames (from its ring), not a black canvas
    assert frames[(first_live + last_live) // 2][100:300, 100:300].mean() > 10
    print(f"\noverlay: {stdout.strip()}")


def test_record_then_replay(tmp_path: Path, video30: Path, small_model: Path) -> None:
    rec = tmp_path / "rec"
    res = hepascope("run", "--source", str(video30), "--model", str(small_model),
                    "--publish", f"tcp://127.0.0.1:{free_port()}", "--record", str(rec))
    assert res.returncode == 0, res.stderr
    meta = json.loads((rec / "session.json").read_text())
    results = [json.loads(ln) for ln in (rec / "results.jsonl").read_text().splitlines()]
    assert meta["frames"] + meta["record_dropped"] == 90 and len(results) > 0
    with av.open(str(rec / "frames.mkv")) as c:
        recorded = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    with av.open(str(video30)) as c:
        original = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    assert len(recorded) == meta["frames"]
    # lossless: the recording holds exactly the frames as received (decoded)
    assert np.array_equal(recorded[0], original[0]) and np.array_equal(recorded[-1], original[-1])
    summary = tmp_path / "replay.json"
    res = hepascope("replay", str(rec), "--max-rate", "--publish",
                    f"tcp://127.0.0.1:{free_port()}", "--summary", str(summary))
    assert res.returncode == 0, res.stderr
    assert json.loads(summary.read_text())["frames_in"] == meta["frames"]
    _one_error_line(hepascope("replay", str(tmp_path)), "not a hepascope recording")


@pytest.mark.parametrize("args", [["run", "--source", "x", "--model", "m", "--speed", "0"],
                                  ["overlay", "--fps", "-3"]])
def test_argument_errors_exit_nonzero(args: list[str]) -> None:
    res = hepascope(*args)
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_overlay_out_into_a_missing_folder_creates_it_or_says_why(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"  # nothing publishes: NO DATA frames
    out = tmp_path / "does" / "not" / "exist" / "x.mp4"
    res = hepascope("overlay", "--connect", endpoint, "--out", str(out), "--duration", "0.5")
    assert res.returncode == 0, res.stderr
    assert out.stat().st_size > 0 and out.with_suffix(".mp4.jsonl").stat().st_size > 0
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    res = hepascope("overlay", "--connect", endpoint, "--out", str(blocker / "sub" / "x.mp4"),
                    "--duration", "0.5")
    print(f"\n  exit {res.returncode}: {res.stderr.strip()}")
    _one_error_line(res, re.escape(str(blocker)))
