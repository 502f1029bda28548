"""The habits of a well-kept command: ``--version``, logging options after the subcommand,
timestamped log lines, ``--log-json`` for a log collector (one JSON object per line)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "hepascope.cli"]
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z hepascope(\[inference \d+\])?: ")


def hepascope(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_version() -> None:
    res = hepascope("--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"hepascope {version('hepascope')}"


def _run(video: Path, model: Path, *log_args: str) -> subprocess.CompletedProcess[str]:
    res = hepascope("run", "--source", str(video), "--model", str(model), "--max-rate",
                    "--publish", "tcp://127.0.0.1:*", *log_args)
    assert res.returncode == 0, res.stderr
    return res


def test_log_level_after_the_subcommand_gives_timestamped_lines(video30: Path,
                                                                small_model: Path) -> None:
    lines = [ln for ln in _run(video30, small_model, "--log-level", "info").stderr.splitlines()
             if ln.strip()]
    print(f"\n{len(lines)} log lines, e.g. {lines[:2]}")
    assert any(": INFO: " in ln for ln in lines), lines
    assert all(STAMP.match(ln) for ln in lines), [ln for ln in lines if not STAMP.match(ln)]
    quiet = _run(video30, small_model).stderr
    assert ": INFO: " not in quiet.replace("engines.select", "")  # default level warning


def test_log_json_is_one_object_per_line(video30: Path, small_model: Path) -> None:
    lines = [ln for ln in _run(video30, small_model, "-v", "--log-json").stderr.splitlines()
             if ln.strip()]
    records = [json.loads(ln) for ln in lines]  # every line, the inference process's too
    assert records and all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert any(r["level"] == "INFO" for r in records)
    print(f"\n{len(records)} JSON records, e.g. {records[0]}")


def test_an_error_is_one_json_line_with_log_json(tmp_path: Path, small_model: Path) -> None:
    res = hepascope("--log-json", "run", "--source", str(tmp_path / "no.mp4"),
                    "--model", str(small_model))
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    rec = json.loads(lines[0])
    assert rec["level"] == "ERROR" and "no such file" in rec["message"].lower(), rec


@pytest.mark.parametrize("tool", ["hepascope.bench.live", "hepascope.bench.pipeline_sections"])
def test_python_m_tools_turn_project_errors_into_one_line(tmp_path: Path, video30: Path,
                                                          tool: str) -> None:
    """The fault from outside: the model file named on the command line is not there."""
    res = subprocess.run([sys.executable, "-m", tool, "--source", str(video30), "--model",
                          str(tmp_path / "gone.onnx"), "--seconds", "1"],
                         capture_output=True, text=True, timeout=120)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert len(lines) == 1 and lines[0].startswith("hepascope: error: "), lines
    assert "gone.onnx" in lines[0]


def torch_sees_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.skipif(torch_sees_cuda(), reason="a CUDA GPU is here: the refusal cannot show")
@pytest.mark.parametrize("args", [["hepascope.bench.gpu", "--out", "{tmp}"],
                                  ["hepascope.cli", "bench", "--device", "cuda", "--quick",
                                   "--out", "{tmp}"]], ids=["bench.gpu", "bench"])
def test_gpu_benches_without_a_gpu_say_so_in_one_line(tmp_path: Path, args: list[str]) -> None:
    """Before, both ended in torch's AssertionError traceback ("Torch not compiled with
    CUDA enabled") from the first measurement (seen in tools/gpu_check.sh's CPU rehearsal)."""
    res = subprocess.run([sys.executable, "-m", *(a.format(tmp=tmp_path) for a in args)],
                         capture_output=True, text=True, timeout=120)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert len(lines) == 1 and lines[0].startswith("hepascope: error: "), lines
    assert "needs a CUDA GPU: torch " in lines[0] and "sees none" in lines[0]

