"""A watchdog for grabbers whose read can hang (a capture card's driver blocking
``cv2.VideoCapture.read()`` forever): the hang is detected and the grabber replaced without
restarting the process.

``Watchdog(factory, stall_s=2.0)`` opens and iterates ``factory()`` in a worker thread that
hands frames over through a small queue. When no frame comes within ``stall_s`` (the first
within ``open_timeout_s``, opening included: opening a device can hang too), the worker is
abandoned: a Python thread blocked in C cannot be killed, so it stays behind as a daemon
thread (counted in ``abandoned``; ``hung`` says how many are still alive), whatever it
delivers later is discarded, and it closes its own grabber if its read ever returns
(releasing a capture from another thread while it reads is not safe). A fresh grabber from
``factory()`` takes over; ``seq`` keeps increasing across replacements. When
``max_hung`` abandoned threads are still stuck, it gives up with ``SourceTimeoutError``
rather than leak more. Errors and the end of the inner source are handed on unchanged.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

from hepascope.core.errors import ConfigError, SourceError, SourceTimeoutError
from hepascope.core.frame import Frame
from hepascope.stream.sources.base import Source
from hepascope.stream.sources.reconnect import Renumber

log = logging.getLogger(__name__)

QUEUE_FRAMES = 2  # frames in hand-over: a grabber never runs ahead of the pipeline


class _End:
    """The inner source ended without an error."""


class _Opened:
    """The inner source opened."""


class _Worker:
    """One grabber in its own daemon thread: open, iterate, hand over, close."""

    def __init__(self, inner: Source, generation: int) -> None:
        self.inner = inner
        self.items: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_FRAMES)
        self.abandoned = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"hepascope-grabber-{generation}")
        self.thread.start()

    def _put(self, item: Any) -> bool:
        """Hand over unless abandoned; False once abandoned (the worker then stops)."""
        while not self.abandoned.is_set():
            try:
                self.items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            with self.inner:
                if not self._put(_Opened()):
                    return
                for frame in self.inner:
                    if not self._put(frame):
                        return
            self._put(_End())
        except BaseException as e:  # handed to the consumer, which raises it: not swallowed
            self._put(e)


class Watchdog:
    """A ``Source`` whose grabber is replaced when a read hangs (module docstring)."""

    def __init__(self, factory: Callable[[], Source], *, stall_s: float = 2.0,
                 open_timeout_s: float = 5.0, max_hung: int = 8,
                 source_id: str | None = None) -> None:
        for name, v in (("stall_s", stall_s), ("open_timeout_s", open_timeout_s)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1e6:
                raise ConfigError(f"{name} must be a number of seconds > 0, got {v!r}")
        if isinstance(max_hung, bool) or not isinstance(max_hung, int) or max_hung < 1:
            raise ConfigError(f"max_hung must be an integer >= 1, got {max_hung!r}")
        self._factory = factory
        self.stall_s = float(stall_s)
        self.open_timeout_s = float(open_timeout_s)
        self.max_hung = max_hung
        self._first: Source | None = factory()  # built here: a bad configuration raises now
        self.source_id = source_id or self._first.source_id
        self._numbers = Renumber(self.source_id)
        self._worker: _Worker | None = None
        self._hung: list[_Worker] = []  # abandoned workers, pruned once their thread ends
        self._generation = 0
        self._closed = threading.Event()
        self.stalls = 0
        self.replacements = 0
        self.abandoned = 0  # grabber threads given up on, in all
        self.last_detect_s: float | None = None   # last frame -> stall detected
        self.last_replace_s: float | None = None  # stall detected -> first frame of the new one

    # -- counters ----------------------------------------------------------------------
    @property
    def hung(self) -> int:
        """Abandoned grabber threads still blocked."""
        self._hung = [w for w in self._hung if w.thread.is_alive()]
        return len(self._hung)

    def stats(self) -> dict[str, Any]:
        return {"stalls": self.stalls, "replacements": self.replacements,
                "abandoned": self.abandoned, "hung": self.hung,
                "last_detect_s": self.last_detect_s, "last_replace_s": self.last_replace_s}

    # -- protocol ----------------------------------------------------------------------
    def open(self) -> None:
        """Start the first grabber and wait until it has opened (its error is raised; a
        hang past ``open_timeout_s`` is a ``SourceTimeoutError``)."""
        if self._worker is not None:
            return
        if self._closed.is_set():
            raise SourceError(f"{self.source_id}: closed")
        inner, self._first = self._first, None
        self._worker = self._start(inner or self._factory())
        item = self._take(self._worker, self.open_timeout_s)
        if isinstance(item, _Opened):
            return
        self._abandon(self._worker)
        self._worker = None
        if isinstance(item, BaseException):
            raise item
        raise SourceTimeoutError(f"{self.source_id}: did not open within "
                                 f"{self.open_timeout_s:g} s")

    def __iter__(self) -> Iterator[Frame]:
        self.open()
        t_stall: int | None = None
        waiting = False  # a replacement has yet to open
        while not self._closed.is_set():
            worker = self._worker
            assert worker is not None
            timeout = self.open_timeout_s if waiting else self.stall_s
            item = self._take(worker, timeout)
            if isinstance(item, Frame):
                if t_stall is not None:
                    self.last_replace_s = (time.monotonic_ns() - t_stall) / 1e9
                    t_stall = None
                yield self._numbers.emit(item)
            elif isinstance(item, _Opened):
                waiting = False
            elif isinstance(item, _End):
                return
            elif isinstance(item, BaseException):
                raise item
            elif not self._closed.is_set():  # nothing within the timeout: a hang
                t_stall = time.monotonic_ns()
                self._stalled(worker, t_stall)
                waiting = True

    def close(self) -> None:
        """Stop the grabber; one that is not hung closes its device within one read."""
        self._closed.set()
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.abandoned.set()
            if worker.thread is not threading.current_thread():
                worker.thread.join(self.stall_s)

    def __enter__(self) -> Watchdog:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------
    def _start(self, inner: Source) -> _Worker:
        self._generation += 1
        return _Worker(inner, self._generation)

    def _take(self, worker: _Worker, timeout: float) -> Any:
        """The worker's next item, or None after ``timeout`` (or once closed)."""
        deadline = time.monotonic() + timeout
        while not self._closed.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                return worker.items.get(timeout=min(left, 0.1))
            except queue.Empty:
                continue
        return None

    def _abandon(self, worker: _Worker) -> None:
        worker.abandoned.set()
        self._hung.append(worker)
        self.abandoned += 1

    def _stalled(self, worker: _Worker, now_ns: int) -> None:
        self.stalls += 1
        last = self._numbers.last_t_ns
        self.last_detect_s = None if last is None else (now_ns - last) / 1e9
        self._abandon(worker)
        if self.hung >= self.max_hung:
            raise SourceTimeoutError(f"{self.source_id}: {self.hung} grabbers hung; giving up")
        log.warning("%s: no frame for %.1f s: grabber abandoned (thread left blocked), "
                    "starting a new one (%d abandoned so far)", self.source_id, self.stall_s,
                    self.abandoned)
        self._worker = self._start(self._factory())
        self.replacements += 1
