"""Results to OpenIGTLink clients beside ZeroMQ: ``hepascope run --igtl-serve [HOST:]PORT``
(or ``publish.igtl_serve``). Each result goes to every connected client (3D Slicer's
OpenIGTLinkIF shows it as a text node) as one STRING message of device ``hepascope``,
stamped with the frame's capture time (``t_capture_utc_ns``); ``result_text`` builds the
text.

It never blocks the pipeline: ``on_result`` only packs the message (pyigtl) and queues it;
one I/O thread writes to the clients without blocking. A client that lags loses its oldest
unsent results beyond ``QUEUE_MESSAGES`` (counted in ``igtl_dropped``) and its kernel send
buffer is kept small, so what it gets is fresh; a result with no client connected is
counted in ``igtl_no_client``. OpenIGTLink has neither authentication nor encryption: like
the ZeroMQ channel without keys, a non-loopback bind needs ``--insecure``.

The server is our own small socket loop, not pyigtl's ``OpenIGTLinkServer``: that one
replaces the process's SIGINT/SIGTERM handlers (and cannot be made off the main thread),
serves one client at a time and prints a traceback when a client goes away.
"""

from __future__ import annotations

import json
import logging
import selectors
import socket
import threading
from collections import deque
from typing import Any

from hepascope.core.config import parse_bind
from hepascope.core.errors import PublishError
from hepascope.stream.security import InsecureBindError, is_loopback
from hepascope.stream.sources.igtl import require_pyigtl

log = logging.getLogger(__name__)

DEVICE = "hepascope"
QUEUE_MESSAGES = 8  # unsent results kept per client; older ones are dropped (counted)
SEND_BUFFER_BYTES = 16 << 10  # per client (the kernel doubles it): ~150 results in flight


def _value(v: object) -> str:
    """One value of the text: bare when it is plain ASCII, else JSON-quoted (escaped)."""
    s = str(v)
    if s and s.isascii() and s.isprintable() and not any(c in s for c in ' ="\\'):
        return s
    return json.dumps(s, ensure_ascii=True)


def result_text(msg: dict[str, Any]) -> str:
    """The STRING of a result: ``status=ok label=hcc confidence=0.870 seq=12 model=NAME``,
    status first. ``uncertain`` and ``warming_up`` keep the top class and its probability
    under their status (not a verdict); ``model_fault`` has none (``-``) and says why in
    ``fault``. ASCII only, other characters JSON-escaped: every receiver reads it (and
    pyigtl's ``pack`` raises ``UnicodeEncodeError`` on any other text)."""
    status = msg["status"]
    probs, labels = msg["probs"], msg["labels"]
    if status == "model_fault" or not probs:
        label, confidence = "-", "-"
    else:
        top = msg.get("top")
        i = labels.index(top) if top in labels else max(range(len(probs)),
                                                        key=probs.__getitem__)
        label, confidence = labels[i], f"{probs[i]:.3f}"
    parts = {"status": status, "label": label, "confidence": confidence, "seq": msg["seq"],
             "model": msg["model"]}
    if msg.get("fault"):
        parts["fault"] = msg["fault"]
    return " ".join(f"{k}={_value(v)}" for k, v in parts.items())


class _Client:
    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock, self.peer = sock, peer
        self.queue: deque[bytes] = deque()
        self.sending: memoryview | None = None  # the message being written, from its rest


