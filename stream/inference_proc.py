"""The main model's inference in a child process, so that a crash there (a segfault in an
engine, an out-of-memory kill) ends neither capture nor recording: the parent keeps the
source, the frame ring, the publisher and the recorder; ``stream/supervisor.py`` starts
this child, restarts it when it dies, and publishes what it sends.

The child opens the model itself (``ModelSpec``: what ``open_model`` needs, the engine
already resolved by the parent), attaches the parent's frame ring by name and runs the
pipeline's own newest-frame-wins loop (``inference_loop.infer_loop``) and result
construction (``results.main_step``). That loop beats in a shared-memory ``Progress``
block the parent reads without the child's help (``stream/progress.py``): a stopped or
stuck child is found hung and killed. It speaks tuples over two one-way pipes:

    child -> parent:  (READY, model_name, labels, batch)  the model is open; unpaced, it
                                                 takes up to ``batch`` waiting frames per
                                                 run (live: 0, the newest frame alone)
                      (RESULT, msg)                one result map, as the thread would queue it
                      (ERROR, exception)           why it is about to exit non-zero
                      (END,)                       it stopped as asked, nothing more will come
    parent -> child:  (RING, name)                 the ring exists now (first frame written)
                      (DONE,)                      the source ended: finish the ring and stop
                      (STOP,)                      stop now; so does end of file (parent gone)
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
import threading
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from hepascope.core.config import Config
from hepascope.core.errors import HepascopeError
from hepascope.stream.inference_loop import Batched, Step, infer_loop, one_by_one
from hepascope.stream.progress import Progress
from hepascope.stream.results import main_batch_step, main_step
from hepascope.stream.stats import ModelTally

log = logging.getLogger(__name__)

READY, RESULT, ERROR, END = "ready", "result", "error", "end"
RING, DONE, STOP = "ring", "done", "stop"
EXIT_LOAD_FAILED = 3  # the model could not be opened (the ERROR message says why)
EXIT_FAILED = 4       # the inference loop raised (the ERROR message says why)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What the child needs to open the main model, exactly as ``open_model`` takes it.
    ``backend`` is already resolved: "auto" is decided once, in the parent, and logged."""

    path: Path
    config: Config
    backend: str = "onnxruntime"
    threads: int | None = None
    labels: tuple[str, ...] | None = None
    # None: a live source, the newest frame wins; n: unpaced, every frame in order, up to
    # n in one engine run where the model batches
    batch: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.path, Path):
            raise TypeError(f"ModelSpec.path must be a Path, got {type(self.path).__name__}")
        if self.backend == "auto":
            raise ValueError("ModelSpec.backend must be resolved (resolve_backend) before the "
                             "child opens it: 'auto' would be decided again in every child")
        if self.threads is not None and self.threads <= 0:
            raise ValueError(f"ModelSpec.threads must be None or > 0, got {self.threads}")
        if self.batch is not None and self.batch < 1:
            raise ValueError(f"ModelSpec.batch must be None or >= 1, got {self.batch}")


class _Control:
    """The parent's commands, read in a thread of the child; also the ring handle the
    inference loop waits on (``name`` and ``ready``)."""

    def __init__(self, ctl: Connection) -> None:
        self._ctl = ctl
        self.name = ""
        self.ready = threading.Event()
        self.source_done = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while True:
                cmd = self._ctl.recv()
                if cmd[0] == RING:
                    self.name = str(cmd[1])
                    self.ready.set()
                elif cmd[0] == DONE:
                    self.source_done.set()
                elif cmd[0] == STOP:
                    return
        except (EOFError, OSError):  # the parent closed its end or died: stop, as asked
            return
        finally:
            self.stop.set()


class _Sender:
    """The loop's result queue: ``put`` sends the result map to the parent."""

    def __init__(self, out: Connection) -> None:
        self._out = out

    def put(self, item: tuple[dict[str, Any], ModelTally]) -> None:
        self._out.send((RESULT, item[0]))


def _portable(e: BaseException) -> BaseException:
    """``e`` if it survives pickling (the parent re-raises the very type: a ModelError stays
    a ModelError), else a RuntimeError naming it."""
    try:
        pickle.loads(pickle.dumps(e))
    except Exception:  # any failure to round-trip: send a description instead
        return RuntimeError(f"{type(e).__name__}: {e}")
    return e


def _report(out: Connection, e: BaseException) -> None:
    if not isinstance(e, HepascopeError):  # unexpected: keep the traceback on stderr
        log.error("inference process %d failed", os.getpid(), exc_info=e)
    try:
        out.send((ERROR, _portable(e)))
    except OSError:  # the parent is gone; the exit code still says what happened
        log.warning("could not report %s to the parent: it is gone", type(e).__name__)


def child_main(spec: ModelSpec, out: Connection, ctl: Connection, log_level: int,
               progress: Progress) -> None:
    """Entry point of the child (spawned: the parent has threads). Exits 0 after END,
    ``EXIT_LOAD_FAILED`` / ``EXIT_FAILED`` after ERROR."""
    # Ctrl-C in a terminal signals the whole process group: the parent decides when the
    # child stops (STOP), so that results already made are still sent
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from hepascope.core.logs import configure

    configure(log_level, name=f"hepascope[inference {os.getpid()}]")  # text or JSON: as the parent
    from hepascope.stream.batch import BatchClassifier, open_batched

    try:
        classifier, batch = open_batched(spec.path, spec.config, spec.batch or 1,
                                         backend=spec.backend, threads=spec.threads,
                                         labels=spec.labels)
    except BaseException as e:
        _report(out, e)
        sys.exit(EXIT_LOAD_FAILED)
    try:
        out.send((READY, classifier.model_name, tuple(classifier.labels),
                  0 if spec.batch is None else batch))
        step: Step | Batched
        if isinstance(classifier, BatchClassifier):
            step = Batched(partial(main_batch_step, classifier), batch)
        else:
            single: Step = partial(main_step, classifier)
            # unpaced: every frame, in order, one at a time; live: the newest frame
            step = single if spec.batch is None else Batched(one_by_one(single), 1)
        _serve(step, classifier.model_name, out, ctl, progress,
               spec.config.pipeline.inference_max_invalid)
    except BaseException as e:
        _report(out, e)
        sys.exit(EXIT_FAILED)
    finally:
        classifier.close()
    out.send((END,))


def _serve(step: Step | Batched, model_name: str, out: Connection, ctl: Connection,
           progress: Progress, max_invalid: int) -> None:
    control = _Control(ctl)
    threading.Thread(target=control.run, name="hepascope-infer-control", daemon=True).start()
    infer_loop(step, ModelTally(model_name), control, control.source_done, control.stop,
               _Sender(out), progress, max_invalid)
