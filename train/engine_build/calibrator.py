"""The INT8 entropy calibrator TensorRT calls during ``build_plan``, and the batches of
calibration feeds it hands out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from hepascope.core.errors import ModelError
from hepascope.engines.plan import atomic_write


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


def make_calibrator(trt: ModuleType, batches: CalibrationBatches | None, cache: Path,
                    context: Any) -> Any:
    """An ``IInt8EntropyCalibrator2`` that copies ``batches`` to device buffers allocated
    once, and reads/writes the calibration cache ``cache`` (reused when present: delete it
    to calibrate again). Exceptions in its callbacks are kept and re-raised by
    ``build_plan`` after TensorRT returns: they cannot cross TensorRT's C++ frames."""
    from hepascope.engines.cuda import BufferSpec, DeviceBuffers

    class Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.error: BaseException | None = None
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
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data: Any) -> None:
            try:
                atomic_write(cache, bytes(data))
            except BaseException as e:
                self.error = e

        def close(self) -> None:
            if self.buffers is not None:
                self.buffers.close()

    return Calibrator()
