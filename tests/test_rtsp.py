"""RtspSource against a real RTSP server on loopback (tests/support/rtsp_server.py, started
as a child process: pure Python + PyAV, RTP/AVP/TCP interleaved, no network needed)."""

from __future__ import annotations

import itertools
import math
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest

# tests/ is on sys.path (conftest.py), as for support.media
from support import rtsp_server
from support.rtsp_server import RtspServer

from hepascope.core.errors import ConfigError, SourceError, SourceTimeoutError
from hepascope.core.frame import Frame
from hepascope.stream.sources.rtsp import RtspSource

N_FRAMES, WIDTH, HEIGHT, FPS, GOP = 64, 320, 240, 30, 16
BLOCK = WIDTH // 8  # the frame index, 8 bits, as 8 black/white blocks across the top


# -- the test clip -------------------------------------------------------------------------
def make_image(i: int) -> np.ndarray:
    """Frame ``i``: its index as 8 blocks (bit b set = white block b) over a moving ramp."""
    img = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    ramp = ((np.arange(WIDTH) * 2 + 6 * i) % 256).astype(np.uint8)
    img[BLOCK + 8:, :, 1] = ramp[None, :]
    img[BLOCK + 8:, :, 2] = 255 - ramp[None, :]
    for b in range(8):
        if (i >> b) & 1:
            img[:BLOCK, b * BLOCK:(b + 1) * BLOCK] = 255
    return img


def frame_index(img: np.ndarray) -> int | None:
    """The index drawn by ``make_image``, or None where a block is not clearly set."""
    index = 0
    for b in range(8):
        centre = img[8:BLOCK - 8, b * BLOCK + 8:(b + 1) * BLOCK - 8].astype(np.float32).mean()
        if centre > 192:
            index |= 1 << b
        elif centre >= 64:
            return None
    return index


def write_clip(path: Path) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS, options={
            "preset": "ultrafast", "tune": "zerolatency", "crf": "16",
            "g": str(GOP), "bf": "0"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i in range(N_FRAMES):
            frame = av.VideoFrame.from_ndarray(make_image(i), format="bgr24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rtsp") / "clip.mp4"
    write_clip(path)
    return path


@pytest.fixture(scope="module")
def server(clip: Path) -> Iterator[RtspServer]:
    """One server for the read-only tests; every connection plays the clip from frame 0."""
    with RtspServer(clip, max_lifetime=120) as srv:
        yield srv


@pytest.fixture
def own_server(clip: Path) -> Iterator[RtspServer]:
    """A looping server of the test's own, to kill or stall."""
    srv = RtspServer(clip, loop=True, max_lifetime=60)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def free_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- streaming -----------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_frames_match_the_file(server: RtspServer) -> None:
    src = RtspSource(server.url, open_timeout_s=4.0, read_timeout_s=2.0)
    frames: list[Frame] = []
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="stream ended") as info, src:
        t_open = time.monotonic() - t0
        frames.extend(src)
    assert not isinstance(info.value, SourceTimeoutError)  # ended by BYE, not a timeout
    t_first = (frames[0].t_capture_ns / 1e9 - t0) if frames else math.inf
    span = (frames[-1].t_capture_ns - frames[0].t_capture_ns) / 1e9
    print(f"\nopen {t_open:.3f} s, first frame {t_first:.3f} s after open() began, "
          f"{len(frames)} frames over {span:.2f} s")

    # records
    assert len(frames) >= N_FRAMES - GOP  # TCP on loopback loses nothing; allow one GOP
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert all(f.source_id == src.source_id == f"rtsp:127.0.0.1:{server.port}/live"
               for f in frames)
    assert all(f.image.shape == (HEIGHT, WIDTH, 3) and f.image.dtype == np.uint8
               for f in frames)
    assert all(b.t_capture_ns >= a.t_capture_ns for a, b in itertools.pairwise(frames))
    pts = [f.pts_s for f in frames if f.pts_s is not None]
    assert len(pts) >= len(frames) - 1 and all(b > a for a, b in itertools.pairwise(pts))

    # content: the file's frames, in order, none repeated
    found = [frame_index(f.image) for f in frames]
    assert None not in found, found
    indices = [int(i or 0) for i in found]
    assert all(b > a for a, b in itertools.pairwise(indices)), indices
    assert indices[-1] == N_FRAMES - 1
    for f, i in zip(frames, indices, strict=True):
        err = np.abs(f.image.astype(np.int16) - make_image(i)).mean()
        assert err < 6.0, f"frame {i} differs from the file: mean abs error {err:.1f}"

    # live: handed on as they arrive (not buffered up), starting promptly
    assert t_open < 1.0 and t_first < 1.5
    assert span > 0.7 * (len(frames) - 1) / FPS


