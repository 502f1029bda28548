"""Frame sources, one file each, all meeting ``Source`` (open, iterate, close).

``open_source(spec)`` turns a CLI source spec into a source: a file path, ``rtsp://...``,
``igtl://host:port[?device=NAME]`` (OpenIGTLink IMAGE messages), ``udp://HOST:PORT`` or
``srt://...`` (a pushed MPEG-TS stream), ``v4l2:/dev/video0`` or ``cam:0``, ``phantom:SEED``,
``shm:NAME`` (a running pipeline's frame ring), a DICOM cine (``*.dcm``, ``*.dicom`` or
``dicom:PATH``)."""

from __future__ import annotations

from dataclasses import dataclass

from hepascope.core.errors import ConfigError
from hepascope.stream.sources.base import Pacer, Source, SourceBase


@dataclass(frozen=True, slots=True)
class SourceOptions:
    """CLI options that apply to the sources that understand them."""

    speed: float = 1.0
    max_rate: bool = False
    loop: bool = False
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    open_timeout_s: float = 5.0
    read_timeout_s: float = 2.0
    reconnect: bool = True  # rtsp, igtl: reopen with backoff when the stream fails
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 1.0
    watchdog_s: float | None = 2.0  # v4l2/cam: replace a grabber with no frame for this long


def _network(spec: str, scheme: str, o: SourceOptions) -> Source:
    """An ``rtsp://``, ``igtl://``, ``udp://`` or ``srt://`` source, reopened with backoff
    when ``o.reconnect``."""
    def stream() -> Source:
        if scheme == "igtl":
            from hepascope.stream.sources.igtl import IgtlSource

            return IgtlSource(spec, open_timeout_s=o.open_timeout_s,
                              read_timeout_s=o.read_timeout_s)
        if scheme in ("udp", "srt"):
            from hepascope.stream.sources.udp import DatagramSource

            return DatagramSource(spec, open_timeout_s=o.open_timeout_s,
                                  read_timeout_s=o.read_timeout_s)
        from hepascope.stream.sources.rtsp import RtspSource

        return RtspSource(spec, open_timeout_s=o.open_timeout_s,
                          read_timeout_s=o.read_timeout_s)

    if not o.reconnect:
        return stream()
    from hepascope.stream.sources.reconnect import Reconnecting

    return Reconnecting(stream, backoff_initial_s=o.backoff_initial_s,
                        backoff_max_s=o.backoff_max_s)


def _capture(spec: str, scheme: str, rest: str, o: SourceOptions) -> Source:
    """A ``v4l2:`` or ``cam:`` capture device, under a watchdog when ``o.watchdog_s``."""
    from hepascope.stream.sources.capture import CaptureSource

    device: str | int = int(rest) if rest.isdigit() else rest
    if scheme == "cam" and not isinstance(device, int):
        raise ConfigError(f"cam: takes a device index, got {rest!r} (use v4l2:/dev/...)")

    def grabber() -> Source:
        return CaptureSource(device, width=o.width, height=o.height, fps=o.fps,
                             source_id=spec)

    if o.watchdog_s is None:
        return grabber()
    from hepascope.stream.sources.watchdog import Watchdog

    return Watchdog(grabber, stall_s=o.watchdog_s)


def open_source(spec: str, options: SourceOptions | None = None) -> Source:
    """Build (not yet open) the source a spec names."""
    o = options or SourceOptions()
    if not spec:
        raise ConfigError("empty source spec")
    scheme, sep, rest = spec.partition(":")
    if spec.startswith(("rtsp://", "rtsps://", "igtl://", "udp://", "srt://")):
        return _network(spec, scheme, o)
    if sep and scheme in ("v4l2", "cam"):
        return _capture(spec, scheme, rest, o)
    if sep and scheme == "phantom":
        from hepascope.stream.sources.phantom import PhantomSource

        try:
            seed = int(rest or 0)
        except ValueError as e:
            raise ConfigError(f"phantom: takes an integer seed, got {rest!r}") from e
        return PhantomSource(seed, fps=o.fps or 30.0, max_rate=o.max_rate)
    if sep and scheme == "shm":
        from hepascope.stream.sources.shm import RingSource

        return RingSource(rest)
    if (sep and scheme == "dicom") or spec.lower().endswith((".dcm", ".dicom")):
        from hepascope.stream.sources.dicom import DicomCineSource

        path = rest if sep and scheme == "dicom" else spec
        return DicomCineSource(path, speed=o.speed, max_rate=o.max_rate, loop=o.loop)
    if "://" in spec:
        raise ConfigError(f"unsupported source scheme in {spec!r}")
    from hepascope.stream.sources.file import FileSource

    return FileSource(spec, speed=o.speed, max_rate=o.max_rate, loop=o.loop)


__all__ = ["Pacer", "Source", "SourceBase", "SourceOptions", "open_source"]
