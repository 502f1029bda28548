"""H.264 media for the RTSP server of ``rtsp_serve``: an MP4's access units with their
timestamps, its parameter sets for the SDP, and RTP packetisation per RFC 6184 (single NAL
unit packets, FU-A above ``MAX_PAYLOAD`` bytes). Pure Python plus PyAV to demux the file."""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
MAX_PAYLOAD = 1400  # RTP payload bytes per packet; larger NAL units are FU-A fragmented
PT = 96  # dynamic payload type announced in the SDP
CLOCK = 90_000  # RTP clock of H.264 video (RFC 6184)
NAL_IDR = 5
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
NAL_FU_A = 28


@dataclass
class AccessUnit:
    nals: list[bytes]
    dts_s: float  # when to send it (decode order)
    pts_s: float  # what RTP timestamp to stamp it with
    key: bool


@dataclass
class Media:
    sps: bytes
    pps: bytes
    units: list[AccessUnit] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def profile_level_id(self) -> str:
        return self.sps[1:4].hex().upper()

    def sdp(self, session_id: int) -> str:
        sprop = ",".join(base64.b64encode(x).decode("ascii") for x in (self.sps, self.pps))
        lines = [
            "v=0",
            f"o=- {session_id} 1 IN IP4 {HOST}",
            "s=hepascope test stream",
            f"c=IN IP4 {HOST}",
            "t=0 0",
            "a=tool:hepascope-tests",
            "a=range:npt=0-",
            "a=control:*",
            f"m=video 0 RTP/AVP {PT}",
            f"a=rtpmap:{PT} H264/{CLOCK}",
            f"a=fmtp:{PT} packetization-mode=1;profile-level-id={self.profile_level_id};"
            f"sprop-parameter-sets={sprop}",
            "a=control:trackID=0",
        ]
        return "\r\n".join(lines) + "\r\n"


def parse_avcc(extradata: bytes) -> tuple[int, list[bytes], list[bytes]]:
    """(NAL length size, SPS list, PPS list) of an ISO/IEC 14496-15 avcC record."""
    if len(extradata) < 7 or extradata[0] != 1:
        raise ValueError("extradata is not an avcC record (Annex B streams are not supported)")
    length_size = (extradata[4] & 0x03) + 1
    pos = 5
    out: list[list[bytes]] = [[], []]
    for which in (0, 1):
        count = extradata[pos] & (0x1F if which == 0 else 0xFF)
        pos += 1
        for _ in range(count):
            (n,) = struct.unpack_from(">H", extradata, pos)
            pos += 2
            out[which].append(bytes(extradata[pos:pos + n]))
            pos += n
    return length_size, out[0], out[1]


def split_avcc(data: bytes, length_size: int) -> list[bytes]:
    """The NAL units of one length-prefixed (AVCC) sample."""
    nals: list[bytes] = []
    pos = 0
    while pos + length_size <= len(data):
        n = int.from_bytes(data[pos:pos + length_size], "big")
        pos += length_size
        if n == 0 or pos + n > len(data):
            break
        nals.append(data[pos:pos + n])
        pos += n
    return nals


def load_media(path: str | Path) -> Media:
    import av  # imported here so --help works without PyAV

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{path}: no video stream")
        stream = container.streams.video[0]
        if stream.codec_context.name != "h264":
            raise ValueError(f"{path}: video is {stream.codec_context.name}, not h264")
        extradata = bytes(stream.codec_context.extradata or b"")
        length_size, sps, pps = parse_avcc(extradata)
        if not sps or not pps:
            raise ValueError(f"{path}: avcC record has no SPS/PPS")
        media = Media(sps=sps[0], pps=pps[0])
        tb = float(stream.time_base or 0)
        rate = stream.average_rate
        frame_s = 1.0 / float(rate) if rate else 1.0 / 30.0
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            pts = packet.pts if packet.pts is not None else packet.dts
            dts = packet.dts if packet.dts is not None else pts
            if pts is None or dts is None:
                continue
            nals = [n for n in split_avcc(bytes(packet), length_size)
                    if n[0] & 0x1F not in (NAL_SPS, NAL_PPS, NAL_AUD)]
            if not nals:
                continue
            key = any(n[0] & 0x1F == NAL_IDR for n in nals) or bool(packet.is_keyframe)
            if key:  # repeat parameter sets in band so any keyframe is a join point
                nals = [media.sps, media.pps, *nals]
            media.units.append(AccessUnit(nals, dts * tb, pts * tb, key))
    if not media.units:
        raise ValueError(f"{path}: no video packets")
    t0 = min(u.dts_s for u in media.units)
    for u in media.units:
        u.dts_s -= t0
        u.pts_s -= t0
    media.duration_s = max(u.pts_s for u in media.units) + frame_s
    return media


def rtp_payloads(nal: bytes) -> list[bytes]:
    """RFC 6184 payloads for one NAL unit: itself, or FU-A fragments when too large."""
    if len(nal) <= MAX_PAYLOAD:
        return [nal]
    indicator = (nal[0] & 0xE0) | NAL_FU_A
    nal_type = nal[0] & 0x1F
    body = nal[1:]
    chunk = MAX_PAYLOAD - 2
    out = []
    for start in range(0, len(body), chunk):
        end = start + chunk >= len(body)
        header = (0x80 if start == 0 else 0) | (0x40 if end else 0) | nal_type
        out.append(bytes((indicator, header)) + body[start:start + chunk])
    return out
