"""The RTSP test server now lives in the package (``hepascope.stream.rtsp_serve``, media in
``hepascope.stream.rtsp_media``): this module re-exports it so tests keep their imports."""

from __future__ import annotations

import sys

from hepascope.stream.rtsp_media import (
    CLOCK,
    HOST,
    MAX_PAYLOAD,
    PT,
    AccessUnit,
    Media,
    load_media,
    parse_avcc,
    rtp_payloads,
    split_avcc,
)
from hepascope.stream.rtsp_serve import RtspServer, Session, main, serve

__all__ = ["CLOCK", "HOST", "MAX_PAYLOAD", "PT", "AccessUnit", "Media", "RtspServer", "Session",
           "load_media", "main", "parse_avcc", "rtp_payloads", "serve", "split_avcc"]

if __name__ == "__main__":
    sys.exit(main())
