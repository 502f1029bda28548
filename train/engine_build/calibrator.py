"""INT8 entropy calibration for ``hepascope build``: the calibration batches, the
calibrator TensorRT calls back, and its calibration cache.

The cache is written only after a build that calibrated succeeded (TensorRT offers the
table through ``write_calibration_cache`` even when the batches ran out early because one
failed): the calibrator keeps the table and ``build_plan`` saves it, atomically, at the
end. A cache is reused only if it is a whole TensorRT entropy table with a scale for every
network input; anything else (empty, cut short, another model's) is refused with the
reason, and calibrating again with data replaces it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from hepascope.core.errors import ModelError
from hepascope.engines.plan import atomic_write

log = logging.getLogger("hepascope.build")
CACHE_HEADER = re.compile(r"TRT-\d+-EntropyCalibration2")  # IInt8EntropyCalibrator2's
CACHE_ENTRY = re.compile(r"(.+): ([0-9a-fA-F]{8})")  # tensor name: fp32 scale in hex


class CalibrationBatches:
    """Batch-1 feeds ``{input: (1, ...)}`` grouped into batches of ``batch_size`` (the
    remainder that does not fill a batch is left out: the calibration profile is static),
    handed out in order by ``next()`` until exhausted (None)."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]], batch_size: int,
                 names: Sequence[str]) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(feeds) < batch_size:
            raise ModelError(f"calibration needs at least {batch_size} samples, got "
                             f"{len(feeds)}")
        for i, feed in enumerate(feeds):
            if set(feed) != set(names):
                raise ModelError(f"calibration sample {i} has inputs {sorted(feed)}, the "
                                 f"model {sorted(names)}")
            if any(feed[n].shape[0] != 1 for n in names):
                raise ModelError(f"calibration sample {i} is not a batch of 1")
        self.batch_size, self.names = batch_size, tuple(names)
        self._feeds = list(feeds)
        self._next = 0

    def __len__(self) -> int:
        return len(self._feeds) // self.batch_size

    def shape(self, name: str) -> tuple[int, ...]:
        return (self.batch_size, *self._feeds[0][name].shape[1:])

    def next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self):
            return None
        rows = self._feeds[self._next * self.batch_size:(self._next + 1) * self.batch_size]
        self._next += 1
        return {n: np.ascontiguousarray(np.concatenate([r[n] for r in rows]), np.float32)
                for n in self.names}


def cache_problem(data: bytes, inputs: Sequence[str]) -> str | None:
    """Why ``data`` is not a usable calibration cache for a network with ``inputs``
    (None if it is): TensorRT's text table, a header then ``name: scale`` per tensor."""
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return "not text"
    if not lines or not CACHE_HEADER.fullmatch(lines[0]):
        return "no TensorRT EntropyCalibration2 header"
    names = set()
    for i, line in enumerate(lines[1:], start=2):
        entry = CACHE_ENTRY.fullmatch(line)
        if entry is None:
            return f"line {i} is not 'tensor: scale' ({line[:40]!r})"
        names.add(entry.group(1))
    missing = [n for n in inputs if n not in names]
    return f"no scale for input {missing[0]!r}" if missing else None


def read_cache(path: Path, inputs: Sequence[str]) -> tuple[bytes | None, str | None]:
    """(the cache at ``path``, None) if it is usable for a network with ``inputs``;
    (None, why not) if it is not; (None, None) if there is none."""
    if not path.is_file():
        return None, None
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"{path}: cannot read the calibration cache "
                         f"({e.strerror or e})") from e
    problem = cache_problem(data, inputs)
    return (None, problem) if problem else (data, None)


def make_calibrator(trt: ModuleType, batches: CalibrationBatches | None, cache: Path,
                    cached: bytes | None, context: Any) -> Any:
    """An ``IInt8EntropyCalibrator2`` that copies ``batches`` to device buffers allocated
    once and hands TensorRT ``cached`` (a checked cache) as its calibration cache. The
    table TensorRT writes is kept, and ``save()`` writes it to ``cache`` once the build
    succeeded. Exceptions in its callbacks are kept and re-raised by ``build_plan`` after
    TensorRT returns: they cannot cross TensorRT's C++ frames."""
    from hepascope.engines.cuda import BufferSpec, DeviceBuffers

    class Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.error: BaseException | None = None
            self.table: bytes | None = None
            self.buffers: DeviceBuffers | None = None
            if batches is not None:
                self.buffers = DeviceBuffers([BufferSpec(n, batches.shape(n), np.dtype("f4"))
                                              for n in batches.names], context)

        def get_batch_size(self) -> int:
            return batches.batch_size if batches is not None else 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            # None is TensorRT's end-of-data signal here, not an error return
            if batches is None or self.buffers is None or self.error is not None:
                return None
            try:
                batch = batches.next()
                if batch is None:
                    return None
                for n in names:
                    np.copyto(self.buffers.host(n), batch[n])
                    self.buffers.to_device(n)
                self.buffers.synchronize()
                return [self.buffers.device_ptr(n) for n in names]
            except BaseException as e:
                self.error = e
                return None

        def read_calibration_cache(self) -> bytes | None:
            return cached

        def write_calibration_cache(self, data: Any) -> None:
            try:
                self.table = bytes(data)
            except BaseException as e:
                self.error = e

        def save(self) -> None:
            """Write the table TensorRT gave, if any, atomically: call after a build
            that succeeded, never after one that failed."""
            if self.error is None and self.table is not None:
                atomic_write(cache, self.table)
                log.info("calibration cache %s written", cache)

        def close(self) -> None:
            if self.buffers is not None:
                self.buffers.close()

    return Calibrator()
