"""``hepascope bench --peer fast``: the option, the one-line skip where pyfast (or OpenCL) is
missing, the ratios and report from made-up runs, and one small real run against FAST where
it can run. Nothing here times anything: speed is reported as ratios, never asserted."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from hepascope.bench import peer_fast
from hepascope.bench.cli import add_subcommands
from hepascope.bench.peer_section import peer_md, peer_section, session_check, summarize
from hepascope.bench.run import failed_sections


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", *argv])


def test_peer_option_parses_and_refuses_unknown_peers() -> None:
    args = _parse("--peer", "fast", "--pairs", "2", "--video", "clip.mp4")
    assert (args.peer, args.pairs, args.video) == ("fast", 2, Path("clip.mp4"))
    plain = _parse()
    assert plain.peer is None and plain.pairs == 3 and plain.video is None
    for bad in (["--peer", "deepstream"], ["--pairs", "0"]):
        with pytest.raises(SystemExit):
            _parse(*bad)


def test_missing_pyfast_is_a_one_line_skip(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, peer_fast.FAST_MODULE, None)  # import fast fails
    sec = peer_section("fast", work=tmp_path, seconds=1.0, pairs=1)
    assert set(sec) == {"peer", "not_available"}
    assert "pyfast" in sec["not_available"] and "\n" not in sec["not_available"]
    assert failed_sections({"peer": sec}) == []  # a skip, not a failure
    md = peer_md(sec)
    assert [line for line in md if line.startswith("Not available: pyfast")]
    assert not list(tmp_path.iterdir())  # skipped before making the video or the model


def test_no_opencl_platform_is_a_skip_too(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    monkeypatch.setattr(peer_fast, "_fast_dir", lambda: tmp_path)
    monkeypatch.setattr(peer_fast, "opencl_platforms", lambda lib_dir=None: [])
    why = peer_fast.availability()["not_available"]
    assert "OpenCL" in why and "pocl-opencl-icd" in why


def _side(rate: float, p50: float, p99: float) -> dict[str, float]:
    return {"results_per_s": rate, "p50_ms": p50, "p99_ms": p99, "frames_in": 90,
            "dropped": 0}


def test_ratios_are_medians_of_per_pair_ratios_and_the_report_shows_them() -> None:
    pairs = {"unpaced": [{"pair": i, "hepascope": _side(h, 40, 90), "fast": _side(f, 80, 200)}
                         for i, (h, f) in enumerate([(30, 20), (40, 20), (20, 20)], 1)],
             "paced": [{"pair": 1, "hepascope": _side(30, 20, 40),
                        "fast": _side(30, 50, 80)}]}
    s = summarize(pairs)
    assert s["unpaced"]["ratio_x"]["results_per_s"] == 1.5  # median of 1.5, 2.0, 1.0
    assert s["unpaced"]["hepascope"]["results_per_s"] == 30
    assert s["paced"]["ratio_x"] == {"results_per_s": 1.0, "p50_ms": 0.4, "p99_ms": 0.5}
    assert s["goals"]["unpaced_met"] is True and s["goals"]["paced_latency_below_fast"] is True
    assert s["goals"]["unpaced_pairs_met"] == [2, 3] and s["goals"]["paced_pairs_below"] == [1, 1]
    sec = {"peer": "fast", "fast_version": "4.18.0", "opencl_platforms": ["PoCL"],
           "threads": {"hepascope_ort_intra_op": 2, "fast_ort_intra_op": "default"},
           "pairs": 3, "seconds_per_run": 8.0, "summary": s, "model": "resnet18",
           "video": {"path": "v.mp4", "width": 640, "height": 480, "fps": 30.0},
           "model_call": {"hepascope_session_p50_ms": 10.0, "ort_default_session_p50_ms": 18.0,
                          "default_over_hepascope_x": 1.8, "threads": 2}}
    text = "\n".join(peer_md(sec))
    assert "| unpaced | results_per_s | 30 | 20 | 1.5 |" in text
    assert "goal >= 1.5: met, in 2 of 3 pairs" in text and "both below in 1 of 1 pairs" in text
    assert "goal >= 1.5: met" in text and "FAST 4.18.0" in text and "PoCL" in text
    assert "make the call 1.8x faster" in text


def test_a_small_real_run_against_fast(tmp_path: Path) -> None:
    avail = peer_fast.availability()  # not importorskip: importing FAST here would load its
    if "not_available" in avail:  # own ONNX Runtime and Qt into the test process
        pytest.skip(avail["not_available"])
    from hepascope.bench.soak import make_clip, make_model

    video = make_clip(tmp_path / "v.mp4", seconds=1.0, fps=30, size=(160, 120))
    model = make_model(tmp_path / "m.onnx")  # 1x1x64x64 in, 6 probabilities out
    for unpaced in (True, False):
        r = peer_fast.run_fast(video, model, seconds=1.0, unpaced=unpaced, size=(64, 64),
                               mean=0.5, std=0.25, timeout_s=60)
        if "not_available" in r:  # installed, yet FAST does not load here (a system library)
            pytest.skip(r["not_available"])
        assert "error" not in r, r
        assert r["results"] > 0 and r["results_per_s"] > 0 and "ONNXRuntime" in r["engine"]
        assert 0 < r["capture_to_result_p50_ms"] <= r["capture_to_result_p99_ms"]
        assert r["mode"] == ("unpaced" if unpaced else "paced")


def test_a_fast_that_does_not_load_in_the_child_is_a_skip(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    fake = tmp_path / "shadow"
    fake.mkdir()
    (fake / "fast.py").write_text("raise ImportError('libGL.so.1: cannot open shared object')\n")
    monkeypatch.setenv("PYTHONPATH", str(fake))  # the child imports this ``fast`` instead
    r = peer_fast.run_fast(tmp_path / "v.mp4", tmp_path / "m.onnx", seconds=1.0, unpaced=True,
                           size=(64, 64), mean=0.5, std=0.25, timeout_s=60)
    assert r == {"not_available": "pyfast does not load: libGL.so.1: cannot open shared object"}


def test_session_check_times_both_sessions_on_the_same_model(tmp_path: Path) -> None:
    from hepascope.bench.soak import make_model

    r = session_check(make_model(tmp_path / "m.onnx"), threads=1, calls=3)
    assert r["hepascope_session_p50_ms"] > 0 and r["ort_default_session_p50_ms"] > 0
    assert r["default_over_hepascope_x"] > 0 and r["threads"] == 1
