"""PyAV plumbing shared by the file, RTSP and UDP/SRT sources: open with typed errors, decode
video frames to BGR arrays, and map whatever the decoder raises to ``SourceError``.

``CheckedDecoder`` is the strict decoder of replayed files: it never hands on a frame the
decoder flagged or could not decode, nor one that depends on such a frame."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import av
import numpy as np

from hepascope.core.errors import (
    ConfigError,
    SourceError,
    SourceFormatError,
    SourceNotFoundError,
    SourceTimeoutError,
)

# PyAV raises FFmpegError subclasses, but on some corrupt streams also IndexError or
# ValueError from its own Python layer: all of them mean "this input is broken".
_DECODE_ERRORS: tuple[type[BaseException], ...] = (av.FFmpegError, IndexError, ValueError)
READ_FAILURES: tuple[type[BaseException], ...] = (*_DECODE_ERRORS, OSError)

# The decoder refuses pictures above this size itself (FFmpeg's max_pixels): a flipped bit
# in a sequence header can claim a 16k x 16k picture that takes seconds and gigabytes to
# decode. 4096 x 4096 holds every surgical video format up to 4K UHD and DCI 4K.
MAX_PIXELS = 4096 * 4096
# err_detect 'explode': a damaged slice fails its packet instead of being concealed (a
# concealed frame is often not flagged corrupt); crccheck/bitstream/buffer: check all that
# the codec can check. Frames flagged corrupt still come out (output_corrupt, FFmpeg's
# default) so that they are counted, not silently dropped.
STRICT_DECODER_OPTIONS = {"err_detect": "crccheck+bitstream+buffer+explode",
                          "max_pixels": str(MAX_PIXELS)}


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
        # metadata_errors: a damaged file's tags are not UTF-8 (PyAV would raise
        # UnicodeDecodeError from inside open); the video does not depend on them
        return av.open(url, mode="r", options=options or {}, timeout=timeout,
                       metadata_errors="replace")
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
    stream = container.streams.video[0]
    if stream.codec_context is None:  # an unknown (or damaged) codec id: nothing decodes it
        container.close()
        raise SourceFormatError(f"{url}: no decoder for its video stream's codec")
    return stream


def check_timeout(name: str, value: object) -> float:
    """A timeout argument in seconds: a finite number > 0 (``ConfigError`` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be > 0 and finite, got {value!r}")
    return float(value)


def masked_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    return url.replace(parts.netloc, f"{parts.username}:***@{netloc[-1]}", 1)


def open_live(url: str, *, options: dict[str, str], open_timeout_s: float,
              read_timeout_s: float) -> tuple[Any, Any]:
    """(container, video stream) of a live network stream, set for the least latency.

    Half the open timeout goes to each of PyAV's two waits (avformat_open_input, then with
    a fresh clock avformat_find_stream_info). Errors name the URL without its password.
    Slice threads only: frame threading holds back (threads - 1) frames, that many frame
    periods of latency; slice threading adds none. ``low_delay``: each frame is output as
    soon as it is decoded, not held to guess reordering."""
    shown = masked_url(url)
    try:
        container = open_container(url, options=options,
                                   timeout=(open_timeout_s / 2.0, read_timeout_s))
    except SourceError as e:
        if shown != url:  # never put a password in a message
            raise type(e)(str(e).replace(url, shown)) from e.__cause__
        raise
    stream = video_stream(container, shown)
    cc = stream.codec_context
    cc.thread_type = "SLICE"
    cc.flags = cc.flags | av.codec.context.Flags.low_delay
    return container, stream


def _read_error(e: BaseException, url: str) -> SourceError:
    """The typed error for an exception PyAV raised while demuxing or decoding ``url``."""
    if isinstance(e, av.ExitError):  # the interrupt callback fired: the read timeout
        return SourceTimeoutError(f"{url}: read timed out ({_reason(e)})")
    if isinstance(e, TimeoutError) or "timed out" in str(e).lower():
        return SourceTimeoutError(f"{url}: read timed out ({_reason(e)})")
    if isinstance(e, ConnectionError) or (
            _is_network(url) and isinstance(e, OSError)
            and not isinstance(e, av.InvalidDataError)):
        return SourceError(f"{url}: connection lost ({_reason(e)})")
    if isinstance(e, _DECODE_ERRORS):
        return SourceFormatError(
            f"{url}: corrupt or undecodable video ({type(e).__name__}: {e})")
    return SourceError(f"{url}: read failed ({e})")


def decode_bgr(container: Any, stream: Any, url: str) -> Iterator[tuple[np.ndarray, float | None]]:
    """Demux and decode ``stream``; yield (BGR uint8 image, pts seconds or None)."""
    try:
        for packet in container.demux(stream):
            for frame in packet.decode():
                yield frame.to_ndarray(format="bgr24"), frame.time
    except av.EOFError:
        return
    except READ_FAILURES as e:
        raise _read_error(e, url) from e


# A starved process (a loaded machine) gets this many budgets of wall time; a busy one (a
# demuxer scanning garbage) gets its budget of CPU time.
STARVED_FACTOR = 10.0
# An open that timed out having had less than this share of a CPU was starved, not busy.
STARVED_SHARE = 0.5


class CheckedDecoder:
    """Decode a file's video stream, handing on only frames decoded without error.

    A packet the decoder rejects and a frame it flags corrupt are skipped and counted in
    ``corrupt_frames``; so is every frame after them until the next key frame, because
    those predict from the damaged picture (FFmpeg does not flag them). A damaged file is
    given up with ``SourceFormatError`` when more than ``max_corrupt_run`` frames in a row
    were skipped, or when ``budget_s`` of decoding (pacing excluded) passes without a frame
    to hand on: garbage that decodes to nothing, or slowly, ends within that budget.
    Corruption that still parses as valid video (a flipped bit in coefficient data) cannot
    be detected by any decoder; what the decoder can detect, it is made to report.
    """

    def __init__(self, container: Any, stream: Any, url: str, *, max_corrupt_run: int = 30,
                 budget_s: float = 0.5) -> None:
        if max_corrupt_run < 0:
            raise ValueError(f"max_corrupt_run must be >= 0, got {max_corrupt_run}")
        if budget_s <= 0:
            raise ValueError(f"budget_s must be > 0, got {budget_s}")
        self.container, self.stream, self.url = container, stream, url
        self.max_corrupt_run = max_corrupt_run
        self.budget_s = budget_s
        self.corrupt_frames = 0
        self._run = 0  # frames skipped since the last one handed on
        self._resync = False  # damage seen: skip until a key frame
        self._why = ""
        self.restart()
        stream.codec_context.options = dict(STRICT_DECODER_OPTIONS)

    def restart(self, t_start: float | None = None, cpu_start: float | None = None) -> None:
        """Start a new budget span now (or at ``t_start`` / ``cpu_start``, monotonic and
        process CPU time, e.g. when opening began)."""
        self._t_work = time.monotonic() if t_start is None else t_start
        self._c_work = time.process_time() if cpu_start is None else cpu_start

    def frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        """(BGR uint8 image, pts seconds or None) of each good frame, to the end; a pass
        that ends without one is a ``SourceFormatError`` (nothing in the file decodes)."""
        handed = 0
        try:
            for packet in self.container.demux(self.stream):
                self._check_budget()
                for frame in self._decode(packet):
                    if self._usable(frame):
                        image = frame.to_ndarray(format="bgr24")
                        self._run = 0
                        handed += 1
                        yield image, frame.time
                        self.restart()  # the consumer's time (pacing) is not decoding
        except av.EOFError:
            pass
        except SourceError:  # ours (too much damage), already typed
            raise
        except READ_FAILURES as e:  # the demuxer's, not a packet's
            raise _read_error(e, self.url) from e
        if not handed:
            detail = f" ({self.corrupt_frames} corrupt, last: {self._why})" if self._why else ""
            raise SourceFormatError(f"{self.url}: no decodable video frame{detail}")

    def _decode(self, packet: Any) -> list[Any]:
        try:
            return list(packet.decode())
        except av.EOFError:
            return []
        except _DECODE_ERRORS as e:  # this packet is damaged, not necessarily the rest
            self._skip(f"{type(e).__name__}: {_reason(e)}")
            return []

    def _usable(self, frame: Any) -> bool:
        if frame.is_corrupt:
            self._skip("frame flagged corrupt by the decoder")
            return False
        if self._resync and not frame.key_frame:
            self._skip(f"predicts from a damaged frame ({self._why})")
            return False
        self._resync = False
        return True

    def _skip(self, why: str) -> None:
        self.corrupt_frames += 1
        self._run += 1
        self._resync = True
        self._why = why
        if self._run > self.max_corrupt_run:
            raise SourceFormatError(f"{self.url}: corrupt video: {self._run} frames in a row "
                                    f"could not be decoded cleanly (last: {why})")

    def _check_budget(self) -> None:
        """The budget is CPU time (garbage keeps a demuxer busy), with a wall-clock cap of
        ``STARVED_FACTOR`` budgets: a process starved of CPU on a loaded machine is slow,
        not decoding garbage, and must not call a good file corrupt."""
        spent = time.monotonic() - self._t_work
        cpu = time.process_time() - self._c_work
        if cpu > self.budget_s or spent > STARVED_FACTOR * self.budget_s:
            detail = f"; {self._run} corrupt, last: {self._why}" if self._run else ""
            raise SourceFormatError(f"{self.url}: corrupt video: no decodable frame after "
                                    f"{spent:.2f} s of decoding ({cpu:.2f} s on a CPU)"
                                    f"{detail}")
