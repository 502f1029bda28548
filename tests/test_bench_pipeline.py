"""The pipeline benchmark's sections on tiny models for ~2 s each: every key present and
the relations that must hold whatever the machine's speed (no timing thresholds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hepascope.bench.naive import baseline_ratio, naive_section
from hepascope.bench.pipeline_sections import (
    pipeline_section,
    scaling_section,
    slow_model_section,
)

SECONDS = 2.0
STAGES = {"capture_decode", "ring", "preprocess", "infer", "publish", "overlay_receive"}


def _p50_le_p99(d: dict[str, object], prefix: str) -> None:
    p50, p99 = d[f"{prefix}_p50_ms"], d[f"{prefix}_p99_ms"]
    assert isinstance(p50, float) and isinstance(p99, float)
    assert 0 <= p50 <= p99


def test_pipeline_and_naive_sections_and_their_ratio(bimodal_export: Path) -> None:
    pipe = pipeline_section(bimodal_export, fps=30, seconds=SECONDS)
    assert pipe["model"] == "bimodal_resnet18_lite"
    assert 0 < pipe["frames_out"] <= pipe["frames_in"]
    assert pipe["dropped"] == pipe["frames_in"] - pipe["frames_out"]
    assert STAGES | {"encode", "fuse"} <= set(pipe["stage_ms"])
    for stage in pipe["stage_ms"].values():
        assert 0 <= stage["p50_ms"] <= stage["p99_ms"]
    _p50_le_p99(pipe, "capture_to_publish")
    _p50_le_p99(pipe, "capture_to_overlay")
    # every matched result reached the subscriber after it was published
    assert 0 < pipe["overlay_matched"] <= pipe["frames_out"]
    assert pipe["capture_to_overlay_p50_ms"] >= pipe["matched_capture_to_publish_p50_ms"]
    assert pipe["capture_to_overlay_p99_ms"] >= pipe["matched_capture_to_publish_p99_ms"]
    assert pipe["cpu_pct"] > 0 and 0 < pipe["rss_end_mb"] <= pipe["rss_peak_mb"]

    lines: list[str] = []

    class Sink:
        def write(self, s: str) -> int:
            lines.append(s)
            return len(s)

        def flush(self) -> None:
            pass

    naive = naive_section(bimodal_export, source="phantom:7", fps=30, seconds=SECONDS,
                          threads=1, out=Sink())
    assert naive["engine"] == "torch-cpu-eager"
    assert 0 < naive["frames_out"] <= naive["frames_arrived"]
    assert naive["backlog_frames"] == naive["frames_arrived"] - naive["frames_out"]
    assert sum(1 for s in lines if s.strip()) == naive["frames_out"]  # one line per result
    _p50_le_p99(naive, "capture_to_result")
    assert {"wait", "capture_decode", "preprocess", "infer", "print"} == set(naive["stage_ms"])

    ratio = baseline_ratio(pipe, naive)
    assert ratio["results_per_s_ratio"] == pytest.approx(
        pipe["results_per_s"] / naive["results_per_s"], abs=0.01)
    assert ratio["latency_p50_ratio"] == pytest.approx(
        naive["capture_to_result_p50_ms"] / pipe["capture_to_publish_p50_ms"], abs=0.01)
    assert ratio["at_least_2x_results_per_s"] == (ratio["results_per_s_ratio"] >= 2)


def test_scaling_section_runs_per_process_and_batched(small_model: Path) -> None:
    out = scaling_section(small_model, streams=(1, 2), fps=30, seconds=1.0)
    assert [r["streams"] for r in out["runs"]] == [1, 2]
    for run in out["runs"]:
        rows = run["per_stream"]
        assert len(rows) == run["streams"]
        assert len({r["source"] for r in rows}) == run["streams"]  # a source each
        for r in rows:
            assert 0 < r["frames_out"] <= r["frames_in"]
            _p50_le_p99(r, "capture_to_publish")
        assert run["total_results_per_s"] == pytest.approx(
            sum(r["results_per_s"] for r in rows), abs=0.05)
        assert run["threads_per_stream"] >= 1
    batched = out["batched"]["runs"]  # the small model's batch axis is static: one by one
    assert [r["streams"] for r in batched] == [1, 2]
    for run in batched:
        assert [r["source"] for r in run["per_stream"]] == [f"phantom:{7 + i}"
                                                          for i in range(run["streams"])]
        assert all(0 < r["frames_out"] <= r["frames_in"] for r in run["per_stream"])
        assert run["batches"] >= 1 and run["frames_per_batch"] >= 1
    share = out["share_of_single"]
    single = share["single_stream_results_per_s"]
    assert single == out["runs"][0]["total_results_per_s"]
    for mode, runs in (("process", out["runs"]), ("batched", batched)):
        for row, run in zip(share[mode], runs, strict=True):
            lowest = min(r["results_per_s"] for r in run["per_stream"])
            assert row["ratio_min"] == pytest.approx(lowest * run["streams"] / single,
                                                     abs=0.01)
            assert row["meets_goal"] == (row["ratio_min"] >= share["goal_ratio"])


def test_slow_model_drops_frames_and_windows_add_up(tmp_path: Path) -> None:
    out = slow_model_section(fps=30, seconds=SECONDS, work_dir=tmp_path, windows=2)
    assert out["model_convs"] >= 1 and out["model_infer_ms"] > 0
    assert out["dropped"] > 0  # a model slower than its source cannot see every frame
    assert out["frames_out"] + out["dropped"] == out["frames_in"]
    table = out["windows"]
    assert len(table) == 2
    # every result counted is published, also one made as the run stops
    assert sum(w["results"] for w in table) == out["frames_out"]
    so_far = [w["dropped_so_far"] for w in table]
    assert so_far == sorted(so_far) and so_far[-1] <= out["dropped"]


def test_resources_count_child_processes() -> None:
    """The inference process is a child: its RSS is sampled and its CPU counted once it is
    reaped (a child that holds 120 MB and burns CPU for a while, then exits)."""
    from hepascope.bench.pipeline_probes import Resources

    res = Resources()
    cpu0 = Resources._cpu()
    code = ("import time; x = bytearray(120 << 20); x[::4096] = b'\\x01' * len(x[::4096]); "
            "t = time.process_time(); print('ready', flush=True)\n"
            "while time.process_time() - t < 0.5: pass\ntime.sleep(0.4)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    child.wait(timeout=60)
    usage = res.finish()
    assert Resources._cpu() - cpu0 >= 0.5  # the child's CPU time (not wall) is counted
    assert usage["cpu_pct"] > 0 and usage["rss_peak_mb"] > usage["rss_end_mb"] + 100


def test_scaling_streams_can_be_phantom_clips(tmp_path: Path) -> None:
    from hepascope.bench.multistream import phantom_clips, stream_specs
    from hepascope.stream.sources import open_source

    clips = phantom_clips(tmp_path, 2, fps=30, seconds=0.2)
    assert stream_specs(1, clips) == clips[:1]
    assert stream_specs(2, None) == ["phantom:7", "phantom:8"]
    for clip in clips:
        with open_source(clip) as src:
            assert sum(1 for _ in src) == 6


def test_a_bimodal_model_is_not_batched_across_streams(bimodal_export: Path) -> None:
    from hepascope.bench.multistream import batched_section

    out = batched_section(bimodal_export, (1,), fps=30, seconds=1, engine="onnxruntime",
                          threads=1)
    assert "cannot be batched" in out["not_available"]
