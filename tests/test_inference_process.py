"""Inference in its own process: the child is really killed (SIGKILL) while `hepascope run`
captures, records and publishes; a real subscriber and the overlay's own state judge."""

from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import time
from pathlib import Path

import pytest
from support.budget import trials
from support.runs import START_S, Watcher, kill_run, start_run, stop_run, write_config

from hepascope.core.config import load_config
from hepascope.core.errors import ModelError
from hepascope.stream.supervisor import open_inference


def test_killed_inference_is_restarted_while_capture_and_recording_go_on(
        tmp_path: Path, video30: Path, small_model: Path) -> None:
    stale_ms = load_config().overlay.stale_ms
    rec = tmp_path / "rec"
    proc, endpoint = start_run(tmp_path, small_model, video30, "--record", str(rec))
    watch = Watcher(endpoint, stale_ms)
    try:
        watch.pump(lambda _: watch.status == "LIVE" and "inference_pid" in watch.telemetry,
                   START_S, "LIVE")
        # one more heartbeat so frames_in at the kill is fresh
        before = watch.telemetry
        watch.pump(lambda _: watch.telemetry is not before, 5, "a heartbeat")
        tel = watch.telemetry
        victim = int(tel["inference_pid"])
        assert victim != proc.pid and tel["pid"] == proc.pid and tel["inference"] == "process"
        frames_at_kill = int(tel["frames_in"])
        t_kill = time.monotonic_ns()
        os.kill(victim, signal.SIGKILL)
        # STALE (publisher alive, results old), never NO DATA, while the child is down
        t_stale = watch.pump(lambda _: watch.status == "STALE", 10, "STALE")
        # the first result of a frame captured after the kill can only come from a new child
        t_back = watch.pump(lambda _: any(m["t_capture_ns"] > t_kill
                                          for _, m in watch.results[-5:]), START_S,
                            "a result from the restarted child")
        outage = [s for t, s in watch.statuses if t_kill <= t < t_back]
        frames_in_outage = int(watch.telemetry["frames_in"]) - frames_at_kill
        watch.pump(lambda _: watch.telemetry.get("inference_restarts") == 1
                   and watch.status == "LIVE", 10, "LIVE again with 1 restart")
        new_pid = int(watch.telemetry["inference_pid"])
        watch.pump(lambda _: sum(t >= t_back for t, _m in watch.results) >= 10, 30,
                   "results going on after the restart")
    finally:
        watch.close()
        rc, err = stop_run(proc)
    assert rc == 0, err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "NO DATA" not in outage and "STALE" in outage
    assert new_pid != victim and summary["inference_pid"] == new_pid
    assert summary["inference_restarts"] == 1
    assert f"inference process {victim} was killed by SIGKILL; restart 1" in err
    # capture went on: frames kept arriving while no model ran, and they are drops
    assert frames_in_outage > 0
    assert summary["frames_out"] + summary["dropped"] == summary["frames_in"]
    results = [m for _, m in watch.results]
    seqs = [m["seq"] for m in results]
    gap = max(b - a for a, b in itertools.pairwise(seqs))
    assert summary["dropped"] >= gap - 1 > 0
    # recording went on: every captured frame of the outage is in the recording
    with (rec / "frames.csv").open() as f:
        rows = [(int(r["seq"]), int(r["t_capture_ns"])) for r in csv.DictReader(f)]
    meta = json.loads((rec / "session.json").read_text())
    recorded_outage = [s for s, t in rows if t_kill <= t < t_back]
    # the recorder is one more ring reader: what it missed (a busy machine) it counts
    assert meta["frames"] == len(rows)
    assert meta["frames"] + meta["record_dropped"] == summary["frames_in"]
    assert all(a[0] < b[0] for a, b in itertools.pairwise(rows))
    assert len(recorded_outage) > 0
    print(f"\nkill -> STALE at the overlay {(t_stale - t_kill) / 1e6:.0f} ms "
          f"(stale_ms {stale_ms:g}); kill -> first new result {(t_back - t_kill) / 1e6:.0f} ms; "
          f"frames captured during the outage {frames_in_outage} (telemetry), "
          f"{len(recorded_outage)} recorded (recorder dropped {meta['record_dropped']} in the "
          f"run); largest result seq gap {gap}; dropped in the run "
          f"{summary['dropped']} of {summary['frames_in']}; restarts "
          f"{summary['inference_restarts']}; pids {victim} -> {new_pid}")


STALE_TRIALS = trials(3, 8)


