"""A live stream pushed to us over UDP (``udp://``, typically MPEG-TS from an encoder or a
scanner's streaming output) or SRT (``srt://``), through PyAV, with the RTSP source's
timeouts and, through ``open_source``, its reconnect (``Reconnecting``).

``udp://HOST:PORT`` listens on PORT (HOST: the local address to bind, or a multicast group
to join); frames are handed on as they arrive. A datagram stream has no connection to lose:
a sender that stops or dies is seen as silence, a ``SourceTimeoutError`` once no packet came
for ``read_timeout_s`` (about twice that after the last frame, as for RTSP: the H.264
parser hands on the frame it held at the first interrupt); ``Reconnecting`` then reopens
the socket with backoff and frames go on when the sender is back. The open waits at most
``open_timeout_s`` for enough of the stream to know its codec (a keyframe with its
parameter sets: an encoder's GOP length bounds how long that takes).

``srt://`` needs an FFmpeg built with libsrt. The FFmpeg inside PyAV's wheels has none: the
open then fails at once with a ``SourceFormatError`` that says so (permanent, not retried).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import av
import numpy as np

from hepascope.core.errors import ConfigError, SourceError, SourceFormatError
from hepascope.stream.sources.base import SourceBase
from hepascope.stream.sources.pyav_io import check_timeout, decode_bgr, masked_url, open_live

SCHEMES = ("udp", "srt")
UDP_FIFO_PACKETS = 8192  # FFmpeg's circular buffer of received datagrams (x 188 x 7 bytes)
UDP_BUFFER_BYTES = 4 * 1024 * 1024  # kernel socket buffer: bursts of an I-frame


class DatagramSource(SourceBase):
    """Frames of a live ``udp://`` or ``srt://`` stream, as they arrive (see the module
    docstring). ``pts_s`` is the stream's media time where the container has one."""

    def __init__(self, url: str, *, open_timeout_s: float = 5.0, read_timeout_s: float = 2.0,
                 source_id: str | None = None) -> None:
        if not isinstance(url, str):
            raise ConfigError(f"stream url must be a string, got {type(url).__name__}")
        parts = urlsplit(url)
        self.scheme = parts.scheme.lower()
        if self.scheme not in SCHEMES:
            raise ConfigError(f"not a udp:// or srt:// url: {masked_url(url)!r}")
        try:
            port = parts.port  # raises on a bad port
        except ValueError as e:
            raise ConfigError(f"bad {self.scheme} url {masked_url(url)!r}: {e}") from e
        if port is None:
            raise ConfigError(f"{self.scheme} url needs a port: {masked_url(url)!r}")
        self.open_timeout_s = check_timeout("open_timeout_s", open_timeout_s)
        self.read_timeout_s = check_timeout("read_timeout_s", read_timeout_s)
        self.url = url
        self.display_url = masked_url(url)
        super().__init__(source_id or f"{self.scheme}:{parts.hostname or ''}:{port}")
        self._container: Any = None
        self._stream: Any = None
        self.codec: str | None = None

    def options(self) -> dict[str, str]:
        """The protocol options handed to FFmpeg (``av.open(options=...)``)."""
        us = str(max(1, round(self.read_timeout_s * 1e6)))
        if self.scheme == "udp":
            # timeout: the socket's own read guard (microseconds), besides PyAV's interrupt;
            # overrun_nonfatal: a full buffer drops datagrams (counted by the decoder as
            # damage) rather than ending the stream
            # analyzeduration: probe 0.2 s of stream, not FFmpeg's 5 s default: a returning
            # sender's first frame came 1.1 s after its first packet with the default,
            # 0.63 s with 0.5 s, 0.33 s (its next keyframe) with 0.2 s. A stream joined
            # mid-GOP still decodes from the next keyframe with its parameter sets.
            return {"timeout": us, "fifo_size": str(UDP_FIFO_PACKETS),
                    "buffer_size": str(UDP_BUFFER_BYTES), "overrun_nonfatal": "1",
                    "analyzeduration": "200000"}
        return {"rw_timeout": us, "connect_timeout": str(round(self.open_timeout_s * 1e3))}

    def _open(self) -> None:
        try:
            self._container, self._stream = open_live(
                self.url, options=self.options(), open_timeout_s=self.open_timeout_s,
                read_timeout_s=self.read_timeout_s)
        except SourceError as e:
            if isinstance(e.__cause__, av.error.ProtocolNotFoundError):
                raise SourceFormatError(
                    f"{self.display_url}: this FFmpeg has no {self.scheme} protocol (PyAV's "
                    "wheels are built without libsrt; a PyAV built against an FFmpeg with "
                    "libsrt reads srt://)") from e
            raise
        self.codec = str(self._stream.codec_context.name)

    def _frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        yield from decode_bgr(self._container, self._stream, self.display_url)
        raise SourceError(f"{self.display_url}: stream ended")  # a live source never ends

    def _close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
            self._stream = None
