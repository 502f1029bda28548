"""Supervision of the inference child (``stream/inference_proc.py``) from a thread of the
pipeline's process.

``InferenceProcess`` starts the child and waits until its model is open, so a model that
cannot be opened fails the run before capture starts, with the child's own error (the
same ``ModelError`` as in-process). ``serve`` is then the main model's thread of the
pipeline: it tells the child about the ring, passes the child's results on unchanged,
counts frames seen and dropped from their sequence numbers (frames a dead child never
saw are drops), and, when the child dies, logs one line with the signal or exit code and
starts a new one after a bounded backoff. Capture, recording and the heartbeat go on
meanwhile, so the overlay shows STALE, not NO DATA. ``max_crashes`` crashes within
``window_s`` end the run with ``InferenceCrashError``: a model that crashes at every load
is not restarted forever.

A hung child is a crash too: the child beats in a shared-memory ``Progress`` block, and one
that has work waiting and does not beat within a bound derived from its measured step
times (``StallWatch``, stream/progress.py) is killed (SIGKILL) and restarted; telemetry
says ``inference_up: false`` from then until the new child is ready. So is a child that
gives ``max_invalid`` model-fault results in a row (``ModelOutputError``). At the end of
the source the child finishes the newest frame and ends; one hung or dead then is not
restarted, so a finite run always ends.

A crash is a death the child did not explain (a signal, an exit without a report) or an
unexpected exception. A ``HepascopeError`` the child reports (a ``ModelError`` when a
restart finds the model file gone bad, a frame the model cannot take) is raised as it is,
without a restart, exactly as when the model runs in a thread: a restart would only raise
it again."""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from hepascope.core.config import Config
from hepascope.core.errors import ConfigError, HepascopeError, ModelOutputError
from hepascope.core.messages import MODEL_FAULT
from hepascope.stream import inference_proc as proto
from hepascope.stream.classifier import Classifier
from hepascope.stream.inference_loop import RingHandle
from hepascope.stream.inference_proc import ModelSpec
from hepascope.stream.progress import FINISHING, Progress, StallWatch
from hepascope.stream.stats import ModelTally

log = logging.getLogger(__name__)

MODES = ("process", "thread")
_POLL_S = 0.05  # how often the supervisor looks at stop/source-done between messages


class InferenceCrashError(HepascopeError, RuntimeError):
    """The inference process died too often (or at its first start): the run ends."""


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When to restart the child and when to give up: the k-th crash within ``window_s``
    waits ``backoff_s * 2**(k-1)`` (at most ``backoff_max_s``); the ``max_crashes``-th
    ends the run. A child neither ready nor dead after ``load_timeout_s`` is a crash; so is
    one with work waiting and no progress for ``hang_factor`` x its p99 step time, within
    [``hang_min_s``, ``hang_max_s``]."""

    max_crashes: int = 5
    window_s: float = 60.0
    backoff_s: float = 0.1
    backoff_max_s: float = 2.0
    load_timeout_s: float = 120.0
    stop_timeout_s: float = 5.0
    hang_min_s: float = 1.0
    hang_max_s: float = 10.0
    hang_factor: float = 10.0

    def __post_init__(self) -> None:
        if self.max_crashes < 1:
            raise ConfigError(f"max_crashes must be >= 1, got {self.max_crashes}")
        for name in ("window_s", "backoff_s", "backoff_max_s", "load_timeout_s",
                     "stop_timeout_s", "hang_min_s", "hang_max_s", "hang_factor"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.hang_min_s > self.hang_max_s:
            raise ConfigError(f"hang_min_s ({self.hang_min_s}) must be <= hang_max_s "
                              f"({self.hang_max_s})")

    def delay(self, crashes: int) -> float:
        return min(self.backoff_s * 2 ** max(crashes - 1, 0), self.backoff_max_s)


class _ChildFailed(Exception):
    """A child ended before it was ready: ``why`` (exit code or signal), ``error`` (what it
    reported, if anything)."""

    def __init__(self, why: str, error: BaseException | None) -> None:
        super().__init__(why)
        self.why, self.error = why, error


def _detail(why: str, error: BaseException | None) -> str:
    return f"{why}: {type(error).__name__}: {error}" if error is not None else why


def _describe(exitcode: int | None) -> str:
    if exitcode is None:
        return "did not exit"
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


class _Child:
    """One child process, the parent's ends of its two pipes and its heartbeat block."""

    def __init__(self, ctx: Any, spec: ModelSpec) -> None:
        self.out, out_w = ctx.Pipe(duplex=False)  # child -> parent
        ctl_r, self.ctl = ctx.Pipe(duplex=False)  # parent -> child
        self.progress = Progress(ctx)
        level = logging.getLogger().getEffectiveLevel()
        self.proc: BaseProcess = ctx.Process(
            target=proto.child_main, name="hepascope-infer",
            args=(spec, out_w, ctl_r, level, self.progress), daemon=True)
        try:
            self.proc.start()
        finally:  # only the child holds these now: its death is our end of file
            out_w.close()
            ctl_r.close()
        self.pid = int(self.proc.pid or 0)

    def tell(self, *cmd: object) -> None:
        try:
            self.ctl.send(cmd)
        except OSError:  # it died: the sentinel says so on the next wait, with its code
            log.debug("inference process %d is gone; %s not delivered", self.pid, cmd[0])

    def reap(self, timeout_s: float = 5.0) -> str:
        """Wait for it to end (kill it if it will not) and say how it ended."""
        self.proc.join(timeout_s)
        if self.proc.exitcode is None:
            self.proc.kill()
            self.proc.join(timeout_s)
        self.out.close()
        self.ctl.close()
        return _describe(self.proc.exitcode)

    def stop(self, timeout_s: float) -> None:
        if self.proc.exitcode is None:
            self.tell(proto.STOP)
            self.proc.join(timeout_s)
        self.reap(timeout_s)