def test_clip_exercises_fragmentation_and_slices(clip: Path) -> None:
    """The clip must make the server use FU-A (NAL units over the RTP payload size) and
    several slices per frame, so the streaming test covers both."""
    media = rtsp_server.load_media(clip)
    nals = [n for u in media.units for n in u.nals]
    assert len(media.units) == N_FRAMES
    assert max(len(n) for n in nals) > rtsp_server.MAX_PAYLOAD
    assert any(len(rtsp_server.rtp_payloads(n)) > 1 for n in nals)
    assert any(sum(n[0] & 0x1F in (1, 5) for n in u.nals) > 1 for u in media.units)


@pytest.mark.timeout(20)
def test_joining_a_live_stream_mid_gop(clip: Path) -> None:
    """Like a camera: the stream is already running; the decoder starts at a keyframe."""
    with RtspServer(clip, live=True, max_lifetime=60) as srv:
        time.sleep(0.25)  # the "camera" is at frame ~7, mid-GOP
        with RtspSource(srv.url, open_timeout_s=4.0, read_timeout_s=1.0) as src:
            frames = list(itertools.islice(src, 40))
    found = [frame_index(f.image) for f in frames]
    assert len(frames) == 40 and None not in found, found
    indices = [int(i or 0) for i in found]
    assert indices[0] % GOP == 0, indices  # nothing before the first keyframe
    assert all((b - a) % N_FRAMES == 1 for a, b in itertools.pairwise(indices)), indices
    assert [f.seq for f in frames] == list(range(40))


@pytest.mark.timeout(20)
def test_server_restarted_on_the_same_port_serves_again(own_server: RtspServer) -> None:
    port = own_server.port
    own_server.kill()
    own_server.start()
    assert own_server.port == port
    with RtspSource(own_server.url, open_timeout_s=4.0) as src:
        got = list(itertools.islice(src, 5))
    assert len(got) == 5 and frame_index(got[-1].image) is not None


# -- failures at open ----------------------------------------------------------------------
@pytest.mark.timeout(20)
def test_unreachable_port_fails_fast_with_the_url() -> None:
    url = f"rtsp://127.0.0.1:{free_port()}/live"
    open_timeout = 1.0
    t0 = time.monotonic()
    with pytest.raises(SourceError) as info:
        RtspSource(url, open_timeout_s=open_timeout).open()
    elapsed = time.monotonic() - t0
    print(f"\nrefused connection -> {type(info.value).__name__} after {elapsed * 1e3:.1f} ms: "
          f"{info.value}")
    assert elapsed < 3 * open_timeout
    assert url in str(info.value) and "\n" not in str(info.value)


@pytest.mark.timeout(20)
def test_password_never_appears_in_errors() -> None:
    url = f"rtsp://admin:s3cret@127.0.0.1:{free_port()}/live"
    with pytest.raises(SourceError) as info:
        RtspSource(url, open_timeout_s=1.0).open()
    assert "s3cret" not in str(info.value) and "admin:***@127.0.0.1" in str(info.value)


@pytest.mark.timeout(20)
def test_server_that_never_answers_times_out() -> None:
    open_timeout = 1.0
    with socket.socket() as silent:  # the kernel completes the handshake; nobody answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"rtsp://127.0.0.1:{silent.getsockname()[1]}/live"
        t0 = time.monotonic()
        with pytest.raises(SourceTimeoutError) as info:
            RtspSource(url, open_timeout_s=open_timeout).open()
        elapsed = time.monotonic() - t0
    print(f"\nsilent server -> SourceTimeoutError after {elapsed:.3f} s "
          f"(open_timeout_s={open_timeout}): {info.value}")
    assert 0.4 * open_timeout <= elapsed <= 1.5 * open_timeout
    assert url in str(info.value)


@pytest.mark.timeout(20)
def test_server_that_never_sends_media_times_out(clip: Path) -> None:
    """The handshake succeeds but no RTP follows: FFmpeg's probe gives up quietly within
    the open timeout, and the first read times out."""
    open_timeout, read_timeout = 1.0, 1.0
    with RtspServer(clip, mute=True, max_lifetime=30) as srv:
        src = RtspSource(srv.url, open_timeout_s=open_timeout, read_timeout_s=read_timeout)
        t0 = time.monotonic()
        with pytest.raises(SourceTimeoutError), src:
            t_open = time.monotonic() - t0
            next(iter(src))
        elapsed = time.monotonic() - t0
    print(f"\nmute server -> opened after {t_open:.3f} s, SourceTimeoutError after "
          f"{elapsed:.3f} s (open_timeout_s={open_timeout}, read_timeout_s={read_timeout})")
    assert t_open <= 1.2 * open_timeout
    assert elapsed <= open_timeout + 2 * read_timeout + 0.5


@pytest.mark.timeout(20)
def test_unknown_path_is_a_source_error(server: RtspServer) -> None:
    url = server.url.rsplit("/", 1)[0] + "/nothing-here"
    t0 = time.monotonic()
    with pytest.raises(SourceError, match="404") as info:
        RtspSource(url, open_timeout_s=2.0).open()
    assert not isinstance(info.value, SourceTimeoutError)
    assert time.monotonic() - t0 < 1.0


