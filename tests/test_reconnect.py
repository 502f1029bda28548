"""Reconnect with backoff against a real RTSP server (hepascope.stream.rtsp_serve in a child
process) killed with SIGKILL and restarted on the same port; and end to end, the pipeline
and the overlay going STALE during the outage and LIVE again without a restart."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.rtsp_server import RtspServer

from hepascope.bench.soak import make_clip
from hepascope.cli import build_parser
from hepascope.core.config import load_config
from hepascope.core.errors import ConfigError, SourceError
from hepascope.core.frame import Frame
from hepascope.stream.cli import _request
from hepascope.stream.model_loader import open_model
from hepascope.stream.overlay import OverlayState
from hepascope.stream.pipeline import compose
from hepascope.stream.publish import Publisher, Subscriber
from hepascope.stream.sources import SourceOptions, open_source
from hepascope.stream.sources.reconnect import Reconnecting, is_permanent
from hepascope.stream.sources.rtsp import RtspSource

FPS = 30
OUTAGE_S = 1.0  # how long the server stays dead in each cycle


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s of the phantom's 768x384 dual view (fits the default layout), 30 fps, GOP 15."""
    return make_clip(tmp_path_factory.mktemp("reconnect") / "clip.mp4", seconds=2.0, fps=FPS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Liveness guard, not a measurement: fail if ``cond`` is not met in ``timeout``."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class Reader(threading.Thread):
    """Iterates a source in a thread, keeping (seq, t_capture_ns, pts_s) of every frame."""

    def __init__(self, src: Reconnecting) -> None:
        super().__init__(daemon=True)
        self.src = src
        self.frames: list[tuple[int, int, float | None]] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            for f in self.src:
                self.frames.append((f.seq, f.t_capture_ns, f.pts_s))
                if self.stop.is_set():
                    return
        except BaseException as e:  # checked by the test
            self.error = e

    def since(self, t_ns: int) -> list[tuple[int, int, float | None]]:
        return [f for f in list(self.frames) if f[1] > t_ns]


def rtsp(url: str, read_timeout_s: float = 1.0) -> Callable[[], RtspSource]:
    return lambda: RtspSource(url, open_timeout_s=2.0, read_timeout_s=read_timeout_s)


@pytest.mark.timeout(90)
def test_frames_keep_flowing_across_server_kills(clip: Path) -> None:
    cycles = 2
    with RtspServer(clip, loop=True, max_lifetime=80) as srv:
        port = srv.port
        src = Reconnecting(rtsp(srv.url), backoff_initial_s=0.05, backoff_max_s=0.5)
        reader = Reader(src)
        reader.start()
        wait_for(lambda: len(reader.frames) >= 30, 20, "first frames")
        print()
        for cycle in range(cycles):
            lost0 = src.frames_lost
            srv.kill()  # SIGKILL: connections drop at once, as when a camera loses power
            time.sleep(OUTAGE_S)
            srv.start()
            assert srv.port == port
            t_back = time.monotonic_ns()  # the server answers again (READY seen)
            wait_for(lambda t=t_back: len(reader.since(t)) >= 30 or reader.error is not None,
                     20, f"frames after restart {cycle}")
            assert reader.error is None, reader.error
            first_new = reader.since(t_back)[0]
            health = src.stats()  # what telemetry publishes as source_health
            assert health["last_error"] is None and health["previous_error"], health
            print(f"cycle {cycle}: reconnect time (server back -> first new frame) "
                  f"{(first_new[1] - t_back) / 1e6:.0f} ms, outage {src.last_outage_s:.2f} s, "
                  f"frames lost (estimated) {src.frames_lost - lost0}")
        reader.stop.set()
        reader.join(10)
        src.close()
    frames = reader.frames
    print(f"stats: {src.stats()}")
    assert reader.error is None and not reader.is_alive()
    assert [f[0] for f in frames] == list(range(len(frames)))  # seq never restarts
    assert all(b[1] >= a[1] for a, b in itertools.pairwise(frames))
    pts = [f[2] for f in frames if f[2] is not None]
    assert all(b > a for a, b in itertools.pairwise(pts))  # media time goes on too
    assert src.outages == cycles and src.reconnects == cycles
    # the estimate is the gap times the rate measured before it (30 fps here)
    expected = FPS * src.outage_s
    assert abs(src.frames_lost - expected) <= 0.25 * expected + 2 * cycles
    assert src.outage_s >= cycles * OUTAGE_S


@pytest.mark.timeout(90)
def test_pipeline_and_overlay_go_stale_and_recover(clip: Path, small_model: Path) -> None:
    cfg = load_config()
    stale_ms = cfg.overlay.stale_ms
    classifier = open_model(small_model, cfg)
    publisher = Publisher("tcp://127.0.0.1:*")  # random loopback port; LINGER 0
    views: list[tuple[int, str, int | None]] = []  # (time, status, seq shown)
    stop = threading.Event()

    def overlay() -> None:  # the display loop's logic: drain, update, judge freshness
        sub = Subscriber(publisher.bound)
        state = OverlayState(stale_ms)
        try:
            while not stop.is_set():
                sub.poll(5)
                now = time.monotonic_ns()
                for topic, msg in sub.drain():
                    state.update(topic, msg, now)
                result = state.result
                seq = None if result is None else int(result["seq"])
                views.append((now, state.view(now).status, seq))
        finally:
            sub.close()

    def first(status: str, after: int) -> tuple[int, str, int | None]:
        return next(v for v in list(views) if v[0] > after and v[1] == status)

    watcher = threading.Thread(target=overlay, daemon=True)
    watcher.start()
    with RtspServer(clip, loop=True, max_lifetime=80) as srv:
        src = Reconnecting(rtsp(srv.url), backoff_initial_s=0.05, backoff_max_s=0.5)
        pipe = compose(src, classifier, publisher, cfg.pipeline)
        box: dict[str, object] = {}
        runner = threading.Thread(target=lambda: box.update(summary=pipe.run(None)),
                                  daemon=True)
        runner.start()
        try:
            wait_for(lambda: any(v[1] == "LIVE" for v in views), 30, "LIVE")
            print()
            for cycle in range(2):
                time.sleep(1.0)  # a second of steady results before the kill
                seq_before = views[-1][2]
                t_kill = time.monotonic_ns()
                srv.kill()
                wait_for(lambda t=t_kill: any(v[0] > t and v[1] == "STALE" for v in views), 10,
                         "STALE")
                stale = first("STALE", t_kill)
                time.sleep(OUTAGE_S)
                assert views[-1][1] == "STALE"  # still STALE: no old result shown as new
                srv.start()
                t_back = time.monotonic_ns()
                wait_for(lambda t=t_back: any(v[0] > t and v[1] == "LIVE" for v in views), 20,
                         "LIVE again")
                live = first("LIVE", t_back)
                print(f"cycle {cycle}: STALE {(stale[0] - t_kill) / 1e6:.0f} ms after the kill "
                      f"(stale_ms {stale_ms:g}); LIVE again {(live[0] - t_back) / 1e6:.0f} ms "
                      f"after the server came back; seq {seq_before} -> {live[2]}")
                assert live[2] is not None and seq_before is not None and live[2] > seq_before
                assert runner.is_alive()  # nothing restarted: the same pipeline goes on
        finally:
            pipe.stop()
            src.close()
            runner.join(15)
            stop.set()
            watcher.join(5)
            publisher.close()
            classifier.close()
    assert "summary" in box, "the pipeline raised"
    print(f"source: {src.stats()}")
    assert src.reconnects == 2 and src.outages == 2


@pytest.mark.timeout(30)
def test_errors_retrying_cannot_fix_are_raised_at_once(clip: Path) -> None:
    with RtspServer(clip, max_lifetime=30) as srv:
        url = srv.url.rsplit("/", 1)[0] + "/nothing-here"  # RTSP 404
        src = Reconnecting(rtsp(url), retry_first_open=True, backoff_initial_s=0.05)
        with pytest.raises(SourceError, match="404") as info:
            src.open()
    assert is_permanent(info.value) and src.failed_attempts == 0
    with pytest.raises(ConfigError):  # a bad URL: the factory raises in the constructor
        Reconnecting(rtsp("http://127.0.0.1/x"))
    assert not is_permanent(SourceError("connection refused"))


@pytest.mark.timeout(30)
def test_first_open_fails_fast_unless_asked_to_retry(clip: Path) -> None:
    port = free_port()
    url = f"rtsp://127.0.0.1:{port}/live"
    with pytest.raises(SourceError, match="refused"):
        Reconnecting(rtsp(url)).open()  # a wrong URL fails at startup
    srv = RtspServer(clip, port=port, loop=True, max_lifetime=30)
    starter = threading.Timer(0.5, srv.start)  # the scanner boots after the pipeline
    starter.start()
    src = Reconnecting(rtsp(url), retry_first_open=True, backoff_initial_s=0.05,
                       backoff_max_s=0.3)
    try:
        with src:
            got: list[Frame] = [f for _, f in zip(range(5), src, strict=False)]
    finally:
        starter.join()
        srv.stop()
    print(f"\nretried first open: {src.stats()}")
    assert [f.seq for f in got] == list(range(5)) and src.failed_attempts >= 1


@pytest.mark.timeout(30)
def test_gives_up_after_max_attempts(clip: Path) -> None:
    with RtspServer(clip, loop=True, max_lifetime=30) as srv:
        src = Reconnecting(rtsp(srv.url), backoff_initial_s=0.05, backoff_max_s=0.1,
                           max_attempts=3)
        with pytest.raises(SourceError, match="refused"), src:
            for f in src:
                if f.seq == 5:
                    srv.kill()  # and never restarted
    assert src.outages == 1 and src.failed_attempts == 3 and src.reconnects == 0


@pytest.mark.timeout(30)
def test_a_restarted_server_is_reopened_without_waiting_out_the_backoff(clip: Path) -> None:
    """A 3 s backoff step, the server back after 0.5 s: the source probes the port while
    the server is down and reopens as soon as it listens, not when the step ends."""
    with RtspServer(clip, loop=True, max_lifetime=30) as srv:
        src = Reconnecting(rtsp(srv.url), backoff_initial_s=3.0, backoff_max_s=3.0,
                           jitter=0.0)
        reader = Reader(src)
        reader.start()
        try:
            wait_for(lambda: len(reader.frames) >= 5, 20, "frames")
            srv.kill()
            wait_for(lambda: src.outages == 1, 10, "the outage")  # in the 3 s step now
            time.sleep(0.5)
            srv.start()
            t_back = time.monotonic_ns()
            wait_for(lambda: bool(reader.since(t_back)), 10, "frames again")
            back_ms = (reader.since(t_back)[0][1] - t_back) / 1e6
        finally:
            src.close()
            reader.join(5)
    print(f"\nserver back -> first frame {back_ms:.0f} ms within a 3 s backoff step; "
          f"{src.stats()}")
    assert back_ms < 1500 and src.failed_attempts == 0


@pytest.mark.timeout(30)
def test_a_server_that_listens_but_fails_still_gets_the_backoff(clip: Path) -> None:
    """The probe only shortens the wait for a server that does not listen: one that
    accepts and hangs up at once (up, but failing) is retried at the backoff's pace."""
    with RtspServer(clip, loop=True, max_lifetime=30) as srv:
        port = srv.port
        src = Reconnecting(rtsp(srv.url), backoff_initial_s=0.5, backoff_max_s=0.5,
                           jitter=0.0)
        reader = Reader(src)
        reader.start()
        wait_for(lambda: len(reader.frames) >= 5, 20, "frames")
        with socket.socket() as rude:
            rude.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.kill()
            rude.bind(("127.0.0.1", port))
            rude.listen(16)
            rude.settimeout(0.05)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 1.6:
                with contextlib.suppress(TimeoutError):
                    rude.accept()[0].close()  # accept, hang up
            attempts = src.failed_attempts
        src.close()
        reader.join(5)
    print(f"\nserver up but failing for 1.6 s, backoff 0.5 s: {attempts} attempts")
    assert 1 <= attempts <= 5


@pytest.mark.timeout(30)
def test_close_cuts_the_backoff_short(clip: Path) -> None:
    with RtspServer(clip, loop=True, max_lifetime=30) as srv:
        src = Reconnecting(rtsp(srv.url), backoff_initial_s=30.0, backoff_max_s=30.0,
                           jitter=0.0)
        reader = Reader(src)
        reader.start()
        wait_for(lambda: len(reader.frames) >= 5, 20, "frames")
        srv.kill()
        wait_for(lambda: src.outages == 1, 10, "the outage")  # now in a 30 s backoff
        src.close()  # from another thread than the iterating one
        reader.join(5)
    assert not reader.is_alive() and reader.error is None


def test_arguments_and_wiring(tmp_path: Path) -> None:
    for kwargs in ({"backoff_initial_s": 0}, {"backoff_max_s": -1.0},
                   {"backoff_initial_s": 2.0, "backoff_max_s": 1.0}, {"max_attempts": 0},
                   {"jitter": 1.0}, {"backoff_initial_s": float("inf")}):
        with pytest.raises(ConfigError):
            Reconnecting(rtsp("rtsp://127.0.0.1:1/x"), **kwargs)  # type: ignore[arg-type]
    url = "rtsp://127.0.0.1:8554/live"
    wrapped = open_source(url)
    assert isinstance(wrapped, Reconnecting) and wrapped.source_id == "rtsp:127.0.0.1:8554/live"
    assert isinstance(open_source(url, SourceOptions(reconnect=False)), RtspSource)
    model = tmp_path / "m.onnx"
    args: argparse.Namespace = build_parser().parse_args(
        ["run", "--source", url, "--model", str(model), "--no-reconnect", "--watchdog", "3"])
    opts = _request(args, url, model).options
    assert opts.reconnect is False and opts.watchdog_s == 3.0
    args = build_parser().parse_args(["run", "--source", url, "--model", str(model)])
    assert _request(args, url, model).options.reconnect is True
