"""PyAV plumbing shared by the file and RTSP sources: open with typed errors, decode
video frames to BGR arrays, and map whatever the decoder raises to ``SourceError``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import av
import numpy as np

from hepascope.stream.errors import (
    SourceError,
    SourceFormatError,
    SourceNotFoundError,
    SourceTimeoutError,
)

# PyAV raises FFmpegError subclasses, but on some corrupt streams also IndexError or
# ValueError from its own Python layer: all of them mean "this input is broken".
_DECODE_ERRORS: tuple[type[BaseException], ...] = (av.FFmpegError, IndexError, ValueError)


def _is_network(url: str) -> bool:
    """A URL FFmpeg opens through a network protocol (rtsp://, http://, ...), not a path."""
    scheme, sep, _ = url.partition("://")
    return bool(sep) and scheme.isalnum() and scheme.lower() != "file"


def _reason(e: BaseException) -> str:
    """FFmpeg's own words without PyAV's ``[Errno N] ...: 'url'`` decoration."""
    return str(getattr(e, "strerror", None) or e)


def open_container(url: str, *, options: dict[str, str] | None = None,
                   timeout: float | tuple[float, float] | None = None) -> Any:
    """``av.open`` for reading, with its failures turned into typed source errors.

    Network URLs: a refused or failed connection, an unknown host or an RTSP error status
    is a plain ``SourceError``; a failure that comes when the open timeout has run out is
    a ``SourceTimeoutError`` whatever FFmpeg calls it (the RTSP demuxer reports an
    interrupted read of a reply as "Invalid data", not as an exit).
    """
    open_timeout = timeout[0] if isinstance(timeout, tuple) else timeout
    t0 = time.monotonic()
    try:
        return av.open(url, mode="r", options=options or {}, timeout=timeout)
    except av.ExitError as e:  # the interrupt callback fired: the open timeout
        raise SourceTimeoutError(f"{url}: timed out opening ({_reason(e)})") from e
    except (av.FFmpegError, OSError) as e:
        elapsed = time.monotonic() - t0
        if isinstance(e, TimeoutError) or "timed out" in str(e).lower():
            raise SourceTimeoutError(
                f"{url}: timed out opening after {elapsed:.1f} s ({_reason(e)})") from e
        if open_timeout is not None and elapsed >= open_timeout:
            raise SourceTimeoutError(
                f"{url}: timed out opening: no complete answer within {elapsed:.1f} s") from e
        if _is_network(url):
            if isinstance(e, av.InvalidDataError):
                raise SourceFormatError(
                    f"{url}: cannot open stream: {_reason(e)} (not a stream the server "
                    "or FFmpeg understands)") from e
            raise SourceError(f"{url}: cannot open stream: {_reason(e)}") from e
        if isinstance(e, FileNotFoundError):
            raise SourceNotFoundError(f"{url}: no such file") from e
        raise SourceFormatError(f"{url}: cannot open as video ({e})") from e


def video_stream(container: Any, url: str) -> Any:
    """The first video stream, or a ``SourceFormatError``."""
    if not container.streams.video:
        container.close()
        raise SourceFormatError(f"{url}: no video stream")
    return container.streams.video[0]


def decode_bgr(container: Any, stream: Any, url: str) -> Iterator[tuple[np.ndarray, float | None]]:
    """Demux and decode ``stream``; yield (BGR uint8 image, pts seconds or None)."""
    try:
        for packet in container.demux(stream):
            for frame in packet.decode():
                yield frame.to_ndarray(format="bgr24"), frame.time
    except av.ExitError as e:  # the interrupt callback fired: the read timeout
        raise SourceTimeoutError(f"{url}: read timed out ({_reason(e)})") from e
    except av.EOFError:
        return
    except _DECODE_ERRORS as e:
        if isinstance(e, TimeoutError) or "timed out" in str(e).lower():
            raise SourceTimeoutError(f"{url}: read timed out ({_reason(e)})") from e
        if isinstance(e, ConnectionError) or (
                _is_network(url) and isinstance(e, OSError)
                and not isinstance(e, av.InvalidDataError)):
            raise SourceError(f"{url}: connection lost ({_reason(e)})") from e
        raise SourceFormatError(
            f"{url}: corrupt or undecodable video ({type(e).__name__}: {e})") from e
    except OSError as e:
        raise SourceError(f"{url}: read failed ({e})") from e
