"""ZeroMQ results channel: a PUB that never blocks the pipeline, and a SUB helper that
drains to the newest message so a display never falls behind. Both speak CURVE when given
keys (stream/security.py); without keys a publisher binds only to loopback unless told
``insecure``."""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from typing import Any

import zmq

from hepascope.core.errors import PublishError
from hepascope.core.messages import MessageError, encode, parse
from hepascope.stream.security import (
    ClientKeys,
    ServerKeys,
    ZapAuthenticator,
    check_bind,
    secure_client,
    secure_server,
)

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1 << 20  # per frame: a result is < 1 KiB; larger drops the connection
HEARTBEAT_IVL_MS = 1000  # ZMTP pings: a dead TCP peer (cable pulled) is noticed, reconnected
HEARTBEAT_TIMEOUT_MS = 3000


class Publisher:
    """Binds a PUB socket; ``send`` never blocks: a subscriber that cannot keep up loses
    messages at its high-water mark, silently (PUB never reports it, so ``dropped`` only
    counts a send that could not be queued at all) instead of slowing us.

    With ``keys`` it is a CURVE server with its own ZAP authenticator on a private context
    that admits only ``keys.allowed``; without, a non-loopback ``endpoint`` raises
    ``InsecureBindError`` unless ``insecure``."""

    def __init__(self, endpoint: str, *, send_hwm: int = 64,
                 context: zmq.Context[Any] | None = None, keys: ServerKeys | None = None,
                 insecure: bool = False) -> None:
        if not endpoint:
            raise ValueError("endpoint must be non-empty")
        if send_hwm < 1:
            raise ValueError("send_hwm must be >= 1")
        check_bind(endpoint, keys is not None, insecure)
        self.endpoint = endpoint
        # the ZAP endpoint is per context: a secured publisher owns one, so two never clash
        self._own_ctx = keys is not None and context is None
        self._ctx = zmq.Context() if self._own_ctx else (context or zmq.Context.instance())
        self.authenticator = ZapAuthenticator(self._ctx, keys.allowed) if keys else None
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, send_hwm)
        if keys is not None:
            secure_server(self._sock, keys)
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as e:
            self.close()
            raise PublishError(f"cannot bind results channel {endpoint}: {e}") from e
        self.bound = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.sent = 0
        self.dropped = 0

    def send(self, topic: bytes, msg: dict[str, Any]) -> None:
        try:
            self._sock.send_multipart([topic, encode(msg)], flags=zmq.NOBLOCK)
            self.sent += 1
        except zmq.Again:
            self.dropped += 1

    def close(self) -> None:
        self._sock.close(0)
        if self.authenticator is not None:
            self.authenticator.stop()
        if self._own_ctx:
            self._ctx.term()


class Subscriber:
    """Connects a SUB socket to ``endpoint`` for the result and telemetry topics.

    ``drain()`` yields every valid message waiting now, without blocking; malformed ones
    are dropped and counted in ``malformed``, never raised into the caller's loop. A frame
    over ``max_message_bytes`` never reaches the decoder: libzmq drops that connection.
    With ``keys`` it is a CURVE client that accepts only the pinned server key."""

    def __init__(self, endpoint: str, *, topics: tuple[bytes, ...] = (b"result", b"telemetry"),
                 context: zmq.Context[Any] | None = None, rcv_hwm: int = 1000,
                 keys: ClientKeys | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        if rcv_hwm < 1 or max_message_bytes < 1:
            raise ValueError("rcv_hwm and max_message_bytes must be >= 1")
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, rcv_hwm)
        self._sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self._sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        self._sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        if keys is not None:
            secure_client(self._sock, keys)
        for t in topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, t)
        try:
            self._sock.connect(endpoint)
        except zmq.ZMQError as e:
            self._sock.close(0)
            raise PublishError(f"cannot connect to {endpoint}: {e}") from e
        self.endpoint = endpoint
        self.received = 0
        self.malformed = 0
        self.reconnects = 0

    def reconnect(self) -> None:
        """Connect again. libzmq ends a connection for good on a protocol error (a frame
        over ``max_message_bytes``, a failed CURVE handshake): only this brings it back."""
        try:
            self._sock.disconnect(self.endpoint)
        except zmq.ZMQError as e:
            if e.errno != errno.ENOENT:  # ENOENT: libzmq had already dropped the endpoint
                raise PublishError(f"cannot disconnect from {self.endpoint}: {e}") from e
        try:
            self._sock.connect(self.endpoint)
        except zmq.ZMQError as e:
            raise PublishError(f"cannot connect to {self.endpoint}: {e}") from e
        self.reconnects += 1

    def poll(self, timeout_ms: int) -> bool:
        return bool(self._sock.poll(timeout_ms, zmq.POLLIN))

    def drain(self) -> Iterator[tuple[bytes, dict[str, Any]]]:
        while True:
            try:
                frames = self._sock.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                topic, msg = parse(frames)
            except MessageError as e:
                self.malformed += 1
                if self.malformed <= 10 or self.malformed % 1000 == 0:  # a flood: no log flood
                    log.warning("dropped a malformed message (%d so far): %s", self.malformed, e)
                continue
            self.received += 1
            yield topic, msg

    def close(self) -> None:
        self._sock.close(0)