@pytest.mark.timeout(20)
def test_udp_against_a_tcp_only_server_is_a_source_error(server: RtspServer) -> None:
    t0 = time.monotonic()
    with pytest.raises(SourceError) as info:
        RtspSource(server.url, open_timeout_s=2.0, transport="udp").open()
    assert not isinstance(info.value, SourceTimeoutError)
    assert time.monotonic() - t0 < 1.5


# -- failures mid-stream -------------------------------------------------------------------
def _read_then(src: RtspSource, n: int, action: object) -> tuple[int, float, BaseException]:
    """Read ``n`` frames, call ``action()``, then read on until an error; return (frames
    read, seconds from the action to the error, the error)."""
    count, t_action = 0, math.inf
    with pytest.raises(SourceError) as info, src:
        for _ in src:
            count += 1
            if count == n:
                action()  # type: ignore[operator]
                t_action = time.monotonic()
            assert count < n + 2 * FPS * 5, "still reading long after the server went away"
    return count, time.monotonic() - t_action, info.value


@pytest.mark.timeout(20)
def test_server_killed_midstream_raises_promptly(own_server: RtspServer) -> None:
    read_timeout = 1.0
    src = RtspSource(own_server.url, open_timeout_s=4.0, read_timeout_s=read_timeout)
    count, elapsed, err = _read_then(src, 10, own_server.kill)
    print(f"\nSIGKILL after {10} frames -> {type(err).__name__} after {elapsed * 1e3:.1f} ms "
          f"({count} frames): {err}")
    assert count >= 10
    assert elapsed < 2 * read_timeout
    assert own_server.url in str(err)


@pytest.mark.timeout(20)
def test_server_stalled_midstream_times_out(own_server: RtspServer) -> None:
    read_timeout = 1.0
    src = RtspSource(own_server.url, open_timeout_s=4.0, read_timeout_s=read_timeout)
    _, elapsed, err = _read_then(src, 10, own_server.stall)  # SIGSTOP: socket stays open
    print(f"\nSIGSTOP after 10 frames -> {type(err).__name__} after {elapsed:.3f} s "
          f"(read_timeout_s={read_timeout}): {err}")
    assert isinstance(err, SourceTimeoutError)
    assert 0.9 * read_timeout <= elapsed <= 2 * read_timeout + 0.5


@pytest.mark.timeout(20)
def test_close_while_server_stalled_does_not_hang(own_server: RtspServer) -> None:
    src = RtspSource(own_server.url, open_timeout_s=4.0, read_timeout_s=1.0)
    src.open()
    it = iter(src)
    next(it)
    own_server.stall()
    t0 = time.monotonic()
    src.close()
    assert time.monotonic() - t0 < 1.0


# -- arguments -----------------------------------------------------------------------------
@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8554/live", "127.0.0.1:8554/live", "", "rtsp:///live",
    "file:///tmp/x.mp4", "rtsp://127.0.0.1:99999/live",
])
def test_bad_url_is_rejected(url: str) -> None:
    with pytest.raises(ConfigError):
        RtspSource(url)


@pytest.mark.parametrize("kwargs", [
    {"open_timeout_s": 0}, {"open_timeout_s": -1.0}, {"open_timeout_s": math.nan},
    {"open_timeout_s": math.inf}, {"open_timeout_s": True}, {"open_timeout_s": "5"},
    {"read_timeout_s": 0.0}, {"read_timeout_s": -2}, {"read_timeout_s": None},
    {"transport": "sctp"}, {"transport": "http"}, {"transport": ""},
])
def test_bad_arguments_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # ConfigError is a ValueError
        RtspSource("rtsp://127.0.0.1:8554/live", **kwargs)  # type: ignore[arg-type]


def test_defaults_and_source_id() -> None:
    src = RtspSource("rtsp://cam.local/us/main")
    assert src.source_id == "rtsp:cam.local/us/main"
    assert (src.open_timeout_s, src.read_timeout_s, src.transport) == (5.0, 2.0, "tcp")
    assert RtspSource("rtsps://10.0.0.2:322/x", transport="UDP").transport == "udp"
    assert RtspSource("rtsp://10.0.0.2:8554/x").source_id == "rtsp:10.0.0.2:8554/x"
    assert RtspSource("rtsp://u:p@h/x", source_id="probe").source_id == "probe"
    assert RtspSource("rtsp://u:pw@h:1/x").display_url == "rtsp://u:***@h:1/x"
    opts = RtspSource("rtsp://h/x", read_timeout_s=1.5).options()
    assert opts["rtsp_transport"] == "tcp" and opts["timeout"] == "1500000"
    assert opts["reorder_queue_size"] == "0" and opts["max_delay"] == "0"
