"""A live RTSP stream (an ultrasound scanner's or encoder's video output) through PyAV.

Latency first: RTP over TCP interleaved in the RTSP connection by default (no loss, no
reordering queue, passes NAT and firewalls), a one-packet probe at open, no reordering
delay, a low-delay decoder without frame threading, and no pacing (frames are handed on as
they arrive). What latency remains in FFmpeg: its H.264 parser hands a frame on only when
the next one begins, one frame period (33 ms at 30 fps; see ``options()`` for why it
stays). Every wait is bounded: the open by ``open_timeout_s``, each read by
``read_timeout_s``; failures are typed ``SourceError`` subclasses with one line naming the
URL (credentials masked).

Timeouts, precisely (measured with FFmpeg 8 / PyAV 18 against the test server):

* PyAV applies its open timeout twice, once to ``avformat_open_input`` and once more to
  ``avformat_find_stream_info``, each with a fresh clock, so a stalled open can take about
  twice the value given. We give it half of ``open_timeout_s``, so the whole open stays
  within ``open_timeout_s`` (a server that accepts and never answers fails after half of
  it, ~0.5 x).
* The read timeout restarts at every ``av_read_frame``. When a stream stalls, the first
  interrupt is absorbed by libavformat, which flushes the H.264 parser and returns the
  frame it held (a frame that had fully arrived); the next read then times out. A stalled
  stream therefore raises ``SourceTimeoutError`` about 2 x ``read_timeout_s`` after the
  last data (measured 2.005 s for 1.0 s), and never earlier than ``read_timeout_s`` after
  the last frame handed on.
* A server that completes the RTSP handshake but sends no media: FFmpeg's probe gives up
  quietly after half of ``open_timeout_s``, ``open()`` returns, and the first read raises
  ``SourceTimeoutError`` after ``read_timeout_s`` (measured 0.50 s + 1.00 s for 1 s / 1 s).
* A server that goes away (process killed, connection reset) is seen at once as end of
  stream or a reset, and raises ``SourceError``: a live source never ends quietly.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from hepascope.core.errors import ConfigError, SourceError
from hepascope.stream.sources.base import SourceBase
from hepascope.stream.sources.pyav_io import check_timeout, decode_bgr, masked_url, open_live

SCHEMES = ("rtsp", "rtsps")
TRANSPORTS = ("tcp", "udp")
# Largest UDP reordering wait (microseconds) when transport="udp": a late packet older than
# this is given up as lost rather than holding back every frame behind it.
UDP_MAX_DELAY_US = 50_000
UDP_BUFFER_BYTES = 4 * 1024 * 1024  # socket buffer for RTP over UDP: bursts of an I-frame
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322}


class RtspSource(SourceBase):
    """Frames of a live RTSP stream, as they arrive.

    ``open_timeout_s`` bounds connecting, the RTSP handshake and probing together;
    ``read_timeout_s`` bounds the wait for the next packet once playing (see the module
    docstring for the exact bounds). ``transport`` is the RTP lower transport: ``"tcp"``
    (interleaved in the RTSP connection; the default and the low-latency choice on a LAN)
    or ``"udp"``. ``pts_s`` of the frames is the stream's media time from the RTP
    timestamps (seconds since the first packet), None where FFmpeg has none (it can be
    None for the very first frame).
    """

    def __init__(self, url: str, *, open_timeout_s: float = 5.0, read_timeout_s: float = 2.0,
                 transport: str = "tcp", source_id: str | None = None) -> None:
        if not isinstance(url, str):
            raise ConfigError(f"RTSP url must be a string, got {type(url).__name__}")
        parts = urlsplit(url)
        if parts.scheme.lower() not in SCHEMES:
            raise ConfigError(f"not an RTSP url (scheme must be rtsp:// or rtsps://): "
                              f"{masked_url(url)!r}")
        try:
            host, port = parts.hostname, parts.port  # .port raises on a bad port
        except ValueError as e:
            raise ConfigError(f"bad RTSP url {masked_url(url)!r}: {e}") from e
        if not host:
            raise ConfigError(f"RTSP url has no host: {masked_url(url)!r}")
        self.open_timeout_s = check_timeout("open_timeout_s", open_timeout_s)
        self.read_timeout_s = check_timeout("read_timeout_s", read_timeout_s)
        if not isinstance(transport, str) or transport.lower() not in TRANSPORTS:
            raise ConfigError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        self.transport = transport.lower()
        self.url = url
        self.display_url = masked_url(url)
        netloc = host if port is None else f"{host}:{port}"
        super().__init__(source_id or f"rtsp:{netloc}{parts.path}")
        self._container: Any = None
        self._stream: Any = None
        self.codec: str | None = None  # decoder name once open ("h264", "hevc", ...)

    def options(self) -> dict[str, str]:
        """The demuxer options handed to FFmpeg (``av.open(options=...)``)."""
        opts = {
            "rtsp_transport": self.transport,
            # socket I/O timeout of the RTSP connection in microseconds (FFmpeg >= 5 calls
            # it "timeout"; it was "stimeout"): a second guard besides PyAV's interrupt.
            "timeout": str(max(1, round(self.read_timeout_s * 1e6))),
            # Probe one packet only: with sprop-parameter-sets in the SDP the decoder is
            # configured already, and a long probe would delay the first frame by ~1 s
            # and hand the probed frames on late. No "fflags=nobuffer": after a short
            # probe it would only throw away the probed packet, the first keyframe, and
            # make the decoder wait a whole GOP for the next one (measured: first frame
            # 0.57 s instead of 0.04 s after open with a 16-frame GOP).
            "probesize": "32",
            "analyzeduration": "500000",
        }
        # Not "fflags=noparse": libavformat's H.264 parser holds each frame until the
        # next one begins (one frame period of latency, measured 33.9 ms median at 30 fps
        # vs 0.5 ms without it), but FFmpeg's RTP depacketiser hands FU-A fragments on as
        # separate packets and relies on that parser to join them; without it every NAL
        # unit larger than the MTU (most keyframes) fails to decode.
        if self.transport == "tcp":
            # TCP delivers in order: no reordering queue, no reordering delay.
            opts.update({"max_delay": "0", "reorder_queue_size": "0"})
        else:
            opts.update({"max_delay": str(UDP_MAX_DELAY_US),
                         "buffer_size": str(UDP_BUFFER_BYTES)})
        return opts

    def reachable(self, timeout_s: float) -> bool:
        """Whether the server accepts a TCP connection on its RTSP port now: one connect,
        closed at once, bounded by ``timeout_s`` (name resolution aside). ``Reconnecting``
        probes with it while a server is down, so the stream is reopened as soon as the
        server listens again. A host name that does not resolve says nothing about the
        server: True, so the backoff, not the probe, paces the attempts."""
        parts = urlsplit(self.url)
        port = parts.port or DEFAULT_PORTS[parts.scheme.lower()]
        try:
            with socket.create_connection((parts.hostname, port), timeout=timeout_s):
                return True
        except socket.gaierror:
            return True
        except OSError:
            return False

    def _open(self) -> None:
        self._container, self._stream = open_live(
            self.url, options=self.options(), open_timeout_s=self.open_timeout_s,
            read_timeout_s=self.read_timeout_s)
        self.codec = str(self._stream.codec_context.name)

    def _frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        yield from decode_bgr(self._container, self._stream, self.display_url)
        # FFmpeg reports a closed connection (server killed or gone) or an RTCP BYE as
        # end of stream: for a live source that is a failure the caller must see.
        raise SourceError(f"{self.display_url}: stream ended (server closed the "
                          "connection or ended the session)")

    def _close(self) -> None:
        if self._container is not None:
            self._container.close()  # sends TEARDOWN without waiting for the reply
            self._container = None
            self._stream = None
