"""``hepascope bench``: the command on a tiny budget writes every file with every section;
the report's generic readers on real section shapes. Nothing here times anything."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hepascope.bench.cli import add_subcommands
from hepascope.bench.headline import headline, headline_md
from hepascope.bench.results_report import PLOTS, find_value, flatten, scaling_points
from hepascope.bench.run import machine_slug, main

SECTIONS = ("facts", "peak", "models", "pipeline", "naive", "baseline_ratio", "scaling",
            "slow_model", "seed_paper", "budget", "headline")


def test_bench_registration_is_torch_free_and_parses() -> None:
    code = ("import sys, hepascope.bench.cli; "
            "assert 'torch' not in sys.modules, 'bench.cli imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True)
    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--quick", "--streams", "1,3", "--device", "cpu"])
    assert args.streams == (1, 3) and args.quick and callable(args.func)
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--streams", "0"])


@pytest.mark.slow  # the whole command (~30 s); its sections are tested one by one by default
def test_bench_tiny_budget_writes_every_file_and_section(tmp_path: Path,
                                                         bimodal_export: Path) -> None:
    """The whole command on a small bimodal export (``--model``; ``--models ,``: no other
    model exported here, the registered ones' exports are tested in test_models)."""
    out = tmp_path / "res"
    assert main(["--quick", "--seconds", "1", "--runs", "5", "--batches", "1,2",
                 "--peak-sizes", "256", "--streams", "2", "--model", str(bimodal_export),
                 "--models", ",", "--out", str(out)]) == 0
    for name in ("results.json", "results.csv", "summary.md", *PLOTS):
        assert (out / name).stat().st_size > 100, name
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((out / "results.json").read_text())
    assert set(SECTIONS) <= set(res)
    assert "bench.run --quick" in res["facts"]["command"] and res["facts"]["cpu"]
    m = res["models"]["bimodal_resnet18_lite"]
    assert m["params"] > 1e5 and m["flops"] > 1e6 and m["gmacs"] == pytest.approx(m["flops"] / 2e9)
    assert m["graphs"] == ["bmode_encoder.onnx", "ceus_encoder.onnx", "head.onnx"]
    assert set(m["engines"]) == {"onnxruntime", "onnxruntime-int8", "torch-eager"}
    pk = res["peak"]  # measured here: sgemm (torch, numpy), ONNX Runtime fp32 and INT8
    assert pk["cpu_gflops"]["peak"] == max(pk["cpu_gflops"][k] for k in ("torch", "numpy", "ort"))
    assert pk["cpu_int8_gops"] > 0
    for name, e in m["engines"].items():
        lat = e["latency_ms"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] and lat["n"] == 5
        assert set(e["throughput_fps"]) == {"1", "2"} and e["gflops_per_s"] > 0
        peak = pk["cpu_int8_gops"] if name == "onnxruntime-int8" else pk["cpu_gflops"]["peak"]
        assert e["peak_share"] == pytest.approx(e["gflops_per_s"] / peak)
    assert res["seed_paper"]["theirs"]["frames_per_s"] == 245
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len([r for r in rows if r["section"] == "models"]) == 3 * 2  # engines x batches
    assert {r["section"] for r in rows} >= {"pipeline", "naive", "scaling", "slow_model"}
    md = (out / "summary.md").read_text()
    for text in ("GFLOPs/frame", "GMACs", "p99 ms", "frames/s @b2", "share of peak",
                 "theirs: S1", "245", "723", "## Method", "stages.png", "### scaling",
                 "**Pipeline/naive ratio: ", "## Headline"):
        assert text in md, text


def test_headline_states_the_60fps_latency_ratio_and_the_slow_model_check() -> None:
    res = {"baseline_ratio_60fps": {"latency_p50_ratio": 1.5, "results_per_s_ratio": 1.9},
           "slow_model": {"windows": [
               {"latency_p50_ms": 80.0, "dropped_so_far": 30},
               {"latency_p50_ms": 88.0, "dropped_so_far": 60},
               {"latency_p50_ms": 84.0, "dropped_so_far": 90}]}}
    h = headline(res)
    assert h["ratio"] == 1.5 and h["ratio_at_least_2"] is False  # below 2 is said, not hidden
    assert h["slow_model"] == {"first_window_p50_ms": 80.0, "last_window_p50_ms": 84.0,
                               "latency_change": 1.05, "dropped_first_window": 30,
                               "dropped_end": 90}
    md = "\n".join(headline_md({**res, "headline": h}))
    assert "**Pipeline/naive ratio: 1.5 (>= 2: NO)**" in md
    assert "| phantom, 30 fps | n/a |" in md  # missing sections show as n/a
    assert headline({})["ratio"] is None and "slow_model" not in headline({})


def test_headline_survives_a_slow_model_window_without_results() -> None:
    """Seen on a loaded 2-core machine: the bench's last slow-model window got no result
    (p50 None) and the headline raised a TypeError, losing the whole report."""
    res = {"slow_model": {"windows": [{"latency_p50_ms": 80.0, "dropped_so_far": 3},
                                      {"latency_p50_ms": None, "dropped_so_far": 9}]}}
    h = headline(res)
    assert h["slow_model"]["latency_change"] is None
    assert "(xn/a: flat)" in "\n".join(headline_md({**res, "headline": h}))


def test_flatten_and_find_value_read_nested_sections() -> None:
    sec = {"stage_ms": {"infer": {"p50_ms": 7.5, "p99_ms": 14.0}},
           "capture_to_overlay_p99_ms": 33.0, "runs": [{"streams": 2, "x_ms": 1.0}]}
    flat = flatten(sec)
    assert flat["stage_ms.infer.p99_ms"] == 14.0 and flat["runs.0.streams"] == 2
    assert find_value(sec, "capture_to_overlay_p99") == 33.0
    assert find_value(sec, "infer", "p50") == 7.5 and find_value(sec, "nothing") is None


def test_scaling_points_from_runs_or_keyed_entries() -> None:
    runs = {"runs": [{"streams": 2, "total_results_per_s": 28.0,
                      "per_stream": [{"results_per_s": 13.0}, {"results_per_s": 15.0}]},
                     {"streams": 1, "total_results_per_s": 25.0,
                      "per_stream": [{"results_per_s": 25.0}]}]}
    assert scaling_points(runs) == [(1, 25.0, [25.0]), (2, 28.0, [13.0, 15.0])]
    keyed = {"4": {"per_stream_results_per_s": [1.0, 2.0, 3.0, 4.0]}}
    assert scaling_points(keyed) == [(4, 10.0, [1.0, 2.0, 3.0, 4.0])]


def test_machine_slug() -> None:
    assert machine_slug("cuda", "NVIDIA H100 80GB HBM3") == "h100"
    assert machine_slug("cpu").startswith("cpu-") and machine_slug("cpu").endswith("core")


def test_failed_sections_are_named_on_stderr_and_exit_nonzero(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The fault from outside: the export the pipeline sections run is not there. Each
    section fails on its own (the slow model, which brings its own, stands), progress shows
    on stderr, and the command's status is 1 with one line naming them."""
    from hepascope.bench.run import bench_exit, failed_sections, pipeline_sections

    res = pipeline_sections(tmp_path / "no-such-export", device="cpu", seconds=0.5,
                            streams=(1,), work=tmp_path)
    err = capsys.readouterr().err
    with capsys.disabled():
        print(err)
    assert "bench [1/8] pipeline ..." in err and "bench [8/8] slow_model: " in err
    assert "pipeline: FAILED: " in err
    failed = failed_sections(res)
    assert {"pipeline", "naive", "scaling"} <= set(failed) and "slow_model" not in failed
    out = tmp_path / "res"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(res))
    assert bench_exit(out) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hepascope: error: bench: "), lines
    assert "pipeline" in lines[0]
    (out / "results.json").write_text(json.dumps({"models": {"m": {"engines": {}}}}))
    assert bench_exit(out) == 0
