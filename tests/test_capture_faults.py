"""What the operating room does to the capture path, injected from outside `hepascope run`:
a scanner that changes resolution mid-stream (real video files whose frame size changes,
built here with PyAV), and a /dev/shm too small for the frame ring (a real 2 MiB tmpfs
mounted over /dev/shm in a private mount namespace)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support.media import write_video

from hepascope.core.config import PipelineConfig, load_config
from hepascope.core.messages import TOPIC_RESULT, TOPIC_TELEMETRY
from hepascope.stream.inference_proc import ModelSpec
from hepascope.stream.pipeline import compose
from hepascope.stream.sources.file import FileSource
from hepascope.stream.supervisor import InferenceProcess

CLI = [sys.executable, "-m", "hepascope.cli"]
SEGMENT = 45  # frames per size


def _concat(path: Path, *sizes: tuple[int, int]) -> Path:
    """An MPEG-TS file whose frame size changes at each segment (how a scanner's stream
    looks when the operator switches depth or preset): segments concatenated byte-wise."""
    parts = [write_video(path.with_suffix(f".{i}.ts"), frames=SEGMENT, size=s)
             for i, s in enumerate(sizes)]
    path.write_bytes(b"".join(p.read_bytes() for p in parts))
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("geometry")
    return {
        # grows past the first ring's slot capacity (the base's ValueError)
        "grow": _concat(d / "grow.ts", (240, 320), (480, 640)),
        # the default layout's views ([0, 0, 384, 384] and [384, 0, 384, 384]) no longer fit
        "unfit": _concat(d / "unfit.ts", (384, 768), (1024, 320)),
    }


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip()]


def test_a_resolution_change_mid_stream_is_followed_and_counted(
        tmp_path: Path, media: dict[str, Path], small_model: Path) -> None:
    # seen failing on 0ecf5bd: ValueError: frame 45 of shape (480, 640, 3) (921600 bytes)
    # does not fit ring 'hepascope-...': slot capacity is 230400 bytes (a traceback)
    summary = tmp_path / "summary.json"
    res = _run("run", "--source", str(media["grow"]), "--model", str(small_model),
               "--config", "single_view", "--max-rate", "--publish", "tcp://127.0.0.1:0",
               "--summary", str(summary))
    print(res.stdout, res.stderr)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    got = json.loads(summary.read_text())
    assert got["frames_in"] == 2 * SEGMENT
    assert got["source_health"]["geometry_changes"] == 1


def test_results_continue_after_the_change_with_inference_in_a_child(
        media: dict[str, Path], small_model: Path) -> None:
    """The real pipeline, its main model in a supervised child process: the child follows
    the ring's new generation by itself (nobody tells the supervisor)."""
    config = load_config("single_view")
    child = InferenceProcess(ModelSpec(small_model, config, "onnxruntime", 1))
    sink: list[tuple[bytes, dict[str, Any]]] = []

    class Sink:
        def send(self, topic: bytes, msg: dict[str, Any]) -> None:
            sink.append((topic, msg))

    try:
        pipe = compose(FileSource(media["grow"], speed=2.0), child, Sink(),
                       PipelineConfig(telemetry_period_s=0.2))
        t0 = time.monotonic()
        summary = pipe.run(duration_s=60)
        took = time.monotonic() - t0
    finally:
        child.close()
    seqs = [m["seq"] for t, m in sink if t == TOPIC_RESULT]
    after = [s for s in seqs if s >= SEGMENT]
    print(f"\n{len(seqs)} results in {took:.1f} s, {len(after)} after the change at frame "
          f"{SEGMENT}; restarts {summary['inference_restarts']}")
    assert summary["frames_in"] == 2 * SEGMENT
    # results go on at the new size, to the last frame (the second segment's timestamps
    # restart at 0, so the file source plays it unpaced: the model sees fewer of its frames)
    assert len(after) >= 5 and seqs[-1] == 2 * SEGMENT - 1, seqs
    assert seqs == sorted(set(seqs))
    assert summary["inference_restarts"] == 0  # followed, not crashed and restarted
    tel = [m for t, m in sink if t == TOPIC_TELEMETRY]
    assert tel[-1]["source_health"]["geometry_changes"] == 1


def test_a_change_the_layout_cannot_take_is_one_line(media: dict[str, Path],
                                                     small_model: Path) -> None:
    # seen failing on 0ecf5bd: ValueError: frame 45 of shape (1024, 320, 3) (983040 bytes)
    # does not fit ring 'hepascope-...': slot capacity is 884736 bytes (a traceback)
    res = _run("run", "--source", str(media["unfit"]), "--model", str(small_model),
               "--max-rate", "--publish", "tcp://127.0.0.1:0")
    print(res.stderr)
    assert res.returncode == 2, res.stderr
    lines = _error_lines(res.stderr)
    assert len(lines) == 1 and lines[0].startswith("hepascope: error:"), res.stderr
    assert "does not fit in a 320x1024 frame" in lines[0]


def _unshare_ok() -> str | None:
    """Why a private mount namespace with its own /dev/shm cannot be had here, or None."""
    if shutil.which("unshare") is None:
        return "no unshare(1)"
    probe = subprocess.run(["unshare", "-m", "sh", "-c",
                            "mount -t tmpfs -o size=1m tmpfs /dev/shm"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot mount a tmpfs in a private namespace: {probe.stderr.strip()}"
    return None


@pytest.mark.skipif(sys.platform != "linux", reason="Linux mount namespaces")
def test_a_full_dev_shm_fails_at_start_with_one_line(video30: Path, small_model: Path) -> None:
    # seen failing on 0ecf5bd: the run dies of SIGBUS (rc -7) at the first write into a
    # page the 2 MiB tmpfs cannot back
    why = _unshare_ok()
    if why is not None:
        pytest.skip(why)
    # 8 slots of a 768x384 BGR frame need ~7 MiB; the tmpfs holds 2 MiB
    script = 'mount -t tmpfs -o size=2m tmpfs /dev/shm && exec "$@"'
    res = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", *CLI, "run",
                          "--source", str(video30), "--model", str(small_model),
                          "--publish", "tcp://127.0.0.1:0", "--max-rate"],
                         capture_output=True, text=True, timeout=120)
    print(f"rc={res.returncode} {res.stderr}")
    assert res.returncode == 2, f"rc={res.returncode} {res.stderr}"
    lines = _error_lines(res.stderr)
    assert len(lines) == 1 and lines[0].startswith("hepascope: error:"), res.stderr
    assert re.search(r"needs 7\.1 MB .* [12]\.\d MB free", lines[0]), lines[0]
