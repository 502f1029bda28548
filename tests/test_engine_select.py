"""``--engine auto``: TensorRT where it and pycuda import, a GPU is present and the export
has its plans; else torch on CUDA where torch sees CUDA and the export has its programs;
else ONNX Runtime. Each branch is driven through injected probes (on a real export, whose
files decide the rest); the real choice here is logged with its reason, is the same for
the three graphs of a bimodal export, and is what ``hepascope run`` reports."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")  # the exports are made with torch

from test_torch_engine import one_torch_thread, small_export  # noqa: E402, F401

from hepascope.cli import main  # noqa: E402
from hepascope.core.config import load_config  # noqa: E402
from hepascope.core.errors import ModelError  # noqa: E402
from hepascope.engines import Probes, choose_backend, open_engine  # noqa: E402
from hepascope.stream.model_loader import open_model  # noqa: E402

BIMODAL = "bimodal_resnet18_lite"
GRAPHS = ("bmode_encoder.onnx", "ceus_encoder.onnx", "head.onnx")
LOGGER = "hepascope.engines.select"
NO_TRT = "tensorrt not importable (No module named 'tensorrt')"
NO_GPU = "no CUDA driver (libcuda.so.1: cannot open shared object file)"
NO_TORCH_CUDA = "torch CUDA not available (torch 2.13.0+cpu)"


@pytest.fixture
def export(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of a real bimodal export (graphs + programs), free to add plans to or strip."""
    out = tmp_path / "export"
    shutil.copytree(small_export(BIMODAL, tmp_path_factory), out)
    return out


def _probes(calls: list[str], gpu: str | None, trt: str | None,
            torch_cuda: str | None) -> Probes:
    def probe(name: str, result: str | None) -> Callable[[], str | None]:
        def run() -> str | None:
            calls.append(name)
            return result
        return run

    return Probes(gpu=probe("gpu", gpu), tensorrt=probe("tensorrt", trt),
                  torch_cuda=probe("torch_cuda", torch_cuda))


# gpu, tensorrt, torch_cuda probe results; plans (graphs given one); programs kept ->
# backend, a part of the reason, whether torch had to be asked
CASES = [
    (None, None, None, GRAPHS, True, "tensorrt", "CUDA GPU and plans present", False),
    (None, None, None, GRAPHS[1:], True, "torch", "no plan bmode_encoder.plan", True),
    (None, NO_TRT, None, GRAPHS, True, "torch", "torch sees CUDA", True),
    (None, NO_TRT, NO_TORCH_CUDA, (), True, "onnxruntime", NO_TORCH_CUDA, True),
    (None, NO_TRT, None, (), False, "onnxruntime", "re-export with hepascope export", False),
    (NO_GPU, None, None, GRAPHS, True, "onnxruntime", f"torch CUDA: {NO_GPU}", False),
]


@pytest.mark.parametrize(("gpu", "trt", "torch_cuda", "plans", "programs", "backend", "why",
                          "asked_torch"), CASES)
def test_each_branch_of_auto(export: Path, caplog: pytest.LogCaptureFixture, gpu: str | None,
                             trt: str | None, torch_cuda: str | None, plans: tuple[str, ...],
                             programs: bool, backend: str, why: str, asked_torch: bool) -> None:
    for graph in plans:
        (export / graph).with_suffix(".plan").write_bytes(b"plan")  # presence is all auto reads
    if not programs:
        for f in export.glob("*.pt2"):
            f.unlink()
    caplog.set_level(logging.INFO, logger=LOGGER)
    for target in (export, *(export / g for g in GRAPHS)):  # one answer for the whole export
        calls: list[str] = []
        got, reason = choose_backend(target, _probes(calls, gpu, trt, torch_cuda))
        assert got == backend and why in reason, (target.name, reason)
        assert ("torch_cuda" in calls) == asked_torch  # torch imported only when it can win
        assert caplog.records[-1].getMessage() == f"engine auto -> {backend}: {reason}"


def _expected_here() -> str:
    """What auto must pick on this machine for a test export (programs, no TensorRT plans):
    decided from torch itself, not from the probes under test."""
    return "torch" if torch.cuda.is_available() else "onnxruntime"


def test_auto_here_picks_and_logs_the_same_engine_for_every_graph(
        export: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    backend, reason = choose_backend(export)
    assert backend == _expected_here()
    assert "tensorrt" in reason
    if backend == "onnxruntime":
        assert "torch" in reason  # and why torch was not it
    assert f"engine auto -> {backend}: {reason}" in caplog.messages
    clf = open_model(export, load_config(), backend="auto", verdicts=False)
    try:
        assert [e.name for e in clf.engines.values()] == [backend] * 3  # type: ignore[attr-defined]
    finally:
        clf.close()
    # an export made before exports wrote their torch.export programs: never torch, says so
    for f in export.glob("*.pt2"):
        f.unlink()
    backend, reason = choose_backend(export / "head.onnx")
    assert backend == "onnxruntime"
    if torch.cuda.is_available():
        assert "re-export with hepascope export" in reason
    with pytest.raises(ModelError, match="unknown engine backend"):
        open_engine(export / "head.onnx", "openvino")


def test_run_engine_auto_logs_and_reports_the_engine_used(
        export: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    summary_path = tmp_path / "summary.json"
    rc = main(["run", "--source", "phantom:2", "--model", str(export), "--engine", "auto",
               "--duration", "3", "--publish", "tcp://127.0.0.1:*",
               "--summary", str(summary_path)])
    assert rc == 0
    summary = json.loads(summary_path.read_text())
    expected = _expected_here()
    assert summary["engine"] == expected and summary["frames_out"] > 0
    choices = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(choices) == 1 and choices[0].startswith(f"engine auto -> {expected}: ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, auto rightly asks torch")
def test_auto_without_a_gpu_does_not_import_torch(export: Path) -> None:
    code = ("import sys; from hepascope.engines import choose_backend; "
            f"print(choose_backend({str(export)!r})[0], 'torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["onnxruntime", "False"]
