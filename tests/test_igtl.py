"""OpenIGTLink both ways, against pyigtl's own server and client over real loopback sockets
(our code on one end only): the ``igtl://`` source (IMAGE messages -> frames stamped with
the header timestamps, the device filter, RGB -> BGR, a server stopped and restarted on
the same port) and the ``--igtl-serve`` output (STRING messages a pyigtl client receives;
no client and a client that never reads cost the pipeline nothing but counted drops)."""

from __future__ import annotations

import itertools
import json
import re
import signal
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from support.runs import free_port

from hepascope.core.errors import (
    ConfigError,
    HepascopeError,
    SourceError,
    SourceFormatError,
    SourceTimeoutError,
)
from hepascope.core.frame import Frame
from hepascope.stream.sources import SourceOptions, open_source

pyigtl = pytest.importorskip("pyigtl", reason="pyigtl is not installed: pip install "
                             "'hepascope[igtl]' (the igtl extra)")

FPS = 30.0
H, W = 48, 64


@pytest.fixture(autouse=True)
def keep_signals() -> Iterator[None]:
    """pyigtl's server replaces SIGINT/SIGTERM handlers and never restores them."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


class ImageServer:
    """pyigtl's server sending, while a client is connected, every 1/FPS s an IMAGE of
    device "Image" (grey, every pixel = the index mod 256) and one of "Color" (RGB = index,
    1, 2), stamped ``epoch + index / FPS``: a scanner's clock that goes on while the server
    is down (``epoch`` kept across restarts)."""

    def __init__(self, port: int, epoch: float) -> None:
        self.server = pyigtl.OpenIGTLinkServer(port=port, local_server=True)
        self.epoch = epoch
        self.sent: dict[float, int] = {}  # header timestamp -> index (device "Image")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            i = round((time.time() - self.epoch) * FPS)
            t = self.epoch + i / FPS
            if self.server.is_connected() and t not in self.sent:
                grey = np.full((1, H, W), i % 256, np.uint8)
                rgb = np.empty((1, H, W, 3), np.uint8)
                rgb[..., 0], rgb[..., 1], rgb[..., 2] = i % 256, 1, 2
                self.sent[t] = i
                self.server.send_message(pyigtl.ImageMessage(grey, timestamp=t,
                                                             device_name="Image"), wait=False)
                self.server.send_message(pyigtl.ImageMessage(rgb, timestamp=t,
                                                             device_name="Color"), wait=False)
            self._stop.wait(0.25 / FPS)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.server.stop()


def take(src: Any, n: int, timeout_s: float = 20.0) -> list[Frame]:
    out: list[Frame] = []
    deadline = time.monotonic() + timeout_s
    for frame in src:
        out.append(frame)
        if len(out) >= n or time.monotonic() > deadline:
            break
    return out


def test_igtl_source_frames_carry_the_header_timestamps_and_the_device_filter() -> None:
    port = free_port()
    server = ImageServer(port, time.time())
    try:
        opts = SourceOptions(reconnect=False, read_timeout_s=5.0)
        with open_source(f"igtl://127.0.0.1:{port}?device=Image", opts) as src:
            grey = take(src, 20)
        with open_source(f"igtl://127.0.0.1:{port}?device=Color", opts) as src:
            colour = take(src, 10)
    finally:
        server.stop()
    assert len(grey) == 20 and len(colour) == 10
    for f in grey:
        assert f.pts_s in server.sent, f"pts {f.pts_s} is no header timestamp sent"
        assert f.image.shape == (H, W) and f.image.dtype == np.uint8
        assert (f.image == server.sent[f.pts_s] % 256).all()  # the frame of that timestamp
        assert f.source_id == f"igtl:127.0.0.1:{port}/Image"
    assert [f.seq for f in grey] == list(range(20))
    for f in colour:  # RGB on the wire, BGR (OpenCV order) in the frame
        assert f.pts_s in server.sent and f.image.shape == (H, W, 3)
        assert (f.image[..., 2] == server.sent[f.pts_s] % 256).all()
        assert (f.image[..., 1] == 1).all() and (f.image[..., 0] == 2).all()


def test_igtl_source_reconnects_when_the_server_goes_and_returns() -> None:
    port, epoch = free_port(), time.time()
    server = ImageServer(port, epoch)
    src = open_source(f"igtl://127.0.0.1:{port}?device=Image",
                      SourceOptions(read_timeout_s=1.0, backoff_initial_s=0.1,
                                    backoff_max_s=1.0))
    seen: list[tuple[int, Frame]] = []  # (arrival ns, frame)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for frame in src:
                seen.append((time.monotonic_ns(), frame))
        except BaseException as e:  # the test asserts on it
            errors.append(e)

    src.open()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        time.sleep(1.5)
        before = len(seen)
        server.stop()  # the server goes away: its connections closed, its port free
        time.sleep(1.0)
        server = ImageServer(port, epoch)  # and returns on the same port, clock gone on
        t_back = time.monotonic_ns()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(seen) < before + 30:
            time.sleep(0.05)
        health = src.stats()  # what telemetry publishes as source_health
    finally:
        src.close()
        server.stop()
        reader.join(5.0)
    assert not errors, errors
    assert before >= 20, f"only {before} frames before the outage"
    assert len(seen) >= before + 30, f"no frames after the restart: {health}"
    after = [(t, f) for t, f in seen if t > t_back]
    reconnect_s = (after[0][0] - t_back) / 1e9
    truth = [int(f.image[0, 0]) for _, f in seen]  # the server's frame index mod 256
    gaps = [b - a - 1 for a, b in itertools.pairwise(truth) if b - a > 1]
    lost_true = sum(gaps)
    drift = max(abs(f.pts_s - (epoch + int(f.image[0, 0]) / FPS)) for _, f in after
                if f.pts_s is not None)
    print(f"\n  igtl reconnect: server back -> first frame {reconnect_s * 1000:.0f} ms; "
          f"frames_lost {health['frames_lost']} (true {lost_true}); outage "
          f"{health['outage_s']:.2f} s; pts vs header after the reconnect {drift * 1000:.1f} ms")
    assert health["outages"] == 1 and health["reconnects"] == 1, health
    assert health["connected"] and health["last_error"] is None, health
    assert [f.seq for _, f in seen] == list(range(len(seen)))  # numbering goes on
    assert reconnect_s < 5.0
    assert abs(health["frames_lost"] - lost_true) <= max(3, lost_true // 5), health
    assert drift < 0.25  # pts stay the header timestamps, shifted by delivery jitter only


def test_igtl_source_errors_are_one_typed_line() -> None:
    port = free_port()  # nothing listens there: a source error (retried once it has worked)
    src = open_source(f"igtl://127.0.0.1:{port}", SourceOptions(open_timeout_s=1.0))
    with pytest.raises(SourceError, match=f"igtl://127.0.0.1:{port}: cannot connect"):
        src.open()
    for bad, why in (("igtl://", "no host"), ("igtl://h:0", "port"),
                     ("igtl://h:1?dev=x", "unknown query key 'dev'"),
                     ("igtl://h:1?device=" + "x" * 21, "at most 20")):
        with pytest.raises(ConfigError, match=why):
            open_source(bad)


def test_igtl_source_stall_and_garbage_are_typed_errors() -> None:
    port = free_port()
    server = ImageServer(port, time.time())  # sends "Image" and "Color", never "Missing"
    try:
        src = open_source(f"igtl://127.0.0.1:{port}?device=Missing",
                          SourceOptions(reconnect=False, read_timeout_s=0.5))
        t0 = time.monotonic()
        with pytest.raises(SourceTimeoutError, match=r"no image for 0\.5 s"), src:
            next(iter(src))
        waited = time.monotonic() - t0
    finally:
        server.stop()
    print(f"\n  only other devices' images: timed out after {waited:.2f} s, "
          f"{src.skipped} skipped")
    assert src.skipped > 0 and 0.4 < waited < 5

    with socket.create_server(("127.0.0.1", 0)) as http:  # a server that is no IGTL one
        def answer() -> None:
            conn, _ = http.accept()
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 4)
                time.sleep(2)

        threading.Thread(target=answer, daemon=True).start()
        url = f"igtl://127.0.0.1:{http.getsockname()[1]}"
        with pytest.raises(SourceFormatError, match="not an OpenIGTLink stream"), \
                open_source(url) as src:  # reconnecting, but never worked: raised at once
            next(iter(src))


# -- the output ------------------------------------------------------------------------

LABELS = ["normal", "cyst", "hémangiome"]


def result(status: str, seq: int, top: int = 2) -> dict[str, Any]:
    """A result map as the pipeline publishes it (schema v2)."""
    now = time.monotonic_ns()
    probs = [0.1, 0.2, 0.7] if top == 2 else [0.7, 0.2, 0.1]
    fault = status == "model_fault"
    return {"v": 2, "stream": "igtl:x", "seq": seq, "model": "small", "labels": LABELS,
            "probs": [] if fault else probs, "status": status, "run_id": "r" * 32,
            "t_capture_ns": now - 30_000_000, "t_publish_ns": now,
            "t_capture_utc_ns": time.time_ns() - 30_000_000,
            "latency_ms": {"total": 30.0}, "top": None if fault else LABELS[top],
            "fault": "non-finite output" if fault else None}


def fields(text: str) -> dict[str, str]:
    """``key=value`` pairs of a result's text (a value with spaces is JSON-quoted)."""
    pairs = re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', text)
    return {k: json.loads(v) if v.startswith('"') else v for k, v in pairs}


