"""A small RTSP server: serves one recorded H.264 MP4 over RTP/AVP/TCP (interleaved), for
rehearsals, soak runs and tests, with nothing to install::

    python -m hepascope.stream.rtsp_serve FILE [--port N] [--loop | --live [--epoch T]]

Pure Python plus PyAV (to demux the file; ``rtsp_media``). It speaks just enough RTSP 1.0
(RFC 2326) for FFmpeg's client: OPTIONS, DESCRIBE (SDP with ``sprop-parameter-sets`` taken
from the file's avcC record), SETUP (TCP interleaved only; UDP is refused with 461), PLAY,
GET_PARAMETER / SET_PARAMETER (keep-alive) and TEARDOWN. After PLAY a thread sends the
file's access units paced at their decode timestamps, packetised per RFC 6184 (marker bit
on the last packet of each access unit, 90 kHz timestamps). SPS and PPS are repeated in
band before every IDR so a client can join at any keyframe, also after a loop.

Each connection plays the file from its first frame (``--loop``: over and over); with
``--live`` all connections share one looping timeline started with the server, so a client
joins wherever the "camera" is (usually mid-GOP), as with a real device; ``--epoch T``
starts that timeline at CLOCK_MONOTONIC time T instead, so a server killed and restarted
with the same T goes on where the camera would be. ``--mute`` answers every request but
never sends media (a stuck camera).

It prints one line ``READY rtsp://HOST:PORT/PATH`` on stdout once it listens (``--port 0``
picks a free port). It listens on 127.0.0.1 unless ``--host`` says otherwise; it exits
after ``--max-lifetime`` seconds if given, or when its parent process goes away.

``RtspServer`` (``rtsp_proc``, re-exported here) runs such a process so a test or the soak
can kill it (SIGKILL), stall it (SIGSTOP) and restart it on the same port.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import signal
import socket
import struct
import sys
import threading
import time

from hepascope.core.errors import guard_main
from hepascope.stream.rtsp_media import (
    CLOCK,
    HOST,
    PT,
    AccessUnit,
    Media,
    load_media,
    rtp_payloads,
)
from hepascope.stream.rtsp_proc import RtspServer

__all__ = ["RtspServer", "Session", "main", "serve"]  # RtspServer: its old home

REQUEST_LIMIT = 64 * 1024  # an RTSP request head larger than this closes the connection


# --------------------------------------------------------------------------------------
# RTSP session (one TCP connection)
# --------------------------------------------------------------------------------------
class Session:
    def __init__(self, conn: socket.socket, media: Media, path: str, loop: bool,
                 deadline: float, live_t0: float | None = None, mute: bool = False) -> None:
        self.conn = conn
        self.media = media
        self.path = path
        self.loop = loop
        self.deadline = deadline
        self.live_t0 = live_t0
        self.mute = mute
        self.session_id = random.randint(10_000_000, 99_999_999)
        self.ssrc = random.getrandbits(32)
        self.seq = random.getrandbits(16)
        self.ts0 = random.getrandbits(31)
        self.channel = 0
        self.setup_done = False
        self.stop = threading.Event()
        self.send_lock = threading.Lock()
        self.sender: threading.Thread | None = None

    # -- helpers -------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        with self.send_lock:
            self.conn.sendall(data)

    def reply(self, cseq: str, code: int = 200, reason: str = "OK",
              headers: dict[str, str] | None = None, body: str = "") -> None:
        lines = [f"RTSP/1.0 {code} {reason}", f"CSeq: {cseq}", "Server: hepascope-test-rtsp"]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        raw_body = body.encode()
        if raw_body:
            lines.append(f"Content-Length: {len(raw_body)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + raw_body)

    def path_ok(self, url: str) -> bool:
        # rtsp://host:port/path[/trackID=0]; accept with or without the track suffix
        rest = url.split("://", 1)[-1]
        p = rest.split("/", 1)[1] if "/" in rest else ""
        p = p.rstrip("/")
        if p.endswith("trackID=0"):
            p = p[: -len("trackID=0")].rstrip("/")
        return p == self.path.strip("/") or p == "*" or url == "*"

    # -- connection loop -------------------------------------------------------------
    def serve(self) -> None:
        buf = b""
        self.conn.settimeout(0.5)
        try:
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                try:
                    data = self.conn.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                buf += data
                while buf:
                    if buf[0:1] == b"$":  # interleaved RTCP from the client: skip it
                        if len(buf) < 4:
                            break
                        (n,) = struct.unpack_from(">H", buf, 2)
                        if len(buf) < 4 + n:
                            break
                        buf = buf[4 + n:]
                        continue
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        if len(buf) > REQUEST_LIMIT:
                            return
                        break
                    head = buf[:end].decode("latin-1")
                    headers = {}
                    for line in head.split("\r\n")[1:]:
                        if ":" in line:
                            k, v = line.split(":", 1)
                            headers[k.strip().lower()] = v.strip()
                    n = int(headers.get("content-length", "0") or 0)
                    if len(buf) < end + 4 + n:
                        break
                    buf = buf[end + 4 + n:]
                    if not self.handle(head.split("\r\n")[0], headers):
                        return
        except OSError:
            pass
        finally:
            self.stop.set()
            if self.sender is not None:
                self.sender.join(timeout=2.0)
            with contextlib.suppress(OSError):
                self.conn.close()

    def handle(self, request_line: str, headers: dict[str, str]) -> bool:
        """Answer one request; False ends the connection."""
        parts = request_line.split()
        if len(parts) != 3 or not parts[2].startswith("RTSP/"):
            return False
        method, url, _ = parts
        cseq = headers.get("cseq", "0")
        sess = {"Session": f"{self.session_id};timeout=60"}
        if method == "OPTIONS":
            self.reply(cseq, headers={"Public": "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, "
                                                "GET_PARAMETER, SET_PARAMETER"})
        elif method == "DESCRIBE":
            if not self.path_ok(url):
                self.reply(cseq, 404, "Not Found")
                return True
            base = url if url.endswith("/") else url + "/"
            self.reply(cseq, headers={"Content-Base": base, "Content-Type": "application/sdp"},
                       body=self.media.sdp(self.session_id))
        elif method == "SETUP":
            transport = headers.get("transport", "")
            if not self.path_ok(url):
                self.reply(cseq, 404, "Not Found")
            elif "RTP/AVP/TCP" not in transport.upper():
                self.reply(cseq, 461, "Unsupported Transport")
            else:
                ch = 0
                for item in transport.split(";"):
                    if item.strip().startswith("interleaved="):
                        with contextlib.suppress(ValueError):
                            ch = int(item.split("=", 1)[1].split("-")[0])
                self.channel = ch
                self.setup_done = True
                self.reply(cseq, headers={
                    "Transport": f"RTP/AVP/TCP;unicast;interleaved={ch}-{ch + 1};"
                                 f"ssrc={self.ssrc:08X}",
                    **sess})
        elif method == "PLAY":
            if not self.setup_done:
                self.reply(cseq, 455, "Method Not Valid in This State")
                return True
            base = url.rstrip("/")
            self.reply(cseq, headers={
                "Range": "npt=0.000-",
                "RTP-Info": f"url={base}/trackID=0;seq={self.seq};rtptime={self.ts0}",
                **sess})
            if self.sender is None and not self.mute:
                self.sender = threading.Thread(target=self.stream, daemon=True)
                self.sender.start()
        elif method in ("GET_PARAMETER", "SET_PARAMETER"):
            self.reply(cseq, headers=sess)
        elif method == "TEARDOWN":
            self.reply(cseq, headers=sess)
            return False
        else:
            self.reply(cseq, 501, "Not Implemented")
        return True

    # -- media sender ------------------------------------------------------------------
    def send_unit(self, unit: AccessUnit, offset_s: float) -> None:
        ts = (self.ts0 + round((unit.pts_s + offset_s) * CLOCK)) & 0xFFFFFFFF
        payloads = [p for nal in unit.nals for p in rtp_payloads(nal)]
        out = bytearray()
        for i, payload in enumerate(payloads):
            marker = 0x80 if i == len(payloads) - 1 else 0
            rtp = struct.pack(">BBHII", 0x80, marker | PT, self.seq, ts, self.ssrc) + payload
            self.seq = (self.seq + 1) & 0xFFFF
            out += struct.pack(">cBH", b"$", self.channel, len(rtp)) + rtp
        self.send(bytes(out))

    def sender_report(self, media_s: float) -> None:
        """An RTCP sender report mapping wall-clock (NTP) time to the RTP clock."""
        ntp = time.time() + 2_208_988_800  # seconds since 1900
        ts = (self.ts0 + round(media_s * CLOCK)) & 0xFFFFFFFF
        sr = struct.pack(">BBHIIIIII", 0x80, 200, 6, self.ssrc, int(ntp) & 0xFFFFFFFF,
                         int((ntp % 1.0) * (1 << 32)) & 0xFFFFFFFF, ts, 0, 0)
        self.send(struct.pack(">cBH", b"$", self.channel + 1, len(sr)) + sr)

    def stream(self) -> None:
        units, duration = self.media.units, self.media.duration_s
        t_base = time.monotonic()  # wall time of media time 0 of this cycle
        offset = 0.0  # media time of this cycle's start (RTP timestamps keep increasing)
        skip_before = -1.0  # live mode: media time to join at, in the first cycle
        if self.live_t0 is not None:  # one shared timeline: join where the server is now
            cycles = math.floor((t_base - self.live_t0) / duration)
            offset = cycles * duration
            skip_before = t_base - self.live_t0 - offset - 1e-3
            t_base = self.live_t0
        try:
            self.sender_report(offset)
            while not self.stop.is_set():
                for unit in units:
                    if unit.dts_s < skip_before:
                        continue
                    due = t_base + offset + unit.dts_s
                    while not self.stop.is_set():
                        now = time.monotonic()
                        if now >= self.deadline:
                            self.stop.set()
                        if now >= due:
                            break
                        time.sleep(min(due - now, 0.05))
                    if self.stop.is_set():
                        return
                    self.send_unit(unit, offset)
                skip_before = -1.0
                if not self.loop:
                    break
                offset += duration
            # end of a non-looping file: say goodbye with an RTCP BYE, then wait for the
            # client to tear down (or the connection to close)
            # (compound RTCP: an empty receiver report, then the BYE; FFmpeg ignores RTCP
            # shorter than an RTP header)
            rtcp = struct.pack(">BBHI", 0x80, 201, 1, self.ssrc)
            rtcp += struct.pack(">BBHI", 0x81, 203, 1, self.ssrc)
            self.send(struct.pack(">cBH", b"$", self.channel + 1, len(rtcp)) + rtcp)
        except OSError:
            self.stop.set()


# --------------------------------------------------------------------------------------
# server process
# --------------------------------------------------------------------------------------
def serve(file: str, port: int, path: str, loop: bool, live: bool, mute: bool,
          max_lifetime: float | None, host: str = HOST, epoch: float | None = None) -> int:
    """Serve ``file`` until SIGTERM/SIGINT, ``max_lifetime`` seconds or the parent's exit.
    ``epoch`` (CLOCK_MONOTONIC seconds, implies live) starts the live timeline then, not
    now: a server restarted with the same epoch goes on where the old one would be."""
    media = load_media(file)
    live_t0 = epoch if epoch is not None else time.monotonic() if live else None
    deadline = math.inf if max_lifetime is None else time.monotonic() + max_lifetime
    parent = os.getppid()
    stop = threading.Event()

    def on_term(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(8)
    srv.settimeout(0.25)
    actual = srv.getsockname()[1]
    print(f"READY rtsp://{host}:{actual}/{path.strip('/')}", flush=True)

    sessions: list[Session] = []
    while not stop.is_set() and time.monotonic() < deadline and os.getppid() == parent:
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            continue
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s = Session(conn, media, path.strip("/"), loop or live_t0 is not None, deadline,
                    live_t0, mute)
        sessions.append(s)
        threading.Thread(target=s.serve, daemon=True).start()
        sessions = [x for x in sessions if not x.stop.is_set()]
    for s in sessions:
        s.stop.set()
    srv.close()
    return 0


@guard_main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hepascope.stream.rtsp_serve",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("file", metavar="FILE", help="H.264 MP4 to serve")
    ap.add_argument("--port", type=int, default=0, help="TCP port (default 0: any free one)")
    ap.add_argument("--host", default=HOST, help=f"address to listen on (default {HOST})")
    ap.add_argument("--path", default="live", help="stream path (default: live)")
    ap.add_argument("--loop", action="store_true", help="start again at the end of the file")
    ap.add_argument("--live", action="store_true",
                    help="one looping timeline from server start: a client joins where it "
                         "is now (mid-GOP), like a camera; implies --loop")
    ap.add_argument("--epoch", type=float, metavar="T",
                    help="--live with the timeline started at CLOCK_MONOTONIC time T (the "
                         "same in every process): a restarted server goes on with it")
    ap.add_argument("--mute", action="store_true",
                    help="answer RTSP requests but never send media (a stuck camera)")
    ap.add_argument("--max-lifetime", type=float, metavar="S",
                    help="exit after S seconds whatever happens (default: run until stopped)")
    a = ap.parse_args(argv)
    try:
        return serve(a.file, a.port, a.path, a.loop, a.live, a.mute, a.max_lifetime, a.host,
                     a.epoch)
    except (ValueError, OSError) as e:  # not an H.264 MP4, port taken: one line, no traceback
        print(f"rtsp_serve: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