def test_stale_delay_over_many_real_kills(tmp_path: Path, video30: Path,
                                          small_model: Path) -> None:
    """The inference child is SIGKILLed again and again in one run; each time the overlay
    must turn STALE (never NO DATA: the publisher lives) within stale_ms + a few polls."""
    stale_ms = load_config().overlay.stale_ms
    config = write_config(tmp_path, inference_max_crashes=STALE_TRIALS + 5)
    proc, endpoint = start_run(tmp_path, small_model, video30, config=config)
    watch = Watcher(endpoint, stale_ms)
    delays, back = [], []
    try:
        for k in range(STALE_TRIALS):
            watch.pump(lambda _, k=k: watch.status == "LIVE"
                       and watch.telemetry.get("inference_restarts") == k
                       and watch.telemetry.get("inference_up") is True, START_S, "LIVE")
            t_kill = time.monotonic_ns()
            os.kill(int(watch.telemetry["inference_pid"]), signal.SIGKILL)
            t_stale = watch.pump(lambda _: watch.status != "LIVE", 10, "not LIVE")
            assert watch.status == "STALE", watch.status
            delays.append((t_stale - t_kill) / 1e6)
            t_new = watch.pump(lambda _, t=t_kill: any(m["t_capture_ns"] > t
                                                       for _, m in watch.results[-3:]),
                               START_S, "a result from the restarted child")
            back.append((t_new - t_kill) / 1e6)
    finally:
        watch.close()
        rc, err = stop_run(proc)
    assert rc == 0, err
    statuses = [s for _, s in watch.statuses]
    assert "NO DATA" not in statuses[statuses.index("LIVE"):]
    delays.sort()
    p99 = delays[min(len(delays) - 1, round(0.99 * (len(delays) - 1)))]
    print(f"\ninference SIGKILLed {STALE_TRIALS} times: kill -> STALE p50 "
          f"{delays[len(delays) // 2]:.0f} ms, p99 {p99:.0f} ms, max {delays[-1]:.0f} ms "
          f"(stale_ms {stale_ms:g}); kill -> first new result p50 "
          f"{sorted(back)[len(back) // 2]:.0f} ms, max {max(back):.0f} ms")
    # the newest result is at most one frame period old at the kill, then stale_ms runs out
    assert delays[-1] < stale_ms + 250


def test_a_child_that_keeps_dying_ends_the_run_with_a_typed_error(
        tmp_path: Path, video30: Path, small_model: Path) -> None:
    config = write_config(tmp_path, inference_max_crashes=3)
    proc, endpoint = start_run(tmp_path, small_model, video30, config=config)
    watch = Watcher(endpoint, load_config().overlay.stale_ms)
    killed: list[int] = []
    t_first = 0.0

    def kill_each_new_child(_: int) -> bool:
        nonlocal t_first
        pid = watch.telemetry.get("inference_pid")
        if isinstance(pid, int) and pid not in killed and (killed or watch.status == "LIVE"):
            os.kill(pid, signal.SIGKILL)  # loading or running: a crash either way
            t_first = t_first or time.monotonic()
            killed.append(pid)
        return proc.poll() is not None

    try:  # ends by itself: no endless restart loop
        watch.pump(kill_each_new_child, START_S + 60, "the run to give up")
        _, err = proc.communicate(timeout=30)
        ended_s = time.monotonic() - t_first
    finally:
        watch.close()
        kill_run(proc)
    lines = err.strip().splitlines()
    restarts = [ln for ln in lines if "; restart " in ln]
    print(f"\ncrash loop: {len(killed)} children killed, {len(restarts)} restarts, run ended "
          f"{ended_s:.2f} s after the first kill, exit {proc.returncode}: {lines[-1]}")
    assert proc.returncode == 2 and "Traceback" not in err
    assert lines[-1] == ("hepascope: error: inference process crashed 3 times within 60 s "
                         "(last: was killed by SIGKILL); giving up")
    assert len(killed) == 3 and len(restarts) == 2


def test_a_model_file_gone_bad_is_not_restarted_forever(
        tmp_path: Path, video30: Path, small_model: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(small_model.read_bytes())
    proc, endpoint = start_run(tmp_path, model, video30)
    watch = Watcher(endpoint, load_config().overlay.stale_ms)
    try:
        watch.pump(lambda _: watch.status == "LIVE" and "inference_pid" in watch.telemetry,
                   START_S, "LIVE")
        model.write_bytes(os.urandom(4096))  # the file goes bad on disk, then the child dies
        t_kill = time.monotonic()
        os.kill(int(watch.telemetry["inference_pid"]), signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        ended_s = time.monotonic() - t_kill
    finally:
        watch.close()
        kill_run(proc)
    lines = err.strip().splitlines()
    print(f"\nbad model file: run ended {ended_s:.2f} s after the kill, exit "
          f"{proc.returncode}: {lines[-1]}")
    # the restart finds a file that is no model: the same ModelError as at a first start
    assert proc.returncode == 2 and "Traceback" not in err
    assert lines[-1].startswith("hepascope: error: ") and "not a loadable ONNX model" in lines[-1]
    assert len([ln for ln in lines if "; restart " in ln]) == 1


def test_model_errors_at_first_start_are_the_same_in_a_process(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07 not an onnx graph" * 50)
    cfg = load_config()
    errors = []
    for mode in ("thread", "process"):
        with pytest.raises(ModelError) as info:
            open_inference(mode, bad, cfg, backend="onnxruntime")
        errors.append((type(info.value), str(info.value)))
    assert errors[0] == errors[1]
