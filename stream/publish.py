"""ZeroMQ results channel: a PUB that never blocks the pipeline, and a SUB helper that
drains to the newest message so a display never falls behind."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import zmq

from hepascope.stream.errors import PublishError
from hepascope.stream.messages import MessageError, encode, parse

log = logging.getLogger(__name__)


class Publisher:
    """Binds a PUB socket; ``send`` never blocks: a subscriber that cannot keep up loses
    messages at the high-water mark (counted in ``dropped``) instead of slowing us."""

    def __init__(self, endpoint: str, *, send_hwm: int = 64,
                 context: zmq.Context[Any] | None = None) -> None:
        if not endpoint:
            raise ValueError("endpoint must be non-empty")
        self.endpoint = endpoint
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, send_hwm)
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as e:
            self._sock.close(0)
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


class Subscriber:
    """Connects a SUB socket to ``endpoint`` for the result and telemetry topics.

    ``drain()`` yields every valid message waiting now, without blocking; malformed ones
    are dropped and counted in ``malformed``, never raised into the caller's loop."""

    def __init__(self, endpoint: str, *, topics: tuple[bytes, ...] = (b"result", b"telemetry"),
                 context: zmq.Context[Any] | None = None, rcv_hwm: int = 1000) -> None:
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, rcv_hwm)
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
                log.warning("dropped a malformed message: %s", e)
                continue
            self.received += 1
            yield topic, msg

    def close(self) -> None:
        self._sock.close(0)
