"""``udp://`` sources against FFmpeg's own MPEG-TS/UDP sender in another process (a real
socket; the sender is not our code): frames arrive, a sender SIGKILLed and restarted is
followed by a reconnect and more frames, silence is a typed timeout, and ``srt://``
without libsrt is one clear, permanent error."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hepascope.core.errors import SourceFormatError, SourceTimeoutError
from hepascope.core.frame import Frame
from hepascope.stream.sources import SourceOptions, open_source
from hepascope.stream.sources.reconnect import Reconnecting
from hepascope.stream.sources.udp import DatagramSource

SENDER = Path(__file__).resolve().parent / "support" / "udp_sender.py"


def _udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sender(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(SENDER), str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def _stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    p.wait(timeout=10)


def test_frames_arrive_and_silence_is_a_timeout() -> None:
    port = _udp_port()
    sender = _sender(port)
    src = DatagramSource(f"udp://127.0.0.1:{port}", open_timeout_s=4.0, read_timeout_s=0.5)
    try:
        with src:
            frames: list[Frame] = []
            t0, it = time.monotonic(), iter(src)
            while len(frames) < 60:
                frames.append(next(it))
            # the frames probed during the open come in a burst: the rate after them
            rate = 29 / (frames[-1].t_capture_ns - frames[30].t_capture_ns) * 1e9
            print(f"\n60 frames {frames[0].image.shape} in {time.monotonic() - t0:.2f} s "
                  f"after start, then {rate:.1f} frames/s, codec {src.codec}")
            assert frames[0].image.shape == (96, 160, 3) and 20 < rate < 45
            _stop(sender)
            t_kill = time.monotonic()
            with pytest.raises(SourceTimeoutError, match="timed out"):
                for _ in it:
                    pass
            waited = time.monotonic() - t_kill
            print(f"sender SIGKILLed -> SourceTimeoutError after {waited:.2f} s (read 0.5 s)")
            assert waited < 3.0
    finally:
        _stop(sender)


def test_sender_killed_and_restarted_reconnects() -> None:
    port = _udp_port()
    sender = _sender(port)
    src = open_source(f"udp://127.0.0.1:{port}", SourceOptions(open_timeout_s=4.0,
                                                                read_timeout_s=0.5))
    assert isinstance(src, Reconnecting)
    seen: list[float] = []
    seqs: list[int] = []
    done = threading.Event()

    def read() -> None:
        for f in src:
            seen.append(time.monotonic())
            seqs.append(f.seq)
            if done.is_set():
                return

    src.open()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        time.sleep(1.5)
        _stop(sender)
        t_kill = time.monotonic()
        time.sleep(1.0)
        sender = _sender(port)
        assert sender.stdout is not None and sender.stdout.readline() == b"sending\n"
        t_back = time.monotonic()  # its first packet is out
        deadline = t_back + 15
        while time.monotonic() < deadline and not [t for t in seen if t > t_back]:
            time.sleep(0.05)
        after = [t for t in seen if t > t_back]
        time.sleep(1.0)  # the outage's frames_lost is booked after 15 frames of the new one
        stats = src.stats()
        print(f"\nbefore kill {len([t for t in seen if t < t_kill])} frames; sender's first "
              f"packet -> first frame {after[0] - t_back if after else -1:.2f} s; {stats}")
        assert after and stats["reconnects"] >= 1
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # seq goes on over the gap
    finally:
        done.set()
        src.close()
        _stop(sender)
        reader.join(timeout=10)


def test_srt_without_libsrt_is_one_permanent_error() -> None:
    src = DatagramSource("srt://127.0.0.1:9", open_timeout_s=1.0, read_timeout_s=1.0)
    try:
        src.open()
    except SourceFormatError as e:
        assert "libsrt" in str(e)
        print(f"\n{e}")
    else:  # an FFmpeg with libsrt: nothing listens there, so the open cannot succeed
        src.close()
        pytest.fail("an srt:// open with nobody listening succeeded")
