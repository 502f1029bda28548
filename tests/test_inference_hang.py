"""A hung inference child is a fault: a real SIGSTOP of the child's pid, or a real ONNX
model that never answers on the frames the test feeds, while `hepascope run` captures
and publishes; a real subscriber judges from the telemetry and results it receives."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from support.budget import trials
from support.fault_models import BRIGHT, DARK, make_tripwire, write_levels
from support.models import make_classifier
from support.runs import START_S, ListSink, Watcher, kill_run, start_run, stop_run, write_config

from hepascope.core.config import load_config
from hepascope.core.messages import TOPIC_RESULT
from hepascope.stream.pipeline import compose
from hepascope.stream.sources.file import FileSource
from hepascope.stream.supervisor import open_inference

HANG_TRIALS = trials(2, 5)


def _reap(pids: list[int], parent: int) -> None:
    """No stopped child of ``parent`` left behind, whatever the test found (a pid the
    supervisor reaped may be reused: only a stopped child of the run is killed)."""
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        if fields[0] == "T" and int(fields[1]) == parent:
            os.kill(pid, signal.SIGKILL)


def _figures(ms: list[float]) -> str:
    a = np.asarray(ms)
    return (f"p50 {np.percentile(a, 50):.0f} ms, p99 {np.percentile(a, 99):.0f} ms, "
            f"max {a.max():.0f} ms")


def test_a_sigstopped_child_is_found_killed_and_replaced(tmp_path: Path, video30: Path,
                                                          small_model: Path) -> None:
    config = write_config(tmp_path, inference_max_crashes=HANG_TRIALS + 3)
    proc, endpoint = start_run(tmp_path, small_model, video30, config=config)
    watch = Watcher(endpoint, load_config().overlay.stale_ms)
    stopped: list[int] = []
    found: list[float] = []
    back: list[float] = []

    def live(_: int) -> bool:  # up, and LIVE, after as many restarts as children stopped
        return (watch.status == "LIVE" and watch.telemetry.get("inference_up") is True
                and watch.telemetry.get("inference_restarts") == len(stopped))

    def down(_: int) -> bool:
        return watch.telemetry.get("inference_up") is False

    def answered_after(t: int) -> Callable[[int], bool]:
        return lambda _: any(m["t_capture_ns"] > t for _, m in watch.results[-3:])

    try:
        for _ in range(HANG_TRIALS):
            watch.pump(live, START_S, "LIVE")
            victim = int(watch.telemetry["inference_pid"])
            t_stop = time.monotonic_ns()
            os.kill(victim, signal.SIGSTOP)  # alive, holding its pipe, making no progress
            stopped.append(victim)
            t_down = watch.pump(down, 10, "inference_up false after SIGSTOP")
            found.append((t_down - t_stop) / 1e6)
            t_new = watch.pump(answered_after(t_stop), START_S, "a result from the new child")
            back.append((t_new - t_stop) / 1e6)
            assert watch.telemetry["inference_pid"] != victim
    finally:
        _reap(stopped, proc.pid)
        watch.close()
        rc, err = stop_run(proc)
    assert rc == 0, err
    summary = json.loads((tmp_path / "summary.json").read_text())
    for victim in stopped:
        assert f"inference process {victim} hung: no progress for " in err, err
    assert summary["inference_restarts"] == HANG_TRIALS
    assert summary["frames_out"] + summary["dropped"] == summary["frames_in"]
    quiet = [float(x) * 1e3 for x in re.findall(r"hung: no progress for ([0-9.]+) s", err)]
    print(f"\nSIGSTOP of the inference child, {HANG_TRIALS} times: -> inference_up false at a "
          f"subscriber {_figures(found)} (the supervisor's own count: no progress for "
          f"{_figures(quiet)}); -> first result of the new child {_figures(back)}")
    assert max(found) < 5000  # about a second: the floor of the bound, plus a heartbeat


def test_a_model_that_never_answers_ends_a_finite_replay_with_one_line(
        tmp_path: Path) -> None:
    # 2.5 s of dark frames, answered; then 0.5 s of bright ones, on which the model spins
    # in a Loop of 10**15 iterations: the last frames of the file can get no result
    model = make_tripwire(tmp_path / "hang.onnx", "hang")
    video = write_levels(tmp_path / "levels.mp4", [DARK] * 75 + [BRIGHT] * 15)
    proc, endpoint = start_run(tmp_path, model, video, loop=False)
    watch = Watcher(endpoint, load_config().overlay.stale_ms)
    t0 = time.monotonic()
    try:
        watch.pump(lambda _: proc.poll() is not None, START_S + 60, "the run to end by itself")
        t_end = time.monotonic_ns()
        _, err = proc.communicate(timeout=30)
    finally:
        watch.close()
        kill_run(proc)
    lines = err.strip().splitlines()
    summary = json.loads((tmp_path / "summary.json").read_text())
    last_result = watch.results[-1][0]
    print(f"\nmodel hung on the bright frames of a 3 s file: run ended {time.monotonic() - t0:.1f}"
          f" s after its start, {(t_end - last_result) / 1e9:.2f} s after the last result; "
          f"exit {proc.returncode}: {lines[-1]}")
    assert "Traceback" not in err
    assert any(" hung: no progress for " in ln for ln in lines), err
    assert all(m.get("status", "ok") == "ok" for _, m in watch.results)
    assert summary["inference_up"] is False  # killed at the end, not restarted
    assert summary["frames_in"] == 90 and summary["results_lost"] > 0
    assert summary["frames_out"] + summary["dropped"] == summary["frames_in"]
    assert proc.returncode == 3
    assert lines[-1] == (f"hepascope: error: results lost: the source ended while the model "
                         f"was down; its last {summary['results_lost']} frames got no result")


def test_a_slow_model_is_not_taken_for_a_hung_one(tmp_path: Path, video30: Path) -> None:
    # ten 64-channel 3x3 convolutions at 128x128 on one thread: far slower than the 1 s
    # floor allows a tenth of, so the bound must come from the measured step times
    slow = make_classifier(tmp_path / "slow.onnx", heavy=10, shape=(1, 1, 128, 128))
    config = load_config()
    clf = open_inference("process", slow, config, backend="onnxruntime", threads=1)
    sink = ListSink()
    try:
        summary = compose(FileSource(video30, loop=True), clf, sink,
                          config.pipeline).run(duration_s=6)
    finally:
        clf.close()
    results = sink.of(TOPIC_RESULT)
    steps = [r["latency_ms"]["preprocess"] + r["latency_ms"]["infer"] for r in results]
    print(f"\nslow model in the child: {len(results)} results in 6 s, step {_figures(steps)}; "
          f"hang bound {summary['inference_hang_bound_s']:.2f} s; restarts "
          f"{summary['inference_restarts']}")
    assert len(results) >= 3 and summary["inference_restarts"] == 0
    assert summary["inference_hang_bound_s"] >= min(9 * max(steps) / 1e3,
                                                    config.pipeline.inference_hang_max_s)