class IgtlServer:
    """An OpenIGTLink server sending each result it is told of (``on_result``, a pipeline
    ``ResultListener``) to every client; see the module docstring."""

    def __init__(self, bind: int | str, *, insecure: bool = False,
                 device: str = DEVICE) -> None:
        self._pyigtl = require_pyigtl()
        host, port = parse_bind(bind)
        if not is_loopback(f"tcp://{host}:{port}"):
            if not insecure:
                raise InsecureBindError(
                    f"--igtl-serve {host}:{port} is reachable from the network and "
                    "OpenIGTLink has no authentication: pass --insecure to serve it anyway")
            log.warning("INSECURE: serving results over OpenIGTLink on %s:%d, readable by "
                        "anyone on the network", host, port)
        self.device = device
        self._listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind((host, port))
            self._listener.listen(8)
        except OSError as e:
            self._listener.close()
            raise PublishError(f"--igtl-serve: cannot listen on {host}:{port}: {e}") from e
        self._listener.setblocking(False)
        self.host, self.port = host, int(self._listener.getsockname()[1])
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._lock = threading.Lock()
        self._clients: dict[socket.socket, _Client] = {}
        self._stop = threading.Event()
        self.sent = self.dropped = self.no_client = self.connections = 0
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name="hepascope-igtl-serve")
        self._thread.start()
        log.info("serving results over OpenIGTLink on %s:%d (device %r)", host, self.port,
                 device)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"igtl_clients": len(self._clients), "igtl_connections": self.connections,
                    "igtl_sent": self.sent, "igtl_dropped": self.dropped,
                    "igtl_no_client": self.no_client}

    def on_result(self, msg: dict[str, Any]) -> None:
        """Queue ``msg`` for every client; never waits for one."""
        with self._lock:
            if not self._clients:  # nobody to tell: not even packed
                self.no_client += 1
                return
        packed = self._pyigtl.StringMessage(
            result_text(msg), timestamp=msg["t_capture_utc_ns"] / 1e9,
            device_name=self.device).pack()
        with self._lock:
            for c in self._clients.values():
                if len(c.queue) >= QUEUE_MESSAGES:
                    c.queue.popleft()
                    self.dropped += 1
                c.queue.append(packed)
        self._wake()

    def close(self) -> None:
        self._stop.set()
        self._wake()
        self._thread.join(5.0)
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            c.sock.close()
        for s in (self._listener, self._wake_r, self._wake_w):
            s.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except BlockingIOError:
            pass  # the wake-up pipe is full: a wake-up is pending already
        except OSError:
            if not self._stop.is_set():  # closed under us only when stopping
                raise

    # -- the I/O thread --------------------------------------------------------------------
    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                for key, events in sel.select(timeout=1.0):
                    if key.fileobj is self._listener:
                        self._accept(sel)
                    elif key.fileobj is self._wake_r:
                        self._drain_wake()
                    else:
                        self._serve(sel, key.data, events)
                self._want_write(sel)
        finally:
            sel.close()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        try:
            sock, addr = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = _Client(sock, f"{addr[0]}:{addr[1]}")
        with self._lock:
            self._clients[sock] = client
            self.connections += 1
        sel.register(sock, selectors.EVENT_READ, client)
        log.info("OpenIGTLink client %s connected", client.peer)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            return

    def _want_write(self, sel: selectors.BaseSelector) -> None:
        """Watch for writability exactly the clients with something to send."""
        with self._lock:
            clients = list(self._clients.values())
        for c in clients:
            busy = c.sending is not None or bool(c.queue)
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if busy else 0)
            if sel.get_key(c.sock).events != events:
                sel.modify(c.sock, events, c)

    def _serve(self, sel: selectors.BaseSelector, c: _Client, events: int) -> None:
        try:
            if events & selectors.EVENT_READ and not self._discard_input(c):
                self._drop(sel, c, "disconnected")
                return
            if events & selectors.EVENT_WRITE:
                self._write(c)
        except OSError as e:
            self._drop(sel, c, f"lost ({e})")

    def _discard_input(self, c: _Client) -> bool:
        """Read what the client sent (ignored: we only serve); False at its end."""
        try:
            return bool(c.sock.recv(65536))
        except BlockingIOError:
            return True

    def _write(self, c: _Client) -> None:
        while True:
            if c.sending is None:
                with self._lock:
                    if not c.queue:
                        return
                    c.sending = memoryview(c.queue.popleft())
            try:
                n = c.sock.send(c.sending)
            except BlockingIOError:
                return
            c.sending = c.sending[n:] if n < len(c.sending) else None
            if c.sending is None:
                with self._lock:
                    self.sent += 1

    def _drop(self, sel: selectors.BaseSelector, c: _Client, why: str) -> None:
        sel.unregister(c.sock)
        c.sock.close()
        with self._lock:
            self._clients.pop(c.sock, None)
            self.dropped += len(c.queue) + (c.sending is not None)
        log.info("OpenIGTLink client %s %s", c.peer, why)


def serve_igtl(bind: int | str | None, insecure: bool) -> IgtlServer | None:
    """The server ``--igtl-serve`` / ``publish.igtl_serve`` asks for, None when neither."""
    return None if bind is None else IgtlServer(bind, insecure=insecure)
