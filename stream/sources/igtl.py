"""OpenIGTLink IMAGE messages as frames: ``igtl://host:port[?device=NAME]``, the ultrasound
a navigation system already receives from a PLUS server or 3D Slicer (port 18944 when none
is given).

pyigtl (the igtl extra) parses and unpacks each message; the socket is our own. pyigtl's
client never notices a server that died (it reads end-of-stream as "no message yet",
measured: 0 frames after the server came back, while spinning a core), waits for messages
by polling every 10 ms and keeps only the newest one of each device. Here every wait is
bounded instead, as for RTSP: connecting by ``open_timeout_s``, and the wait for the next
frame by ``read_timeout_s`` (counted from the last frame, so a server that sends only other
devices' messages times out too: the watchdog). A closed connection is a ``SourceError``
(a live source never ends quietly), bytes that are not OpenIGTLink a
``SourceFormatError``; ``open_source`` wraps the source in ``Reconnecting`` (backoff, the
outage counters and the ``frames_lost`` estimate of ``source_health``), which probes with
``reachable`` while the server is down.

Frames: 2-D IMAGE messages of 8-bit pixels, grey (1 component) or RGB(A) (3 or 4; handed
on as BGR, OpenCV's order). ``pts_s`` is the message header's timestamp (seconds since
1970 on the sender's clock; None when the sender leaves it 0), so ``frames_lost`` counts
frame periods of the scanner's own clock; ``t_capture_ns`` is the arrival here (a remote
clock may be off: it never sets our latencies). Messages of other types or devices are
read and skipped (``skipped``); the CRC is not checked (TCP already did).
"""

from __future__ import annotations

import math
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from hepascope.core.errors import (
    ConfigError,
    SourceError,
    SourceFormatError,
    SourceTimeoutError,
)
from hepascope.stream.sources.base import SourceBase

DEFAULT_PORT = 18944
HEADER_BYTES = 58  # OpenIGTLink's fixed header (pyigtl's MessageBase.IGTL_HEADER_SIZE)
MAX_DEVICE_BYTES = 20  # the header's device name field
MAX_BODY_BYTES = 256 << 20  # a 4K RGB frame is 25 MB: more is not an image stream
RECV_BUFFER_BYTES = 4 << 20  # socket buffer: a burst of a few full frames


def require_pyigtl() -> Any:
    """The pyigtl module, or a one-line ``ConfigError`` naming the extra that brings it."""
    try:
        import pyigtl
    except ImportError as e:
        raise ConfigError("OpenIGTLink needs pyigtl: pip install 'hepascope[igtl]'") from e
    return pyigtl


def parse_url(url: str) -> tuple[str, int, str | None]:
    """(host, port, device or None) of ``igtl://host[:port][?device=NAME]``."""
    parts = urlsplit(url)
    if parts.scheme != "igtl":
        raise ConfigError(f"not an OpenIGTLink url (igtl://host:port): {url!r}")
    try:
        host, port = parts.hostname, parts.port or DEFAULT_PORT
    except ValueError as e:  # a port that is not a number or out of range
        raise ConfigError(f"bad igtl url {url!r}: {e}") from e
    if not host:
        raise ConfigError(f"igtl url has no host: {url!r}")
    if parts.port == 0:
        raise ConfigError(f"igtl url {url!r}: port must be in 1-65535")
    query = parse_qs(parts.query, keep_blank_values=True)
    for key in query:
        if key != "device":
            raise ConfigError(f"igtl url {url!r}: unknown query key {key!r} (only 'device')")
    device = query.get("device", [None])[-1] or None
    if device is not None and len(device.encode()) > MAX_DEVICE_BYTES:
        raise ConfigError(f"igtl url {url!r}: a device name has at most "
                          f"{MAX_DEVICE_BYTES} bytes")
    return host, port, device


def _seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def to_frame_image(image: np.ndarray, where: str) -> np.ndarray:
    """pyigtl's (k, j, i[, components]) pixels of one IMAGE as HxW grey or HxWx3 BGR."""
    if image.ndim not in (3, 4) or image.shape[0] != 1:
        raise SourceFormatError(f"{where}: a volume of shape {image.shape}, not a 2-D image")
    if image.dtype != np.uint8:
        raise SourceFormatError(f"{where}: {image.dtype} pixels; only 8-bit images are read")
    plane = image[0]
    if plane.ndim == 2:
        return plane
    if plane.shape[2] not in (1, 3, 4):
        raise SourceFormatError(f"{where}: {plane.shape[2]} components per pixel; 1 (grey), "
                                "3 (RGB) or 4 (RGBA) are read")
    if plane.shape[2] == 1:
        return plane[..., 0]
    return np.ascontiguousarray(plane[..., 2::-1])  # RGB(A) -> BGR