class InferenceProcess:
    """The main model, run in a supervised child process. Starting it waits until the
    model is open there and raises what the child raised (``ModelError``), or
    ``InferenceCrashError`` if it died while loading."""

    def __init__(self, spec: ModelSpec, policy: RestartPolicy | None = None) -> None:
        if not isinstance(spec, ModelSpec):
            raise TypeError(f"spec must be a ModelSpec, got {type(spec).__name__}")
        self.spec = spec
        self.policy = policy or RestartPolicy()
        self._ctx = mp.get_context("spawn")  # never fork: the parent has threads
        self._watch = StallWatch(self.policy.hang_min_s, self.policy.hang_max_s,
                                 self.policy.hang_factor)
        self.restarts = 0
        self.pid = 0
        try:
            self._child = self._start(None)
        except _ChildFailed as e:  # the first start: fail fast with what the child said
            if e.error is not None:
                raise e.error from None
            raise InferenceCrashError(f"inference process {e.why} while opening "
                                      f"{spec.path.name}") from None

    def _start(self, stop: threading.Event | None) -> _Child | None:
        """A new child, ready; None if ``stop`` was set meanwhile; ``_ChildFailed`` or the
        child's error otherwise (see ``__init__``)."""
        child = _Child(self._ctx, self.spec)
        self.pid = child.pid
        try:
            got = self._await_ready(child, stop)
        except BaseException:
            child.reap()
            raise
        if got is None:
            child.stop(self.policy.stop_timeout_s)
            return None
        self.model_name, self.labels, self.batch = got
        return child

    def _await_ready(self, child: _Child, stop: threading.Event | None,
                     ) -> tuple[str, tuple[str, ...], int] | None:
        deadline = time.monotonic() + self.policy.load_timeout_s
        while stop is None or not stop.is_set():
            ready = wait([child.out, child.proc.sentinel], timeout=_POLL_S)
            if child.out in ready:
                try:
                    kind, *rest = child.out.recv()
                except EOFError:
                    raise _ChildFailed(child.reap(), None) from None
                if kind == proto.READY:
                    return str(rest[0]), tuple(rest[1]), int(rest[2])
                if kind == proto.ERROR:
                    raise _ChildFailed(child.reap(), rest[0])
            elif ready:
                raise _ChildFailed(child.reap(), None)
            elif time.monotonic() > deadline:
                child.proc.kill()
                raise _ChildFailed(f"did not open the model within "
                                   f"{self.policy.load_timeout_s:g} s", None)
        return None

    def telemetry(self) -> dict[str, Any]:
        """Fields of the heartbeat and the run summary."""
        return {"inference": "process", "inference_pid": self.pid,
                "inference_restarts": self.restarts, "inference_up": self._child is not None,
                "inference_batch": self.batch,
                "inference_hang_bound_s": round(self._watch.bound_s(), 3)}

    def serve(self, ring: RingHandle, source_done: threading.Event, stop: threading.Event,
              emit: Callable[[dict[str, Any]], None], tally: ModelTally,
              frames_in: Callable[[], int] = lambda: 0) -> None:
        """The main model's thread: relay results, restart on crashes and hangs, until the
        child ends after the source does or ``stop``. ``frames_in``: frames written to the
        ring so far (a frame the child has not taken is work waiting)."""
        last = -1  # kept across children: frames a dead child never saw are drops

        def on_result(msg: dict[str, Any]) -> None:
            nonlocal last
            tally.took(msg["seq"], last)
            tally.count_result(msg["seq"], msg.get("status") == MODEL_FAULT)
            last = max(last, msg["seq"])
            self._watch.step_done()
            emit(msg)

        crashes: deque[float] = deque()
        child = self._child
        while child is not None:
            death = self._relay(child, ring, source_done, stop, on_result, frames_in)
            self._child = None
            if death is None:
                return
            why, error = death
            if isinstance(error, HepascopeError) and not isinstance(error, ModelOutputError):
                # raised on purpose (a frame the model cannot take): a restart would raise
                # it again; as in a thread. Invalid outputs in a row are a crash instead.
                raise error
            if stop.is_set() or source_done.is_set():  # no restart at the end of a run
                log.error("inference process %d %s; not restarted: the run is ending",
                          self.pid, _detail(why, error))
                return
            child = self._child = self._restart(crashes, why, error, stop, source_done)

    def _relay(self, child: _Child, ring: RingHandle, source_done: threading.Event,
               stop: threading.Event, on_result: Callable[[dict[str, Any]], None],
               frames_in: Callable[[], int]) -> tuple[str, BaseException | None] | None:
        """Talk to one child until it ends: None when it ended as asked (or would not stop
        and was killed), else how it died (or hung, and was killed) and the error it
        reported, if any."""
        told_ring = told_done = told_stop = False
        t_end: float | None = None  # since when it should be ending (told STOP, finishing)
        error: BaseException | None = None
        self._watch.watch(child.progress, time.monotonic_ns(), frames_in())
        while True:
            if not told_ring and ring.ready.is_set():
                child.tell(proto.RING, ring.name)
                told_ring = True
            if not told_done and source_done.is_set():
                child.tell(proto.DONE)
                told_done = True
            if not told_stop and stop.is_set():
                child.tell(proto.STOP)
                told_stop = True
            if t_end is None and (told_stop or child.progress.phase == FINISHING):
                t_end = time.monotonic()
            elif t_end is not None and time.monotonic() - t_end > self.policy.stop_timeout_s:
                log.warning("inference process %d did not stop within %g s: killed",
                            child.pid, self.policy.stop_timeout_s)
                child.proc.kill()
                child.reap()
                return None
            ready = wait([child.out, child.proc.sentinel], timeout=_POLL_S)
            if child.out in ready:  # before the sentinel: what it sent before dying counts
                try:
                    kind, *rest = child.out.recv()
                except EOFError:
                    return child.reap(), error
                if kind == proto.RESULT:
                    on_result(rest[0])
                elif kind == proto.ERROR:
                    error = rest[0]
                elif kind == proto.END:
                    child.reap(self.policy.stop_timeout_s)
                    return None
            elif ready:  # dead, and nothing left in its pipe
                return child.reap(), error
            quiet = self._watch.stalled_s(time.monotonic_ns(), frames_in(), told_done)
            if quiet is not None:
                child.proc.kill()  # SIGKILL: a stopped process dies too
                child.reap()
                return (f"hung: no progress for {quiet:.2f} s (bound "
                        f"{self._watch.bound_s():.2f} s), killed"), error

    def _restart(self, crashes: deque[float], why: str, error: BaseException | None,
                 stop: threading.Event, source_done: threading.Event) -> _Child | None:
        """Count the crash, give up or wait and start a new child; repeat while it dies
        before it is ready. None when the run ended meanwhile."""
        while True:
            now = time.monotonic()
            crashes.append(now)
            while now - crashes[0] > self.policy.window_s:
                crashes.popleft()
            detail = _detail(why, error)
            if len(crashes) >= self.policy.max_crashes:
                raise InferenceCrashError(
                    f"inference process crashed {len(crashes)} times within "
                    f"{self.policy.window_s:g} s (last: {detail}); giving up") from error
            delay = self.policy.delay(len(crashes))
            log.error("inference process %d %s; restart %d in %.2f s", self.pid, detail,
                      self.restarts + 1, delay)
            if stop.wait(delay) or source_done.is_set():
                return None
            self.restarts += 1
            try:
                child = self._start(stop)
            except _ChildFailed as e:
                if isinstance(e.error, HepascopeError):  # the model file went bad: final
                    raise e.error from None
                why, error = e.why, e.error
                continue
            if child is not None:
                log.info("inference process %d took over (restart %d)", child.pid,
                            self.restarts)
            return child

    def close(self) -> None:
        """Stop the child (if still running) and wait for it. Idempotent."""
        child, self._child = self._child, None
        if child is not None:
            child.stop(self.policy.stop_timeout_s)


def open_inference(mode: str, path: Path, config: Config, *, backend: str,
                   threads: int | None = None, labels: tuple[str, ...] | None = None,
                   batch: int | None = None) -> Classifier | InferenceProcess:
    """The main model in a supervised child process (``process``) or in this one
    (``thread``). ``backend`` must already be resolved (not "auto"). ``batch`` (an unpaced
    source; None: live): the child takes every frame in order, up to that many per engine
    run where the model batches (``InferenceProcess.batch`` says how many: 0 live); a
    thread takes the newest frame."""
    if mode not in MODES:
        raise ConfigError(f"inference must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "thread":
        from hepascope.stream.model_loader import open_model

        return open_model(path, config, backend=backend, threads=threads, labels=labels)
    spec = ModelSpec(Path(path), config, backend, threads, labels, batch)
    pipe = config.pipeline
    return InferenceProcess(spec, RestartPolicy(
        max_crashes=pipe.inference_max_crashes, window_s=pipe.inference_crash_window_s,
        hang_min_s=pipe.inference_hang_min_s, hang_max_s=pipe.inference_hang_max_s))
