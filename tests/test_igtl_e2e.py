"""End to end over OpenIGTLink, as in an operating room with PLUS and 3D Slicer: pyigtl's
own server streams a recorded ultrasound-like clip (phantom frames encoded to H.264 with
PyAV, decoded again by the server) -> ``hepascope run --source igtl://... --igtl-serve
PORT`` -> pyigtl's own client receives the results as STRING messages. The image server is
SIGKILLed once and restarted on the same port; the run must reconnect by itself. Prints
the reconnect time and the results/s (``pytest -s``)."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import IO

import av
import pytest
from support.runs import free_port

from hepascope.core.messages import STATUSES
from hepascope.stream.sources.phantom import PhantomSource

pyigtl = pytest.importorskip("pyigtl", reason="pyigtl is not installed: pip install "
                             "'hepascope[igtl]' (the igtl extra)")

SERVER = Path(__file__).parent / "support" / "igtl_image_server.py"
CLI = [sys.executable, "-m", "hepascope.cli"]
CLIP_FRAMES, FPS = 60, 30
OUTAGE_S = 1.0
STEADY = 30  # results received before the kill, and again after the restart
START_S = 90.0  # two processes start on a loaded 2-core machine


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s of the phantom's dual-view ultrasound (768x384), H.264 in MP4."""
    path = tmp_path_factory.mktemp("igtl") / "phantom.mp4"
    src = PhantomSource(7, fps=FPS, max_rate=True)
    with av.open(str(path), mode="w") as c, src:
        s = c.add_stream("libx264", rate=FPS, options={"preset": "ultrafast"})
        s.width, s.height, s.pix_fmt = 768, 384, "yuv420p"
        for i, frame in zip(range(CLIP_FRAMES), src, strict=False):
            vf = av.VideoFrame.from_ndarray(frame.bgr(), format="bgr24")
            vf.pts, vf.time_base = i, Fraction(1, FPS)
            c.mux(s.encode(vf))
        c.mux(s.encode())
    return path


def lines(stream: IO[str]) -> queue.Queue[str]:
    """The lines a process writes, as they come."""
    q: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            q.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return q


def start_server(clip: Path, port: int) -> tuple[subprocess.Popen[str], float]:
    """The image server, and the unix time it began listening."""
    proc = subprocess.Popen([sys.executable, str(SERVER), str(clip), str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = lines(proc.stdout).get(timeout=START_S)
    assert line.startswith("listening"), line
    return proc, float(line.split()[1])


class Results(threading.Thread):
    """pyigtl's client on the results port, keeping each new STRING (receipt time, header
    timestamp, text). pyigtl keeps only the newest message of a device, so this counts a
    lower bound of what was sent (polled every few ms)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.client = pyigtl.OpenIGTLinkClient("127.0.0.1", port)
        self.got: list[tuple[float, float, str]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            m = self.client.wait_for_message("hepascope", timeout=0.05)
            if m is not None and (not self.got or self.got[-1][1:] != (m.timestamp, m.string)):
                self.got.append((time.time(), m.timestamp, m.string))

    def wait(self, n: int, what: str, run: subprocess.Popen[str],
             timeout_s: float = START_S) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.got) < n:
            assert run.poll() is None, f"{what}: the run ended: {run.communicate()[1]}"
            assert time.monotonic() < deadline, f"{what}: {len(self.got)} results"
            time.sleep(0.05)

    def stop(self) -> None:
        self.done.set()
        self.join(5)
        self.client.stop()


def rate(got: list[tuple[float, float, str]]) -> float:
    return (len(got) - 1) / max(got[-1][0] - got[0][0], 1e-9) if len(got) > 1 else 0.0


def test_igtl_end_to_end_with_the_image_server_killed_and_restarted(
        clip: Path, small_model: Path, tmp_path: Path) -> None:
    p_img, p_out, p_pub = free_port(), free_port(), free_port()
    server, _ = start_server(clip, p_img)
    summary = tmp_path / "summary.json"
    run = subprocess.Popen([*CLI, "-v", "run", "--source", f"igtl://127.0.0.1:{p_img}"
                            "?device=Image", "--model", str(small_model), "--igtl-serve",
                            str(p_out), "--publish", f"tcp://127.0.0.1:{p_pub}", "--duration",
                            "240", "--summary", str(summary)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = Results(p_out)
    results.start()
    try:
        results.wait(STEADY, "before the kill", run)
        n_before = len(results.got)
        server.send_signal(signal.SIGKILL)  # the scanner's server dies, no goodbye
        server.wait(10)
        time.sleep(OUTAGE_S)
        server, t_back = start_server(clip, p_img)
        results.wait(n_before + STEADY, "after the restart", run)
        run.send_signal(signal.SIGTERM)  # a run stops cleanly on SIGTERM
        _, err = run.communicate(timeout=60)
    finally:
        results.stop()
        server.kill()
        server.wait(10)
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, err
    assert "Traceback" not in err, err
    got = results.got
    after = [g for g in got if g[1] > t_back]  # frames captured after the server was back
    first = after[0]
    back = re.findall(r"stream back after ([\d.]+) s", err)
    lost = re.findall(r"~(\d+) frames lost", err)
    s = json.loads(summary.read_text())
    before = [g for g in got if g[1] <= t_back - OUTAGE_S]
    print(f"\n  igtl e2e: server back -> first frame captured {(first[1] - t_back) * 1e3:.0f} ms,"
          f" -> its result at the client {(first[0] - t_back) * 1e3:.0f} ms; outage seen by "
          f"the source {back} s, frames lost {lost}; results/s at the client {rate(before):.1f}"
          f" before, {rate(after):.1f} after (lower bound: pyigtl keeps the newest only); run:"
          f" results_per_s={s['results_per_s']} igtl_sent={s['igtl_sent']} "
          f"igtl_dropped={s['igtl_dropped']} latency_p50_ms={s['latency_p50_ms']}")
    for _, ts, text in got:
        f = dict(re.findall(r"(\w+)=(\S+)", text))
        assert f["status"] in STATUSES and f["model"] == "small", text
        assert ts > 1e9  # a unix time: the frame's capture time
    assert back and len(after) >= STEADY // 2
    assert first[0] - t_back < 30.0
    assert s["igtl_sent"] >= len(got) and s["frames_in"] > 0
    stamps = [g[1] for g in got]
    assert stamps == sorted(stamps)  # capture times only go forward


def test_igtl_serve_flag_errors_are_one_line(small_model: Path) -> None:
    res = subprocess.run([*CLI, "run", "--source", "phantom:1", "--model", str(small_model),
                          "--igtl-serve", "99999", "--duration", "1"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines() == [
        "hepascope: error: --igtl-serve: port 99999 is not in 0-65535"], res.stderr