class IgtlSource(SourceBase):
    """Frames of the IMAGE messages an OpenIGTLink server sends (module docstring)."""

    def __init__(self, url: str, *, open_timeout_s: float = 5.0, read_timeout_s: float = 2.0,
                 source_id: str | None = None) -> None:
        self.host, self.port, self.device = parse_url(url)
        self.url = url
        self.open_timeout_s = _seconds("open_timeout_s", open_timeout_s)
        self.read_timeout_s = _seconds("read_timeout_s", read_timeout_s)
        device = f"/{self.device}" if self.device else ""
        super().__init__(source_id or f"igtl:{self.host}:{self.port}{device}")
        self._pyigtl = require_pyigtl()
        self._sock: socket.socket | None = None
        self.skipped = 0  # messages of other types or devices

    def reachable(self, timeout_s: float) -> bool:
        """Whether the server accepts a connection now (``Reconnecting`` probes with it
        while the server is down). The probe is reset, not closed: a server that serves one
        client at a time (pyigtl's) sees the reset at once and accepts the next client."""
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout_s) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return True
        except socket.gaierror:
            return True  # says nothing about the server: the backoff paces the attempts
        except OSError:
            return False

    def _open(self) -> None:
        try:
            sock = socket.create_connection((self.host, self.port),
                                            timeout=self.open_timeout_s)
        except TimeoutError as e:
            raise SourceTimeoutError(f"{self.url}: no connection within "
                                     f"{self.open_timeout_s:g} s") from e
        except OSError as e:
            raise SourceError(f"{self.url}: cannot connect: {e}") from e
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER_BYTES)
        self._sock = sock

    def _frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        deadline = time.monotonic() + self.read_timeout_s
        while True:
            header = self._header(deadline)
            size = header["body_size"]
            if header["message_type"] != "IMAGE" or \
                    (self.device is not None and header["device_name"] != self.device):
                self._skip(size, deadline)
                self.skipped += 1
                continue
            body = self._read(bytearray(size), deadline)
            yield self._image(header, body), header["timestamp"] or None
            deadline = time.monotonic() + self.read_timeout_s

    def _header(self, deadline: float) -> dict[str, Any]:
        raw = self._read(bytearray(HEADER_BYTES), deadline)
        try:
            header: dict[str, Any] = self._pyigtl.MessageBase.parse_header(bytes(raw))
        except (UnicodeDecodeError, struct.error) as e:
            raise SourceFormatError(f"{self.url}: not an OpenIGTLink stream (bad header: "
                                    f"{e})") from e
        if header["header_version"] not in (1, 2) or header["body_size"] > MAX_BODY_BYTES:
            raise SourceFormatError(f"{self.url}: not an OpenIGTLink stream (header version "
                                    f"{header['header_version']}, body of "
                                    f"{header['body_size']} bytes)")
        return header

    def _image(self, header: dict[str, Any], body: bytearray) -> np.ndarray:
        where = f"{self.url}: IMAGE of {header['device_name']!r}"
        msg = self._pyigtl.ImageMessage()
        try:
            msg.unpack(header, body)
        except Exception as e:  # pyigtl raises what numpy/struct raise on a bad body
            raise SourceFormatError(f"{where} cannot be decoded: {type(e).__name__}: "
                                    f"{e}") from e
        return to_frame_image(msg.image, where)

    def _read(self, buf: bytearray, deadline: float) -> bytearray:
        """Fill ``buf`` from the socket by ``deadline``."""
        view, got = memoryview(buf), 0
        while got < len(buf):
            got += self._recv_into(view[got:], deadline)
        return buf

    def _skip(self, n: int, deadline: float) -> None:
        scratch = memoryview(bytearray(min(n, 1 << 16) or 1))
        while n > 0:
            n -= self._recv_into(scratch[:min(n, len(scratch))], deadline)

    def _recv_into(self, view: memoryview, deadline: float) -> int:
        sock = self._sock
        assert sock is not None
        left = deadline - time.monotonic()
        if left <= 0:
            raise SourceTimeoutError(f"{self.url}: no image for {self.read_timeout_s:g} s")
        sock.settimeout(left)
        try:
            n = sock.recv_into(view)
        except TimeoutError as e:
            raise SourceTimeoutError(f"{self.url}: no image for "
                                     f"{self.read_timeout_s:g} s") from e
        except OSError as e:
            raise SourceError(f"{self.url}: connection lost: {e}") from e
        if n == 0:
            raise SourceError(f"{self.url}: the server closed the connection")
        return n

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