def connected(out: Any, n: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while out.stats()["igtl_clients"] != n:
        assert time.monotonic() < deadline, out.stats()
        time.sleep(0.01)


def test_igtl_serve_sends_each_result_as_a_string_a_pyigtl_client_receives() -> None:
    from hepascope.stream.igtl_out import IgtlServer

    out = IgtlServer("127.0.0.1:0")
    client = pyigtl.OpenIGTLinkClient("127.0.0.1", out.port)
    try:
        connected(out, 1)
        for seq, status in enumerate(("ok", "uncertain", "warming_up", "model_fault")):
            msg = result(status, seq)
            out.on_result(msg)
            got = client.wait_for_message("hepascope", timeout=10)
            assert got is not None and got.message_type == "STRING", status
            f = fields(got.string)
            print(f"\n  {status}: {got.string}", end="")
            assert f["status"] == status and f["seq"] == str(seq) and f["model"] == "small"
            if status == "model_fault":
                assert f["label"] == "-" and f["confidence"] == "-"
                assert f["fault"] == "non-finite output"
            else:
                assert f["label"] == "hémangiome" and f["confidence"] == "0.700"
            assert got.timestamp == pytest.approx(msg["t_capture_utc_ns"] / 1e9, abs=1e-6)
    finally:
        client.stop()
        out.close()
    assert out.stats()["igtl_sent"] == 4 and out.stats()["igtl_dropped"] == 0


def test_igtl_serve_never_blocks_on_no_client_or_one_that_does_not_read() -> None:
    from hepascope.stream.igtl_out import IgtlServer

    out = IgtlServer("127.0.0.1:0")
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        for i in range(5):
            out.on_result(result("ok", i))
        assert out.stats()["igtl_no_client"] == 5
        stuck.connect(("127.0.0.1", out.port))  # connects, never reads
        client = pyigtl.OpenIGTLinkClient("127.0.0.1", out.port)
        connected(out, 2)
        times = []
        n = 20_000
        for i in range(n):
            t0 = time.perf_counter()
            out.on_result(result("ok", i))
            times.append(time.perf_counter() - t0)
        deadline = time.monotonic() + 10
        last = None
        while time.monotonic() < deadline and (last is None or fields(last)["seq"] != str(n - 1)):
            got = client.wait_for_message("hepascope", timeout=1)
            last = got.string if got is not None else last
        stats = out.stats()
        client.stop()
    finally:
        stuck.close()
        out.close()
    q = statistics.quantiles(times, n=100)
    print(f"\n  on_result with a client that never reads: p50 {q[49] * 1e6:.0f} us, p99 "
          f"{q[98] * 1e6:.0f} us, max {max(times) * 1e3:.1f} ms; {stats}")
    assert max(times) < 0.5  # never waits for a client
    assert stats["igtl_dropped"] > 0  # the stuck client's backlog, counted
    assert last is not None and fields(last)["seq"] == str(n - 1)  # the good client: newest


def test_igtl_serve_refuses_the_network_without_insecure() -> None:
    from hepascope.stream.igtl_out import IgtlServer

    with pytest.raises(HepascopeError, match="insecure"):
        IgtlServer("0.0.0.0:0")
    for bad in ("x", "70000", "h:-1", ""):
        with pytest.raises(HepascopeError, match="igtl"):
            IgtlServer(bad)
    IgtlServer("0.0.0.0:0", insecure=True).close()
